"""The SQLite state store: round trips, resume semantics, errors, concurrency."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudsend.core import CloudSendProcessState as S
from cloudsend.core import JobState
from cloudsend.errors import StateError
from cloudsend.state import SCHEMA_VERSION, NewJob, Store


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "project" / ".cloudsend" / "state.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    with Store(db_path) as s:
        yield s


def new_jobs(n: int, prefix: str = "j") -> list[NewJob]:
    return [NewJob(f"{prefix}{i:03d}", i, 0, "env-abc", 1, f"h{i}") for i in range(n)]


def counts(store: Store, run_id: int) -> dict[str, int]:
    """Jobs per state name, as a reporter counts them."""
    return dict(Counter(j.state.value for j in store.jobs(run_id)))


def set_state(
    store: Store,
    run_id: int,
    job_id: str,
    state: object,
    code: int | None = None,
    reason: str | None = None,
) -> bool:
    """One job's state, through the pipeline's `update_states`; True if it changed."""
    return store.update_states(run_id, [(job_id, state, code, reason)]) == [job_id]  # type: ignore[list-item]


# --- opening ---------------------------------------------------------------------------


def test_creates_parent_dirs_wal_and_version(db_path: Path, store: Store) -> None:
    assert db_path.is_file()
    assert store.journal_mode == "wal"
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_reopening_keeps_data_and_schema(db_path: Path) -> None:
    with Store(db_path) as s:
        run = s.open_run("cfg1")
        s.add_jobs(run.id, new_jobs(2))
    with Store(db_path) as s:
        assert s.open_run("cfg1") == run  # resume: the same run
        assert [j.job_id for j in s.jobs(run.id)] == ["j000", "j001"]


def test_newer_schema_is_refused(db_path: Path) -> None:
    Store(db_path).close()
    with sqlite3.connect(db_path) as raw:
        raw.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(StateError) as err:
        Store(db_path)
    assert str(db_path) in err.value.message and "newer cloudsend" in err.value.message
    assert err.value.hint and "upgrade cloudsend" in err.value.hint


@pytest.mark.parametrize("content", [b"this is not a database at all" * 100, b"\x00" * 4096])
def test_corrupt_file_is_a_state_error(db_path: Path, content: bytes) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(content)
    with pytest.raises(StateError) as err:
        Store(db_path)
    assert str(db_path) in str(err.value)
    assert err.value.hint and "rm -r .cloudsend" in err.value.hint


def test_foreign_sqlite_file_is_refused(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as raw:
        raw.execute("CREATE TABLE photos (id INTEGER)")
    with pytest.raises(StateError, match="not a cloudsend state store"):
        Store(db_path)


def test_unwritable_location_is_a_state_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StateError, match="cannot create the state directory"):
        Store(tmp_path / "file" / ".cloudsend" / "state.db")


def test_closed_store_raises_state_error(db_path: Path) -> None:
    s = Store(db_path)
    s.close()
    with pytest.raises(StateError):
        s.latest_run()


# --- runs and hosts --------------------------------------------------------------------


def test_runs(store: Store) -> None:
    assert store.latest_run() is None
    first = store.open_run("aaa")
    assert (first.config_hash, first.status) == ("aaa", "open")
    assert store.open_run("bbb") == first  # resumes the latest, whatever the hash
    second = store.open_run("bbb", new=True)
    assert second.id > first.id
    latest = store.latest_run()
    assert latest is not None and (latest.id, latest.status) == (second.id, "open")


def test_hosts_round_trip(store: Store) -> None:
    run = store.open_run("x")
    store.upsert_host(run.id, "local-0", "local", 4, {"root": "/tmp/h0", "n": [1, 2]})
    store.upsert_host(run.id, "local-1", "local", 2, {})
    store.set_host_health(run.id, "local-0", "unreachable", "ssh: timeout")
    store.upsert_host(run.id, "local-0", "local", 8, {"root": "/tmp/h0b"})  # keeps health
    h0, h1 = store.hosts(run.id)
    assert (h0.name, h0.provider, h0.cpus, h0.info) == ("local-0", "local", 8, {"root": "/tmp/h0b"})
    assert (h0.health, h0.detail) == ("unreachable", "ssh: timeout")
    assert (h1.name, h1.health, h1.detail) == ("local-1", "unknown", "")
    assert store.hosts(run.id + 1) == []
    with pytest.raises(StateError, match="no host 'nope'"):
        store.set_host_health(run.id, "nope", "ok")


# --- per-host caches -------------------------------------------------------------------


# --- jobs ------------------------------------------------------------------------------


def test_add_jobs_is_insert_or_ignore(store: Store) -> None:
    run = store.open_run("x")
    assert store.add_jobs(run.id, new_jobs(3)) == 3
    assert set_state(store, run.id, "j001", S.RUNNING)
    changed = [NewJob("j001", 1, 0, "other", 8, "zzz"), NewJob("j003", 3, 0, None, 2, "h3")]
    assert store.add_jobs(run.id, changed) == 1
    j1 = store.job(run.id, "j001")
    assert j1 is not None and (j1.env_id, j1.cpus, j1.spec_hash, j1.state) == (
        "env-abc",
        1,
        "h1",
        "RUNNING",
    )
    assert [j.job_id for j in store.jobs(run.id)] == ["j000", "j001", "j002", "j003"]
    fresh = store.job(run.id, "j003")
    assert fresh is not None
    assert (fresh.state, fresh.host, fresh.attempt, fresh.fetched) == ("UNKNOWN", None, 0, False)
    assert fresh.state is JobState.UNKNOWN  # read back as a member, not a bare string
    assert (fresh.index, fresh.rep, fresh.env_id, fresh.exit_code, fresh.reason) == (
        3,
        0,
        None,
        None,
        None,
    )
    assert store.job(run.id, "nope") is None
    other = store.open_run("y", new=True)
    assert store.add_jobs(other.id, new_jobs(3)) == 3  # ids are per run


def test_job_lifecycle_with_attempts_and_fetch(store: Store) -> None:
    run = store.open_run("x")
    store.add_jobs(run.id, new_jobs(1))
    store.record_submission(run.id, "j000", "h0", 1)
    assert set_state(store, run.id, "j000", "running")
    assert not set_state(store, run.id, "j000", S.RUNNING)  # no change
    assert set_state(store, run.id, "j000", JobState.ABORTED, 3, "exit code 3: boom")
    (a1,) = store.attempts(run.id, "j000")
    assert (a1.attempt, a1.host, a1.state, a1.exit_code, a1.reason) == (
        1,
        "h0",
        "ABORTED",
        3,
        "exit code 3: boom",
    )
    assert a1.ended is not None and a1.ended >= a1.started

    store.record_submission(run.id, "j000", "h1", 2)  # retry elsewhere
    job = store.job(run.id, "j000")
    assert job is not None
    assert (job.host, job.attempt, job.state, job.exit_code, job.reason) == (
        "h1",
        2,
        "QUEUE",
        None,
        None,
    )
    set_state(store, run.id, "j000", "DONE", 0)
    store.record_fetch(run.id, "j000", 1, [("stdout.log", 5)])  # a late fetch of attempt 1
    assert not store.job(run.id, "j000").fetched  # type: ignore[union-attr]
    store.record_fetch(run.id, "j000", 2, [("out/b.csv", 7), ("a.txt", 3)])
    store.record_fetch(run.id, "j000", 2, [("out/b.csv", 8), ("a.txt", 3)])  # refetch replaces
    assert store.job(run.id, "j000").fetched  # type: ignore[union-attr]
    with sqlite3.connect(store.path) as raw:
        fetched = raw.execute(
            "SELECT attempt, path, size FROM fetched_files WHERE job_id = 'j000' "
            "ORDER BY attempt, path"
        ).fetchall()
    assert fetched == [(1, "stdout.log", 5), (2, "a.txt", 3), (2, "out/b.csv", 8)]
    assert [(a.attempt, a.state) for a in store.attempts(run.id, "j000")] == [
        (1, "ABORTED"),
        (2, "DONE"),
    ]


def test_lost_attempt_is_closed_as_superseded(store: Store) -> None:
    run = store.open_run("x")
    store.add_jobs(run.id, new_jobs(1))
    store.record_submission(run.id, "j000", "h0", 1)
    set_state(store, run.id, "j000", "RUNNING")
    store.record_submission(run.id, "j000", "h1", 2)  # h0 was terminated
    a1, a2 = store.attempts(run.id, "j000")
    assert a1.ended is not None and a1.state == "RUNNING" and a1.reason == "superseded by attempt 2"
    assert a2.ended is None and a2.host == "h1"


def test_unknown_job_is_a_state_error(store: Store) -> None:
    run = store.open_run("x")
    with pytest.raises(StateError, match="no job 'ghost'"):
        store.adopt_attempt(run.id, "ghost", "h0", 1, 0)
    with pytest.raises(StateError, match="no job 'ghost'"):
        store.record_submission(run.id, "ghost", "h0", 1)
    with pytest.raises(StateError, match="no job 'ghost'"):
        store.record_fetch(run.id, "ghost", 1, [])


def test_update_states_batch_and_counts(store: Store) -> None:
    run = store.open_run("x")
    store.add_jobs(run.id, new_jobs(4))
    changed = store.update_states(
        run.id,
        [
            ("j000", "DONE", 0, None),
            ("j001", S.RUNNING, None, None),
            ("j002", "ABORTED", 1, "exit code 1: x"),
            ("from-another-run", "DONE", 0, None),
        ],
    )
    assert changed == ["j000", "j001", "j002"]
    assert store.update_states(
        run.id, [("j000", "DONE", 0, None), ("j003", "WAIT", None, None)]
    ) == ["j003"]
    assert counts(store, run.id) == {"DONE": 1, "RUNNING": 1, "ABORTED": 1, "WAIT": 1}


def test_update_states_is_one_transaction(store: Store) -> None:
    run = store.open_run("x")
    store.add_jobs(run.id, new_jobs(2))
    bad = object()  # sqlite cannot bind it: fails on the second row
    with pytest.raises(StateError):
        store.update_states(run.id, [("j000", "DONE", 0, None), ("j001", "DONE", bad, None)])  # type: ignore[list-item]
    assert counts(store, run.id) == {"UNKNOWN": 2}  # the first row was rolled back too


# --- concurrency -----------------------------------------------------------------------


def test_concurrent_writes_from_threads(store: Store) -> None:
    run = store.open_run("x")
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            jobs = new_jobs(25, prefix=f"t{t}-")
            store.add_jobs(run.id, jobs)
            for j in jobs:
                store.record_submission(run.id, j.job_id, f"h{t}", 1)
            store.update_states(run.id, [(j.job_id, "DONE", 0, None) for j in jobs])
        except BaseException as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert counts(store, run.id) == {"DONE": 200}
    assert Counter(j.host for j in store.jobs(run.id)) == {f"h{t}": 25 for t in range(8)}
    assert all(len(store.attempts(run.id, j.job_id)) == 1 for j in store.jobs(run.id))


def test_two_connections_writing_at_once_wait_for_each_other(db_path: Path) -> None:
    # Two stores on one file stand for two cloudsend processes: BEGIN IMMEDIATE plus
    # busy_timeout make the second writer wait instead of failing with "database is locked".
    with Store(db_path) as a, Store(db_path) as b:
        run = a.open_run("x")
        a.add_jobs(run.id, new_jobs(100))

        def writer(store: Store, state: str, ids: range) -> None:
            for i in ids:
                set_state(store, run.id, f"j{i:03d}", state)

        threads = [
            threading.Thread(target=writer, args=(a, "DONE", range(0, 50))),
            threading.Thread(target=writer, args=(b, "ABORTED", range(50, 100))),
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert counts(a, run.id) == counts(b, run.id) == {"DONE": 50, "ABORTED": 50}


READER = """
import json, sys
from cloudsend.state import Store
with Store(sys.argv[1]) as s:
    run = s.latest_run()
    print(json.dumps({"run": run.id, "counts": {j.job_id: j.state for j in s.jobs(run.id)}}))
    if len(sys.argv) > 2:
        s.update_states(run.id, [("j001", "ABORTED", 9, "from the other process")])
