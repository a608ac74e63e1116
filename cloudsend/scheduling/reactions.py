"""What to do while a run is watched, as pure functions returning typed actions.

`plan_resume` (transitions.py) decides how a run resumes; these decide what the watch loop does
about what happens meanwhile: a host that stops answering (lost), jobs a host's restart killed
(casualties), jobs a host turns out not to have (missing), a lost host that answers again
(returns), machines with no work left (auto_stop) and the cloud's machine events. Each takes
plain facts (store records, an agent's job documents, the run's bookkeeping) and returns the
actions the run's owner carries out, in order; none does I/O, so each rule is a table test.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from cloudsend.core import FINAL, JobState
from cloudsend.scheduling.transitions import killed_with_host

DONE, ABORTED, CANCELLED = JobState.DONE, JobState.ABORTED, JobState.CANCELLED
MAX_CASUALTY_RETRIES = 3
# The reason of a job that could not finish because the run's time budget ran out (every host
# that could take it reached its eco_life); RunSummary.out_of_time counts these.
OUT_OF_TIME = "time budget ran out"


def out_of_time(reason: str | None) -> bool:
    """Whether a job's reason says the time budget ran out (see OUT_OF_TIME)."""
    return bool(reason) and str(reason).startswith(OUT_OF_TIME)


