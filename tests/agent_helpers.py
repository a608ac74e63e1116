"""Drive the host agent the way cloudsend does: `python agent.py --root ROOT ...` subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cloudsend.agent import AGENT_PATH

FINAL = ("DONE", "ABORTED")


class AgentCallError(AssertionError):
    def __init__(self, args: tuple[str, ...], code: int, doc: dict[str, Any], stderr: str):
        super().__init__(f"agent {args} exited {code}: {doc} {stderr}")
        self.code, self.doc = code, doc


class Agent:
    """One host root; every call is a fresh agent process, as over ssh."""

    def __init__(self, root: Path, python: str = sys.executable) -> None:
        self.root = root
        self.python = python
        self.env: dict[str, str] = dict(os.environ)

    def call(self, *args: str, stdin: str | None = None, check: bool = True) -> dict[str, Any]:
        proc = subprocess.run(
            [self.python, str(AGENT_PATH), "--root", str(self.root), *args],
            input=stdin if stdin is not None else "",  # never the test runner's own stdin
            capture_output=True,
            text=True,
            timeout=60,
            env=self.env,
        )
        lines = proc.stdout.splitlines()
        assert len(lines) == 1, f"one JSON document expected, got {proc.stdout!r} {proc.stderr!r}"
        doc = json.loads(lines[0])
        if check and (proc.returncode != 0 or "error" in doc):
            raise AgentCallError(args, proc.returncode, doc, proc.stderr)
        if not check:
            doc["_rc"] = proc.returncode
        return doc

    def start(self, slots: int) -> dict[str, Any]:
        return self.call("start", "--slots", str(slots))

    def submit(
        self, jobs: Iterable[dict[str, Any]] = (), envs: Iterable[dict[str, Any]] = ()
    ) -> dict[str, Any]:
        return self.call("submit", stdin=json.dumps({"envs": list(envs), "jobs": list(jobs)}))

    def status(self) -> dict[str, Any]:
        return self.call("status")

    def wait(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 15.0, every: float = 0.05
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if pred(st):
                return st
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting; last status: {st}")
            time.sleep(every)

    def wait_final(self, job_ids: Iterable[str], timeout: float = 15.0) -> dict[str, Any]:
        ids = list(job_ids)
        return self.wait(
            lambda st: all(st["jobs"].get(j, {}).get("state") in FINAL for j in ids), timeout
        )

    def wait_state(self, job_id: str, state: str, timeout: float = 15.0) -> dict[str, Any]:
        return self.wait(lambda st: st["jobs"].get(job_id, {}).get("state") == state, timeout)

    def daemon_pid(self) -> int:
        return int((self.root / "agent.pid").read_text())

    def kill_daemon(self) -> int:
        """SIGKILL the daemon and wait until its lock is free (it really is gone)."""
        pid = self.daemon_pid()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while process_alive(pid):
            assert time.monotonic() < deadline, "daemon survived SIGKILL"
            time.sleep(0.01)
        return pid


def job(job_id: str, script: str, **fields: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "job_id": job_id,
        "attempt": 1,
        "env_id": None,
        "cpus": 1,
        "script": script,
        "links": {},
        "copy": False,
        "outputs": [],
    }
    spec.update(fields)
    return spec


def process_alive(pid: int) -> bool:
    """Alive and not a zombie (a killed daemon may linger unreaped under a non-reaping init)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rindex(b")") + 2 :].split()[0] not in (b"Z", b"X")


def group_alive(pgid: int) -> bool:
    """Some live (non-zombie) process is still in this process group."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def shut_down(a: Agent, timeout: float = 3) -> None:
    """Stop the agent and its jobs; nothing of this host may outlive the test."""
    if a.root.exists():
        a.call("stop", "--kill-jobs")
    deadline = time.monotonic() + timeout
    while processes_under(a.root):
        assert time.monotonic() < deadline, f"left running: {processes_under(a.root)}"
        time.sleep(0.05)


def processes_under(root: Path) -> list[int]:
    """Live processes whose cwd is inside root: the daemon (cwd ROOT) and every job."""
    found = []
    base = str(root.resolve())
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:
                continue
            if (cwd == base or cwd.startswith(base + "/")) and process_alive(int(entry)):
                found.append(int(entry))
    return found


def intervals(path: Path) -> dict[str, tuple[float, float]]:
    """Read `start NAME T` / `end NAME T` lines that jobs append to a shared file."""
    starts: dict[str, float] = {}
    spans: dict[str, tuple[float, float]] = {}
    for line in path.read_text().splitlines():
        kind, name, t = line.split()
        if kind == "start":
            starts[name] = float(t)
        else:
            spans[name] = (starts[name], float(t))
    return spans


def max_load(spans: dict[str, tuple[float, float]], weight: dict[str, int] | None = None) -> int:
    """Largest total weight of intervals overlapping at one instant."""
    events = []
    for name, (a, b) in spans.items():
        w = (weight or {}).get(name, 1)
        events += [(a, 1, w), (b, 0, -w)]  # ends sort before starts at the same instant
    load = peak = 0
    for _, _, w in sorted(events):
        load += w
        peak = max(peak, load)
    return peak


def timed_script(log: Path, name: str, body: str) -> str:
    """A job script that logs its start and end times (from inside the job) around body."""
    stamp = "$(date +%s.%N)"
    return f"echo start {name} {stamp} >> {log}\n{body}\necho end {name} {stamp} >> {log}\n"
