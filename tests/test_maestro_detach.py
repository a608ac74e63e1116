"""Detached runs with `maestro: local` (issue 11 part 1): `run --detach` starts the watcher as
a daemon and returns; `attach`/`status` from other processes follow it; one watcher per run; a
SIGKILLed watcher is restarted by the next `attach` and resumes with nothing redone."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudsend.pipeline.daemon import Action, WatcherFiles, decide
from tests.conftest import Project
from tests.waiting import wait_until

CONFIG = """
project: detached
recover: {recover}
instances:
  - cpus: 2
    number: 2
environments:
  - name: plain
    command: "echo plain ready"
jobs:
  - env_name: plain
    run_command: >-
      echo "$CLOUDSEND_JOB_ID" >> {ledger} && echo "started $CLOUDSEND_JOB_ID" &&
      sleep {sleep} && echo "result of $CLOUDSEND_JOB_ID" > out.txt
    output_file: out.txt
    repeat: {repeat}
"""


# ---- the decision, as a table --------------------------------------------------------------

TABLE = [
    # command, lock held, recorded, ended -> action
    ("run", True, True, False, Action.ATTACH),
    ("run", True, False, False, Action.ATTACH),  # a watcher starting: its record not written yet
    ("run-detach", True, True, False, Action.ATTACH),
    ("attach", True, True, False, Action.ATTACH),
    ("attach", True, True, True, Action.ATTACH),  # ending: it writes the end, then unlocks
    ("run", False, False, False, Action.START),
    ("run-detach", False, False, False, Action.START),
    ("run", False, True, True, Action.START),  # the last run ended: this one resumes it
    ("run-detach", False, True, True, Action.START),
    ("run", False, True, False, Action.RESTART),  # died mid-run (SIGKILL)
    ("run-detach", False, True, False, Action.RESTART),
    ("attach", False, True, False, Action.RESTART),
    ("attach", False, True, True, Action.OUTCOME),
    ("attach", False, False, False, Action.NOTHING),
]


@pytest.mark.parametrize(("command", "held", "recorded", "ended", "want"), TABLE)
def test_decide(command: str, held: bool, recorded: bool, ended: bool, want: Action) -> None:
    assert decide(command, held, recorded, ended) == want  # type: ignore[arg-type]


def test_the_lock_is_the_owner_test(tmp_path: Path) -> None:
    files = WatcherFiles(tmp_path)
    assert not files.lock_held()
    held = files.try_lock()
    assert held is not None
    try:
        assert files.lock_held()
        assert files.try_lock() is None  # no rival
    finally:
        held.close()
    assert not files.lock_held()  # released with its holder


# ---- the real thing on the local provider ---------------------------------------------------


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _files(project: Project) -> WatcherFiles:
    return WatcherFiles(project.state_dir())


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _stat(pid: int) -> tuple[int, int]:
    """(ppid, session id) of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[3])


