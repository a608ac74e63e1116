"""Job state transitions and the resume decision, as pure functions.

The hosts' agents are the source of truth for job progress; the local store records intent
(where each job went, which attempt, whether its outputs were fetched). `plan_resume` combines
the two into what the pipeline must do next, so the rules live in one tested place instead of
in the pipeline's control flow.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, Protocol

from cloudsend.core import FINAL, CloudSendProcessState, JobState, reported_state

State = CloudSendProcessState
StateLike = JobState | CloudSendProcessState | str


def agent_state_to_process_state(name: str) -> CloudSendProcessState:
    """Map a state name reported by an agent (or kept in the store) to a process state.

    WAIT, QUEUE, IDLE, RUNNING, DONE, ABORTED map to themselves (any case); BUILDING → WAIT;
    anything else, ANY included (it is a mask, not a state), → UNKNOWN.
    """
    return JobState.parse(name).process_state


def as_state(state: StateLike) -> CloudSendProcessState:
    """Accept a job state, a process state or a name (as the store and the agents write it)."""
    if isinstance(state, CloudSendProcessState):
        return state
    return JobState.parse(state).process_state


def is_final(state: StateLike) -> bool:
    """DONE, ABORTED or CANCELLED: the agent will not change it again (unless resubmitted)."""
    return JobState.parse(state).is_final


# Reasons an agent gives for a job ended from outside, by the machine rather than by the job.
# Its process vanished: the host restarted under it.
_HOST_RESTARTED = "process vanished"
# Signals, and `stop --kill-jobs` (how a machine's end is simulated, and what `down` does):
# a casualty only when the machine is known to be gone, never on a live host, where they are
# the job's own doing or the user stopping everything.
_KILLED = ("killed by signal", "killed by stop --kill-jobs")


def killed_with_host(reason: str | None, *, host_gone: bool) -> bool:
    """Whether an ABORTED job was a casualty of its host rather than a failure of its own.

    Such a job is re-queued with the host's other unfinished jobs instead of being reported
    as failed. A job killed by a signal (or by `stop --kill-jobs`) counts only when the
    machine itself is gone (terminated, spot-interrupted): a shutdown signals every process
    just before the end, whereas on a live host a signal is as likely the job's own doing
    (the OOM killer, say) and `stop --kill-jobs` is `cloudsend down` or `run --reset`.
    A job the user cancelled never counts.
    """
    if not reason:
        return False
    if reason.startswith(_HOST_RESTARTED):
        return True
    return host_gone and reason.startswith(_KILLED)


class RecordFacts(Protocol):
    """What the store knows of a job that status_updates reads (state.JobRecord has these)."""

    @property
    def state(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def fetched(self) -> bool: ...


StatusUpdate = tuple[str, JobState, "int | None", "str | None"]


def status_updates(
    records: Mapping[str, RecordFacts], listed: Mapping[str, Mapping[str, Any]]
) -> list[StatusUpdate]:
    """What an agent's status changes in the store: (job_id, state, exit_code, reason).

    ============================================  ======================================
    the agent lists the job                       update
    ============================================  ======================================
    not recorded on this host, or other attempt   none (not this attempt's news)
    recorded final and fetched                    none (settled: e.g. failed for an
                                                  output it did not write)
    ABORTED, reason "cancelled"                   CANCELLED
    another state than the store's                that state
    ============================================  ======================================
    """
    updates: list[StatusUpdate] = []
    for job_id, doc in listed.items():
        rec = records.get(job_id)
        if rec is None or doc.get("attempt") != rec.attempt:
            continue
        if rec.fetched and JobState.parse(rec.state) in FINAL:
            continue
        state = reported_state(doc.get("state"), doc.get("reason"))
        if state != rec.state:
            updates.append((job_id, state, doc.get("exit_code"), doc.get("reason")))
    return updates


def output_failures(
    missing: Mapping[str, Iterable[str]],
    refused: Mapping[str, Iterable[str]],
    optional: Mapping[str, Iterable[str]],
) -> dict[str, str]:
    """Jobs that exited 0 but did not deliver a declared output fail: job_id → the reason.

    ==========================================  ===========================================
    an output of the job (pack's answer)         verdict
    ==========================================  ===========================================
    missing, listed in optional_outputs         fine (nothing to fetch)
    missing                                     "output missing: X"
    refused (resolves outside the work dir)     "output refused (outside the work dir): X"
    ==========================================  ===========================================
    """
    reasons: dict[str, list[str]] = {}
    for job_id, outputs in missing.items():
        absent = [o for o in outputs if o not in set(optional.get(job_id, ()))]
        if absent:
            reasons.setdefault(job_id, []).append("output missing: " + ", ".join(absent))
    for job_id, outputs in refused.items():
        shown = ", ".join(outputs)
        if shown:
            reasons.setdefault(job_id, []).append(
                f"output refused (outside the work dir): {shown}"
            )
    return {job_id: "; ".join(parts) for job_id, parts in reasons.items()}


class HostView(str, Enum):
    """What the job's host said about the job in the latest status round."""

    LISTED = "listed"  # its host answered and lists the job: the state given is the agent's
    MISSING = "missing"  # no host has it: never submitted, or its host was replaced or wiped
    UNREACHABLE = "unreachable"  # its host did not answer: it may well still be running there


@dataclass(frozen=True)
class JobSnapshot:
    """What is known about one job when deciding how to resume.

    ``state`` is the agent's state when ``host`` is LISTED, otherwise the store's last known
    state. ``attempt`` is the store's (0 = never submitted).
    """

    job_id: str
    state: JobState | CloudSendProcessState
    attempt: int = 0
    fetched: bool = False
    host: HostView = HostView.MISSING


Decision = Literal["finished", "to_fetch", "to_submit", "watch", "wait", "failed", "cancelled"]


@dataclass(frozen=True)
class ResumePlan:
    """Every job lands in exactly one bucket.

    - ``finished``: DONE with outputs fetched; never touched again.
    - ``to_fetch``: DONE on a host that answers; fetch its outputs.
    - ``to_submit``: job id → the attempt number to submit it with (previous attempt + 1).
    - ``watch``: live on a host that answers (WAIT/QUEUE/IDLE/RUNNING); poll it.
    - ``wait``: its host did not answer; decide again on the next round rather than risk running
      it twice.
    - ``failed``: ABORTED and retries were not asked for; reported to the user.
    - ``cancelled``: CANCELLED (by the user) and re-running them was not asked for.
    - ``gone_logs``: those of ``cancelled`` not fetched whose host no longer has them (down,
      a wiped host): nothing left to fetch; their fetch is closed empty.
    """

    finished: frozenset[str] = frozenset()
    to_fetch: frozenset[str] = frozenset()
    to_submit: dict[str, int] = field(default_factory=dict)
    watch: frozenset[str] = frozenset()
    wait: frozenset[str] = frozenset()
    failed: frozenset[str] = frozenset()
    cancelled: frozenset[str] = frozenset()
    gone_logs: frozenset[str] = frozenset()

    @property
    def done(self) -> bool:
        """Nothing left to do but report: no job will change state any more."""
        return not (self.to_fetch or self.to_submit or self.watch or self.wait)


def decide(
    job: JobSnapshot, *, retry_aborted: bool = False, retry_cancelled: bool = False
) -> Decision:
    """The bucket of :class:`ResumePlan` one job goes to (see :func:`plan_resume`)."""
    state = JobState.parse(job.state)
    if state == JobState.CANCELLED:
        # the user's decision: never undone silently (run --retry-cancelled, or --reset)
        return "to_submit" if retry_cancelled else "cancelled"
    if state == JobState.DONE:
        if job.fetched:
            return "finished"
        if job.host == HostView.LISTED:
            return "to_fetch"
        if job.host == HostView.UNREACHABLE:
            return "wait"
        # DONE but its host no longer has it: the unfetched outputs went with the host.
        return "to_submit"
    if state == JobState.ABORTED:
        # A failure is final unless asked: re-running a script that crashed usually crashes
        # again, and a silent retry would hide the error from the user.
        return "to_submit" if retry_aborted else "failed"
    if job.host == HostView.LISTED:
        return "watch"
    if job.host == HostView.UNREACHABLE:
        return "wait"
    # Not final and on no host: never submitted, or lost with its host (replaced, wiped).
    return "to_submit"


def plan_resume(
    jobs: Iterable[JobSnapshot], *, retry_aborted: bool = False, retry_cancelled: bool = False
) -> ResumePlan:
    """Decide, for every job, what resuming a run means. Rules (first match wins):

    ============  ========  ===========  =====================================
    state         fetched   host         decision
    ============  ========  ===========  =====================================
    CANCELLED     any       any          to_submit if retry_cancelled else cancelled
    DONE          yes       any          finished
    DONE          no        listed       to_fetch
    DONE          no        unreachable  wait
    DONE          no        missing      to_submit (outputs lost with the host)
    ABORTED       any       any          to_submit if retry_aborted else failed
    other         any       listed       watch
    other         any       unreachable  wait
    other         any       missing      to_submit
    ============  ========  ===========  =====================================

    Submissions use ``attempt + 1`` (1 for a job never submitted): the agent only resets an
    existing job for a greater attempt, and the store keeps one attempts row per number.
    """
    buckets: dict[Decision, set[str]] = {
        "finished": set(),
        "to_fetch": set(),
        "watch": set(),
        "wait": set(),
        "failed": set(),
        "cancelled": set(),
    }
    to_submit: dict[str, int] = {}
    gone_logs: set[str] = set()
    for job in jobs:
        bucket = decide(job, retry_aborted=retry_aborted, retry_cancelled=retry_cancelled)
        if bucket == "cancelled" and not job.fetched and job.host == HostView.MISSING:
            gone_logs.add(job.job_id)
        if bucket == "to_submit":
            to_submit[job.job_id] = max(job.attempt, 0) + 1
        else:
            buckets[bucket].add(job.job_id)
    return ResumePlan(
        finished=frozenset(buckets["finished"]),
        to_fetch=frozenset(buckets["to_fetch"]),
        to_submit=to_submit,
        watch=frozenset(buckets["watch"]),
        wait=frozenset(buckets["wait"]),
        failed=frozenset(buckets["failed"]),
        cancelled=frozenset(buckets["cancelled"]),
        gone_logs=frozenset(gone_logs),
    )
