"""One SSH connection to a host: target description, connect with host-key checks, liveness.

Used by cloudsend.transport.ssh, which adds threads, retries, commands and file transfers.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import posixpath
import socket
import stat
import threading
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any

import fabric
import paramiko

from cloudsend.errors import TransportError
from cloudsend.transport.host_trust import HostKeyPolicy, HostTrust
from cloudsend.transport.known_hosts import KnownHosts, fingerprint, host_key_name
from cloudsend.transport.user_known_hosts import SshFiles

# the keys paramiko tries when no key is given (look_for_keys), as OpenSSH names them
DEFAULT_KEYS = ("id_rsa", "id_dsa", "id_ecdsa", "id_ed25519")


@dataclass(frozen=True)
class SshTarget:
    """Where and how to reach one host. `known_hosts` is the project's pinning file;
    `user_known_hosts` also checks the host against the user's OpenSSH known_hosts files
    (found from the ssh config under `home`, default $HOME); `host_key_policy` strict refuses
    a host known nowhere instead of pinning it."""

    name: str
    address: str
    _: KW_ONLY
    known_hosts: Path
    port: int = 22
    user: str | None = None  # None: the current local user
    key: Path | None = None  # None: paramiko's default keys and the ssh agent
    connect_timeout: float = 5
    banner_timeout: float = 5
    auth_timeout: float = 10
    channel_timeout: float = 10
    keepalive: float = 2
    max_channels: int = 8  # keep below sshd's MaxSessions (stock 10; SFTP takes one more)
    host_key_policy: HostKeyPolicy = "tofu"
    user_known_hosts: bool = False
    home: Path | None = None  # the local user's home (its .ssh/); None: $HOME

    def __post_init__(self) -> None:
        if self.user is None:
            object.__setattr__(self, "user", getpass.getuser())
        if self.max_channels < 1:
            raise ValueError("max_channels must be >= 1")

    @property
    def label(self) -> str:
        return f"{self.name} ({self.user}@{self.address}:{self.port})"

    @property
    def dead_after(self) -> float:
        """No answer to a keepalive for this long means the connection is dead."""
        return max(3.0 * self.keepalive, 3.0)


class Retry(Exception):
    """Nothing happened on the host yet, so the operation may simply be tried again."""


class NotStarted(Exception):
    """Raised inside Fabric's runner before the command was sent."""


class Connection(fabric.Connection):
    # class attributes: invoke's DataProxy turns unknown instance attributes into config keys
    armed = False
    lost = ""  # why we closed it, when we did (shown in the errors of calls it broke)
    first_contact = ""  # the host key this connection pinned on first contact, if it did

    def open(self) -> Any:
        # Fabric reopens a dropped connection implicitly on every run(); that would race
        # between threads and skip our setup, so only connect() may connect
        if self.armed and not self.is_connected:
            raise NotStarted(self.lost or "connection lost")
        return super().open()

    def create_session(self) -> paramiko.Channel:
        try:
            return super().create_session()
        except Exception as exc:  # channel refused (MaxSessions), transport gone...
            raise NotStarted(self.lost or f"cannot open a channel: {describe(exc)}") from exc

    def shut(self) -> None:
        """Close at once, waking every thread blocked on one of its channels."""
        transport = self.client.get_transport()
        if transport is not None:
            transport.close()
        self.client.close()


