"""Detached runs (`cloudsend run --detach`, `cloudsend attach`): the watcher as a daemon.

One watcher per project, whether in a terminal (`run`) or detached: the owner holds an flock
on `watcher.lock` in the project's state folder for as long as it lives (the kernel releases
it when the process dies, SIGKILL included). Beside it:

    watcher.lock   the owner test (flock)
    watcher.pid    the live watcher's pid
    watcher.json   what the last watcher recorded (WatcherRecord): pid, run, whether detached,
                   and once it ended its exit code, message and summary
    watcher.log    the detached watcher's stdout and stderr

What a CLI call does given those (attach, start, restart, show the outcome) is `decide`, a
pure function. A detached watcher is the same pipeline as `run` (deploy, submit, watch,
re-queue on host loss, fetch, auto_stop): a restarted one resumes from the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import IO, Any, Literal

from cloudsend.config.layout import ProjectPaths
from cloudsend.errors import StateError
from cloudsend.pipeline.reporting import EnvActivity, JobView

Command = Literal["run", "run-detach", "attach"]


class Action(str, Enum):
    ATTACH = "attach"  # a watcher lives: follow it (never start a rival)
    START = "start"  # no watcher: start one (the run resumes from the store)
    RESTART = "restart"  # the last watcher died before the run ended: start one again
    OUTCOME = "outcome"  # the last watcher ended the run: show how it ended
    NOTHING = "nothing"  # attach with no watcher ever recorded: nothing to attach to


def decide(command: Command, lock_held: bool, recorded: bool, ended: bool) -> Action:
    """What `command` does: `lock_held` (a watcher lives), `recorded` (a watcher.json
    exists), `ended` (it recorded how the run ended)."""
    if lock_held:
        return Action.ATTACH
    if recorded and not ended:
        return Action.RESTART  # killed (SIGKILL, reboot) mid-run: it resumes
    if command == "attach":
        return Action.OUTCOME if recorded else Action.NOTHING
    return Action.START


@dataclass
class WatcherRecord:
    pid: int
    detached: bool
    started: float
    run_id: int | None = None
    ended: float | None = None
    exit_code: int | None = None
    message: str = ""  # the error the run ended with (exit_code != 0)
    summary: dict[str, Any] = field(default_factory=dict)  # ui.summary_doc

    @property
    def is_ended(self) -> bool:
        return self.exit_code is not None


@dataclass(frozen=True)
class WatcherFiles:
    state_dir: Path

    @property
    def lock(self) -> Path:
        return self.state_dir / "watcher.lock"

    @property
    def pid(self) -> Path:
        return self.state_dir / "watcher.pid"

    @property
    def record(self) -> Path:
        return self.state_dir / "watcher.json"

    @property
    def log(self) -> Path:
        return self.state_dir / "watcher.log"

    @classmethod
    def of(cls, paths: ProjectPaths) -> WatcherFiles:
        return cls(paths.state_dir)

    # ---- the record -----------------------------------------------------------------

    def read(self) -> WatcherRecord | None:
        try:
            doc = json.loads(self.record.read_text())
            return WatcherRecord(**doc)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):  # torn or foreign: as if none
            return None

    def write(self, record: WatcherRecord) -> None:
        tmp = self.record.with_suffix(f".json.{os.getpid()}")
        try:
            tmp.write_text(json.dumps(asdict(record)))
            os.replace(tmp, self.record)
        except OSError as exc:
            raise StateError(f"cannot write {self.record}: {exc}") from exc

    # ---- the lock -------------------------------------------------------------------

    def lock_held(self) -> bool:
        """True while a watcher (in a terminal or detached) holds the lock."""
        lock = self.try_lock()
        if lock is None:
            return True
        lock.close()
        return False

    def try_lock(self) -> IO[bytes] | None:
        """The lock, held until the returned file is closed (or the process ends); None
        when another process holds it."""
        fh = open(self.lock, "ab")  # noqa: SIM115 - held open as the lock
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return None
        return fh

    def live_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(self.pid.read_text().split()[0])
        return None


class Ownership:
    """This process is the project's watcher: the lock held, pid and record written."""

    def __init__(self, files: WatcherFiles, detached: bool) -> None:
        self.files = files
        lock = files.try_lock()
        if lock is None:
            raise StateError(
                "another cloudsend watches this project's run",
                hint="`cloudsend attach` follows it",
            )
        self._lock = lock
        self.record = WatcherRecord(pid=os.getpid(), detached=detached, started=time.time())
        files.pid.write_text(f"{os.getpid()}\n")
        files.write(self.record)

    def opened(self, run_id: int) -> None:
        self.record.run_id = run_id
        self.files.write(self.record)

    def ended(self, exit_code: int, message: str, summary: dict[str, Any]) -> None:
        self.record.ended = time.time()
        self.record.exit_code = exit_code
        self.record.message = message
        self.record.summary = summary
        self.files.write(self.record)

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self.files.pid.unlink()
        self._lock.close()


