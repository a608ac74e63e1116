"""Typed config models (pydantic, extra keys forbidden).

Field names are the original CloudSend tool's keys (see shared/config-reference.md);
list-or-scalar keys are normalised to lists so the rest of the code sees one shape.

`None` for any key means "not set" (the original's files are full of `'cpus_req': None`):
the key takes its default, except booleans, where None is False as it was in the original.
Checks that need the file system or several sections at once (paths, environment names,
run_script) live in `cloudsend.config.checks`, run by the loader.
"""

from __future__ import annotations

import math
import os
import re
from datetime import timedelta
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal

from annotated_types import Ge, Le
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from cloudsend.config import shellwords
from cloudsend.errors import ConfigError

_ONE_OR_MANY = {
    "anyOf": [
        {"type": "string"},
        {"type": "array", "items": {"type": "string"}},
        {"type": "null"},
    ]
}


def _as_list(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, (str, PurePath)):
        return [value]
    return value


def _no_bool(value: Any) -> Any:
    # pydantic takes True as 1; `repeat: yes` is a mistake, not one repetition.
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value}")
    return value


def _packages_or_path(value: Any) -> Any:
    """env_pypi / env_conda: a list is package names, a string is a path (resolved later)."""
    if value is None:
        return None
    if isinstance(value, PurePath):
        return Path(value)
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("expected a list of packages or a path, got an empty string")
        return Path(value)
    if isinstance(value, (list, tuple)):
        for item in value:
            if not isinstance(item, str):
                raise ValueError(f"package names must be strings, got {_short(item)}")
        return list(value)
    raise ValueError(
        "expected a list of package names or a path to a file (a string), "
        f"got {type(value).__name__}"
    )


_DURATION = re.compile(
    r"^(?:(?P<d>\d+(?:\.\d+)?)d)?(?:(?P<h>\d+(?:\.\d+)?)h)?"
    r"(?:(?P<m>\d+(?:\.\d+)?)m(?:in)?)?(?:(?P<s>\d+(?:\.\d+)?)s)?$"
)
_DURATION_HELP = "a duration such as '6h', '90m', '1d12h' or a number of hours"


def _duration(value: Any) -> Any:
    """eco_life: the original took a datetime.timedelta; YAML users write '6h'."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        hours = value.total_seconds() / 3600
    elif isinstance(value, bool):
        raise ValueError(f"expected {_DURATION_HELP}, got {value}")
    elif isinstance(value, (int, float)):
        hours = float(value) if abs(value) < 1e300 else math.inf  # a huge int overflows float
    elif isinstance(value, str):
        hours = _parse_hours(value)
    else:
        raise ValueError(f"expected {_DURATION_HELP}, got {type(value).__name__}")
    if not math.isfinite(hours) or hours <= 0 or hours > 24 * 366:
        raise ValueError(f"expected a positive duration of at most a year, got {_short(value)}")
    return timedelta(hours=hours)


def _parse_hours(value: str) -> float:
    text = value.strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    match = _DURATION.match(text)
    if not text or match is None:
        raise ValueError(f"expected {_DURATION_HELP}, got {_short(value)}")
    parts = {k: float(v) for k, v in match.groupdict().items() if v}
    return (
        parts.get("d", 0) * 24
        + parts.get("h", 0)
        + parts.get("m", 0) / 60
        + parts.get("s", 0) / 3600
    )


# Upper bounds: beyond them a config is a mistake (or hostile), and the code downstream
# materialises one object per job run and per machine, so they also bound memory and time.
MAX_REPEAT = 100_000  # runs of one jobs[] entry
MAX_JOB_RUNS = 100_000  # runs of all jobs together (checks.py)
MAX_NUMBER = 1_000  # machines of one instances[] entry
MAX_MACHINES = 1_000  # machines of all entries, after explode (checks.py)
MAX_CPUS = 1_024  # cpus of a machine, cpus_req of a job
MAX_DISK_GB = 65_536  # the largest EBS volume
MAX_NAME = 64  # project and environment names
MIN_MAX_BID = 0.001  # EC2 refuses a spot max price below $0.001/hour

# A name that becomes a path or an id (project, environment): a safe ASCII subset, starting
# with a letter, digit or '_' (no '.', '..', '/', leading '-' or '.').
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
NAME_HELP = (
    f"use at most {MAX_NAME} letters, digits, '_', '-' and '.', starting with a letter, "
    "digit or '_'"
)


def check_name(value: str) -> str:
    """`value` if it is a safe name (NAME_RE, no '..', at most MAX_NAME), else ValueError."""
    if len(value) > MAX_NAME or not NAME_RE.fullmatch(value) or ".." in value:
        raise ValueError(f"is not a safe name ({NAME_HELP}), got {_short(value)}")
    return value


def safe_name(text: str) -> str:
    """`text` reduced to a safe name (for names cloudsend derives, e.g. from a file name)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)
    cleaned = re.sub(r"\.{2,}", ".", cleaned).lstrip("-.")[:MAX_NAME].rstrip("-.")
    return cleaned or "cloudsend"


