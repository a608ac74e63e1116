"""Render an environment's bootstrap.sh and a job's run.sh from the templates.

The bootstrap script is self-contained (the host never sees the user's files) and
deterministic: its sha256 is the environment's content hash, so the env_id changes exactly
when what the environment installs changes (or the templates do), and an unchanged
environment is never rebuilt. Steps run in a fixed order: apt → conda → pypi → julia →
command, each later step seeing the tools the earlier ones installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from cloudsend.bootstrap import sources
from cloudsend.bootstrap.jinja import read_template_file, render_template
from cloudsend.config import shellwords
from cloudsend.config.models import MAX_NAME, Config, EnvironmentConfig, JobConfig, check_name
from cloudsend.errors import BootstrapError, ConfigError

# py-rattler's solve/install API is what rattler_install.py was written against (0.28);
# pinned so a host that builds its tool venv later gets the same API.
RATTLER_REQUIREMENT = "py-rattler>=0.28,<0.29"
# How long a host's `apt-get update` counts as fresh, in minutes.
APT_UPDATE_MAX_AGE_MIN = 360
# How long apt waits for the dpkg lock (cloud-init / unattended-upgrades hold it at boot).
APT_LOCK_TIMEOUT_S = 300
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class RenderedEnv:
    """A rendered environment: what the agent's EnvSpec carries (env_id + script)."""

    name: str | None
    env_id: str
    script: str
    content_hash: str


ENV_SLUG_MAX = MAX_NAME  # env ids stay far below the 200 characters the agent accepts


def env_slug(name: str | None) -> str:
    """The environment's part of its env_id (a folder name on every host), one per name:
    a safe name (what the loader lets through) is its own slug; any other name (a Config
    built in code) is made safe, shortened, and given its hash, so `py a` and `py/a` stay
    apart and a 200-character name still makes an id the agent takes."""
    if name is None:
        return "default"
    try:
        return check_name(name)
    except ValueError:
        pass
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    slug = _UNSAFE_ID_CHARS.sub("-", name).replace("..", ".").strip("-.")
    slug = slug[: ENV_SLUG_MAX - len(digest) - 1].rstrip("-.")
    return f"{slug or 'env'}-{digest}"


def _command_context(command: str | None) -> dict[str, Any] | None:
    if command is None or not command.strip():
        return None
    # The loader made a path that names an existing file absolute; anything else is inline.
    if os.path.isabs(command) and Path(command).is_file():
        return {
            "kind": "file",
            "name": Path(command).name,
            "text": sources.read_command_file(Path(command)),
        }
    return {"kind": "inline", "text": command}


def _must_exist(path: Path, key: str, expected: str) -> None:
    if not path.exists():
        raise BootstrapError(
            f"{key} {path} does not exist (expected {expected})",
            hint=f"fix the path, or list the packages in {key} directly",
        )


def _pip_context(env: EnvironmentConfig, conda: sources.CondaSpec | None) -> dict[str, Any] | None:
    packages: list[str] = list(conda.pip) if conda else []
    requirements: dict[str, str] | None = None
    if isinstance(env.env_pypi, list):
        packages.extend(env.env_pypi)
    elif isinstance(env.env_pypi, Path):
        _must_exist(env.env_pypi, "env_pypi", "a requirements file or a venv directory")
        if env.env_pypi.is_dir():
            requirements = {
                "what": f"{env.env_pypi.name} (pip freeze of a local venv)",
                "text": sources.freeze_venv(env.env_pypi),
            }
        else:
            requirements = {
                "what": env.env_pypi.name,
                "text": sources.read_requirements(env.env_pypi),
            }
    if env.env_pypi is None and not packages:
        return None
    return {"packages": packages, "requirements": requirements}


