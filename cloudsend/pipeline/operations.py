"""What a user does to a run from outside: fetch its results, cancel jobs (their logs:
pipeline.logs).

Functions over a Session (pipeline.session), which owns the lifecycle itself.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from cloudsend.core import FINAL
from cloudsend.pipeline.agent_client import AgentClient
from cloudsend.pipeline.fetch import Fetched, fetch_jobs
from cloudsend.providers.base import Host
from cloudsend.scheduling.expand import job_slug
from cloudsend.scheduling.jobref import JobName, resolve_jobs

if TYPE_CHECKING:
    from cloudsend.pipeline.session import Session


def fetch_results(session: Session, out_dir: Path | None = None) -> Path:
    """Fetch every finished job not yet home; copy the run's results to out_dir if given."""
    session.current_run()
    session.clean_fetch_leftovers()
    if not all(v.state in FINAL and v.fetched for v in session.views()):
        session.reconcile()  # only ask the hosts when something may be left there
    todo: dict[str, list[str]] = {}
    attempts = {}
    for v in session.views():
        if v.state in FINAL and not v.fetched and v.host:
            todo.setdefault(v.host, []).append(v.job_id)
            attempts[v.job_id] = v.attempt

    def pull(host: Host) -> Fetched:
        return fetch_jobs(host, todo.get(host.name, []), session.results_dir, session.tmp_dir)

    group = session.each_host(pull, [h for h in session.hosts if h.name in todo])
    for got in group:
        session.record_outputs({job: attempts[job] for job in got.files}, got)
    group.raise_failure()  # what came home is recorded; the user is told what did not
    if out_dir is not None and out_dir.resolve() != session.results_dir.resolve():
        shutil.copytree(session.results_dir, out_dir, dirs_exist_ok=True)
        return out_dir
    return session.results_dir


def job_names(session: Session) -> list[JobName]:
    """The run's jobs as a user may name them (scheduling.jobref)."""
    return [
        JobName(p.job_id, p.unit.index, p.unit.rep, job_slug(p.unit.job))
        for p in session.plan.jobs
    ]


def resolve(session: Session, refs: list[str]) -> list[str]:
    """The job ids these references (an id, a unique prefix, an index, a name) name;
    UsageError listing the candidates for an unknown or ambiguous one."""
    return resolve_jobs(refs, job_names(session))


def cancel(session: Session, job_ids: list[str] | None = None) -> list[str]:
    if job_ids:
        job_ids = resolve(session, job_ids)
    views = session.views()
    by_host: dict[str, list[str]] = {}
    for v in views:
        if v.host and (job_ids is None or v.job_id in job_ids) and v.state not in FINAL:
            by_host.setdefault(v.host, []).append(v.job_id)
    cancelled: list[str] = []
    for name, ids in by_host.items():
        cancelled += AgentClient(session.host_named(name)).cancel(ids).get("cancelled", [])
    session.reconcile()
    return cancelled
