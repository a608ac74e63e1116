"""The run key: an ed25519 key made for one run, whose public half goes into each worker's
authorized_keys (restricted to the maestro's address with `from=` when that is known, tagged
with a comment naming the project and run) and is removed on `down`.

The edits are pure text functions (`with_key`, `without_key`); `install`/`remove` apply them
on a host over its transport in two round trips (read, then a write that refuses to clobber a
file changed in between), and only write when the text changes.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import secrets
import shlex
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cloudsend.errors import ProvisionError, TransportError
from cloudsend.transport.base import Transport

TAG_PREFIX = "cloudsend-run"
AUTHORIZED_KEYS = "~/.ssh/authorized_keys"
# what the maestro needs is exec and SFTP: nothing else is granted to the key
OPTIONS = ("no-agent-forwarding", "no-port-forwarding", "no-X11-forwarding", "no-pty")
_SAFE = re.compile(r"[A-Za-z0-9_.-]+")
_CHANGED = 75  # the write's exit code when the file changed since it was read
_MARK = "__cloudsend_authorized_keys__"


@dataclass(frozen=True)
class RunKey:
    """A run key on this machine: the private file (0600) and its authorized_keys entry."""

    private: Path
    public: str  # "ssh-ed25519 AAAA..." (no comment)
    tag: str  # the comment that marks its lines: cloudsend-run:<project>:<run>


def run_tag(project: str, run: str = "") -> str:
    """The comment of a run's authorized_keys lines; with no run, the prefix every run of
    the project shares (what `down` removes)."""
    for part in (project, run) if run else (project,):
        if not _SAFE.fullmatch(part):
            raise ValueError(f"not a safe tag part: {part!r}")
    return f"{TAG_PREFIX}:{project}:{run}"


def new_run_id() -> str:
    return secrets.token_hex(6)


def make_run_key(directory: Path, project: str, run: str) -> RunKey:
    """The run key in `directory` (made once; a second call loads it). The private file is
    written 0600 with O_EXCL before any byte of it exists, then renamed into place."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    tag = run_tag(project, run)
    private = directory / f"run-{project}-{run}"
    if not private.exists():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        data = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        tmp = private.with_name(f".{private.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, private)
    loaded = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    public = loaded.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return RunKey(private=private, public=public.decode(), tag=tag)


# -- pure decisions ------------------------------------------------------------------------


def from_option(sources: Sequence[str]) -> str | None:
    """`from="a,b"` for the addresses (IPs or CIDRs) the maestro connects from; None when
    none is known (then the key is not restricted by address)."""
    if not sources:
        return None
    for source in sources:
        try:
            ipaddress.ip_network(source, strict=False)
        except ValueError:
            raise ValueError(f"not an IP address or CIDR: {source!r}") from None
    return 'from="' + ",".join(sources) + '"'


def authorized_line(key: RunKey, sources: Sequence[str] = ()) -> str:
    """The authorized_keys line of the run key (no newline)."""
    options = [opt for opt in (from_option(sources),) if opt] + list(OPTIONS)
    return f"{','.join(options)} {key.public} {key.tag}"


def _tagged(line: str, tag: str) -> bool:
    """Is `line` one of ours: its last field is `tag` (or, for a tag ending with ':', starts
    with it: every run of a project)."""
    fields = line.split()
    if not fields or line.lstrip().startswith("#"):
        return False
    last = fields[-1]
    return last.startswith(tag) if tag.endswith(":") else last == tag


def with_key(text: str, line: str, tag: str) -> str:
    """authorized_keys text with `line` in it exactly once: lines with the same tag are
    replaced by it, every other line is kept byte for byte; `text` itself when it already
    holds just that line."""
    lines = text.splitlines(keepends=True)
    ours = [existing for existing in lines if _tagged(existing, tag)]
    if [existing.rstrip("\r\n") for existing in ours] == [line]:
        return text
    kept = [existing for existing in lines if not _tagged(existing, tag)]
    if kept and not kept[-1].endswith("\n"):
        kept[-1] += "\n"
    return "".join(kept) + line + "\n"


def without_key(text: str, tag: str) -> str:
    """authorized_keys text without the lines tagged `tag` (see _tagged); every other line
    kept byte for byte."""
    lines = text.splitlines(keepends=True)
    return "".join(line for line in lines if not _tagged(line, tag))


def maestro_sources(address: str) -> list[str]:
    """The addresses to put in `from=` for a maestro reached at `address`: itself when it is
    an IP, else what it resolves to here (empty: unknown, no restriction). A maestro behind
    NAT reaches the workers from another address: give that one."""
    try:
        return [str(ipaddress.ip_address(address))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(address, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return []
    return sorted({str(info[4][0]) for info in infos})


# -- applying them on a host ---------------------------------------------------------------


def _remote_path(path: str) -> str:
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    if not path.startswith("/"):
        raise ValueError(f"authorized_keys path must be absolute or ~/...: {path!r}")
    return shlex.quote(path)


def _read(transport: Transport, path: str) -> str | None:
    res = transport.run(
        f"f={_remote_path(path)}; printf '%s\\n' {_MARK}; "
        'if [ -e "$f" ]; then printf "1\\n"; cat -- "$f"; else printf "0\\n"; fi',
        what=f"read {path}",
    )
    body = res.stdout.split(_MARK + "\n")[-1]  # skip rc-file chatter
    exists, _, text = body.partition("\n")
    return text if exists == "1" else None


def _digest(text: str | None) -> str:
    return "none" if text is None else hashlib.sha256(text.encode()).hexdigest()


def _write(transport: Transport, path: str, old: str | None, new: str) -> bool:
    """Replace the file with `new` (tmp + rename, its mode kept, 0600 when new) unless it
    changed since it was read as `old`: False then."""
    script = (
        f"set -e; f={_remote_path(path)}; d=$(dirname -- \"$f\"); umask 077; "
        'mkdir -p -- "$d"; '
        'if [ -e "$f" ]; then cur=$(sha256sum < "$f" | cut -d" " -f1); else cur=none; fi; '
        f'[ "$cur" = {_digest(old)} ] || exit {_CHANGED}; '
        'tmp="$f.cloudsend-$$"; cat > "$tmp"; '
        'if [ -e "$f" ]; then chmod --reference="$f" "$tmp"; fi; mv -f -- "$tmp" "$f"'
    )
    res = transport.run(script, stdin=new, check=False, what=f"update {path}")
    if res.exit_code == _CHANGED:
        return False
    res.raise_for_status()
    return True


def _edit(transport: Transport, path: str, change: str, edit: Callable[[str], str]) -> bool:
    """Apply `edit(text) -> text` to the host's file; True when it changed the file."""
    for _ in range(5):
        old = _read(transport, path)
        new = edit(old or "")
        if new == (old or ""):
            return False
        if _write(transport, path, old, new):
            return True
    raise TransportError(
        f"{transport.name}: {path} kept changing while cloudsend tried to {change}",
        hint="run again",
    )


def install(
    transport: Transport, key: RunKey, sources: Sequence[str] = (), path: str = AUTHORIZED_KEYS
) -> bool:
    """Put the run key's line into the host's authorized_keys (once); True if it changed."""
    line = authorized_line(key, sources)
    try:
        return _edit(transport, path, "add the run key", lambda t: with_key(t, line, key.tag))
    except TransportError as exc:
        raise ProvisionError(
            f"cannot install the run key on {transport.name}: {exc.message}", hint=exc.hint
        ) from exc


def remove(transport: Transport, tag: str, path: str = AUTHORIZED_KEYS) -> bool:
    """Remove the lines tagged `tag` (a run, or `run_tag(project)` for all its runs) from
    the host's authorized_keys; True if there were any."""
    return _edit(transport, path, "remove the run key", lambda t: without_key(t, tag))
