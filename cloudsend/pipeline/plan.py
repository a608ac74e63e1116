"""Turns the validated config into what hosts are sent: rendered environments and job specs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cloudsend.agent.protocol import EnvSpec, JobSpec
from cloudsend.bootstrap import RenderedEnv, render_environment, render_job_script
from cloudsend.config import shellwords
from cloudsend.config.models import Config, JobConfig
from cloudsend.errors import ConfigError
from cloudsend.pipeline.files import FileIndex
from cloudsend.scheduling import JobUnit, expand_jobs


@dataclass
class PlannedJob:
    unit: JobUnit
    env: RenderedEnv | None
    script: str
    files: list[Path]  # the job's script, upload_files and input_files (absolute, local)

    @property
    def job_id(self) -> str:
        return self.unit.job_id

    @property
    def optional_outputs(self) -> list[str]:
        return list(self.unit.job.optional_outputs)

    def spec(
        self, attempt: int, root: str, index: FileIndex, copy: bool, rerun: bool = False
    ) -> JobSpec:
        """The JobSpec the agent receives (docs/internals.md); `rerun` lets a DONE job on
        the host run again (a new run under recover: false)."""
        spec: JobSpec = {
            "job_id": self.job_id,
            "attempt": attempt,
            "env_id": self.env.env_id if self.env else None,
            "cpus": self.unit.cpus,
            "script": self.script,
            "links": index.links_for(self.files, root),
            "copy": copy,
            "outputs": list(self.unit.job.output_files),
        }
        if rerun:
            spec["rerun"] = True
        return spec


def env_spec(env: RenderedEnv) -> EnvSpec:
    """The EnvSpec the agent receives for a rendered environment."""
    return {"env_id": env.env_id, "script": env.script}


@dataclass
class Plan:
    jobs: list[PlannedJob]
    envs: dict[str, RenderedEnv]  # by env_id

    def by_id(self) -> dict[str, PlannedJob]:
        return {p.job_id: p for p in self.jobs}


def _job_files(job: JobConfig) -> list[Path]:
    files: list[Path] = []
    if job.run_script:
        files.append(Path(shellwords.split(job.run_script)[0]))
    return files + [Path(p) for p in job.upload_files] + [Path(p) for p in job.input_files]


def build_plan(config: Config, index: FileIndex) -> Plan:
    """Render environments and jobs. A job's identity includes its environment's content and
    its files' content, so editing a script, an input or an environment makes new jobs that
    run, while unchanged jobs that are DONE stay done."""
    rendered: dict[str | None, RenderedEnv] = {}
    owners: dict[str, str | None] = {}  # env_id → the environment's name
    for env_config in config.environments:
        made = rendered[env_config.name] = render_environment(env_config, config)
        if made.env_id in owners:  # one folder on the hosts for two environments: refused
            raise ConfigError(
                f"environments {owners[made.env_id]!r} and {env_config.name!r} would share the "
                f"folder envs/{made.env_id} on the hosts",
                hint="rename one of them",
            )
        owners[made.env_id] = env_config.name
    envs: dict[int, RenderedEnv | None] = {}
    salts: dict[int, str] = {}
    for i, job in enumerate(config.jobs):
        # env_name None means the only environment when there is exactly one, else none.
        env_cfg = config.environment(job.env_name)
        env = rendered[env_cfg.name] if env_cfg is not None else None
        envs[i] = env
        # dev: an environment edit does not make its DONE jobs new (the env is kept, too)
        parts = [(env.env_id if config.dev else env.content_hash) if env else ""]
        parts += [index.add(f) for f in _job_files(job) if f.is_file()]
        salts[i] = ":".join(parts)
    # every repeat of a jobs[] entry has the same script and files: render them once per entry
    scripts: dict[int, tuple[str, list[Path]]] = {}
    jobs = []
    for u in expand_jobs(config, salts):
        if u.index not in scripts:
            script = render_job_script(u.job, envs[u.index], config)
            scripts[u.index] = (script, _job_files(u.job))
        script, files = scripts[u.index]
        jobs.append(PlannedJob(u, envs[u.index], script, list(files)))
    return Plan(jobs, {e.env_id: e for e in rendered.values()})
