#!/usr/bin/env python3
"""cloudsend host agent: runs the jobs cloudsend hands a host, and survives cloudsend's death.

One stdlib-only file for Python 3.8+ (remote hosts run it with their system python3), called as
``python3 agent.py --root ROOT <command>``; every call prints one JSON document. The contract
(host layout, commands, JSON shapes) is in docs/internals.md. How it works:

- A detached daemon (double fork + setsid, holding an flock on agent.lock) is the only process
  that writes job/env state and the only one that starts processes. Every CLI call but ``stop``
  first makes sure it runs, so a killed daemon is restarted by the next call.
- CLI calls that change state (submit, cancel, a slot change) drop a request file in inbox/,
  poke the wake FIFO, and wait for the daemon's response file: one writer, no state races.
- The daemon keeps status.json, a snapshot of everything written atomically on each change,
  then bumps ``version``; ``status`` just prints the snapshot and long-polls the version file.
- Each job runs in its own session through a tiny sh wrapper that writes its pid and, at the
  end, its exit code (atomically) into the job dir, so a restarted daemon adopts jobs that are
  still running (pid + start time from /proc, against pid reuse) and collects their rc.
- A job's whole process tree dies with it (at its end, on cancel, on stop --kill-jobs): its own
  cgroup where the host allows, else its session, a token env var and the parent chain; the
  daemon is a child subreaper. Every call runs under umask 077: the root is owner-only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import select
import signal
import stat
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs import time on every call; annotations are strings anyway
    from typing import Any

    # type checkers see the package; on a host protocol.py sits beside agent.py (uploaded with
    # it), which is on sys.path whether agent.py runs as a script or is imported from ROOT
    from cloudsend.agent.protocol import (
        ABORTED,
        BUILDING,
        DONE,
        ENV_STATUS_KEYS,
        FAILED,
        FINAL_STATES,
        JOB_DEFAULTS,
        JOB_STATUS_KEYS,
        QUEUE,
        READY,
        RUNNING,
        WAIT,
    )  # fmt: skip
else:
    from protocol import (
        ABORTED,
        BUILDING,
        DONE,
        ENV_STATUS_KEYS,
        FAILED,
        FINAL_STATES,
        JOB_DEFAULTS,
        JOB_STATUS_KEYS,
        QUEUE,
        READY,
        RUNNING,
        WAIT,
    )  # fmt: skip

VANISHED = "process vanished (host restarted?)"
KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL when cancelling
ADOPTED_POLL = 0.05  # adopted processes are not our children: no SIGCHLD, so poll them
REQUEST_TIMEOUT = 120.0

# Runs every job and bootstrap: $1 = dir for pid/rc, $2 = cwd, $3 = its cgroup dir or "", the
# rest = the command. It joins its cgroup before it starts anything, so nothing escapes it. The
# rc is only read once the wrapper's process is gone, so its write is complete by then: a plain
# redirect is enough (an `mv` would cost a fork+exec per job, most of a short job's cost).
JOIN_CGROUP = '[ -z "$3" ] || { echo $$ >"$3/cgroup.procs"; } 2>/dev/null; '
WRAPPER = (
    JOIN_CGROUP + 'd=$1; w=$2; shift 3; echo $$ >"$d/pid"; '
    'if cd "$w"; then "$@"; rc=$?; else rc=126; fi; '
    'echo $rc >"$d/rc"; exit $rc'
)
# Jobs: the same wrapper in bash, which runs run.sh in a subshell (a fork, no exec): one
# process start less per job, most of a short job's cost.
JOB_WRAPPER = (
    JOIN_CGROUP + 'd=$1; w=$2; echo $$ >"$d/pid"; '
    'if cd "$w"; then ( . ../run.sh ); rc=$?; else rc=126; fi; '
    'echo $rc >"$d/rc"; exit $rc'
)


BASH = next((b for b in ("/bin/bash", "/usr/bin/bash") if os.path.exists(b)), "")


class AgentError(Exception):
    """A failure reported to the caller as {"error": ...}."""


# ---------------------------------------------------------------------------------------------
# small helpers


class Paths:
    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        j = self.at
        self.agent_json, self.pid, self.lock = j("agent.json"), j("agent.pid"), j("agent.lock")
        self.log, self.version, self.status = j("agent.log"), j("version"), j("status.json")
        self.wake, self.inbox = j("wake"), j("inbox")
        self.jobs, self.envs, self.outbox = j("jobs"), j("envs"), j("outbox")

    def at(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def job(self, job_id: str, *parts: str) -> str:
        return os.path.join(self.jobs, job_id, *parts)

    def env(self, env_id: str, *parts: str) -> str:
        return os.path.join(self.envs, env_id, *parts)


def now() -> float:
    return round(time.time(), 3)


def write_atomic(path: str, data: bytes | str) -> None:
    raw = data.encode() if isinstance(data, str) else data
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(raw)
    os.replace(tmp, path)


def write_json(path: str, obj: object) -> None:
    write_atomic(path, json.dumps(obj, separators=(",", ":")))


def read_json(path: str, default: Any = None) -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return default


def read_int(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def tail_text(path: str, lines: int, max_line: int = 0) -> str:
    """Last ``lines`` lines of a file (all when lines <= 0), read from the end."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except OSError:
        return ""
    # With lines and max_line both set, no more than this many bytes can be shown: a job's
    # 200 MB single-line stderr must not be read whole into the agent for a reason's tail.
    cap = lines * (4 * max_line + 8) + (1 << 16) if lines > 0 and max_line > 0 else 0
    with f:
        size = f.seek(0, 2)
        chunk = 1 << 16
        while True:
            if cap:
                chunk = min(chunk, cap)
            start = max(0, size - chunk)
            f.seek(start)
            data = f.read(chunk)
            if start == 0 or (lines > 0 and data.count(b"\n") > lines) or chunk == cap:
                break
            chunk *= 4
    out = data.decode("utf-8", "replace").splitlines()
    if start > 0 and len(out) > 1:
        out = out[1:]  # the first line read is probably cut
    elif start > 0 and out:
        out[0] = "..." + out[0]  # one line longer than all we read: show its end
    if lines > 0:
        out = out[-lines:]
    if max_line:
        out = [ln if len(ln) <= max_line else ln[:max_line] + "..." for ln in out]
    return "\n".join(ln.rstrip() for ln in out)


def safe_rel(path: object) -> str:
    """A normalised relative path that stays inside its base dir, or AgentError."""
    if not isinstance(path, str) or not path or "\0" in path or os.path.isabs(path):
        raise AgentError(f"not a relative path: {path!r}")
    norm = os.path.normpath(path)
    if norm == "." or norm == ".." or norm.startswith("../"):
        raise AgentError(f"path escapes the work dir: {path!r}")
    return norm


ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def check_id(value: object, what: str) -> str:
    """Ids name directories: a safe ASCII subset only."""
    ok = isinstance(value, str) and 0 < len(value) <= 200 and not value.startswith(".")
    if not ok or not ID_CHARS.issuperset(str(value)):
        raise AgentError(f"bad {what} {value!r}: use letters, digits, '.', '_', '-'")
    return str(value)


def within(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip("/") + "/")


# --- processes -------------------------------------------------------------------------------

HAS_PROC = os.path.isdir("/proc/self")


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def proc_start(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), or None if it is gone or a zombie."""
    if not HAS_PROC:  # no /proc (macOS): liveness only, no pid-reuse check
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def alive(pid: int | None, pstart: int | None) -> bool:
    if not pid:
        return False
    started = proc_start(pid)
    return started is not None and (pstart is None or not HAS_PROC or started == pstart)


def launched(rec: dict[str, Any], d: str) -> bool:
    """Its process was started (the wrapper writes its pid file first thing)."""
    return bool(rec.get("pid")) or os.path.exists(os.path.join(d, "pid"))


def recorded_process(rec: dict[str, Any], d: str) -> tuple[int | None, int | None]:
    """(pid, start time) of a record's process. A daemon killed between the spawn and the
    state write left no pid in the record: the wrapper's pid file tells, so nothing runs twice."""
    if rec.get("pid"):
        return rec["pid"], rec.get("pstart")
    pid = read_int(os.path.join(d, "pid"))
    return pid, proc_start(pid) if pid else None


# --- process trees: everything a job started, wherever it went --------------------------------
#
# A job's processes are found by the union of: its cgroup (when the host lets the daemon make
# one: nothing inside can leave it short of root moving it), its session (the wrapper is a
# session leader), the token env var every descendant inherits (found in /proc/PID/environ even
# after setsid and reparenting), and the descendants of all of these (a child that changed
# session and cleared its environment is still under its parent). The daemon is a child
# subreaper, so orphans of its jobs are reparented to it, and reaped.

TOKEN_VAR = "CLOUDSEND_TOKEN"
CGROUP_OFF = "CLOUDSEND_AGENT_NO_CGROUP"  # set: never use cgroups (tests the fallback)
SCAN_EVERY = 0.2  # seconds between /proc scans for the leftovers of ended jobs


def new_token() -> str:
    return os.urandom(8).hex()


