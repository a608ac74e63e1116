"""provider ssh over real sshd hosts: what `down` leaves behind, how many round trips a run
costs, and a slow results download that must not get a healthy host declared lost."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Project
from tests.ssh_helpers import (
    CallCounter,
    FetchSpy,
    Notices,
    api_run,
    check_outputs,
    ledger_ids,
    lost_notice,
    pname,
    processes_under,
    ssh_config,
    wait_for,
)
from tests.sshd_harness import stop_agents

# ---- down ----------------------------------------------------------------------------------


def test_down_stops_everything_and_removes_the_roots(
    sshd_factory: Any, project: Project, ledger_dir: Path
) -> None:
    hosts = sshd_factory(1) + sshd_factory(1, user="ubuntu")
    ledger = ledger_dir / "ledger"
    project.config(ssh_config(hosts, ledger, jobs=4, sleep=300))
    run = project.popen("run")
    try:
        # every host has its agent and a job running when cloudsend goes away
        wait_for(
            lambda: all(any(" sleep " in p for p in processes_under(h.root)) for h in hosts),
            60,
            "jobs on every host",
        )
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=10)
    assert all(processes_under(h.root) for h in hosts)
    proc = project.cli("down", "--yes")  # jobs still run: not on a terminal, down needs --yes
    assert proc.returncode == 0, proc.stderr
    assert "cancelled 4 unfinished job(s)" in proc.stdout
    for h in hosts:
        assert not h.root.exists(), f"{h.name}: root left behind"
        assert processes_under(h.root) == [], f"{h.name}: processes left"


def test_down_kills_what_jobs_left_running(
    sshd_factory: Any, project: Project, ledger_dir: Path
) -> None:
    """Jobs that started a setsid child, a nohup daemon and a double fork, and still run:
    `down` leaves no process of theirs (root host: job cgroups; ubuntu: tracking only)."""
    hosts = sshd_factory(1) + sshd_factory(1, user="ubuntu")
    ledger = ledger_dir / "ledger"
    leave = (
        "setsid sleep 1001 & nohup sleep 1002 >/dev/null 2>&1 & (sleep 1003 &); "
        f'echo "$CLOUDSEND_JOB_ID" >> {ledger}; sleep 300'
    )
    project.config(ssh_config(hosts, ledger, jobs=4, sleep=0, command=leave))
    run = project.popen("run")
    try:
        wait_for(lambda: len(ledger_ids(ledger)) == 4, 60, "every job started its leftovers")
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=10)
    for h in hosts:
        left = processes_under(h.root)
        assert all(any(f"sleep {n}" in p for p in left) for n in (1001, 1002, 1003)), left
    proc = project.cli("down", "--yes")
    assert proc.returncode == 0, proc.stderr
    for h in hosts:
        assert processes_under(h.root) == [], f"{h.name}: processes left"


def test_down_keep_keeps_the_roots_and_stops_the_agents(
    sshd_factory: Any, project: Project, ledger_dir: Path
) -> None:
    hosts = sshd_factory(2)
    ledger = ledger_dir / "ledger"
    project.config(ssh_config(hosts, ledger, jobs=2, sleep=0, extra="auto_stop: false"))
    project.cli("run", check=True)
    assert all(processes_under(h.root) for h in hosts), "no agent left running to stop"
    proc = project.cli("down", "--keep")
    assert proc.returncode == 0, proc.stderr
    for h in hosts:
        assert (h.root / "agent.py").is_file(), f"{h.name}: root not kept"
        assert list((h.root / "jobs").iterdir()), f"{h.name}: jobs not kept"
        assert processes_under(h.root) == [], f"{h.name}: processes left"


@pytest.fixture
def ubuntu_project_root() -> Iterator[tuple[str, Path]]:
    """A project name unique to this test and the root ~ubuntu/.cloudsend/<project>/ it gets
    by default (removed after the test, whatever happened)."""
    from tests.sshd_harness import ensure_user

    name = f"rootdefault-{uuid.uuid4().hex[:8]}"
    root = Path(ensure_user("ubuntu").pw_dir) / ".cloudsend" / name
    yield name, root
    stop_agents(root)
    shutil.rmtree(root, ignore_errors=True)


def test_default_root_is_under_the_login_users_home(
    sshd_factory: Any,
    project: Project,
    ledger_dir: Path,
    ubuntu_project_root: tuple[str, Path],
) -> None:
    name, root = ubuntu_project_root
    hosts = sshd_factory(1, user="ubuntu")
    ledger = ledger_dir / "ledger"
    project.config(ssh_config(hosts, ledger, jobs=2, sleep=0, project=name, with_root=False))
    assert not root.exists()
    project.cli("run", check=True)
    assert (root / "agent.py").is_file(), "the agent is not in ~/.cloudsend/<project>/"
    assert root.owner() == "ubuntu"
    assert len(list((root / "jobs").iterdir())) == 2
    assert not any(hosts[0].root.iterdir()), "the harness root was used instead"
    project.cli("down", check=True)
    assert not root.exists()
    assert root.parent.is_dir(), "down removed more than the project's root"
    assert processes_under(root) == []


def test_down_runs_the_hosts_in_parallel(
    sshd_factory: Any, project: Project, ledger_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each host's agent stop and root removal wait at a barrier for the other host's: done
    one host after the other, the first would wait alone and time out."""
    from cloudsend.api import SyncClient
    from cloudsend.transport.ssh import SshTransport

    hosts = sshd_factory(2)
    ledger = ledger_dir / "ledger"
    cfg = project.config(ssh_config(hosts, ledger, jobs=2, sleep=0))
    project.cli("run", check=True)
    barriers = {"stop": threading.Barrier(2), "rm -rf": threading.Barrier(2)}
    met: dict[str, list[str]] = {step: [] for step in barriers}
    original = SshTransport.run

    def run(self: SshTransport, command: str, **kwargs: Any) -> Any:
        for step, barrier in barriers.items():
            if f" {step} " in command or command.startswith(f"{step} "):
                with contextlib.suppress(threading.BrokenBarrierError):
                    barrier.wait(timeout=10)
                    met[step].append(self.name)
        return original(self, command, **kwargs)

    monkeypatch.setattr(SshTransport, "run", run)
    client = SyncClient(cfg)
    try:
        client.down()
    finally:
        client.close()
    names = sorted(pname(h) for h in hosts)
    assert {step: sorted(who) for step, who in met.items()} == {"stop": names, "rm -rf": names}
    assert not any(h.root.exists() for h in hosts)


