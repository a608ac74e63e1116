"""Host-key pinning: the project's own known_hosts file, the store of trusted host keys.

Fabric installs paramiko's AutoAddPolicy and never reads a known_hosts file, so a host whose
key changed would be accepted silently. Here the key a host is trusted with (see host_trust)
is recorded in the project's file (OpenSSH format, mode 0600); any later connection presenting
another key is refused during the key exchange, before authentication and before any command.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import paramiko
from paramiko.hostkeys import HostKeyEntry, HostKeys

from cloudsend.errors import TransportError

# one lock per file for threads of this process; flock on a side file for other processes
_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


def host_key_name(address: str, port: int) -> str:
    """The name a host is recorded under, as OpenSSH writes it (`ssh-keygen -R` understands)."""
    return address if port == 22 else f"[{address}]:{port}"


def fingerprint(key: paramiko.PKey) -> str:
    """As OpenSSH shows it: `ssh-ed25519 SHA256:<base64>` (paramiko's .fingerprint is that)."""
    return f"{key.get_name()} {key.fingerprint}"


class HostKeyChanged(TransportError):
    """The host presented a key other than the pinned one (rebuilt host, or an impostor)."""


class KnownHosts:
    """The project's pinning file. Reads are fresh each time: another process may pin too."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).expanduser().absolute()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        key = str(self.path)
        with _THREAD_LOCKS_GUARD:
            lock = _THREAD_LOCKS.setdefault(key, threading.Lock())
        with lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing releases the flock

    def _load(self) -> HostKeys:
        keys = HostKeys()
        if self.path.exists():
            try:
                keys.load(str(self.path))
            except (OSError, paramiko.SSHException) as exc:
                raise TransportError(
                    f"cannot read the pinned host keys in {self.path}: {exc}",
                    hint="fix or delete the malformed line (keys are re-pinned on next contact)",
                ) from exc
        return keys

    def lookup(self, name: str) -> list[paramiko.PKey]:
        """Keys pinned for `name` (empty: never contacted)."""
        found = self._load().lookup(name)
        return list(found.values()) if found is not None else []

    def pin(self, name: str, key: paramiko.PKey) -> list[paramiko.PKey]:
        """Record `key` for `name` unless the host is already pinned; returns what was pinned
        before (empty if this call pinned it). Atomic against other threads and processes."""
        with self._locked():
            before = self.lookup(name)
            if before:
                return before
            line = HostKeyEntry([name], key).to_line()
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.fchmod(fd, 0o600)  # it may predate us with looser bits
                os.write(fd, line.encode())
            finally:
                os.close(fd)
            return []

    def refusal(self, name: str, label: str, offered: paramiko.PKey) -> HostKeyChanged:
        """The error for a host whose key differs from the pinned one."""
        pinned = ", ".join(fingerprint(k) for k in self.lookup(name)) or "?"
        return HostKeyChanged(
            f"host key of {label} changed: it offered {fingerprint(offered)} but {self.path} "
            f"pins {pinned}; refusing to connect (possible man-in-the-middle)",
            hint=(
                f"if the host was legitimately rebuilt, remove its line '{name} ...' from "
                f"{self.path} (or run: ssh-keygen -R '{name}' -f {self.path}) and retry"
            ),
        )
