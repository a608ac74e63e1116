"""What the pipeline tells its caller while it works. The CLI draws it; the API may ignore it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cloudsend.core import JobState
from cloudsend.scheduling.reactions import out_of_time


@dataclass
class JobView:
    job_id: str
    index: int
    rep: int
    state: JobState  # a str Enum: compares equal to "DONE" and writes "DONE" in JSON
    host: str | None
    attempt: int
    exit_code: int | None
    reason: str | None
    fetched: bool
    elapsed: float | None = None  # seconds the current attempt has run (so far, or in all)


@dataclass(frozen=True)
class EnvActivity:
    """An environment being built on a host (the live progress line says so)."""

    env: str  # the environment's name in the config (its id when it has none)
    host: str
    started: float | None  # epoch seconds on the host; None: waiting for another build


def stale_jobs(jobs: list[JobView], answered: set[str]) -> set[str]:
    """The jobs whose state shown is only the last one known: not final (a final state does
    not change by itself) and on a host that did not answer this time. A job on no host yet
    is not stale."""
    return {j.job_id for j in jobs if j.host and j.host not in answered and not j.state.is_final}


@dataclass
class RunSummary:
    run_id: int
    results_dir: Path
    jobs: list[JobView]
    files_sent: int = 0
    bytes_sent: int = 0
    envs_submitted: int = 0
    elapsed: float = 0.0
    env_failures: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[JobState, int]:
        out: dict[JobState, int] = {}
        for job in self.jobs:
            out[job.state] = out.get(job.state, 0) + 1
        return out

    @property
    def ok(self) -> bool:
        """No job failed: each DONE, or CANCELLED by the user (not an error)."""
        return all(j.state in (JobState.DONE, JobState.CANCELLED) for j in self.jobs)

    @property
    def out_of_time(self) -> list[str]:
        """Jobs ABORTED because the time budget ran out (every host's eco_life ended)."""
        aborted = (j for j in self.jobs if j.state == JobState.ABORTED)
        return [j.job_id for j in aborted if out_of_time(j.reason)]


@dataclass
class DownReport:
    """What `down` did to the run's jobs: those it cancelled (unfinished on a host it took
    down), recorded CANCELLED in the store."""

    cancelled: list[str] = field(default_factory=list)


def nothing_ran_note(
    summary: RunSummary, submitted: int, rerun: str, unfinished_before: int = 0
) -> str | None:
    """What `run` says when it had nothing to run: `submitted` jobs it handed to hosts,
    `unfinished_before` jobs not DONE yet when it began watching (still running from an
    earlier `run`), `rerun` the command that runs everything again. None when it ran or
    watched something, or when some job is not DONE (the table and the exit code tell)."""
    if submitted or unfinished_before:
        return None
    if not summary.jobs:
        return "nothing to run: the config has no jobs"
    if not summary.ok:
        return None
    return (
        f"nothing to run: all {len(summary.jobs)} job(s) are DONE (run {summary.run_id}), "
        f"results in {summary.results_dir}. To run them all again: `{rerun}` (run "
        f"{summary.run_id + 1}, from scratch: hosts wiped, environments rebuilt); an edited "
        "job runs again by itself."
    )


class Reporter(Protocol):
    def phase(self, name: str, detail: str = "") -> None: ...

    def notice(self, message: str) -> None: ...

    def progress(self, jobs: list[JobView], activity: Sequence[EnvActivity] = ()) -> None: ...

    def log(self, host: str, text: str) -> None: ...


class NullReporter:
    def phase(self, name: str, detail: str = "") -> None:
        pass

    def notice(self, message: str) -> None:
        pass

    def progress(self, jobs: list[JobView], activity: Sequence[EnvActivity] = ()) -> None:
        pass

    def log(self, host: str, text: str) -> None:
        pass
