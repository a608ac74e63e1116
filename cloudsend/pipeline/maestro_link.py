"""The laptop's link to a remote maestro (provider ssh): its two kinds of failure, and the
probe of its watcher that tells the laptop's next call to restart one that died.

A call that does not reach the maestro (refused, no answer, link lost) raises
MaestroUnreachable (a TransportError, exit 4) naming the maestro and its address; a command
that ran there and failed raises MaestroAnswered with the maestro's own message and exit code.
`revive` decides, as the maestro's own `attach` would (daemon.decide), whether the laptop's
`status`, `attach` or `fetch` restarts the maestro's watcher; cloudsend.pipeline.maestro_control
does it with the maestro's `run --detach`.
"""

from __future__ import annotations

import contextlib
import json
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cloudsend.errors import CloudsendError, TransportError
from cloudsend.pipeline import daemon
from cloudsend.transport.base import (
    Output,
    RemoteFile,
    Result,
    StreamingTransport,
    Transport,
)

# -- the maestro's two kinds of failure: not reached, or reached and answering an error ---------


class MaestroUnreachable(TransportError):
    """The laptop could not reach the maestro (refused, no answer, link lost): the run goes
    on there and on the workers without the laptop; nothing is lost."""


class MaestroAnswered(CloudsendError):
    """The maestro was reached and its cloudsend answered with an error (its exit code)."""

    kind = "error on the maestro"

    def __init__(self, message: str, *, exit_code: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.exit_code = exit_code if 0 < exit_code < 256 else 1


UNREACHABLE_HINT = (
    "jobs keep running on the workers and the maestro's watcher goes on without this "
    "machine; nothing is lost. Check that the maestro is up and answers ssh, then run this "
    "again"
)


class MaestroTransport:
    """A transport to the maestro whose failures say which kind they are: any TransportError
    of the link becomes MaestroUnreachable naming the maestro and its address; a command
    that ran and failed (check=True) becomes MaestroAnswered."""

    def __init__(
        self, inner: Transport, where: str, label: str = "", origin: str = "maestro_host"
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.where = where  # user@address:port
        self.label = label  # how the inner transport names the maestro in its messages
        self.origin = origin  # where the address came from: maestro_host, or the stack (aws)

    def __enter__(self) -> MaestroTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def unreachable(self, exc: TransportError) -> MaestroUnreachable:
        detail = exc.message.replace(f" on {self.label}", "") if self.label else exc.message
        return MaestroUnreachable(
            f"could not reach the maestro {self.where} ({self.origin}): {detail}",
            hint=UNREACHABLE_HINT,
        )

    def run(
        self,
        command: str,
        *,
        stdin: str | None = None,
        timeout: float | None = None,
        check: bool = True,
        what: str | None = None,
    ) -> Result:
        try:
            res = self.inner.run(command, stdin=stdin, timeout=timeout, check=False, what=what)
        except TransportError as exc:
            raise self.unreachable(exc) from exc
        if check and not res.ok:
            raise MaestroAnswered(
                f"the maestro {self.where} answered with an error (exit {res.exit_code}) "
                f"during {what or command[:200]}: {res.tail()}",
                exit_code=res.exit_code,
                hint="run with --debug for the full output",
            )
        return res

    def put(self, local: Path, remote_path: str) -> None:
        try:
            self.inner.put(local, remote_path)
        except TransportError as exc:
            raise self.unreachable(exc) from exc

    def get(
        self, remote_path: str, local: Path, progress: Callable[[int], None] | None = None
    ) -> None:
        try:
            self.inner.get(remote_path, local, progress)
        except TransportError as exc:
            raise self.unreachable(exc) from exc

    def stream(
        self,
        command: str,
        out: Callable[[bytes], object],
        err: Callable[[bytes], object] | None = None,
        *,
        what: str | None = None,
        started: Callable[[], object] | None = None,
    ) -> int:
        """The command's output handed over as it comes (StreamingTransport); its exit code."""
        if not isinstance(self.inner, StreamingTransport):
            raise TransportError(f"{self.name} cannot stream a command's output")
        try:
            return self.inner.stream(command, out, err, what=what, started=started)
        except TransportError as exc:
            raise self.unreachable(exc) from exc

    @contextlib.contextmanager
    def output(
        self,
        command: str,
        *,
        stdin: str | None = None,
        timeout: float | None = None,
        what: str | None = None,
    ) -> Iterator[Output]:
        try:
            with self.inner.output(command, stdin=stdin, timeout=timeout, what=what) as out:
                yield out
        except TransportError as exc:
            raise self.unreachable(exc) from exc

    @contextlib.contextmanager
    def reading(self, remote_path: str) -> Iterator[RemoteFile]:
        try:
            with self.inner.reading(remote_path) as fh:
                yield fh
        except TransportError as exc:
            raise self.unreachable(exc) from exc

    def close(self) -> None:
        self.inner.close()


# -- a dead watcher on the maestro: restarted by the laptop's next status/attach/fetch -----------

REVIVING = ("status", "attach", "fetch")  # the laptop calls that restart a dead watcher


@dataclass(frozen=True)
class WatcherProbe:
    """The maestro's watcher files, as daemon.decide takes them."""

    held: bool  # a watcher lives (holds watcher.lock)
    recorded: bool  # a watcher.json exists
    ended: bool  # it recorded how the run ended


def revive(command: str, probe: WatcherProbe | None) -> bool:
    """Whether the laptop's `command` restarts the maestro's watcher: when the maestro's own
    `attach` would (daemon.decide: a watcher recorded, not ended, not alive: it died mid-run),
    for the calls that need it going (status, attach, fetch; not logs, cancel, down)."""
    if command not in REVIVING or probe is None:
        return False
    action = daemon.decide("attach", probe.held, probe.recorded, probe.ended)
    return action == daemon.Action.RESTART


_PROBE_MARK = "__cloudsend_watcher__"
# stdlib only, run by the maestro's own python3 before its cloudsend (one round trip): the
# same files and tests as daemon.WatcherFiles (lock_held, read, is_ended)
_PROBE = (
    "import fcntl, json, os, sys\n"
    "d = sys.argv[1]; out = {'held': False, 'recorded': False, 'ended': False}\n"
    "if os.path.isdir(d):\n"
    "    try:\n"
    "        with open(os.path.join(d, 'watcher.json')) as fh:\n"
    "            rec = json.load(fh)\n"
    "        out['recorded'] = isinstance(rec, dict)\n"
    "        out['ended'] = out['recorded'] and rec.get('exit_code') is not None\n"
    "    except (OSError, ValueError):\n"
    "        pass\n"
    "    with open(os.path.join(d, 'watcher.lock'), 'ab') as fh:\n"
    "        try:\n"
    "            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
    "        except BlockingIOError:\n"
    "            out['held'] = True\n"
    "print('" + _PROBE_MARK + "' + json.dumps(out), flush=True)\n"
)


def probed(state_dir: str, command: str) -> str:
    """`command` (a shell line) preceded by the probe of the watcher files in `state_dir` (the
    maestro's project state folder), in the same round trip."""
    probe = f"python3 -c {shlex.quote(_PROBE)} {shlex.quote(state_dir)} 2>/dev/null"
    return f"{probe}; {command}"


def split_probe(stdout: str) -> tuple[WatcherProbe | None, str]:
    """(the probe's answer, the rest of the output)."""
    head, sep, rest = stdout.partition(_PROBE_MARK)
    if not sep:
        return None, stdout
    line, _, rest = rest.partition("\n")
    try:
        doc = json.loads(line)
        probe = WatcherProbe(bool(doc["held"]), bool(doc["recorded"]), bool(doc["ended"]))
    except (ValueError, KeyError, TypeError):
        probe = None
    return probe, head + rest
