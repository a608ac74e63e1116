"""provider ssh over real sshd hosts: what `down` leaves behind."""

from __future__ import annotations

import contextlib
import shutil
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Project
from tests.ssh_helpers import (
    pname,
    processes_under,
    shared_ledger_dir,
    ssh_config,
    wait_for,
)
from tests.sshd_harness import stop_agents


@pytest.fixture
def ledger_dir() -> Iterator[Path]:
    with shared_ledger_dir() as path:
        yield path


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
    proc = project.cli("down")
    assert proc.returncode == 0, proc.stderr
    for h in hosts:
        assert not h.root.exists(), f"{h.name}: root left behind"
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
