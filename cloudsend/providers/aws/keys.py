"""One ed25519 SSH key pair per stack, kept outside the project tree.

`stack_key(project, stack)` generates the key the first time and returns the same one
afterwards, so every teammate process and every `up` of that stack installs the same public key
(an EC2 key pair cannot be changed in place; a new key would replace it).

Layout: `~/.cloudsend/keys/` (mode 0700) holds `<project>--<stack>` (private key, OpenSSH
format, mode 0600) and `<project>--<stack>.pub`. The private key is written to a temporary file
created with O_CREAT|O_EXCL and mode 0600 from the start (never readable by others, not even
for an instant), then published with `os.link`, which fails if another process published
first: two concurrent first runs end up with the one key that won, never a half-written file.
The private key's content is never printed or logged, only its path.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloudsend.errors import ProvisionError

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class KeyPair:
    private_path: Path
    public_openssh: str  # "ssh-ed25519 AAAA... cloudsend:<project>/<stack>"


def default_keys_dir() -> Path:
    return Path.home() / ".cloudsend" / "keys"


def stack_key(project: str, stack: str, keys_dir: Path | None = None) -> KeyPair:
    """The stack's key pair: created once (0600), reused afterwards."""
    directory = keys_dir if keys_dir is not None else default_keys_dir()
    _private_dir(directory)
    stem = f"{_SAFE.sub('-', project)}--{_SAFE.sub('-', stack)}"
    path = directory / stem
    comment = f"cloudsend:{project}/{stack}"
    if not path.exists():
        _create(path)
    key = _load(path)
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    public = f"{public} {comment}"
    pub_path = path.with_name(stem + ".pub")
    # The .pub file is a convenience for `ssh -i`; the truth is derived from the private key.
    if not pub_path.exists() or pub_path.read_text().strip() != public:
        pub_path.write_text(public + "\n")
    return KeyPair(private_path=path, public_openssh=public)


def bundled_key(path: Path) -> KeyPair:
    """A key the laptop sent (the run key in a maestro's bundle): checked like the stack key
    (0600, ed25519), never created here; a missing one names who sends it."""
    if not path.is_file():
        raise ProvisionError(
            f"the run key {path} is missing on the maestro",
            hint="`cloudsend run CONFIG` on the laptop sends it with the run's bundle",
        )
    public = (
        _load(path)
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return KeyPair(private_path=path, public_openssh=public)


def private_openssh(pair: KeyPair) -> str:
    """The private key's text (for the stack's secret output only; never printed)."""
    return pair.private_path.read_text()


def adopt_key(
    project: str, stack: str, private_key: str, keys_dir: Path | None = None
) -> KeyPair:
    """Make `private_key` (the stack's key, read from its secret output) this machine's key
    for the stack: a teammate's `up` then installs the same public key as the first user's.
    A different local key for the stack is kept beside it as `<name>.replaced-<n>`."""
    directory = keys_dir if keys_dir is not None else default_keys_dir()
    _private_dir(directory)
    stem = f"{_SAFE.sub('-', project)}--{_SAFE.sub('-', stack)}"
    path = directory / stem
    text = private_key if private_key.endswith("\n") else private_key + "\n"
    if not path.exists() or path.read_text() != text:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            _load(tmp)  # refuse something that is not an ed25519 key before it replaces one
            if path.exists():
                n = 1
                while path.with_name(f"{stem}.replaced-{n}").exists():
                    n += 1
                os.link(path, path.with_name(f"{stem}.replaced-{n}"))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return stack_key(project, stack, keys_dir=directory)


def _private_dir(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkdir's mode is filtered by the umask and ignored for an existing dir: enforce it.
    if stat.S_IMODE(directory.stat().st_mode) != 0o700:
        directory.chmod(0o700)


def _create(path: Path) -> None:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,  # what ssh and paramiko read for ed25519
        serialization.NoEncryption(),
    )
    # Unique per process and thread: concurrent first calls each write their own candidate.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):  # another process won: use its key
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load(path: Path) -> Ed25519PrivateKey:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        # ssh refuses group/world-readable keys; tighten rather than fail later at connect.
        path.chmod(0o600)
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ProvisionError(
            f"cannot read the stack key {path}: {type(exc).__name__}",
            hint="move the file away; cloudsend then creates a new key for this stack",
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ProvisionError(
            f"the stack key {path} is not an ed25519 key",
            hint="move the file away; cloudsend then creates a new key for this stack",
        )
    return key