@pytest.fixture
def watchers(project: Project) -> Iterator[list[int]]:
    """Pids of the watchers a test started: killed at the end if still alive."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _config(
    project: Project, ledger: Path, sleep: float, repeat: int, recover: bool = True
) -> None:
    project.config(
        CONFIG.format(ledger=ledger, sleep=sleep, repeat=repeat, recover=str(recover).lower())
    )


def _detach(project: Project, watchers: list[int]) -> tuple[dict[str, object], float, int]:
    began = time.monotonic()
    proc = project.popen("run", "--detach", "--json")
    out, err = proc.communicate(timeout=60)
    took = time.monotonic() - began
    assert proc.returncode == 0, err
    doc = json.loads(out)
    watchers.append(int(str(doc["pid"])))
    return doc, took, proc.pid


def _outputs_once(project: Project, repeat: int) -> None:
    outs = sorted(project.results().glob("*/out.txt"))
    assert len(outs) == repeat
    for out in outs:
        assert out.read_text().strip() == f"result of {out.parent.name}"


def test_detached_run_is_followed_from_other_processes(
    project: Project, tmp_path: Path, watchers: list[int]
) -> None:
    ledger = tmp_path / "ledger.txt"
    _config(project, ledger, 2, 6)
    doc, took, cli_pid = _detach(project, watchers)
    assert took < 2.0, f"run --detach took {took:.2f} s"
    assert doc["run"] == 1 and doc["ended"] is False
    pid = int(str(doc["pid"]))
    # the CLI is gone and the watcher is not its child, nor in its session: closing the
    # terminal (SIGHUP to its session) or killing the CLI does not reach it
    assert not _alive(cli_pid)
    assert _alive(pid)
    ppid, sid = _stat(pid)
    assert ppid != cli_pid and ppid != os.getpid()
    assert sid not in (os.getsid(0), cli_pid, pid)  # setsid, then forked again: no tty ever

    # one watcher per run: a second run --detach names the same watcher
    again = json.loads(project.cli("run", "--detach", "--json", check=True).stdout)
    assert again["pid"] == pid and again["run"] == 1

    status = json.loads(project.cli("status", "--json", check=True).stdout)
    assert status["watcher"]["state"] == "running" and status["watcher"]["pid"] == pid
    assert len(status["jobs"]) == 6

    # Ctrl-C leaves the run going
    left = project.popen("attach")
    wait_until(lambda: _files(project).lock_held(), timeout=5, what="a live watcher")
    time.sleep(1)
    left.send_signal(signal.SIGINT)
    _, err = left.communicate(timeout=30)
    # (a machine slow enough to be still importing says main()'s words for the same thing)
    assert left.returncode == 130 and ("goes on" in err or "keep running" in err), err
    assert _alive(pid)

    attached = project.cli("attach", "--json", timeout=120)
    assert attached.returncode == 0, attached.stderr
    summary = json.loads(attached.stdout)
    assert summary["ok"] is True and summary["counts"] == {"DONE": 6}
    wait_until(lambda: not _alive(pid), timeout=20, what="the watcher to exit")

    final = json.loads(project.cli("status", "--json", check=True).stdout)
    assert final["watcher"]["state"] == "ended" and final["watcher"]["exit_code"] == 0
    assert all(j["state"] == "DONE" and j["fetched"] for j in final["jobs"])
    _outputs_once(project, 6)
    assert sorted(set(_lines(ledger))) == sorted(_lines(ledger)) and len(_lines(ledger)) == 6

    # a re-run of the finished config: detached, it finds nothing to do and ends at once
    doc2, took2, _ = _detach(project, watchers)
    assert took2 < 2.0, f"re-run of run --detach took {took2:.2f} s"
    wait_until(
        lambda: json.loads(project.cli("status", "--json").stdout)["watcher"]["state"] == "ended",
        timeout=30,
        what="the re-run's watcher to end",
    )
    assert len(_lines(ledger)) == 6  # nothing re-ran


@pytest.mark.parametrize(
    ("recover", "restarter"), [(True, "attach"), (False, "attach"), (False, "run")]
)
def test_sigkilled_watcher_is_restarted_and_redoes_nothing(
    project: Project, tmp_path: Path, watchers: list[int], recover: bool, restarter: str
) -> None:
    """The next `attach` (or `run`, in its terminal) restarts the watcher. recover: false
    opens a new run per `run`; a restarted watcher still resumes the dead one's."""
    ledger = tmp_path / "ledger.txt"
    _config(project, ledger, 1.5, 8, recover)
    doc, _, _ = _detach(project, watchers)
    pid = int(str(doc["pid"]))
    files = _files(project)
    # mid-run: some jobs started, not all finished
    wait_until(lambda: len(_lines(ledger)) >= 2, timeout=60, what="jobs to start")
    os.kill(pid, signal.SIGKILL)
    # its threads exit (and its files close) just after the process shows as a zombie
    wait_until(lambda: not files.lock_held(), timeout=10, what="the watcher's lock to go")
    record = files.read()
    assert record is not None and not record.is_ended

    status = project.cli("status", check=True)
    assert "watcher not running" in status.stdout and "cloudsend attach" in status.stdout

    attached = project.cli(restarter, "--json", timeout=180)
    assert attached.returncode == 0, attached.stderr
    summary = json.loads(attached.stdout)
    assert summary["ok"] is True and summary["counts"] == {"DONE": 8}
    assert summary["run"] == 1
    restarted = files.read()
    assert restarted is not None and restarted.pid != pid and restarted.exit_code == 0
    assert restarted.detached is (restarter == "attach")
    watchers.append(restarted.pid)
    # each job ran exactly once over both watchers; each output came home once
    ran = _lines(ledger)
    assert len(ran) == 8 and len(set(ran)) == 8
    _outputs_once(project, 8)


def test_second_run_attaches_to_the_live_watcher(
    project: Project, tmp_path: Path, watchers: list[int]
) -> None:
    ledger = tmp_path / "ledger.txt"
    _config(project, ledger, 1, 4)
    doc, _, _ = _detach(project, watchers)
    second = project.cli("run", "--json", timeout=120)
    assert second.returncode == 0, second.stderr
    assert "attaching" in second.stderr
    assert json.loads(second.stdout)["counts"] == {"DONE": 4}
    ran = _lines(ledger)
    assert len(ran) == 4 and len(set(ran)) == 4  # no rival watcher submitted them again
    record = _files(project).read()
    assert record is not None and record.pid == doc["pid"]


def test_cancel_from_another_terminal_ends_the_detached_run(
    project: Project, tmp_path: Path, watchers: list[int]
) -> None:
    ledger = tmp_path / "ledger.txt"
    _config(project, ledger, 30, 2)
    doc, _, _ = _detach(project, watchers)
    wait_until(lambda: len(_lines(ledger)) >= 2, timeout=60, what="jobs to start")
    project.cli("cancel", "--all", check=True)
    attached = project.cli("attach", "--json", timeout=60)
    assert attached.returncode == 0, attached.stderr
    assert json.loads(attached.stdout)["counts"] == {"CANCELLED": 2}
    wait_until(lambda: not _alive(int(str(doc["pid"]))), timeout=20, what="the watcher to end")


