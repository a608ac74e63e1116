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
