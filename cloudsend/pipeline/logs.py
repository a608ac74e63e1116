"""A job's log streamed from wherever it is (its host, or results/ once fetched), in chunks:
memory stays bounded whatever the log's size, and the bytes arrive exactly as written."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from cloudsend.errors import JobError
from cloudsend.transport.base import RemoteFile
from cloudsend.transport.local import open_local

if TYPE_CHECKING:
    from cloudsend.pipeline.session import Session

SCAN = 1 << 16  # read backwards this much at a time to find where the tail begins


def tail_start(f: RemoteFile, size: int, lines: int) -> int:
    """Offset of the first of the last `lines` lines of f's first `size` bytes (0: all)."""
    if lines <= 0 or size == 0:
        return 0
    found = 0
    pos = size - 1  # a final newline ends the last line; it does not begin another
    while pos > 0:
        start = max(0, pos - SCAN)
        block = f.pread(start, pos - start)
        at = len(block)
        while (at := block.rfind(b"\n", 0, at)) >= 0:
            found += 1
            if found == lines:
                return start + at + 1
        pos = start
    return 0


def _open_log(
    session: Session, job_id: str, stream: str
) -> contextlib.AbstractContextManager[RemoteFile] | None:
    """The fetched copy of the log if there is one, else the log on the job's host."""
    view = next((v for v in session.views() if v.job_id == job_id), None)
    if view is None:
        raise JobError(
            f"no job named {job_id!r} in this run", hint="`cloudsend status` lists the job ids"
        )
    local = session.results_dir / job_id / f"{stream}.log"
    if view.fetched and local.exists():
        return open_local(local, str(local))
    if not view.host:
        return None
    host = session.host_named(view.host)
    return host.transport.reading(f"{host.root}/jobs/{job_id}/{stream}.log")  # agent's layout


def write_log(
    session: Session,
    job_id: str,
    write: Callable[[bytes], object],
    stream: str = "stdout",
    lines: int = 50,
    offset: int | None = None,
) -> int:
    """Hand `write` the job's log in chunks: its last `lines` lines (all when lines <= 0), or
    with `offset` what follows that byte (all of it if the log is now shorter: a new attempt
    began). Returns the offset reached, for a next call; nothing is written if there is no
    log yet."""
    opened = _open_log(session, job_id, stream)
    if opened is None:
        return 0
    try:
        with opened as f:
            size = f.size()
            if offset is None:
                start = tail_start(f, size, lines)
            else:
                start = offset if offset <= size else 0
            with contextlib.closing(f.chunks(start, size)) as chunks:
                for chunk in chunks:
                    write(chunk)
            return size
    except FileNotFoundError:
        return 0
