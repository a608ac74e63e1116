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

    @property
    def out_of_time(self) -> list[str]:
        """Jobs ABORTED because the time budget ran out (every host's eco_life ended)."""
        aborted = (j for j in self.jobs if j.state == JobState.ABORTED)
        return [j.job_id for j in aborted if out_of_time(j.reason)]


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
