"""The user's own OpenSSH known_hosts files, consulted before a host is trusted on first contact.

Which files: those that ~/.ssh/config (then /etc/ssh/ssh_config) gives for the host with
UserKnownHostsFile and GlobalKnownHostsFile, else OpenSSH's defaults. The ssh config is parsed
by paramiko.SSHConfig, both files into one object as Fabric does, so the first value obtained
wins as in OpenSSH. known_hosts lines are parsed here rather than by paramiko's HostKeys, so a
refusal can name the file and line, and patterns (`*.lan`, `!bad`), `@revoked` lines and hashed
names (`|1|...`) mean what they mean to OpenSSH.
"""

from __future__ import annotations

import base64
import getpass
import glob
import io
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
from paramiko.hostkeys import HostKeys

from cloudsend.errors import TransportError

DEFAULT_USER_FILES = "~/.ssh/known_hosts ~/.ssh/known_hosts2"
DEFAULT_GLOBAL_FILES = "{etc}/ssh_known_hosts {etc}/ssh_known_hosts2"
_INCLUDE = re.compile(r"^\s*include\s+(.+)$", re.IGNORECASE)


@dataclass(frozen=True)
class KnownKey:
    """One key line of a known_hosts file that names the host."""

    path: Path
    line: int
    key: paramiko.PKey
    revoked: bool = False

    @property
    def where(self) -> str:
        return f"{self.path} line {self.line}"


@dataclass(frozen=True)
class UserKeys:
    """What the user's files say about one host: the name looked up, the files read, the
    lines that name it."""

    name: str
    files: tuple[Path, ...]
    keys: tuple[KnownKey, ...] = field(default=())


@dataclass(frozen=True)
class SshFiles:
    """Where OpenSSH's client files live: `home` (its .ssh/) and `etc` (/etc/ssh)."""

    home: Path
    etc: Path = Path("/etc/ssh")

    @property
    def user_config(self) -> Path:
        return self.home / ".ssh" / "config"

    def _config(self) -> paramiko.SSHConfig:
        config = paramiko.SSHConfig()
        sources = ((self.user_config, self.home / ".ssh"), (self.etc / "ssh_config", self.etc))
        for path, base in sources:
            try:
                text = _inline_includes(path, base, self.home, depth=0)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise TransportError(
                    f"cannot read your ssh config {path}: {exc}",
                    hint="make it readable (cloudsend reads it for UserKnownHostsFile and "
                    "GlobalKnownHostsFile)",
                ) from exc
            try:
                config.parse(io.StringIO(text))
            except Exception as exc:  # paramiko's ConfigParseError and friends
                raise TransportError(
                    f"cannot parse your ssh config {path}: {exc}",
                    hint="fix that line (cloudsend reads the file for UserKnownHostsFile and "
                    "GlobalKnownHostsFile)",
                ) from exc
        return config

    def lookup(self, address: str, port: int, user: str) -> UserKeys:
        """The lines of the user's and the system's known_hosts files that name the host
        reached at address:port (as `[address]:port` when the port is not 22)."""
        try:
            options = self._config().lookup(address)
        except Exception as exc:  # a Match exec that fails, a bad token...
            if isinstance(exc, TransportError):
                raise
            raise TransportError(
                f"cannot read your ssh config for host {address}: {exc}",
                hint=f"check the Host/Match blocks of {self.user_config} that apply to it",
            ) from exc
        alias = options.get("hostkeyalias")
        name = alias if alias else (address if port == 22 else f"[{address}]:{port}")
        tokens = {
            "%%": "%",
            "%d": str(self.home),
            "%h": address,
            "%n": address,
            "%k": alias or address,
            "%p": str(port),
            "%r": user,
            "%u": getpass.getuser(),
            "%i": str(os.getuid()),
        }
        files: list[Path] = []
        for option, default in (
            ("userknownhostsfile", DEFAULT_USER_FILES),
            ("globalknownhostsfile", DEFAULT_GLOBAL_FILES.format(etc=self.etc)),
        ):
            files += self._paths(options.get(option) or default, tokens)
        keys = [k for path in files for k in _keys_for(path, name)]
        return UserKeys(name, tuple(files), tuple(keys))

    def _paths(self, value: str, tokens: dict[str, str]) -> list[Path]:
        try:
            words = shlex.split(value)
        except ValueError:
            words = value.split()
        if [w.lower() for w in words] == ["none"]:
            return []
        paths = []
        for word in words:
            word = re.sub(r"%.", lambda m: tokens.get(m.group(0), m.group(0)), word)
            word = re.sub(r"\$\{(\w+)\}", lambda m: os.environ.get(m.group(1), ""), word)
            if word == "~" or word.startswith("~/"):
                word = str(self.home) + word[1:]
            paths.append(Path(word) if os.path.isabs(word) else self.home / word)
        return paths


def _inline_includes(path: Path, base: Path, home: Path, depth: int) -> str:
    """The config text with its `Include` lines replaced by the files they name (paramiko
    does not follow Include; Debian's /etc/ssh/ssh_config uses it)."""
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        match = _INCLUDE.match(line)
        if match is None or depth >= 8:
            lines.append(line)
            continue
        for pattern in shlex.split(match.group(1)):
            pattern = str(home) + pattern[1:] if pattern.startswith("~/") else pattern
            full = pattern if os.path.isabs(pattern) else str(base / pattern)
            for included in sorted(glob.glob(full)):
                try:
                    lines.append(_inline_includes(Path(included), base, home, depth + 1))
                except (FileNotFoundError, IsADirectoryError):
                    continue
    return "\n".join(lines)


def _keys_for(path: Path, name: str) -> list[KnownKey]:
    try:
        text = path.read_text(errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise TransportError(
            f"cannot read the known hosts file {path}: {exc}",
            hint="make it readable, or name another one with UserKnownHostsFile in ~/.ssh/config",
        ) from exc
    found = []
    for number, raw in enumerate(text.splitlines(), 1):
        fields = raw.split()
        if not fields or fields[0].startswith("#"):
            continue
        marker = ""
        if fields[0].startswith("@"):
            marker, fields = fields[0].lower(), fields[1:]
            if marker != "@revoked":  # @cert-authority: host certificates are not used here
                continue
        if len(fields) < 3 or not _names_host(fields[0], name):
            continue
        try:
            key = paramiko.PKey.from_type_string(fields[1], base64.b64decode(fields[2]))
        except Exception:  # a key type paramiko lacks, a damaged line: OpenSSH skips those too
            continue
        found.append(KnownKey(path, number, key, revoked=marker == "@revoked"))
    return found


def _names_host(patterns: str, name: str) -> bool:
    """OpenSSH's match_hostname: a hashed name, or comma-separated patterns with * and ?,
    any `!pattern` that matches vetoing the line."""
    if patterns.startswith("|1|"):
        try:
            return HostKeys.hash_host(name, patterns) == patterns
        except Exception:  # a damaged salt
            return False
    name = name.lower()
    matched = False
    for pattern in patterns.lower().split(","):
        negated = pattern.startswith("!")
        glob_ = pattern[1:] if negated else pattern
        regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob_)
        if re.fullmatch(regex, name):
            if negated:
                return False
            matched = True
    return matched
