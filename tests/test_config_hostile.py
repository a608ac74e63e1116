"""Careless and hostile values in a config: one clear message each, found at validation, and
nothing later that crashes, loops or fills the memory on them."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from cloudsend.config import load_config
from cloudsend.config.models import MAX_JOB_RUNS, MAX_MACHINES, safe_name
from cloudsend.errors import ConfigError
from tests.conftest import Project


def error_of(data: dict[str, Any], tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(data, base_dir=tmp_path)
    return str(info.value)


JOB = {"run_command": "echo hi"}


@pytest.mark.parametrize(
    "name", ["../important", "..", ".", "-x", ".x", "a/b", "a\\b", "x..y", "é", "a b", "x" * 65]
)
def test_unsafe_project_names_are_refused(tmp_path: Path, name: str) -> None:
    message = error_of({"project": name, "jobs": [JOB]}, tmp_path)
    assert message.startswith("project: is not a safe name"), message
    assert "letters, digits" in message


@pytest.mark.parametrize("name", ["demo", "My_Demo", "exp-1.2", "_x", "x" * 64])
def test_safe_project_names_load(tmp_path: Path, name: str) -> None:
    assert load_config({"project": name, "jobs": [JOB]}, base_dir=tmp_path).project_name == name


def test_a_default_project_name_from_an_odd_file_name_is_made_safe(tmp_path: Path) -> None:
    path = tmp_path / "..my config (v2).yaml"
    path.write_text("jobs: [{run_command: echo}]\n")
    assert load_config(path).project_name == "my-config-v2"
    assert safe_name("..") == "cloudsend" and safe_name("a..b") == "a.b"


@pytest.mark.parametrize("name", ["py/a", "py a", "../e", "x" * 65, "-e"])
def test_unsafe_environment_names_are_refused(tmp_path: Path, name: str) -> None:
    data = {"environments": [{"name": name, "command": "true"}], "jobs": [JOB]}
    message = error_of(data, tmp_path)
    assert message.startswith("environments[0].name: is not a safe name"), message


@pytest.mark.parametrize(
    ("root", "why"),
    [
        ("relative/dir", "must be an absolute path"),
        ("/srv/../home/me", "contains '..'"),
        ("/", "is the root folder"),
        ("~", "is your home folder"),
        ("~//", "is your home folder"),
        ("/tmp/a\nb", "control chars"),
    ],
)
def test_unsafe_host_roots_are_refused(tmp_path: Path, root: str, why: str) -> None:
    data = {"provider": "ssh", "hosts": [{"address": "h", "root": root}], "jobs": [JOB]}
    message = error_of(data, tmp_path)
    assert message.startswith("hosts[0].root: "), message
    assert why in message


def test_host_roots_are_normalised(tmp_path: Path) -> None:
    data = {"provider": "ssh", "hosts": [{"address": "h", "root": "~//cs/./p/"}], "jobs": [JOB]}
    assert load_config(data, base_dir=tmp_path).ssh.hosts[0].root == "~/cs/p"


def test_an_unknown_key_without_a_close_match_in_hosts_is_reported(tmp_path: Path) -> None:
    message = error_of({"provider": "ssh", "hosts": [{"zzz": 1}], "jobs": [JOB]}, tmp_path)
    assert "hosts[0].zzz: unknown key 'zzz'" in message
    assert "hosts[0].address: is required" in message
    assert "keys of hosts[] entries: address, port" in message


@pytest.mark.parametrize(
    ("section", "entry", "key"),
    [
        ("jobs", {"run_command": "ls", "repeat": 10**7}, "repeat"),
        ("jobs", {"run_command": "ls", "repeat": 10**18}, "repeat"),
        ("jobs", {"run_command": "ls", "cpus_req": 10**9}, "cpus_req"),
        ("instances", {"number": 10**7}, "number"),
        ("instances", {"cpus": 10**9, "explode": True}, "cpus"),
        ("instances", {"disk_size": 10**9}, "disk_size"),
    ],
)
def test_huge_counts_are_refused_at_once(
    tmp_path: Path, section: str, entry: dict[str, Any], key: str
) -> None:
    data: dict[str, Any] = {"jobs": [JOB], section: [entry]}
    began = time.monotonic()
    message = error_of(data, tmp_path)
    assert time.monotonic() - began < 2, "the count was materialised before it was checked"
    assert f"{section}[0].{key}: expected an integer from 1 to " in message


def test_totals_are_bounded_across_entries(tmp_path: Path) -> None:
    per = MAX_JOB_RUNS // 2 + 1
    message = error_of({"jobs": [{"run_command": "a", "repeat": per}] * 2}, tmp_path)
    assert f"jobs: {2 * per} job runs in all" in message
    machines = {"cpus": 1024, "explode": True, "number": 1000}
    message = error_of({"jobs": [JOB], "instances": [machines]}, tmp_path)
    assert f"at most {MAX_MACHINES} are allowed" in message and "1024000 machines" in message


def test_outputs_are_normalised_and_deduplicated(tmp_path: Path) -> None:
    job = {"run_command": "x", "output_files": ["a.txt", "./a.txt", "a.txt", "d//b.txt"]}
    config = load_config({"jobs": [job]}, base_dir=tmp_path)
    assert config.jobs[0].output_files == ["a.txt", "d/b.txt"]


@pytest.mark.parametrize(
    ("outputs", "why"),
    [
        (["stdout.log"], "would overwrite the job's own log"),
        (["./stderr.log"], "would overwrite the job's own log"),
        (["stdout.log/x"], "would overwrite the job's own log"),
        (["d", "d/x.txt"], "one is inside the other"),
        (["d/x.txt", "./d"], "one is inside the other"),
        ([""], "is an empty path"),
        (["a\tb"], "control characters"),
    ],
)
def test_outputs_cloudsend_cannot_fetch_apart_are_refused(
    tmp_path: Path, outputs: list[str], why: str
) -> None:
    message = error_of({"jobs": [{"run_command": "x", "output_files": outputs}]}, tmp_path)
    assert why in message, message


@pytest.mark.parametrize("field", ["upload_files", "input_files"])
def test_an_empty_input_path_is_named_as_such(tmp_path: Path, field: str) -> None:
    message = error_of({"jobs": [{"run_command": "x", field: [""]}]}, tmp_path)
    assert f"jobs[0].{field}[0]: is an empty path" in message
    assert "directory" not in message


def test_a_job_listing_one_output_twice_runs_and_fetches_it_once(project: Project) -> None:
    project.config(
        """
        project: dupes
        jobs:
          - run_command: echo result > a.txt
            output_files: [a.txt, ./a.txt]
            output_file: a.txt
        """
    )
    proc = project.cli("run", "--json")
    assert proc.returncode == 0, proc.stderr
    results = sorted((project.path / "results" / "dupes").glob("run-*/*/a.txt"))
    assert [p.read_text() for p in results] == ["result\n"]
    assert project.cli("fetch").returncode == 0
    assert project.cli("down").returncode == 0


HOSTILE_STDERR = r"""
printf 'array[/0] closing [/bold] tag [red]x[/red]\n' >&2
printf '\033]0;pwned title\007\033[2J\033[31mred\033[0m\n' >&2
printf 'bad utf8: \377\376 end\n' >&2
exit 3
"""
HUGE_LINE = "head -c 200000000 /dev/zero | tr '\\0' x >&2\nexit 4\n"


def test_status_shows_a_table_whatever_a_job_wrote_to_stderr(project: Project) -> None:
    project.write("hostile.sh", HOSTILE_STDERR)
    project.write("huge.sh", HUGE_LINE)
    project.config(
        """
        project: hostile
        jobs:
          - {run_command: bash hostile.sh, upload_files: hostile.sh}
          - {run_command: bash huge.sh, upload_files: huge.sh}
        """
    )
    run = project.cli("run")
    assert run.returncode == 6, run.stderr  # both jobs ABORTED: a job error, not a crash
    for proc in (run, project.cli("status")):
        out = proc.stdout + proc.stderr
        assert "Traceback" not in out and "MarkupError" not in out
        assert "\x1b]" not in out and "\x1b[2J" not in out, "a control sequence got through"
        assert "pwned title" in out or "closing" in out
        assert len(out) < 100_000, "the 200 MB line reached the terminal"
    status = project.cli("status")
    assert status.returncode == 0, status.stderr
    assert "[/bold]" in status.stdout, "markup in job output was eaten instead of shown"
    assert "exit code 3" in status.stdout and "exit code 4" in status.stdout
    doc = json.loads(project.cli("status", "--json").stdout)
    reasons = sorted(j["reason"] for j in doc["jobs"])
    assert reasons[0].startswith("exit code 3: array[/0] closing [/bold]")
    assert reasons[1].startswith("exit code 4: ...xxxx") and len(reasons[1]) < 10_000
