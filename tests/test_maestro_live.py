"""What the laptop sees of a run on a remote maestro (provider ssh, `maestro: remote`), live:
`attach` draws the maestro's own progress events as they happen (one SSH channel), Ctrl-C
leaves the run going there, a dropped connection is one clear message; `logs -f` streams a
job's output while it runs; `status` says which maestro answered (also in --json).

The pieces first (SshTransport.stream on a real sshd, the event lines as tables), then one
end-to-end test on real sshd hosts (one maestro, two workers) sharing its hosts across checks.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloudsend.core import JobState
from cloudsend.errors import TransportError
from cloudsend.pipeline import attach_events as events
from cloudsend.pipeline.reporting import EnvActivity, JobView
from cloudsend.transport.ssh import SshTransport
from tests.sshd_harness import SshdHost
from tests.test_maestro_remote import _cli, _worker_home
from tests.waiting import wait_until


@pytest.fixture
def transport(sshd_host: SshdHost, tmp_path: Path) -> Iterator[SshTransport]:
    t = SshTransport(sshd_host.target(tmp_path / "known_hosts"))
    yield t
    t.close()


class Arrivals:
    """What a stream handed over, and when (monotonic seconds)."""

    def __init__(self) -> None:
        self.out: list[tuple[float, bytes]] = []
        self.err: list[tuple[float, bytes]] = []

    def text(self, which: str = "out") -> str:
        return b"".join(d for _, d in getattr(self, which)).decode()

    def first(self, needle: str, which: str = "out") -> float | None:
        seen = b""
        for when, data in getattr(self, which):
            seen += data
            if needle.encode() in seen:
                return when
        return None


# -- SshTransport.stream ---------------------------------------------------------------------


def test_stream_hands_output_over_as_it_is_written(transport: SshTransport) -> None:
    got = Arrivals()
    began = time.monotonic()
    code = transport.stream(
        "echo first; sleep 2; echo oops >&2; echo second; exit 3",
        lambda d: got.out.append((time.monotonic(), d)),
        lambda d: got.err.append((time.monotonic(), d)),
    )
    ended = time.monotonic()
    assert code == 3
    assert got.text() == "first\nsecond\n" and got.text("err") == "oops\n"
    first = got.first("first")
    assert first is not None
    # the first line came before the command slept, not with the rest at the end
    assert ended - first >= 1.5, (first - began, ended - began)
    assert transport.connects == 1
    assert transport.stream("true", lambda d: None) == 0  # the same connection, again


def test_stream_connection_lost_is_one_transport_error(
    sshd_host: SshdHost, transport: SshTransport
) -> None:
    got = Arrivals()
    threading.Timer(1.0, sshd_host.kill).start()
    began = time.monotonic()
    with pytest.raises(TransportError, match=r"lost during follow it|failed during follow it"):
        transport.stream(
            "echo up; sleep 30", lambda d: got.out.append((0, d)), what="follow it"
        )
    assert time.monotonic() - began < 10
    assert got.text() == "up\n"


def test_stream_interrupted_closes_the_channel_and_the_command_sees_it(
    sshd_host: SshdHost, transport: SshTransport
) -> None:
    mark = sshd_host.root / "still-writing"
    script = f"while true; do date +%s.%N > {mark}; echo tick; sleep 0.1; done"

    def out(data: bytes) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        transport.stream(script, out)
    # its stdout closed, the loop's next echo fails and the command ends: no leftover
    wait_until(lambda: time.time() - float(mark.read_text() or 0) > 2, 15, "the loop to end")
    assert transport.stream("echo ok", lambda d: None) == 0  # the connection is fine


# -- the event lines -------------------------------------------------------------------------

VIEW = JobView("j000-job", 0, 0, JobState.RUNNING, "127.0.0.1:2201", 1, None, None, False, 1.5)


@pytest.mark.parametrize(
    "event",
    [
        events.Progress(3, [VIEW], [EnvActivity("py", "h1", 12.0)]),
        events.Progress(None, []),
        events.Notice("the watcher had stopped: restarted (pid 9)"),
        events.Phase("watcher", "pid 4"),
        events.Log("h1", "line"),
        events.Alive(),
        events.End(3, 6, "job error: 1 job(s) ABORTED", {"run": 3, "jobs": []}),
        events.End(None, 3, "provision error: no host"),
    ],
)
def test_event_round_trip(event: events.Event) -> None:
    line = events.encode(event)
    assert "\n" not in line
    assert events.decode(line) == event


@pytest.mark.parametrize(
    "line",
    [
        "",
        "Welcome to the host",  # a login shell's chatter
        "[1, 2]",
        '{"event": "nope"}',
        '{"no": "event"}',
        '{"event": "end"}',  # malformed: no exit code
        '{"event": "progress", "jobs": [{"job_id": "x"}]}',
        '{"event": "end", "exit_code": "x"}',
        "{not json",
    ],
)
def test_what_is_not_an_event_is_ignored(line: str) -> None:
    assert events.decode(line) is None


def test_line_reader_joins_lines_cut_anywhere() -> None:
    data = ("chatter\n" + events.encode(events.Notice("a")) + "\n"
            + events.encode(events.End(1, 0)) + "\n").encode()
    reader = events.LineReader()
    got: list[events.Event] = []
    for i in range(0, len(data), 7):
        got += reader.feed(data[i:i + 7])
    assert got == [events.Notice("a"), events.End(1, 0)]


def test_event_reporter_sends_changes_then_heartbeats(tmp_path: Path) -> None:
    out = (tmp_path / "events").open("w+")
    reporter = events.EventReporter(out, heartbeat=0.2)
    reporter.run = 1
    reporter.progress([VIEW])
    later = JobView(**{**VIEW.__dict__, "elapsed": 9.0})  # only the seconds moved
    reporter.progress([later])
    wait_until(lambda: time.monotonic() - reporter._sent >= 0.2, 5, "the heartbeat period")
    reporter.progress([later])
    done = JobView(**{**VIEW.__dict__, "state": JobState.DONE})
    reporter.progress([done])
    reporter.end(0, "", {"run": 1})
    out.seek(0)
    got = [events.decode(line) for line in out.read().splitlines()]
    assert got == [
        events.Progress(1, [VIEW]),
        events.Alive(),
        events.Progress(1, [done]),
        events.End(1, 0, "", {"run": 1}),
    ]


def test_event_reporter_ends_quietly_when_its_reader_left() -> None:
    read, write = os.pipe()
    os.close(read)
    with os.fdopen(write, "w") as out:
        reporter = events.EventReporter(out)
        with pytest.raises(SystemExit) as left:
            reporter.notice("anyone?")
        assert left.value.code == 0


# -- status --json: one shape for both maestros -----------------------------------------------

STATUS_KEYS = {"stale", "error", "jobs", "hosts", "watcher", "maestro"}
JOB_KEYS = {"job_id", "index", "rep", "state", "host", "attempt", "exit_code", "reason",
            "fetched", "elapsed", "stale"}


def test_local_status_json_has_the_remote_shape(project: Any) -> None:
    """Scripts read `status --json` the same way on both: "maestro" says which answered."""
    project.config("jobs:\n  - run_command: echo hi\n")
    project.cli("run", check=True, timeout=120)
    doc = json.loads(project.cli("status", "--json", check=True).stdout)
    assert set(doc) == STATUS_KEYS
    assert all(set(j) == JOB_KEYS for j in doc["jobs"]) and doc["jobs"]
    assert doc["maestro"] == {"mode": "local", "address": None, "run_dir": None,
                              "reachable": True}


# -- end to end: one maestro, two workers ----------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")
LINES = 8  # the talking job writes one a second


class Terminal:
    """A CLI process on a pseudo-terminal (as a user sees it: rich draws its live line
    there), its output collected with the time each piece arrived."""

    def __init__(self, left: Leftovers, folder: Path, *args: str) -> None:
        master, slave = pty.openpty()
        env = {**os.environ, "COLUMNS": "200", "LINES": "50", "TERM": "xterm"}
        self.proc = left.popen(
            folder, *args, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env
        )
        os.close(slave)
        self._master = master
        self.chunks: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            ready, _, _ = select.select([self._master], [], [], 0.5)
            if not ready:
                if self.proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(self._master, 1 << 16)
            except OSError:  # EIO: the other side closed
                break
            if not data:
                break
            self.chunks.append((time.time(), data.decode("utf-8", "replace")))
        os.close(self._master)

    def text(self) -> str:
        return ANSI.sub("", "".join(c for _, c in self.chunks))

    def seen_at(self, needle: str) -> float | None:
        """When `needle` first showed (epoch s), None if it did not."""
        shown = ""
        for when, chunk in self.chunks:
            shown = ANSI.sub("", shown + chunk)
            if needle in shown:
                return when
        return None

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(10)
        return code


def _maestro_attaches(root: Path) -> list[int]:
    """The maestro's `attach --events` processes (they must not outlive their laptop)."""
    return [pid for pid in _maestro_processes(root)
            if {b"attach", b"--events"} <= set(_argv(pid))]


def _maestro_follows(root: Path) -> list[int]:
    """The maestro's `logs ... -f` processes."""
    return [pid for pid in _maestro_processes(root) if b"logs" in _argv(pid)]


def _argv(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def _maestro_processes(root: Path) -> list[int]:
    """cloudsend processes whose working directory is under the maestro's root."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cwd = (entry / "cwd").resolve()
        except OSError:
            continue
        if entry.name.isdigit() and cwd.is_relative_to(root):
            found.append(int(entry.name))
    return found


def _status_json(folder: Path) -> dict[str, Any]:
    proc = _cli(folder, "status", "--json", "cloudsend.yaml", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


class Leftovers:
    """What the end-to-end test starts (CLI processes here, the watcher on the maestro),
    ended if the test fails midway: nothing outlives it."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[Any]] = []
        self.maestro_roots: list[Path] = []

    def popen(self, folder: Path, *args: str, **kwargs: Any) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cloudsend", *args], cwd=folder, **kwargs
        )
        self.procs.append(proc)
        return proc

    def end(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for root in self.maestro_roots:
            for pid_file in root.rglob("watcher.pid"):
                with contextlib.suppress(OSError, ValueError):
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)


@pytest.fixture
def leftovers() -> Iterator[Leftovers]:
    left = Leftovers()
    yield left
    left.end()


