"""Real OpenSSH sshd daemons on 127.0.0.1 as fake hosts, with real faults.

Each host has its own port, ed25519 host key, authorized_keys, pid file and log; all share this
machine's filesystem, so each gets a distinct `root` to use as cloudsend's root there. Faults are
real signals: `kill()` (host down), `freeze()`/`thaw()` (SIGSTOP/SIGCONT), `wipe()` (disk gone),
`regenerate_host_key()` (host rebuilt). Registered from tests/conftest.py as a pytest plugin.

Fixtures: `sshd_client_key` (session), `sshd_factory` -> make(n, *, user="root",
stock_limits=False) -> list[SshdHost], `sshd_host` (one root host).

Two suites may run at once on one machine: ports are picked free (and a port another suite's
sshd took first is detected from our sshd's own log), every folder is a fresh temp dir, and
test users are shared with a holder count (ensure_user / release_users): the harness removes
a user or sudoers entry it created when the last suite holding it ends, and nothing else.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import pytest

if TYPE_CHECKING:
    from cloudsend.transport.ssh import SshTarget

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
SUDOERS_DIR = Path("/etc/sudoers.d")
# what the harness changed for its test users, and which test processes use them (kept across
# reboots, like the users themselves)
USERS_STATE = Path("/var/lib/cloudsend-test-users")
_HELD: set[str] = set()  # users this process holds


def _unavailable(reason: str) -> None:
    """Skip on a dev machine without the tools; in CI a missing tool is a failure."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"sshd harness unavailable in CI: {reason}")
    pytest.skip(reason)


def _require_tools(user: str) -> None:
    if not (os.path.exists(SSHD) and os.path.exists(SSH_KEYGEN)):
        _unavailable("OpenSSH sshd/ssh-keygen not installed (apt-get install openssh-server)")
    if os.geteuid() != 0:
        _unavailable("the sshd harness runs sshd daemons and test users, which needs root")
    if user != "root" and shutil.which("sudo") is None:
        _unavailable("sudo not installed (apt-get install sudo)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    # /proc/<pid>/task/<tid>/children avoids scanning all of /proc (slow on a busy machine)
    found: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                found += [int(c) for c in fh.read().split()]
    except FileNotFoundError:
        pass  # the process is gone
    except OSError:  # kernel without CONFIG_PROC_CHILDREN
        return [
            int(c)
            for c in subprocess.run(
                ["pgrep", "-P", str(pid)], capture_output=True, text=True
            ).stdout.split()
        ]
    return found


def _stop_tree(pid: int) -> list[int]:
    """SIGSTOP pid and its descendants, top-down: a stopped process forks no new child, so
    nothing escapes. Returns the whole tree."""
    tree: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(ProcessLookupError):
            os.kill(current, signal.SIGSTOP)
        tree.append(current)
        todo += _children(current)
    return tree


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _require_user_tools() -> None:
    """Making a login user with passwordless sudo needs root, useradd and sudo (with its
    /etc/sudoers.d): without them the tests that need such a user are skipped, saying why."""
    if os.geteuid() != 0:
        _unavailable("a test login user with sudo needs root (run the tests as root)")
    if shutil.which("useradd") is None or shutil.which("usermod") is None:
        _unavailable("useradd/usermod not installed (apt-get install passwd)")
    if shutil.which("sudo") is None or shutil.which("visudo") is None:
        _unavailable("sudo not installed (apt-get install sudo)")
    if not SUDOERS_DIR.is_dir():
        _unavailable(f"{SUDOERS_DIR} is missing (sudo not installed: apt-get install sudo)")


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2 :].split()[19].decode()


def _holder(pid: int) -> str | None:
    """A process, named so that a later process reusing its pid is another holder."""
    started = _start_time(pid)
    return None if started is None else f"{pid}:{started}"


def _holder_alive(holder: str) -> bool:
    pid, _, _ = holder.partition(":")
    return pid.isdigit() and _holder(int(pid)) == holder


