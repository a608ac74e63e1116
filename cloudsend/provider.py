"""Compatibility entry point of the original tool: `cloudsend.provider.get_client(config)`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cloudsend.api import Client, SyncClient
from cloudsend.config.models import Config


def get_client(config: Config | dict[str, Any] | str | Path, **kwargs: Any) -> Client:
    """A client whose async methods follow the original lifecycle (start, deploy, run, wait...)."""
    return Client(config, **kwargs)


def get_sync_client(config: Config | dict[str, Any] | str | Path, **kwargs: Any) -> SyncClient:
    """The same lifecycle, blocking, for plain scripts."""
    return SyncClient(config, **kwargs)