def env_value(env: bytes, name: bytes) -> bytes | None:
    """The value of one variable in a NUL-separated environ block."""
    key = name + b"="
    if env.startswith(key):
        i = len(key)
    else:
        i = env.find(b"\0" + key)
        if i < 0:
            return None
        i += len(key) + 1
    j = env.find(b"\0", i)
    return env[i:] if j < 0 else env[i:j]


class ProcTable:
    """One pass over /proc: the live processes (zombies, kernel threads, init and this process
    left out) with their parent, session, start time, job token and CLOUDSEND_ROOT."""

    def __init__(self) -> None:
        self.info: dict[int, tuple[int, int, int]] = {}  # pid -> (ppid, sid, start)
        self.by_token: dict[bytes, list[int]] = {}
        self.by_root: dict[bytes, list[int]] = {}
        self.children: dict[int, list[int]] = {}
        if not HAS_PROC:
            return
        me = os.getpid()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    data = f.read()
            except OSError:
                continue
            fields = data[data.rindex(b")") + 2 :].split()
            ppid = int(fields[1])
            if fields[0] in (b"Z", b"X") or pid in (1, 2, me) or ppid == 2:
                continue
            self.info[pid] = (ppid, int(fields[3]), int(fields[19]))
            self.children.setdefault(ppid, []).append(pid)
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    env = f.read()
            except OSError:  # another user's process: never one of ours
                continue
            if b"CLOUDSEND_" not in env:
                continue
            token = env_value(env, TOKEN_VAR.encode())
            if token:
                self.by_token.setdefault(token, []).append(pid)
            root = env_value(env, b"CLOUDSEND_ROOT")
            if root:
                self.by_root.setdefault(root, []).append(pid)

    def tree(self, rec: dict[str, Any], session: bool) -> set[int]:
        """The live processes of one launch (a job or env record). ``session``: count its
        session too (only while the launch is live or just ended: a session id can be reused
        once all its members are gone)."""
        found = set(cgroup_procs(rec.get("cgroup")))
        if rec.get("token"):
            found.update(self.by_token.get(rec["token"].encode(), ()))
        if rec.get("root"):  # a whole agent root: what every job and bootstrap started
            found.update(self.by_root.get(rec["root"].encode(), ()))
        pid = rec.get("pid")
        if session and pid:
            leader = self.info.get(pid)
            if leader is None or rec.get("pstart") is None or leader[2] == rec.get("pstart"):
                found.update(p for p, (_, sid, _) in self.info.items() if sid == pid)
        return self.descendants(found)

    def descendants(self, pids: set[int]) -> set[int]:
        out = set(pids)
        stack = list(pids)
        while stack:
            for child in self.children.get(stack.pop(), ()):
                if child not in out:
                    out.add(child)
                    stack.append(child)
        out.discard(os.getpid())
        return out


def signal_pids(pids: set[int] | list[int], sig: int) -> None:
    for pid in pids:
        signal_pid(pid, sig)


