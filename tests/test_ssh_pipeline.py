"""The whole pipeline over real OpenSSH hosts on loopback, with real faults injected:
sshd killed and restarted, a host terminated for good, a host frozen, cloudsend SIGKILLed,
a re-run that must send nothing, and a host whose key changed."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Project
from tests.ssh_helpers import (
    FetchSpy,
    Notices,
    api_run,
    check_outputs,
    check_results,
    ledger_ids,
    lost_notice,
    pname,
    processes_under,
    ssh_config,
    wait_for,
)
from tests.waiting import host_health, wait_until


def done_attempts(project: Project) -> dict[str, int]:
    """How many attempts of each job count as its DONE result (superseded ones do not)."""
    from cloudsend.state import Store

    with Store(project.state_dir() / "state.db") as store:
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
    sshd_factory: Any, project: Project, ledger_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the host that goes down logs in as the non-root ubuntu user (with sudo, as cloud images
    # do) and keeps sshd's stock MaxStartups/MaxSessions limits
    hosts = sshd_factory(1) + sshd_factory(1, user="ubuntu", stock_limits=True)
    victim = hosts[1]
    ledger = ledger_dir / "ledger"
    cfg = project.config(ssh_config(hosts, ledger, jobs=8, sleep=1.5))
    spy = FetchSpy(monkeypatch)
    jobs_at_kill: list[str] = []

    def kill_then_restart() -> None:
        # a job running on the victim (its agent is detached, so the job survives the kill)
        wait_for(
            lambda: any(" sleep " in p for p in processes_under(victim.root)), 60, "a job there"
        )
        victim.kill()
        jobs_at_kill.extend(processes_under(victim.root))
        # the outage lasts until cloudsend has seen it (the host recorded unreachable)
        wait_until(
            lambda: host_health(project.state_dir() / "state.db", pname(victim)) == "unreachable",
            60,
            "the outage seen",
        )
        victim.start()

    summary = api_run(cfg, during=kill_then_restart)
    assert summary.counts() == {"DONE": 8}, summary.counts()
    assert any(" sleep " in p for p in jobs_at_kill), "no job was running when sshd died"
    check_outputs(summary.results_dir, 8)
    ids = ledger_ids(ledger)
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 8, f"a job ran twice: {ids}"
    # each job's outputs came home in exactly one archive download: a second download of
    # the same attempt (which the store would silently record over the first) shows as 2
    assert spy.per_job() == {v.job_id: 1 for v in summary.jobs}, spy.downloads
    assert victim.accepted_logins() >= 2, "the victim was never reconnected to"


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
    sshd_factory: Any, project: Project, ledger_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hosts = sshd_factory(2)
    frozen = hosts[0]
    ledger = ledger_dir / "ledger"
    lost_after, poll = 6.0, 1.0
    cfg = project.config(ssh_config(hosts, ledger, jobs=6, sleep=3, lost_after=lost_after))
    notices = Notices()
    spy = FetchSpy(monkeypatch)
    is_lost = lost_notice(pname(frozen))
    frozen_at: list[float] = []

    def freeze_then_thaw() -> None:
        wait_for(
            lambda: any(" sleep " in p for p in processes_under(frozen.root)), 60, "a job there"
        )
        frozen.freeze()
        frozen_at.append(time.monotonic())
        wait_for(lambda: notices.first(is_lost) is not None, lost_after + 30, "lost notice")
        wait_for(lambda: any("re-queuing" in m for m in notices.texts()), 10, "jobs re-queued")
        frozen.thaw()

    try:
        summary = api_run(cfg, notices.reporter, poll_wait=poll, during=freeze_then_thaw)
    finally:
        frozen.thaw()
    lost_at = notices.first(is_lost)
    assert lost_at is not None, notices.texts()
    # Declared lost within host_lost_after + one poll of the freeze. The last status before
    # the freeze is at most one poll old (a long poll of `poll` s plus its round trip), and
    # the monitor looks at last_ok at least every 0.5 s (its event wait): that 0.5 s, plus
    # 0.5 s for thread scheduling on this 2-core machine, is the margin. And not early: no
    # sooner than host_lost_after after the last answer, which is at most one poll (+ the
    # same margin) before the freeze.
    took = lost_at - frozen_at[0]
    assert lost_after - poll - 1.0 <= took <= lost_after + poll + 1.0, (took, notices.texts())
    assert summary.counts() == {"DONE": 6}, summary.counts()
    check_outputs(summary.results_dir, 6)
    # Each job counts once: one attempt DONE, any other closed as superseded (both may have
    # finished when the frozen host thawed; only one is the job's result) ...
    assert set(done_attempts(project).values()) == {1}, done_attempts(project)
    # ... and its outputs were downloaded once, from whichever host ran the counted attempt
    once = {v.job_id: 1 for v in summary.jobs}
    assert spy.per_job() == once, (spy.downloads, notices.texts())
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
