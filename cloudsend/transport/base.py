"""The transport contract shared by every provider: run, put, get, close."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from cloudsend.errors import TransportError


@dataclass
class Result:
    """What one command on a host gave back."""

    command: str
    exit_code: int
    stdout: str
    stderr: str
    host: str = ""
    what: str = ""  # what the command does, in the user's words (messages show this)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def tail(self, lines: int = 10) -> str:
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return "\n".join(text[-lines:])

    def raise_for_status(self) -> Result:
        if not self.ok:
            raise TransportError(
                f"command failed on host {self.host!r} (exit code {self.exit_code}): "
                f"{shown(self.command, self.what)}\n{self.tail()}",
                hint="run with --debug for the full output",
            )
        return self


def shown(command: str, what: str | None) -> str:
    """A command as messages show it: what it does when the caller said (an agent call is
    a long internal command line), else its first 200 characters."""
    return what if what else command[:200]


CHUNK = 1 << 20  # what a RemoteFile hands over at a time: memory stays bounded by this


class RemoteFile(Protocol):
    """A file on a host opened for reading; any failure is a TransportError."""

    def size(self) -> int: ...

    def pread(self, offset: int, n: int) -> bytes:
        """Up to n bytes at offset (fewer at the end of the file)."""
        ...

    def chunks(self, offset: int = 0, end: int | None = None) -> Generator[bytes, None, None]:
        """The bytes from offset up to end (default: the size now), CHUNK at most at a time,
        in order; downloads are pipelined but never buffer more than a few MB."""
        ...


class Output(Protocol):
    """A running command's stdout, handed over as it arrives (see Transport.output)."""

    def chunks(self) -> Iterator[bytes]:
        """Its stdout, CHUNK at most at a time, until it closes; a link lost or the timeout
        passed meanwhile is TransportError."""
        ...

    def finish(self) -> Result:
        """Once it ended (the rest of stdout is discarded): its exit code and stderr
        (`stdout` is empty: it was handed over by chunks)."""
        ...


class Transport(Protocol):
    name: str

    def run(
        self,
        command: str,
        *,
        stdin: str | None = None,
        timeout: float | None = None,
        check: bool = True,
        what: str | None = None,
    ) -> Result:
        """`what`: the command in the user's words, for messages (default: the command)."""
        ...

    def output(
        self,
        command: str,
        *,
        stdin: str | None = None,
        timeout: float | None = None,
        what: str | None = None,
    ) -> AbstractContextManager[Output]:
        """Run `command` as `run` does, its stdout read as bytes while it comes (a document
        followed by an archive, in one round trip); closing ends the read."""
        ...

    def put(self, local: Path, remote: str) -> None: ...

    def get(
        self, remote: str, local: Path, progress: Callable[[int], None] | None = None
    ) -> None:
        """`progress(bytes so far)` is called as the download advances."""
        ...

    def reading(self, remote: str) -> AbstractContextManager[RemoteFile]:
        """The file opened for reading; FileNotFoundError if it does not exist."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class StreamingTransport(Transport, Protocol):
    """A transport that hands a command's output over as it is written (ssh)."""

    def stream(
        self,
        command: str,
        out: Callable[[bytes], object],
        err: Callable[[bytes], object] | None = None,
        *,
        what: str | None = None,
        started: Callable[[], object] | None = None,
    ) -> int:
        """Run `command`, `out`/`err` getting its stdout/stderr bytes as they arrive; its
        exit code; `started()` once it runs. A link lost meanwhile is TransportError."""
        ...