def connect(target: SshTarget, known: KnownHosts) -> Connection:
    """Open and authenticate a connection; the host key is checked before authentication.
    Raises Retry for failures worth another try, TransportError for final ones."""
    t = target
    home = t.home or Path.home()
    check_private_keys([t.key] if t.key is not None else [home / ".ssh" / n for n in DEFAULT_KEYS])
    name = host_key_name(t.address, t.port)
    assert t.user is not None  # set by SshTarget
    trust = HostTrust(
        known,
        label=t.label,
        address=t.address,
        port=t.port,
        user=t.user,
        ssh_files=SshFiles(home) if t.user_known_hosts else None,
        policy=t.host_key_policy,
    )
    kwargs: dict[str, Any] = {
        "timeout": t.connect_timeout,  # Fabric's own connect_timeout is cast to int
        "banner_timeout": t.banner_timeout,
        "auth_timeout": t.auth_timeout,
        "channel_timeout": t.channel_timeout,  # paramiko's default is an hour
        "transport_factory": trust.transport_factory(name),
    }
    if t.key is not None:  # only this key: an agent offering many keys hits MaxAuthTries
        kwargs.update(key_filename=[str(t.key)], look_for_keys=False, allow_agent=False)
    config = fabric.Config(ssh_config=paramiko.SSHConfig(), lazy=True)  # ignore ~/.ssh/config
    conn = Connection(t.address, user=t.user, port=t.port, config=config, connect_kwargs=kwargs)
    # no host keys loaded into the client: paramiko asks `trust` about every key offered
    conn.client.set_missing_host_key_policy(trust)
    try:
        conn.open()
    except BaseException as exc:
        conn.shut()  # paramiko leaves the transport thread running after a failed connect
        if isinstance(exc, paramiko.AuthenticationException):
            raise TransportError(
                f"SSH authentication failed on {t.label}: {exc}",
                hint=f"check that the public key of {t.key or 'your default key'} is in "
                f"~{t.user}/.ssh/authorized_keys on that host",
            ) from exc
        if isinstance(exc, socket.gaierror):
            raise TransportError(f"cannot resolve {t.address!r} (host {t.name}): {exc}") from exc
        if isinstance(exc, (EOFError, paramiko.SSHException, OSError)):
            raise Retry(f"cannot connect: {describe(exc)}") from exc
        raise  # TransportError from the host-key check (HostTrust), KeyboardInterrupt...
    conn.armed = True
    if trust.first_contact is not None:
        conn.first_contact = fingerprint(trust.first_contact)
    transport = conn.client.get_transport()
    assert transport is not None
    # keepalive + TCP_USER_TIMEOUT: unacknowledged data (dropped packets) fails the socket
    # within dead_after; a frozen peer's kernel still ACKs, which alive() below catches
    transport.set_keepalive(max(1, int(t.keepalive)))
    sock = transport.sock
    if hasattr(socket, "TCP_USER_TIMEOUT") and isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(t.dead_after * 1000))
    return conn


def check_private_keys(paths: list[Path]) -> None:
    """Refuse a private key file that group or others may read, as OpenSSH does."""
    for path in paths:
        try:
            mode = path.expanduser().stat().st_mode
        except OSError:
            continue  # missing: paramiko skips a default key, and names a given one
        if stat.S_ISREG(mode) and mode & 0o077:
            raise TransportError(
                f"UNPROTECTED PRIVATE KEY FILE: {path} is accessible by others "
                f"(mode {stat.S_IMODE(mode):04o}); refusing to use it, as ssh does",
                hint=f"chmod 600 {path}",
            )


def alive(conn: Connection, wait: float) -> bool:
    """A keepalive round trip answered within `wait` seconds (a frozen host never answers;
    paramiko's own keepalive asks for no answer, so it cannot tell)."""
    transport = conn.client.get_transport()
    if transport is None or not transport.is_active():
        return False
    answered = threading.Event()

    def ping() -> None:
        # OpenSSH answers unknown global requests with a failure: still an answer; an
        # exception means none
        with contextlib.suppress(Exception):
            transport.global_request("keepalive@openssh.com", wait=True)
            answered.set()

    threading.Thread(target=ping, daemon=True, name="cloudsend-ssh-ping").start()
    return answered.wait(wait) and transport.is_active()


def describe(exc: BaseException) -> str:
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return "connection refused (nothing listening?)"
    if isinstance(exc, socket.timeout):
        return f"timed out ({exc or 'no answer'})"
    if isinstance(exc, EOFError):
        return "connection closed by the host"
    if str(exc) in ("No existing session", "Error reading SSH protocol banner"):
        # paramiko's words when TCP connects but no SSH banner follows (or sshd's
        # MaxStartups dropped us)
        return f"no SSH banner from the host (frozen, overloaded or not sshd?): {exc}"
    return str(exc) or type(exc).__name__


def link_failure(exc: BaseException, sftp: paramiko.SFTPClient) -> bool:
    """The SSH link failed (EOF, protocol error, timeout, closed), not the file operation."""
    if isinstance(exc, (EOFError, paramiko.SSHException, socket.timeout)):
        return True
    return isinstance(exc, OSError) and sftp.get_channel().closed


def makedirs(sftp: paramiko.SFTPClient, path: str) -> None:
    """mkdir -p over SFTP (only called when a put found its parent missing)."""
    missing = []
    while path not in ("", "/"):
        try:
            sftp.stat(path)
            break
        except FileNotFoundError:
            missing.append(path)
            path = posixpath.dirname(path)
    for directory in reversed(missing):
        try:
            sftp.mkdir(directory)
        except OSError as exc:  # made meanwhile by a concurrent put: fine if it is there now
            if exc.errno not in (None, errno.EEXIST):
                raise
            sftp.stat(directory)


def try_remove(sftp: paramiko.SFTPClient, path: str) -> None:
    with contextlib.suppress(Exception):  # best effort cleanup of a temp file
        sftp.remove(path)