@contextlib.contextmanager
def _users_lock() -> Iterator[None]:
    """One lock for every test process on the machine (not under $TMPDIR: two suites may
    run with different temp dirs)."""
    USERS_STATE.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(USERS_STATE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _shadow_password(name: str) -> str | None:
    with contextlib.suppress(OSError), open("/etc/shadow") as fh:
        for line in fh:
            fields = line.rstrip("\n").split(":")
            if fields[0] == name and len(fields) > 1:
                return fields[1]
    return None


class _UserRecord(TypedDict):
    """USERS_STATE/<name>.json: what the harness changed for a test user, and who holds it."""

    created_user: bool  # the harness ran useradd (userdel -r undoes it)
    sudoers: str | None  # the sudoers entry the harness wrote
    password: str | None  # the locked password field it replaced with "*" on a user it found
    holders: list[str]  # test processes using the user ("pid:start time")


def _read_record(name: str) -> _UserRecord:
    path = USERS_STATE / f"{name}.json"
    if path.exists():
        record: _UserRecord = json.loads(path.read_text())
        return record
    return {"created_user": False, "sudoers": None, "password": None, "holders": []}


def _write_record(name: str, record: _UserRecord) -> None:
    path = USERS_STATE / f"{name}.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)


def sudoers_file(name: str) -> Path:
    """The sudoers entry the harness writes for a test user (sudo skips names with dots)."""
    return SUDOERS_DIR / f"cloudsend-test-{name}"


def ensure_user(name: str) -> pwd.struct_passwd:
    """A login user with passwordless sudo, as cloud images have (skips the test when this
    machine cannot have one). What the harness changes for it (the user, its unlocked
    password, its sudoers entry) is recorded in USERS_STATE with this process as a holder,
    and undone by release_users() when the last holder is done: a user or entry that was
    there before is left as it was, and two suites sharing a user do not pull it from under
    each other (a holder that died without releasing is dropped by the next one)."""
    _require_user_tools()
    me = _holder(os.getpid())
    assert me is not None
    with _users_lock():
        record = _read_record(name)
        record["holders"] = [h for h in record["holders"] if _holder_alive(h)]
        if me not in record["holders"]:
            record["holders"].append(me)
        _write_record(name, record)  # before changing anything: a crash leaves a trail
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "-m", "-s", "/bin/bash", name], check=True)
            record["created_user"], record["password"] = True, None
            _write_record(name, record)
        # a useradd user is "locked" ("!" password); under UsePAM no sshd refuses it
        password = _shadow_password(name) or ""
        if password.startswith("!"):
            if not record["created_user"] and record["password"] is None:
                record["password"] = password  # restored on release
                _write_record(name, record)
            subprocess.run(["usermod", "-p", "*", name], check=True)
        entry = sudoers_file(name)
        line = f"{name} ALL=(ALL) NOPASSWD:ALL\n"
        if not entry.exists():
            tmp = SUDOERS_DIR / f".cloudsend-test-{name}.tmp"
            tmp.write_text(line)
            tmp.chmod(0o440)
            subprocess.run(["visudo", "-cqf", str(tmp)], check=True)
            os.replace(tmp, entry)
            record["sudoers"] = str(entry)
            _write_record(name, record)
    _HELD.add(name)
    return pwd.getpwnam(name)


def release_users() -> list[str]:
    """This process is done with the users it asked for: the last holder of a user undoes
    what the harness changed for it. Returns warnings (what could not be undone)."""
    warnings: list[str] = []
    me = _holder(os.getpid())
    for name in sorted(_HELD):
        with _users_lock():
            record = _read_record(name)
            record["holders"] = [h for h in record["holders"] if h != me and _holder_alive(h)]
            if record["holders"]:
                _write_record(name, record)
                continue
            if record["sudoers"]:
                Path(record["sudoers"]).unlink(missing_ok=True)
                record["sudoers"] = None
            if record["created_user"]:
                done = subprocess.run(["userdel", "-r", name], capture_output=True, text=True)
                if done.returncode not in (0, 6):  # 6: no such user (removed already)
                    # kept in the record: the next suite's release tries again
                    warnings.append(f"test user {name!r} not removed: {done.stderr.strip()}")
                    _write_record(name, record)
                    continue
            elif record["password"] is not None:
                subprocess.run(["usermod", "-p", record["password"], name], check=False)
            (USERS_STATE / f"{name}.json").unlink(missing_ok=True)
    _HELD.clear()
    return warnings


def pytest_sessionfinish(session: pytest.Session) -> None:
    for warning in release_users():
        sys.stderr.write(f"\nsshd harness: {warning}\n")


