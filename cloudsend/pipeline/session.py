"""The run lifecycle: start → deploy → run → wait → fetch → down, recorded and resumable.

Every step is idempotent: after a crash the next call rebuilds the picture from the store and
the agents (the hosts are the source of truth for job progress) and carries on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from cloudsend.config.layout import open_project
from cloudsend.config.models import Config
from cloudsend.core import FINAL, FINAL_STATES, CloudSendProcessState, JobState
from cloudsend.errors import (
    AgentError,
    CloudsendError,
    ConfigError,
    ProvisionError,
    StateError,
    TransportError,
)
from cloudsend.pipeline.agent_client import AgentClient
from cloudsend.pipeline.deploy import DeployReport, deploy_host, ensure_agent
from cloudsend.pipeline.fanout import GroupResult, each_host
from cloudsend.pipeline.fetch import Fetched
from cloudsend.pipeline.files import FileIndex
from cloudsend.pipeline.plan import Plan, build_plan
from cloudsend.pipeline.reporting import DownReport, JobView, NullReporter, Reporter, RunSummary
from cloudsend.pipeline.run_state import RunState
from cloudsend.providers import Host, HostsNotCleaned, get_provider
from cloudsend.providers.roots import remove_root
from cloudsend.scheduling import HostSlots, assign, check_fits
from cloudsend.scheduling.reactions import after_down
from cloudsend.scheduling.transitions import (
    HostView,
    JobSnapshot,
    as_state,
    output_failures,
    plan_resume,
    status_updates,
)
from cloudsend.state import NewJob, Store

T = TypeVar("T")


def config_hash(config: Config) -> str:
    doc = config.model_dump(mode="json")
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


OPENED_FRESH = 2.0  # seconds a status answered by deploy's open stands for the first reconcile


class Session:
    def __init__(
        self, config: Config, reporter: Reporter | None = None, *, poll_wait: float = 2.0
    ) -> None:
        self.config = config
        self.reporter: Reporter = reporter or NullReporter()
        self.poll_wait = poll_wait
        self.paths = open_project(config)  # the project's own state, hosts and results
        self.provider = get_provider(config)
        self.store = Store(self.paths.state_db)
        self.hosts: list[Host] = []
        self._plan: Plan | None = None
        self.index = FileIndex()
        self.run_id: int | None = None
        self.files_sent = 0
        self.bytes_sent = 0
        self.envs_submitted = 0
        self.env_failures: dict[str, str] = {}
        self.state = RunState()  # what this run learns while watched (lost, stopped, ...)
        self.instance_poll = 15.0  # seconds between instance checks (providers with machines)
        self._present: dict[str, set[str]] = {}
        # a new run's first step on each host, done by deploy's open (one round trip): cancel
        # what an earlier run left there; and the status that open answered, for the first
        # reconcile while it is fresh
        self._cancel_first: set[str] = set()
        self._opened: dict[str, tuple[float, dict[str, Any]]] = {}
        self.started_at = time.monotonic()
        # recover: false opens a new run over hosts that may still hold the last run's jobs:
        # those are not adopted, and this run's attempts start above theirs (job → highest)
        self.fresh_run = False
        self.attempt_floor: dict[str, int] = {}
        # job → (attempt, started, ended) as its host reports them (epoch seconds there)
        self.job_times: dict[str, tuple[int, float | None, float | None]] = {}
        # jobs DONE on their host that the run failed (an output missing): run again there
        self.rerun_done: set[str] = set()

    # ---- helpers -------------------------------------------------------------------------

    def close(self) -> None:
        for host in self.hosts:
            host.transport.close()
        self.store.close()

    @property
    def plan(self) -> Plan:
        if self._plan is None:
            self._plan = build_plan(self.config, self.index)
        return self._plan

    def current_run(self) -> int:
        if self.run_id is None:
            self.start()
        assert self.run_id is not None
        return self.run_id

    @property
    def results_dir(self) -> Path:
        return self.paths.results_dir(self.current_run())

    @property
    def tmp_dir(self) -> Path:
        """Where fetches write files before moving them into results (cleaned: fetch.py)."""
        return self.paths.tmp_dir

    def clean_fetch_leftovers(self) -> None:
        """Remove what a killed fetch left behind (called as a fetch or a watch begins)."""
        from cloudsend.pipeline.fetch import clean_leftovers

        clean_leftovers(self.tmp_dir, self.paths.results_root)

    def host_named(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise CloudsendError(f"no host named {name!r} in this run")

    def each_host(
        self, fn: Callable[[Host], T], hosts: list[Host] | None = None
    ) -> GroupResult[T]:
        """`fn` on every host (default: the run's) in parallel: answers and failures."""
        return each_host(fn, self.hosts if hosts is None else hosts)

    def record_reachability(self, group: GroupResult[Any], *, notice: bool = False) -> None:
        """One place for host health after a fan-out: "unreachable" (could not reach it) or
        "agent error" (its agent answered with an error), with why; the others "ok"."""
        run_id = self.current_run()
        for name in group.ok:
            self.store.set_host_health(run_id, name, "ok")
        for name, exc in group.failed.items():
            health = "agent error" if isinstance(exc, AgentError) else "unreachable"
            self.store.set_host_health(run_id, name, health, exc.message[:200])
            if notice:  # not fatal: the host is left out of scheduling until it answers
                self.reporter.notice(f"host {name}: {health} ({exc.message[:120]})")

    # ---- lifecycle -----------------------------------------------------------------------

    def start(self, reset: bool = False, resume: bool = False) -> None:
        """Find or create the hosts and open (or resume) the run. `resume`: go on with the
        latest run whatever `recover` says (a restarted detached watcher: its run is open)."""
        refuse_remote_maestro(self.config)
        refuse_watching_here(self.config)
        self.reporter.phase("up", f"provider {self.provider.name}")
        self.hosts = self.provider.up()
        for notice in self.provider.notices():
            self.reporter.notice(notice)
        if self.hosts and not self.provider.unreachable:
            # a job bigger than every host would wait forever: say so before deploying
            slots = [HostSlots(h.name, h.cpus) for h in self.hosts]
            check_fits([p.unit for p in self.plan.jobs], slots)
        if reset:
            self._reset_hosts()
        fresh = not resume and not self.config.recover
        run = self.store.open_run(config_hash(self.config), new=reset or fresh)
        self.run_id = run.id
        self.fresh_run = not reset and fresh
        if self.fresh_run:
            # nothing of an earlier run goes on: its unfinished jobs are cancelled, by the
            # agent's open in deploy (or before the first status, whichever comes first)
            self._cancel_first = {h.name for h in self.hosts}
        for host in self.hosts:
            self.store.upsert_host(run.id, host.name, self.provider.name, host.cpus, host.info)
        self._record_unreachable()

    def _record_unreachable(self) -> None:
        run_id = self.current_run()
        known = {h.name for h in self.store.hosts(run_id)}
        for name, why in self.provider.unreachable.items():
            if name not in known:
                self.store.upsert_host(run_id, name, self.provider.name, 0, {})
            self.store.set_host_health(run_id, name, "unreachable", why.splitlines()[0])

    def add_hosts(self, hosts: list[Host]) -> list[Host]:
        """Hosts that joined mid-run (replacements): agent started, recorded, schedulable.
        A host with the name of an old one takes its place."""
        run_id = self.current_run()
        added = []
        for host in hosts:
            ensure_agent(host, self.config.project_name)
            self.store.upsert_host(run_id, host.name, self.provider.name, host.cpus, host.info)
            self.hosts = [h for h in self.hosts if h.name != host.name] + [host]
            added.append(host)
        return added

    def attach(self) -> None:
        """Join the latest run without creating anything (status, logs, fetch, cancel)."""
        run = self.store.latest_run()
        if run is None:
            raise StateError(
                f"no run recorded for {self.config.source or 'this config'} yet",
                hint="start one with `cloudsend run`",
            )
        self.run_id = run.id
        try:
            self.hosts = self._attach_hosts()
        finally:  # none reachable raises: the store still learns which and why
            self._record_unreachable()

    def _attach_hosts(self) -> list[Host]:
        """The run's hosts, without those `down` took down (no agent left to ask); when
        every recorded host is down the provider is not asked at all."""
        recorded = self.store.hosts(self.current_run())
        down = {h.name for h in recorded if h.health == "down"}
        if recorded and all(h.name in down for h in recorded):
            return []
        return [h for h in self.provider.attach() if h.name not in down]

    def _reset_hosts(self) -> None:
        # The original's reset: kill the project's processes and redeploy from scratch.
        def wipe(host: Host) -> None:
            with contextlib.suppress(TransportError, AgentError):  # no agent there yet
                AgentClient(host).stop(kill_jobs=True)
            refused = remove_root(host, self.config.project_name)
            if refused is not None:
                raise ProvisionError(f"--reset: {refused}")

        self.each_host(wipe).raise_failure()  # a host --reset could not wipe: nothing restarts

    def deploy(self) -> None:
        """Render environments, record the jobs, and start every host's agent."""
        run_id = self.current_run()
        self.reporter.phase("deploy", f"{len(self.hosts)} host(s)")
        plan = self.plan
        self.store.add_jobs(
            run_id,
            [
                NewJob(
                    job_id=p.job_id,
                    index=p.unit.index,
                    rep=p.unit.rep,
                    env_id=p.env.env_id if p.env else None,
                    cpus=p.unit.cpus,
                    spec_hash=p.job_id,
                )
                for p in plan.jobs
            ],
        )
        # the listing of files each host has, used once by the submit that follows

        project = self.config.project_name
        group = self.each_host(
            lambda host: ensure_agent(host, project, cancel_all=host.name in self._cancel_first)
        )
        # an unreachable host is not fatal: it is left out of scheduling until it answers
        self.record_reachability(group, notice=True)
        now = time.monotonic()
        for name, opened in group.ok.items():
            self._present[name] = opened.listing
            self._opened[name] = (now, dict(opened.answer["status"]))
            self._cancel_first.discard(name)

    def _statuses(self) -> dict[str, dict[str, Any]]:
        """One status call per host (none where deploy's open just answered one); unreachable
        hosts are reported, not fatal here."""
        now = time.monotonic()
        fresh = {
            name: doc for name, (at, doc) in self._opened.items() if now - at < OPENED_FRESH
        }
        self._opened.clear()  # once: later reconciles ask again

        def status(host: Host) -> dict[str, Any]:
            if host.name in fresh:
                return fresh[host.name]
            client = AgentClient(host)
            if host.name in self._cancel_first:  # a new run whose deploy did not reach it
                client.cancel()
                self._cancel_first.discard(host.name)
            return dict(client.status())

        group = self.each_host(status)
        self.record_reachability(group)
        return dict(group.ok)  # protocol.StatusDoc

    def reconcile(self) -> dict[str, dict[str, Any]]:
        """Bring the store up to date with what the agents report."""
        run_id = self.current_run()
        statuses = self._statuses()
        records = {r.job_id: r for r in self.store.jobs(run_id)}
        for host_name, doc in statuses.items():
            for job_id, job in doc.get("jobs", {}).items():
                rec = records.get(job_id)
                attempt = int(job.get("attempt", 0))
                if rec is not None and self.fresh_run and not rec.attempt:
                    # an earlier run's: run it again, with an attempt the agent will take
                    floor = self.attempt_floor.get(job_id, 0)
                    self.attempt_floor[job_id] = max(floor, attempt)
                elif rec is not None and attempt > rec.attempt:
                    # Submitted just before cloudsend died, never recorded: adopt it. An
                    # attempt the store knows (superseded by an earlier one that finished
                    # first) stays closed.
                    known = {a.attempt for a in self.store.attempts(run_id, job_id)}
                    if attempt not in known:
                        self.store.record_submission(run_id, job_id, host_name, attempt)
            self.apply_status(host_name, doc)
        return statuses

    def run(self, retry_aborted: bool = True, retry_cancelled: bool = False) -> int:
        """Submit every job that is neither done nor live on a host. Returns how many.

        What to do with each job is decided by scheduling.plan_resume from the store and what
        the agents report; ABORTED jobs are retried (attempt + 1) unless retry_aborted=False,
        CANCELLED ones only with retry_cancelled=True.
        """
        run_id = self.current_run()
        plan = self.plan
        statuses = self.reconcile()
        records = {r.job_id: r for r in self.store.jobs(run_id)}
        reachable = {h.name for h in self.hosts} & statuses.keys()
        snapshots = []
        for planned in plan.jobs:
            rec = records[planned.job_id]
            on_host = statuses.get(rec.host or "", {}).get("jobs", {}).get(planned.job_id)
            if rec.host and rec.host not in reachable and rec.host in {h.name for h in self.hosts}:
                view = HostView.UNREACHABLE
            elif on_host and on_host.get("attempt") == rec.attempt:
                view = HostView.LISTED
            else:
                view = HostView.MISSING
            snapshots.append(
                JobSnapshot(planned.job_id, as_state(rec.state), rec.attempt, rec.fetched, view)
            )
        decision = plan_resume(
            snapshots, retry_aborted=retry_aborted, retry_cancelled=retry_cancelled
        )
        for job_id in decision.gone_logs:  # cancelled, and its host has nothing of it left
            self.store.record_fetch(run_id, job_id, records[job_id].attempt, [])
        if not decision.to_submit:
            return 0
        healthy = [h for h in self.hosts if h.name in reachable]
        if not healthy:
            raise TransportError(
                "no host is reachable to run the jobs on",
                hint="`cloudsend status` shows each host's health",
            )
        attempts = {
            job: max(attempt, self.attempt_floor.get(job, 0) + 1)
            for job, attempt in decision.to_submit.items()
        }
        # exit 0 yet ABORTED: failed for a missing output; its agent holds it DONE
        self.rerun_done |= {
            job
            for job in attempts
            if records[job].state == "ABORTED" and records[job].exit_code == 0
        }
        self.submit_jobs(attempts, healthy)
        return len(attempts)

    def submit_jobs(self, attempts: dict[str, int], hosts: list[Host]) -> dict[str, list[str]]:
        """Assign these jobs (job_id → attempt to submit) over `hosts`, deploy what each host
        lacks, and hand each host its queue in one call. Returns the assignment."""
        run_id = self.current_run()
        by_id = self.plan.by_id()
        pending = [by_id[j] for j in attempts]
        self.reporter.phase("schedule", f"{len(pending)} job(s) over {len(hosts)} host(s)")
        assignment = assign(
            [p.unit for p in pending],
            [HostSlots(h.name, h.cpus) for h in hosts],
            self.config.job_assign,
        )

        def submit(host: Host) -> tuple[int, int, int]:
            jobs = [by_id[i] for i in assignment.get(host.name, [])]
            if not jobs:
                return 0, 0, 0
            needed = set().union(*(self.index.hashes(p.files) for p in jobs))
            envs = {p.env.env_id: p.env for p in jobs if p.env is not None}
            copy = not self.config.mutualize_uploads
            specs = [
                p.spec(
                    attempts[p.job_id],
                    host.root,
                    self.index,
                    copy,
                    rerun=self.fresh_run or p.job_id in self.rerun_done,
                )
                for p in jobs
            ]
            report = DeployReport(host.name)
            try:
                report = deploy_host(host, self.index, needed, self._present.pop(host.name, None))
                answer = AgentClient(host).submit(
                    [{"env_id": e.env_id, "script": e.script} for e in envs.values()], specs
                )
            except AgentError as exc:
                # The agent answered and refused the submission (it takes all or nothing):
                # submitting it again would be refused again, forever. Nothing is recorded
                # there; the run ends with why, once the other hosts have their queues.
                self.store.set_host_health(run_id, host.name, "agent error", exc.message[:200])
                raise AgentError(
                    f"host {host.name} refused the jobs: {exc.message}",
                    hint=exc.hint or "a bug, or a config the checks let through: run with "
                    "--debug and report it",
                ) from exc
            except TransportError as exc:
                # The host may or may not have them: recorded there all the same, the
                # monitor re-submits what the host turns out not to have, or re-queues
                # everything elsewhere if the host stays away (host_lost_after).
                answer = {"accepted": [], "skipped": []}
                self.store.set_host_health(run_id, host.name, "unreachable", exc.message[:200])
                self.reporter.notice(f"host {host.name}: submit interrupted ({exc.message[:120]})")
            accepted = set(answer.get("accepted", []))
            for spec in specs:
                self.store.record_submission(run_id, spec["job_id"], host.name, spec["attempt"])
            return report.files_sent, report.bytes_sent, len(accepted & set(envs))

        # each host reports its own counters; summed here so threads never share a counter
        group = self.each_host(submit, hosts)
        for files, nbytes, envs_built in group:
            self.files_sent += files
            self.bytes_sent += nbytes
            self.envs_submitted += envs_built
        group.raise_failure()  # a refusal (AgentError): transport errors stay in submit
        return assignment

    # ---- watching ------------------------------------------------------------------------

    def views(self) -> list[JobView]:
        run_id = self.current_run()
        wanted = {p.job_id for p in self.plan.jobs}
        views = [
            JobView(
                r.job_id,
                r.index,
                r.rep,
                r.state,
                r.host,
                r.attempt,
                r.exit_code,
                r.reason,
                r.fetched,
                self._elapsed(r.job_id, r.attempt),
            )
            for r in self.store.jobs(run_id)
            if r.job_id in wanted
        ]
        return sorted(views, key=lambda v: (v.index, v.rep))

    def wait(
        self,
        states: CloudSendProcessState = FINAL_STATES,
        timeout: float | None = None,
    ) -> list[JobView]:
        """Watch until every job is in `states` (final ones fetched too), or the timeout."""
        from cloudsend.pipeline.monitor import RunMonitor

        self.clean_fetch_leftovers()
        return RunMonitor(self, states).run(timeout)

    def _elapsed(self, job_id: str, attempt: int) -> float | None:
        """How long the job's current attempt has run (ended: in all), if its host said."""
        known = self.job_times.get(job_id)
        if known is None or known[0] != attempt:
            return None
        _, started, ended = known
        if started is None:
            return None
        return max(0.0, (ended if ended is not None else time.time()) - started)

    def record_outputs(self, attempts: Mapping[str, int], got: Fetched) -> None:
        """Record what a fetch brought home (job → attempt fetched), and fail the DONE jobs
        that did not deliver a declared output (transitions.output_failures)."""
        run_id = self.current_run()
        self.store.record_fetches(
            run_id, [(job, attempts[job], files) for job, files in got.files.items()]
        )
        by_id = self.plan.by_id()
        optional = {j: by_id[j].optional_outputs for j in got.files if j in by_id}
        failures = output_failures(got.missing, got.refused, optional)
        if failures:
            self.store.fail_outputs(
                run_id, [(job, attempts[job], why) for job, why in failures.items()]
            )

    def apply_status(self, host: str, status: dict[str, Any]) -> None:
        """Record what one agent reports, for the jobs whose current attempt is there."""
        run_id = self.current_run()
        records = {r.job_id: r for r in self.store.jobs(run_id) if r.host == host}
        for job_id, job in status.get("jobs", {}).items():
            attempt = job.get("attempt")
            if job_id in records and attempt == records[job_id].attempt:
                self.job_times[job_id] = (attempt, job.get("started"), job.get("ended"))
        updates = status_updates(records, status.get("jobs", {}))
        if updates:
            self.store.update_states(run_id, updates)
        for env_id, env in status.get("envs", {}).items():
            # only this plan's: a host keeps environments of earlier edits (and their failures)
            if env.get("state") == "FAILED" and env_id in self.plan.envs:
                self.env_failures[env_id] = env.get("log_tail", "")

    # ---- the rest of the lifecycle -------------------------------------------------------

    def summary(self) -> RunSummary:
        return RunSummary(
            run_id=self.current_run(),
            results_dir=self.results_dir,
            jobs=self.views(),
            files_sent=self.files_sent,
            bytes_sent=self.bytes_sent,
            envs_submitted=self.envs_submitted,
            elapsed=time.monotonic() - self.started_at,
            env_failures=dict(self.env_failures),
        )

    def finalize(self) -> None:
        """auto_stop: once everything is home, stop the agents (nothing left running)."""
        if not self.config.auto_stop:
            return
        if all(v.state in FINAL and v.fetched for v in self.views()):

            # a host that does not answer keeps its idle agent (`down` stops it)
            self.each_host(lambda host: AgentClient(host).stop())

    def end_of_run(self) -> list[str]:
        """auto_stop's last word, once the run's end is recorded (a restarted maestro must
        find it ended): every job final and home, the workers not stopped yet are stopped,
        then, on a remote maestro (aws), the maestro itself. Returns what was stopped."""
        from cloudsend.scheduling.maestro_end import StopMaestro, StopWorkers, end_of_run

        machines = self.provider.machines
        if machines is None or not on_the_maestro(self.config):
            return []  # elsewhere the watch loop's auto_stop is the whole of it
        steps = end_of_run(
            auto_stop=self.config.auto_stop,
            jobs=[(v.state, v.fetched) for v in self.views()],
            workers=[h.name for h in self.hosts if h.name not in self.state.stopped],
            maestro_here=True,
        )
        done: list[str] = []
        for step in steps:
            try:
                if isinstance(step, StopWorkers):
                    off = machines.stop(list(step.names))
                    self.state.stopped.update(off.stopped + off.terminated)
                    done += off.stopped + off.terminated
                elif isinstance(step, StopMaestro):
                    self.reporter.notice("auto_stop: every result is on the maestro: stopping it")
                    stopped = machines.stop_maestro()
                    done += [stopped] if stopped else []
            except CloudsendError as exc:  # the maestro stays up: it must not leave them on
                self.reporter.notice(f"auto_stop failed: {exc.message}")
                break
        return done

    def unfetched(self) -> list[JobView]:
        """Finished jobs whose results have not come home (down would lose them)."""
        run = self.store.latest_run()
        if run is None:
            return []
        if self.run_id is None:
            self.run_id = run.id
        # a cancelled job's logs do not hold down back: cancelling was the user's decision
        return [
            v
            for v in self.views()
            if v.state in FINAL and v.state != JobState.CANCELLED and not v.fetched
        ]

    def unfinished_jobs(self) -> list[JobView]:
        """The jobs `down` would cancel: submitted and not final, after asking the hosts that
        answer (a host that does not is taken at the store's word)."""
        run = self.store.latest_run()
        if run is None:
            return []
        if self.run_id is None:
            self.run_id = run.id
        with contextlib.suppress(CloudsendError):
            if not self.hosts:
                self.hosts = self._attach_hosts()
            self.reconcile()
        return [v for v in self.views() if v.state not in FINAL and v.host and v.attempt]

    def down(self, keep: bool = False, force: bool = False) -> DownReport:
        """Cancel the unfinished jobs (recorded CANCELLED), stop everything on the hosts and
        tear them down. The CLI asks before (`unfinished_jobs`); the API does not."""
        self.provider.check_down(keep)  # before any agent is stopped
        left = [] if force else self.unfetched()
        if left:
            raise StateError(
                f"{len(left)} finished job(s) have results not fetched yet "
                f"(e.g. {left[0].job_id}); down would lose them",
                hint="run `cloudsend fetch` first, or `cloudsend down --force`",
            )
        self.reporter.phase("down", f"provider {self.provider.name}")
        failed: dict[str, str] = {}  # host → why it was not cleaned
        if not self.hosts:
            try:
                self.hosts = self.provider.attach()
            except CloudsendError as exc:
                failed["(all hosts)"] = f"cannot reach the hosts: {exc.message}"
        for name, why in self.provider.unreachable.items():
            failed[name] = why.splitlines()[0]
        unfinished = self.unfinished_jobs()
        by_host: dict[str, list[str]] = {}
        for view in unfinished:
            by_host.setdefault(view.host or "", []).append(view.job_id)

        def stop(host: Host) -> None:
            try:
                if by_host.get(host.name):  # cancelled first: the agent's records say so too
                    AgentClient(host).cancel(by_host[host.name])
                AgentClient(host).stop(kill_jobs=True)
            except (TransportError, AgentError) as exc:
                # no agent there (never deployed) is fine; a host that does not answer is not
                try:
                    host.transport.run("true", timeout=30)
                except CloudsendError:
                    failed[host.name] = f"unreachable: {exc.message.splitlines()[0][:200]}"

        self.each_host(stop)  # the hosts in parallel, as the provider's down does
        if self.provider.owns_machines:
            failed.clear()  # destroying the machines leaves nothing on them (else it raises)
        reachable = [h for h in self.hosts if h.name not in failed]
        try:
            self.provider.down(reachable, keep=keep)
        except HostsNotCleaned as exc:
            failed.update(exc.hosts)
        self._record_down(failed)
        report = DownReport()
        if self.run_id is not None and "(all hosts)" not in failed:
            went = {h.name for h in self.store.hosts(self.run_id)} - failed.keys()
            updates = after_down(self.store.jobs(self.run_id), went)
            self.store.update_states(self.run_id, updates)
            # those it asked the agents to cancel (a `run` watching meanwhile may have recorded
            # some already) and those left unfinished in the store
            cancelled = {v.job_id for v in unfinished if v.host in went}
            cancelled |= {job_id for job_id, *_ in updates}
            report.cancelled = sorted(cancelled)
        if failed:
            raise HostsNotCleaned(failed)
        return report

    def _record_down(self, failed: dict[str, str]) -> None:
        """The store says which hosts are down and which are not (a retry knows)."""
        run = self.store.latest_run()
        if run is None:
            return
        everyone = failed.get("(all hosts)")
        for record in self.store.hosts(run.id):
            why = failed.get(record.name, everyone)
            if why is not None:
                self.store.set_host_health(run.id, record.name, "not down", why)
            else:
                self.store.set_host_health(run.id, record.name, "down")


def refuse_remote_maestro(config: Config) -> None:
    """`maestro: remote` runs on ssh (maestro_host) and aws (an instance of the stack): the
    CLI's run goes to cloudsend.pipeline.maestro_control, which starts the watcher there. Any
    other provider is refused (the config checks refuse local already). In a run dir the
    laptop handed to an aws maestro (on_maestro.json) nothing is refused: that watcher is the
    maestro's own."""
    if on_the_maestro(config):
        return  # the laptop sent this run here: this process is the maestro's watcher
    if config.maestro == "remote" and config.provider not in ("ssh", "aws"):
        raise ConfigError(
            f"maestro: remote is not runnable on provider {config.provider}",
            hint="use maestro: local (the default), or provider ssh or aws",
        )


def refuse_watching_here(config: Config) -> None:
    """A Session here is a watcher here: with maestro: remote the watcher is the maestro's."""
    if config.maestro == "remote" and not on_the_maestro(config):
        raise ConfigError(
            "maestro: remote: the watcher runs on the maestro, not in this process",
            hint="`cloudsend run CONFIG` starts it there; "
            "status, attach, fetch and down talk to it",
        )


def on_the_maestro(config: Config) -> bool:
    """This run dir is a remote maestro's (aws): the laptop's run left its contract here."""
    from cloudsend import onmaestro

    return (config.base_dir / onmaestro.FILE).is_file()
