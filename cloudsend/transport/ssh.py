"""Transport for SSH hosts (Fabric): one persistent connection per host, shared by threads.

Nothing in cloudsend imports this module at import time (fabric costs ~0.3 s to import).
Failure model: a call that fails before anything happened on the host (connection refused, no
banner, channel refused) is retried a few times quickly; anything else - a connection lost
mid-command, a timeout, a changed host key - raises TransportError naming the host. Deciding
that a host is *lost* belongs to the pipeline, not here.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import posixpath
import random
import secrets
import select
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypedDict, TypeVar

import paramiko
from invoke.exceptions import CommandTimedOut

from cloudsend import phases
from cloudsend.errors import TransportError
from cloudsend.transport.base import CHUNK, Result, shown
from cloudsend.transport.known_hosts import KnownHosts
from cloudsend.transport.ssh_file import SftpReader
from cloudsend.transport.ssh_link import (
    Connection,
    NotStarted,
    Retry,
    SshTarget,
    alive,
    connect,
    describe,
    link_failure,
    makedirs,
    try_remove,
)

__all__ = ["HostFacts", "SshTarget", "SshTransport", "probe"]

log = logging.getLogger(__name__)
# paramiko logs tracebacks of failed handshakes, which we retry and report ourselves; with no
# handler at all, logging's last resort would print them on the user's terminal
logging.getLogger("paramiko").addHandler(logging.NullHandler())

T = TypeVar("T")
RETRY_DELAYS = (0.2, 0.5, 1.0)  # 4 tries at most...
RETRY_WINDOW = 3.0  # ...and none once a call has spent this long: slow failures = sick host
_PROBE_MARK = "__cloudsend_probe__"


class HostFacts(TypedDict):
    home: str
    cpus: int
    python: str | None  # real path of the login shell's python3; None if it has none
    python_version: str | None  # e.g. "3.11"


_Opened = tuple[paramiko.SFTPClient, Connection, paramiko.SFTPFile]


class _StdinText(io.StringIO):
    """Invoke reads a non-tty in_stream one character per 10 ms: hand it everything at once.
    At EOF invoke closes the command's stdin, so a command reading stdin never waits."""

    def read(self, size: int | None = -1) -> str:
        return super().read(1 << 16)


