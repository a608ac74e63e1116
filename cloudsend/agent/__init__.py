"""The host agent: two stdlib-only files (agent.py and the protocol.py it imports) that
cloudsend uploads to every host.

This package only locates them; nothing here imports agent.py (it runs on the hosts, not here).
cloudsend imports protocol.py for the documents' types (cloudsend.agent.protocol).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

AGENT_PATH: Path = Path(__file__).with_name("agent.py")
PROTOCOL_PATH: Path = Path(__file__).with_name("protocol.py")
# What a host's root gets, in upload order: agent.py last, so a root with the new agent.py
# has the protocol it imports.
AGENT_FILES: tuple[Path, ...] = (PROTOCOL_PATH, AGENT_PATH)


@lru_cache(maxsize=1)
def agent_sha256() -> str:
    """sha256 of agent.py followed by protocol.py (`cat agent.py protocol.py | sha256sum` on
    the host): deploy compares it with the host's copy to skip the upload, so a change to
    either file redeploys."""
    digest = hashlib.sha256(AGENT_PATH.read_bytes())
    digest.update(PROTOCOL_PATH.read_bytes())
    return digest.hexdigest()


def __getattr__(name: str) -> str:
    # AGENT_SHA256 is computed on first use, not at import
    if name == "AGENT_SHA256":
        return agent_sha256()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AGENT_FILES", "AGENT_PATH", "AGENT_SHA256", "PROTOCOL_PATH", "agent_sha256"]