def check_root(value: str) -> str:
    """A host root as written in the config, normalised: absolute or under ~/, no '..', not
    / nor ~ itself, printable ASCII (it is quoted into shell commands and removed by down)."""
    text = value.strip()
    if not text or any(ord(c) < 32 or ord(c) > 126 for c in text):
        raise ValueError(f"{_short(value)} is not a usable folder path (empty or control chars)")
    if not (text.startswith("/") or text == "~" or text.startswith("~/")):
        raise ValueError(
            f"{_short(value)} must be an absolute path or start with ~/ (e.g. ~/.cloudsend/demo)"
        )
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"{_short(value)} contains '..'; give the folder's real path")
    head = "~" if text.startswith("~") else ""
    rest = parts[1:] if head else parts
    if not rest:
        raise ValueError(
            f"{_short(value)} is {'your home' if head else 'the root'} folder; give cloudsend a "
            "folder of its own (e.g. ~/.cloudsend/demo): `down` removes it"
        )
    return "/".join([head, *rest]) if head else "/" + "/".join(rest)


def _short(value: Any, limit: int = 40) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int of more than 4300 digits
        text = f"<{type(value).__name__}>"
    if len(text) <= limit:
        return text
    return text[: limit - 4] + ("...'" if isinstance(value, str) else "...")


Int = Annotated[int, BeforeValidator(_no_bool)]
# Bounds inside the type, not on Field: pydantic then puts them in the JSON Schema of an
# optional field too (with Field(ge=1) on `int | None` some versions drop them).
PositiveInt = Annotated[int, Ge(1), BeforeValidator(_no_bool)]
CpuCount = Annotated[int, Ge(1), Le(MAX_CPUS), BeforeValidator(_no_bool)]
DiskSize = Annotated[int, Ge(1), Le(MAX_DISK_GB), BeforeValidator(_no_bool)]
DiskIops = Annotated[int, Ge(100), Le(256_000), BeforeValidator(_no_bool)]
StrList = Annotated[list[str], BeforeValidator(_as_list), WithJsonSchema(_ONE_OR_MANY)]
def _not_blank_path(value: Any) -> Any:
    # Path("") is ".": an empty entry would be reported as "'.' is a directory"
    if isinstance(value, str) and not value.strip():
        raise ValueError("is an empty path; name a file, or remove the entry")
    return value


PathList = Annotated[
    list[Annotated[Path, BeforeValidator(_not_blank_path)]],
    BeforeValidator(_as_list),
    WithJsonSchema(_ONE_OR_MANY),
]
PackagesOrPath = Annotated[
    list[str] | Path | None,
    BeforeValidator(_packages_or_path),
    WithJsonSchema(_ONE_OR_MANY),
]
Duration = Annotated[
    timedelta | None,
    BeforeValidator(_duration),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "null"}]}),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False)

    @model_validator(mode="before")
    @classmethod
    def _none_is_unset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = {}
        for key, value in data.items():
            field = cls.model_fields.get(key) if isinstance(key, str) else None
            if value is None and field is not None:
                if field.annotation is bool:
                    value = False  # the original tested these for truth: None was off
                elif field.get_default(call_default_factory=True) is not None:
                    continue  # leave it out: the default applies
            out[key] = value
        return out


