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


# ---- items 18 and 19: environment ids -------------------------------------------------------


def test_env_names_with_characters_an_id_cannot_hold_are_refused(project: Project) -> None:
    project.config(
        """
        dev: true
        environments:
          - {name: py a, command: echo a}
          - {name: py/a, command: echo b}
        jobs:
          - {run_command: echo hi, env_name: py a}
        """
    )
    proc = project.cli("validate", "cloudsend.yaml")
    assert proc.returncode == 2, proc.stdout
    assert "environments[0].name: is not a safe name" in proc.stderr
    assert "environments[1].name: is not a safe name" in proc.stderr


SEES_ITS_ENV = 'cat "$CLOUDSEND_ENV_DIR/which" > out.txt'


def test_env_names_differing_in_a_trailing_dash_or_dot_run_in_their_own_environment(
    project: Project,
) -> None:
    """`py`, `py-` and `py.` are three safe names: under dev: true they made one folder
    (envs/py-dev), and a job of one ran in another's environment."""
    names = ["py", "py-", "py."]
    envs = "".join(
        f"  - name: '{n}'\n    command: echo {i} > \"$CLOUDSEND_ENV_DIR/which\"\n"
        for i, n in enumerate(names)
    )
    jobs = "".join(
        f"  - env_name: '{n}'\n    run_command: '{SEES_ITS_ENV}'\n    output_file: out.txt\n"
        for n in names
    )
    project.config(f"dev: true\nenvironments:\n{envs}jobs:\n{jobs}")
    proc = project.cli("run", "--json")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    results = Path(json.loads(proc.stdout)["results_dir"])
    seen = [(results / j["job_id"] / "out.txt").read_text().strip() for j in _jobs(proc)]
    assert seen == ["0", "1", "2"]
    built = sorted(p.name for p in (project.state_dir() / "hosts/local/envs").iterdir())
    assert built == ["py--dev", "py-dev", "py.-dev"]


def _jobs(proc: Any) -> list[dict[str, Any]]:
    return sorted(json.loads(proc.stdout)["jobs"], key=lambda j: j["index"])


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        (None, "default"),
        ("py", "py"),
        ("py-", "py-"),  # a safe name is its own slug: distinct names, distinct folders
        ("py.", "py."),
        ("Py_3.11", "Py_3.11"),
        # names the loader refuses (a Config built in code): made safe, told apart by a hash
        ("py a", "py-a-a12d2ecf"),  # sha256("py a")[:8]
        ("py/a", "py-a-2e324717"),
        ("../..", "env-0cfd1c96"),
    ],
)
def test_env_slug(name: str | None, slug: str) -> None:
    from cloudsend.bootstrap.render import env_slug

    assert env_slug(name) == slug


def test_env_slugs_are_distinct_and_short_enough_for_the_agent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib

    import cloudsend.agent
    from cloudsend.bootstrap.render import env_slug

    # the agent as it runs on a host: its own folder on sys.path (protocol.py beside it)
    monkeypatch.syspath_prepend(str(Path(cloudsend.agent.__file__).parent))
    check_id = importlib.import_module("agent").check_id

    names = ["py a", "py/a", "py-a", "py_a", "py.a", "py-", "py", "e" * 200, "e" * 201, "é"]
    slugs = [env_slug(n) for n in names]
    assert len(set(slugs)) == len(names)
    for slug in slugs:
        assert len(slug) <= 64
        check_id(f"{slug}-0123456789ab", "env_id")  # what the agent takes (raises if not)


def test_a_200_character_env_name_is_refused_by_validate(project: Project) -> None:
    long = "e" * 200
    project.config(
        f"environments:\n  - {{name: {long}, command: echo}}\n"
        f"jobs:\n  - {{run_command: echo hi, env_name: {long}}}\n"
    )
    for command in (["validate", "cloudsend.yaml"], ["run"]):
        proc = project.cli(*command)
        assert proc.returncode == 2, proc.stderr
        assert "environments[0].name: is not a safe name (use at most 64" in proc.stderr
        assert "Traceback" not in proc.stderr


def _config_in_code(project: Project, **job: Any) -> Any:
    """A Config built in code, as an API user may: the loader's checks do not run."""
    from cloudsend.config.models import Config

    return Config.model_validate(
        {
            "project": "incode",
            "environments": [{"name": "e" * 200, "command": "echo built"}],
            "jobs": [{"run_command": "echo hi > out.txt", "output_files": ["out.txt"], **job}],
            "base_dir": project.path,
        }
    )