class SshTransport:
    """run/put/get on one host over one SSH connection, safe to call from many threads."""

    def __init__(self, target: SshTarget) -> None:
        self.target = target
        self.name = target.name
        self.calls = 0  # run/put/get calls, as LocalTransport counts them
        self.bytes_sent = 0  # payload of completed puts
        self.bytes_received = 0  # payload of completed gets
        self.connects = 0  # SSH connections opened: stays 1 while the link holds
        self.first_contact = ""  # the host key pinned on first contact by this transport
        self._known = KnownHosts(target.known_hosts)
        self._lock = threading.Lock()  # guards the connection (held while connecting)
        self._count_lock = threading.Lock()
        self._sftp_lock = threading.Lock()  # one SFTP client per connection, one transfer
        self._channels = threading.BoundedSemaphore(target.max_channels)
        self._conn: Connection | None = None
        self._stop = threading.Event()  # stops the current connection's watchdog
        self._sftp: paramiko.SFTPClient | None = None
        self._failed: tuple[float, Exception] | None = None  # the last failed connect

    # -- the connection ----------------------------------------------------------------------
    def _connection(self, since: float) -> Connection:
        with self._lock:
            conn = self._conn
            if conn is not None and conn.is_connected:
                return conn
            if conn is not None:
                self._discard(conn)
            if self._failed is not None and self._failed[0] >= since:
                # a connect tried while we waited for the lock just failed: share its
                # verdict rather than queue one more connect timeout per thread
                failed = self._failed[1]
                if isinstance(failed, TransportError):  # final (host key, auth): no retry
                    raise type(failed)(failed.message, hint=failed.hint)
                raise Retry(str(failed))
            try:
                with phases.span("ssh connect (handshake + auth), per host"):
                    conn = connect(self.target, self._known)
            except Exception as exc:
                self._failed = (time.monotonic(), exc)
                raise
            self._failed = None
            self._conn = conn
            self.first_contact = self.first_contact or conn.first_contact
            self.connects += 1
            self._stop = threading.Event()
            threading.Thread(
                target=self._watch,
                args=(conn, self._stop),
                daemon=True,
                name=f"cloudsend-ssh-watchdog-{self.name}",
            ).start()
            log.debug("connected to %s", self.target.label)
            return conn

    def _discard(self, conn: Connection) -> None:
        """Forget and close a connection (the caller holds self._lock)."""
        if self._conn is conn:
            self._conn = None
            self._sftp = None
            self._stop.set()
        conn.shut()

    def _drop(self, conn: Connection) -> None:
        with self._lock:
            self._discard(conn)

    def _drop_if_dead(self, conn: Connection) -> None:
        # never drop a live connection: the other threads' commands run on it
        if not alive(conn, self.target.dead_after):
            self._drop(conn)

    def _watch(self, conn: Connection, stop: threading.Event) -> None:
        # a frozen host would otherwise leave a running command, or a channel being opened,
        # hanging for as long as the channel timeout (or forever) instead of dead_after
        while not stop.wait(self.target.keepalive):
            if not alive(conn, self.target.dead_after):
                if conn.is_connected:
                    conn.lost = f"no answer to keepalives for {self.target.dead_after:g} s"
                    log.info("%s: %s; closing", self.target.label, conn.lost)
                self._drop(conn)
                return

    def _retrying(self, what: str, attempt: Callable[[Connection], T]) -> T:
        start = time.monotonic()
        tries = 0
        while True:
            tries += 1
            try:
                return attempt(self._connection(time.monotonic()))
            except Retry as exc:
                spent = time.monotonic() - start
                if tries > len(RETRY_DELAYS) or spent > RETRY_WINDOW:
                    raise TransportError(
                        f"cannot {what} on {self.target.label}: {exc} "
                        f"(gave up after {tries} tries in {spent:.1f} s)",
                        hint="is the host up and its sshd running? jobs already on the host "
                        "keep running meanwhile; run again to resume",
                    ) from exc
                log.debug("%s on %s: %s; retrying", what, self.target.label, exc)
                time.sleep(RETRY_DELAYS[tries - 1] * random.uniform(0.8, 1.2))

    def _count(self, attr: str = "calls", n: int = 1) -> None:
        with self._count_lock:
            setattr(self, attr, getattr(self, attr) + n)

    # -- the Transport interface -------------------------------------------------------------
    def run(
        self,
        command: str,
        *,
        stdin: str | None = None,
        timeout: float | None = None,
        check: bool = True,
        what: str | None = None,
    ) -> Result:
        """Run `command` in the login shell (no pty); stdin text is fed then closed.
        A non-zero exit is a Result (raised only when check); a lost channel, a timeout or an
        unreachable host is TransportError (naming `what` it did, if given, not `command`)."""
        self._count()
        label = self.target.label
        doing = f"during {what}" if what else f"while running: {command[:200]}"

        def attempt(conn: Connection) -> Result:
            if not self._channels.acquire(timeout=timeout):
                raise TransportError(
                    f"all {self.target.max_channels} channels to {label} "
                    f"stayed busy for {timeout} s: {shown(command, what)}"
                )
            try:
                res = conn.run(
                    command,
                    hide=True,
                    warn=True,
                    pty=False,
                    timeout=timeout,
                    in_stream=_StdinText(stdin or ""),
                    encoding="utf-8",
                )
            except NotStarted as exc:
                if not conn.is_connected:
                    self._drop(conn)
                raise Retry(str(exc)) from exc
            except CommandTimedOut as exc:
                raise TransportError(
                    f"command timed out after {timeout} s on {label}: {shown(command, what)}",
                    hint="the host may be overloaded or frozen",
                ) from exc
            except Exception as exc:  # the channel or the connection failed mid-command
                self._drop_if_dead(conn)
                raise TransportError(
                    f"connection to {label} failed {doing}: "
                    f"{conn.lost or describe(exc)}",
                    hint="the command may or may not have run; run again to resume",
                ) from exc
            finally:
                self._channels.release()
            if res.exited == -1 and not alive(conn, self.target.dead_after):
                # -1: the channel closed without an exit status; if the link is fine, a
                # signal killed the command (paramiko ignores exit-signal): a plain failure
                self._drop(conn)
                raise TransportError(
                    f"connection to {label} lost {doing}"
                    + (f" ({conn.lost})" if conn.lost else ""),
                    hint="the command may still be running there; run again to resume",
                )
            return Result(
                command, res.exited, res.stdout, res.stderr, host=self.name, what=what or ""
            )

        result = self._retrying("run a command", attempt)
        return result.raise_for_status() if check else result

    def stream(
        self,
        command: str,
        out: Callable[[bytes], object],
        err: Callable[[bytes], object] | None = None,
        *,
        what: str | None = None,
        started: Callable[[], object] | None = None,
    ) -> int:
        """Run `command` (no pty, stdin closed) handing its stdout and stderr bytes to `out`
        and `err` as they arrive, on one channel; returns its exit code once it ends;
        `started()` is called once it runs (a failure after that is not "not reached").
        Opening the channel is retried as for `run`; a connection lost once it ran is
        TransportError. KeyboardInterrupt (or any exception in `out`/`err`) closes the
        channel: the command then sees its stdout closed (it is not signalled)."""
        self._count()
        label = self.target.label
        doing = f"during {what}" if what else f"while running: {command[:200]}"
        conn, chan = self._exec(command, what=what)
        try:
            if started is not None:
                started()
            try:
                code = _pump(chan, out, err or (lambda _data: None))
            except (OSError, EOFError, paramiko.SSHException) as exc:
                self._drop_if_dead(conn)
                raise TransportError(
                    f"connection to {label} failed {doing}: {conn.lost or describe(exc)}",
                    hint="the command may still be running there",
                ) from exc
            if code is None:  # closed without an exit status
                if not alive(conn, self.target.dead_after):
                    self._drop(conn)
                    raise TransportError(
                        f"connection to {label} lost {doing}"
                        + (f" ({conn.lost})" if conn.lost else ""),
                        hint="the command may still be running there",
                    )
                code = -1  # a signal ended it (paramiko ignores exit-signal)
            return code
        finally:
            with contextlib.suppress(Exception):
                chan.close()
            self._channels.release()

    def _exec(
        self,
        command: str,
        stdin: bytes = b"",
        timeout: float | None = None,
        what: str | None = None,
    ) -> tuple[Connection, paramiko.Channel]:
        """A channel running `command`, its stdin sent and closed, holding one of the
        connection's channel slots (the caller releases it). Opening is retried as for run."""

        def opened(conn: Connection) -> tuple[Connection, paramiko.Channel]:
            if not self._channels.acquire(timeout=self.target.channel_timeout):
                raise Retry(f"all {self.target.max_channels} channels stayed busy")
            try:
                chan = conn.create_session()
            except NotStarted as exc:
                self._channels.release()
                if not conn.is_connected:
                    self._drop(conn)
                raise Retry(str(exc)) from exc
            except BaseException:
                self._channels.release()
                raise
            # from the exec request on, the command may run: a failure is not retried
            try:
                chan.fileno()  # readable when stdout or stderr data (or the close) arrives
                chan.settimeout(timeout)
                chan.exec_command(command)
                if stdin:
                    chan.sendall(stdin)  # the command reads it first (the agent does)
                chan.shutdown_write()
            except BaseException as exc:
                self._channels.release()
                with contextlib.suppress(Exception):
                    chan.close()
                if isinstance(exc, (OSError, EOFError, paramiko.SSHException)):
                    raise self._lost(conn, command, what, exc) from exc
                raise
            return conn, chan

        return self._retrying("run a command", opened)

    @contextlib.contextmanager
    def output(
        self,
        command: str,
        *,
        stdin: str | None = None,
        timeout: float | None = None,
        what: str | None = None,
    ) -> Iterator[ChannelOutput]:
        """Run `command` on one channel, its stdout handed over by `chunks()` as it arrives
        (`timeout`: seconds without any output). A link lost meanwhile is TransportError."""
        self._count()
        conn, chan = self._exec(command, (stdin or "").encode(), timeout, what)
        try:
            yield ChannelOutput(self, conn, chan, command, what, timeout)
        finally:
            with contextlib.suppress(Exception):
                chan.close()
            self._channels.release()

    def _lost(
        self, conn: Connection, command: str, what: str | None, exc: BaseException
    ) -> TransportError:
        """A channel's link failed mid-command: the error for it (the connection dropped if
        dead, so the next call reconnects)."""
        self._drop_if_dead(conn)
        doing = f"during {what}" if what else f"while running: {command[:200]}"
        return TransportError(
            f"connection to {self.target.label} failed {doing}: {conn.lost or describe(exc)}",
            hint="the command may or may not have run; run again to resume",
        )

    def _sftp_client(self, conn: Connection) -> paramiko.SFTPClient:
        """The connection's SFTP client (the caller holds self._sftp_lock)."""
        sftp = self._sftp
        if sftp is None or sftp.get_channel().closed or self._conn is not conn:
            try:
                sftp = conn.client.open_sftp()
            except Exception as exc:
                if not conn.is_connected:
                    self._drop(conn)
                raise Retry(f"cannot open SFTP: {describe(exc)}") from exc
            sftp.get_channel().settimeout(self.target.channel_timeout)
            self._sftp = sftp
        return sftp

    def _sftp_failed(
        self, exc: Exception, sftp: paramiko.SFTPClient, conn: Connection, what: str
    ) -> Retry | TransportError:
        """What to raise for an SFTP failure: Retry when the link broke (the session and, if
        dead, the connection are forgotten), else TransportError."""
        if not link_failure(exc, sftp):
            return TransportError(f"cannot {what} on {self.target.label}: {exc}")
        if self._sftp is sftp:
            self._sftp = None
        with contextlib.suppress(Exception):
            sftp.close()  # a live link would keep its channel (MaxSessions)
        self._drop_if_dead(conn)
        return Retry(describe(exc))

    def _transfer(self, what: str, body: Callable[[paramiko.SFTPClient], int]) -> int:
        """One SFTP transfer; a broken link is retried (transfers are all-or-nothing)."""

        def attempt(conn: Connection) -> int:
            with self._sftp_lock:
                sftp = self._sftp_client(conn)
                try:
                    return body(sftp)
                except Exception as exc:
                    raise self._sftp_failed(exc, sftp, conn, what) from exc

        return self._retrying(what, attempt)

    @contextlib.contextmanager
    def reading(self, remote: str) -> Iterator[SftpReader]:
        """The file opened for reading over SFTP (FileNotFoundError if missing). Opening is
        retried like a transfer; a failure once reading has begun is a TransportError (the
        caller has used part of the data). Holds the connection's SFTP session meanwhile."""
        self._count()
        what = f"read {remote}"
        with self._sftp_lock:

            def attempt(conn: Connection) -> _Opened:
                sftp = self._sftp_client(conn)
                try:
                    return sftp, conn, sftp.open(remote, "rb")
                except FileNotFoundError:
                    raise
                except Exception as exc:
                    raise self._sftp_failed(exc, sftp, conn, what) from exc

            sftp, conn, fh = self._retrying(what, attempt)

            def failed(exc: Exception) -> TransportError:
                why = self._sftp_failed(exc, sftp, conn, what)
                if isinstance(why, TransportError):
                    return why
                return TransportError(
                    f"connection to {self.target.label} lost while reading {remote}: "
                    f"{conn.lost or why}",
                    hint="run again to resume",
                )

            reader = SftpReader(fh, failed)
            try:
                yield reader
            finally:
                self._count("bytes_received", reader.received)
                if not reader.broken:
                    with contextlib.suppress(Exception):
                        fh.close()

    def put(self, local: Path, remote: str) -> None:
        """Upload to an absolute path (parents created); a reader never sees a half file."""
        self._count()
        try:
            size = local.stat().st_size
        except OSError as exc:
            raise TransportError(f"cannot read {local} to upload it: {exc}") from exc

        def upload(sftp: paramiko.SFTPClient) -> int:
            tmp = f"{remote}.part-{secrets.token_hex(4)}"  # unique: concurrent puts don't clash
            try:
                with local.open("rb") as fh:
                    try:
                        sftp.putfo(fh, tmp, file_size=size, confirm=True)
                    except FileNotFoundError:
                        makedirs(sftp, posixpath.dirname(remote))
                        fh.seek(0)
                        sftp.putfo(fh, tmp, file_size=size, confirm=True)
                sftp.posix_rename(tmp, remote)
            except Exception as exc:
                if not link_failure(exc, sftp):  # over a dead link it would only time out
                    try_remove(sftp, tmp)
                raise
            return size

        self._count("bytes_sent", self._transfer(f"upload {local} to {remote}", upload))

    def get(
        self, remote: str, local: Path, progress: Callable[[int], None] | None = None
    ) -> None:
        """Download to `local` (parents created), atomically on this side too.
        `progress(bytes so far)` is called as chunks arrive (proof the host answers)."""
        self._count()
        local.parent.mkdir(parents=True, exist_ok=True)
        callback = None if progress is None else (lambda done, _total: progress(done))

        def download(sftp: paramiko.SFTPClient) -> int:
            tmp = local.with_name(f"{local.name}.part-{secrets.token_hex(4)}")
            try:
                sftp.get(remote, str(tmp), callback=callback)
                size = tmp.stat().st_size
                os.replace(tmp, local)
            finally:
                tmp.unlink(missing_ok=True)
            return size

        self._count("bytes_received", self._transfer(f"fetch {remote}", download))

    def probe(self) -> HostFacts:
        """Home dir, CPU count and python3 of the host, in one round trip. `python` is the
        interpreter's real path (sys.executable), so that wrappers such as pyenv shims, which
        cost ~0.1 s per call, are skipped later."""
        script = (
            f'echo {_PROBE_MARK}; printf "%s\\n" "$HOME"; '
            "nproc 2>/dev/null || getconf _NPROCESSORS_ONLN; "
            'py=$(command -v python3) && "$py" -c '
            "'import sys; print(sys.executable); print(\"%d.%d\" % sys.version_info[:2])'"
        )
        res = self.run(script, check=False)
        lines = res.stdout.split(_PROBE_MARK + "\n")[-1].splitlines()  # skip rc-file chatter
        if len(lines) < 2 or not lines[1].strip().isdigit():
            raise TransportError(
                f"cannot probe {self.target.label}: unexpected output {res.stdout[-300:]!r} "
                f"(exit code {res.exit_code}) {res.stderr[-300:]}"
            )
        python, version = (lines[2:4] + ["", ""])[:2]
        return HostFacts(
            home=lines[0],
            cpus=int(lines[1]),
            python=python.strip() or None,
            python_version=version.strip() or None,
        )

    def close(self) -> None:
        """Close the connection (a later call opens a new one)."""
        with self._lock:
            if self._conn is not None:
                self._discard(self._conn)

    def __enter__(self) -> SshTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