class InstanceConfig(_Model):
    """One `instances[]` entry: a kind of machine, `number` times."""

    region: str | None = Field(None, description="Region; overrides the profile's region.")
    cloud_id: str | None = Field(
        None, description="VPC id to use; none or a missing one: cloudsend creates its own."
    )
    img_id: str | None = Field(None, description="Machine image (AMI); default latest Ubuntu LTS.")
    img_username: str | None = Field(None, description="SSH user of img_id (default ubuntu).")
    type: str | None = Field(None, description="Instance type, e.g. t3.micro.")
    cpus: CpuCount | None = Field(
        None, description="CPU cores to use; the capacity jobs are packed into."
    )
    gpu: str | None = Field(None, description="GPU kind wanted; pick a type that has it.")
    disk_size: DiskSize | None = Field(None, description="Root volume size in GB.")
    disk_type: str | None = Field(None, description="Root volume type (gp3, io2, st1...).")
    disk_iops: DiskIops | None = Field(
        None,
        description="Provisioned IOPS of the root volume (io1, io2, gp3 only); io1/io2 "
        "default to 3000, or the most their size allows.",
    )
    eco: bool = Field(False, description="True: a spot instance (cheaper, may be interrupted).")
    eco_life: Duration = Field(
        None, description=f"How long a spot request may live: {_DURATION_HELP}."
    )
    max_bid: float | None = Field(
        None,
        ge=MIN_MAX_BID,
        le=1_000,
        allow_inf_nan=False,
        description=f"Highest spot price in $/hour (at least {MIN_MAX_BID}: EC2's smallest).",
    )
    number: Int = Field(1, ge=1, le=MAX_NUMBER, description="How many instances of this entry.")
    explode: bool = Field(
        False, description="May this entry's CPUs be split across several smaller instances."
    )


class SshLoginConfig(_Model):
    """How to log in to a machine over SSH: the part hosts[] and maestro_host share."""

    address: str = Field(description="Host name or IP address.")
    port: Int = Field(22, ge=1, le=65535, description="SSH port.")
    user: str | None = Field(None, description="Login user; default: your local user name.")
    key: Path | None = Field(None, description="Private key file; default: ssh agent/default keys.")

    @field_validator("address")
    @classmethod
    def _address_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("expected a host name or IP address, got an empty string")
        return value.strip()


class MaestroHostConfig(SshLoginConfig):
    """`maestro_host:` (provider: ssh, maestro: remote): the machine the watcher runs on."""

    root: str | None = Field(
        None,
        description="cloudsend's folder on the maestro (absolute, or ~/...); default "
        "~/.cloudsend/maestro.",
    )

    @field_validator("root")
    @classmethod
    def _root_is_safe(cls, value: str | None) -> str | None:
        return None if value is None else check_root(value)


class SshHostConfig(SshLoginConfig):
    """A machine you already have, reached over SSH (provider: ssh)."""

    cpus: CpuCount | None = Field(None, description="CPU slots; default: detected (nproc).")
    root: str | None = Field(
        None,
        description="cloudsend's folder on the host (absolute, or ~/...); default "
        "~/.cloudsend/<project>. cloudsend marks it as its own and `down` removes only a "
        "folder so marked.",
    )

    @field_validator("root")
    @classmethod
    def _root_is_safe(cls, value: str | None) -> str | None:
        return None if value is None else check_root(value)


class EnvironmentConfig(_Model):
    """One `environments[]` entry: the software jobs run with."""

    name: str | None = Field(
        None, description="Unique name; may be left out when there is only one environment."
    )
    command: str | None = Field(
        None,
        description="A bash script (path, relative to the config file) run when deploying, "
        "or an inline shell command.",
    )
    env_aptget: StrList = Field(default_factory=list, description="apt packages.")
    env_conda: PackagesOrPath = Field(
        None,
        description="Conda packages (a list), or a path to an environment.yml or to a conda "
        "env dir to reproduce.",
    )
    env_conda_channels: StrList = Field(
        default_factory=list, description="Conda channels; default conda-forge."
    )
    env_pypi: PackagesOrPath = Field(
        None,
        description="pip packages (a list), or a path to a requirements.txt or to a venv to "
        "reproduce. With env_conda: installed inside the conda env; alone: a venv.",
    )
    env_julia: StrList = Field(
        default_factory=list, description="A Julia package name or a list of them."
    )


