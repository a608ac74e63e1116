"""The host agent: one stdlib-only script (agent.py) that cloudsend uploads to every host.

This package only locates it; nothing here imports agent.py (it runs on the hosts, not here).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

AGENT_PATH: Path = Path(__file__).with_name("agent.py")


@lru_cache(maxsize=1)
def agent_sha256() -> str:
    """sha256 of agent.py: deploy compares it with the host's copy to skip the upload."""
    return hashlib.sha256(AGENT_PATH.read_bytes()).hexdigest()


def __getattr__(name: str) -> str:
    # AGENT_SHA256 is computed on first use, not at import
    if name == "AGENT_SHA256":
        return agent_sha256()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AGENT_PATH", "AGENT_SHA256", "agent_sha256"]
