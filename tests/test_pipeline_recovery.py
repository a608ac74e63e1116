"""Nothing done is redone: environments, files and jobs across invocations on the local provider."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import Project

CONFIG = """
print_deploy: {print_deploy}
environments:
  - name: env
    command: "echo built >> {ledger}; echo building {marker}"
jobs:
  - env_name: env
    run_command: "cat data.txt > copy.txt; echo ran >> {jobs_ledger}{suffix}"
    upload_files: data.txt
    output_file: copy.txt
    repeat: 2
"""


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _write(
    project: Project, tmp_path: Path, marker: str, print_deploy: bool = False, suffix: str = ""
) -> None:
    project.config(
        CONFIG.format(
            ledger=tmp_path / "builds.txt",
            jobs_ledger=tmp_path / "jobs.txt",
            marker=marker,
            print_deploy=str(print_deploy).lower(),
            suffix=suffix,
        )
    )


def test_only_what_changed_is_redone(project: Project, tmp_path: Path) -> None:
    builds, ran = tmp_path / "builds.txt", tmp_path / "jobs.txt"

    def run() -> dict[str, object]:
        doc: dict[str, object] = json.loads(project.cli("run", "--json", check=True).stdout)
        assert doc["ok"] is True
        return doc

    project.write("data.txt", "payload\n")
    _write(project, tmp_path, "v1")
    first = run()
    assert (first["envs_submitted"], first["files_sent"]) == (1, 1)
    assert (_lines(builds), _lines(ran)) == (1, 2)

    # the job's command changes: new jobs run, the environment is not rebuilt, no file re-sent
    _write(project, tmp_path, "v1", suffix="; true")
    second = run()
    assert (second["envs_submitted"], second["files_sent"]) == (0, 0)
    assert (_lines(builds), _lines(ran)) == (1, 4)

    # an input file's content changes: the jobs are new again, only that file travels
    project.write("data.txt", "payload v2\n")
    third = run()
    assert (third["envs_submitted"], third["files_sent"]) == (0, 1)
    assert (_lines(builds), _lines(ran)) == (1, 6)
    results = Path(str(third["results_dir"]))
    copies = [p.read_text() for p in results.glob("*/copy.txt")]
    assert copies.count("payload v2\n") == 2

    # the environment's content changes: rebuilt once, its jobs run in it
    _write(project, tmp_path, "v2", suffix="; true")
    fourth = run()
    assert fourth["envs_submitted"] == 1
    assert (_lines(builds), _lines(ran)) == (2, 8)

    # nothing changed: nothing built, sent or run
    fifth = run()
    assert (fifth["envs_submitted"], fifth["files_sent"], fifth["bytes_sent"]) == (0, 0, 0)
    assert (_lines(builds), _lines(ran)) == (2, 8)


def test_reset_starts_a_new_run_and_reruns_everything(project: Project, tmp_path: Path) -> None:
    project.write("data.txt", "x\n")
    _write(project, tmp_path, "v1")
    first = json.loads(project.cli("run", "--json", check=True).stdout)
    reset = json.loads(project.cli("run", "--reset", "--json", check=True).stdout)
    assert reset["run"] == first["run"] + 1
    assert _lines(tmp_path / "jobs.txt") == 4
    assert reset["files_sent"] == 1  # the host was wiped: sent again


def test_print_deploy_streams_the_bootstrap_log(project: Project, tmp_path: Path) -> None:
    project.write("data.txt", "x\n")
    _write(project, tmp_path, "streamed-marker", print_deploy=True)
    proc = project.cli("run", check=True)
    assert "building streamed-marker" in proc.stdout


def test_original_python_config_format_runs(project: Project) -> None:
    project.write("work.py", "import sys\nopen('out.txt','w').write(sys.argv[1])\n")
    project.write(
        "seed.py",
        """
        config = {
            'project': 'seed',
            'job_assign': None,
            'mutualize_uploads': False,
            'environments': [{'name': None, 'command': 'true'}],
            'jobs': [{'env_name': None, 'run_script': 'work.py "two words"',
                      'output_file': 'out.txt', 'cpus_req': None, 'repeat': 2}],
        }
        """,
    )
    doc = json.loads(project.cli("run", "seed.py", "--json", check=True).stdout)
    assert doc["counts"] == {"DONE": 2}
    outs = list(Path(doc["results_dir"]).glob("*/out.txt"))
    assert [p.read_text() for p in outs] == ["two words", "two words"]
