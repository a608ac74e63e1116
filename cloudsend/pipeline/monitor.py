"""The watch loop: host events and machine events in, actions out, carried out in one place.

Watcher threads (pipeline.watch) long-poll every host and fetch what finishes; this loop, on
the main thread, applies their events to the store and asks scheduling.reactions what to do
about lost hosts, casualties, missing jobs, returning hosts, idle machines and the provider's
machine events. It carries out the actions those pure functions return; the run's bookkeeping
it reads and writes is the owner's (RunState), and the owner is reached only through the
RunOwner contract below, so this module imports no Session.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from cloudsend import phases
from cloudsend.config.models import Config
from cloudsend.core import FINAL, CloudSendProcessState, JobState, in_states
from cloudsend.errors import CloudsendError
from cloudsend.pipeline.agent_client import AgentClient
from cloudsend.pipeline.fetch import Fetched
from cloudsend.pipeline.plan import Plan
from cloudsend.pipeline.reporting import EnvActivity, JobView, Reporter
from cloudsend.pipeline.run_state import RunState
from cloudsend.pipeline.watch import HostEvent, HostWatcher
from cloudsend.providers.base import Host, Provider
from cloudsend.scheduling import reactions as r
from cloudsend.state import Store


class RunOwner(Protocol):
    """What the watch loop needs of the run's owner (pipeline.session.Session)."""

    config: Config
    store: Store
    provider: Provider
    reporter: Reporter
    hosts: list[Host]
    state: RunState
    poll_wait: float
    instance_poll: float

    @property
    def plan(self) -> Plan: ...
    @property
    def results_dir(self) -> Path: ...
    @property
    def tmp_dir(self) -> Path: ...
    def current_run(self) -> int: ...
    def host_named(self, name: str) -> Host: ...
    def views(self) -> list[JobView]: ...
    def apply_status(self, host: str, status: dict[str, object]) -> None: ...
    def submit_jobs(self, attempts: dict[str, int], hosts: list[Host]) -> dict[str, list[str]]: ...
    def add_hosts(self, hosts: list[Host]) -> list[Host]: ...
    def record_outputs(self, attempts: Mapping[str, int], got: Fetched) -> None: ...