class JobFacts(Protocol):
    """What the store knows of a job (state.JobRecord has these)."""

    @property
    def job_id(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def host(self) -> str | None: ...
    @property
    def attempt(self) -> int: ...
    @property
    def fetched(self) -> bool: ...
    @property
    def reason(self) -> str | None: ...


AgentJobs = Mapping[str, Mapping[str, Any]]  # an agent's status "jobs": job_id → its document


def _state(doc: Mapping[str, Any]) -> str:
    """An agent document's state, "" when it is not a name (a malformed answer)."""
    value = doc.get("state")
    return value if isinstance(value, str) else ""


# ---- actions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Notice:
    text: str


@dataclass(frozen=True)
class MarkLost:
    """The host is lost: health "lost" with this detail, its watcher kept for its return."""

    host: str
    detail: str


@dataclass(frozen=True)
class KeepWaiting:
    """No host can take the lost host's jobs: it is not lost after all; give it another
    host_lost_after to answer."""

    host: str


@dataclass(frozen=True)
class CloseUnfetchable:
    """A job that failed on a lost host: its logs are out of reach; close its fetch (empty)."""

    job_id: str
    attempt: int


@dataclass(frozen=True)
class Requeued:
    """Remember the attempts these jobs had on the lost host, to settle them if it returns."""

    host: str
    attempts: Mapping[str, int]


@dataclass(frozen=True)
class Forget:
    """The host's watcher stops expecting these jobs (their attempt moves elsewhere)."""

    host: str
    jobs: frozenset[str]


@dataclass(frozen=True)
class KeepWatching:
    """The host's watcher keeps polling (or not) once it expects nothing: to see it return."""

    host: str
    on: bool


@dataclass(frozen=True)
class Submit:
    """Submit these jobs (job_id → attempt); `targets` None: any host that may take work."""

    attempts: Mapping[str, int]
    targets: tuple[str, ...] | None = None


@dataclass(frozen=True)
class CountCasualty:
    job_id: str


@dataclass(frozen=True)
class Cancel:
    host: str
    jobs: tuple[str, ...]


@dataclass(frozen=True)
class Adopt:
    """The returned host's older attempt finished first: it becomes the job's result (and
    is watched there to fetch its outputs)."""

    job_id: str
    host: str
    attempt: int
    exit_code: int | None


@dataclass(frozen=True)
class Returned:
    """The lost host is settled: no longer lost, nothing of it is pending."""

    host: str


@dataclass(frozen=True)
class StartMachines:
    names: tuple[str, ...]


@dataclass(frozen=True)
class StopMachines:
    names: tuple[str, ...]


@dataclass(frozen=True)
class Unstopped:
    """The cloud ended these hosts' machines (spot interruption): not auto_stop's doing."""

    names: tuple[str, ...]


@dataclass(frozen=True)
class Replace:
    names: tuple[str, ...]


@dataclass(frozen=True)
class HostGone:
    """The host's machine is gone: the owner runs on_host_lost(gone=True) for it."""

    host: str


@dataclass(frozen=True)
class HostExpired:
    """The host's machine ran out its time budget (eco_life): the owner runs on_host_expired
    for it; it is never replaced."""

    host: str


@dataclass(frozen=True)
class OutOfTime:
    """No host with time left can take these jobs (job_id → attempt): they end ABORTED with
    `reason` (OUT_OF_TIME...) and nothing to fetch."""

    attempts: Mapping[str, int]
    reason: str


Action = (
    Notice
    | MarkLost
    | KeepWaiting
    | CloseUnfetchable
    | Requeued
    | Forget
    | KeepWatching
    | Submit
    | CountCasualty
    | Cancel
    | Adopt
    | Returned
    | StartMachines
    | StopMachines
    | Unstopped
    | Replace
    | HostGone
    | HostExpired
    | OutOfTime
)


# ---- rules ------------------------------------------------------------------------------------


def on_host_lost(
    host: str,
    jobs: Iterable[JobFacts],
    targets: Collection[str],
    *,
    gone: bool,
    lost_after: float,
) -> list[Action]:
    """A host stopped answering for `lost_after` s (or its machine is `gone`). `jobs`: this
    run's jobs; `targets`: the other hosts that may take work.

    ==============================================  ===================================
    job recorded on the host                        action
    ==============================================  ===================================
    fetched, not a casualty                         none
    ABORTED, not a casualty, not fetched            CloseUnfetchable (logs out of reach)
    CANCELLED, not fetched                          CloseUnfetchable (never re-run)
    unfinished, or killed with the machine          re-queued elsewhere (attempt + 1)
    ==============================================  ===================================

    With jobs to re-queue and no target, the host is waited for instead (KeepWaiting).
    """
    detail = "machine terminated" if gone else f"no answer for more than {lost_after:g} s"
    unfetchable, stranded = stranded_on(host, jobs, gone=gone)
    actions: list[Action] = [MarkLost(host, detail)]
    actions += [CloseUnfetchable(job_id, attempt) for job_id, attempt in unfetchable.items()]
    if not stranded:
        return actions
    if not targets:
        note = (
            f"no host left to re-queue {len(stranded)} job(s) on; waiting for {host} to come back"
        )
        return [*actions, Notice(note), KeepWaiting(host)]
    return [
        *actions,
        Requeued(host, stranded),
        Forget(host, frozenset(stranded)),
        KeepWatching(host, True),  # to settle these if the host comes back
        Notice(f"re-queuing {len(stranded)} job(s) from lost host {host}"),
        Submit({job: attempt + 1 for job, attempt in stranded.items()}, tuple(targets)),
    ]


def on_host_expired(
    host: str, jobs: Iterable[JobFacts], targets: Collection[str]
) -> list[Action]:
    """A host's machine ended at the end of its eco_life. Unlike a lost host it is neither
    waited for nor replaced (a new machine would start a new eco_life: eco_life caps what a
    host costs). `targets`: the other hosts that may take work.

    ==============================================  ===================================
    job recorded on the host                        action
    ==============================================  ===================================
    fetched, not a casualty                         none
    ABORTED, not a casualty, not fetched            CloseUnfetchable (logs out of reach)
    unfinished, or killed with the machine          re-queued on a target (attempt + 1)
    the same, and no target left                    OutOfTime: ABORTED, "time budget ran
                                                    out", nothing to fetch
    ==============================================  ===================================
    """
    unfetchable, stranded = stranded_on(host, jobs, gone=True)
    actions: list[Action] = [MarkLost(host, "eco_life ended (not replaced)")]
    actions += [CloseUnfetchable(job_id, attempt) for job_id, attempt in unfetchable.items()]
    if stranded:
        actions.append(Forget(host, frozenset(stranded)))
    actions.append(KeepWatching(host, False))  # it will not come back
    if not stranded:
        return actions
    if not targets:
        reason = f"{OUT_OF_TIME}: eco_life of {host} ended and no host with time left remains"
        note = f"{len(stranded)} job(s) of {host} not finished: {reason}"
        return [*actions, Notice(note), OutOfTime(dict(stranded), reason)]
    return [
        *actions,
        Notice(f"re-queuing {len(stranded)} job(s) from {host} (its eco_life ended)"),
        Submit({job: attempt + 1 for job, attempt in stranded.items()}, tuple(targets)),
    ]


def stranded_on(
    host: str, jobs: Iterable[JobFacts], *, gone: bool
) -> tuple[dict[str, int], dict[str, int]]:
    """The jobs of a lost host: (failed there and unfetchable, to run again elsewhere), each
    job_id → its attempt there (see on_host_lost's table)."""
    unfetchable: dict[str, int] = {}
    stranded: dict[str, int] = {}
    for job in jobs:
        if job.host != host:
            continue
        casualty = job.state == ABORTED and killed_with_host(job.reason, host_gone=gone)
        if job.fetched and not casualty:
            continue
        if job.state in (ABORTED, CANCELLED) and not casualty:
            unfetchable[job.job_id] = job.attempt  # cancelled: the user's; never run again
        else:
            # unfinished, or killed with the machine (its shutdown signalled the job before
            # the host's end was known): it runs again elsewhere
            stranded[job.job_id] = job.attempt
    return unfetchable, stranded


def on_casualties(
    host: str,
    listed: AgentJobs,
    records: Mapping[str, JobFacts],
    casualties: Mapping[str, int],
    *,
    max_retries: int = MAX_CASUALTY_RETRIES,
) -> list[Action]:
    """Jobs a host's restart killed (the agent found their processes gone) run again, at
    most `max_retries` times each: a job that keeps taking its host down is reported ABORTED
    rather than retried forever. Only the job's current attempt on this host counts."""
    again: dict[str, int] = {}
    for job_id, doc in listed.items():
        if _state(doc) != ABORTED:
            continue
        if not killed_with_host(doc.get("reason"), host_gone=False):
            continue
        if casualties.get(job_id, 0) >= max_retries:
            continue
        rec = records.get(job_id)
        if rec is None or rec.host != host or doc.get("attempt") != rec.attempt:
            continue  # an older attempt, or the job has moved on
        if rec.state == ABORTED:
            again[job_id] = rec.attempt + 1
    if not again:
        return []
    note = f"host {host}: {len(again)} job(s) died with a restart of the host; re-queuing"
    return [
        Notice(note),
        *(CountCasualty(job) for job in again),
        Forget(host, frozenset(again)),
        Submit(again),
    ]


def on_missing(
    host: str,
    listed: AgentJobs,
    records: Iterable[JobFacts],
    submitted_at: Mapping[str, float],
    *,
    asked_at: float,
    since: float,
) -> list[Action]:
    """Jobs recorded on this host that its agent does not have (a submit cut short, a host
    wiped and back) are submitted again. Only a status asked (`asked_at`) after the job's
    submission (`submitted_at`, else the watch's start `since`) counts, so a job is never
    submitted twice for a stale answer."""
    missing: dict[str, int] = {}
    for rec in records:
        if rec.host != host or not rec.attempt or rec.state in FINAL:
            continue
        if asked_at <= submitted_at.get(rec.job_id, since):
            continue
        there = listed.get(rec.job_id)
        if there is None or int(there.get("attempt", 0)) < rec.attempt:
            missing[rec.job_id] = rec.attempt
    if not missing:
        return []
    return [
        Notice(f"host {host} lacks {len(missing)} job(s): submitting again"),
        Forget(host, frozenset(missing)),
        Submit({job: attempt + 1 for job, attempt in missing.items()}),
    ]


def return_candidates(
    pending: Mapping[str, int],
    listed: AgentJobs,
    records: Mapping[str, JobFacts],
    lost: Collection[str],
) -> dict[str, set[str]]:
    """Before `on_return`: host → jobs whose newer attempt's agent must be asked whether it
    already finished (a DONE of it may still be queued behind the event being handled); a
    lost host is not asked (its answer would not come)."""
    ask: dict[str, set[str]] = {}
    for job_id, attempt in pending.items():
        doc = listed.get(job_id)
        rec = records.get(job_id)
        finished_here = doc and doc.get("attempt") == attempt and _state(doc) == DONE
        elsewhere = rec.host if rec is not None and rec.state != DONE else None
        if finished_here and elsewhere and elsewhere not in lost:
            ask.setdefault(elsewhere, set()).add(job_id)
    return ask


def on_return(
    host: str,
    pending: Mapping[str, int],
    listed: AgentJobs,
    records: Mapping[str, JobFacts],
    done_elsewhere: Collection[str],
) -> list[Action]:
    """A lost host answers again. `pending`: the attempts its jobs had when they were
    re-queued; `done_elsewhere`: those whose newer attempt already finished where it went.

    ===========================================  ======================================
    the host's old attempt                       action
    ===========================================  ======================================
    gone, or another attempt there               none (forgotten)
    still unfinished                             Cancel there (stale)
    DONE first (newer not DONE, nor done there)  Adopt it; cancel the newer attempt
    ===========================================  ======================================
    """
    actions: list[Action] = []
    stale: list[str] = []
    for job_id, old in pending.items():
        doc = listed.get(job_id)
        if not doc or doc.get("attempt") != old:
            continue
        if _state(doc) not in FINAL:
            stale.append(job_id)
            continue
        rec = records.get(job_id)
        if rec is None or _state(doc) != DONE or rec.state == DONE:
            continue
        if job_id in done_elsewhere:
            continue  # the newer attempt finished too: it stays the result
        if rec.host and rec.host != host:
            # forgotten before the cancel: a collect woken by the cancel must not fetch the
            # cancelled attempt's logs over the adopted result's
            actions += [Forget(rec.host, frozenset({job_id})), Cancel(rec.host, (job_id,))]
        actions.append(Adopt(job_id, host, old, doc.get("exit_code")))
    if stale:
        actions.append(Cancel(host, tuple(stale)))
    actions += [Returned(host), KeepWatching(host, False)]
    return actions


DOWN_REASON = "cancelled by down"


def after_down(
    jobs: Iterable[JobFacts], down: Collection[str]
) -> list[tuple[str, JobState, None, str]]:
    """What the store records once `down` took the hosts `down` down (the others failed to go
    down: their jobs may still run there). Rows for Store.update_states.

    ==========================================  ==================================
    job                                         recorded
    ==========================================  ==================================
    final (DONE, ABORTED, CANCELLED)            as it is
    never submitted (no host or attempt 0)      as it is (it never ran)
    unfinished on a host that did not go down   as it is (still there)
    unfinished on a host taken down             CANCELLED, "cancelled by down"
    ==========================================  ==================================
    """
    return [
        (job.job_id, CANCELLED, None, DOWN_REASON)
        for job in jobs
        if job.host in down and job.attempt and job.state not in FINAL
    ]


def idle_hosts(
    busy: Collection[str], hosts: Iterable[str], stopped: Collection[str], lost: Collection[str]
) -> list[Action]:
    """auto_stop: machines with no work left and their outputs home are stopped at once.
    `busy`: hosts with a job not yet final and fetched."""
    idle = tuple(h for h in hosts if h not in busy and h not in stopped and h not in lost)
    if not idle:
        return []
    return [Notice(f"auto_stop: stopping {', '.join(idle)} (no work left)"), StopMachines(idle)]


@dataclass(frozen=True)
class MachineEvents:
    """What the provider's poll saw (providers.base.Reaction, as plain data)."""

    start: tuple[str, ...] = ()
    replace: tuple[str, ...] = ()
    lost_hosts: tuple[str, ...] = ()
    interrupted: tuple[str, ...] = ()
    known: frozenset[str] = field(default_factory=frozenset)  # the run's hosts
    expired: tuple[str, ...] = ()  # ended at the end of their eco_life


def on_machine_events(
    events: MachineEvents, stopped: Collection[str], lost: Collection[str]
) -> list[Action]:
    """Stopped machines are started (not the ones auto_stop stopped on purpose); terminated
    or interrupted ones are lost hosts whose jobs are re-queued, and are replaced. What
    auto_stop ended on purpose (a spot one is terminated) is neither lost nor replaced; a
    spot interruption is the cloud's doing even on a host auto_stop had stopped meanwhile.
    A machine that ran out its eco_life is never replaced: HostExpired (its jobs go to other
    hosts, or run out of time)."""
    actions: list[Action] = []
    start = tuple(n for n in events.start if n not in stopped)
    if start:
        actions.append(StartMachines(start))
    still_stopped = set(stopped) - set(events.interrupted)
    if events.interrupted:
        actions.append(Unstopped(events.interrupted))
    for name in events.lost_hosts:
        if name in still_stopped or name not in events.known or name in lost:
            continue
        actions += [Notice(f"instance of host {name} is gone (terminated)"), HostGone(name)]
    for name in events.expired:
        if name in still_stopped or name not in events.known or name in lost:
            continue
        note = f"host {name} reached the end of its eco_life: not replaced"
        actions += [Notice(note), HostExpired(name)]
    expired = set(events.expired)
    replace = tuple(n for n in events.replace if n not in still_stopped and n not in expired)
    if replace:
        actions += [Notice(f"replacing {len(replace)} instance(s)"), Replace(replace)]
    return actions


