"""Brings finished jobs' outputs home: one archive per host per round, streamed and unpacked
member by member (memory stays bounded whatever the sizes; no copy of the archive is kept here).

Each file is written under the state dir's tmp/ (locked while written) and moved into place
whole; what a killed fetch left there is removed by the next one (clean_leftovers).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import shlex
import shutil
import tarfile
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from cloudsend.errors import TransportError
from cloudsend.pipeline.agent_client import AgentClient
from cloudsend.providers.base import Host
from cloudsend.transport.base import CHUNK

PART_PREFIX = "fetch-"  # files being written under tmp_dir


def _safe(member: tarfile.TarInfo, job_ids: set[str]) -> bool:
    # The archive comes from a host we do not fully trust: regular files under a known job only.
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        return False
    return path.parts[0] in job_ids and (member.isfile() or member.isdir())


class _ChunkStream(io.RawIOBase):
    """A readable stream over an iterator of chunks (what tarfile reads from)."""

    def __init__(self, chunks: Iterator[bytes], progress: Callable[[int], None] | None) -> None:
        self._chunks = chunks
        self._progress = progress
        self._buf = memoryview(b"")
        self._total = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buf:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._buf = memoryview(chunk)
            self._total += len(chunk)
            if self._progress is not None:
                self._progress(self._total)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def _write_whole(src: IO[bytes], dest: Path, tmp_dir: Path) -> None:
    """Copy src to dest in chunks; dest appears only once complete."""
    part = tmp_dir / f"{PART_PREFIX}{uuid.uuid4().hex}"
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode: the umask's
    try:
        with os.fdopen(fd, "wb") as out:
            fcntl.flock(out, fcntl.LOCK_EX)  # held until closed: clean_leftovers skips it
            shutil.copyfileobj(src, out, CHUNK)
            out.flush()
            try:
                os.replace(part, dest)
            except OSError:  # tmp_dir on another file system than the results
                shutil.move(part, dest)
    finally:
        part.unlink(missing_ok=True)


def clean_leftovers(tmp_dir: Path, results_root: Path) -> int:
    """Remove what killed fetches left: part files under tmp_dir that no live fetch holds
    locked, and the archives older versions downloaded into results/run-*/. Returns how many."""
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for path in tmp_dir.iterdir():
            if not path.name.startswith(PART_PREFIX):
                continue
            try:
                with open(path, "rb") as fh:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    path.unlink()
                    removed += 1
            except OSError:  # locked: a fetch is writing it; or gone already
                continue
    for old in results_root.glob("run-*/.fetch-*.tar.gz"):
        with contextlib.suppress(OSError):
            old.unlink()
            removed += 1
    return removed


@dataclass
class Fetched:
    """What one archive brought home, and what the host's agent could not pack."""

    files: dict[str, list[tuple[str, int]]]  # job_id → [(relative path, size)] that arrived
    missing: dict[str, list[str]] = field(default_factory=dict)  # declared, never written
    refused: dict[str, list[str]] = field(default_factory=dict)  # resolve outside the work dir


def fetch_jobs(host: Host, job_ids: list[str], results_dir: Path, tmp_dir: Path) -> Fetched:
    """Pack the jobs' outputs on the host, fetch the archive, extract into results_dir/<job>/."""
    if not job_ids:
        return Fetched({})
    remote = f"{host.root}/outbox/{uuid.uuid4().hex}.tar.gz"
    packed = AgentClient(host).pack(remote, job_ids)
    got = download(host, remote, job_ids, results_dir, tmp_dir)
    host.transport.run(
        f"rm -f {shlex.quote(remote)}", check=False, what="removing a fetched archive"
    )
    return Fetched(got, dict(packed.get("missing") or {}), dict(packed.get("refused") or {}))


def download(
    host: Host,
    remote: str,
    job_ids: list[str],
    results_dir: Path,
    tmp_dir: Path,
    progress: Callable[[int], None] | None = None,
) -> dict[str, list[tuple[str, int]]]:
    """Stream an archive made by the agent and extract it safely into results_dir/<job>/.
    `progress(bytes so far)` is called as chunks arrive."""
    opened = False
    try:
        with (
            host.transport.reading(remote) as remote_file,
            contextlib.closing(remote_file.chunks()) as chunks,
        ):
            opened = True
            return unpack(host, chunks, job_ids, results_dir, tmp_dir, progress)
    except FileNotFoundError as exc:
        if opened:
            raise TransportError(f"bad results archive from host {host.name!r}: {exc}") from exc
        raise TransportError(f"results archive {remote} missing on host {host.name!r}") from exc


def _tar_stream(stream: _ChunkStream) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=stream, mode="r|gz")
    except TypeError as exc:  # CPython's gzip header parse, on a stream cut inside it
        raise tarfile.ReadError(f"archive cut short in its header ({exc})") from exc


def unpack(
    host: Host,
    chunks: Iterator[bytes],
    job_ids: list[str],
    results_dir: Path,
    tmp_dir: Path,
    progress: Callable[[int], None] | None = None,
) -> dict[str, list[tuple[str, int]]]:
    """Extract an archive of the agent's, read from `chunks` as they come (a file being
    read, or the rest of a `collect --stream`), into results_dir/<job>/: only regular files
    under the wanted jobs, each written whole. What arrived, per job."""
    results_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    wanted = set(job_ids)
    got: dict[str, list[tuple[str, int]]] = {job: [] for job in job_ids}
    try:
        with _tar_stream(_ChunkStream(chunks, progress)) as tar:
            for member in tar:
                if not _safe(member, wanted):
                    continue
                dest = results_dir / member.name
                try:
                    if member.isdir():
                        dest.mkdir(parents=True, exist_ok=True)
                        continue
                    src = tar.extractfile(member)
                    if src is None:
                        continue
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with src:
                        _write_whole(src, dest, tmp_dir)
                except OSError as exc:
                    raise TransportError(
                        f"cannot write {dest} (from host {host.name!r}): {exc}"
                    ) from exc
                job, _, rel = member.name.partition("/")
                got[job].append((rel, member.size))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise TransportError(f"bad results archive from host {host.name!r}: {exc}") from exc
    return got
