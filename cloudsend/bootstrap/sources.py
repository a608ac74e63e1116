"""Read the local inputs an environment points at, so the bootstrap script can embed them.

A bootstrap script must be self-contained: the host never sees the user's laptop, and the
env_id is a hash of the script, so everything that defines the environment (requirements,
environment.yml, a venv's freeze, a conda env's package list, the setup command) is read here,
at render time, and turned into plain data. Nothing here records a local absolute path in that
data: two teammates with different checkouts must render the same script and the same env_id.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cloudsend.errors import BootstrapError

# Packages `pip freeze` leaves out by default; the importlib fallback leaves them out too.
_FREEZE_SKIP = {"pip", "setuptools", "wheel", "distribute"}
# Subdirectory suffixes in the `channel` field of conda-meta records.
_SUBDIR = re.compile(r"/(noarch|(linux|osx|win|emscripten|wasi|zos)-[a-z0-9_]+)/?$")
_ANACONDA_ORG = "https://conda.anaconda.org/"
_ENV_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# `-r other.txt`, `-rother.txt`, `--requirement other.txt`, `--requirement=other.txt`
_INCLUDE = re.compile(r"^\s*(?:-r\s*|--requirement[\s=]\s*)(\S+)\s*(?:#.*)?$")
_CONSTRAINT = re.compile(r"^\s*(?:-c|--constraint)")


@dataclass
class CondaSpec:
    """An engine-neutral conda request: what every engine (micromamba ... rattler) installs."""

    channels: list[str]
    specs: list[str]
    source: str  # "list" | "environment.yml" | "env dir": shown in the script's log
    pip: list[str] = field(default_factory=list)  # pip packages that came with it
    variables: dict[str, str] = field(default_factory=dict)  # environment.yml `variables:`
    yml_text: str | None = None  # the environment.yml itself, embedded for the record


def spec_name(spec: str) -> str:
    """The package name of a conda or pip spec (`conda-forge::numpy >=1.2` → `numpy`)."""
    spec = spec.strip().split("::")[-1]
    return re.split(r"[\s=<>!~\[;@(]", spec, maxsplit=1)[0].lower()


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BootstrapError(
            f"{what} {path} does not exist", hint="fix the path in the config"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BootstrapError(f"cannot read {what} {path}: {exc}") from None


def read_command_file(path: Path) -> str:
    return _read_text(path, "command script")


def read_requirements(path: Path, _seen: tuple[Path, ...] = ()) -> str:
    """requirements.txt text with `-r other.txt` includes inlined (the host has only this text)."""
    path = path.resolve()
    if path in _seen:
        raise BootstrapError(f"requirements file {path} includes itself (through -r)")
    out: list[str] = []
    for line in _read_text(path, "requirements file").splitlines():
        include = _INCLUDE.match(line)
        if include:
            target = include.group(1)
            out.append(f"# from {Path(target).name}")
            out.append(read_requirements(path.parent / target, (*_seen, path)).rstrip("\n"))
        elif _CONSTRAINT.match(line):
            raise BootstrapError(
                f"{path.name}: '{line.strip()}' refers to another local file",
                hint="use plain `-r other.txt` lines or a flat requirements file (pip freeze)",
            )
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def _venv_python(venv: Path) -> Path:
    for candidate in (venv / "bin" / "python", venv / "Scripts" / "python.exe"):
        if candidate.exists():
            return candidate
    raise BootstrapError(
        f"env_pypi {venv} is a directory but not a virtualenv (no bin/python)",
        hint="point env_pypi at a venv, a requirements.txt, or list the packages",
    )


_METADATA_LIST = (
    "import importlib.metadata as m\n"
    "for d in m.distributions():\n"
    "    print(f\"{d.metadata['Name']}=={d.version}\")\n"
)


def freeze_venv(venv: Path) -> str:
    """`pip freeze` of a local venv, as requirements text the host installs.

    Editable installs and `pkg @ file://...` lines point into the user's disk: they cannot be
    reproduced on a host, so they are kept as comments instead of failing the whole env.
    A venv made without pip is listed through importlib.metadata instead of failing.
    """
    python = _venv_python(venv)
    try:
        proc = subprocess.run(
            [str(python), "-m", "pip", "freeze", "--exclude-editable"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0 and "No module named pip" in proc.stderr:
            proc = subprocess.run(
                [str(python), "-c", _METADATA_LIST],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BootstrapError(f"cannot run {python} to freeze env_pypi {venv}: {exc}") from None
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise BootstrapError(
            f"`pip freeze` of env_pypi venv {venv} failed (exit code {proc.returncode}): {tail}",
            hint="check that the venv still works (its base python may have moved)",
        )
    lines = []
    for line in sorted(proc.stdout.splitlines(), key=str.lower):
        if not line.strip() or spec_name(line) in _FREEZE_SKIP:
            continue
        if "@ file:" in line or line.startswith("-e "):
            # The name only: a local path would make the script differ per checkout.
            lines.append(f"# not reproducible on a host (local install): {spec_name(line)}")
        else:
            lines.append(line)
    return "".join(f"{line}\n" for line in lines)


def parse_environment_yml(path: Path, extra_channels: list[str]) -> CondaSpec:
    """channels, conda dependencies and the `pip:` section of an environment.yml."""
    text = _read_text(path, "environment file")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise BootstrapError(f"{path.name} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise BootstrapError(f"{path.name} must be a mapping with channels/dependencies")
    specs: list[str] = []
    pip: list[str] = []
    for dep in data.get("dependencies") or []:
        if isinstance(dep, dict) and set(dep) == {"pip"}:
            pip.extend(str(p) for p in dep["pip"] or [])
        elif isinstance(dep, (str, int, float)):
            specs.append(str(dep))
        else:
            raise BootstrapError(f"{path.name}: unsupported dependency entry {dep!r}")
    for item in pip:
        if item.split()[0] in ("-r", "--requirement", "-e", "--editable") or item.startswith("."):
            raise BootstrapError(
                f"{path.name}: pip entry '{item}' refers to a local file the host does not have",
                hint="list the pip packages themselves",
            )
    variables = {str(k): str(v) for k, v in (data.get("variables") or {}).items()}
    for name in variables:
        if not _ENV_VAR.match(name):
            raise BootstrapError(f"{path.name}: variable name {name!r} is not a valid shell name")
    channels = [str(c) for c in data.get("channels") or [] if c != "nodefaults"]
    return CondaSpec(
        channels=_merge(channels, extra_channels),
        specs=specs,
        source="environment.yml",
        pip=pip,
        variables=variables,
        yml_text=text,
    )


def _channel_name(channel: str) -> str:
    channel = _SUBDIR.sub("", channel.rstrip("/"))
    if channel.startswith(_ANACONDA_ORG):
        channel = channel[len(_ANACONDA_ORG) :]
    return channel


def read_conda_env_dir(prefix: Path, extra_channels: list[str]) -> CondaSpec:
    """The exact packages of a local conda env (conda-meta/*.json), without needing conda.

    Each record becomes `name=version=build` (an exact pin) and its channel is kept; packages
    pip installed inside the env (INSTALLER = pip) are reproduced with pip.
    """
    channels: list[str] = []
    specs: list[str] = []
    for record_file in sorted((prefix / "conda-meta").glob("*.json")):
        try:
            record: dict[str, Any] = json.loads(record_file.read_text(encoding="utf-8"))
            name, version, build = record["name"], record["version"], record["build"]
        except (OSError, ValueError, KeyError) as exc:
            raise BootstrapError(f"unreadable conda record {record_file}: {exc}") from None
        specs.append(f"{name}={version}={build}")
        if record.get("channel"):
            channels.append(_channel_name(str(record["channel"])))
    if not specs:
        raise BootstrapError(f"env_conda {prefix} has no packages in conda-meta/")
    pip: list[str] = []
    for installer in sorted(prefix.glob("lib/python*/site-packages/*.dist-info/INSTALLER")):
        if installer.read_text(encoding="utf-8", errors="replace").strip() != "pip":
            continue
        meta = (installer.parent / "METADATA").read_text(encoding="utf-8", errors="replace")
        fields = dict(re.findall(r"^(Name|Version): (.+)$", meta, re.MULTILINE))
        if "Name" in fields and "Version" in fields:
            pip.append(f"{fields['Name'].strip()}=={fields['Version'].strip()}")
    return CondaSpec(
        channels=_merge(extra_channels, channels), specs=specs, source="env dir", pip=pip
    )


def conda_spec(env_conda: list[str] | Path, channels: list[str]) -> CondaSpec:
    """Turn the env_conda key (list, environment.yml path or env dir) into a CondaSpec."""
    if isinstance(env_conda, list):
        return CondaSpec(channels=_merge(channels), specs=list(env_conda), source="list")
    if env_conda.is_dir():
        if not (env_conda / "conda-meta").is_dir():
            raise BootstrapError(
                f"env_conda {env_conda} is a directory but not a conda env (no conda-meta/)",
                hint="point env_conda at a conda env, an environment.yml, or list the packages",
            )
        return read_conda_env_dir(env_conda, channels)
    return parse_environment_yml(env_conda, channels)


def _merge(*groups: list[str]) -> list[str]:
    """Channels in order of first mention, defaulting to conda-forge."""
    merged: list[str] = []
    for group in groups:
        merged.extend(c for c in group if c not in merged)
    return merged or ["conda-forge"]
