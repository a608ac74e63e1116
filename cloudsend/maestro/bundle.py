"""The run's files for the maestro: the config as the maestro runs it, and every local file
it names, laid out under one folder there.

`plan_bundle` decides (no network): each local file the config names goes to a path
relative to the bundle (under the config's folder: the same relative path; elsewhere:
`_outside/<its absolute path>`, so names in job work dirs stay the same), and the config is
rewritten to name those paths, with `maestro: local` (the maestro runs the watcher itself)
and each worker's `key:` replaced by the run key. The user's own private keys are never part
of a bundle. `send_bundle` uploads what the maestro lacks, compared by sha256 in one round
trip; an unchanged bundle costs that round trip only.
"""

from __future__ import annotations

import json
import os
import shlex
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

import yaml

from cloudsend.config.models import GROUPS, Config
from cloudsend.digest import sha256_file
from cloudsend.errors import ProvisionError
from cloudsend.transport.base import Transport

CONFIG_NAME = "cloudsend.yaml"
RUN_KEY = ".cloudsend/run_key"  # the run key's private half, in the bundle (0600)
KNOWN_HOSTS = ".cloudsend/known_hosts"  # the workers' pinned host keys (public)


@dataclass(frozen=True)
class Bundle:
    config: dict[str, Any]  # the config the maestro loads (flat keys, as a file has them)
    files: dict[str, Path] = field(default_factory=dict)  # bundle-relative path -> local file


def _relative(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return "_outside" + path.as_posix()


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, timedelta):
        return value.total_seconds() / 3600  # hours, as the config takes them
    return value


def plan_bundle(
    config: Config, *, is_file: Callable[[str], bool] = os.path.isfile
) -> Bundle:
    """The bundle of a loaded (checked, paths resolved) config; see the module doc."""
    base = config.base_dir
    files: dict[str, Path] = {}

    def ship(path: Path | str) -> str:
        local = Path(path)
        rel = _relative(local, base)
        if local.is_dir():
            for sub in sorted(local.rglob("*")):
                if sub.is_file():
                    files[_relative(sub, base)] = sub
        else:
            files[rel] = local
        return rel

    data = _plain(config.model_dump(exclude={"source", "base_dir"}))
    for group in GROUPS:  # written flat in a file
        data.update(data.pop(group))
    data["maestro"] = "local"
    data.pop("maestro_host", None)
    data["project"] = config.project_name
    for host in data.get("hosts", []):
        host["key"] = RUN_KEY  # never the user's key
    for env in data.get("environments", []):
        if env.get("command") and is_file(env["command"]):
            env["command"] = ship(env["command"])
        for key in ("env_pypi", "env_conda"):
            if isinstance(env.get(key), str):
                env[key] = ship(env[key])
    for job_data, job in zip(data.get("jobs", []), config.jobs, strict=True):
        for key in ("upload_files", "input_files"):
            job_data[key] = [ship(p) for p in job_data.get(key, [])]
        argv = config.script_argv(job)
        if argv is not None:
            job_data["run_script"] = shlex.join([ship(argv[0]), *argv[1:]])
    known = config.state_dir / "known_hosts"
    if known.is_file():
        files[KNOWN_HOSTS] = known
    return Bundle(config=data, files=files)


# -- sending it --------------------------------------------------------------------------------

_HASHES = (
    "import hashlib, json, os, sys\n"
    "d = sys.argv[1]; out = {}\n"
    "for rel in json.load(sys.stdin):\n"
    "    p = os.path.join(d, rel)\n"
    "    if os.path.isfile(p):\n"
    "        with open(p, 'rb') as fh:\n"
    "            out[rel] = hashlib.sha256(fh.read()).hexdigest()\n"
    "print('__cloudsend_hashes__' + json.dumps(out))\n"
)



@dataclass(frozen=True)
class Sent:
    files: int  # files uploaded
    bytes: int  # their size
    round_trips: int


def send_bundle(
    transport: Transport, bundle: Bundle, remote_dir: str, run_key: Path | None = None
) -> Sent:
    """Upload the bundle to `remote_dir` (absolute) on the maestro: the files it lacks or
    holds with other content, the config, and the run key's private half (0600, in a 0700
    folder, before any byte of it is written)."""
    with tempfile.TemporaryDirectory(prefix="cloudsend-bundle-") as tmp:
        config_file = Path(tmp) / CONFIG_NAME
        config_file.write_text(
            "# written by cloudsend for the maestro\n"
            + yaml.safe_dump(bundle.config, sort_keys=False)
        )
        wanted = {**bundle.files, CONFIG_NAME: config_file}
        if run_key is not None:
            wanted[RUN_KEY] = run_key
        for rel in wanted:
            if PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts:
                raise ProvisionError(f"bundle path {rel!r} would leave {remote_dir}")
        res = transport.run(
            f"umask 077; mkdir -p {shlex.quote(remote_dir + '/.cloudsend')} && "
            f"chmod 700 {shlex.quote(remote_dir + '/.cloudsend')} && "
            f"python3 -c {shlex.quote(_HASHES)} {shlex.quote(remote_dir)}",
            stdin=json.dumps(sorted(wanted)),
            what="compare the run's files with the maestro's",
        )
        there = json.loads(res.stdout.split("__cloudsend_hashes__")[-1])
        trips, count, size = 1, 0, 0
        for rel, local in sorted(wanted.items()):
            if there.get(rel) == sha256_file(local):
                continue
            transport.put(local, f"{remote_dir}/{rel}")
            trips, count, size = trips + 1, count + 1, size + local.stat().st_size
        if run_key is not None and there.get(RUN_KEY) != sha256_file(run_key):
            transport.run(f"chmod 600 {shlex.quote(remote_dir + '/' + RUN_KEY)}")
            trips += 1
    return Sent(files=count, bytes=size, round_trips=trips)
