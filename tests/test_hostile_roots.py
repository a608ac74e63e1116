"""A project name or root that points at a user's folder never gets it written into or
deleted, and `down` says when it did not clean a host (real sshd hosts)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudsend.providers.roots import MARKER, marker_text
from cloudsend.state import Store
from tests.conftest import Project
from tests.ssh_helpers import pname, processes_under, ssh_config
from tests.sshd_harness import stop_agents


@pytest.fixture
def ubuntu_home_dir() -> Iterator[Path]:
    """A folder of the user's own in ~ubuntu (with a thesis in it), removed afterwards."""
    from tests.sshd_harness import ensure_user

    pw = ensure_user("ubuntu")
    folder = Path(pw.pw_dir) / f"important-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    (folder / "thesis.txt").write_text("four years of work\n")
    yield folder
    stop_agents(folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("name", ["../{dir}", "..", "-rf", ".hidden", "a/b", "x" * 65])
def test_a_project_name_that_is_a_path_is_refused_before_any_host_is_touched(
    sshd_factory: Any, project: Project, ledger_dir: Path, ubuntu_home_dir: Path, name: str
) -> None:
    hosts = sshd_factory(1, user="ubuntu")
    unsafe = name.format(dir=ubuntu_home_dir.name)
    text = ssh_config(hosts, ledger_dir / "l", jobs=1, sleep=0, with_root=False, project="P")
    project.config(text.replace("project: P", f"project: {unsafe!r}"))
    for command in ("validate", "run", "down"):
        proc = project.cli(command, "cloudsend.yaml")
        assert proc.returncode == 2, (command, proc.stdout, proc.stderr)
        assert "project" in proc.stderr and "not a safe name" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert hosts[0].accepted_logins() == 0, "a host was contacted"
    assert sorted(p.name for p in ubuntu_home_dir.iterdir()) == ["thesis.txt"]


def test_a_root_holding_a_users_files_is_never_used_nor_removed(
    sshd_factory: Any, project: Project, ledger_dir: Path, ubuntu_home_dir: Path
) -> None:
    hosts = sshd_factory(1, user="ubuntu")
    text = ssh_config(hosts, ledger_dir / "l", jobs=1, sleep=0, with_root=False)
    project.config(text.replace("cpus: 2}", f"cpus: 2, root: {ubuntu_home_dir}}}"))
    proc = project.cli("run")
    assert proc.returncode == 3, proc.stderr
    assert "was not made by cloudsend" in proc.stderr and str(ubuntu_home_dir) in proc.stderr
    assert sorted(p.name for p in ubuntu_home_dir.iterdir()) == ["thesis.txt"]
    proc = project.cli("down", "--force")
    assert proc.returncode == 3, proc.stderr
    assert "not made by cloudsend" in proc.stderr and "  127.0.0.1: " in proc.stderr
    assert (ubuntu_home_dir / "thesis.txt").read_text() == "four years of work\n"


def test_down_removes_only_a_root_marked_for_this_project(
    sshd_factory: Any, project: Project, ledger_dir: Path
) -> None:
    hosts = sshd_factory(1)
    root = hosts[0].root
    project.config(ssh_config(hosts, ledger_dir / "l", jobs=1, sleep=0))
    project.cli("run", check=True)
    assert (root / MARKER).read_text().strip() == marker_text("sshtest")
    # the folder now claims to be another project's: down leaves it and says so
    (root / MARKER).write_text(marker_text("someone-else") + "\n")
    proc = project.cli("down")
    assert proc.returncode == 3, proc.stderr
    assert "another cloudsend project" in proc.stderr and "  127.0.0.1: " in proc.stderr
    assert (root / "agent.py").is_file()
    assert processes_under(root) == [], "the agent was not stopped"
    with Store(project.state_dir() / "state.db") as store:
        run = store.latest_run()
        assert run is not None
        assert [(h.name, h.health) for h in store.hosts(run.id)] == [("127.0.0.1", "not down")]
    (root / MARKER).write_text(marker_text("sshtest") + "\n")
    proc = project.cli("down")
    assert proc.returncode == 0, proc.stderr
    assert not root.exists()


@pytest.mark.parametrize("fault", ["sshd killed", "host key changed"])
def test_down_fails_naming_a_host_it_could_not_clean(
    sshd_factory: Any, project: Project, ledger_dir: Path, fault: str
) -> None:
    hosts = sshd_factory(2)
    project.config(ssh_config(hosts, ledger_dir / "l", jobs=2, sleep=0, extra="auto_stop: false"))
    project.cli("run", check=True)
    victim, other = hosts
    if fault == "sshd killed":
        victim.kill()
    else:
        victim.regenerate_host_key()
    proc = project.cli("down")
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert "did not clean 1 host(s)" in proc.stderr and pname(victim) in proc.stderr
    assert "cloudsend down" in proc.stderr  # how to retry
    assert proc.stdout.strip().splitlines()[-1:] != ["down"]
    assert not other.root.exists(), "the reachable host was not cleaned"
    assert (victim.root / "agent.py").is_file()
    with Store(project.state_dir() / "state.db") as store:
        run = store.latest_run()
        assert run is not None
        health = {h.name: h.health for h in store.hosts(run.id)}
    assert health == {pname(victim): "not down", pname(other): "down"}
    if fault == "sshd killed":
        victim.start()
        proc = project.cli("down")
        assert proc.returncode == 0, proc.stderr
        assert not victim.root.exists()
        assert processes_under(victim.root) == []
    else:
        stop_agents(victim.root)


def test_a_root_left_by_an_older_cloudsend_is_adopted_and_removed(
    sshd_factory: Any, project: Project, ledger_dir: Path
) -> None:
    """Roots made before markers hold only the agent's own layout: they are taken over (and
    removed by down) rather than refused, so an upgrade needs no manual clean-up."""
    hosts = sshd_factory(1)
    root = hosts[0].root
    for name in ("agent.py", "version", "status.json"):
        (root / name).write_text("old\n")
    for name in ("files", "jobs", "envs", "inbox"):
        (root / name).mkdir()
    project.config(ssh_config(hosts, ledger_dir / "l", jobs=1, sleep=0))
    project.cli("run", check=True)
    assert (root / MARKER).read_text().strip() == marker_text("sshtest")
    assert project.cli("down").returncode == 0
    assert not root.exists()