def spawn(files: WatcherFiles, serve: Callable[[], int], argv: Sequence[str] = ()) -> int:
    """Run `serve` in a daemon: double fork, setsid, stdio on watcher.log; the daemon is not
    a child of this process and survives its terminal closing and this process being killed.
    Returns the pid of the intermediate child (already reaped); the daemon exits with what
    `serve` returns. Fork keeps only the caller's thread (a lock another thread held stays
    locked in the child): with other threads running and `argv` given, the daemon runs
    `python -m cloudsend ARGV` in a fresh interpreter instead of `serve`."""
    fresh = bool(argv) and threading.active_count() > 1
    sys.stdout.flush()
    sys.stderr.flush()
    first = os.fork()
    if first:
        os.waitpid(first, 0)
        return first
    code = 1
    try:
        os.setsid()  # a session of its own: no controlling terminal, no SIGHUP from it
        if os.fork():
            os._exit(0)  # the intermediate: the daemon is reparented (init or a subreaper)
        devnull = os.open(os.devnull, os.O_RDONLY)
        log = os.open(files.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(devnull)
        os.close(log)
        if fresh:
            os.execv(sys.executable, [sys.executable, "-m", "cloudsend", *argv])
        code = serve()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - the daemon's last word goes to its log
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def wait_for_run(files: WatcherFiles, since: float, timeout: float = 5.0) -> WatcherRecord | None:
    """The record of the watcher started after `since` (epoch s) once it knows its run (or
    ended); after `timeout` its record as it is (a provider slow to bring hosts up: the run
    opens after), None when no watcher recorded itself at all (its log says why)."""
    deadline = time.monotonic() + timeout
    latest: WatcherRecord | None = None
    while True:
        record = files.read()
        if record is not None and record.started >= since:
            latest = record
            if record.run_id is not None or record.is_ended:
                return record
        if time.monotonic() >= deadline:
            return latest
        time.sleep(0.02)


class LogReporter:
    """The detached watcher's reporter: plain lines in its log, progress when it changes."""

    def __init__(self, out: IO[str] | None = None) -> None:
        self.out = out or sys.stdout
        self._last = ""

    def _line(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{stamp} {text}", file=self.out, flush=True)

    def phase(self, name: str, detail: str = "") -> None:
        self._line(f"{name} {detail}".rstrip())

    def notice(self, message: str) -> None:
        self._line(f"note: {message}")

    def log(self, host: str, text: str) -> None:
        for line in text.splitlines():
            self._line(f"{host}| {line}")

    def progress(self, jobs: list[JobView], activity: Sequence[EnvActivity] = ()) -> None:
        counts: dict[str, int] = {}
        for job in jobs:
            counts[job.state.value] = counts.get(job.state.value, 0) + 1
        line = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        if line != self._last:
            self._last = line
            self._line(f"progress {line}")