class SshdHost:
    """One fake host: an sshd on 127.0.0.1:<port> plus a root dir for cloudsend."""

    address = "127.0.0.1"

    def __init__(
        self, name: str, base: Path, key: Path, *, user: str = "root", stock_limits: bool = False
    ) -> None:
        self.name = name
        self.user = user
        self.key = key  # the client's private key
        self.stock_limits = stock_limits
        self.dir = base / name
        self.dir.mkdir(mode=0o755)
        self.config_path = self.dir / "sshd_config"
        self.host_key = self.dir / "host_ed25519"
        self.log = self.dir / "sshd.log"
        self.pid_file = self.dir / "sshd.pid"
        self.authorized_keys = self.dir / "authorized_keys"
        # root's parent belongs to the login user so a wiped root can be recreated by it
        self._data = self.dir / "data"
        self._data.mkdir(mode=0o755)
        self.root = self._data / "root"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._pw = pwd.getpwnam(user)
        self.authorized_keys.write_text(Path(str(key) + ".pub").read_text())
        self.authorized_keys.chmod(0o644)  # sshd reads it as the login user
        os.chown(self._data, self._pw.pw_uid, self._pw.pw_gid)
        self._make_root()
        self.regenerate_host_key(restart=False)

    def __repr__(self) -> str:
        return f"SshdHost({self.name!r}, {self.user}@{self.address}:{self.port})"

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _write_config(self) -> None:
        lines = [
            f"Port {self.port}",
            f"ListenAddress {self.address}",
            f"HostKey {self.host_key}",
            f"PidFile {self.pid_file}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "PrintMotd no",
            "PrintLastLog no",
            "UseDNS no",
            "LogLevel INFO",
            "Subsystem sftp internal-sftp",
        ]
        if not self.stock_limits:
            # the stock 10:30:100 / 10 limits stay on stock_limits hosts so they stay tested
            lines += ["MaxStartups 200", "MaxSessions 100"]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> None:
        """Start sshd (same port and host key as before, if it ran before)."""
        if self.pid is not None:
            return
        os.makedirs("/run/sshd", exist_ok=True)  # privilege separation dir
        for _ in range(5):
            if not self.port:
                self.port = _free_port()
                fresh_port = True
            else:
                fresh_port = False
            self._write_config()
            log_start = self.log.stat().st_size if self.log.exists() else 0
            # -D: stay in the foreground so we own the listener's pid; -E: log to a file
            self._proc = subprocess.Popen(
                [SSHD, "-D", "-f", str(self.config_path), "-E", str(self.log)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            if self._wait_listening(timeout, log_start):
                return
            self._reap()
            if not fresh_port:
                break
            self.port = 0  # the free port was taken meanwhile: pick another
        tail = self.log.read_text()[-2000:] if self.log.exists() else ""
        raise RuntimeError(f"sshd for {self.name} did not start on port {self.port}:\n{tail}")

    def _wait_listening(self, timeout: float, log_start: int) -> bool:
        """Our sshd listens: its log says so. (A port that accepts is not enough: another
        test suite's sshd may have taken the free port first; ours then fails to bind.)"""
        listening = f"Server listening on {self.address} port {self.port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            with contextlib.suppress(OSError), open(self.log, "rb") as fh:
                fh.seek(log_start)
                if listening in fh.read().decode(errors="replace"):
                    return True
            time.sleep(0.01)
        return False

    def _reap(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
        self._proc = None

    def _sshd_tree(self) -> tuple[list[int], list[int]]:
        """(sshd processes, other processes) under the listener, all left SIGSTOPped."""
        pid = self.pid
        assert pid is not None, f"{self.name} is not running"
        tree = _stop_tree(pid)  # nothing forks or exits while we sort the tree
        sshd = [p for p in tree if _comm(p).startswith("sshd")]
        return sshd, [p for p in tree if p not in sshd]

    def kill(self) -> None:
        """Host down: SIGKILL the listener and every per-connection sshd, so every client
        connection drops at once. Commands those sessions ran are let go on: this machine is
        shared, and a login shell killed inside pyenv's rehash lock stalls every root login
        for 60 s. Detached daemons (the agent) are not touched either."""
        if self.pid is None:
            return
        sshd, others = self._sshd_tree()
        _signal_all(sshd, signal.SIGKILL)
        _signal_all(others, signal.SIGCONT)
        self._reap()

    def restart(self) -> None:
        self.kill()
        self.start()

    def freeze(self) -> None:
        """Frozen host: the kernel still accepts TCP, but no sshd process answers anything.
        (Commands already running go on, for the reason given in kill.)"""
        _, others = self._sshd_tree()
        _signal_all(others, signal.SIGCONT)

    def thaw(self) -> None:
        if self.pid is None:
            return
        sshd, others = self._sshd_tree()
        _signal_all(sshd + others, signal.SIGCONT)

    def regenerate_host_key(self, *, restart: bool = True) -> None:
        """A rebuilt host: new host key (the running sshd is restarted to load it)."""
        for path in (self.host_key, Path(str(self.host_key) + ".pub")):
            path.unlink(missing_ok=True)
        cmd = [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", self.name]
        subprocess.run([*cmd, "-f", str(self.host_key)], check=True)
        if restart and self.pid is not None:
            self.restart()

    # -- the host's disk ---------------------------------------------------------------------
    def _make_root(self) -> None:
        self.root.mkdir(mode=0o755, exist_ok=True)
        os.chown(self.root, self._pw.pw_uid, self._pw.pw_gid)

    def wipe(self) -> None:
        """The host lost its disk: the root is gone (cloudsend must recreate it)."""
        stop_agents(self.root)
        shutil.rmtree(self.root, ignore_errors=True)

    def accepted_logins(self) -> int:
        """How many SSH connections authenticated so far (from sshd's log)."""
        if not self.log.exists():
            return 0
        return self.log.read_text(errors="replace").count("Accepted publickey for")

    def target(self, known_hosts: Path, **overrides: Any) -> SshTarget:
        """An SshTarget for this host (timeouts etc. may be overridden)."""
        from cloudsend.transport.ssh import SshTarget

        return SshTarget(
            name=self.name,
            address=self.address,
            port=self.port,
            user=self.user,
            key=self.key,
            known_hosts=known_hosts,
            **overrides,
        )


def stop_agents(root: Path) -> None:
    """Stop agent daemons and their jobs under a host root (they are detached from sshd)."""
    if not root.exists():
        return
    for agent in root.rglob("agent.py"):
        if (agent.parent / "agent.json").exists():
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run(
                    [
                        sys.executable,
                        str(agent),
                        "--root",
                        str(agent.parent),
                        "stop",
                        "--kill-jobs",
                    ],
                    capture_output=True,
                    timeout=30,
                )
    for pid_file in root.rglob("agent.pid"):
        with contextlib.suppress(ValueError, OSError, IndexError):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)


@pytest.fixture(scope="session")
def _sshd_base() -> Iterator[Path]:
    # not under pytest's tmp_path: that is 0700 and the non-root login user must traverse it
    base = Path(tempfile.mkdtemp(prefix="cloudsend-sshd-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def sshd_client_key(_sshd_base: Path) -> Path:
    """The client's ed25519 private key (0600), authorized on every fake host."""
    _require_tools("root")
    key = _sshd_base / "client_ed25519"
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "cloudsend-test", "-f", str(key)],
        check=True,
    )
    key.chmod(0o600)
    return key


@pytest.fixture
def sshd_factory(
    _sshd_base: Path, sshd_client_key: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., list[SshdHost]]]:
    """make(n, *, user="root", stock_limits=False) -> n started hosts; all torn down after."""
    hosts: list[SshdHost] = []
    test_dir = Path(tempfile.mkdtemp(prefix="t-", dir=_sshd_base))
    test_dir.chmod(0o755)

    def make(n: int = 1, *, user: str = "root", stock_limits: bool = False) -> list[SshdHost]:
        _require_tools(user)
        if user != "root":
            ensure_user(user)
        made = []
        for _ in range(n):
            host = SshdHost(
                f"h{len(hosts)}", test_dir, sshd_client_key, user=user, stock_limits=stock_limits
            )
            hosts.append(host)
            made.append(host)
        for host in made:
            host.start()
        return made

    yield make
    for host in hosts:
        host.kill()
    for host in hosts:
        stop_agents(host.root)
    shutil.rmtree(test_dir, ignore_errors=True)


@pytest.fixture
def sshd_host(sshd_factory: Callable[..., list[SshdHost]]) -> SshdHost:
    """One started host logging in as root."""
    return sshd_factory(1)[0]