def _conda_context(
    conda: sources.CondaSpec | None, pip: dict[str, Any] | None
) -> dict[str, Any] | None:
    if conda is None:
        return None
    specs = list(conda.specs)
    # The pip packages go inside the conda env, so it needs pip (which brings python).
    if pip is not None and "pip" not in {sources.spec_name(s) for s in specs}:
        specs.append("pip")
    request = {
        "channels": conda.channels,
        "specs": specs,
        # An env dir's exact pins name builds from several channels: strict channel priority
        # would hide a build that only a lower channel has.
        "channel_priority": "disabled" if conda.source == "env dir" else "strict",
    }
    return {
        "source": conda.source,
        "channels": conda.channels,
        "specs": specs,
        "variables": conda.variables,
        "yml_text": conda.yml_text,
        "request_json": json.dumps(request, indent=2, sort_keys=True),
    }


def environment_context(env: EnvironmentConfig) -> dict[str, Any]:
    """Everything the bootstrap templates need, as plain data (reads the local files)."""
    conda_spec = None
    if isinstance(env.env_conda, Path):
        _must_exist(env.env_conda, "env_conda", "an environment.yml or a conda env directory")
    if env.env_conda is not None:
        conda_spec = sources.conda_spec(env.env_conda, env.env_conda_channels)
    pip = _pip_context(env, conda_spec)
    conda = _conda_context(conda_spec, pip)
    return {
        "label": env.name or "default",
        "apt": list(env.env_aptget),
        "apt_max_age_min": APT_UPDATE_MAX_AGE_MIN,
        "apt_lock_timeout": APT_LOCK_TIMEOUT_S,
        "conda": conda,
        "rattler_requirement": RATTLER_REQUIREMENT,
        "rattler_script": read_template_file("bootstrap/rattler_install.py") if conda else "",
        "pip": pip,
        "julia": list(env.env_julia),
        "command": _command_context(env.command),
    }


def render_environment(env: EnvironmentConfig, config: Config) -> RenderedEnv:
    """Render `env`'s self-contained bootstrap.sh and derive its env_id from its content
    (from its name alone under `dev: true`).

    Raises BootstrapError when a local input (requirements, venv, environment.yml, conda env
    dir, command script) is missing or unreadable: better on the laptop than on every host.
    """
    script = render_template("bootstrap/base.sh.j2", environment_context(env))
    content_hash = hashlib.sha256(script.encode("utf-8")).hexdigest()
    # dev: the environment keeps its name across edits (no hash suffix), so hosts keep the
    # one they built instead of rebuilding after every change while a config is worked on
    suffix = "dev" if config.dev else content_hash[:12]
    return RenderedEnv(
        name=env.name,
        env_id=f"{env_slug(env.name)}-{suffix}",
        script=script,
        content_hash=content_hash,
    )


def _job_context(job: JobConfig, env: RenderedEnv | None) -> dict[str, Any]:
    context: dict[str, Any] = {"env_id": env.env_id if env else None}
    if job.run_script and job.run_script.strip():
        try:
            words = shellwords.split(job.run_script)
        except ValueError as exc:
            raise ConfigError(f"run_script {job.run_script!r} cannot be parsed: {exc}") from None
        # The script is uploaded like upload_files and linked into the work dir under its
        # basename, so the host path is always ./<basename>.
        name = PurePosixPath(words[0].replace("\\", "/")).name
        local = f"./{name}"
        suffix = PurePosixPath(name).suffix.lower()
        kind = {".py": "python", ".jl": "julia"}.get(suffix, "executable")
        # `python3 -x.py` would read the name as an option: keep such names path-like.
        arg0 = local if name.startswith("-") else name
        context.update(kind=kind, script=local if kind == "executable" else arg0, args=words[1:])
    elif job.run_command and job.run_command.strip():
        context.update(kind="command", command=job.run_command)
    else:
        raise ConfigError(
            "a job has neither run_script nor run_command",
            hint="give each job `run_script: script.py args` or `run_command: ...`",
        )
    return context


def render_job_script(job: JobConfig, env: RenderedEnv | None, config: Config) -> str:
    """The job's run.sh: run by the agent as `bash ../run.sh` with cwd = the job's work dir."""
    del config  # part of the contract; the layout is fixed by the agent
    return render_template("job/run.sh.j2", _job_context(job, env))
