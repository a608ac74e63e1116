"""The local state store: SQLite (WAL) under ``<config dir>/.cloudsend/state.db``.

It records intent (which job went where, which attempt, which outputs were fetched) so that a
later ``cloudsend run`` resumes instead of starting over. The hosts' agents stay the source of
truth for job progress. Job states are stored as :class:`~cloudsend.core.JobState` names and
read back as members.

One connection shared by the pipeline's threads, serialised by a lock: SQLite allows a single
writer anyway, and this keeps transactions simple. Other processes (a ``cloudsend status`` next
to a running ``cloudsend run``) read concurrently thanks to WAL and wait on ``busy_timeout``
when writing. Every write is one explicit ``BEGIN IMMEDIATE`` transaction; every SQL statement
is parameterised. Any sqlite error surfaces as a StateError naming the database file.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cloudsend.core import FINAL, CloudSendProcessState, JobState
from cloudsend.errors import StateError
from cloudsend.state.schema import (
    JOB_COLUMNS,
    AttemptRecord,
    HostRecord,
    JobRecord,
    NewJob,
    Run,
    open_database,
    sqlite_error,
)

_LATEST_RUN = "SELECT id, created, config_hash, status FROM runs ORDER BY id DESC LIMIT 1"
StateLike = JobState | CloudSendProcessState | str
StateUpdate = tuple[str, StateLike, int | None, str | None]


class Store:
    """The state database. Use as a context manager, or call :meth:`close`."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._conn = open_database(self.path, busy_timeout)

    @property
    def journal_mode(self) -> str:
        return str(self._one("PRAGMA journal_mode")[0])

    # -- plumbing ------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; rolled back on any exception."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")  # take the write lock now, not mid-way
                try:
                    yield self._conn
                except BaseException:
                    if self._conn.in_transaction:  # sqlite may have rolled back already
                        self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise sqlite_error(self.path, exc) from exc

    def _all(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise sqlite_error(self.path, exc) from exc

    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        rows = self._all(sql, params)
        return rows[0] if rows else None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- runs ----------------------------------------------------------------------------

    def open_run(self, config_hash: str, *, new: bool = False) -> Run:
        """The latest run (resume), or a new one when ``new`` or when there is none.

        A resumed run keeps the config hash it started with: compare it with ``config_hash``
        to tell the user that the config changed since.
        """
        with self._write() as db:
            if not new:
                row = db.execute(_LATEST_RUN).fetchone()
                if row is not None:
                    return Run(*row)
            now = time.time()
            cur = db.execute(
                "INSERT INTO runs (created, config_hash, status) VALUES (?, ?, 'open')",
                (now, config_hash),
            )
            assert cur.lastrowid is not None
            return Run(cur.lastrowid, now, config_hash, "open")

    def latest_run(self) -> Run | None:
        row = self._one(_LATEST_RUN)
        return Run(*row) if row else None

    # -- hosts ---------------------------------------------------------------------------

    def upsert_host(
        self, run_id: int, name: str, provider: str, cpus: int, info: dict[str, Any]
    ) -> None:
        """Record a host of the run; an existing one is updated and keeps its health."""
        with self._write() as db:
            db.execute(
                "INSERT INTO hosts (run_id, name, provider, cpus, info, updated) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, name) DO UPDATE SET "
                "provider = excluded.provider, cpus = excluded.cpus, info = excluded.info, "
                "updated = excluded.updated",
                (run_id, name, provider, cpus, json.dumps(info, sort_keys=True), time.time()),
            )

    def set_host_health(self, run_id: int, name: str, health: str, detail: str = "") -> None:
        with self._write() as db:
            cur = db.execute(
                "UPDATE hosts SET health = ?, detail = ?, updated = ? "
                "WHERE run_id = ? AND name = ?",
                (health, detail, time.time(), run_id, name),
            )
            if cur.rowcount == 0:
                raise StateError(f"no host {name!r} in run {run_id} of {self.path}")

    def hosts(self, run_id: int) -> list[HostRecord]:
        rows = self._all(
            "SELECT name, provider, cpus, info, health, detail, updated FROM hosts "
            "WHERE run_id = ? ORDER BY rowid",
            (run_id,),
        )
        return [HostRecord.from_row(r) for r in rows]

    # -- jobs ----------------------------------------------------------------------------

    def add_jobs(self, run_id: int, rows: Sequence[NewJob]) -> int:
        """Register jobs; ids already in the run are left as they are. Returns how many new."""
        now = time.time()
        with self._write() as db:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO jobs (run_id, job_id, idx, rep, env_id, cpus, spec_hash, "
                "updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (run_id, j.job_id, j.index, j.rep, j.env_id, j.cpus, j.spec_hash, now)
                    for j in rows
                ],
            )
            return db.total_changes - before

    def jobs(self, run_id: int) -> list[JobRecord]:
        """The run's jobs in config order (index, then rep)."""
        sql = f"SELECT {JOB_COLUMNS} FROM jobs WHERE run_id = ? ORDER BY idx, rep, job_id"
        return [JobRecord.from_row(r) for r in self._all(sql, (run_id,))]

    def job(self, run_id: int, job_id: str) -> JobRecord | None:
        sql = f"SELECT {JOB_COLUMNS} FROM jobs WHERE run_id = ? AND job_id = ?"
        row = self._one(sql, (run_id, job_id))
        return JobRecord.from_row(row) if row else None

    def _require_job(self, db: sqlite3.Connection, run_id: int, job_id: str) -> tuple[Any, ...]:
        row = db.execute(
            "SELECT state, exit_code, reason, attempt FROM jobs WHERE run_id = ? AND job_id = ?",
            (run_id, job_id),
        ).fetchone()
        if row is None:
            raise StateError(f"no job {job_id!r} in run {run_id} of {self.path}")
        return tuple(row)

    def record_submission(self, run_id: int, job_id: str, host: str, attempt: int) -> None:
        """The agent on ``host`` accepted ``attempt`` of the job: it is now queued there.

        Clears the previous attempt's outcome and fetched flag (this attempt has its own), and
        closes a previous attempt left open (its host was lost) as superseded.
        """
        now = time.time()
        with self._write() as db:
            state, _, _, _ = self._require_job(db, run_id, job_id)
            db.execute(
                "UPDATE attempts SET ended = ?, state = ?, "
                "reason = coalesce(reason, 'superseded by attempt ' || ?) "
                "WHERE run_id = ? AND job_id = ? AND attempt < ? AND ended IS NULL",
                (now, state, attempt, run_id, job_id, attempt),
            )
            db.execute(
                "UPDATE jobs SET host = ?, attempt = ?, state = 'QUEUE', exit_code = NULL, "
                "reason = NULL, fetched = 0, updated = ? WHERE run_id = ? AND job_id = ?",
                (host, attempt, now, run_id, job_id),
            )
            db.execute(
                "INSERT OR REPLACE INTO attempts (run_id, job_id, attempt, host, started) "
                "VALUES (?, ?, ?, ?, ?)",
                (run_id, job_id, attempt, host, now),
            )

    def adopt_attempt(
        self, run_id: int, job_id: str, host: str, attempt: int, exit_code: int | None
    ) -> None:
        """An earlier attempt finished DONE first (its host came back after being declared
        lost): it becomes the job's current attempt again, to be fetched; the later attempts
        are closed as superseded, so the job is counted once."""
        now = time.time()
        with self._write() as db:
            self._require_job(db, run_id, job_id)
            db.execute(
                "UPDATE attempts SET ended = coalesce(ended, ?), "
                "reason = 'superseded: attempt ' || ? || ' finished first' "
                "WHERE run_id = ? AND job_id = ? AND attempt > ?",
                (now, attempt, run_id, job_id, attempt),
            )
            db.execute(
                "UPDATE attempts SET ended = ?, state = 'DONE', exit_code = ?, reason = NULL "
                "WHERE run_id = ? AND job_id = ? AND attempt = ?",
                (now, exit_code, run_id, job_id, attempt),
            )
            # its outputs may be home already (a late fetch of it, recorded but not current)
            home = db.execute(
                "SELECT EXISTS (SELECT 1 FROM fetched_files WHERE run_id = ? AND job_id = ? "
                "AND attempt = ?)",
                (run_id, job_id, attempt),
            ).fetchone()[0]
            db.execute(
                "UPDATE jobs SET host = ?, attempt = ?, state = 'DONE', exit_code = ?, "
                "reason = NULL, fetched = ?, updated = ? WHERE run_id = ? AND job_id = ?",
                (host, attempt, exit_code, int(bool(home)), now, run_id, job_id),
            )

    def _set_state(
        self,
        db: sqlite3.Connection,
        run_id: int,
        job_id: str,
        state: JobState,
        exit_code: int | None,
        reason: str | None,
        now: float,
    ) -> bool:
        old_state, old_code, old_reason, attempt = self._require_job(db, run_id, job_id)
        if (old_state, old_code, old_reason) == (state, exit_code, reason):
            return False  # `updated` keeps meaning "last change", and no write is wasted
        db.execute(
            "UPDATE jobs SET state = ?, exit_code = ?, reason = ?, updated = ? "
            "WHERE run_id = ? AND job_id = ?",
            (state.value, exit_code, reason, now, run_id, job_id),
        )
        if state in FINAL:
            db.execute(
                "UPDATE attempts SET ended = ?, state = ?, exit_code = ?, reason = ? "
                "WHERE run_id = ? AND job_id = ? AND attempt = ? AND ended IS NULL",
                (now, state.value, exit_code, reason, run_id, job_id, attempt),
            )
        return True

    def update_states(self, run_id: int, updates: Iterable[StateUpdate]) -> list[str]:
        """Apply ``(job_id, state, exit_code, reason)`` rows in one transaction.

        Returns the ids whose state, exit code or reason changed (what a reporter prints and
        what the pipeline fetches). Ids not in the run are skipped: an agent's status lists
        every job its host ever ran, other runs' included.
        """
        now = time.time()
        changed: list[str] = []
        with self._write() as db:
            rows = db.execute("SELECT job_id FROM jobs WHERE run_id = ?", (run_id,))
            known = {r[0] for r in rows}
            for job_id, state, exit_code, reason in updates:
                if job_id in known and self._set_state(
                    db, run_id, job_id, JobState.parse(state), exit_code, reason, now
                ):
                    changed.append(job_id)
        return changed

    def record_fetch(
        self, run_id: int, job_id: str, attempt: int, files: Iterable[tuple[str, int]]
    ) -> None:
        """Keep the ``(path, size)`` list fetched for an attempt; mark the job fetched when it
        is the current attempt (a late fetch of an older attempt marks nothing)."""
        self.record_fetches(run_id, [(job_id, attempt, list(files))])

    def record_fetches(
        self, run_id: int, items: Iterable[tuple[str, int, list[tuple[str, int]]]]
    ) -> None:
        """`record_fetch` for many jobs (job_id, attempt, files) in one transaction."""
        now = time.time()
        with self._write() as db:
            for job_id, attempt, files in items:
                *_, current = self._require_job(db, run_id, job_id)
                db.execute(
                    "DELETE FROM fetched_files WHERE run_id = ? AND job_id = ? AND attempt = ?",
                    (run_id, job_id, attempt),
                )
                db.executemany(
                    # OR REPLACE: one path listed twice by a host is one file, never a failure
                    "INSERT OR REPLACE INTO fetched_files (run_id, job_id, attempt, path, size) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(run_id, job_id, attempt, path, size) for path, size in files],
                )
                if attempt == current:
                    db.execute(
                        "UPDATE jobs SET fetched = 1, updated = ? WHERE run_id = ? AND job_id = ?",
                        (now, run_id, job_id),
                    )

    def fail_outputs(self, run_id: int, items: Iterable[tuple[str, int, str]]) -> list[str]:
        """Jobs (job_id, attempt, reason) whose attempt exited 0 without delivering a declared
        output: that attempt, if current and DONE, becomes ABORTED with the reason (its exit
        code stays 0). Returns the ids changed."""
        now = time.time()
        changed: list[str] = []
        with self._write() as db:
            for job_id, attempt, reason in items:
                state, _, _, current = self._require_job(db, run_id, job_id)
                if attempt != current or state != JobState.DONE.value:
                    continue
                db.execute(
                    "UPDATE jobs SET state = ?, reason = ?, updated = ? "
                    "WHERE run_id = ? AND job_id = ?",
                    (JobState.ABORTED.value, reason, now, run_id, job_id),
                )
                db.execute(
                    "UPDATE attempts SET state = ?, reason = ? "
                    "WHERE run_id = ? AND job_id = ? AND attempt = ?",
                    (JobState.ABORTED.value, reason, run_id, job_id, attempt),
                )
                changed.append(job_id)
        return changed

    def attempts(self, run_id: int, job_id: str) -> list[AttemptRecord]:
        rows = self._all(
            "SELECT attempt, host, started, ended, state, exit_code, reason FROM attempts "
            "WHERE run_id = ? AND job_id = ? ORDER BY attempt",
            (run_id, job_id),
        )
        return [
            AttemptRecord(a, host, start, end, None if st is None else JobState.parse(st), c, why)
            for a, host, start, end, st, c, why in rows
        ]