STREAM_CHUNK = 1 << 15


class ChannelOutput:
    """An Output over an SSH channel. stderr is drained whenever the channel wakes, so a
    command that writes a lot of it never stalls stdout on the channel's shared window
    (kept: its last 64 KB)."""

    def __init__(
        self,
        transport: SshTransport,
        conn: Connection,
        chan: paramiko.Channel,
        command: str,
        what: str | None,
        timeout: float | None,
    ) -> None:
        self._t, self._conn, self._chan = transport, conn, chan
        self._command, self._what, self._timeout = command, what, timeout
        self._err = bytearray()

    def _drain_stderr(self) -> None:
        while self._chan.recv_stderr_ready():
            self._err += self._chan.recv_stderr(STREAM_CHUNK)
            del self._err[: -(1 << 16)]

    def chunks(self) -> Iterator[bytes]:
        chan = self._chan
        heard = time.monotonic()
        try:
            while True:
                if chan.recv_ready():
                    data = chan.recv(CHUNK)
                    self._drain_stderr()
                    if data:
                        heard = time.monotonic()
                        yield data
                        continue
                self._drain_stderr()
                # EOF and close come after all the data: read them first, the buffer then
                if (chan.eof_received or chan.closed) and not chan.recv_ready():
                    if chan.closed and not chan.status_event.is_set():
                        self._check_link()  # cut short by the link, or by a signal?
                    return
                if self._timeout is not None and time.monotonic() - heard > self._timeout:
                    raise TransportError(
                        f"command timed out after {self._timeout} s without output on "
                        f"{self._t.target.label}: {shown(self._command, self._what)}",
                        hint="the host may be overloaded or frozen",
                    )
                # readable on data from either stream, EOF or close; the 1 s cap only
                # bounds a missed wake-up (as in _pump)
                select.select([chan], [], [], 1.0)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._t._lost(self._conn, self._command, self._what, exc) from exc

    def _check_link(self) -> None:
        if not alive(self._conn, self._t.target.dead_after):
            self._t._drop(self._conn)
            raise TransportError(
                f"connection to {self._t.target.label} lost "
                + (f"during {self._what}" if self._what else "while running a command")
                + (f" ({self._conn.lost})" if self._conn.lost else ""),
                hint="the command may still be running there; run again to resume",
            )

    def finish(self) -> Result:
        chan = self._chan
        for _ in self.chunks():  # what the caller did not read
            pass
        try:
            chan.status_event.wait(self._timeout)
            self._drain_stderr()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._t._lost(self._conn, self._command, self._what, exc) from exc
        code = chan.exit_status
        if code == -1:
            self._check_link()
        return Result(
            self._command,
            code,
            "",
            self._err.decode("utf-8", "replace"),
            host=self._t.name,
            what=self._what or "",
        )


