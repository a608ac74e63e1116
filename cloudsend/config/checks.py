"""Checks that span sections or touch the file system, run on a validated Config.

`check_and_resolve` also rewrites every relative path to an absolute one (against
`Config.base_dir`), so nothing downstream depends on the working directory. It returns
every problem at once: all missing files are reported before anything runs.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import shlex
from pathlib import Path, PurePath

from cloudsend import onmaestro
from cloudsend.config import shellwords
from cloudsend.config.messages import Issue, KeyPath, did_you_mean, format_path, show
from cloudsend.config.models import (
    MAX_JOB_RUNS,
    MAX_MACHINES,
    Config,
    EnvironmentConfig,
    InstanceConfig,
    JobConfig,
    check_name,
)

# Files cloudsend itself writes in a job's results folder: an output of that name would
# overwrite them (or be overwritten).
RESERVED_OUTPUTS = frozenset({"stdout.log", "stderr.log"})

# Linux's PATH_MAX: no longer path can name a file. Checked before a path is used, so a
# 100 kB "path" costs nothing (an output's folders are walked one by one) and is not
# echoed whole in a message.
MAX_PATH = 4096

def check_and_resolve(config: Config) -> list[Issue]:
    """Validate `config` in place (resolving paths); return the problems found."""
    issues: list[Issue] = []
    _check_maestro(config, issues)
    _check_hosts(config, issues)
    _check_totals(config, issues)
    names = _check_environments(config, issues)
    for index, job in enumerate(config.jobs):
        _check_job(config, ("jobs", index), job, names, issues)
    return issues


def _check_maestro(config: Config, issues: list[Issue]) -> None:
    """maestro: remote runs the watcher on maestro_host (provider ssh) or on a small instance
    of the stack (provider aws, maestro_type)."""
    entry = config.ssh.maestro_host
    # on an aws maestro the bundled config says `maestro: local` (the watcher is local there)
    # and keeps maestro_type: the maestro's own program still declares it
    on_maestro = (config.base_dir / onmaestro.FILE).is_file()
    if config.maestro == "remote" and config.provider not in ("ssh", "aws"):
        issues.append(
            Issue(
                ("maestro",),
                f"remote is not supported with provider: {config.provider} (only with "
                "provider: ssh and a maestro_host:, or provider: aws)",
                hint="use maestro: local",
            )
        )
    elif config.maestro == "remote" and config.provider == "ssh" and entry is None:
        issues.append(
            Issue(
                ("maestro",),
                "remote needs a maestro_host: (the machine the watcher runs on)",
                hint="add maestro_host: {address: my-box, user: me, key: ~/.ssh/id_ed25519}, "
                "or use maestro: local",
            )
        )
    if entry is not None and config.maestro != "remote":
        issues.append(
            Issue(
                ("maestro_host",),
                "maestro_host is only used with maestro: remote",
                hint="set maestro: remote, or remove maestro_host",
            )
        )
    if config.aws.maestro_type is not None and config.maestro != "remote" and not on_maestro:
        issues.append(
            Issue(
                ("maestro_type",),
                "maestro_type is only used with maestro: remote",
                hint="set maestro: remote, or remove maestro_type",
            )
        )
    if entry is not None and entry.key is not None:
        entry.key = _checked_key(config, ("maestro_host", "key"), entry.key, issues)


def _checked_key(
    config: Config, path: KeyPath, value: Path, issues: list[Issue]
) -> Path | None:
    """An SSH private key path made absolute and checked to be a file (else an issue)."""
    if _too_long(path, value, issues):
        return None
    key = _absolute(config.base_dir, value)
    if _kind(key) != "file":
        issues.append(_missing(config, path, "key", value, key))
    return key


def _check_hosts(config: Config, issues: list[Issue]) -> None:
    if config.provider == "ssh" and not config.ssh.hosts:
        issues.append(
            Issue(
                ("provider",),
                "provider: ssh needs a hosts: list",
                hint="add hosts: [{address: my-box, user: me, key: ~/.ssh/id_ed25519}]",
            )
        )
    if config.ssh.hosts and config.provider != "ssh":
        issues.append(
            Issue(
                ("hosts",),
                f"hosts is only used by provider: ssh (this config uses {config.provider})",
                hint="set provider: ssh, or remove hosts",
            )
        )
    seen: set[tuple[str, int, str | None]] = set()
    for index, host in enumerate(config.ssh.hosts):
        ident = (host.address, host.port, host.root)
        if ident in seen:
            issues.append(
                Issue(
                    ("hosts", index),
                    f"{host.address}:{host.port} is listed twice",
                    hint="give each entry its own root: if you really want two agents there",
                )
            )
        seen.add(ident)
        if host.key is not None:
            host.key = _checked_key(config, ("hosts", index, "key"), host.key, issues)


def machine_count(instances: list[InstanceConfig], max_job_cpus: int) -> int:
    """How many machines `explode_instances` makes, computed without making them."""
    m = max(1, max_job_cpus)
    total = 0
    for inst in instances:
        split = inst.explode and inst.cpus is not None and inst.cpus >= 2 * m
        total += inst.number * (inst.cpus // m if split and inst.cpus is not None else 1)
    return total


def _check_totals(config: Config, issues: list[Issue]) -> None:
    # Checked on the numbers, before anything makes one object per run or per machine.
    runs = sum(job.repeat for job in config.jobs)
    if runs > MAX_JOB_RUNS:
        issues.append(
            Issue(
                ("jobs",),
                f"{runs} job runs in all (repeat added up); at most {MAX_JOB_RUNS} are allowed",
                hint="split the work into several configs, or make each run do more",
            )
        )
    biggest = max((job.cpus_req for job in config.jobs), default=1)
    machines = machine_count(config.instances, biggest)
    if machines > MAX_MACHINES:
        issues.append(
            Issue(
                ("instances",),
                f"{machines} machines in all (number, and explode's pieces); at most "
                f"{MAX_MACHINES} are allowed",
                hint="lower number or cpus, or leave explode off",
            )
        )


def _absolute(base: Path, value: str | PurePath) -> Path:
    path = Path(value)
    # No home directory to expand `~` to: keep the path as written.
    with contextlib.suppress(RuntimeError, ValueError, KeyError):
        path = path.expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(path: Path) -> str:
    """'file', 'dir' or 'missing' (an unusable name counts as missing)."""
    try:
        if path.is_file():
            return "file"
        return "dir" if path.is_dir() else "missing"
    except (OSError, ValueError):
        return "missing"


def _too_long(key: KeyPath, value: object, issues: list[Issue]) -> bool:
    """Report `value` if it is longer than any path can be."""
    text = str(value)
    if len(text) <= MAX_PATH:
        return False
    issues.append(
        Issue(key, f"{show(text)} is {len(text)} characters long; a path is at most {MAX_PATH}")
    )
    return True


def _missing(config: Config, key: KeyPath, what: str, value: object, path: Path) -> Issue:
    return Issue(
        key,
        f"{what} {show(str(value), 200)} not found (looked for {_clip(str(path))})",
        hint=f"relative paths are resolved against the config file's folder, {config.base_dir}",
    )


def _check_environments(config: Config, issues: list[Issue]) -> list[str]:
    seen: dict[str, int] = {}
    several = len(config.environments) > 1
    for index, env in enumerate(config.environments):
        key: KeyPath = ("environments", index, "name")
        if env.name is None and several:
            issues.append(Issue(key, "missing: with several environments each needs a unique name"))
        elif env.name is not None and not env.name.strip():
            issues.append(Issue(key, "is empty; give the environment a name"))
        elif env.name is not None and _unsafe(env.name):
            issues.append(Issue(key, _unsafe(env.name) or ""))
        elif env.name is not None and env.name in seen:
            other = format_path(("environments", seen[env.name]))
            issues.append(
                Issue(key, f"duplicate environment name {env.name!r} (also {other}); rename one")
            )
        if env.name is not None:
            seen.setdefault(env.name, index)
        _resolve_environment(config, ("environments", index), env, issues)
    return list(seen)


def _unsafe(name: str) -> str | None:
    """Why `name` cannot name an environment (it becomes part of a folder name on every
    host), or None."""
    try:
        check_name(name)
    except ValueError as exc:
        return str(exc)
    return None


def _resolve_environment(
    config: Config, key: KeyPath, env: EnvironmentConfig, issues: list[Issue]
) -> None:
    for field in ("env_conda", "env_pypi"):
        value = getattr(env, field)
        if isinstance(value, PurePath) and _too_long((*key, field), value, issues):
            setattr(env, field, None)
        elif isinstance(value, PurePath):
            path = _absolute(config.base_dir, value)
            if _kind(path) == "missing":
                issues.append(_missing(config, (*key, field), "path", value, path))
            setattr(env, field, path)
    command = (env.command or "").strip()
    if not command:
        env.command = None
        return
    if len(command) > MAX_PATH:
        return  # no file has such a name: an inline command
    path = _absolute(config.base_dir, command)
    if _kind(path) == "file":
        env.command = str(path)  # a script: the bootstrap embeds it
    elif re.fullmatch(r"\S+", command) and (command.endswith(".sh") or "/" in command):
        # One word that looks like a script path: a typo, not an inline command.
        issues.append(_missing(config, (*key, "command"), "script", command, path))


def _check_job(
    config: Config, key: KeyPath, job: JobConfig, names: list[str], issues: list[Issue]
) -> None:
    if job.env_name is not None and job.env_name not in names:
        guess = did_you_mean(job.env_name, names)
        if guess:
            tail = f"; did you mean {show(guess)}?"
        elif names:
            shown = [n if len(n) <= 40 else show(n, 40) for n in names[:20]]
            tail = " (environments: " + ", ".join(shown) + ")"
        else:
            tail = " (no environment has a name)"
        issues.append(Issue((*key, "env_name"), f"unknown environment {show(job.env_name)}{tail}"))
    if job.run_script is not None and not job.run_script.strip():
        job.run_script = None
    if job.run_command is not None and not job.run_command.strip():
        job.run_command = None
    if job.run_script is None and job.run_command is None:
        issues.append(Issue(key, "needs run_script (a script and its arguments) or run_command"))
    script = None
    if job.run_script is not None:
        script = _resolve_script(config, (*key, "run_script"), job, issues)
    _resolve_inputs(config, key, job, script, issues)
    _check_outputs(key, job, issues)


def _resolve_script(
    config: Config, key: KeyPath, job: JobConfig, issues: list[Issue]
) -> Path | None:
    """Make run_script's script absolute; return it when it is an existing file."""
    assert job.run_script is not None
    try:
        argv = shellwords.split(job.run_script)
    except ValueError as exc:
        issues.append(Issue(key, f"cannot be split into a script and arguments: {exc}"))
        return None
    if not argv:
        issues.append(Issue(key, "names no script"))
        return None
    if _too_long(key, argv[0], issues):
        return None
    path = _absolute(config.base_dir, argv[0])
    job.run_script = shlex.join([str(path), *argv[1:]])
    kind = _kind(path)
    if kind == "missing":
        issues.append(_missing(config, key, "script", argv[0], path))
    elif kind == "dir":
        text = f"script {show(argv[0], 200)} is a directory ({_clip(str(path))})"
        issues.append(Issue(key, text))
    return path if kind == "file" else None