class JobConfig(_Model):
    """One `jobs[]` entry: a script or command, run `repeat` times."""

    env_name: str | None = Field(
        None,
        description="Environment to run in. Left out: the only environment if there is "
        "exactly one, otherwise no environment (the host's own tools).",
    )
    cpus_req: Int = Field(
        1, ge=1, le=MAX_CPUS, description="CPUs the job needs (for packing)."
    )
    run_script: str | None = Field(
        None,
        description="'path/script.py arg1 \"arg two\"': .py runs with the environment's "
        "python, .jl with julia. Takes priority over run_command.",
    )
    run_command: str | None = Field(None, description="Any shell command.")
    upload_files: PathList = Field(
        default_factory=list, description="File(s) uploaded into the job's work dir."
    )
    input_files: PathList = Field(
        default_factory=list,
        description="File(s) the script reads, put in its work dir (also: input_file).",
    )
    output_files: StrList = Field(
        default_factory=list,
        description="File(s) the script writes, relative to its work dir; fetched back when "
        "the job is done (also: output_file). One the job did not write fails the job "
        "('output missing: X') unless listed in optional_outputs.",
    )
    optional_outputs: StrList = Field(
        default_factory=list,
        description="Those of output_files the job may not write: fetched when present, "
        "never a failure when absent.",
    )
    repeat: Int = Field(
        1, ge=1, le=MAX_REPEAT, description="Run this job N times, each its own process."
    )

    @model_validator(mode="before")
    @classmethod
    def _singular_aliases(cls, data: Any) -> Any:
        # The original accepts input_file/output_file as well as the plural forms.
        if isinstance(data, dict):
            data = dict(data)
            for single, plural in (("input_file", "input_files"), ("output_file", "output_files")):
                if single not in data:
                    continue
                extra = _as_list(data.pop(single))
                current = _as_list(data.get(plural))
                if isinstance(extra, (list, tuple)) and isinstance(current, (list, tuple)):
                    data[plural] = [*current, *extra]
                elif not isinstance(extra, (list, tuple)):
                    data[plural] = extra  # a bad value: let the field report it
        return data


# Keys only one provider reads, grouped per provider. Users write them flat, at the top level
# of the file (as the original tool's configs do); Config's validator below moves them into
# their group, and messages name them as written. A new provider adds its group here.
class AwsSettings(_Model):
    """provider: aws: the Pulumi stack, the AWS account and the safety settings."""

    profile: str | None = Field(None, description="AWS profile from ~/.aws; none: default chain.")
    region: str | None = Field(
        None, description="aws: default region (else the profile's / AWS_REGION)."
    )
    stack: str | None = Field(None, description="aws: Pulumi stack name; default: the project.")
    state_backend: str | None = Field(
        None,
        description="aws: Pulumi state backend URL (s3://bucket/prefix, file://...); "
        "default file://~/.cloudsend/pulumi.",
    )
    secrets_provider: str | None = Field(
        None, description="aws: Pulumi secrets provider (e.g. awskms://...); default passphrase."
    )
    ssh_cidrs: StrList = Field(
        default_factory=list,
        description="aws: CIDRs allowed to SSH in; default: your public IP as /32.",
    )
    iam_policy_arns: StrList = Field(
        default_factory=list,
        description="aws: managed policies attached to the instances' role (none by default).",
    )
    maestro_type: str | None = Field(
        None,
        description="aws, maestro: remote: the maestro's instance type (on-demand); "
        "default t3.micro.",
    )
    max_cost_per_hour: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="aws: `up` refuses a plan whose estimate exceeds this ($/hour), or "
        "whose estimate lacks a price.",
    )


class SshSettings(_Model):
    """provider: ssh: the hosts and how their keys are trusted."""

    hosts: list[SshHostConfig] = Field(
        default_factory=list, description="provider: ssh: the machines to run on."
    )
    host_key_policy: Literal["tofu", "strict"] = Field(
        "tofu",
        description="ssh: a host whose key is in none of your known_hosts files (~/.ssh/"
        "known_hosts, or the UserKnownHostsFile/GlobalKnownHostsFile of your ssh config) nor "
        "pinned in .cloudsend/known_hosts: tofu pins it on first contact and shows its "
        "fingerprint; strict refuses it. A key that differs from a known one is always refused.",
    )
    maestro_host: MaestroHostConfig | None = Field(
        None,
        description="ssh, maestro: remote: the machine the watcher runs on ({address, port, "
        "user, key, root}, checked like a hosts: entry).",
    )


# flat key → the group holding it (Config.aws, Config.ssh)
GROUPED_KEYS: dict[str, str] = {
    **dict.fromkeys(AwsSettings.model_fields, "aws"),
    **dict.fromkeys(SshSettings.model_fields, "ssh"),
}
GROUPS: dict[str, type[_Model]] = {"aws": AwsSettings, "ssh": SshSettings}