def signal_pid(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def kill_trees(targets: list[tuple[dict[str, Any], bool]], sig: int) -> set[int]:
    """Send sig to every process of these launches ((record, count its session) pairs).
    SIGKILL goes twice over, to catch what forked meanwhile, after the cgroups' own kill
    switch. Returns the processes signalled."""
    hit: set[int] = set()
    if not HAS_PROC:  # no /proc (macOS): a session's process group is all we can find
        for rec, session in targets:
            if session and rec.get("pid"):
                with contextlib.suppress(OSError):
                    os.killpg(rec["pid"], sig)
    for _ in range(2 if sig == signal.SIGKILL else 1):
        if sig == signal.SIGKILL:
            for rec, _session in targets:
                cgroup_kill(rec.get("cgroup"))
        table = ProcTable()
        pids: set[int] = set()
        for rec, session in targets:
            pids |= table.tree(rec, session)
        signal_pids(pids, sig)
        hit |= pids
        if not pids:
            break
    return hit


# --- cgroups (v2): a directory per launch under the daemon's own cgroup, when allowed --------


def own_cgroup_dir() -> str | None:
    """This process's cgroup v2 directory, or None (no v2 hierarchy mounted)."""
    try:
        with open("/proc/self/cgroup") as f:
            rel = next((ln[3:].strip() for ln in f if ln.startswith("0::")), None)
        with open("/proc/self/mountinfo") as f:
            mounts = [ln.split() for ln in f]
    except OSError:
        return None
    if rel is None or rel.endswith("(deleted)"):
        return None
    for fields in mounts:
        sep = fields.index("-") if "-" in fields else -1
        if sep > 0 and fields[sep + 1] == "cgroup2":
            base = fields[4] if fields[3] == "/" else None  # a bind of a sub-tree: skip
            if base:
                return base.rstrip("/") + rel if rel != "/" else base
    return None


def setup_cgroups(paths: Paths) -> str | None:
    """The cgroup dir this daemon puts its launches under, if the host lets it: made, then
    proven by moving a throw-away process into a child (a read-only or undelegated hierarchy
    fails here). None: track processes without cgroups."""
    if os.environ.get(CGROUP_OFF) or not HAS_PROC:
        return None
    own = own_cgroup_dir()
    if own is None:
        return None
    import hashlib

    base = os.path.join(own, "cloudsend-" + hashlib.sha256(paths.root.encode()).hexdigest()[:16])
    probe = os.path.join(base, f"probe-{os.getpid()}")
    try:
        os.makedirs(probe, exist_ok=True)
        pid = os.spawnv(
            os.P_NOWAIT,
            "/bin/sh",
            ["/bin/sh", "-c", 'echo $$ >"$1/cgroup.procs"', "sh", probe],
        )
        ok = os.waitpid(pid, 0)[1] == 0
    except OSError:
        ok = False
    with contextlib.suppress(OSError):
        os.rmdir(probe)
    if not ok:
        with contextlib.suppress(OSError):
            os.rmdir(base)
        return None
    write_atomic(paths.at("cgroup"), base)
    return base


def cgroup_procs(path: str | None) -> list[int]:
    if not path:
        return []
    try:
        with open(os.path.join(path, "cgroup.procs"), "rb") as f:
            return [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return []


def cgroup_kill(path: str | None) -> None:
    """SIGKILL everything in the cgroup at once (cgroup.kill: Linux 5.14+; older kernels get
    the per-process kills of kill_trees)."""
    if path:
        with contextlib.suppress(OSError), open(os.path.join(path, "cgroup.kill"), "w") as f:
            f.write("1")


def remove_cgroup(path: str | None) -> bool:
    """rmdir an empty cgroup: True once it is gone (EBUSY while a process is still in it)."""
    if not path:
        return True
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def remove_cgroups(base: str | None, timeout: float) -> None:
    """Remove a daemon's cgroup dir and its launches' (waiting for killed processes to go)."""
    if not base or not os.path.isdir(base):
        return

    def gone() -> bool:
        with contextlib.suppress(OSError):
            for name in os.listdir(base):
                if os.path.isdir(os.path.join(base, name)):
                    remove_cgroup(os.path.join(base, name))
        return remove_cgroup(base)

    wait_until(gone, timeout)


def become_subreaper() -> None:
    """Orphans of our jobs (a double fork, setsid + exit) are reparented to the daemon, not
    init: they stay reaped, and findable as our children. Linux only; elsewhere a no-op."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


# ---------------------------------------------------------------------------------------------
# state: the records the daemon owns, their files, and the snapshot


def status_fields(rec: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: rec.get(k) for k in keys}


JOB_KEYS = JOB_STATUS_KEYS  # protocol.JobStatus
ENV_KEYS = ENV_STATUS_KEYS  # protocol.EnvStatus


class Store:
    """Job and env records as the daemon keeps them (memory + one state.json each)."""

    def __init__(self, paths: Paths, slots: int) -> None:
        self.p = paths
        self.slots = slots
        self.jobs: dict[str, dict[str, Any]] = {}
        self.envs: dict[str, dict[str, Any]] = {}
        self.version = 0
        self.seq = 0
        self.dirty = False
        self._version_fd: int | None = None
        self._frags: dict[str, str] = {}  # job_id -> its JSON in the snapshot (status stays O(1))

    def load(self) -> None:
        for kind, base, target in (
            ("job", self.p.jobs, self.jobs),
            ("env", self.p.envs, self.envs),
        ):
            try:
                names = os.listdir(base)
            except FileNotFoundError:
                continue
            for name in names:
                rec = read_json(os.path.join(base, name, "state.json"))
                if isinstance(rec, dict) and rec.get(kind + "_id") == name:
                    target[name] = rec
                    self.seq = max(self.seq, int(rec.get("seq") or 0))
        snap = read_json(self.p.status, {})
        snap_version = snap.get("version") if isinstance(snap, dict) else 0
        self.version = max(read_int(self.p.version) or 0, int(snap_version or 0))

    def save_job(self, rec: dict[str, Any]) -> None:
        write_json(self.p.job(rec["job_id"], "state.json"), rec)
        self._frags.pop(rec["job_id"], None)
        self.dirty = True

    def save_env(self, rec: dict[str, Any]) -> None:
        write_json(self.p.env(rec["env_id"], "state.json"), rec)
        self.dirty = True

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def write_snapshot(self, agent: dict[str, Any]) -> None:
        """status.json then version: a reader that sees version V finds a snapshot >= V."""
        self.version += 1
        frags = self._frags
        parts = []
        for job_id, rec in self.jobs.items():
            frag = frags.get(job_id)
            if frag is None:
                frag = frags[job_id] = (
                    f"{json.dumps(job_id)}:{json.dumps(status_fields(rec, JOB_KEYS))}"
                )
            parts.append(frag)
        envs = {k: status_fields(v, ENV_KEYS) for k, v in self.envs.items()}
        doc = '{"version":%d,"agent":%s,"envs":%s,"jobs":{%s}}' % (  # noqa: UP031 - braces
            self.version,
            json.dumps(agent),
            json.dumps(envs),
            ",".join(parts),
        )
        write_atomic(self.p.status, doc)
        # In place, one pwrite: versions only grow, so the digits never shrink and a reader sees
        # the old or the new number; it saves creating a file per change (slow on some disks).
        if self._version_fd is None:
            self._version_fd = os.open(self.p.version, os.O_WRONLY | os.O_CREAT, 0o600)
        os.pwrite(self._version_fd, str(self.version).encode(), 0)
        self.dirty = False


class Proc:
    """A live job or bootstrap process: our child (reaped via SIGCHLD) or adopted (polled)."""

    __slots__ = ("kind", "key", "pid", "pstart", "child", "cpus", "doomed")

    def __init__(self, kind: str, key: str, pid: int, pstart: int | None, child: bool, cpus: int):
        self.kind, self.key, self.pid, self.pstart = kind, key, pid, pstart
        self.child, self.cpus = child, cpus
        self.doomed = False  # cancelled: its record is final already, only the slots remain


# ---------------------------------------------------------------------------------------------
# the daemon


class Daemon(Store):
    def __init__(self, paths: Paths, slots: int) -> None:
        super().__init__(paths, slots)
        self.live: dict[tuple[str, str], Proc] = {}
        self.by_pid: dict[int, Proc] = {}
        # jobs whose processes got SIGTERM (cancelled, or leftovers of an ended job); the
        # SIGKILL deadline is the record's kill_at (wall clock, saved, so a restarted daemon or
        # stop --kill-jobs still honours it)
        self.kills: set[str] = set()
        # jobs whose wrapper ended, to check for leftovers: job_id -> (wrapper was our child,
        # count its session)
        self.sweep: dict[str, tuple[bool, bool]] = {}
        self.next_scan = 0.0
        self.cg_base: str | None = None  # this daemon's cgroup dir, when the host allows
        self.cg_gc: dict[str, float] = {}  # cgroups to remove once empty -> give up time
        self.queue: list[str] = []  # QUEUE job ids in submission order
        self.stopping = False
        self.boot = boot_id()
        self.base_env = dict(os.environ)
        for var in ("CLOUDSEND_JOB_ID", "CLOUDSEND_JOB_DIR", "CLOUDSEND_ENV_DIR", TOKEN_VAR):
            self.base_env.pop(var, None)
        self.sched_dirty = True
        self.lock_id = (0, 0)  # (st_dev, st_ino) of the agent.lock this daemon holds
        self.stored = StoredFiles()  # the uploads in ROOT/files found intact (prepare_work)

    # --- startup -----------------------------------------------------------------------------

    def recover(self) -> None:
        """After load: adopt what still runs, settle what ended while no daemon watched."""
        for job_id, rec in self.jobs.items():
            if rec["state"] in (RUNNING, QUEUE) and launched(rec, self.p.job(job_id)):
                self._recover_one("job", job_id, rec, self.p.job(job_id), rec.get("cpus", 1))
        for env_id, rec in self.envs.items():
            if rec["state"] == BUILDING and launched(rec, self.p.env(env_id)):
                self._recover_one("env", env_id, rec, self.p.env(env_id), 0)
        self.queue = sorted(
            (j for j, r in self.jobs.items() if r["state"] == QUEUE), key=self._seq_of
        )
        for job_id, rec in self.jobs.items():
            if rec.get("boot") != self.boot or ("job", job_id) in self.live:
                continue
            if rec.get("kill_at"):  # kills a dead daemon left unfinished
                self.kills.add(job_id)
                self.sweep[job_id] = (False, True)
            elif rec.get("token") and rec["state"] in (DONE, ABORTED):
                # its leftovers, if it ended while no daemon watched (or before their sweep)
                self.sweep.setdefault(job_id, (False, False))
        for job_id, rec in self.jobs.items():
            if rec.get("kill_at") and job_id not in self.kills:
                self._kill_done(job_id)  # from an earlier boot: nothing of it is left

    def _recover_one(self, kind: str, key: str, rec: dict[str, Any], d: str, cpus: int) -> None:
        pid, pstart = recorded_process(rec, d)
        same_boot = not rec.get("boot") or rec.get("boot") == self.boot
        if pid and same_boot and alive(pid, pstart):
            rec.update(pid=pid, pstart=pstart)
            if kind == "job":
                rec["state"] = RUNNING
            rec["started"] = rec.get("started") or now()
            self._save(kind, rec)
            self._track(Proc(kind, key, pid, pstart, False, cpus))
            self.log(f"adopted {kind} {key} (pid {pid})")
            return
        self._ended(kind, rec, read_int(os.path.join(d, "rc")))

    # --- records -----------------------------------------------------------------------------

    def _save(self, kind: str, rec: dict[str, Any]) -> None:
        if kind == "job":
            self.save_job(rec)
        else:
            self.save_env(rec)

    def _seq_of(self, job_id: str) -> int:
        return int(self.jobs[job_id].get("seq") or 0)

    def _track(self, proc: Proc) -> None:
        self.live[(proc.kind, proc.key)] = proc
        if proc.child:
            self.by_pid[proc.pid] = proc

    def _finish(self, proc: Proc, status: int | None = None) -> None:
        """Its process is gone (status: from waitpid when it was our child)."""
        self.live.pop((proc.kind, proc.key), None)
        self.by_pid.pop(proc.pid, None)
        self.sched_dirty = self.dirty = True  # slots_used changed
        rec = (self.jobs if proc.kind == "job" else self.envs).get(proc.key)
        if proc.kind == "job":
            self.sweep[proc.key] = (proc.child, True)
        elif rec is not None:  # what a bootstrap leaves running (a service?) stays until down
            remove_cgroup(rec.get("cgroup"))
        if proc.doomed:  # cancelled: the record is final already
            return
        if rec is not None:
            d = self.p.job(proc.key) if proc.kind == "job" else self.p.env(proc.key)
            self._ended(proc.kind, rec, read_int(os.path.join(d, "rc")), status)

    def slots_used(self) -> int:
        return sum(p.cpus for p in self.live.values() if p.kind == "job")

    def _abort(self, rec: dict[str, Any], reason: str, exit_code: int | None = None) -> None:
        rec.update(state=ABORTED, reason=reason, exit_code=exit_code, ended=now())
        self.save_job(rec)

    def _ended(
        self, kind: str, rec: dict[str, Any], rc: int | None, status: int | None = None
    ) -> None:
        """Settle a record: rc from the rc file, else from waitpid's status, else vanished."""
        signaled = None
        if rc is None and status is not None:
            if os.WIFEXITED(status):
                rc = os.WEXITSTATUS(status)
            elif os.WIFSIGNALED(status):
                signaled = os.WTERMSIG(status)
        if signaled is not None:
            why = f"killed by signal {signaled}"
        elif rc is None:
            why = VANISHED
        else:
            why = f"exit code {rc}"
        rec.update(exit_code=-signaled if signaled else rc, ended=now())
        if kind == "job":
            if rc == 0:
                rec.update(state=DONE, reason=None)
            else:
                err = tail_text(self.p.job(rec["job_id"], "stderr.log"), 10, 500)
                rec.update(state=ABORTED, reason=why + (": " + err if err else ""))
            self.save_job(rec)
            return
        rec["log_tail"] = tail_text(self.p.env(rec["env_id"], "bootstrap.log"), 20, 500)
        rec.update(state=READY if rc == 0 else FAILED, reason=None if rc == 0 else why)
        self.save_env(rec)
        self._env_settled(rec)

    def _env_settled(self, env: dict[str, Any]) -> None:
        """Release or abort the jobs waiting for this env."""
        env_id = env["env_id"]
        if env["state"] == FAILED:
            detail = env.get("log_tail") or env.get("reason") or ""
            reason = f"environment {env_id} failed: {detail}"
        moved = False
        for rec in self.jobs.values():
            if rec["state"] != WAIT or rec.get("env_id") != env_id:
                continue
            if env["state"] == READY:
                rec["state"] = QUEUE
                self.save_job(rec)
                self.queue.append(rec["job_id"])
                moved = True
            elif env["state"] == FAILED:
                self._abort(rec, reason)
        if moved:
            self.queue.sort(key=self._seq_of)
        self.sched_dirty = True

    # --- requests ----------------------------------------------------------------------------

    def apply(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "submit":
            return self.submit(req.get("envs") or [], req.get("jobs") or [])
        if op == "cancel":
            return self.cancel(req.get("jobs") or [], bool(req.get("all")))
        if op == "reload":
            cfg = read_json(self.p.agent_json, {})
            self.slots = int(cfg.get("slots") or self.slots)
            self.dirty = self.sched_dirty = True
            return {"slots": self.slots}
        raise AgentError(f"unknown request {op!r}")

    def submit(self, envs: list[dict[str, Any]], jobs: list[dict[str, Any]]) -> dict[str, Any]:
        accepted: list[str] = []
        skipped: list[str] = []
        for spec in envs:
            env_id = spec["env_id"]
            cur = self.envs.get(env_id)
            if cur is not None and cur["state"] in (BUILDING, READY):
                skipped.append(env_id)
                continue
            d = self.p.env(env_id)
            os.makedirs(d, exist_ok=True)
            for name in ("rc", "pid", "bootstrap.log"):
                unlink(os.path.join(d, name))
            write_atomic(os.path.join(d, "bootstrap.sh"), spec["script"])
            rec = {
                "env_id": env_id,
                "state": BUILDING,
                "exit_code": None,
                "log_tail": "",
                "reason": None,
                "started": None,
                "ended": None,
                "pid": None,
                "seq": self.next_seq(),
            }
            self.envs[env_id] = rec
            self.save_env(rec)
            accepted.append(env_id)
        for spec in jobs:
            job_id = spec["job_id"]
            cur = self.jobs.get(job_id)
            if cur is not None:
                # a DONE job runs again only when the new run asks (recover: false)
                again = cur["state"] == ABORTED or (cur["state"] == DONE and spec.get("rerun"))
                if not again or spec["attempt"] <= int(cur.get("attempt") or 0):
                    skipped.append(job_id)
                    continue
                proc = self.live.get(("job", job_id))
                if proc is not None:  # a cancelled job still dying: finish it off first
                    self.live.pop(("job", job_id), None)
                    self.by_pid.pop(proc.pid, None)
                if proc is not None or job_id in self.kills or job_id in self.sweep:
                    kill_trees([(cur, True)], signal.SIGKILL)  # and what it left running
                    self.kills.discard(job_id)
                    self.sweep.pop(job_id, None)
                    self._gc(cur.get("cgroup"))
            self._new_job(spec)
            accepted.append(job_id)
        self.sched_dirty = True
        return {"accepted": accepted, "skipped": skipped}

    def _new_job(self, spec: dict[str, Any]) -> None:
        import shutil

        job_id = spec["job_id"]
        d = self.p.job(job_id)
        shutil.rmtree(d, ignore_errors=True)  # a reset: the old attempt's work dir is wiped
        os.makedirs(d)
        write_json(os.path.join(d, "spec.json"), spec)
        write_atomic(os.path.join(d, "run.sh"), spec["script"])
        env_id = spec.get("env_id")
        rec = {
            "job_id": job_id,
            "attempt": spec["attempt"],
            "env_id": env_id,
            "cpus": spec["cpus"],
            "state": QUEUE,
            "exit_code": None,
            "reason": None,
            "started": None,
            "ended": None,
            "pid": None,
            "pstart": None,
            "boot": None,
            "seq": self.next_seq(),
        }
        self.jobs[job_id] = rec
        env = self.envs.get(env_id) if env_id else None
        if spec["cpus"] > self.slots:
            self._abort(rec, f"needs {spec['cpus']} CPUs, host has {self.slots}")
        elif env_id and (env is None or env["state"] == BUILDING):
            rec["state"] = WAIT
            self.save_job(rec)
        elif env is not None and env["state"] == FAILED:
            detail = env.get("log_tail") or env.get("reason") or ""
            self._abort(rec, f"environment {env_id} failed: {detail}")
        else:
            self.save_job(rec)
            self.queue.append(job_id)

    def cancel(self, job_ids: list[str], everything: bool) -> dict[str, Any]:
        if everything:
            job_ids = [j for j, r in self.jobs.items() if r["state"] in (WAIT, QUEUE, RUNNING)]
        cancelled = []
        doomed: list[tuple[dict[str, Any], bool]] = []
        for job_id in job_ids:
            rec = self.jobs.get(job_id)
            if rec is None or rec["state"] not in (WAIT, QUEUE, RUNNING):
                continue
            proc = self.live.get(("job", job_id))
            if proc is not None:
                proc.doomed = True
                doomed.append((rec, True))
                self.kills.add(job_id)
                rec["kill_at"] = time.time() + KILL_GRACE
            if rec["state"] == QUEUE and job_id in self.queue:
                self.queue.remove(job_id)
            self._abort(rec, "cancelled")
            cancelled.append(job_id)
        if doomed:  # the whole tree of each: one /proc scan for all of them
            kill_trees(doomed, signal.SIGTERM)
        self.sched_dirty = True
        return {"cancelled": cancelled}

    def process_inbox(self) -> list[tuple[str, dict[str, Any]]]:
        try:
            names = sorted(n for n in os.listdir(self.p.inbox) if n.endswith(".req"))
        except FileNotFoundError:
            return []
        answers = []
        for name in names:
            path = os.path.join(self.p.inbox, name)
            req = read_json(path)
            try:
                if not isinstance(req, dict):
                    raise AgentError("unreadable request")
                answer = self.apply(req)
            except Exception as exc:  # one bad request must not take the daemon down
                self.log(f"request {name} failed: {exc!r}")
                answer = {"error": str(exc) or repr(exc)}
            answers.append((path, answer))
        return answers

    # --- processes ---------------------------------------------------------------------------

    def spawn(
        self,
        state_dir: str,
        cwd: str,
        argv: list[str],
        out: str,
        err: str | None,
        env: dict[str, str],
        cgroup: str | None = None,
    ) -> int:
        cg = cgroup or ""
        if argv == ["bash", "../run.sh"] and BASH:
            args = [BASH, "-c", JOB_WRAPPER, "cloudsend-wrapper", state_dir, cwd, cg]
        else:
            args = ["/bin/sh", "-c", WRAPPER, "cloudsend-wrapper", state_dir, cwd, cg, *argv]
        wflags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        if USE_POSIX_SPAWN:
            actions = [
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, out, wflags, 0o600),
                (os.POSIX_SPAWN_DUP2, 1, 2)
                if err is None
                else (os.POSIX_SPAWN_OPEN, 2, err, wflags, 0o600),
            ]
            try:
                # vfork+exec: cheap even for a big daemon; setsigdef undoes Python's SIG_IGNs
                return os.posix_spawn(
                    args[0],
                    args,
                    env,
                    file_actions=actions,
                    setsid=True,
                    setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGHUP),
                )
            except NotImplementedError:
                pass
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child execs or exits
            try:
                os.setsid()
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                os.dup2(os.open(out, wflags, 0o600), 1)
                os.dup2(1 if err is None else os.open(err, wflags, 0o600), 2)
                for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGHUP, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                os.execve(args[0], args, env)
            finally:
                os._exit(127)
        return pid

    def launch_job(self, rec: dict[str, Any]) -> None:
        job_id = rec["job_id"]
        d = self.p.job(job_id)
        work = os.path.join(d, "work")
        try:
            spec = read_json(os.path.join(d, "spec.json"), {})
            prepare_work(work, spec, self.p.at("files"), self.stored)
        except (OSError, AgentError) as exc:
            self._abort(rec, f"cannot prepare the work dir: {exc}")
            return
        for name in ("rc", "pid"):
            unlink(os.path.join(d, name))
        token = new_token()
        env = dict(self.base_env)
        env.update(CLOUDSEND_ROOT=self.p.root, CLOUDSEND_JOB_ID=job_id, CLOUDSEND_JOB_DIR=work)
        env[TOKEN_VAR] = token
        if rec.get("env_id"):
            env["CLOUDSEND_ENV_DIR"] = self.p.env(rec["env_id"])
        cgroup = self._new_cgroup("job", job_id, token)
        try:
            pid = self.spawn(
                d,
                work,
                ["bash", "../run.sh"],
                os.path.join(d, "stdout.log"),
                os.path.join(d, "stderr.log"),
                env,
                cgroup,
            )
        except OSError as exc:
            remove_cgroup(cgroup)
            self._abort(rec, f"cannot start the job: {exc}")
            return
        pstart = proc_start(pid)
        rec.update(state=RUNNING, pid=pid, pstart=pstart, boot=self.boot, started=now())
        rec.update(token=token, cgroup=cgroup)
        self.save_job(rec)
        self._track(Proc("job", job_id, pid, pstart, True, int(rec.get("cpus") or 1)))

    def launch_env(self, rec: dict[str, Any]) -> None:
        d = self.p.env(rec["env_id"])
        token = new_token()
        env = dict(self.base_env)
        env.update(CLOUDSEND_ROOT=self.p.root, CLOUDSEND_ENV_DIR=d)
        env[TOKEN_VAR] = token
        cgroup = self._new_cgroup("env", rec["env_id"], token)
        try:
            pid = self.spawn(
                d, d, ["bash", "bootstrap.sh"], os.path.join(d, "bootstrap.log"), None, env, cgroup
            )
        except OSError as exc:
            remove_cgroup(cgroup)
            rec.update(state=FAILED, reason=f"cannot start: {exc}", ended=now())
            self.save_env(rec)
            self._env_settled(rec)
            return
        pstart = proc_start(pid)
        rec.update(pid=pid, pstart=pstart, boot=self.boot, started=now())
        rec.update(token=token, cgroup=cgroup)
        self.save_env(rec)
        self._track(Proc("env", rec["env_id"], pid, pstart, True, 0))

    def schedule(self) -> None:
        self.sched_dirty = False
        if not any(p.kind == "env" for p in self.live.values()):
            pending = [e for e in self.envs.values() if e["state"] == BUILDING]
            if pending:  # one bootstrap at a time (apt/dpkg locks), oldest first
                self.launch_env(min(pending, key=lambda e: int(e.get("seq") or 0)))
        free = self.slots - self.slots_used()
        if free <= 0 or not self.queue:
            return
        started = set()
        for job_id in self.queue:
            rec = self.jobs[job_id]
            cpus = int(rec.get("cpus") or 1)
            if (
                rec["state"] == QUEUE and cpus <= free
            ):  # smaller jobs may pass a big one that does not fit yet
                started.add(job_id)
                self.launch_job(rec)
                free = self.slots - self.slots_used()
                if free <= 0:
                    break
        self.queue = [j for j in self.queue if j not in started and self.jobs[j]["state"] == QUEUE]

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            proc = self.by_pid.get(pid)
            if proc is not None:
                self._finish(proc, status)

    def poll_adopted(self) -> None:
        for proc in [p for p in self.live.values() if not p.child]:
            if not alive(proc.pid, proc.pstart):
                self._finish(proc)  # rc file read after death: complete by then

    def _kill_at(self, job_id: str) -> float:
        rec = self.jobs.get(job_id)
        return float(rec.get("kill_at") or 0) if rec else 0.0

    def _kill_done(self, job_id: str) -> None:
        self.kills.discard(job_id)
        rec = self.jobs.get(job_id)
        if rec is not None:
            if rec.get("kill_at"):
                rec["kill_at"] = None
                self.save_job(rec)
            self._gc(rec.get("cgroup"))

    def expire_kills(self, everything: bool = False) -> None:
        t = time.time()
        due = [j for j in self.kills if everything or t >= self._kill_at(j)]
        if due:
            kill_trees([(self.jobs[j], True) for j in due if j in self.jobs], signal.SIGKILL)
        for job_id in due:
            self._kill_done(job_id)

    # --- leftovers: what an ended job left running ---------------------------------------------

    def _new_cgroup(self, kind: str, key: str, token: str) -> str | None:
        if not self.cg_base:
            return None
        path = os.path.join(self.cg_base, f"{kind}-{token}-{key}"[:255])
        try:
            os.mkdir(path)
        except OSError as exc:
            self.log(f"cannot make cgroup {path}: {exc}; tracking {kind} {key} without it")
            return None
        return path

    def _gc(self, cgroup: str | None) -> None:
        """Remove a launch's cgroup now, or once its last process has exited."""
        if cgroup and not remove_cgroup(cgroup):
            self.cg_gc[cgroup] = time.monotonic() + 30  # killed processes take a moment

    def gc_cgroups(self) -> bool:
        """True once none is left to remove."""
        t = time.monotonic()
        for path, give_up in list(self.cg_gc.items()):
            if remove_cgroup(path) or t > give_up:
                del self.cg_gc[path]
        return not self.cg_gc

    def orphans(self) -> set[int] | None:
        """Our children that are not job or bootstrap wrappers: orphans of our jobs, which
        the kernel hands us as their subreaper (None: the kernel does not list children)."""
        me = os.getpid()
        try:
            with open(f"/proc/{me}/task/{me}/children", "rb") as f:
                kids = {int(x) for x in f.read().split()}
        except (OSError, ValueError):
            return None
        return kids - {p.pid for p in self.live.values() if p.child}

    def sweep_leftovers(self, force: bool = False) -> None:
        """Jobs whose wrapper ended: whatever they left running (a daemon, a setsid child) gets
        SIGTERM now and SIGKILL after the grace, as on cancel. Cheap checks first (an empty
        cgroup; no orphan handed to us), a /proc scan at most every SCAN_EVERY otherwise."""
        todo: list[tuple[str, bool]] = []
        orphans: set[int] | None = None
        for job_id, (child, session) in list(self.sweep.items()):
            rec = self.jobs.get(job_id)
            if rec is None or ("job", job_id) in self.live:
                del self.sweep[job_id]
                continue
            if rec.get("cgroup"):  # nothing leaves its cgroup: empty means nothing is left
                empty = not cgroup_procs(rec["cgroup"])
            elif child:  # every leftover descends from an orphan the kernel gave us
                if orphans is None:
                    orphans = self.orphans()
                empty = orphans is not None and not orphans
            else:
                empty = False
            if empty:
                del self.sweep[job_id]
                self._clean(job_id, rec)
            else:
                todo.append((job_id, session))
        if not todo or (not force and time.monotonic() < self.next_scan):
            return
        self.next_scan = time.monotonic() + SCAN_EVERY
        table = ProcTable()
        for job_id, session in todo:
            del self.sweep[job_id]
            rec = self.jobs[job_id]
            pids = table.tree(rec, session)
            if not pids:
                self._clean(job_id, rec)
            elif job_id not in self.kills:
                self.log(f"job {job_id} left {len(pids)} processes running: killing them")
                signal_pids(pids, signal.SIGTERM)
                rec["kill_at"] = time.time() + KILL_GRACE
                self.kills.add(job_id)
                self.save_job(rec)

    def _clean(self, job_id: str, rec: dict[str, Any]) -> None:
        if job_id in self.kills:
            self._kill_done(job_id)  # nothing left to kill
        else:
            self._gc(rec.get("cgroup"))

    # --- main loop ---------------------------------------------------------------------------

    def agent_info(self, running: bool = True) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "slots": self.slots,
            "slots_used": self.slots_used(),
            "running": running,
        }

    def tick(self) -> None:
        answers = self.process_inbox()
        self.reap()
        if any(not p.child for p in self.live.values()):
            self.poll_adopted()
        if self.sweep:
            self.sweep_leftovers()
        if self.kills:
            self.expire_kills()
        if self.cg_gc:
            self.gc_cgroups()
        if self.sched_dirty:
            self.schedule()
        if self.dirty:
            self.write_snapshot(self.agent_info())
        for path, answer in answers:  # answered only once the snapshot shows the change
            write_json(path[:-4] + ".resp", answer)
            unlink(path)

    def timeout(self) -> float:
        t = 1.0
        if any(not p.child for p in self.live.values()):
            t = ADOPTED_POLL
        if self.kills:
            t = min(t, max(0.0, min(map(self._kill_at, self.kills)) - time.time()))
        if self.sweep:
            t = min(t, max(0.0, self.next_scan - time.monotonic()))
        if self.cg_gc:
            t = min(t, 0.1)
        return t

    def run(self, ready_fd: int) -> None:
        wake = open_fifo(self.p.wake)
        sig_r, sig_w = os.pipe()
        os.set_blocking(sig_r, False)
        os.set_blocking(sig_w, False)
        signal.set_wakeup_fd(sig_w)  # SIGCHLD/SIGTERM wake the select below at once

        def on_stop(signum: int, frame: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGCHLD, lambda s, f: None)
        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        become_subreaper()
        self.cg_base = setup_cgroups(self.p)
        self.load()
        self.recover()
        self.cleanup_inbox()
        self.dirty = True
        self.tick()
        os.write(ready_fd, b"ok %d\n" % os.getpid())
        os.close(ready_fd)
        self.log(
            f"started: pid {os.getpid()}, {self.slots} slots, {len(self.jobs)} jobs known, "
            + (f"cgroups under {self.cg_base}" if self.cg_base else "no cgroups")
        )
        while not self.stopping:
            with contextlib.suppress(InterruptedError):
                select.select([wake, sig_r], [], [], self.timeout())
            drain(wake)
            drain(sig_r)
            if not self.root_intact():
                # The host dir was wiped (or replaced): this daemon's jobs and state are gone,
                # and the next call starts a fresh daemon there. Leave nothing behind.
                self.log("root dir wiped: killing its processes and exiting")
                live = {(p.kind, p.key) for p in self.live.values()}
                targets = [
                    (rec, (kind, key) in live or key in self.kills or key in self.sweep)
                    for kind, recs in (("job", self.jobs), ("env", self.envs))
                    for key, rec in recs.items()
                    if rec.get("boot") == self.boot
                ]
                kill_trees(targets, signal.SIGKILL)
                remove_cgroups(self.cg_base, 1.0)
                return
            try:
                self.tick()
            except Exception:  # keep serving; the log says what went wrong
                import traceback

                self.log("tick failed:\n" + traceback.format_exc())
                time.sleep(0.2)
        # no one would finish off cancelled jobs (or leftovers) otherwise
        self.sweep_leftovers(force=True)
        self.expire_kills(everything=True)
        wait_until(self.gc_cgroups, 0.5)
        if self.cg_base:
            remove_cgroup(self.cg_base)  # unless jobs still run in it (stop without killing)
        self.write_snapshot(self.agent_info(running=False))
        unlink(self.p.pid)
        self.log(f"stopped ({len(self.live)} processes left running)")

    def root_intact(self) -> bool:
        try:
            st = os.stat(self.p.lock)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self.lock_id

    def cleanup_inbox(self) -> None:
        # answers nobody collected (their CLI died) and stale temp files
        try:
            names = os.listdir(self.p.inbox)
        except FileNotFoundError:
            return
        limit = time.time() - 3600
        for name in names:
            path = os.path.join(self.p.inbox, name)
            try:
                if not name.endswith(".req") and os.stat(path).st_mtime < limit:
                    os.unlink(path)
            except OSError:
                pass

    def log(self, message: str) -> None:
        sys.stderr.write(time.strftime("%Y-%m-%d %H:%M:%S ") + message + "\n")
        sys.stderr.flush()