# ---- round trips ---------------------------------------------------------------------------


def test_watch_costs_one_call_per_host_per_round_whatever_the_job_count(
    sshd_factory: Any, project: Project, ledger_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """30 jobs on 2 hosts (15 slots each, so all run at once). They wait for a gate file;
    once all are running the gate opens and the 15 jobs of each host end together: seeing
    them end and bringing their outputs home must take a few round trips per host, not one
    (or more) per job."""
    from cloudsend.pipeline.session import Session

    hosts = sshd_factory(1) + sshd_factory(1, user="ubuntu", stock_limits=True)
    ledger = ledger_dir / "ledger"
    gate = ledger_dir / "gate"
    jobs = 30
    command = (
        f'echo "$CLOUDSEND_JOB_ID x $$" >> {ledger} && '
        f"for i in $(seq 600); do [ -e {gate} ] && break; sleep 0.05; done && "  # <= 30 s
        'echo "$CLOUDSEND_JOB_ID" > out.txt'
    )
    cfg = project.config(ssh_config(hosts, ledger, jobs=jobs, sleep=0, cpus=15, command=command))
    counter = CallCounter(monkeypatch)
    spy = FetchSpy(monkeypatch)
    marks: dict[str, int] = {}
    wait = Session.wait

    def marked_wait(self: Session, *args: Any, **kwargs: Any) -> Any:
        marks["watch"] = counter.mark()
        try:
            return wait(self, *args, **kwargs)
        finally:
            marks["watched"] = counter.mark()

    def open_gate() -> None:
        wait_for(lambda: len(ledger_ids(ledger)) == jobs, 60, "every job running")
        marks["gate"] = counter.mark()
        gate.touch()

    monkeypatch.setattr(Session, "wait", marked_wait)
    summary = api_run(cfg, during=open_gate)
    assert summary.counts() == {"DONE": jobs}, summary.counts()
    check_outputs(summary.results_dir, jobs)
    assert {v.host for v in summary.jobs} == {pname(h) for h in hosts}, "jobs not spread"
    watching = counter.between(marks["watch"], marks["watched"])
    ending = counter.between(marks["gate"], marks["watched"])
    whole = counter.between(0)
    for h in hosts:
        name = pname(h)
        mine = sum(1 for v in summary.jobs if v.host == name)
        rounds = counter.rounds[name]
        calls = watching.get(name)
        assert calls, f"{name}: no call while watching"
        # while watching, a host sees only each round's collect: status, pack and the
        # archive itself on one channel; nothing per job, no separate download
        assert set(calls) == {"collect"}, calls
        assert calls["collect"] <= rounds, (calls, rounds)
        # status-type calls over the whole run: the rounds, plus the status `run` asks
        # (reconcile) before submitting
        assert whole[name]["collect"] + whole[name]["status"] <= rounds + 1, (whole, rounds)
        # the host's jobs all ending: a few rounds and archives, not one per job (the long
        # poll in flight when the gate opened may bring them all: no call after it)
        ended = ending.get(name, Counter())
        assert ended["collect"] <= 5 < mine, (ended, mine)
        assert 1 <= spy.per_host()[name] <= 3, (spy.downloads, mine)
    # every job's outputs came home once, in archives carrying several jobs each
    assert spy.per_job() == {v.job_id: 1 for v in summary.jobs}, spy.downloads
    assert sum(spy.per_host().values()) <= 6, spy.downloads


# ---- liveness during a long download -------------------------------------------------------


def test_a_slow_download_does_not_get_a_healthy_host_declared_lost(
    sshd_factory: Any, project: Project, ledger_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The results archive takes about twice host_lost_after to come home (a slow link: the
    download is throttled as its chunks arrive). The host answers all along, so it must not
    be declared lost nor its job run again elsewhere."""
    from cloudsend.transport.ssh import ChannelOutput

    hosts = sshd_factory(2)
    ledger = ledger_dir / "ledger"
    lost_after = 3.0
    size = 3 * 2**20  # incompressible: the archive is as big
    rate = size / (2 * lost_after)  # bytes per second
    command = f'echo "$CLOUDSEND_JOB_ID x $$" >> {ledger} && head -c {size} /dev/urandom > out.txt'
    cfg = project.config(
        ssh_config(hosts, ledger, jobs=1, sleep=0, lost_after=lost_after, command=command)
    )
    original = ChannelOutput.chunks
    durations: list[float] = []

    def slow_chunks(self: ChannelOutput, *args: Any, **kwargs: Any) -> Iterator[bytes]:
        # the only commands streamed during a run are the watcher's collects, each archive
        # coming after its answer on the same channel
        began = time.monotonic()
        try:
            for chunk in original(self, *args, **kwargs):
                time.sleep(len(chunk) / rate)
                yield chunk
        finally:
            durations.append(time.monotonic() - began)

    monkeypatch.setattr(ChannelOutput, "chunks", slow_chunks)
    notices = Notices()
    spy = FetchSpy(monkeypatch)
    summary = api_run(cfg, notices.reporter, poll_wait=1.0)
    assert summary.counts() == {"DONE": 1}, summary.counts()
    assert durations and max(durations) > lost_after + 1.0, durations  # the scenario held
    for h in hosts:
        assert notices.first(lost_notice(pname(h))) is None, notices.texts()
    assert not any("re-queuing" in m for m in notices.texts()), notices.texts()
    assert len(ledger_ids(ledger)) == 1, "the job ran again elsewhere"
    (out,) = summary.results_dir.glob("*/out.txt")
    assert out.stat().st_size == size
    job = summary.jobs[0]
    remote = next(h.root for h in hosts if pname(h) == job.host) / "jobs" / job.job_id
    there = (remote / "work" / "out.txt").read_bytes()
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(there).digest()
    assert spy.per_job() == {job.job_id: 1}


def test_a_results_stream_cut_midway_comes_home_whole_once(
    sshd_factory: Any, project: Project, ledger_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host's sshd dies while a round's archive is coming (after collect's answer, on the
    same channel), and is back 2 s later. Nothing is run again; the job's outputs arrive
    whole and once, from a later round's archive."""
    from cloudsend.transport.ssh import ChannelOutput

    (host,) = sshd_factory(1)
    ledger = ledger_dir / "ledger"
    size = 8 * 2**20  # incompressible: the archive is as big, many chunks
    command = f'echo "$CLOUDSEND_JOB_ID x $$" >> {ledger} && head -c {size} /dev/urandom > out.txt'
    cfg = project.config(ssh_config([host], ledger, jobs=1, sleep=0, command=command))
    original = ChannelOutput.chunks
    cut = threading.Event()

    def cutting(self: ChannelOutput, *args: Any, **kwargs: Any) -> Iterator[bytes]:
        got = 0
        for chunk in original(self, *args, **kwargs):
            got += len(chunk)
            if got > 2**20 and not cut.is_set():
                cut.set()
                host.kill()
                threading.Timer(2.0, host.start).start()
            yield chunk

    monkeypatch.setattr(ChannelOutput, "chunks", cutting)
    notices = Notices()
    spy = FetchSpy(monkeypatch)
    summary = api_run(cfg, notices.reporter, poll_wait=1.0)
    assert cut.is_set(), "the scenario did not happen: no archive of over 1 MB was streamed"
    assert summary.counts() == {"DONE": 1}, (summary.counts(), notices.texts())
    assert len(ledger_ids(ledger)) == 1, "the job ran again"
    job = summary.jobs[0]
    assert job.fetched
    (out,) = summary.results_dir.glob("*/out.txt")
    there = host.root / "jobs" / job.job_id / "work" / "out.txt"
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(there.read_bytes()).digest()
    assert spy.per_job() == {job.job_id: 1}, spy.downloads  # the cut one never counted
    # the cut archive is not left half-unpacked anywhere in the results
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []
