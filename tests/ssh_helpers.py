"""Helpers for the pipeline tests over real sshd hosts (tests/sshd_harness.py): configs, the
job ledger, spies that count what crosses the wire, and a run through the Python API with a
fault injected while it watches."""

from __future__ import annotations

import os
import shlex
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

JOB = (
    'echo "$CLOUDSEND_JOB_ID $(hostname) $$" >> {ledger} && sleep {sleep} && '
    'echo "$CLOUDSEND_JOB_ID" > out.txt'
)


def ssh_config(
    hosts: list[Any],
    ledger: Path,
    *,
    jobs: int,
    sleep: float,
    lost_after: float = 60,
    extra: str = "",
    project: str = "sshtest",
    cpus: int = 2,
    with_root: bool = True,
    command: str | None = None,
) -> str:
    lines = [
        f"project: {project}",
        "provider: ssh",
        f"host_lost_after: {lost_after}",
        extra,
        "hosts:",
    ]
    for h in hosts:
        root = f", root: {h.root}" if with_root else ""
        lines.append(
            f"  - {{address: 127.0.0.1, port: {h.port}, user: {h.user}, key: {h.key}, "
            f"cpus: {cpus}{root}}}"
        )
    run = command if command is not None else JOB.format(ledger=ledger, sleep=sleep)
    lines += [
        "environments:",
        "  - name: shell",
        "    command: echo env ready",
        "jobs:",
        "  - env_name: shell",
        f"    run_command: '{run}'",
        "    output_file: out.txt",
        f"    repeat: {jobs}",
    ]
    return "\n".join(lines) + "\n"


def pname(host: Any) -> str:
    """The name the ssh provider gives a host (all test hosts share 127.0.0.1)."""
    return f"127.0.0.1:{host.port}"


def ledger_ids(ledger: Path) -> list[str]:
    if not ledger.exists():
        return []
    return [line.split()[0] for line in ledger.read_text().splitlines() if line.strip()]


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def check_results(doc: dict[str, Any], jobs: int) -> None:
    assert doc["counts"] == {"DONE": jobs}, doc["counts"]
    check_outputs(Path(doc["results_dir"]), jobs)


def check_outputs(results: Path, jobs: int) -> None:
    outs = sorted(results.glob("*/out.txt"))
    assert len(outs) == jobs, outs
    for out in outs:
        assert out.read_text().strip() == out.parent.name
    assert len({p.parent.name for p in outs}) == jobs


def processes_under(root: Path) -> list[str]:
    """Processes whose command line names `root` or whose cwd is inside it (the agent
    daemon runs with --root ROOT, jobs in ROOT/jobs/ID/work)."""
    needle = str(root)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue  # gone meanwhile, or a kernel thread
        if not cmdline:
            continue  # a zombie: already dead, only not reaped yet
        if needle in cmdline or cwd == needle or cwd.startswith(needle + "/"):
            found.append(f"{entry}: {cmdline} (cwd {cwd})")
    return found


class FetchSpy:
    """Counts the archives actually unpacked (pipeline.fetch.unpack: the watch loop's, streamed
    with its collect, and fetch_results' downloads), per job: a job whose outputs arrive twice
    shows 2, even though the store would record the second fetch over the first."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import cloudsend.pipeline.fetch as fetch_mod
        import cloudsend.pipeline.watch as watch_mod

        self.downloads: list[tuple[str, dict[str, int]]] = []  # (host, job → files)
        self._lock = threading.Lock()
        original = fetch_mod.unpack

        def spy(host: Any, *args: Any, **kwargs: Any) -> dict[str, list[tuple[str, int]]]:
            got = original(host, *args, **kwargs)
            with self._lock:
                self.downloads.append((host.name, {j: len(f) for j, f in got.items() if f}))
            return got

        monkeypatch.setattr(fetch_mod, "unpack", spy)  # download() unpacks through it
        monkeypatch.setattr(watch_mod, "unpack", spy)

    def per_job(self) -> Counter[str]:
        with self._lock:
            return Counter(job for _, jobs in self.downloads for job in jobs)

    def per_host(self) -> Counter[str]:
        with self._lock:
            return Counter(host for host, _ in self.downloads)


def agent_op(command: str) -> str:
    """The agent subcommand a shell command runs ('collect', 'status', ...), else 'shell'."""
    try:
        words = shlex.split(command)
    except ValueError:
        return "shell"
    if "--root" in words and words.index("--root") + 2 < len(words) and "-c" in words:
        return words[words.index("--root") + 2]
    return "shell"


class CallCounter:
    """Counts every SshTransport run/output/put/get/reading per host, by kind (agent
    subcommand, 'shell', 'put', 'get' for both downloads), and the watch rounds each
    HostWatcher made."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from cloudsend.pipeline.watch import HostWatcher
        from cloudsend.transport.ssh import SshTransport

        self.calls: list[tuple[str, str]] = []  # (host, kind), in call order
        self.rounds: Counter[str] = Counter()
        self._lock = threading.Lock()
        run, put, get = SshTransport.run, SshTransport.put, SshTransport.get
        reading, output = SshTransport.reading, SshTransport.output
        one_round = HostWatcher._round

        def note(host: str, kind: str) -> None:
            with self._lock:
                self.calls.append((host, kind))

        def counted_run(self_: SshTransport, command: str, **kwargs: Any) -> Any:
            note(self_.name, agent_op(command))
            return run(self_, command, **kwargs)

        def counted_output(self_: SshTransport, command: str, **kwargs: Any) -> Any:
            note(self_.name, agent_op(command))  # a command whose output is streamed
            return output(self_, command, **kwargs)

        def counted_put(self_: SshTransport, *args: Any, **kwargs: Any) -> None:
            note(self_.name, "put")
            put(self_, *args, **kwargs)

        def counted_get(self_: SshTransport, *args: Any, **kwargs: Any) -> None:
            note(self_.name, "get")
            get(self_, *args, **kwargs)

        def counted_reading(self_: SshTransport, *args: Any, **kwargs: Any) -> Any:
            note(self_.name, "get")  # a download too: fetches stream the archive this way
            return reading(self_, *args, **kwargs)

        def counted_round(self_: HostWatcher, *args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.rounds[self_.host.name] += 1
            return one_round(self_, *args, **kwargs)

        monkeypatch.setattr(SshTransport, "run", counted_run)
        monkeypatch.setattr(SshTransport, "put", counted_put)
        monkeypatch.setattr(SshTransport, "get", counted_get)
        monkeypatch.setattr(SshTransport, "reading", counted_reading)
        monkeypatch.setattr(SshTransport, "output", counted_output)
        monkeypatch.setattr(HostWatcher, "_round", counted_round)

    def mark(self) -> int:
        """A position in the call log (to count calls between two points)."""
        with self._lock:
            return len(self.calls)

    def between(self, start: int, end: int | None = None) -> dict[str, Counter[str]]:
        """host → kind → count, for the calls made between two marks."""
        with self._lock:
            picked = self.calls[start:end]
        out: dict[str, Counter[str]] = {}
        for host, kind in picked:
            out.setdefault(host, Counter())[kind] += 1
        return out


class Notices:
    """A reporter that keeps the notices, timestamped (time.monotonic())."""

    def __init__(self) -> None:
        from cloudsend.pipeline.reporting import NullReporter

        self.items: list[tuple[float, str]] = []
        outer = self

        class Recorder(NullReporter):
            def notice(self, message: str) -> None:
                outer.items.append((time.monotonic(), message))

        self.reporter = Recorder()

    def first(self, pred: Callable[[str], bool]) -> float | None:
        return next((t for t, m in list(self.items) if pred(m)), None)

    def texts(self) -> list[str]:
        return [m for _, m in list(self.items)]


def lost_notice(host_name: str) -> Callable[[str], bool]:
    """Matches the monitor's own notice that it declared `host_name` lost (RunMonitor.
    _declare_lost → _set_health: 'host NAME: lost no answer for more than N s'), not transport
    messages that happen to contain the word."""
    prefix = f"host {host_name}: lost no answer for more than "
    return lambda message: message.startswith(prefix)


def api_run(
    cfg: Path,
    reporter: Any = None,
    *,
    poll_wait: float = 1.0,
    during: Callable[[], None] | None = None,
    timeout: float = 180,
) -> Any:
    """What `cloudsend run` does, through the Python API, with `during` run in a thread once
    the jobs are submitted (a fault to inject). Returns the run's summary."""
    from cloudsend.api import SyncClient

    client = SyncClient(cfg, reporter, poll_wait=poll_wait)
    failure: list[BaseException] = []

    def fault() -> None:
        try:
            assert during is not None
            during()
        except BaseException as exc:  # re-raised in the test's thread
            failure.append(exc)

    thread = threading.Thread(target=fault, daemon=True)
    try:
        client.start()
        client.deploy()
        client.run()
        if during is not None:
            thread.start()
        client.wait(timeout=timeout)
        if during is not None:
            thread.join(timeout=60)
            assert not thread.is_alive(), "the fault thread is still running"
        client.fetch_results()
        client.finalize()
        summary = client.summary()
    finally:
        client.close()
    if failure:
        raise failure[0]
    return summary
