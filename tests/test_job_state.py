"""The one job-state vocabulary (`JobState`) and its conversions to the seed's flags."""

from __future__ import annotations

import json

import pytest

from cloudsend.core import FINAL, FINAL_STATES, CloudSendProcessState, JobState

F = CloudSendProcessState


@pytest.mark.parametrize(
    ("state", "flag"),
    [
        (JobState.UNKNOWN, F.UNKNOWN),
        (JobState.WAIT, F.WAIT),
        (JobState.QUEUE, F.QUEUE),
        (JobState.IDLE, F.IDLE),
        (JobState.RUNNING, F.RUNNING),
        (JobState.DONE, F.DONE),
        (JobState.ABORTED, F.ABORTED),
    ],
)
def test_each_state_is_one_flag_and_back(state: JobState, flag: CloudSendProcessState) -> None:
    assert state.process_state is flag
    assert JobState.parse(flag) is state
    assert JobState.parse(state.value) is state
    assert F.from_name(state.value) is flag


def test_every_state_has_its_flag() -> None:
    assert {s.name for s in JobState} == {f.name for f in F} - {"ANY"}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("DONE", JobState.DONE),
        ("done", JobState.DONE),
        (" Running ", JobState.RUNNING),
        ("queue", JobState.QUEUE),
        ("BUILDING", JobState.WAIT),  # an environment being built: its jobs wait
        ("building", JobState.WAIT),
        ("READY", JobState.UNKNOWN),  # an environment state, not a job's
        ("FAILED", JobState.UNKNOWN),
        ("ANY", JobState.UNKNOWN),  # a mask, not a state
        ("", JobState.UNKNOWN),
        ("JobState.DONE", JobState.UNKNOWN),
        (F.ANY, JobState.UNKNOWN),
        (F.DONE | F.ABORTED, JobState.UNKNOWN),  # a set of states is not one state
        (JobState.ABORTED, JobState.ABORTED),
    ],
)
def test_parse(given: JobState | CloudSendProcessState | str, expected: JobState) -> None:
    assert JobState.parse(given) is expected


def test_final_is_done_aborted_cancelled_as_members_and_as_plain_strings() -> None:
    assert sorted(FINAL) == [JobState.ABORTED, JobState.CANCELLED, JobState.DONE]
    assert "DONE" in FINAL and "ABORTED" in FINAL  # what agents report is matched as is
    assert "RUNNING" not in FINAL and None not in FINAL and "done" not in FINAL
    final = [s for s in JobState if s.is_final]
    assert final == [JobState.DONE, JobState.ABORTED, JobState.CANCELLED]
    assert {s.process_state for s in FINAL} == {F.DONE, F.ABORTED, F.CANCELLED}
    assert all(bool(s.process_state & FINAL_STATES) == s.is_final for s in JobState)


def test_a_state_reads_as_its_plain_name() -> None:
    # JSON output (`--json`), tables and messages keep showing "DONE", never "JobState.DONE"
    assert JobState.DONE == "DONE" and hash(JobState.DONE) == hash("DONE")
    assert str(JobState.DONE) == "DONE" and f"{JobState.QUEUE:7}|" == "QUEUE  |"
    assert json.dumps({"state": JobState.ABORTED}) == '{"state": "ABORTED"}'
    assert {"DONE": 1}.get(JobState.DONE) == 1
