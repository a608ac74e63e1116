"""auto_stop at the end of a run: which machines stop, in which order (pure, no I/O).

On a remote maestro (aws) the workers stop first, the maestro itself last: it holds every
result until `cloudsend fetch` brings them to the laptop, and it must be the one that sees the
workers off (nothing else would stop them). Nothing stops before every job is final and its
results are on the maestro's disk; a failed worker stop keeps the maestro up (the owner
carries the steps out in order and stops at the first failure).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cloudsend.core import FINAL


@dataclass(frozen=True)
class StopWorkers:
    names: tuple[str, ...]


@dataclass(frozen=True)
class StopMaestro:
    """Stop the machine this watcher runs on (aws maestro), last."""


EndStep = StopWorkers | StopMaestro


def end_of_run(
    *,
    auto_stop: bool,
    jobs: Iterable[tuple[str, bool]],
    workers: Sequence[str],
    maestro_here: bool,
) -> list[EndStep]:
    """`jobs`: (state, fetched to this machine) per job; `workers`: the run's hosts not
    stopped yet (stopping a stopped one again is harmless); `maestro_here`: this watcher runs
    on a maestro it may stop."""
    if not auto_stop:
        return []
    if not all(state in FINAL and fetched for state, fetched in jobs):
        return []
    steps: list[EndStep] = [StopWorkers(tuple(workers))] if workers else []
    if maestro_here:
        steps.append(StopMaestro())
    return steps
