"""Issue 10, items 12, 17, 18, 19 and 24: projects kept apart (state, hosts, results), the
host's file store immune to jobs, environment ids that cannot collide or be refused, and
`run` telling what it did when there was nothing left to do."""

from __future__ import annotations

import json
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from cloudsend.config.layout import legacy_owner, owner_conflict, results_folder
from cloudsend.state import Store
from tests.conftest import Project

BROKEN_ENV = """
project: {name}
environments:
  - name: broken
    command: exit 3
jobs:
  - run_command: echo {name} > out.txt
    output_file: out.txt
"""

GOOD = """
project: {name}
jobs:
  - run_command: echo {name} > out.txt
    output_file: out.txt
"""


# ---- item 12: two configs in one folder ------------------------------------------------------


def test_two_configs_in_one_folder_keep_their_state_hosts_and_results_apart(
    project: Project,
) -> None:
    project.config(BROKEN_ENV.format(name="bee"), name="b.yaml")
    project.config(GOOD.format(name="ay"), name="a.yaml")
    failed = project.cli("run", "b.yaml")
    assert failed.returncode == 5, failed.stderr  # b's environment fails to build
    ok = project.cli("run", "a.yaml", "--json")
    assert ok.returncode == 0, ok.stderr + ok.stdout  # b's failure is not a's
    doc = json.loads(ok.stdout)
    assert doc["env_failures"] == {}
    assert Path(doc["results_dir"]) == project.path / "results" / "ay" / "run-1"
    ours = sorted(Path(doc["results_dir"]).glob("*/out.txt"))
    assert [p.read_text() for p in ours] == ["ay\n"]  # nothing of b's among a's results
    assert not list((project.path / "results" / "bee").glob("run-*/*/out.txt"))
    # each project its own store (a's jobs only in a's) and its own local host
    stores = project.path / ".cloudsend" / "projects"
    for name, expect in (("ay", "echo-"), ("bee", "echo-")):
        with Store(stores / name / "state.db") as store:
            run = store.latest_run()
            assert run is not None and run.id == 1
            jobs = store.jobs(run.id)
            assert len(jobs) == 1 and expect in jobs[0].job_id
        marker = stores / name / "hosts" / "local" / ".cloudsend-root"
        assert marker.read_text().strip() == f"cloudsend root of project {name}"
    # status of each shows its own job only, and a's run again is clean
    assert "ABORTED" not in project.cli("status", "a.yaml", check=True).stdout
    assert "ABORTED" in project.cli("status", "b.yaml", check=True).stdout
    assert project.cli("run", "a.yaml").returncode == 0


def test_a_second_config_with_the_same_project_name_is_refused(project: Project) -> None:
    project.config(GOOD.format(name="same"), name="a.yaml")
    project.config(GOOD.format(name="same"), name="b.yaml")
    project.cli("run", "a.yaml", check=True)
    for command in ("run", "status"):
        proc = project.cli(command, "b.yaml")
        assert proc.returncode == 7, proc.stderr  # a state error, before anything runs
        assert "b.yaml and a.yaml in this folder both name the project 'same'" in proc.stderr
        assert "project:" in proc.stderr and "Traceback" not in proc.stderr
    assert len(list((project.path / "results" / "same").glob("run-1/*"))) == 1
    # a renamed config (the recorded one is gone) takes its project over
    (project.path / "a.yaml").unlink()
    project.cli("run", "b.yaml", check=True)
    assert (project.state_dir() / "config").read_text() == "b.yaml\n"


def test_a_folder_of_an_older_cloudsend_keeps_its_layout(project: Project) -> None:
    """State and local hosts at .cloudsend/ (before projects had folders) stay in use by the
    project the hosts are marked for: its run goes on (no second agent, no lost record)."""
    project.config(GOOD.format(name="old"))
    project.cli("run", check=True)
    own = project.state_dir()
    legacy = project.path / ".cloudsend"
    project.cli("down", check=True)
    (own / "state.db").rename(legacy / "state.db")
    for extra in ("-wal", "-shm"):
        if (own / f"state.db{extra}").exists():
            (own / f"state.db{extra}").rename(legacy / f"state.db{extra}")
    (legacy / "hosts" / "local").mkdir(parents=True)
    (legacy / "hosts" / "local" / ".cloudsend-root").write_text("cloudsend root of project old\n")
    for path in sorted(own.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    own.rmdir()
    done = project.cli("run", "--json", check=True)
    assert json.loads(done.stdout)["run"] == 1  # the older store, resumed
    assert json.loads(done.stdout)["results_dir"] == str(project.path / "results" / "run-1")
    assert not own.exists()
    assert (legacy / "hosts" / "local" / "agent.py").is_file()


def test_an_environment_fixed_since_it_failed_is_not_reported_failed(project: Project) -> None:
    """The host keeps the failed build of the environment's old version: only this plan's
    environments are the run's."""
    project.config(BROKEN_ENV.format(name="fix"))
    assert project.cli("run").returncode == 5
    project.config(BROKEN_ENV.format(name="fix").replace("exit 3", "echo fixed"))
    proc = project.cli("run", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["env_failures"] == {}


@pytest.mark.parametrize(
    ("lines", "owner"),
    [
        ([], None),
        (["cloudsend root of project a"], "a"),
        (["cloudsend root of project a", "cloudsend root of project a"], "a"),
        (["cloudsend root of project a", "cloudsend root of project b"], None),
        (["something else"], None),
    ],
)
def test_legacy_owner(lines: list[str], owner: str | None) -> None:
    assert legacy_owner(lines) == owner


@pytest.mark.parametrize(
    ("recorded", "exists", "refused"),
    [
        (None, False, False),  # first use
        ("a.yaml", True, False),  # the owner itself
        ("b.yaml", True, True),  # another config file of the same name, still there
        ("b.yaml", False, False),  # the owner was renamed or removed: taken over
    ],
)
def test_owner_conflict(recorded: str | None, exists: bool, refused: bool) -> None:
    assert (owner_conflict("p", "a.yaml", recorded, exists) is not None) is refused


def test_two_projects_on_one_ssh_host_get_a_root_each(
    sshd_factory: Any, project: Project, ledger_dir: Path
) -> None:
    """The ssh provider: two configs in one folder, one host, default roots: each project
    its own ~/.cloudsend/<project>/, its own store and results, one's failure not the other's."""
    import pwd

    from tests.ssh_helpers import ssh_config

    host = sshd_factory(1, user="ubuntu")[0]
    tag = uuid.uuid4().hex[:8]
    home = Path(pwd.getpwnam("ubuntu").pw_dir)
    names = {"a.yaml": f"pa-{tag}", "b.yaml": f"pb-{tag}"}
    for file, name in names.items():
        project.config(
            ssh_config([host], ledger_dir / name, jobs=1, sleep=0, project=name, with_root=False),
            name=file,
        )
    broken = (project.path / "b.yaml").read_text().replace("echo env ready", "exit 3")
    (project.path / "b.yaml").write_text(broken)
    try:
        assert project.cli("run", "b.yaml").returncode == 5
        ok = project.cli("run", "a.yaml", "--json")
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["env_failures"] == {}
        for name in names.values():
            marker = home / ".cloudsend" / name / ".cloudsend-root"
            assert marker.read_text().strip() == f"cloudsend root of project {name}"
        got = sorted((project.path / "results" / names["a.yaml"]).glob("run-1/*/out.txt"))
        assert len(got) == 1
    finally:
        for file in names:
            project.cli("down", file, "--force")
    assert not (home / ".cloudsend" / names["a.yaml"]).exists()
    assert not (home / ".cloudsend" / names["b.yaml"]).exists()


# ---- item 24: the results-folder rule ------------------------------------------------------


@pytest.mark.parametrize(
    ("run_id", "job_id", "folder"),
    [
        (1, None, "run-1"),
        (1, "j000-echo-403dba2c-0", "run-1/j000-echo-403dba2c-0"),
        # the same job edited: a new id, so a folder of its own in the same run
        (1, "j000-echo-e706b713-0", "run-1/j000-echo-e706b713-0"),
        # after run --reset: the next run
        (2, "j000-echo-e706b713-0", "run-2/j000-echo-e706b713-0"),
    ],
)
def test_results_folder(run_id: int, job_id: str | None, folder: str) -> None:
    assert results_folder(run_id, job_id) == PurePosixPath(folder)


def test_results_folder_refuses_a_run_that_cannot_exist() -> None:
    with pytest.raises(ValueError):
        results_folder(0)