class Config(_Model):
    """A whole config file: globals, then instances, environments and jobs."""

    project: str | None = Field(
        None,
        description="Name used in instance/stack names and host folders; default: the config "
        f"file name. {NAME_HELP[0].upper()}{NAME_HELP[1:]}.",
    )
    dev: bool = Field(
        False,
        description="Keep the same environments across edits (named without a content hash: "
        "an edited environment is not rebuilt, its DONE jobs stay done).",
    )
    debug: Int = Field(
        0,
        ge=0,
        le=3,
        description="Verbosity, 0 to 3: 1 tracebacks on error, 2 also logs every agent call "
        "and streams bootstrap output, 3 also paramiko's logs.",
    )
    maestro: Literal["local", "remote"] = Field(
        "local",
        description="Where the orchestrator (the watcher) runs: this machine (local), or "
        "remote (ssh: maestro_host; aws: a small on-demand instance in the stack, see "
        "maestro_type).",
    )
    auto_stop: bool = Field(True, description="Stop instances once their jobs are done.")
    provider: Literal["local", "ssh", "aws"] = Field(
        "local", description="Where jobs run: this machine (local), your hosts (ssh) or aws."
    )
    job_assign: Literal["random", "multi_knapsack"] = Field(
        "multi_knapsack",
        description="How jobs go to instances: random, or packed by cpus_req (multi_knapsack).",
    )
    recover: bool = Field(
        True,
        description="Record state and resume from it on the next run; false: every run "
        "starts over (unfinished jobs of the last run cancelled, DONE jobs run again).",
    )
    print_deploy: bool = Field(False, description="Stream environment setup output live.")
    mutualize_uploads: bool = Field(
        True,
        description="True: each uploaded file stored once per host and linked into job dirs; "
        "False: copied per job.",
    )

    host_lost_after: float = Field(
        60.0,
        gt=0,
        le=7 * 24 * 3600,
        allow_inf_nan=False,
        description="Seconds a host may stay unreachable before it is declared lost and its "
        "unfinished jobs are re-queued on the other hosts.",
    )

    instances: list[InstanceConfig] = Field(default_factory=list, description="Machines to run on.")
    environments: list[EnvironmentConfig] = Field(
        default_factory=list, description="Software environments."
    )
    jobs: list[JobConfig] = Field(default_factory=list, description="What to run.")

    # provider-only keys (written flat in the file; see GROUPED_KEYS)
    aws: AwsSettings = Field(default_factory=AwsSettings, description="provider: aws settings.")
    ssh: SshSettings = Field(default_factory=SshSettings, description="provider: ssh settings.")

    @model_validator(mode="before")
    @classmethod
    def _group_provider_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out: dict[Any, Any] = {}
        grouped: dict[str, dict[str, Any]] = {}
        for key, value in data.items():
            group = GROUPED_KEYS.get(key) if isinstance(key, str) else None
            if group is None:
                out[key] = value
            else:
                grouped.setdefault(group, {})[key] = value
        for group, values in grouped.items():
            out[group] = values
        return out

    # Where the config came from: relative paths were resolved against base_dir.
    # Set by the loader, never read from the file (the loader rejects them as keys).
    source: Path | None = Field(default=None, exclude=True)
    # Required, with no cwd default: building a Config must not depend on (or fail with) the
    # working directory; the loader says which folder, code building one in place does too.
    base_dir: Path = Field(exclude=True)

    @property
    def project_name(self) -> str:
        """The project: `project:` (validated as a safe name), else the config file's name
        made safe (it becomes a folder on every host)."""
        if self.project:
            return self.project
        if self.source is not None:
            return safe_name(self.source.stem)
        return "cloudsend"

    @property
    def state_dir(self) -> Path:
        """`.cloudsend/` beside the config file: the state store and local hosts live here."""
        return self.base_dir / ".cloudsend"

    def environment(self, name: str | None) -> EnvironmentConfig | None:
        """The environment a job with `env_name=name` runs in.

        A name picks the environment of that name (None if there is none; the loader has
        already rejected unknown names). No name (None) picks the only environment when
        exactly one is defined; with none or several, the job runs with no environment,
        on the host's own tools.
        """
        if name is None:
            return self.environments[0] if len(self.environments) == 1 else None
        for env in self.environments:
            if env.name == name:
                return env
        return None

    def script_argv(self, job: JobConfig) -> list[str] | None:
        """`job.run_script` split like a shell would (shlex), its script made absolute
        against base_dir; None when the job has no run_script (it uses run_command)."""
        if job.run_script is None or not job.run_script.strip():
            return None
        try:
            argv = shellwords.split(job.run_script)
        except ValueError as exc:
            raise ConfigError(f"run_script {job.run_script!r} cannot be split: {exc}") from None
        if not argv:
            return None
        script = Path(argv[0]).expanduser()
        argv[0] = os.path.normpath(script if script.is_absolute() else self.base_dir / script)
        return argv

    @field_validator("project")
    @classmethod
    def _project_is_safe(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("expected a name, got an empty string (leave project out instead)")
        return None if value is None else check_name(value)
