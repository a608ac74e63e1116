"""Transport for the local provider: the host is this machine."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import IO, BinaryIO

from cloudsend.errors import TransportError
from cloudsend.transport.base import CHUNK, Result, shown


class LocalFile:
    """A RemoteFile on this machine."""

    def __init__(self, fh: BinaryIO, label: str) -> None:
        self._fh = fh
        self._label = label

    def _failed(self, exc: OSError) -> TransportError:
        return TransportError(f"cannot read {self._label}: {exc}")

    def size(self) -> int:
        try:
            return os.fstat(self._fh.fileno()).st_size
        except OSError as exc:
            raise self._failed(exc) from exc

    def pread(self, offset: int, n: int) -> bytes:
        try:
            return os.pread(self._fh.fileno(), n, offset)
        except OSError as exc:
            raise self._failed(exc) from exc

    def chunks(self, offset: int = 0, end: int | None = None) -> Generator[bytes, None, None]:
        end = self.size() if end is None else end
        while offset < end:
            data = self.pread(offset, min(CHUNK, end - offset))
            if not data:  # truncated meanwhile
                return
            offset += len(data)
            yield data


@contextlib.contextmanager
def open_local(path: str | Path, label: str) -> Iterator[LocalFile]:
    """A local file as a RemoteFile (FileNotFoundError if missing, else TransportError)."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise TransportError(f"cannot read {label}: {exc}") from exc
    with fh:
        yield LocalFile(fh, label)


def _feed(pipe: IO[bytes] | None, data: bytes) -> None:
    assert pipe is not None
    with contextlib.suppress(OSError):  # it exited without reading it all
        pipe.write(data)
    with contextlib.suppress(OSError):
        pipe.close()


class LocalOutput:
    """An Output of a local process (stderr goes to a temporary file: no pipe to fill)."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        err: BinaryIO,
        command: str,
        name: str,
        timeout: float | None,
        what: str | None,
    ) -> None:
        self._proc, self._err, self._command = proc, err, command
        self._name, self._timeout, self._what = name, timeout, what

    def chunks(self) -> Iterator[bytes]:
        out = self._proc.stdout
        assert out is not None
        while True:
            ready, _, _ = select.select([out], [], [], self._timeout)
            if not ready:
                self._proc.kill()
                raise TransportError(
                    f"command timed out after {self._timeout} s on host {self._name!r}: "
                    f"{shown(self._command, self._what)}"
                )
            data = out.read1(CHUNK)  # type: ignore[attr-defined]
            if not data:
                return
            yield data

    def finish(self) -> Result:
        out = self._proc.stdout
        assert out is not None
        while out.read(CHUNK):  # what the caller did not read
            pass
        code = self._proc.wait()
        self._err.seek(0)
        stderr = self._err.read().decode("utf-8", "replace")
        return Result(self._command, code, "", stderr, host=self._name, what=self._what or "")


class LocalTransport:
    def __init__(self, name: str = "local") -> None:
        self.name = name
        self.calls = 0  # counted so tests and reports can see round trips

    def run(
        self,
        command: str,
        *,
        stdin: str | None = None,
        timeout: float | None = None,
        check: bool = True,
        what: str | None = None,
    ) -> Result:
        self.calls += 1
        try:
            proc = subprocess.run(
                ["bash", "-c", command],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=timeout,
                start_new_session=True,  # a Ctrl-C in cloudsend must not reach host commands
            )
        except subprocess.TimeoutExpired as exc:
            raise TransportError(
                f"command timed out after {timeout} s on host {self.name!r}: "
                f"{shown(command, what)}"
            ) from exc
        result = Result(
            command, proc.returncode, proc.stdout, proc.stderr, host=self.name, what=what or ""
        )
        return result.raise_for_status() if check else result

    @contextlib.contextmanager
    def output(
        self,
        command: str,
        *,
        stdin: str | None = None,
        timeout: float | None = None,
        what: str | None = None,
    ) -> Iterator[LocalOutput]:
        """`timeout`: seconds the command may go without writing anything."""
        self.calls += 1
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                ["bash", "-c", command],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,  # as run: a Ctrl-C here must not reach it
            )
            feeder = threading.Thread(  # a stdin bigger than a pipe must not block our read
                target=_feed, args=(proc.stdin, (stdin or "").encode()), daemon=True
            )
            feeder.start()
            try:
                yield LocalOutput(proc, err, command, self.name, timeout, what)
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                feeder.join()
                if proc.stdout is not None:
                    proc.stdout.close()

    def put(self, local: Path, remote: str) -> None:
        self.calls += 1
        dest = Path(remote)
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        try:
            # owner-only, like everything in a host root (another user may share this machine)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(fd, "wb") as out, open(local, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
            os.replace(tmp, dest)  # a reader never sees a half-copied file
        except OSError as exc:
            raise TransportError(f"cannot copy {local} to {remote}: {exc}") from exc

    def get(
        self, remote: str, local: Path, progress: Callable[[int], None] | None = None
    ) -> None:
        self.calls += 1
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(remote, local)
        except OSError as exc:
            raise TransportError(f"cannot fetch {remote} from host {self.name!r}: {exc}") from exc
        if progress is not None:
            progress(local.stat().st_size)

    def reading(self, remote: str) -> contextlib.AbstractContextManager[LocalFile]:
        self.calls += 1
        return open_local(remote, f"{remote} on host {self.name!r}")

    def close(self) -> None:
        pass
