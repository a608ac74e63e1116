"""The watch loop: applies host events to the store, notices lost hosts, re-queues their jobs.

A host that has not answered for `host_lost_after` seconds is declared lost: its unfinished
jobs (and DONE ones whose outputs are still there) get a new attempt on the remaining hosts.
If it comes back, a job it finished first is taken from it (and the newer attempt cancelled);
otherwise its stale attempts are cancelled. Either way each job ends with one result.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

from cloudsend.core import CloudSendProcessState
from cloudsend.errors import CloudsendError
from cloudsend.pipeline.agent_client import AgentClient
from cloudsend.pipeline.reporting import JobView
from cloudsend.pipeline.watch import FINAL, HostEvent, HostWatcher
from cloudsend.scheduling.transitions import killed_with_host

if TYPE_CHECKING:
    from cloudsend.pipeline.session import Session
    from cloudsend.providers.base import Host

MAX_CASUALTY_RETRIES = 3


class RunMonitor:
    def __init__(self, session: Session, states: CloudSendProcessState) -> None:
        self.s = session
        self.run_id = session.current_run()
        self.states = states
        self.events: queue.Queue[HostEvent] = queue.Queue()
        self.stop = threading.Event()
        self.watchers: dict[str, HostWatcher] = {}
        self.last_ok: dict[str, float] = {}
        self.health: dict[str, str] = {}
        # lost host → {job_id: the attempt it had there}, to settle if the host comes back
        self.requeued: dict[str, dict[str, int]] = {}
        self.started = time.monotonic()
        self.submitted_at: dict[str, float] = {}  # job → when this monitor (re)submitted it
        # Providers with machines of their own (aws) report instance events and can stop
        # idle machines; local and ssh have neither hook.
        self.poll_instances = getattr(session.provider, "poll_instances", None)
        self.next_instance_poll = time.monotonic()
        self.stopped: set[str] = set()
        self.casualties: dict[str, int] = {}  # job → times re-queued after its host restarted

    # ---- helpers -------------------------------------------------------------------------

    def satisfied(self, views: list[JobView]) -> bool:
        return all(
            CloudSendProcessState.from_name(v.state) & self.states
            and (v.state not in FINAL or v.fetched)
            for v in views
        )

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
        watcher.keep_watching = bool(self.requeued.get(host_name))
        self.watchers[host_name] = watcher
        self.last_ok.setdefault(host_name, time.monotonic())
        watcher.start()

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
                    self._apply(self.events.get(timeout=0.5))
                    while True:  # drain: one look at the store for a burst of events
                        self._apply(self.events.get_nowait())
                now = time.monotonic()
                if self.poll_instances is not None and now >= self.next_instance_poll:
                    self.next_instance_poll = now + self.s.instance_poll
                    self._instances()
                if self.s.config.auto_stop:
                    self._auto_stop()
                for name, watcher in list(self.watchers.items()):
                    if (
                        watcher.is_alive()
                        and name not in self.s.lost_hosts
                        and self.health.get(name) != "agent error"  # it answers: not lost
                        and now - self.last_ok.get(name, now) > lost_after
                    ):
                        self._declare_lost(name)
                views = self.s.views()
                self.s.reporter.progress(views)
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
                "lost" if host in self.s.lost_hosts else "unreachable",
                event.unreachable.splitlines()[0][:200],
            )
        if event.agent_error is not None:  # it answers, with an error: reachable, not lost
            self.last_ok[host] = time.monotonic()
            self._set_health(host, "agent error", event.agent_error.splitlines()[0][:200])
        if event.alive:  # a download advancing or done: the host answers between statuses
            self.last_ok[host] = time.monotonic()
        if event.status is not None:
            self.last_ok[host] = time.monotonic()
            if host in self.s.lost_hosts:
                self._settle_return(host, event.status)
            self._set_health(
                host, "ok", "back" if self.health.get(host) not in (None, "ok") else ""
            )
            self.s.apply_status(host, event.status)
            self._resubmit_missing(host, event)
            self._requeue_casualties(host, event.status)
        if event.fetched:
            self.s.store.record_fetches(
                self.run_id,
                [(job, event.attempts[job], files) for job, files in event.fetched.items()],
            )
        if event.log:
            self.s.reporter.log(host, event.log.rstrip("\n"))

    def _resubmit_missing(self, host: str, event: HostEvent) -> None:
        """Jobs recorded on this host that its agent does not have (a submit cut short, a
        host wiped and back): submitted again. Only a status asked after the submission
        counts, so a job is never submitted twice for a stale answer."""
        assert event.status is not None
        listed = event.status.get("jobs", {})
        wanted = {p.job_id for p in self.s.plan.jobs}
        missing: dict[str, int] = {}
        for rec in self.s.store.jobs(self.run_id):
            if rec.job_id not in wanted or rec.host != host or not rec.attempt:
                continue
            if rec.state in FINAL or event.at <= self.submitted_at.get(rec.job_id, self.started):
                continue
            there = listed.get(rec.job_id)
            if there is None or int(there.get("attempt", 0)) < rec.attempt:
                missing[rec.job_id] = rec.attempt
        if missing:
            self.s.reporter.notice(f"host {host} lacks {len(missing)} job(s): submitting again")
            if host in self.watchers:
                self.watchers[host].forget(set(missing))
            self._submit({job: attempt + 1 for job, attempt in missing.items()})

    def _requeue_casualties(self, host: str, status: dict[str, Any]) -> None:
        """Jobs a host's restart killed (the agent finds their processes gone) run again, at
        most MAX_CASUALTY_RETRIES times each: a job that keeps taking its host down is
        reported ABORTED rather than retried forever."""
        hit = [
            job_id
            for job_id, job in status.get("jobs", {}).items()
            if job.get("state") == "ABORTED"
            and killed_with_host(job.get("reason"), host_gone=False)
            and self.casualties.get(job_id, 0) < MAX_CASUALTY_RETRIES
        ]
        if not hit:
            return
        again: dict[str, int] = {}
        for job_id in hit:
            rec = self.s.store.job(self.run_id, job_id)
            listed = status["jobs"][job_id]
            if rec is None or rec.host != host or listed.get("attempt") != rec.attempt:
                continue  # an older attempt, or the job has moved on
            if rec.state == "ABORTED":
                self.casualties[job_id] = self.casualties.get(job_id, 0) + 1
                again[job_id] = rec.attempt + 1
        if again:
            self.s.reporter.notice(
                f"host {host}: {len(again)} job(s) died with a restart of the host; re-queuing"
            )
            if host in self.watchers:
                self.watchers[host].forget(set(again))
            self._submit(again)

    def _submit(self, attempts: dict[str, int], targets: list[Host] | None = None) -> bool:
        targets = self._targets() if targets is None else targets
        if not targets:
            return False
        now = time.monotonic()
        for job in attempts:
            self.submitted_at[job] = now
        assignment = self.s.submit_jobs(attempts, targets)
        for name, ids in assignment.items():
            if ids:
                self._watch(name, {job: attempts[job] for job in ids})
        return True

    # ---- machines (aws) ------------------------------------------------------------------

    def _targets(self) -> list[Host]:
        """Hosts that may take work: not lost, and not stopped by auto_stop (their machines
        are off; work sent there would wait for nobody). When only stopped ones are left,
        they are started again through the provider and rejoin."""
        targets = [h for h in self.s.hosts if h.name not in self.s.lost_hosts | self.stopped]
        start = getattr(self.s.provider, "start_instances", None)
        if targets or start is None:
            return targets
        asleep = {
            str(h.info["instance_id"]): h
            for h in self.s.hosts
            if h.name in self.stopped - self.s.lost_hosts and h.info.get("instance_id")
        }
        try:
            started = set(start(list(asleep)))
        except CloudsendError as exc:
            self.s.reporter.notice(f"could not start stopped hosts for new work: {exc.message}")
            return []
        woken = [h for iid, h in asleep.items() if iid in started]
        for host in woken:
            self.stopped.discard(host.name)
            self.last_ok[host.name] = time.monotonic()  # booting: give it host_lost_after
        if woken:
            names = ", ".join(h.name for h in woken)
            self.s.reporter.notice(f"starting {names} again: work came back to do")
        return woken

    def _instances(self) -> None:
        """Stopped instances are started; terminated or spot-interrupted ones are lost hosts
        (their jobs re-queued, the same path as an SSH host gone) and get replaced."""
        provider: Any = self.s.provider
        try:
            reaction = self.poll_instances()  # type: ignore[misc]
        except CloudsendError as exc:
            self.s.reporter.notice(f"instance check failed: {exc.message}")
            return
        if reaction.start:
            # not the ones auto_stop stopped on purpose
            with contextlib.suppress(CloudsendError):
                started = provider.start_instances(reaction.start, skip_names=self.stopped)
                if started:
                    self.s.reporter.notice(f"starting {len(started)} stopped instance(s)")
        # auto_stop ended these on purpose (a spot one is terminated): no loss, no replacement.
        # A spot interruption is AWS's doing even on a host auto_stop stopped meanwhile: its
        # jobs that the machine's end killed must still run again elsewhere.
        interrupted = set(getattr(reaction, "interrupted", ()))
        self.stopped -= interrupted
        reaction.lost_hosts = [n for n in reaction.lost_hosts if n not in self.stopped]
        reaction.replace = [n for n in reaction.replace if n not in self.stopped]
        known = {h.name for h in self.s.hosts}
        for name in reaction.lost_hosts:
            if name in known and name not in self.s.lost_hosts:
                self.s.reporter.notice(f"instance of host {name} is gone (terminated)")
                self._declare_lost(name, gone=True)
        if reaction.replace:
            self.s.reporter.notice(f"replacing {len(reaction.replace)} instance(s)")
            try:
                for host in self.s.add_hosts(provider.replace(reaction.replace)):
                    self.s.lost_hosts.discard(host.name)
                    self.last_ok[host.name] = time.monotonic()
            except CloudsendError as exc:
                self.s.reporter.notice(f"could not replace instances: {exc.message}")

    def _auto_stop(self) -> None:
        """auto_stop: a machine with no work left and its outputs home is stopped at once."""
        stop = getattr(self.s.provider, "stop_hosts", None)
        if stop is None:
            return
        busy = {v.host for v in self.s.views() if not (v.state in FINAL and v.fetched)}
        idle = [
            h.name
            for h in self.s.hosts
            if h.name not in busy and h.name not in self.stopped and h.name not in self.s.lost_hosts
        ]
        if idle:
            self.stopped.update(idle)  # also on failure: one notice, not one per loop
            self.s.reporter.notice(f"auto_stop: stopping {', '.join(idle)} (no work left)")
            try:
                done = stop(idle)
            except CloudsendError as exc:
                # the run goes on; the user must know these machines may still bill
                self.s.reporter.notice(f"auto_stop failed: {exc}")
                return
            ended = getattr(done, "terminated", None)
            if ended:
                self.s.reporter.notice(
                    f"auto_stop: terminated spot instance(s) of {', '.join(ended)} "
                    "(one-time spot instances cannot be stopped)"
                )

    # ---- lost hosts ----------------------------------------------------------------------

    def _declare_lost(self, host: str, gone: bool = False) -> None:
        """`gone`: its machine is known to have ended (terminated), not just silent."""
        self.s.lost_hosts.add(host)
        lost_after = self.s.config.host_lost_after
        detail = "machine terminated" if gone else f"no answer for more than {lost_after:g} s"
        self._set_health(host, "lost", detail)
        wanted = {p.job_id for p in self.s.plan.jobs}
        stranded: dict[str, int] = {}
        for r in self.s.store.jobs(self.run_id):
            if r.job_id not in wanted or r.host != host:
                continue
            casualty = r.state == "ABORTED" and killed_with_host(r.reason, host_gone=gone)
            if r.fetched and not casualty:
                continue
            if r.state == "ABORTED" and not casualty:
                # it failed there; its logs are out of reach, which must not hold the run up
                self.s.store.record_fetch(self.run_id, r.job_id, r.attempt, [])
            else:
                # unfinished, or killed with the machine (its shutdown signalled the job
                # before the host's end was known): it runs again elsewhere
                stranded[r.job_id] = r.attempt
        if not stranded:
            return
        targets = self._targets()
        if not targets:
            self.s.reporter.notice(
                f"no host left to re-queue {len(stranded)} job(s) on; "
                f"waiting for {host} to come back"
            )
            self.s.lost_hosts.discard(host)  # keep waiting on it
            self.last_ok[host] = time.monotonic()
            return
        self.requeued.setdefault(host, {}).update(stranded)
        watcher = self.watchers[host]
        watcher.forget(set(stranded))
        watcher.keep_watching = True  # to settle these if the host comes back
        self.s.reporter.notice(f"re-queuing {len(stranded)} job(s) from lost host {host}")
        self._submit({job: attempt + 1 for job, attempt in stranded.items()}, targets)

    def _done_there(
        self, host: str | None, job_id: str, attempt: int, cache: dict[str, dict[str, Any]]
    ) -> bool:
        """Whether the newer attempt already finished on its host, as its agent says now:
        its DONE may still be queued behind this event, and adopting the older attempt then
        would fetch a second copy of the same job's outputs."""
        if not host or host in self.s.lost_hosts:
            return False
        if host not in cache:
            try:
                cache[host] = AgentClient(self.s.host_named(host)).status().get("jobs", {})
            except CloudsendError:
                cache[host] = {}
        there = cache[host].get(job_id) or {}
        return bool(there.get("state") == "DONE" and there.get("attempt") == attempt)

    def _settle_return(self, host: str, status: dict[str, Any]) -> None:
        """A lost host answers again: take results it finished first, cancel stale attempts."""
        pending = self.requeued.get(host, {})
        on_host = status.get("jobs", {})
        stale: list[str] = []
        elsewhere: dict[str, dict[str, Any]] = {}  # host → its agent's jobs, asked once
        for job_id, old_attempt in list(pending.items()):
            job = on_host.get(job_id)
            if not job or job.get("attempt") != old_attempt:
                del pending[job_id]
                continue
            if job.get("state") not in FINAL:
                stale.append(job_id)
                del pending[job_id]
                continue
            rec = self.s.store.job(self.run_id, job_id)
            if (
                job.get("state") == "DONE"
                and rec is not None
                and rec.state != "DONE"
                and not self._done_there(rec.host, job_id, rec.attempt, elsewhere)
            ):
                if rec.host and rec.host != host:
                    # forgotten before the cancel: a collect woken by the cancel must not
                    # fetch the cancelled attempt's logs over the adopted result's
                    if rec.host in self.watchers:
                        self.watchers[rec.host].forget({job_id})
                    with contextlib.suppress(CloudsendError):
                        AgentClient(self.s.host_named(rec.host)).cancel([job_id])
                self.s.store.adopt_attempt(
                    self.run_id, job_id, host, old_attempt, job.get("exit_code")
                )
                adopted = self.s.store.job(self.run_id, job_id)
                home = {job_id} if adopted is not None and adopted.fetched else set()
                self._watch(host, {job_id: old_attempt}, home)
            del pending[job_id]
        if stale:
            with contextlib.suppress(CloudsendError):
                AgentClient(self.s.host_named(host)).cancel(stale)
        if not pending:
            self.s.lost_hosts.discard(host)
            if host in self.watchers:
                self.watchers[host].keep_watching = False