def test_a_200_character_env_name_in_code_runs(project: Project) -> None:
    from cloudsend.api import SyncClient

    client = SyncClient(_config_in_code(project), poll_wait=0.2)
    try:
        client.start()
        client.deploy()
        client.run()
        views = client.wait(timeout=60)
    finally:
        client.close()
    assert [(v.state, v.fetched) for v in views] == [("DONE", True)]


def test_a_submission_the_agent_refuses_ends_the_run_with_why(project: Project) -> None:
    """An AgentError on submit is not "submit interrupted … submitting again" forever."""
    from cloudsend.api import SyncClient
    from cloudsend.errors import AgentError

    config = _config_in_code(project, output_files=["../outside.txt"])
    client = SyncClient(config, poll_wait=0.2)
    try:
        client.start()
        client.deploy()
        with pytest.raises(AgentError, match="host local refused the jobs: .*outside"):
            client.run()
            client.wait(timeout=20)  # the old loop: still submitting again when this ends
        hosts = client.session.store.hosts(client.session.current_run())
        assert [(h.name, h.health) for h in hosts] == [("local", "agent error")]
    finally:
        client.close()


def test_two_environments_that_would_share_a_folder_are_refused_in_code(project: Project) -> None:
    """The plan's own check, for a Config built in code: an unnamed environment and one
    named `default` make the same id under dev: true."""
    from cloudsend.config.models import Config
    from cloudsend.errors import ConfigError
    from cloudsend.pipeline.files import FileIndex
    from cloudsend.pipeline.plan import build_plan

    config = Config.model_validate(
        {
            "dev": True,
            "environments": [{"command": "echo 1"}, {"name": "default", "command": "echo 2"}],
            "jobs": [{"run_command": "echo hi"}],
            "base_dir": project.path,
        }
    )
    with pytest.raises(ConfigError, match="would share the folder envs/default-dev"):
        build_plan(config, FileIndex())


# ---- item 17: the host's file store is immutable to jobs --------------------------------------

WRITER = "echo tampered >> input.txt; cat input.txt > out.txt"
READER = "sleep {wait}; cat input.txt > out.txt"


def _store_jobs(*commands: str) -> str:
    return "".join(
        f"  - run_command: '{c}'\n    input_file: input.txt\n    output_file: out.txt\n"
        for c in commands
    )


def _outs(proc: Any) -> list[str]:
    results = Path(json.loads(proc.stdout)["results_dir"])
    return [(results / j["job_id"] / "out.txt").read_text() for j in _jobs(proc)]


def test_a_job_writing_to_its_input_changes_no_other_jobs_input_local(project: Project) -> None:
    """The local provider (root here, whom read-only modes do not stop): a job appending to
    its input changes its own copy; the job beside it, running at the same time, and the job
    of a later run read what was uploaded."""
    project.write("input.txt", "original\n")
    project.config("project: store\njobs:\n" + _store_jobs(WRITER, READER.format(wait=1)))
    first = project.cli("run", "--json")
    assert first.returncode == 0, first.stderr
    assert _outs(first) == ["original\ntampered\n", "original\n"]
    assert (project.path / "input.txt").read_text() == "original\n"
    # the stored copy is as uploaded, and read-only
    (stored,) = (project.state_dir() / "hosts" / "local" / "files").iterdir()
    assert stored.read_text() == "original\n" and stored.stat().st_mode & 0o222 == 0
    # a later run: a new job with the same input (its hash: no upload) reads the original
    three = _store_jobs(WRITER, READER.format(wait=1), READER.format(wait=0))
    project.config("project: store\njobs:\n" + three)
    later = project.cli("run", "--json")
    assert later.returncode == 0, later.stderr
    assert json.loads(later.stdout)["files_sent"] == 0
    assert _outs(later)[2] == "original\n"


def _ssh_store_config(host: Any, *commands: str) -> str:
    return (
        "project: store\nprovider: ssh\nhosts:\n"
        f"  - {{address: 127.0.0.1, port: {host.port}, user: {host.user}, key: {host.key}, "
        f"cpus: 1, root: {host.root}}}\n"
        "jobs:\n" + _store_jobs(*commands)
    )


