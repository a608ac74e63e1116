"""The whole pipeline over real OpenSSH hosts on loopback, with real faults injected:
sshd killed and restarted, a host terminated for good, a host frozen, cloudsend SIGKILLed,
a re-run that must send nothing, and a host whose key changed."""

from __future__ import annotations

import json
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Project

JOB = (
    'echo "$CLOUDSEND_JOB_ID $(hostname) $$" >> {ledger} && sleep {sleep} && '
    'echo "$CLOUDSEND_JOB_ID" > out.txt'
)


@pytest.fixture
def ledger_dir() -> Iterator[Path]:
    # the ubuntu test user must be able to append here (pytest's tmp dirs are root-only)
    path = Path(tempfile.mkdtemp(prefix="cloudsend-ledger-"))
    path.chmod(0o777)
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def ssh_config(
    hosts: list[Any],
    ledger: Path,
    *,
    jobs: int,
    sleep: float,
    lost_after: float = 60,
    extra: str = "",
) -> str:
    lines = [
        "project: sshtest",
        "provider: ssh",
        f"host_lost_after: {lost_after}",
        extra,
        "hosts:",
    ]
    for h in hosts:
        lines.append(
            f"  - {{address: 127.0.0.1, port: {h.port}, user: {h.user}, key: {h.key}, "
            f"cpus: 2, root: {h.root}}}"
        )
    lines += [
        "environments:",
        "  - name: shell",
        "    command: echo env ready",
        "jobs:",
        "  - env_name: shell",
        f"    run_command: '{JOB.format(ledger=ledger, sleep=sleep)}'",
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
    results = Path(doc["results_dir"])
    outs = sorted(results.glob("*/out.txt"))
    assert len(outs) == jobs
    for out in outs:
        assert out.read_text().strip() == out.parent.name
    assert len({p.parent.name for p in outs}) == jobs


def fetch_counts(project: Project) -> dict[str, int]:
    """How many attempts of each job had their outputs fetched (from the state store)."""
    from cloudsend.state import Store

    with Store(project.path / ".cloudsend" / "state.db") as store:
        run = store.latest_run()
        assert run is not None
        return {
            j.job_id: sum(
                1
                for a in store.attempts(run.id, j.job_id)
                if store.fetched_files(run.id, j.job_id, a.attempt)
            )
            for j in store.jobs(run.id)
        }


def done_attempts(project: Project) -> dict[str, int]:
    """How many attempts of each job count as its DONE result (superseded ones do not)."""
    from cloudsend.state import Store

    with Store(project.path / ".cloudsend" / "state.db") as store:
        run = store.latest_run()
        assert run is not None
        return {
            j.job_id: sum(
                1
                for a in store.attempts(run.id, j.job_id)
                if a.state == "DONE" and not (a.reason or "").startswith("superseded")
            )
            for j in store.jobs(run.id)
        }


def test_sshd_killed_mid_run_and_restarted(
    sshd_factory: Any, project: Project, ledger_dir: Path
) -> None:
    hosts = sshd_factory(2)
    ledger = ledger_dir / "ledger"
    project.config(ssh_config(hosts, ledger, jobs=8, sleep=1.5))
    bg = project.popen("run", "--json")
    wait_for(lambda: len(ledger_ids(ledger)) >= 2, 60, "jobs to start")
    hosts[0].kill()
    time.sleep(5)
    hosts[0].start()
    out, err = bg.communicate(timeout=180)
    assert bg.returncode == 0, err
    doc = json.loads(out)
    check_results(doc, 8)
    ids = ledger_ids(ledger)
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 8, "a job ran twice"
    assert set(fetch_counts(project).values()) == {1}, "an output was fetched twice"


def test_host_terminated_for_good(sshd_factory: Any, project: Project, ledger_dir: Path) -> None:
    hosts = sshd_factory(3)
    ledger = ledger_dir / "ledger"
    project.config(ssh_config(hosts, ledger, jobs=9, sleep=2, lost_after=5))
    bg = project.popen("run", "--json")
    wait_for(lambda: len(ledger_ids(ledger)) >= 3, 60, "jobs to start")
    hosts[1].kill()
    hosts[1].wipe()
    out, err = bg.communicate(timeout=240)
    assert bg.returncode == 0, err
    doc = json.loads(out)
    check_results(doc, 9)
    dead = pname(hosts[1])
    assert all(j["host"] != dead for j in doc["jobs"]), "a job is still on the dead host"


def test_frozen_host_is_declared_lost_then_thawed(
    sshd_factory: Any, project: Project, ledger_dir: Path
) -> None:
    from cloudsend.api import SyncClient
    from cloudsend.pipeline.reporting import NullReporter

    hosts = sshd_factory(2)
    ledger = ledger_dir / "ledger"
    lost_after = 6.0
    cfg = project.config(ssh_config(hosts, ledger, jobs=6, sleep=3, lost_after=lost_after))

    notices: list[tuple[float, str]] = []

    class Recorder(NullReporter):
        def notice(self, message: str) -> None:
            notices.append((time.monotonic(), message))

    client = SyncClient(cfg, Recorder(), poll_wait=1.0)
    frozen_at: list[float] = []

    def freeze_then_thaw() -> None:
        wait_for(lambda: len(ledger_ids(ledger)) >= 2, 60, "jobs to start")
        hosts[0].freeze()
        frozen_at.append(time.monotonic())
        wait_for(lambda: any("lost" in m for _, m in notices), lost_after + 30, "lost notice")
        time.sleep(1)
        hosts[0].thaw()

    fault = threading.Thread(target=freeze_then_thaw)
    try:
        client.start()
        client.deploy()
        client.run()
        fault.start()
        views = client.wait(timeout=180)
        fault.join(timeout=60)
        client.fetch_results()
    finally:
        hosts[0].thaw()
        client.close()
    lost_at = next(t for t, m in notices if "lost" in m)
    # declared lost within host_lost_after + one poll (the poll is 1 s; allow the call timeout)
    assert lost_at - frozen_at[0] <= lost_after + 1.0 + 3.0, notices
    assert any("re-queuing" in m for _, m in notices), notices
    assert [v.state for v in views] == ["DONE"] * 6
    results = client.session.results_dir
    outs = sorted(results.glob("*/out.txt"))
    assert len(outs) == 6 and all(p.read_text().strip() == p.parent.name for p in outs)
    # Each job counts once: one attempt DONE, any other closed as superseded (both may have
    # finished when the frozen host thawed; only one is the job's result).
    assert set(done_attempts(project).values()) == {1}, done_attempts(project)
    # once thawed, a later status sees each job once and no second result appears
    again = json.loads(project.cli("run", "--json", check=True).stdout)
    check_results(again, 6)


def test_cloudsend_sigkilled_then_resumed(
    sshd_factory: Any, project: Project, ledger_dir: Path
) -> None:
    hosts = sshd_factory(2)
    ledger = ledger_dir / "ledger"
    project.config(ssh_config(hosts, ledger, jobs=8, sleep=1))
    first = project.popen("run")
    wait_for(lambda: len(ledger_ids(ledger)) >= 4, 60, "jobs to start")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    doc = json.loads(project.cli("run", "--json", check=True).stdout)
    check_results(doc, 8)
    ids = ledger_ids(ledger)
    assert len(ids) == 8 and len(set(ids)) == 8, f"a job ran twice: {ids}"


def test_rerun_sends_nothing_and_builds_nothing(
    sshd_factory: Any, project: Project, ledger_dir: Path
) -> None:
    hosts = sshd_factory(2)
    ledger = ledger_dir / "ledger"
    project.write("big.bin", "x" * 100_000)
    project.config(
        ssh_config(hosts, ledger, jobs=4, sleep=0).replace(
            "    output_file: out.txt", "    output_file: out.txt\n    upload_files: big.bin"
        )
    )
    first = json.loads(project.cli("run", "--json", check=True).stdout)
    assert first["bytes_sent"] >= 2 * 100_000  # one copy per host, not per job
    assert first["files_sent"] == 2
    assert first["envs_submitted"] == 2
    again = json.loads(project.cli("run", "--json", check=True).stdout)
    assert (again["bytes_sent"], again["files_sent"], again["envs_submitted"]) == (0, 0, 0)
    # a new job with the same file and environment: still nothing re-sent or rebuilt
    cfg = project.path / "cloudsend.yaml"
    cfg.write_text(
        cfg.read_text().replace(
            "repeat: 4",
            "repeat: 4\n  - env_name: shell\n"
            "    run_command: cat big.bin | wc -c\n"
            "    upload_files: big.bin",
        )
    )
    third = json.loads(project.cli("run", "--json", check=True).stdout)
    assert third["counts"] == {"DONE": 5}
    assert (third["bytes_sent"], third["envs_submitted"]) == (0, 0)


def test_changed_host_key_is_refused(sshd_factory: Any, project: Project, ledger_dir: Path) -> None:
    hosts = sshd_factory(1)
    ledger = ledger_dir / "ledger"
    project.config(ssh_config(hosts, ledger, jobs=1, sleep=0))
    project.cli("run", check=True)
    known = project.path / ".cloudsend" / "known_hosts"
    assert known.exists() and (known.stat().st_mode & 0o777) == 0o600
    hosts[0].regenerate_host_key()
    before = len(ledger_ids(ledger))
    proc = project.cli("run", "--reset")
    assert proc.returncode != 0
    assert str(hosts[0].port) in proc.stderr and "known_hosts" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(ledger_ids(ledger)) == before


def test_status_shows_host_health(sshd_factory: Any, project: Project, ledger_dir: Path) -> None:
    hosts = sshd_factory(2)
    ledger = ledger_dir / "ledger"
    project.config(ssh_config(hosts, ledger, jobs=2, sleep=0))
    project.cli("run", check=True)
    hosts[1].kill()
    doc = json.loads(project.cli("status", "--json", check=True).stdout)
    health = {h["name"]: h["health"] for h in doc["hosts"]}
    assert health[pname(hosts[0])] == "ok"
    assert health[pname(hosts[1])] == "unreachable"