class RunMonitor:
    def __init__(self, session: RunOwner, states: CloudSendProcessState) -> None:
        self.s = session
        self.run_id = session.current_run()
        self.states = states
        self.events: queue.Queue[HostEvent] = queue.Queue()
        self.stop = threading.Event()
        self.watchers: dict[str, HostWatcher] = {}
        self.last_ok: dict[str, float] = {}
        self.health: dict[str, str] = {}
        self.started = time.monotonic()
        self.next_instance_poll = time.monotonic()
        self._wanted: frozenset[str] | None = None
        self.envs: dict[str, dict[str, Any]] = {}  # host → its last status's envs

    @property
    def stopped(self) -> set[str]:
        """Hosts auto_stop powered off (the owner's RunState)."""
        return self.s.state.stopped

    @stopped.setter
    def stopped(self, names: set[str]) -> None:
        self.s.state.stopped.clear()
        self.s.state.stopped.update(names)

    # ---- helpers -------------------------------------------------------------------------

    def satisfied(self, views: list[JobView]) -> bool:
        return all(
            in_states(JobState.parse(v.state), self.states)
            and (v.state not in FINAL or v.fetched)
            for v in views
        )

    @property
    def wanted(self) -> frozenset[str]:
        """The plan's job ids (fixed for the run: computed once)."""
        if self._wanted is None:
            self._wanted = frozenset(p.job_id for p in self.s.plan.jobs)
        return self._wanted

    def _wanted_records(self) -> list[r.JobFacts]:
        return [rec for rec in self.s.store.jobs(self.run_id) if rec.job_id in self.wanted]

    def _watch(self, host_name: str, jobs: dict[str, int], fetched: set[str] | None = None) -> None:
        watcher = self.watchers.get(host_name)
        if watcher is not None and watcher.expect(jobs, fetched):
            return
        watcher = HostWatcher(
            self.s.host_named(host_name),
            self.s.results_dir,
            self.s.tmp_dir,
            self.events,
            self.stop,
            self.s.poll_wait,
            stream_logs=self.s.config.print_deploy,
        )
        watcher.expect(jobs, fetched)
        watcher.keep_watching = bool(self.s.state.requeued.get(host_name))
        self.watchers[host_name] = watcher
        self.last_ok.setdefault(host_name, time.monotonic())
        watcher.start()

    def activity(self) -> list[EnvActivity]:
        """The environments being built now, named as in the config, host by host."""
        names = {p.env.env_id: p.env.name or p.env.env_id for p in self.s.plan.jobs if p.env}
        return [
            EnvActivity(names.get(env_id, env_id), host, env.get("started"))
            for host, envs in sorted(self.envs.items())
            for env_id, env in sorted(envs.items())
            if env.get("state") == "BUILDING"
        ]

    def _set_health(self, host: str, health: str, detail: str = "") -> None:
        if self.health.get(host) != health:
            self.health[host] = health
            self.s.store.set_host_health(self.run_id, host, health, detail)
            if health != "ok" or detail:
                self.s.reporter.notice(f"host {host}: {health} {detail}".rstrip())

    # ---- the loop ------------------------------------------------------------------------

    def run(self, timeout: float | None) -> list[JobView]:
        deadline = None if timeout is None else time.monotonic() + timeout
        views = self.s.views()
        if self.satisfied(views):
            return views
        self.s.reporter.phase("watch", f"{len(views)} job(s)")
        for host in self.s.hosts:
            expected = {v.job_id: v.attempt for v in views if v.host == host.name and v.attempt}
            fetched = {v.job_id for v in views if v.host == host.name and v.fetched}
            if expected and not expected.keys() <= fetched:
                self._watch(host.name, expected, fetched)
        lost_after = self.s.config.host_lost_after
        try:
            while not self.satisfied(views):
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if not any(w.is_alive() for w in self.watchers.values()) and self.events.empty():
                    break  # nothing left that could change a job
                with contextlib.suppress(queue.Empty):
                    event = self.events.get(timeout=0.5)
                    with phases.span("watch: events applied to the store (main thread)"):
                        self._apply(event)
                        while True:  # drain: one look at the store for a burst of events
                            self._apply(self.events.get_nowait())
                now = time.monotonic()
                if self.s.provider.machines is not None and now >= self.next_instance_poll:
                    self.next_instance_poll = now + self.s.instance_poll
                    self._instances()
                if self.s.config.auto_stop:
                    self._auto_stop()
                for name, watcher in list(self.watchers.items()):
                    if (
                        watcher.is_alive()
                        and name not in self.s.state.lost
                        and self.health.get(name) != "agent error"  # it answers: not lost
                        and now - self.last_ok.get(name, now) > lost_after
                    ):
                        self._declare_lost(name)
                with phases.span("watch: job views + progress line (main thread)"):
                    views = self.s.views()
                    self.s.reporter.progress(views, self.activity())
        finally:
            self.stop.set()
        if self.s.config.auto_stop and self.satisfied(views):
            self._auto_stop()  # the whole run is done and home: every machine stops
        for watcher in self.watchers.values():
            watcher.join(timeout=self.s.poll_wait + 15)
        return self.s.views()

    def _apply(self, event: HostEvent) -> None:
        if event.error is not None:
            raise event.error
        host = event.host
        if event.unreachable is not None:
            self._set_health(
                host,
                "lost" if host in self.s.state.lost else "unreachable",
                event.unreachable.splitlines()[0][:200],
            )
        if event.agent_error is not None:  # it answers, with an error: reachable, not lost
            self.last_ok[host] = time.monotonic()
            self._set_health(host, "agent error", event.agent_error.splitlines()[0][:200])
        if event.alive:  # a download advancing or done: the host answers between statuses
            self.last_ok[host] = time.monotonic()
        if event.status is not None:
            self.last_ok[host] = time.monotonic()
            listed = event.status.get("jobs", {})
            if host in self.s.state.lost:
                self._settle_return(host, listed)
            self._set_health(
                host, "ok", "back" if self.health.get(host) not in (None, "ok") else ""
            )
            self.s.apply_status(host, event.status)
            self.envs[host] = dict(event.status.get("envs", {}))
            every = self.s.store.jobs(self.run_id)  # one read serves both rules
            records = [rec for rec in every if rec.job_id in self.wanted]
            submitted = self.s.state.submitted_at
            since = self.started
            self._do(r.on_missing(host, listed, records, submitted, asked_at=event.at, since=since))
            if any(doc.get("state") == JobState.ABORTED for doc in listed.values()):
                by_id = {rec.job_id: rec for rec in every}
                self._do(r.on_casualties(host, listed, by_id, self.s.state.casualties))
        if event.fetched:
            self.s.record_outputs(event.attempts, event.outputs or Fetched(event.fetched))
        if event.log:
            self.s.reporter.log(host, event.log.rstrip("\n"))

    # ---- carrying out ----------------------------------------------------------------------

    def _do(self, actions: Iterable[r.Action]) -> None:
        """Carry out the decision functions' actions, in order."""
        state = self.s.state
        for action in actions:
            match action:
                case r.Notice(text):
                    self.s.reporter.notice(text)
                case r.MarkLost(host, detail):
                    state.lost.add(host)
                    self._set_health(host, "lost", detail)
                case r.KeepWaiting(host):
                    state.lost.discard(host)  # keep waiting on it
                    self.last_ok[host] = time.monotonic()
                case r.CloseUnfetchable(job_id, attempt):
                    self.s.store.record_fetch(self.run_id, job_id, attempt, [])
                case r.Requeued(host, attempts):
                    state.requeued.setdefault(host, {}).update(attempts)
                case r.Forget(host, jobs):
                    if host in self.watchers:
                        self.watchers[host].forget(set(jobs))
                case r.KeepWatching(host, on):
                    if host in self.watchers:
                        self.watchers[host].keep_watching = on
                case r.Submit(attempts, targets):
                    hosts = None if targets is None else [self.s.host_named(t) for t in targets]
                    self._submit(dict(attempts), hosts)
                case r.CountCasualty(job_id):
                    state.casualties[job_id] = state.casualties.get(job_id, 0) + 1
                case r.Cancel(host, jobs):
                    with contextlib.suppress(CloudsendError):
                        AgentClient(self.s.host_named(host)).cancel(list(jobs))
                case r.Adopt(job_id, host, attempt, exit_code):
                    self.s.store.adopt_attempt(self.run_id, job_id, host, attempt, exit_code)
                    adopted = self.s.store.job(self.run_id, job_id)
                    home = {job_id} if adopted is not None and adopted.fetched else set()
                    self._watch(host, {job_id: attempt}, home)
                case r.Returned(host):
                    state.lost.discard(host)
                    state.requeued.pop(host, None)
                case r.StartMachines(names):
                    self._start_machines(list(names))
                case r.StopMachines(names):
                    self._stop_machines(list(names))
                case r.Unstopped(names):
                    state.stopped.difference_update(names)
                case r.Replace(names):
                    self._replace(list(names))
                case r.HostGone(host):
                    self._declare_lost(host, gone=True)
                case r.HostExpired(host):
                    self._declare_expired(host)
                case r.OutOfTime(attempts, reason):
                    self._out_of_time(dict(attempts), reason)

    def _submit(self, attempts: dict[str, int], targets: list[Host] | None = None) -> bool:
        targets = self._targets() if targets is None else targets
        if not targets:
            return False
        now = time.monotonic()
        for job in attempts:
            self.s.state.submitted_at[job] = now
        assignment = self.s.submit_jobs(attempts, targets)
        for name, ids in assignment.items():
            if ids:
                self._watch(name, {job: attempts[job] for job in ids})
        return True

    # ---- machines (providers that have them) -------------------------------------------------

    def _targets(self) -> list[Host]:
        """Hosts that may take work: not lost, and not stopped by auto_stop (their machines
        are off; work sent there would wait for nobody). When only stopped ones are left,
        they are started again through the provider and rejoin."""
        state = self.s.state
        targets = [h for h in self.s.hosts if h.name not in state.unavailable()]
        machines = self.s.provider.machines
        if targets or machines is None:
            return targets
        asleep = [h.name for h in self.s.hosts if h.name in state.stopped - state.lost]
        try:
            started = set(machines.start(asleep)) if asleep else set()
        except CloudsendError as exc:
            self.s.reporter.notice(f"could not start stopped hosts for new work: {exc.message}")
            return []
        woken = [h for h in self.s.hosts if h.name in started]
        for host in woken:
            state.stopped.discard(host.name)
            self.last_ok[host.name] = time.monotonic()  # booting: give it host_lost_after
        if woken:
            names = ", ".join(h.name for h in woken)
            self.s.reporter.notice(f"starting {names} again: work came back to do")
        return woken

    def _instances(self) -> None:
        machines = self.s.provider.machines
        assert machines is not None
        try:
            reaction = machines.poll()
        except CloudsendError as exc:
            self.s.reporter.notice(f"instance check failed: {exc.message}")
            return
        events = r.MachineEvents(
            start=tuple(reaction.start),
            replace=tuple(reaction.replace),
            lost_hosts=tuple(reaction.lost_hosts),
            interrupted=tuple(reaction.interrupted),
            known=frozenset(h.name for h in self.s.hosts),
            expired=tuple(reaction.expired),
        )
        self._do(r.on_machine_events(events, self.s.state.stopped, self.s.state.lost))

    def _start_machines(self, names: list[str]) -> None:
        machines = self.s.provider.machines
        with contextlib.suppress(CloudsendError):
            started = machines.start(names) if machines is not None else []
            if started:
                self.s.reporter.notice(f"starting {len(started)} stopped instance(s)")

    def _replace(self, names: list[str]) -> None:
        machines = self.s.provider.machines
        if machines is None:
            return
        try:
            for host in self.s.add_hosts(machines.replace(names)):
                self.s.state.lost.discard(host.name)
                self.last_ok[host.name] = time.monotonic()
        except CloudsendError as exc:
            self.s.reporter.notice(f"could not replace instances: {exc.message}")

    def _auto_stop(self) -> None:
        """auto_stop: a machine with no work left and its outputs home is stopped at once."""
        if self.s.provider.machines is None:
            return
        busy = {v.host for v in self.s.views() if not (v.state in FINAL and v.fetched)}
        names = [h.name for h in self.s.hosts]
        self._do(r.idle_hosts({b for b in busy if b}, names, self.stopped, self.s.state.lost))

    def _stop_machines(self, idle: list[str]) -> None:
        machines = self.s.provider.machines
        if machines is None:
            return
        self.stopped.update(idle)  # also on failure: one notice, not one per loop
        try:
            done = machines.stop(idle)
        except CloudsendError as exc:
            # the run goes on; the user must know these machines may still bill
            self.s.reporter.notice(f"auto_stop failed: {exc}")
            return
        if done.terminated:
            self.s.reporter.notice(
                f"auto_stop: terminated spot instance(s) of {', '.join(done.terminated)} "
                "(one-time spot instances cannot be stopped)"
            )

    # ---- lost hosts ----------------------------------------------------------------------

    def _declare_lost(self, host: str, gone: bool = False) -> None:
        """`gone`: its machine is known to have ended (terminated), not just silent."""
        self.s.state.lost.add(host)  # first: the targets left exclude it
        records = self._wanted_records()
        _, stranded = r.stranded_on(host, records, gone=gone)
        # only with work to move: _targets may start stopped machines
        targets = [h.name for h in self._targets()] if stranded else []
        lost_after = self.s.config.host_lost_after
        self._do(r.on_host_lost(host, records, targets, gone=gone, lost_after=lost_after))

    def _declare_expired(self, host: str) -> None:
        """The host's machine ran out its eco_life: its jobs go to hosts with time left, or
        end ABORTED as out of time; it is never replaced."""
        self.s.state.lost.add(host)  # first: the targets left exclude it
        records = self._wanted_records()
        _, stranded = r.stranded_on(host, records, gone=True)
        targets = [h.name for h in self._targets()] if stranded else []
        self._do(r.on_host_expired(host, records, targets))

    def _out_of_time(self, attempts: dict[str, int], reason: str) -> None:
        """Jobs no host with time left can take: ABORTED with `reason`, nothing to fetch."""
        self.s.store.update_states(
            self.run_id, [(job, JobState.ABORTED, None, reason) for job in attempts]
        )
        self.s.store.record_fetches(
            self.run_id, [(job, attempt, []) for job, attempt in attempts.items()]
        )

    def _settle_return(self, host: str, listed: r.AgentJobs) -> None:
        """A lost host answers again: take results it finished first, cancel stale attempts."""
        pending = dict(self.s.state.requeued.get(host, {}))
        by_id = {rec.job_id: rec for rec in self.s.store.jobs(self.run_id)}
        done_elsewhere: set[str] = set()
        for other, jobs in r.return_candidates(pending, listed, by_id, self.s.state.lost).items():
            try:
                there = AgentClient(self.s.host_named(other)).status().get("jobs", {})
            except CloudsendError:
                continue
            for job_id in jobs:
                doc: Mapping[str, Any] = there.get(job_id) or {}
                attempt = by_id[job_id].attempt
                if doc.get("state") == JobState.DONE and doc.get("attempt") == attempt:
                    done_elsewhere.add(job_id)
        self._do(r.on_return(host, pending, listed, by_id, done_elsewhere))