"""


def test_another_process_sees_committed_data(db_path: Path, store: Store) -> None:
    run = store.open_run("x")
    store.add_jobs(run.id, new_jobs(2))
    set_state(store, run.id, "j000", "DONE", 0)
    # This store stays open (WAL, mid-session) while the other process reads and writes.
    out = subprocess.run(
        [sys.executable, "-c", READER, str(db_path), "write"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(out.stdout) == {"run": run.id, "counts": {"j000": "DONE", "j001": "UNKNOWN"}}
    j1 = store.job(run.id, "j001")
    assert j1 is not None and (j1.state, j1.exit_code) == ("ABORTED", 9)


def test_adopt_attempt_makes_an_earlier_done_attempt_current(tmp_path: Path) -> None:
    from cloudsend.state import NewJob, Store

    with Store(tmp_path / "s.db") as store:
        run = store.open_run("h")
        store.add_jobs(run.id, [NewJob("j1", 0, 0, None, 1, "x")])
        store.record_submission(run.id, "j1", "a", 1)
        store.record_submission(run.id, "j1", "b", 2)  # host a was lost: re-queued on b
        store.adopt_attempt(run.id, "j1", "a", 1, 0)  # a came back with attempt 1 DONE
        job = store.job(run.id, "j1")
        assert job is not None
        assert (job.host, job.attempt, job.state, job.fetched) == ("a", 1, "DONE", False)
        store.record_fetch(run.id, "j1", 1, [("out.txt", 3)])
        assert store.job(run.id, "j1").fetched  # type: ignore[union-attr]
        attempts = {a.attempt: a for a in store.attempts(run.id, "j1")}
        assert attempts[2].reason == "superseded: attempt 1 finished first"
        assert attempts[1].state == "DONE"


def test_adopting_an_attempt_already_fetched_keeps_it_fetched(tmp_path: Path) -> None:
    """Its outputs came home late (after the re-queue): adopting it must not fetch them twice."""
    from cloudsend.state import NewJob, Store

    with Store(tmp_path / "s.db") as store:
        run = store.open_run("h")
        store.add_jobs(run.id, [NewJob("j1", 0, 0, None, 1, "x")])
        store.record_submission(run.id, "j1", "a", 1)
        store.record_submission(run.id, "j1", "b", 2)
        store.record_fetch(run.id, "j1", 1, [("out.txt", 3)])  # late: attempt 1 not current
        assert not store.job(run.id, "j1").fetched  # type: ignore[union-attr]
        store.adopt_attempt(run.id, "j1", "a", 1, 0)
        job = store.job(run.id, "j1")
        assert job is not None and (job.attempt, job.fetched) == (1, True)


def test_switch_to_wal_waits_out_a_concurrent_creation() -> None:
    """Two processes creating the store at once: SQLite refuses one's switch to WAL at once
    ("database is locked", seen 2 in 900 races of 6 openers here); it is retried within the
    busy timeout, and any other error, or a lock past the timeout, still surfaces."""
    import sqlite3

    from cloudsend.state.schema import _use_wal

    class Flaky:
        def __init__(self, failures: int, message: str = "database is locked") -> None:
            self.failures, self.message, self.calls = failures, message, 0

        def execute(self, sql: str) -> None:
            assert sql == "PRAGMA journal_mode = WAL"
            self.calls += 1
            if self.calls <= self.failures:
                raise sqlite3.OperationalError(self.message)

    conn = Flaky(2)
    _use_wal(conn, busy_timeout=5.0)  # type: ignore[arg-type]
    assert conn.calls == 3
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        _use_wal(Flaky(1, "disk I/O error"), busy_timeout=5.0)  # type: ignore[arg-type]
    forever = Flaky(10**9)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        _use_wal(forever, busy_timeout=0.1)  # type: ignore[arg-type]
    assert forever.calls > 1
