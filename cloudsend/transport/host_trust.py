"""Whether to trust the key a host offers: the project's pins, then the user's OpenSSH files.

Verdicts, checked during the key exchange (before authentication, before any command):
- a key pinned in the project's file, or listed in one of the user's known_hosts files, that
  differs from the offered one (or the offered key marked @revoked): refused;
- the offered key pinned, or listed there: trusted (and pinned if it was not yet);
- known nowhere: policy "tofu" pins it and reports the first contact, "strict" refuses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import paramiko

from cloudsend.errors import TransportError
from cloudsend.transport.known_hosts import HostKeyChanged, KnownHosts, fingerprint
from cloudsend.transport.user_known_hosts import KnownKey, SshFiles, UserKeys

HostKeyPolicy = Literal["tofu", "strict"]
# paramiko names an RSA host key ssh-rsa whatever signature algorithm negotiated it
_KEX_NAMES = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")}

_KEY_FILES = {"ssh-ed25519": "ed25519", "ssh-rsa": "rsa"}  # ecdsa-sha2-*: ecdsa


class HostKeyUnknown(TransportError):
    """host_key_policy strict, and the host's key is in no known_hosts file."""


def _same(a: paramiko.PKey, b: paramiko.PKey) -> bool:
    return a.asbytes() == b.asbytes()


class HostTrust(paramiko.MissingHostKeyPolicy):
    """The client is given no host keys, so paramiko hands every offered key to this policy.
    `first_contact` is the key this connection pinned on first contact (None otherwise)."""

    def __init__(
        self,
        known: KnownHosts,
        *,
        label: str,
        address: str,
        port: int,
        user: str,
        ssh_files: SshFiles | None,
        policy: HostKeyPolicy = "tofu",
    ) -> None:
        self.known = known
        self.label = label
        self.address = address
        self.port = port
        self.policy = policy
        self.ssh_files = ssh_files
        self.first_contact: paramiko.PKey | None = None
        # read before connecting: the key types known for the host are asked for first
        self.user_keys = (
            ssh_files.lookup(address, port, user) if ssh_files is not None else UserKeys("", ())
        )

    def known_types(self, pin_name: str) -> list[str]:
        """Key types known for the host, pins first: paramiko negotiates those first, so a
        host known by its RSA key is not judged on the ed25519 key it would offer first."""
        keys = self.known.lookup(pin_name) + [k.key for k in self.user_keys.keys if not k.revoked]
        types: list[str] = []
        for key in keys:
            for name in _KEX_NAMES.get(key.get_name(), (key.get_name(),)):
                if name not in types:
                    types.append(name)
        return types

    def transport_factory(self, pin_name: str) -> Callable[..., paramiko.Transport]:
        """For SSHClient.connect(transport_factory=...): a Transport preferring known types."""
        preferred = self.known_types(pin_name)

        def make(sock: Any, **kwargs: Any) -> paramiko.Transport:
            transport = paramiko.Transport(sock, **kwargs)
            options = transport.get_security_options()
            first = [t for t in preferred if t in options.key_types]
            options.key_types = first + [t for t in options.key_types if t not in first]
            return transport

        return make

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        pinned = self.known.lookup(hostname)
        if pinned and not any(_same(k, key) for k in pinned):
            raise self.known.refusal(hostname, self.label, key)
        listed = self._check_user_files(key)
        if pinned:
            return
        if not listed and self.policy == "strict":
            raise self._unknown(key)
        before = self.known.pin(hostname, key)
        if before and not any(_same(k, key) for k in before):  # pinned meanwhile, elsewhere
            raise self.known.refusal(hostname, self.label, key)
        if not before and not listed:
            self.first_contact = key

    def _check_user_files(self, key: paramiko.PKey) -> KnownKey | None:
        """The user's line listing the offered key (None: the host is in none of the files);
        raises when they list the host with other keys only, or revoke this one."""
        keys = self.user_keys.keys
        for entry in keys:
            if entry.revoked and _same(entry.key, key):
                raise HostKeyChanged(
                    f"host key of {self.label} is marked @revoked in {entry.where}: it offered "
                    f"{fingerprint(key)}; refusing to connect",
                    hint="the host's key was revoked on purpose: ask its admin for the new one",
                )
        valid = [k for k in keys if not k.revoked]
        match = next((k for k in valid if _same(k.key, key)), None)
        if match is not None or not valid:
            return match
        same_type = [k for k in valid if k.key.get_name() == key.get_name()]
        other = (same_type or valid)[0]
        name = self.user_keys.name
        raise HostKeyChanged(
            f"host key of {self.label} does not match {other.where}: it offered "
            f"{fingerprint(key)} but that line has {fingerprint(other.key)} for {name}; "
            "refusing to connect (possible man-in-the-middle)",
            hint=(
                f"if the host was legitimately rebuilt, check the new fingerprint with its "
                f"admin, then remove the old key (ssh-keygen -R '{name}' -f {other.path}) "
                "and retry"
            ),
        )

    def _unknown(self, key: paramiko.PKey) -> HostKeyUnknown:
        where = [str(self.known.path), *(str(p) for p in self.user_keys.files)]
        port = "" if self.port == 22 else f"-p {self.port} "
        kind = _KEY_FILES.get(key.get_name(), "ecdsa")
        add_to = self.user_keys.files[0] if self.user_keys.files else "~/.ssh/known_hosts"
        return HostKeyUnknown(
            f"host key of {self.label} is not known (host_key_policy: strict): it offered "
            f"{fingerprint(key)}, found in none of {', '.join(where)}; refusing to connect",
            hint=(
                "check that fingerprint with the host's admin (on the host: ssh-keygen -lf "
                f"/etc/ssh/ssh_host_{kind}_key.pub), then add it: "
                f"ssh-keyscan {port}{self.address} >> {add_to}"
            ),
        )