USE_POSIX_SPAWN = hasattr(os, "posix_spawn") and not os.environ.get("CLOUDSEND_AGENT_NO_SPAWN")


SHA256_HEX = frozenset("0123456789abcdef")


class StoredFiles:
    """The content-addressed uploads (ROOT/files/<sha256>) are shared by every job that links
    them, so no job may change one: each is made read-only (owner r, x kept), and checked
    against its name before a job uses it, unless it is unchanged (same inode, size, mtime,
    ctime) since it was last found intact. Read-only stops a job that writes to its input
    (`echo >> input.txt`: Permission denied; a job of root gets a copy, see prepare_work);
    the check catches what is left (a job's chmod): a changed copy is removed (the next
    `cloudsend run` uploads it again) and the job that would have read it is aborted, never
    run on the changed content."""

    def __init__(self) -> None:
        self.intact: dict[str, tuple[int, ...]] = {}  # path -> stat signature when checked
        self.removed: set[str] = set()

    @staticmethod
    def signature(st: os.stat_result) -> tuple[int, ...]:
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def guard(self, src: str, rel: str) -> None:
        """Make the stored file `src` read-only and check it is what was uploaded."""
        import hashlib

        try:
            st = os.stat(src)
        except OSError:
            if src in self.removed:
                raise AgentError(self.changed(rel)) from None
            raise AgentError(f"input missing: {src} (for {rel})") from None
        if not stat.S_ISREG(st.st_mode):
            if st.st_mode & 0o077:  # a folder: owner-only, as everything under the root
                os.chmod(src, 0o700)
            return
        mode = (stat.S_IMODE(st.st_mode) & 0o500) | 0o400
        if stat.S_IMODE(st.st_mode) != mode:
            os.chmod(src, mode)
            st = os.stat(src)
        name = os.path.basename(src)
        if self.intact.get(src) == self.signature(st) or len(name) != 64:
            return
        if not SHA256_HEX.issuperset(name):
            return  # not content-addressed: nothing to check it against
        digest = hashlib.sha256()
        with open(src, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != name:
            unlink(src)
            self.intact.pop(src, None)
            self.removed.add(src)
            raise AgentError(self.changed(rel))
        self.intact[src] = self.signature(st)
        self.removed.discard(src)

    @staticmethod
    def changed(rel: str) -> str:
        return (
            f"input {rel}: the host's stored copy was changed after upload (a job wrote to "
            "its input); it was removed and `cloudsend run` uploads it again"
        )


def prepare_work(
    work: str, spec: dict[str, Any], files: str, stored: StoredFiles | None = None
) -> None:
    """A fresh work dir with the job's inputs linked (or copied) at their relative paths.
    Uploads in ROOT/files are made read-only and checked first (StoredFiles), then linked;
    copied instead (the job's own, writable copy) with copy: true, or when the agent runs as
    root, whom read-only modes do not stop."""
    import shutil

    stored = StoredFiles() if stored is None else stored
    as_root = os.geteuid() == 0  # not bound by read-only modes: gets copies of the uploads
    if os.path.lexists(work):
        shutil.rmtree(work)
    os.makedirs(work)
    real_work = os.path.realpath(work)
    for rel, src in sorted((spec.get("links") or {}).items()):
        dst = os.path.join(work, safe_rel(rel))
        if within(src, files):
            stored.guard(src, rel)
        elif not os.path.exists(src):
            raise AgentError(f"input missing: {src} (for {rel})")
        if not within(os.path.realpath(os.path.dirname(dst)), real_work):
            # e.g. "d" linked to a dir and "d/f" inside it: never write into linked inputs
            raise AgentError(f"link {rel} would be created outside the work dir")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if not (spec.get("copy") or (as_root and within(src, files))):
            os.symlink(src, dst)
        elif os.path.isdir(src):
            shutil.copytree(src, dst, symlinks=True)
        else:
            shutil.copy2(src, dst)
            os.chmod(dst, stat.S_IMODE(os.stat(dst).st_mode) | 0o600)  # the job's own copy


def open_fifo(path: str) -> int:
    with contextlib.suppress(FileExistsError):
        os.mkfifo(path, 0o600)
    # O_RDWR: the daemon is also a writer, so it never sees EOF when a poker leaves
    return os.open(path, os.O_RDWR | os.O_NONBLOCK)


def drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass


def poke(paths: Paths) -> None:
    try:
        fd = os.open(paths.wake, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # no FIFO or no reader yet: the daemon reads the inbox when it starts
        return
    try:
        os.write(fd, b"!")
    except OSError:
        pass  # full: a wake-up is pending anyway
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# starting and finding the daemon


def lock_free(paths: Paths) -> bool:
    """True when no daemon holds agent.lock (a shared probe, so probes never collide)."""
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise
    finally:
        os.close(fd)
    return True


def configured_slots(paths: Paths) -> int:
    cfg = read_json(paths.agent_json, {})
    slots = cfg.get("slots") if isinstance(cfg, dict) else None
    return int(slots) if isinstance(slots, int) and slots > 0 else (os.cpu_count() or 1)


def make_dirs(paths: Paths) -> None:
    for d in (paths.root, paths.jobs, paths.envs, paths.outbox, paths.inbox, paths.at("files")):
        os.makedirs(d, mode=0o700, exist_ok=True)


def owner_only(paths: Paths) -> None:
    """The root and what cloudsend put there before the agent ran (mkdir -p files, the
    uploaded agent.py, Python's __pycache__) become owner-only: the agent's umask (077) covers
    everything it creates itself, not what came first."""
    cache = paths.at("__pycache__")
    names = [paths.root, paths.jobs, paths.envs, paths.outbox, paths.inbox, paths.at("files")]
    names += [paths.at("agent.py"), cache] + [os.path.join(cache, n) for n in listdir(cache)]
    for name in names:
        try:
            mode = os.lstat(name).st_mode
        except OSError:
            continue
        if mode & 0o077 and not stat.S_ISLNK(mode):
            with contextlib.suppress(OSError):
                os.chmod(name, stat.S_IMODE(mode) & 0o700)


def ensure_daemon(paths: Paths) -> tuple[int, bool]:
    """(daemon pid, started by this call)."""
    if not lock_free(paths):
        return running_pid(paths), False
    return start_daemon(paths)


def running_pid(paths: Paths) -> int:
    # the pid file may lag a daemon that just took the lock
    for _ in range(100):
        pid = read_int(paths.pid)
        if pid and proc_start(pid) is not None:
            return pid
        time.sleep(0.01)
    return read_int(paths.pid) or 0


def start_daemon(paths: Paths) -> tuple[int, bool]:
    make_dirs(paths)
    slots = configured_slots(paths)
    sys.stdout.flush()
    sys.stderr.flush()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked daemon
        code = 1
        try:
            os.close(ready_r)
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            detach(paths, keep=ready_w)
            code = daemon_main(paths, slots, ready_w)
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(ready_w)
    os.waitpid(pid, 0)
    answer = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([ready_r], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(ready_r, 256)
        if not chunk:
            break
        answer += chunk
    os.close(ready_r)
    words = answer.split()
    if words[:1] == [b"ok"]:
        return int(words[1]), True
    if words[:1] == [b"busy"]:  # another starter won the race
        return running_pid(paths), False
    raise AgentError(f"the agent daemon failed to start; see {paths.log}")


def detach(paths: Paths, keep: int) -> None:
    """stdin from /dev/null, stdout/stderr to agent.log, every other inherited fd closed."""
    null = os.open(os.devnull, os.O_RDONLY)
    log = os.open(paths.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    try:
        fds = [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 1024))
    for fd in fds:  # the caller's pipes must not stay open (its ssh channel would hang)
        if fd > 2 and fd != keep:
            with contextlib.suppress(OSError):
                os.close(fd)
    os.chdir(paths.root)


def daemon_main(paths: Paths, slots: int, ready_fd: int) -> int:
    lock = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + 0.5
    while True:  # a CLI's shared probe may hold the lock for a moment
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError:
            if time.monotonic() > deadline:
                os.write(ready_fd, b"busy\n")
                return 0
            time.sleep(0.005)
    write_atomic(paths.pid, str(os.getpid()))
    daemon = Daemon(paths, slots)
    st = os.fstat(lock)
    daemon.lock_id = (st.st_dev, st.st_ino)
    daemon.run(ready_fd)
    return 0


# ---------------------------------------------------------------------------------------------
# CLI commands (each returns the JSON document to print)


def request(paths: Paths, body: dict[str, Any]) -> dict[str, Any]:
    """Hand a request to the daemon and wait for its answer (restarting a dead daemon)."""
    name = f"{time.time_ns()}-{os.getpid()}"
    req = os.path.join(paths.inbox, name + ".req")
    resp = os.path.join(paths.inbox, name + ".resp")
    write_json(req, body)  # its temp name does not end in .req: the daemon ignores it until done
    poke(paths)
    start = time.monotonic()
    check_at = start + 1.0
    delay = 0.0005
    while True:
        answer = read_json(resp)
        if answer is not None:
            unlink(resp)
            if isinstance(answer, dict) and "error" in answer:
                raise AgentError(str(answer["error"]))
            return answer
        t = time.monotonic()
        if t - start > REQUEST_TIMEOUT:
            raise AgentError(f"the agent daemon did not answer in {REQUEST_TIMEOUT:.0f}s")
        if t > check_at:  # the daemon died meanwhile: a new one picks the request up
            ensure_daemon(paths)
            poke(paths)
            check_at = t + 1.0
        time.sleep(delay)
        delay = min(delay * 1.5, 0.02)


def validate_submit(doc: object) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise AgentError('submit expects {"envs": [...], "jobs": [...]} on stdin')
    envs, jobs = doc.get("envs") or [], doc.get("jobs") or []
    if not isinstance(envs, list) or not isinstance(jobs, list):
        raise AgentError('"envs" and "jobs" must be lists')
    for env in envs:
        if not isinstance(env, dict) or not isinstance(env.get("script"), str):
            raise AgentError(f"an env needs env_id and script: {env!r}")
        check_id(env.get("env_id"), "env_id")
    for job in jobs:
        if not isinstance(job, dict) or not isinstance(job.get("script"), str):
            raise AgentError((f"a job needs job_id and script: {job!r}")[:300])
        check_id(job.get("job_id"), "job_id")
        for key, default in JOB_DEFAULTS.items():  # protocol.JobSpec's optional keys
            if key not in job:
                job[key] = default.copy() if isinstance(default, (dict, list)) else default
        for key in ("attempt", "cpus"):
            if not isinstance(job[key], int) or isinstance(job[key], bool) or job[key] < 1:
                raise AgentError(f"job {job['job_id']}: {key} must be an integer >= 1")
        if job["env_id"] is not None:
            check_id(job["env_id"], "env_id")
        links = job["links"]
        if not isinstance(links, dict):
            raise AgentError(f"job {job['job_id']}: links must be an object")
        for rel, src in links.items():
            safe_rel(rel)
            if not isinstance(src, str) or not os.path.isabs(src):
                raise AgentError(f"job {job['job_id']}: link source must be absolute: {src!r}")
        if not isinstance(job["outputs"], list):
            raise AgentError(f"job {job['job_id']}: outputs must be a list")
        for out in job["outputs"]:
            safe_rel(out)
    return {"op": "submit", "envs": envs, "jobs": jobs}


def cmd_start(paths: Paths, slots: int | None) -> dict[str, Any]:
    make_dirs(paths)
    owner_only(paths)
    cfg = read_json(paths.agent_json, {})
    changed = False
    if slots is not None and (not isinstance(cfg, dict) or cfg.get("slots") != slots):
        write_json(paths.agent_json, {"slots": slots})
        changed = True
    elif not isinstance(cfg, dict) or not cfg.get("slots"):
        write_json(paths.agent_json, {"slots": os.cpu_count() or 1})
    pid, started = ensure_daemon(paths)
    if changed and not started:
        request(paths, {"op": "reload"})
    return {"pid": pid, "started": started, "slots": configured_slots(paths)}


def cmd_open(paths: Paths, slots: int | None, cancel_all: bool) -> bytes:
    """A run's first call: start (as cmd_start), cancel every job if asked (an earlier run's),
    then the status: three calls' answers in one, so one round trip."""
    started = cmd_start(paths, slots)
    cancelled = None
    if cancel_all:
        cancelled = request(paths, {"op": "cancel", "jobs": [], "all": True})["cancelled"]
    if not wait_until(lambda: os.path.exists(paths.status), 10.0):  # a new daemon's first
        raise AgentError("no status yet (the daemon has not written one)")
    head = json.dumps({"start": started, "cancelled": cancelled})
    return head[:-1].encode() + b', "status": ' + cmd_status(paths, None, 0).strip() + b"}"


def cmd_status(paths: Paths, since: int | None, wait: float) -> bytes:
    if since is not None and wait > 0:
        deadline = time.monotonic() + wait
        while read_int(paths.version) in (since, None) and time.monotonic() < deadline:
            time.sleep(0.02)
    try:
        with open(paths.status, "rb") as f:
            return f.read()  # printed as is: no parsing, cheap with thousands of jobs
    except FileNotFoundError:
        raise AgentError("no status yet (the daemon has not written one)") from None


def cmd_tail(paths: Paths, job_id: str, stream: str, lines: int) -> dict[str, Any]:
    if stream not in ("stdout", "stderr"):
        raise AgentError("--stream must be stdout or stderr")
    check_id(job_id, "job_id")
    if not os.path.isdir(paths.job(job_id)):
        raise AgentError(f"unknown job {job_id}")
    text = tail_text(paths.job(job_id, stream + ".log"), lines)
    return {"job_id": job_id, "stream": stream, "text": text}


def cmd_pack(paths: Paths, out: str, job_ids: list[str]) -> dict[str, Any]:
    import tarfile

    out = os.path.abspath(os.path.join(paths.outbox, out))  # relative: under outbox/
    plan: list[tuple[str, str]] = []
    missing: dict[str, list[str]] = {}
    refused: dict[str, list[str]] = {}
    for job_id in job_ids:
        check_id(job_id, "job_id")
        spec = read_json(paths.job(job_id, "spec.json"))
        if not isinstance(spec, dict):
            raise AgentError(f"unknown job {job_id}")
        for name in ("stdout.log", "stderr.log"):
            if os.path.isfile(paths.job(job_id, name)):
                plan.append((paths.job(job_id, name), f"{job_id}/{name}"))
        work = os.path.realpath(paths.job(job_id, "work"))
        for output in spec.get("outputs") or []:
            rel = safe_rel(output)
            full = os.path.join(work, rel)
            if not os.path.lexists(full) or not os.path.exists(full):
                missing.setdefault(job_id, []).append(output)
                continue
            real = os.path.realpath(full)
            if not within(real, work):  # a symlink pointing out of the work dir
                refused.setdefault(job_id, []).append(output)
                continue
            plan.append((real, f"{job_id}/{rel}"))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = f"{out}.{os.getpid()}.tmp"
    try:
        with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
            for src, arcname in plan:
                tar.add(src, arcname=arcname)
        os.replace(tmp, out)
    finally:
        unlink(tmp)
    return {"path": out, "jobs": list(job_ids), "missing": missing, "refused": refused}


def cmd_collect(
    paths: Paths, out: str, since: int | None, wait: float, want: dict[str, Any]
) -> dict[str, Any]:
    """status and pack in one call, so a watcher pays one round trip per round: wait for a
    change (like status), then pack the wanted jobs (job_id → attempt) that are final.
    Archives of earlier rounds (collect-*, older than a minute: fetched by now) are removed,
    which saves the client a round trip to delete each one."""
    cutoff = time.time() - 60
    with contextlib.suppress(OSError):
        for name in os.listdir(paths.outbox):
            full = os.path.join(paths.outbox, name)
            if name.startswith("collect-") and os.path.getmtime(full) < cutoff:
                unlink(full)
    status = json.loads(cmd_status(paths, since, wait))
    jobs = status.get("jobs", {})
    ready = sorted(
        job_id
        for job_id, attempt in want.items()
        if job_id in jobs
        and jobs[job_id].get("attempt") == attempt
        and jobs[job_id].get("state") in FINAL_STATES
    )
    packed = cmd_pack(paths, out, ready) if ready else None
    return {"status": status, "pack": packed}


def cmd_stop(paths: Paths, kill_jobs: bool) -> dict[str, Any]:
    was_running = os.path.exists(paths.lock) and not lock_free(paths)
    pid = read_int(paths.pid) if was_running else None
    if was_running and pid:
        signal_pid(pid, signal.SIGTERM)
        if not wait_until(lambda: lock_free(paths), 10.0):
            signal_pid(pid, signal.SIGKILL)
            wait_until(lambda: lock_free(paths), 5.0)
    killed: list[str] = []
    if kill_jobs and os.path.isdir(paths.root):
        killed = kill_everything(paths)
    return {"stopped": was_running, "pid": pid, "killed": killed}


def wait_until(pred: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def kill_everything(paths: Paths) -> list[str]:
    """With no daemon (we hold its lock): kill every job and bootstrap still running, and
    every process any of them left behind (SIGTERM, SIGKILL after the grace)."""
    lock = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if not wait_until(lambda: try_lock(lock), 5.0):
            raise AgentError("a daemon restarted meanwhile; run stop --kill-jobs again")
        store = Store(paths, configured_slots(paths))
        store.load()
        boot = boot_id()
        victims: list[tuple[str, dict[str, Any]]] = []
        targets: list[tuple[dict[str, Any], bool]] = []
        for kind, recs, active in (
            ("job", store.jobs, (RUNNING, QUEUE)),
            ("env", store.envs, (BUILDING,)),
        ):
            for key, rec in recs.items():
                if rec.get("boot") and rec["boot"] != boot:
                    continue  # a host restart ended all of it
                d = paths.job(key) if kind == "job" else paths.env(key)
                if rec["state"] in active and launched(rec, d):
                    pid, pstart = recorded_process(rec, d)
                    if pid and alive(pid, pstart):
                        victims.append((kind, rec))
                        targets.append(({**rec, "pid": pid, "pstart": pstart}, True))
                        continue
                targets.append((rec, bool(rec.get("kill_at"))))
        # and whatever carries this root in its environment, or sits in one of our cgroups
        base = read_text(paths.at("cgroup"))
        cgroups = [os.path.join(base, n) for n in listdir(base)] if base else []
        targets += [({"cgroup": cg}, False) for cg in cgroups if os.path.isdir(cg)]
        targets.append(({"root": paths.root}, False))
        hit = kill_trees(targets, signal.SIGTERM)
        wait_until(lambda: not any(alive(p, None) for p in hit), KILL_GRACE)
        kill_trees(targets, signal.SIGKILL)
        killed = []
        for kind, rec in victims:
            rec.update(ended=now())
            if kind == "job":
                rec.update(state=ABORTED, reason="killed by stop --kill-jobs")
                killed.append(rec["job_id"])
            else:
                rec.update(state=FAILED, reason="killed by stop --kill-jobs")
                killed.append(rec["env_id"])
        settled = {id(rec) for _, rec in victims}
        for kind, recs in (("job", store.jobs), ("env", store.envs)):
            for rec in recs.values():
                if rec.get("kill_at") or id(rec) in settled:
                    rec["kill_at"] = None
                    (store.save_job if kind == "job" else store.save_env)(rec)
        if store.dirty:
            store.write_snapshot(
                {"pid": None, "slots": store.slots, "slots_used": 0, "running": False}
            )
        for rec, _ in targets:
            remove_cgroup(rec.get("cgroup"))
        remove_cgroups(base, 1.0)
        return killed
    finally:
        os.close(lock)


def read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# argument parsing (hand-rolled: argparse would cost import time on every status call)

USAGE = (
    "usage: agent.py --root ROOT start [--slots N] | open [--slots N] [--cancel-all] | "
    "submit < specs.json | "
    "status [--since V] [--wait S] | cancel JOB... | cancel --all | "
    "tail JOB [--stream stdout|stderr] [--lines N] | pack --out PATH JOB... | "
    "collect --out PATH [--since V] [--wait S] < want.json | stop [--kill-jobs]"
)
OPTIONS: dict[str, dict[str, Any]] = {
    "start": {"--slots": int},
    "open": {"--slots": int, "--cancel-all": None},
    "submit": {},
    "status": {"--since": int, "--wait": float},
    "cancel": {"--all": None},
    "tail": {"--stream": str, "--lines": int},
    "pack": {"--out": str},
    "collect": {"--out": str, "--since": int, "--wait": float, "--stream": None},
    "stop": {"--kill-jobs": None},
}


class UsageError(AgentError):
    pass


def parse(argv: list[str]) -> tuple[str, str, dict[str, Any], list[str]]:
    root = None
    rest = list(argv)
    while rest and rest[0].startswith("--root"):
        opt = rest.pop(0)
        if "=" in opt:
            root = opt.split("=", 1)[1]
        elif rest:
            root = rest.pop(0)
    if not root or not rest:
        raise UsageError(USAGE)
    command = rest.pop(0)
    if command not in OPTIONS:
        raise UsageError(f"unknown command {command!r}; {USAGE}")
    spec = OPTIONS[command]
    opts: dict[str, Any] = {}
    args: list[str] = []
    while rest:
        word = rest.pop(0)
        if word.startswith("--"):
            name, eq, value = word.partition("=")
            if name not in spec:
                raise UsageError(f"{command}: unknown option {name}")
            kind = spec[name]
            if kind is None:
                opts[name] = True
                continue
            if not eq:
                if not rest:
                    raise UsageError(f"{command}: {name} needs a value")
                value = rest.pop(0)
            try:
                opts[name] = kind(value)
            except ValueError:
                raise UsageError(f"{command}: bad value for {name}: {value!r}") from None
        else:
            args.append(word)
    return root, command, opts, args


def run(argv: list[str]) -> dict[str, Any] | bytes:
    os.umask(0o077)  # the root is private: state, logs, work dirs, envs (and jobs' own files)
    root, command, opts, args = parse(argv)
    paths = Paths(root)
    if command == "stop":
        return cmd_stop(paths, bool(opts.get("--kill-jobs")))
    if command in ("start", "open"):
        if opts.get("--slots") is not None and opts["--slots"] < 1:
            raise UsageError("--slots must be >= 1")
        if command == "open":
            return cmd_open(paths, opts.get("--slots"), bool(opts.get("--cancel-all")))
        return cmd_start(paths, opts.get("--slots"))
    if not os.path.isdir(paths.inbox):
        make_dirs(paths)
    ensure_daemon(paths)
    if command == "status":
        return cmd_status(paths, opts.get("--since"), float(opts.get("--wait") or 0))
    if command == "submit":
        try:
            doc = json.loads(sys.stdin.read() or "{}")
        except ValueError as exc:
            raise AgentError(f"submit: stdin is not JSON: {exc}") from None
        return request(paths, validate_submit(doc))
    if command == "cancel":
        if not args and not opts.get("--all"):
            raise UsageError("cancel needs JOB ids or --all")
        return request(paths, {"op": "cancel", "jobs": args, "all": bool(opts.get("--all"))})
    if command == "tail":
        if len(args) != 1:
            raise UsageError("tail needs exactly one JOB id")
        lines = opts.get("--lines")
        return cmd_tail(
            paths, args[0], opts.get("--stream") or "stdout", 50 if lines is None else lines
        )
    if command == "collect":
        if not opts.get("--out"):
            raise UsageError("collect needs --out PATH")
        try:
            want = json.loads(sys.stdin.read() or "{}")
        except ValueError as exc:
            raise AgentError(f"collect: stdin is not JSON: {exc}") from None
        if not isinstance(want, dict):
            raise AgentError("collect: stdin must be a JSON object {job_id: attempt}")
        doc = cmd_collect(
            paths, opts["--out"], opts.get("--since"), float(opts.get("--wait") or 0), want
        )
        if opts.get("--stream"):
            return Streamed(doc, (doc.get("pack") or {}).get("path"))
        return doc
    if command == "pack":
        if not opts.get("--out") or not args:
            raise UsageError("pack needs --out PATH and at least one JOB id")
        return cmd_pack(paths, opts["--out"], args)
    raise UsageError(USAGE)  # pragma: no cover


class Streamed(dict):
    """An answer whose archive follows its JSON line on stdout (collect --stream): the
    client reads both from one command, and the archive file is removed once sent."""

    def __init__(self, doc: dict[str, Any], archive: str | None) -> None:
        super().__init__(doc)
        self.archive = archive


def send_archive(path: str) -> None:
    with open(path, "rb") as fh:
        while True:
            data = fh.read(1 << 20)
            if not data:
                break
            sys.stdout.buffer.write(data)
    sys.stdout.flush()
    unlink(path)  # sent whole; one cut short stays for collect's clean-up of old archives


def main(argv: list[str] | None = None) -> int:
    try:
        out = run(sys.argv[1:] if argv is None else argv)
        code = 0
    except UsageError as exc:
        out, code = {"error": str(exc)}, 2
    except AgentError as exc:
        out, code = {"error": str(exc)}, 1
    except Exception as exc:  # still one JSON document, whatever broke
        out, code = {"error": f"{type(exc).__name__}: {exc}"}, 1
    if isinstance(out, bytes):
        sys.stdout.buffer.write(out.rstrip(b"\n") + b"\n")
    else:
        sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    if isinstance(out, Streamed) and out.archive:
        try:
            send_archive(out.archive)
        except OSError:  # the reader went away: the next round packs these jobs again
            return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
