"""Expansion of the config into schedulable units: jobs by ``repeat``, instances by ``number``.

Job ids are the join key between the config, the state store and the host agents, so they must
be stable across invocations (resume never re-runs a DONE job) and must change when the job's
config changes (an edited job is a new job, not a resumed one).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from cloudsend.config import shellwords
from cloudsend.config.models import Config, InstanceConfig, JobConfig
from cloudsend.errors import ConfigError

SLUG_MAX = 20
_SLUG_BAD = re.compile(r"[^a-z0-9_-]+")

# Keys left out of a job's identity hash. `repeat` is excluded so that raising it from 3 to 5
# adds reps 3 and 4 and keeps reps 0-2 (already DONE) as they are; the rep is part of the id.
_NOT_IDENTITY = frozenset({"repeat"})


@dataclass(frozen=True)
class JobUnit:
    """One process to run: one repetition of one ``jobs[]`` entry."""

    job_id: str
    index: int  # position in config.jobs
    rep: int  # 0..repeat-1
    # Pydantic models are unhashable; identity lives in job_id (which hashes this config).
    job: JobConfig = field(compare=False, repr=False)
    env_name: str | None
    cpus: int


def job_slug(job: JobConfig) -> str:
    """A short filesystem-safe name: the script's stem, else the command's first word."""
    text = job.run_script or job.run_command or ""
    try:
        words = shellwords.split(text)  # linear: shlex is quadratic in a word's length
    except ValueError:  # unbalanced quotes: the loader reports those; a slug must not fail
        words = text.split()
    first = words[0] if words else ""
    name = PurePath(first).name
    if job.run_script:
        # "train.py" and "train.jl" read better as "train" than "train-py".
        name = PurePath(name).stem or name
    slug = _SLUG_BAD.sub("-", name.lower()).strip("-_")[:SLUG_MAX].strip("-_")
    return slug or "job"


def _relativise(value: Any, prefix: str) -> Any:
    # Paths in the config are made absolute by the loader; hashing them as-is would give every
    # clone of the project (a teammate, a moved directory) different job ids.
    if isinstance(value, str):
        return value.replace(prefix, "")
    if isinstance(value, list):
        return [_relativise(v, prefix) for v in value]
    if isinstance(value, dict):
        return {k: _relativise(v, prefix) for k, v in value.items()}
    return value


def job_config_hash(job: JobConfig, base_dir: PurePath | None = None) -> str:
    """sha256 (hex) of the job's config: sorted-key JSON, paths relative to ``base_dir``."""
    data = {k: v for k, v in job.model_dump(mode="json").items() if k not in _NOT_IDENTITY}
    if base_dir is not None:
        data = _relativise(data, str(base_dir).rstrip("/\\") + "/")
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def resolve_env_name(job: JobConfig, config: Config) -> str | None:
    """The environment a job runs in: its own ``env_name``, else the only one if exactly one.

    With one unnamed environment this is None; ``config.environment(None)`` still finds it.
    """
    if job.env_name is not None:
        return job.env_name
    if len(config.environments) == 1:
        return config.environments[0].name
    return None


def expand_jobs(config: Config, salts: Mapping[int, str] | None = None) -> list[JobUnit]:
    """Every process to run, in config order: ``jobs[i]`` × ``repeat``.

    job_id = ``j<index:03d>-<slug>-<hash8>-<rep>``. ``salts`` (job index → text) lets the caller
    fold what the config does not show into the identity, such as the content of the job's
    environment and files: a job whose inputs changed is a new job, not a DONE one. Raises
    ConfigError when a job names an environment that does not exist (it could never start).
    """
    names = [env.name for env in config.environments if env.name is not None]
    units: list[JobUnit] = []
    for index, job in enumerate(config.jobs):
        if job.env_name is not None and job.env_name not in names:
            known = ", ".join(repr(n) for n in names) or "none"
            raise ConfigError(
                f"jobs[{index}].env_name {job.env_name!r} names no environment "
                f"(environments: {known})",
                hint="set env_name to the name of one of environments[], or add that environment",
            )
        digest = job_config_hash(job, config.base_dir)
        if salts and salts.get(index):
            digest = hashlib.sha256(f"{digest}:{salts[index]}".encode()).hexdigest()
        digest = digest[:8]
        prefix = f"j{index:03d}-{job_slug(job)}-{digest}"
        env_name = resolve_env_name(job, config)
        units.extend(
            JobUnit(
                job_id=f"{prefix}-{rep}",
                index=index,
                rep=rep,
                job=job,
                env_name=env_name,
                cpus=job.cpus_req,
            )
            for rep in range(job.repeat)
        )
    return units


def max_job_cpus(units: list[JobUnit]) -> int:
    """The biggest ``cpus_req`` among the units (1 when there are none)."""
    return max((u.cpus for u in units), default=1)


def explode_instances(
    instances: list[InstanceConfig], max_job_cpus: int
) -> list[tuple[int, InstanceConfig]]:
    """One ``(entry index, InstanceConfig)`` per machine to create, with ``number == 1``.

    Entries are repeated ``number`` times. An entry with ``explode=True`` and ``cpus`` C is split
    into ``C // m`` machines of ``m = max_job_cpus`` CPUs, the remainder going to the last one, so
    every piece can still run the biggest job; the pieces have ``explode=False``. An entry is kept
    whole when it has no ``explode``, no ``cpus`` (unknown capacity), or fewer than ``2 * m``
    CPUs (splitting would give one piece). The entry index lets callers name machines after
    their entry (``instances[i]``) and report where each came from.
    """
    m = max(1, max_job_cpus)
    machines: list[tuple[int, InstanceConfig]] = []
    for i, inst in enumerate(instances):
        single = inst.model_copy(update={"number": 1})
        if inst.explode and inst.cpus is not None and inst.cpus >= 2 * m:
            count, rest = divmod(inst.cpus, m)
            sizes = [m] * count
            sizes[-1] += rest
            pieces = [single.model_copy(update={"cpus": c, "explode": False}) for c in sizes]
        else:
            pieces = [single]
        for _ in range(inst.number):
            machines.extend((i, p.model_copy()) for p in pieces)
    return machines
