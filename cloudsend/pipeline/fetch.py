"""Brings finished jobs' outputs home: one archive per host per round, extracted safely."""

from __future__ import annotations

import os
import shlex
import tarfile
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from cloudsend.errors import TransportError
from cloudsend.pipeline.agent_client import AgentClient
from cloudsend.providers.base import Host


def _safe_members(tar: tarfile.TarFile, job_ids: set[str]) -> list[tarfile.TarInfo]:
    # The archive comes from a host we do not fully trust: regular files under a known job only.
    members = []
    for member in tar.getmembers():
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts or not path.parts:
            continue
        if path.parts[0] not in job_ids or not (member.isfile() or member.isdir()):
            continue
        members.append(member)
    return members


def fetch_jobs(
    host: Host, job_ids: list[str], results_dir: Path
) -> dict[str, list[tuple[str, int]]]:
    """Pack the jobs' outputs on the host, fetch the archive, extract into results_dir/<job>/.

    Returns job_id → [(relative path, size)] for what arrived.
    """
    if not job_ids:
        return {}
    remote = f"{host.root}/outbox/{uuid.uuid4().hex}.tar.gz"
    AgentClient(host).pack(remote, job_ids)
    got = download(host, remote, job_ids, results_dir)
    host.transport.run(f"rm -f {shlex.quote(remote)}", check=False)
    return got


def download(
    host: Host,
    remote: str,
    job_ids: list[str],
    results_dir: Path,
    progress: Callable[[int], None] | None = None,
) -> dict[str, list[tuple[str, int]]]:
    """Fetch an archive made by the agent and extract it safely into results_dir/<job>/.
    `progress` is the transport's (called as bytes arrive)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".fetch-", suffix=".tar.gz", dir=results_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    got: dict[str, list[tuple[str, int]]] = {job: [] for job in job_ids}
    try:
        host.transport.get(remote, tmp, progress=progress)
        try:
            with tarfile.open(tmp, "r:gz") as tar:
                for member in _safe_members(tar, set(job_ids)):
                    dest = results_dir / member.name
                    if member.isdir():
                        dest.mkdir(parents=True, exist_ok=True)
                        continue
                    src = tar.extractfile(member)
                    if src is None:
                        continue
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    part = dest.with_name(dest.name + ".part")
                    with src, open(part, "wb") as out:
                        out.write(src.read())
                    os.replace(part, dest)
                    job, _, rel = member.name.partition("/")
                    got[job].append((rel, member.size))
        except (tarfile.TarError, OSError) as exc:
            raise TransportError(f"bad results archive from host {host.name!r}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return got
