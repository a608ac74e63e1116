"""The local state store (SQLite, WAL) under ``<config dir>/.cloudsend/state.db``.

Runs, hosts, per-host caches (uploaded files, built environments), jobs, attempts and fetched
outputs. See :class:`Store`.
"""

from cloudsend.state.schema import (
    SCHEMA_VERSION,
    AttemptRecord,
    HostRecord,
    JobRecord,
    NewJob,
    Run,
)
from cloudsend.state.store import StateUpdate, Store

__all__ = [
    "SCHEMA_VERSION",
    "AttemptRecord",
    "HostRecord",
    "JobRecord",
    "NewJob",
    "Run",
    "StateUpdate",
    "Store",
]
