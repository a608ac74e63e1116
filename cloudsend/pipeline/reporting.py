"""What the pipeline tells its caller while it works. The CLI draws it; the API may ignore it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cloudsend.core import JobState


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
        return all(j.state == JobState.DONE for j in self.jobs)


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

    def progress(self, jobs: list[JobView]) -> None: ...

    def log(self, host: str, text: str) -> None: ...


class NullReporter:
    def phase(self, name: str, detail: str = "") -> None:
        pass

    def notice(self, message: str) -> None:
        pass

    def progress(self, jobs: list[JobView]) -> None:
        pass

    def log(self, host: str, text: str) -> None:
        pass