def _pump(
    chan: paramiko.Channel, out: Callable[[bytes], object], err: Callable[[bytes], object]
) -> int | None:
    """Hand a running command's output to out/err as it arrives, until it ends; its exit
    code, or None when the channel closed without one (the link broke, or a signal)."""
    while True:
        # chan.fileno() became readable on data from either stream, EOF or close; the
        # 1 s cap only bounds how long a missed wake-up could last
        select.select([chan], [], [], 1.0)
        while chan.recv_ready():
            out(chan.recv(STREAM_CHUNK))
        while chan.recv_stderr_ready():
            err(chan.recv_stderr(STREAM_CHUNK))
        if chan.closed:  # (exit_status_ready() is also true once closed, status or not)
            break
        # EOF comes just before the exit status: wait for it (or the close) without
        # spinning on the pipe, which stays readable after EOF
        if chan.eof_received and chan.status_event.wait(0.1):
            break
    while chan.recv_ready():  # what came with the close
        out(chan.recv(STREAM_CHUNK))
    while chan.recv_stderr_ready():
        err(chan.recv_stderr(STREAM_CHUNK))
    return None if chan.exit_status == -1 else chan.exit_status  # -1: paramiko's none


def probe(target: SshTarget) -> HostFacts:
    """Probe a host over a short-lived connection (see SshTransport.probe)."""
    with SshTransport(target) as transport:
        return transport.probe()