def test_logs_fetch_and_down_work_from_other_terminals(
    project: Project, tmp_path: Path, watchers: list[int]
) -> None:
    ledger = tmp_path / "ledger.txt"
    _config(project, ledger, 3, 2)
    doc, _, _ = _detach(project, watchers)
    follow = project.popen("logs", "0.0", "-f")
    wait_until(lambda: len(_lines(ledger)) >= 2, timeout=60, what="jobs to start")
    fetched = project.cli("fetch", check=True)  # beside the watcher's own fetches
    assert "results:" in fetched.stdout
    out, err = follow.communicate(timeout=60)  # ends with the job
    assert follow.returncode == 0, err
    assert out.startswith("started ")
    attached = json.loads(project.cli("attach", "--json", timeout=60, check=True).stdout)
    assert attached["counts"] == {"DONE": 2}
    _outputs_once(project, 2)

    # a second detached run (its jobs edited: they run again), taken down mid-run
    _config(project, ledger, 30, 2)
    doc, _, _ = _detach(project, watchers)
    wait_until(lambda: len(_lines(ledger)) >= 4, timeout=60, what="the new jobs to start")
    project.cli("down", "--yes", check=True, timeout=120)
    wait_until(lambda: not _alive(int(str(doc["pid"]))), timeout=30, what="the watcher to end")
    status = json.loads(project.cli("status", "--json", check=True).stdout)
    assert status["watcher"]["state"] == "ended"
    assert [j["state"] for j in status["jobs"]] == ["CANCELLED", "CANCELLED"]


def test_with_threads_running_the_daemon_is_a_fresh_interpreter(
    project: Project, tmp_path: Path, watchers: list[int]
) -> None:
    """Forking a process with threads keeps their locks locked in the child: spawn then
    execs `cloudsend _watch` instead of calling `serve` in the forked copy."""
    import threading

    from cloudsend.pipeline.daemon import spawn, wait_for_run

    ledger = tmp_path / "ledger.txt"
    _config(project, ledger, 0, 2)
    state = project.path / ".cloudsend" / "projects" / "detached"
    state.mkdir(parents=True)
    files = WatcherFiles(state)
    stop = threading.Event()
    busy = threading.Thread(target=stop.wait, daemon=True)
    busy.start()
    try:
        since = time.time()
        spawn(files, lambda: 99, ["_watch", str(project.path / "cloudsend.yaml")])
    finally:
        stop.set()
        busy.join()
    record = wait_for_run(files, since, timeout=60)
    assert record is not None
    watchers.append(record.pid)
    wait_until(lambda: (files.read() or record).is_ended, timeout=60, what="the run to end")
    ended = files.read()
    assert ended is not None and ended.exit_code == 0  # not 99: serve() was not called
    assert ended.summary["counts"] == {"DONE": 2}
    assert len(_lines(ledger)) == 2


def test_a_watcher_that_fails_at_once_says_why_with_its_exit_code(
    project: Project, tmp_path: Path, watchers: list[int]
) -> None:
    """No host can be used: `run --detach` and `attach` both end with the provision error
    (exit 3), not with a silent 0."""
    key = project.write("key", "not a key\n", mode=0o600)
    project.config(
        f"""
        provider: ssh
        hosts:
          - {{address: 127.0.0.1, port: 1, user: nobody, key: {key}, cpus: 1}}
        environments:
          - name: e
            command: echo ready
        jobs:
          - env_name: e
            run_command: echo hi
        """
    )
    detached = project.cli("run", "--detach", timeout=60)
    assert detached.returncode == 3, detached.stdout + detached.stderr
    assert "could be used" in detached.stderr
    attached = project.cli("attach", timeout=60)
    assert attached.returncode == 3 and "could be used" in attached.stderr


def test_detached_watcher_reruns_the_jobs_a_host_reboot_killed(
    project: Project, tmp_path: Path, watchers: list[int]
) -> None:
    """The same pipeline as `run`: a host "reboots" mid-run (its agent and jobs SIGKILLed)
    and the detached watcher runs the killed jobs again."""
    from tests.agent_helpers import processes_under

    ledger = tmp_path / "ledger.txt"
    _config(project, ledger, 1.5, 4)
    doc, _, _ = _detach(project, watchers)
    host_root = project.state_dir() / "hosts" / "local-0-0"
    wait_until(lambda: len(_lines(ledger)) >= 4, timeout=60, what="jobs to start")
    victims = processes_under(host_root)
    assert victims, "nothing runs under the host"
    for victim in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
    attached = json.loads(project.cli("attach", "--json", timeout=120, check=True).stdout)
    assert attached["counts"] == {"DONE": 4}
    ids = _lines(ledger)
    assert len(set(ids)) == 4 and len(ids) == 6, ids  # the two killed ones started again
    _outputs_once(project, 4)
    wait_until(lambda: not _alive(int(str(doc["pid"]))), timeout=20, what="the watcher to end")