@pytest.mark.slow
def test_remote_attach_logs_status_live(
    sshd_factory: Callable[..., list[SshdHost]], tmp_path: Path, leftovers: Leftovers
) -> None:
    began = time.monotonic()
    maestro = sshd_factory(1)[0]
    workers = [sshd_factory(1, user=f"csmaestro{i}")[0] for i in range(2)]
    for host in workers:
        _worker_home(host)
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    (laptop / "talk.py").write_text(  # a line a second, each with the time it was written
        "import time\n"
        "time.sleep(2)\n"  # while `logs -f` below starts (its own and the maestro's cloudsend)
        f"for i in range({LINES}):\n"
        "    print('line', i, time.time(), flush=True)\n"
        f"    time.sleep(1)\n"
    )
    (laptop / "wait.py").write_text(
        "import sys, time\ntime.sleep(float(sys.argv[1]))\n"
        "print('waited', sys.argv[1], time.time(), flush=True)\n"
    )
    config = {
        "project": "live",
        "provider": "ssh",
        "maestro": "remote",
        "maestro_host": {
            "address": "127.0.0.1", "port": maestro.port, "key": str(maestro.key),
            "root": str(maestro.root / "m"),
        },
        "hosts": [
            {"address": "127.0.0.1", "port": h.port, "user": h.user, "key": str(h.key),
             "root": str(h.root / "w")}  # not the login's home: shared by every test
            for h in workers
        ],
        "jobs": [
            {"run_script": "talk.py", "cpus_req": 1},
            {"run_script": "wait.py 1", "cpus_req": 1},
            {"run_script": "wait.py 30", "cpus_req": 1},  # keeps the run going for the faults
        ],
    }
    (laptop / "cloudsend.yaml").write_text(yaml.safe_dump(config))
    os.environ.setdefault("XDG_CACHE_HOME", str(tmp_path / "cache"))
    address = f"root@127.0.0.1:{maestro.port}"
    m_root = maestro.root / "m"
    leftovers.maestro_roots.append(m_root)

    started = _cli(laptop, "run", "--json", "cloudsend.yaml")
    assert started.returncode == 0, started.stdout + started.stderr

    # logs -f: the talking job's first line arrives while it sleeps, within ~1 s of being
    # written on its worker (same clock: all on loopback)
    follow = leftovers.popen(
        laptop, "logs", "0", "cloudsend.yaml", "-f", stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    attach1 = Terminal(leftovers, laptop, "attach", "cloudsend.yaml")
    assert follow.stdout is not None
    lines: list[tuple[float, str]] = []
    for raw in follow.stdout:
        lines.append((time.time(), raw.decode()))
    assert follow.wait(timeout=60) == 0, follow.stderr.read() if follow.stderr else ""
    assert [line.split()[:2] for _, line in lines] == [["line", str(i)] for i in range(LINES)]
    written = [float(line.split()[2]) for _, line in lines]
    arrived = [when for when, _ in lines]
    # shown while the job runs: most lines before the job wrote its last one
    early = [a < written[-1] for a in arrived]
    assert sum(early) >= LINES // 2, [a - w for a, w in zip(arrived, written, strict=True)]
    # once following (the first line shown), each line reaches the laptop within ~1 s
    steady = [a - w for a, w in zip(arrived, written, strict=True) if w > arrived[0]]
    assert len(steady) >= 3, (arrived, written)
    lag = max(steady)
    assert lag < 1.6, f"lines took up to {lag:.2f} s to reach the laptop: {steady}"

    # attach #1 draws the maestro's live line; Ctrl-C leaves the run going
    wait_until(lambda: attach1.seen_at("RUNNING"), 60, lambda: f"a live line: {attach1.text()}")
    attach1.proc.send_signal(signal.SIGINT)
    assert attach1.wait(30) == 130, attach1.text()
    assert "detached: run 1 goes on (`cloudsend attach` follows it again)" in attach1.text()
    assert "Traceback" not in attach1.text()
    wait_until(lambda: not _maestro_attaches(m_root), 20, "the maestro's attach to end")

    # status names the maestro, in the local shape
    table = _cli(laptop, "status", "cloudsend.yaml", timeout=120)
    assert table.returncode == 0, table.stderr
    assert table.stdout.startswith(f"maestro {address} ("), table.stdout
    assert "RUNNING" in table.stdout and "wait" in table.stdout
    doc = _status_json(laptop)
    assert doc["maestro"] == {
        "mode": "remote", "address": address, "run_dir": f"{m_root}/runs/live",
        "reachable": True,
    }
    assert set(doc) == STATUS_KEYS and all(set(j) == JOB_KEYS for j in doc["jobs"])
    assert any(j["state"] == "RUNNING" for j in doc["jobs"]), doc["jobs"]

    # the maestro's connection drops mid-attach: one clear message, non-zero, no traceback
    dropped = leftovers.popen(
        laptop, "attach", "cloudsend.yaml", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    tail = leftovers.popen(  # and a `logs -f` of the job still running
        laptop, "logs", "2", "cloudsend.yaml", "-f", stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    wait_until(lambda: _maestro_attaches(m_root), 30, "the maestro's attach to start")
    wait_until(lambda: _maestro_follows(m_root), 30, "the maestro's logs -f to start")
    maestro.kill()
    out, err = dropped.communicate(timeout=30)
    tail_out, tail_err = tail.communicate(timeout=30)
    assert tail.returncode == 4, tail_out + tail_err
    assert f"lost the connection to the maestro {address}" in tail_err, tail_err
    assert "Traceback" not in tail_err
    assert dropped.returncode == 4, out + err
    assert err.count("\n") <= 2 and "Traceback" not in err, err
    assert f"lost the connection to the maestro {address} while attached" in err, err
    assert "the run goes on there" in err
    maestro.start()

    # attach #3 follows the run (which went on meanwhile) to its end: exit 0, every job DONE
    attach3 = Terminal(leftovers, laptop, "attach", "cloudsend.yaml")
    assert attach3.wait(120) == 0, attach3.text()
    shown = attach3.text()
    assert "Traceback" not in shown
    assert attach3.seen_at("RUNNING 1") is not None, shown  # the live line, to the end
    # promptly: the last job's end is on the laptop's live line within a few seconds (the
    # watcher's poll of the workers, then an event; no polling from the laptop)
    ended = next(
        float(text.split()[2]) for h in workers for log in h.root.rglob("stdout*")
        if log.is_file() and (text := log.read_text()).startswith("waited 30 ")
    )
    all_done = attach3.seen_at("DONE 3")
    assert all_done is not None, shown
    assert all_done - ended < 5, f"the end took {all_done - ended:.1f} s to show"
    final_table = shown[shown.index("run 1"):]
    for job in doc["jobs"]:
        assert re.search(rf"{re.escape(job['job_id'])}\s+DONE", final_table), final_table
    assert f"results: {address}:" in shown and "cloudsend fetch" in shown
    wait_until(lambda: not _maestro_attaches(m_root), 20, "the maestro's attach to end")

    final = _status_json(laptop)
    assert all(j["state"] == "DONE" and j["fetched"] for j in final["jobs"]), final["jobs"]
    assert final["watcher"]["state"] == "ended" and final["maestro"]["reachable"] is True
    took = time.monotonic() - began
    print(f"\nlive remote maestro: log lines within {lag:.2f} s ({steady}); a job's end shown "
          f"after {all_done - ended:.2f} s; test {took:.1f} s")


def test_attach_with_no_run_on_the_maestro_is_one_message(
    sshd_host: SshdHost, tmp_path: Path
) -> None:
    """Nothing was ever started there: the maestro's own words, once, with what to do."""
    folder = tmp_path / "laptop"
    folder.mkdir()
    config = {
        "project": "none",
        "provider": "ssh",
        "maestro": "remote",
        "maestro_host": {"address": "127.0.0.1", "port": sshd_host.port,
                         "key": str(sshd_host.key), "root": str(sshd_host.root / "m")},
        "hosts": [{"address": "127.0.0.1", "port": sshd_host.port, "key": str(sshd_host.key)}],
        "jobs": [{"run_command": "true"}],
    }
    (folder / "cloudsend.yaml").write_text(yaml.safe_dump(config))
    proc = _cli(folder, "attach", "cloudsend.yaml", timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.startswith(f"error on the maestro: root@127.0.0.1:{sshd_host.port}: "), (
        proc.stderr)
    assert "No such file" in proc.stderr and "`cloudsend run CONFIG` starts a run" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
