"""Issue 10, items 11, 13, 15 and 16: what a run's outcome says, and what `down` and `status`
leave behind.

- 11: a declared output the job never wrote (or one resolving outside its work dir) fails the
  job ("output missing: X"), in the table, --json, the API and the exit code; an output listed
  under optional_output_files may be absent.
- 13: `down` with unfinished jobs asks (refuses without --yes when not on a terminal), says
  what it cancelled, leaves the store consistent; `status` after `down` is clean.
- 15: CANCELLED is a final state of its own: not an error exit, not re-run unless asked
  (`run --retry-cancelled`, `--reset`); `logs -f` on a job cancelled while queued says so.
- 16: `status` with a host unreachable shows the last known table, each host's health, and
  marks what is stale (human and --json).

Pure decisions have table tests; the rest runs for real on the local provider and real sshd
hosts (tests/sshd_harness.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from cloudsend.core import (
    FINAL,
    FINAL_STATES,
    CloudSendProcessState,
    JobState,
    in_states,
    reported_state,
)
from cloudsend.scheduling.transitions import HostView, JobSnapshot, plan_resume, status_updates
from tests.conftest import Project

S = JobState


def _wait_for(pred: Any, timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _status(project: Project) -> dict[str, Any] | None:
    proc = project.cli("status", "--json")
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def _jobs(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {j["job_id"]: j for j in doc["jobs"]}


# ---- 15: CANCELLED, pure rules ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "reason", "expected"),
    [
        ("ABORTED", "cancelled", S.CANCELLED),
        ("ABORTED", "exit code 1: boom", S.ABORTED),
        ("ABORTED", "killed by stop --kill-jobs", S.ABORTED),
        ("ABORTED", None, S.ABORTED),
        ("DONE", "cancelled", S.DONE),
        ("RUNNING", None, S.RUNNING),
        (None, None, S.UNKNOWN),
        (3, None, S.UNKNOWN),
    ],
)
def test_reported_state_tells_a_cancel_from_a_failure(
    state: object, reason: object, expected: JobState
) -> None:
    assert reported_state(state, reason) == expected


def test_cancelled_is_final_and_matches_what_seed_callers_wait_on() -> None:
    assert S.CANCELLED in FINAL and S.CANCELLED.is_final
    assert CloudSendProcessState.CANCELLED & FINAL_STATES
    assert S.CANCELLED.process_state == CloudSendProcessState.CANCELLED
    done_or_aborted = CloudSendProcessState.DONE | CloudSendProcessState.ABORTED
    assert in_states(S.CANCELLED, done_or_aborted)
    assert not in_states(S.CANCELLED, CloudSendProcessState.DONE)
    assert not in_states(S.RUNNING, done_or_aborted)
    assert JobState.parse("cancelled") == S.CANCELLED


def test_plan_resume_keeps_cancelled_jobs_unless_asked() -> None:
    L, M = HostView.LISTED, HostView.MISSING
    snaps = [
        JobSnapshot("cancelled", S.CANCELLED, 1, True, L),
        JobSnapshot("cancelled-gone", S.CANCELLED, 2, False, M),
        JobSnapshot("aborted", S.ABORTED, 1, True, L),
        JobSnapshot("done", S.DONE, 1, True, L),
    ]
    plan = plan_resume(snaps, retry_aborted=True)
    assert plan.cancelled == {"cancelled", "cancelled-gone"}
    assert plan.to_submit == {"aborted": 2}
    again = plan_resume(snaps, retry_aborted=True, retry_cancelled=True)
    assert again.to_submit == {"cancelled": 2, "cancelled-gone": 3, "aborted": 2}
    assert not again.cancelled
    assert plan_resume(snaps[:2]).done  # nothing to do: cancelled jobs are settled
    # cancelled, not fetched, and its host has nothing of it (down wiped it): nothing to fetch
    assert plan.gone_logs == {"cancelled-gone"}
    assert not again.gone_logs


class _Rec:
    def __init__(self, state: str, attempt: int = 1, fetched: bool = False) -> None:
        self.state, self.attempt, self.fetched = state, attempt, fetched


@pytest.mark.parametrize(
    ("record", "doc", "expected"),
    [
        # the agent's cancel (ABORTED "cancelled") is recorded CANCELLED
        (_Rec("RUNNING"), {"state": "ABORTED", "reason": "cancelled", "attempt": 1},
         [("j", S.CANCELLED, None, "cancelled")]),
        (_Rec("RUNNING"), {"state": "ABORTED", "reason": "exit code 2", "attempt": 1,
                           "exit_code": 2},
         [("j", S.ABORTED, 2, "exit code 2")]),
        (_Rec("QUEUE"), {"state": "RUNNING", "attempt": 1}, [("j", S.RUNNING, None, None)]),
        # nothing new
        (_Rec("RUNNING"), {"state": "RUNNING", "attempt": 1}, []),
        (_Rec("CANCELLED"), {"state": "ABORTED", "reason": "cancelled", "attempt": 1}, []),
        # another attempt's news
        (_Rec("QUEUE", attempt=2), {"state": "DONE", "attempt": 1}, []),
        # settled: final and fetched (e.g. failed for a missing output): the agent's DONE
        # for the same attempt does not undo it
        (_Rec("ABORTED", fetched=True), {"state": "DONE", "attempt": 1, "exit_code": 0}, []),
        # final but not fetched yet: the agent still has the say
        (_Rec("ABORTED"), {"state": "DONE", "attempt": 1, "exit_code": 0},
         [("j", S.DONE, 0, None)]),
    ],
)  # fmt: skip
def test_status_updates_table(record: _Rec, doc: dict[str, Any], expected: list[Any]) -> None:
    assert status_updates({"j": record}, {"j": doc}) == expected
    assert status_updates({}, {"j": doc}) == []  # not recorded on this host


# ---- 15: CANCELLED, for real -------------------------------------------------------------------


def test_cancel_is_not_a_failure_and_is_not_re_run(project: Project, tmp_path: Path) -> None:
    gate, ledger = tmp_path / "gate", tmp_path / "ledger.txt"
    project.config(
        f"""
        project: cancels
        instances:
          - cpus: 1
        jobs:
          - run_command: echo a >> {ledger}; while [ ! -e {gate} ]; do sleep 0.1; done
          - run_command: echo b >> {ledger}
        """
    )
    run = project.popen("run", "--json")
    try:
        doc = _wait_for(
            lambda: (d := _status(project))
            and sorted(j["state"] for j in d["jobs"]) == ["QUEUE", "RUNNING"]
            and d,
            what="one job running, one queued",
        )
        jobs = _jobs(doc)
        runner = next(j for j, v in jobs.items() if v["state"] == "RUNNING")
        queued = next(j for j, v in jobs.items() if v["state"] == "QUEUE")
        assert project.cli("cancel", queued, check=True).stdout.strip() == "cancelled 1 job(s)"
        # logs -f on a job cancelled while queued: says so and ends
        follow = project.cli("logs", queued, "-f", timeout=30, check=True)
        assert "cancelled while queued" in follow.stderr, follow.stderr
        assert project.cli("cancel", runner, check=True).returncode == 0
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err  # cancelling is not an error
    summary = json.loads(out)
    assert summary["ok"] is True
    assert summary["counts"] == {"CANCELLED": 2}
    assert {j["reason"] for j in summary["jobs"]} == {"cancelled"}
    assert ledger.read_text() == "a\n"  # the queued one never ran

    # the next run re-runs nothing, says so, exits 0
    again = project.cli("run", timeout=60)
    assert again.returncode == 0, again.stderr
    assert "2 job(s) CANCELLED" in again.stdout and "--retry-cancelled" in again.stdout
    assert ledger.read_text() == "a\n"
    table = project.cli("status", check=True).stdout
    assert table.count("CANCELLED") == 2

    # asked: they run again
    gate.touch()
    retried = json.loads(project.cli("run", "--retry-cancelled", "--json", check=True).stdout)
    assert retried["counts"] == {"DONE": 2}
    assert sorted(ledger.read_text().split()) == ["a", "a", "b"]


# ---- 11: declared outputs the job did not deliver ---------------------------------------------


@pytest.mark.parametrize(
    ("missing", "refused", "optional", "expected"),
    [
        ({}, {}, {}, {}),
        ({"j": ["a.txt"]}, {}, {}, {"j": "output missing: a.txt"}),
        ({"j": ["a.txt", "b/c"]}, {}, {}, {"j": "output missing: a.txt, b/c"}),
        ({"j": ["a.txt"]}, {}, {"j": ["a.txt"]}, {}),  # optional: absent is fine
        ({"j": ["a.txt", "b"]}, {}, {"j": ["b"]}, {"j": "output missing: a.txt"}),
        ({}, {"j": ["link"]}, {}, {"j": "output refused (outside the work dir): link"}),
        ({}, {"j": ["link"]}, {"j": ["link"]},  # optional does not excuse an escape
         {"j": "output refused (outside the work dir): link"}),
        ({"j": ["a"]}, {"j": ["l"]}, {},
         {"j": "output missing: a; output refused (outside the work dir): l"}),
        ({"j": []}, {"k": []}, {}, {}),
    ],
)  # fmt: skip
def test_output_failures_table(
    missing: dict[str, list[str]],
    refused: dict[str, list[str]],
    optional: dict[str, list[str]],
    expected: dict[str, str],
) -> None:
    from cloudsend.scheduling.transitions import output_failures

    assert output_failures(missing, refused, optional) == expected


def test_optional_outputs_must_be_declared_outputs(project: Project) -> None:
    project.config(
        """
        jobs:
          - run_command: "true"
            output_files: [a.txt, ./b.txt]
            optional_outputs: [./a.txt, b.txt, c.txt]
        """
    )
    proc = project.cli("validate", "cloudsend.yaml")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "optional_outputs" in proc.stderr and "c.txt" in proc.stderr
    assert "a.txt" not in proc.stderr.split("optional_outputs", 1)[1].split("\n")[0]
    assert "Traceback" not in proc.stderr


def test_a_missing_or_refused_output_fails_the_job(project: Project, tmp_path: Path) -> None:
    gate = tmp_path / "fixed"
    outside = tmp_path / "secret.txt"
    outside.write_text("not yours\n")
    project.config(
        f"""
        project: outputs
        instances:
          - cpus: 3
        jobs:
          - run_command: echo a > a.txt; if [ -e {gate} ]; then echo b > b.txt; fi
            output_files: [a.txt, b.txt, maybe.txt]
            optional_outputs: [maybe.txt]
          - run_command: ln -s {outside} link.txt
            output_file: link.txt
          - run_command: echo ok > fine.txt
            output_files: [fine.txt, maybe.txt]
            optional_outputs: maybe.txt
        """
    )
    proc = project.cli("run", "--json")
    assert proc.returncode == 6, proc.stderr  # a job error, as for any failed job
    assert "did not write a declared output" in proc.stderr
    jobs = sorted(json.loads(proc.stdout)["jobs"], key=lambda j: j["index"])
    writer, linker, fine = jobs
    assert (writer["state"], writer["exit_code"]) == ("ABORTED", 0)
    assert writer["reason"] == "output missing: b.txt"  # maybe.txt is optional
    assert linker["state"] == "ABORTED"
    assert linker["reason"] == "output refused (outside the work dir): link.txt"
    assert (fine["state"], fine["reason"]) == ("DONE", None)
    results = project.results()
    assert (results / writer["job_id"] / "a.txt").read_text() == "a\n"  # what exists came home
    assert not (results / linker["job_id"] / "link.txt").exists()
    assert (results / fine["job_id"] / "fine.txt").read_text() == "ok\n"

    # the table and the API say the same
    table = project.cli("status", check=True, env={"COLUMNS": "250"}).stdout
    assert "output missing: b.txt" in table and table.count("ABORTED") == 2
    from cloudsend.api import SyncClient

    client = SyncClient(project.path / "cloudsend.yaml")
    try:
        client.wakeup()
        views = {v.job_id: v for v in client.session.views()}
        assert views[writer["job_id"]].reason == "output missing: b.txt"
        assert not client.summary().ok
    finally:
        client.close()

    # a later status from the agent (which says DONE) does not undo it; a run retries it
    gate.touch()
    again = project.cli("run", "--json", timeout=120)
    jobs = {j["job_id"]: j for j in json.loads(again.stdout)["jobs"]}
    assert jobs[writer["job_id"]]["state"] == "DONE" and jobs[writer["job_id"]]["attempt"] == 2
    assert (project.results() / writer["job_id"] / "b.txt").read_text() == "b\n"
    assert jobs[fine["job_id"]]["attempt"] == 1  # DONE jobs are not run again


# ---- 13: down with unfinished jobs -------------------------------------------------------------


@pytest.mark.parametrize(
    ("unfinished", "yes", "interactive", "expected"),
    [
        (0, False, False, "go"),
        (0, False, True, "go"),
        (2, True, False, "go"),
        (2, True, True, "go"),
        (2, False, True, "ask"),
        (2, False, False, "refuse"),
    ],
)
def test_down_confirm_mode_table(
    unfinished: int, yes: bool, interactive: bool, expected: str
) -> None:
    from cloudsend.cli import confirm_mode

    assert confirm_mode(unfinished, yes, interactive) == expected


class _Job:
    def __init__(self, job_id: str, state: str, host: str | None, attempt: int = 1) -> None:
        self.job_id, self.state, self.host, self.attempt = job_id, state, host, attempt
        self.fetched, self.reason = False, None


def test_after_down_table() -> None:
    from cloudsend.scheduling.reactions import after_down

    jobs = [
        _Job("done", "DONE", "a"),
        _Job("failed", "ABORTED", "a"),
        _Job("cancelled", "CANCELLED", "a"),
        _Job("running", "RUNNING", "a"),
        _Job("queued", "QUEUE", "a"),
        _Job("waiting", "WAIT", "a"),
        _Job("never", "UNKNOWN", None, attempt=0),
        _Job("elsewhere", "RUNNING", "b"),  # b did not go down: still running there
    ]
    rows = after_down(jobs, {"a"})
    assert [r[0] for r in rows] == ["running", "queued", "waiting"]
    assert {r[1:] for r in rows} == {(S.CANCELLED, None, "cancelled by down")}
    assert after_down(jobs, set()) == []


def _start_stuck_run(project: Project, gate: Path) -> dict[str, dict[str, Any]]:
    """A run with one job running and one queued, then cloudsend killed: only the store
    and the agent know about them."""
    project.config(
        f"""
        project: downs
        instances:
          - cpus: 1
        jobs:
          - run_command: while [ ! -e {gate} ]; do sleep 0.1; done
          - run_command: echo second
        """
    )
    run = project.popen("run")
    try:
        doc = _wait_for(
            lambda: (d := _status(project))
            and sorted(j["state"] for j in d["jobs"]) == ["QUEUE", "RUNNING"]
            and d,
            what="one job running, one queued",
        )
    finally:
        run.kill()
        run.wait(timeout=10)
    return _jobs(doc)


def test_down_with_unfinished_jobs_refuses_without_yes_then_cancels_and_status_is_clean(
    project: Project, tmp_path: Path
) -> None:
    jobs = _start_stuck_run(project, tmp_path / "gate")
    refused = project.cli("down")  # stdin is not a terminal: cannot ask
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "down would cancel 2 job(s) not finished" in refused.stderr
    assert "--yes" in refused.stderr and "Traceback" not in refused.stderr
    doc = _status(project)
    assert doc is not None and sorted(j["state"] for j in doc["jobs"]) == ["QUEUE", "RUNNING"]

    down = project.cli("down", "--yes", check=True)
    assert "cancelled 2 unfinished job(s)" in down.stdout
    assert all(job_id in down.stdout for job_id in jobs)

    status = project.cli("status", env={"COLUMNS": "250"})
    assert status.returncode == 0, status.stderr
    assert "Traceback" not in status.stdout + status.stderr
    assert "No module named" not in status.stdout + status.stderr
    assert status.stdout.count("CANCELLED") == 2 and "host local: down" in status.stdout
    doc = json.loads(project.cli("status", "--json", check=True).stdout)
    assert {j["state"] for j in doc["jobs"]} == {"CANCELLED"}
    assert [h["health"] for h in doc["hosts"]] == ["down"]
    # cancelled jobs' logs (not fetched) do not hold a second down back, nor need --force
    assert project.cli("down").returncode == 0
    # and a later run does not silently re-run what down cancelled
    again = project.cli("run", "--json", timeout=120)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["counts"] == {"CANCELLED": 2}


def test_down_asks_on_a_terminal(project: Project, tmp_path: Path) -> None:
    import os
    import pty
    import subprocess
    import sys

    _start_stuck_run(project, tmp_path / "gate")

    def down_on_a_tty(answer: bytes) -> tuple[int, str]:
        leader, follower = pty.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-m", "cloudsend", "down"],
            cwd=project.path,
            stdin=follower,
            stdout=follower,
            stderr=follower,
        )
        os.close(follower)
        seen = b""
        try:
            while b"take the hosts down?" not in seen:
                chunk = os.read(leader, 4096)
                assert chunk, seen
                seen += chunk
            os.write(leader, answer)
            while True:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # the other side closed
                    break
                if not chunk:
                    break
                seen += chunk
            return proc.wait(timeout=60), seen.decode(errors="replace")
        finally:
            os.close(leader)
            if proc.poll() is None:
                proc.kill()

    code, text = down_on_a_tty(b"n\n")
    assert code == 1 and "2 job(s) not finished" in text and "not confirmed" in text, text
    doc = _status(project)
    assert doc is not None and "RUNNING" in {j["state"] for j in doc["jobs"]}
    code, text = down_on_a_tty(b"y\n")
    assert code == 0 and "cancelled 2 unfinished job(s)" in text, text
    doc = _status(project)
    assert doc is not None and {j["state"] for j in doc["jobs"]} == {"CANCELLED"}


# ---- 16: status with a host unreachable --------------------------------------------------------


def _view(job_id: str, state: str, host: str | None, fetched: bool = False) -> Any:
    from cloudsend.pipeline.reporting import JobView

    return JobView(job_id, 0, 0, JobState(state), host, 1, None, None, fetched)


def test_stale_jobs_table() -> None:
    from cloudsend.pipeline.reporting import stale_jobs

    views = [
        _view("running-gone", "RUNNING", "a"),
        _view("queued-gone", "QUEUE", "a"),
        _view("done-gone", "DONE", "a"),  # final: does not change by itself, never stale
        _view("done-home-gone", "DONE", "a", fetched=True),
        _view("cancelled-gone", "CANCELLED", "a"),
        _view("running-here", "RUNNING", "b"),
        _view("never-submitted", "UNKNOWN", None),
    ]
    assert stale_jobs(views, {"b"}) == {"running-gone", "queued-gone"}
    assert stale_jobs(views, {"a", "b"}) == set()


def test_status_doc_marks_stale_jobs_and_hosts() -> None:
    from cloudsend.state.schema import HostRecord
    from cloudsend.ui import status_doc

    hosts = [
        HostRecord("a", "ssh", 2, {}, "unreachable", "connection refused", 1.0),
        HostRecord("b", "ssh", 2, {}, "ok", "", 2.0),
        HostRecord("c", "ssh", 2, {}, "down", "", 3.0),  # taken down: nothing to ask
    ]
    views = [_view("x", "RUNNING", "a"), _view("y", "RUNNING", "b")]
    doc = status_doc(views, hosts, {"b"}, "none reachable")
    assert doc["stale"] is True and doc["error"] == "none reachable"
    assert {j["job_id"]: j["stale"] for j in doc["jobs"]} == {"x": True, "y": False}
    assert {h["name"]: h["stale"] for h in doc["hosts"]} == {"a": True, "b": False, "c": False}
    fresh = status_doc(views, hosts, {"a", "b"})
    assert fresh["stale"] is False and fresh["error"] is None


def test_status_with_its_only_host_unreachable_shows_the_last_known_table(
    project: Project, sshd_host: Any, ledger_dir: Path
) -> None:
    from tests.ssh_helpers import ssh_config

    project.config(ssh_config([sshd_host], ledger_dir / "ledger", jobs=2, sleep=60))
    run = project.popen("run")
    try:
        _wait_for(
            lambda: (d := _status(project)) and {j["state"] for j in d["jobs"]} == {"RUNNING"},
            what="both jobs running",
        )
    finally:
        run.kill()
        run.wait(timeout=10)
    sshd_host.kill()  # the host stops answering

    proc = project.cli("status", "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr  # was: exit 3, a provision error, no JSON
    doc = json.loads(proc.stdout)
    assert doc["stale"] is True and doc["error"]
    assert [j["state"] for j in doc["jobs"]] == ["RUNNING", "RUNNING"]
    assert all(j["stale"] for j in doc["jobs"])
    (host,) = doc["hosts"]
    assert host["health"] == "unreachable" and host["stale"] is True and host["detail"]

    table = project.cli("status", timeout=120, env={"COLUMNS": "250"})
    assert table.returncode == 0, table.stderr
    assert table.stdout.count("RUNNING?") == 2
    assert "(last known)" in table.stdout and "unreachable" in table.stdout
    assert "last known state: its host did not answer" in table.stdout
    assert "Traceback" not in table.stdout + table.stderr

    sshd_host.start()  # back: nothing stale any more
    doc = json.loads(project.cli("status", "--json", check=True, timeout=120).stdout)
    assert doc["stale"] is False and not any(j["stale"] for j in doc["jobs"])
    assert doc["hosts"][0]["health"] == "ok"


def test_fetch_through_the_api_fails_a_job_missing_an_output(project: Project) -> None:
    """The other way home (`cloudsend fetch`, client.fetch_results) applies the same rule."""
    from cloudsend.api import SyncClient

    cfg = project.config(
        """
        project: apifetch
        jobs:
          - run_command: echo a > a.txt
            output_files: [a.txt, never.txt]
          - run_command: echo b > b.txt
            output_file: b.txt
        """
    )
    client = SyncClient(cfg)
    try:
        client.start()
        client.deploy()
        assert client.run() == 2
        _wait_for(
            lambda: all(
                s & CloudSendProcessState.DONE for s in client.get_jobs_states().values()
            ),
            what="both jobs DONE on the host",
        )
        client.fetch_results()  # no watch loop: fetched by operations.fetch_results
        views = sorted(client.session.views(), key=lambda v: v.index)
        assert [(v.state, v.reason) for v in views] == [
            (S.ABORTED, "output missing: never.txt"),
            (S.DONE, None),
        ]
        assert views[0].exit_code == 0 and views[0].fetched
        assert not client.summary().ok
        assert client.get_jobs_states()[views[0].job_id] == CloudSendProcessState.ABORTED
    finally:
        client.close()


def test_down_then_status_on_ssh_hosts_is_clean(
    project: Project, sshd_factory: Any, ledger_dir: Path
) -> None:
    from tests.ssh_helpers import ssh_config

    hosts = sshd_factory(2)
    project.config(ssh_config(hosts, ledger_dir / "ledger", jobs=3, sleep=300, cpus=1))
    run = project.popen("run")
    try:
        _wait_for(
            lambda: (d := _status(project))
            and sorted(j["state"] for j in d["jobs"]) == ["QUEUE", "RUNNING", "RUNNING"],
            what="two jobs running, one queued",
        )
    finally:
        run.kill()
        run.wait(timeout=10)
    down = project.cli("down", "--yes", timeout=120)
    assert down.returncode == 0, down.stderr
    assert "cancelled 3 unfinished job(s)" in down.stdout
    status = project.cli("status", "--json", timeout=120)
    assert status.returncode == 0, status.stderr
    assert "Traceback" not in status.stderr
    doc = json.loads(status.stdout)
    assert [j["state"] for j in doc["jobs"]] == ["CANCELLED"] * 3
    assert {h["health"] for h in doc["hosts"]} == {"down"}
    assert doc["stale"] is False