def _resolve_inputs(
    config: Config, key: KeyPath, job: JobConfig, script: Path | None, issues: list[Issue]
) -> None:
    # The script, upload_files and input_files are all linked into the job's work dir by
    # their basename: two different files with one name would overwrite each other.
    by_name: dict[str, tuple[KeyPath, Path]] = {}
    if script is not None:
        by_name[script.name] = ((*key, "run_script"), script)
    for field in ("upload_files", "input_files"):
        resolved = []
        for index, value in enumerate(getattr(job, field)):
            where: KeyPath = (*key, field, index)
            if _too_long(where, value, issues):
                continue
            path = _absolute(config.base_dir, value)
            resolved.append(path)
            kind = _kind(path)
            if kind == "missing":
                issues.append(_missing(config, where, "file", value, path))
                continue
            if kind == "dir":
                issues.append(
                    Issue(where, f"{show(str(value))} is a directory; list the files in it instead")
                )
                continue
            first = by_name.setdefault(path.name, (where, path))
            if first[1] != path:
                issues.append(
                    Issue(
                        where,
                        f"{show(str(value))} and {format_path(first[0])} ({first[1]}) would "
                        f"both be {path.name!r} in the job's work dir; rename one",
                    )
                )
        setattr(job, field, resolved)


def _check_outputs(key: KeyPath, job: JobConfig, issues: list[Issue]) -> None:
    """Normalise outputs (`./a.txt` is `a.txt`), drop exact repeats, and refuse what cannot
    be fetched as a file of its own: outside the work dir, cloudsend's own log names, or one
    output inside another (the archive would hold it twice)."""
    cleaned: list[str] = []
    seen: dict[str, int] = {}  # normalised output → its index
    parents: dict[str, int] = {}  # every folder above an output → that output's index
    for index, value in enumerate(job.output_files):
        where: KeyPath = (*key, "output_files", index)
        problem = _output_problem(value)
        if problem is not None:
            issues.append(Issue(where, problem))
            cleaned.append(value)
            continue
        norm = posixpath.normpath(value.strip())
        if norm in seen:
            continue  # the same file listed twice: fetched once
        ancestors = [posixpath.dirname(norm)]
        while ancestors[-1]:
            ancestors.append(posixpath.dirname(ancestors[-1]))
        outer = next((a for a in ancestors if a in seen), None)
        if outer is not None or norm in parents:
            other = outer if outer is not None else job.output_files[parents[norm]]
            issues.append(
                Issue(
                    where,
                    f"{show(value)} and {show(other)}: one is inside the other; list only the "
                    "outer one (a folder is fetched with everything in it)",
                )
            )
            continue
        seen[norm] = index
        for folder in ancestors[:-1]:
            parents.setdefault(folder, index)
        cleaned.append(norm)
    job.output_files = cleaned
    optional: list[str] = []
    for index, value in enumerate(job.optional_outputs):
        norm = posixpath.normpath(value.strip()) if value.strip() else value
        if norm not in seen:
            where = (*key, "optional_outputs", index)
            issues.append(Issue(where, f"{show(value)} is not one of output_files; list it there"))
        elif norm not in optional:
            optional.append(norm)
    job.optional_outputs = optional


def _output_problem(value: str) -> str | None:
    text = value.strip()
    norm = posixpath.normpath(text) if text else ""
    if not text:
        return "is an empty path; name a file, or remove the entry"
    if len(text) > MAX_PATH:
        return f"{show(value)} is {len(text)} characters long; a path is at most {MAX_PATH}"
    if "\0" in text or any(ord(c) < 32 for c in text):
        return f"{show(value)} is not a file name (control characters)"
    if text.startswith("~"):
        return f"{show(value)}: '~' is not expanded; outputs are relative to the work dir"
    if text.startswith("/") or re.match(r"[A-Za-z]:[\\/]", text):
        return f"{show(value)} is an absolute path; outputs are relative to the job's work dir"
    if norm == ".." or norm.startswith("../"):
        return f"{show(value)} leaves the job's work dir; outputs must stay inside it"
    if norm == ".":
        return f"{show(value)} is the work dir itself; name a file in it"
    if norm.split("/")[0] in RESERVED_OUTPUTS:
        names = " and ".join(sorted(RESERVED_OUTPUTS))
        return (
            f"{show(value)} would overwrite the job's own log in its results folder "
            f"({names} are cloudsend's); write to another name"
        )
    return None
