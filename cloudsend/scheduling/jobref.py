"""What a user types to name a job (`logs JOB`, `cancel JOB`) → the job's id. Pure.

A reference is, in this order: a full job id; the job's position in `jobs[]` (`3`, or `3.1`
for its repetition 1 when it repeats); its name (the script's stem or the command's first
word, as in the id: `train`); a prefix of a job id (`j003`, `j003-train-4f`). The first rule
that matches decides; more than one job matching is refused, listing them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cloudsend.errors import UsageError

_INDEX = re.compile(r"(\d+)(?:\.(\d+))?")
SHOWN = 8  # candidates listed in an ambiguity message


@dataclass(frozen=True)
class JobName:
    """One job of the run, as a reference can name it."""

    job_id: str
    index: int  # position in config.jobs
    rep: int  # repetition, 0..repeat-1
    name: str  # scheduling.expand.job_slug


def _matches(ref: str, jobs: Sequence[JobName]) -> tuple[str, list[JobName]]:
    """(what the reference was read as, the jobs it names) by the first rule that names any."""
    exact = [j for j in jobs if j.job_id == ref]
    if exact:
        return "job id", exact
    index = _INDEX.fullmatch(ref)
    if index:
        pos, rep = int(index[1]), index[2]
        found = [j for j in jobs if j.index == pos and (rep is None or j.rep == int(rep))]
        if found:
            return "job index", found
    named = [j for j in jobs if j.name == ref]
    if named:
        return "job name", named
    return "prefix of a job id", [j for j in jobs if j.job_id.startswith(ref)]


def resolve_job(ref: str, jobs: Sequence[JobName]) -> str:
    """The id of the one job `ref` names; UsageError (with the candidates) otherwise."""
    ref = ref.strip()
    read_as, found = _matches(ref, jobs) if ref else ("", [])
    if len(found) == 1:
        return found[0].job_id
    if not found:
        raise UsageError(
            f"no job {ref!r} in this run",
            hint="name a job by its id or a unique prefix of it, its index in jobs[] "
            "(3, or 3.1 for a repetition) or its name; `cloudsend status` lists them",
        )
    listed = ", ".join(j.job_id for j in found[:SHOWN])
    more = f" and {len(found) - SHOWN} more" if len(found) > SHOWN else ""
    example = f"{found[0].index}.{found[0].rep}" if read_as != "prefix of a job id" else ""
    raise UsageError(
        f"{ref!r} ({read_as}) names {len(found)} jobs: {listed}{more}",
        hint="give a longer prefix or the full id"
        + (f", or index.repetition (e.g. {example})" if example else ""),
    )


def resolve_jobs(refs: Iterable[str], jobs: Sequence[JobName]) -> list[str]:
    """Every reference resolved (in order, duplicates dropped)."""
    return list(dict.fromkeys(resolve_job(ref, jobs) for ref in refs))
