"""The state store's tables, opening and versioning the database, and the records read from it.

The schema has a version (table ``schema_version``, one row). A database written by a newer
cloudsend is refused rather than misread; an older one is migrated forward by the steps in
``MIGRATIONS`` (none yet: version 1 is the first). Every sqlite error becomes a StateError that
names the file (:func:`sqlite_error`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudsend.core import JobState
from cloudsend.errors import StateError

SCHEMA_VERSION = 1

# Timestamps are Unix seconds (REAL): sortable, timezone-free, cheap to compare.
SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);

CREATE TABLE IF NOT EXISTS runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    created     REAL NOT NULL,
    config_hash TEXT NOT NULL,
    status      TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS hosts (
    run_id   INTEGER NOT NULL REFERENCES runs(id),
    name     TEXT NOT NULL,
    provider TEXT NOT NULL,
    cpus     INTEGER NOT NULL,
    info     TEXT NOT NULL DEFAULT '{}',
    health   TEXT NOT NULL DEFAULT 'unknown',
    detail   TEXT NOT NULL DEFAULT '',
    updated  REAL NOT NULL,
    PRIMARY KEY (run_id, name)
);

-- Per-host caches outlive runs: a host that already has a file or a built environment keeps
-- it across runs. `identity` tells a recreated host (same name, new machine or root) apart.
CREATE TABLE IF NOT EXISTS host_files (
    host     TEXT NOT NULL,
    identity TEXT NOT NULL,
    sha256   TEXT NOT NULL,
    size     INTEGER NOT NULL,
    added    REAL NOT NULL,
    PRIMARY KEY (host, identity, sha256)
);

CREATE TABLE IF NOT EXISTS host_envs (
    host     TEXT NOT NULL,
    identity TEXT NOT NULL,
    env_id   TEXT NOT NULL,
    state    TEXT NOT NULL,
    updated  REAL NOT NULL,
    PRIMARY KEY (host, identity, env_id)
);

CREATE TABLE IF NOT EXISTS jobs (
    run_id    INTEGER NOT NULL REFERENCES runs(id),
    job_id    TEXT NOT NULL,
    idx       INTEGER NOT NULL,
    rep       INTEGER NOT NULL,
    env_id    TEXT,
    cpus      INTEGER NOT NULL,
    spec_hash TEXT NOT NULL,
    state     TEXT NOT NULL DEFAULT 'UNKNOWN',
    host      TEXT,
    attempt   INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER,
    reason    TEXT,
    fetched   INTEGER NOT NULL DEFAULT 0,
    updated   REAL NOT NULL,
    PRIMARY KEY (run_id, job_id)
);

CREATE TABLE IF NOT EXISTS attempts (
    run_id    INTEGER NOT NULL,
    job_id    TEXT NOT NULL,
    attempt   INTEGER NOT NULL,
    host      TEXT NOT NULL,
    started   REAL NOT NULL,
    ended     REAL,
    state     TEXT,
    exit_code INTEGER,
    reason    TEXT,
    PRIMARY KEY (run_id, job_id, attempt),
    FOREIGN KEY (run_id, job_id) REFERENCES jobs(run_id, job_id)
);

CREATE TABLE IF NOT EXISTS fetched_files (
    run_id  INTEGER NOT NULL,
    job_id  TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    path    TEXT NOT NULL,
    size    INTEGER NOT NULL,
    PRIMARY KEY (run_id, job_id, attempt, path),
    FOREIGN KEY (run_id, job_id) REFERENCES jobs(run_id, job_id)
);
"""

# version N -> SQL that upgrades a database from N to N + 1 (run in the opening transaction).
MIGRATIONS: dict[int, str] = {}

JOB_COLUMNS = (
    "job_id, idx, rep, env_id, cpus, spec_hash, state, host, attempt, exit_code, reason, "
    "fetched, updated"
)


@dataclass(frozen=True)
class Run:
    """One ``cloudsend run`` and its resumptions: jobs and hosts hang off it."""

    id: int
    created: float
    config_hash: str
    status: str


@dataclass(frozen=True)
class HostRecord:
    name: str
    provider: str
    cpus: int
    info: dict[str, Any]
    health: str
    detail: str
    updated: float

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> HostRecord:
        name, provider, cpus, info, health, detail, updated = row
        return cls(name, provider, cpus, json.loads(info), health, detail, updated)