def test_a_job_cannot_write_to_its_input_on_an_ssh_host(
    sshd_factory: Any, project: Project
) -> None:
    """A login user other than root: the stored copy is read-only, the writer's append is
    refused, and the next job and a later run read what was uploaded."""
    host = sshd_factory(1, user="ubuntu")[0]
    project.write("input.txt", "original\n")
    project.config(_ssh_store_config(host, WRITER, READER.format(wait=0)))
    first = project.cli("run", "--json")
    assert first.returncode == 0, first.stderr
    assert _outs(first) == ["original\n", "original\n"]
    writer = _jobs(first)[0]["job_id"]
    assert "Permission denied" in project.cli("logs", writer, "--stderr", check=True).stdout
    (stored,) = (host.root / "files").iterdir()
    assert stored.read_text() == "original\n" and stored.stat().st_mode & 0o777 == 0o400
    project.config(_ssh_store_config(host, WRITER, READER.format(wait=0), READER.format(wait=0.1)))
    later = project.cli("run", "--json")
    assert later.returncode == 0, later.stderr
    assert _outs(later)[2] == "original\n"


def test_a_stored_input_changed_by_a_job_is_never_used_and_is_sent_again(
    sshd_factory: Any, project: Project
) -> None:
    """What read-only cannot stop (a job that makes its input writable first) the check
    before use catches: the next job is not run on the changed content, and the next
    `cloudsend run` uploads the file again and runs it."""
    host = sshd_factory(1, user="ubuntu")[0]
    project.write("input.txt", "original\n")
    forced = "chmod u+w input.txt && " + WRITER
    project.config(_ssh_store_config(host, forced, READER.format(wait=0)))
    first = project.cli("run", "--json")
    assert first.returncode == 6, first.stderr
    jobs = _jobs(first)
    assert jobs[0]["state"] == "DONE" and jobs[1]["state"] == "ABORTED"
    assert "stored copy was changed after upload" in jobs[1]["reason"]
    assert list((host.root / "files").iterdir()) == []  # the changed copy is gone
    again = project.cli("run", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["files_sent"] == 1
    assert _outs(again)[1] == "original\n"


# ---- item 24: a run with nothing to run, and where an edited job's results go ------------------

TWO_JOBS = """
project: again
jobs:
  - run_command: echo {first} > out.txt
    output_file: out.txt
  - run_command: echo two > out.txt
    output_file: out.txt
"""


def test_a_run_with_everything_done_says_so_and_how_to_run_again(project: Project) -> None:
    project.config(TWO_JOBS.format(first="one"), name="two.yaml")
    first = project.cli("run", "two.yaml", check=True)
    assert "nothing to run" not in first.stdout
    again = project.cli("run", "two.yaml", check=True, env={"COLUMNS": "500"})  # no wrapping
    text = " ".join(again.stdout.split())
    results = project.path / "results" / "again" / "run-1"
    assert f"nothing to run: all 2 job(s) are DONE (run 1), results in {results}." in text
    assert "`cloudsend run --reset two.yaml` (run 2, from scratch" in text
    # an edited job runs again by itself, its results in run-1/ beside the old version's
    project.config(TWO_JOBS.format(first="uno"), name="two.yaml")
    edited = project.cli("run", "two.yaml", "--json", check=True)
    doc = json.loads(edited.stdout)
    assert Path(doc["results_dir"]) == results
    new_id = _jobs(edited)[0]["job_id"]
    old_ids = {p.parent.name for p in results.glob("j000-*/out.txt")} - {new_id}
    assert len(old_ids) == 1  # the old version's folder is kept as it was
    assert (results / results_folder(1, new_id).name / "out.txt").read_text() == "uno\n"
    assert (results / old_ids.pop() / "out.txt").read_text() == "one\n"


@pytest.mark.parametrize(
    ("states", "submitted", "unfinished", "says"),
    [
        (["DONE", "DONE"], 0, 0, "nothing to run: all 2 job(s) are DONE (run 3)"),
        (["DONE", "DONE"], 1, 1, None),  # something ran: the summary tells it
        (["DONE", "DONE"], 0, 1, None),  # one was still running from an earlier run: watched
        (["DONE", "ABORTED"], 0, 0, None),  # not all done: the table and exit code tell
        ([], 0, 0, "nothing to run: the config has no jobs"),
    ],
)
def test_nothing_ran_note(
    states: list[str], submitted: int, unfinished: int, says: str | None
) -> None:
    from cloudsend.core import JobState
    from cloudsend.pipeline.reporting import JobView, RunSummary, nothing_ran_note

    jobs = [
        JobView(f"j{i}", i, 0, JobState[s], "local", 1, 0, None, True)
        for i, s in enumerate(states)
    ]
    summary = RunSummary(run_id=3, results_dir=Path("/r/p/run-3"), jobs=jobs)
    note = nothing_ran_note(summary, submitted, "cloudsend run --reset", unfinished)
    if says is None:
        assert note is None
    else:
        assert note is not None and note.startswith(says)
    if note and jobs:
        assert "results in /r/p/run-3" in note and "`cloudsend run --reset` (run 4" in note
