"""The watch loop's decisions (scheduling.reactions) as tables: facts in, actions out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from cloudsend.scheduling import reactions as r


@dataclass(frozen=True)
class Rec:
    """A store record as the rules see it (state.JobRecord has the same fields)."""

    job_id: str
    state: str = "RUNNING"
    host: str | None = "h1"
    attempt: int = 1
    fetched: bool = False
    reason: str | None = None


VANISHED = "process vanished (host restarted?)"
SIGNAL = "killed by signal 15"


def kinds(actions: list[r.Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


# ---- a host is lost -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rec", "gone", "unfetchable", "stranded"),
    [
        (Rec("j", "RUNNING"), False, {}, {"j": 1}),
        (Rec("j", "QUEUE", attempt=2), False, {}, {"j": 2}),
        (Rec("j", "DONE", fetched=False), False, {}, {"j": 1}),  # outputs went with the host
        (Rec("j", "DONE", fetched=True), False, {}, {}),
        (Rec("j", "ABORTED", reason="exit code 1"), False, {"j": 1}, {}),
        (Rec("j", "ABORTED", reason="exit code 1", fetched=True), False, {}, {}),
        (Rec("j", "ABORTED", reason=SIGNAL), False, {"j": 1}, {}),  # live host: its own doing
        (Rec("j", "ABORTED", reason=SIGNAL), True, {}, {"j": 1}),  # killed with the machine
        (Rec("j", "ABORTED", reason=SIGNAL, fetched=True), True, {}, {"j": 1}),
        (Rec("j", "ABORTED", reason=VANISHED), False, {}, {"j": 1}),
        (Rec("j", "RUNNING", host="h2"), False, {}, {}),  # another host's
    ],
)
def test_what_a_lost_host_leaves(
    rec: Rec, gone: bool, unfetchable: dict[str, int], stranded: dict[str, int]
) -> None:
    assert r.stranded_on("h1", [rec], gone=gone) == (unfetchable, stranded)


def test_a_lost_host_with_work_and_somewhere_to_send_it() -> None:
    jobs = [Rec("a"), Rec("b", "DONE", fetched=True), Rec("c", "ABORTED", reason="exit 1")]
    actions = r.on_host_lost("h1", jobs, ["h2"], gone=False, lost_after=60)
    assert actions == [
        r.MarkLost("h1", "no answer for more than 60 s"),
        r.CloseUnfetchable("c", 1),
        r.Requeued("h1", {"a": 1}),
        r.Forget("h1", frozenset({"a"})),
        r.KeepWatching("h1", True),
        r.Notice("re-queuing 1 job(s) from lost host h1"),
        r.Submit({"a": 2}, ("h2",)),
    ]


def test_a_lost_host_with_work_and_nowhere_to_send_it_is_waited_for() -> None:
    actions = r.on_host_lost("h1", [Rec("a")], [], gone=True, lost_after=60)
    assert kinds(actions) == ["MarkLost", "Notice", "KeepWaiting"]
    assert actions[0] == r.MarkLost("h1", "machine terminated")
    assert "waiting for h1 to come back" in actions[1].text  # type: ignore[union-attr]


def test_a_lost_host_with_nothing_left_is_only_marked() -> None:
    jobs = [Rec("a", "DONE", fetched=True)]
    assert r.on_host_lost("h1", jobs, ["h2"], gone=False, lost_after=5) == [
        r.MarkLost("h1", "no answer for more than 5 s")
    ]


# ---- casualties of a host's restart -----------------------------------------------------------


@pytest.mark.parametrize(
    ("listed", "rec", "count", "again"),
    [
        ({"state": "ABORTED", "reason": VANISHED, "attempt": 1}, Rec("j", "ABORTED"), 0, {"j": 2}),
        ({"state": "ABORTED", "reason": VANISHED, "attempt": 1}, Rec("j", "ABORTED"), 2, {"j": 2}),
        ({"state": "ABORTED", "reason": VANISHED, "attempt": 1}, Rec("j", "ABORTED"), 3, {}),
        ({"state": "ABORTED", "reason": SIGNAL, "attempt": 1}, Rec("j", "ABORTED"), 0, {}),
        ({"state": "ABORTED", "reason": "exit 3", "attempt": 1}, Rec("j", "ABORTED"), 0, {}),
        ({"state": "DONE", "attempt": 1}, Rec("j", "DONE"), 0, {}),
        # an older attempt, or one the store has not seen end, or the job moved on
        ({"state": "ABORTED", "reason": VANISHED, "attempt": 1}, Rec("j", attempt=2), 0, {}),
        ({"state": "ABORTED", "reason": VANISHED, "attempt": 1}, Rec("j", "RUNNING"), 0, {}),
        ({"state": "ABORTED", "reason": VANISHED, "attempt": 1}, Rec("j", host="h2"), 0, {}),
    ],
)
def test_casualties_of_a_restart_run_again_a_few_times(
    listed: dict[str, Any], rec: Rec, count: int, again: dict[str, int]
) -> None:
    actions = r.on_casualties("h1", {"j": listed}, {"j": rec}, {"j": count} if count else {})
    submitted = [a for a in actions if isinstance(a, r.Submit)]
    assert (submitted[0].attempts if submitted else {}) == again
    if again:
        assert kinds(actions) == ["Notice", "CountCasualty", "Forget", "Submit"]


# ---- jobs a host does not have ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("listed", "rec", "submitted", "asked_at", "missing"),
    [
        ({}, Rec("j"), {}, 5.0, {"j": 2}),  # the host lost it: submit attempt + 1
        ({"j": {"attempt": 1}}, Rec("j"), {}, 5.0, {}),
        ({"j": {"attempt": 0}}, Rec("j"), {}, 5.0, {"j": 2}),  # an older attempt only
        ({}, Rec("j"), {"j": 6.0}, 5.0, {}),  # asked before the submission: stale answer
        ({}, Rec("j"), {}, 0.5, {}),  # asked before the watch began (since=1.0)
        ({}, Rec("j", "DONE"), {}, 5.0, {}),
        ({}, Rec("j", attempt=0), {}, 5.0, {}),  # never submitted
        ({}, Rec("j", host="h2"), {}, 5.0, {}),
    ],
)
def test_jobs_a_host_lacks_are_submitted_again_only_for_a_fresh_answer(
    listed: dict[str, Any],
    rec: Rec,
    submitted: dict[str, float],
    asked_at: float,
    missing: dict[str, int],
) -> None:
    actions = r.on_missing("h1", listed, [rec], submitted, asked_at=asked_at, since=1.0)
    submits = [a for a in actions if isinstance(a, r.Submit)]
    assert (dict(submits[0].attempts) if submits else {}) == missing
    if missing:
        assert r.Forget("h1", frozenset(missing)) in actions


# ---- a lost host returns ---------------------------------------------------------------------


RETURNS = [
    # (its old attempt there, the store's record (newer attempt), done elsewhere, actions)
    ({"state": "DONE", "attempt": 1, "exit_code": 0}, Rec("j", "RUNNING", "h2", 2), False,
     ["Forget", "Cancel", "Adopt", "Returned", "KeepWatching"]),
    ({"state": "DONE", "attempt": 1}, Rec("j", "RUNNING", "h2", 2), True,
     ["Returned", "KeepWatching"]),  # the newer one finished too: it stays the result
    ({"state": "DONE", "attempt": 1}, Rec("j", "DONE", "h2", 2), False,
     ["Returned", "KeepWatching"]),
    ({"state": "RUNNING", "attempt": 1}, Rec("j", "RUNNING", "h2", 2), False,
     ["Cancel", "Returned", "KeepWatching"]),  # stale: cancelled on the returned host
    ({"state": "ABORTED", "attempt": 1}, Rec("j", "RUNNING", "h2", 2), False,
     ["Returned", "KeepWatching"]),
    ({"state": "DONE", "attempt": 7}, Rec("j", "RUNNING", "h2", 2), False,
     ["Returned", "KeepWatching"]),  # not the attempt it had: nothing to settle
    (None, Rec("j", "RUNNING", "h2", 2), False, ["Returned", "KeepWatching"]),
]


@pytest.mark.parametrize(("doc", "rec", "elsewhere", "expected"), RETURNS)
def test_a_returning_host_settles_what_it_had(
    doc: dict[str, Any] | None, rec: Rec, elsewhere: bool, expected: list[str]
) -> None:
    listed = {"j": doc} if doc else {}
    done = {"j"} if elsewhere else set()
    actions = r.on_return("h1", {"j": 1}, listed, {"j": rec}, done)
    assert kinds(actions) == expected
    for action in actions:
        if isinstance(action, r.Adopt):
            assert action == r.Adopt("j", "h1", 1, 0)
        if isinstance(action, r.Cancel):
            assert action.host == ("h2" if "Adopt" in expected else "h1")


def test_only_a_reachable_newer_host_is_asked_whether_it_finished() -> None:
    listed = {"a": {"state": "DONE", "attempt": 1}, "b": {"state": "DONE", "attempt": 1}}
    records = {"a": Rec("a", "RUNNING", "h2", 2), "b": Rec("b", "RUNNING", "h3", 2)}
    assert r.return_candidates({"a": 1, "b": 1}, listed, records, lost={"h3"}) == {"h2": {"a"}}


# ---- machines ----------------------------------------------------------------------------------


def test_idle_machines_are_stopped_once() -> None:
    actions = r.idle_hosts({"h2"}, ["h1", "h2", "h3", "h4"], stopped={"h3"}, lost={"h4"})
    assert actions[-1] == r.StopMachines(("h1",))
    assert r.idle_hosts({"h1"}, ["h1"], stopped=set(), lost=set()) == []


@pytest.mark.parametrize(
    ("events", "stopped", "lost", "expected"),
    [
        (r.MachineEvents(start=("a", "b")), {"b"}, set(), [r.StartMachines(("a",))]),
        (r.MachineEvents(lost_hosts=("a",), known=frozenset({"a"})), set(), set(),
         [r.Notice("instance of host a is gone (terminated)"), r.HostGone("a")]),
        # auto_stop terminated it on purpose (spot): neither lost nor replaced
        (r.MachineEvents(lost_hosts=("a",), replace=("a",), known=frozenset({"a"})), {"a"},
         set(), []),
        # ...unless the cloud interrupted it meanwhile
        (r.MachineEvents(lost_hosts=("a",), interrupted=("a",), known=frozenset({"a"})),
         {"a"}, set(), [r.Unstopped(("a",)), r.Notice("instance of host a is gone (terminated)"),
                        r.HostGone("a")]),
        (r.MachineEvents(lost_hosts=("a",), known=frozenset({"a"})), set(), {"a"}, []),
        (r.MachineEvents(lost_hosts=("zz",), known=frozenset({"a"})), set(), set(), []),
        (r.MachineEvents(replace=("a",)), set(), set(),
         [r.Notice("replacing 1 instance(s)"), r.Replace(("a",))]),
    ],
)
def test_machine_events(
    events: r.MachineEvents, stopped: set[str], lost: set[str], expected: list[r.Action]
) -> None:
    assert r.on_machine_events(events, stopped, lost) == expected