@dataclass(frozen=True)
class NewJob:
    """A job as the pipeline registers it before submitting anything."""

    job_id: str
    index: int
    rep: int
    env_id: str | None
    cpus: int
    spec_hash: str


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    index: int
    rep: int
    env_id: str | None
    cpus: int
    spec_hash: str
    state: JobState  # kept as its name; UNKNOWN until a host reports on it
    host: str | None
    attempt: int  # 0 = never submitted
    exit_code: int | None
    reason: str | None
    fetched: bool  # the outputs of the current attempt are on this machine
    updated: float

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> JobRecord:
        job_id, idx, rep, env_id, cpus, spec, state, host, attempt, code, reason, fetched, upd = row
        return cls(
            job_id,
            idx,
            rep,
            env_id,
            cpus,
            spec,
            JobState.parse(state),
            host,
            attempt,
            code,
            reason,
            bool(fetched),
            upd,
        )


@dataclass(frozen=True)
class AttemptRecord:
    attempt: int
    host: str
    started: float
    ended: float | None  # None while the attempt has not reached a final state
    state: JobState | None
    exit_code: int | None
    reason: str | None


def sqlite_error(path: Path, exc: sqlite3.Error) -> StateError:
    """The StateError a user sees for a failed sqlite call on the store at ``path``."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        return StateError(
            f"the state store {path} is locked: {text}",
            hint="another cloudsend process is writing to it; wait for it or stop it",
        )
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(
        exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)
    ):
        return StateError(
            f"cannot read the state store {path}: {text}",
            hint="it may be corrupt or not a cloudsend database; to start afresh delete it: "
            "`rm -r .cloudsend` beside your config (this also removes the local provider's "
            f"hosts), or only the store: `rm {path}*`",
        )
    return StateError(f"state store {path}: {text}")


def private_dir(path: Path) -> None:
    """Make `path` (and missing parents) with the folder itself 0700: cloudsend's state (job
    logs, hosts, keys) is not for other users of the machine, whatever the umask."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)  # mkdir's mode is filtered by the umask and ignored if it existed


def open_database(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """Connect (creating parent dirs), switch to WAL, and create or check the schema.

    The connection is in autocommit mode (``isolation_level=None``) so that the store issues
    its own ``BEGIN IMMEDIATE`` per write, and may be shared between threads behind a lock.
    """
    try:
        private_dir(path.parent)
        # 0600 before SQLite opens it: its -wal and -shm files take the database's mode
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
    except OSError as exc:
        raise StateError(
            f"cannot create the state directory {path.parent}: {exc.strerror or exc}",
            hint="check the permissions of the directory that holds your config file",
        ) from exc
    try:
        conn = sqlite3.connect(
            str(path), timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise sqlite_error(path, exc) from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        # WAL lets other processes read while this one writes. This is also the first statement
        # that reads the file, so a corrupt file shows up here.
        _use_wal(conn, busy_timeout)
        # NORMAL in WAL mode: commits survive a crash of cloudsend (what recovery is about);
        # only an OS crash can lose the last ones, and the agents then still hold the truth.
        # FULL would fsync on every commit, which dominated the watch loop with many jobs.
        conn.execute("PRAGMA synchronous = NORMAL")
        # Creation and migration run in one transaction: two processes opening a new store at
        # once cannot both create it, and a crash leaves either the old schema or the new one.
        conn.execute("BEGIN IMMEDIATE")
        _prepare_schema(conn, path)
        conn.execute("COMMIT")
    except BaseException as exc:
        conn.close()  # also rolls back
        if isinstance(exc, sqlite3.Error):
            raise sqlite_error(path, exc) from exc
        raise
    return conn


def _use_wal(conn: sqlite3.Connection, busy_timeout: float) -> None:
    """Switch a new file to WAL (a no-op once it is). The switch needs the file to itself
    and SQLite answers "locked" at once, without its busy handler, when another process
    opens the new store at that moment (a `status` beside the first `run`): retry it within
    the busy timeout like any other wait for the lock."""
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    # executescript() would COMMIT the enclosing transaction first; run statement by statement.
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _prepare_schema(conn: sqlite3.Connection, path: Path) -> None:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "schema_version" not in tables:
        if tables - {"sqlite_sequence"}:
            raise StateError(
                f"{path} is an SQLite file but not a cloudsend state store",
                hint="point cloudsend at another directory, or move that file away",
            )
        _run_script(conn, SCHEMA)
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        return
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    version = row[0] if row else None
    if not isinstance(version, int):
        raise sqlite3.DatabaseError("schema_version holds no version")
    if version > SCHEMA_VERSION:
        raise StateError(
            f"{path} was written by a newer cloudsend (state schema version {version}; "
            f"this cloudsend reads up to {SCHEMA_VERSION})",
            hint="upgrade cloudsend: pip install --upgrade cloudsend",
        )
    for step in range(version, SCHEMA_VERSION):
        _run_script(conn, MIGRATIONS[step])
    if version < SCHEMA_VERSION:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
