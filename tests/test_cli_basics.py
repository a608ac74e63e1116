"""CLI surface: help is instant (lazy imports), exit codes are documented, validate/schema."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import Project

HEAVY = ("pydantic", "fabric", "paramiko", "rich", "jinja2", "yaml", "pulumi", "boto3", "sqlite3")


def test_help_imports_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "from cloudsend.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print('LOADED=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Usage: cloudsend" in proc.stdout
    loaded = proc.stdout.strip().splitlines()[-1]
    assert loaded == "LOADED=", f"--help imported {loaded}"


def test_help_lists_commands_and_exit_codes() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cloudsend", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("run", "up", "status", "logs", "fetch", "cancel", "down", "validate", "schema"):
        assert f"  {command} " in proc.stdout
    assert "Exit codes" in proc.stdout and "130" in proc.stdout


def test_validate_and_schema(project: Project) -> None:
    project.config("jobs:\n  - run_command: echo hi\n    repeat: 4\n")
    out = project.cli("validate", "cloudsend.yaml", check=True).stdout
    assert "ok" in out and "4 job run(s)" in out
    schema = json.loads(project.cli("schema", check=True).stdout)
    assert "jobs" in json.dumps(schema)


def test_missing_config_file_is_a_clear_error(project: Project) -> None:
    proc = project.cli("run", "nope.yaml")
    assert proc.returncode == 2
    assert "nope.yaml" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_status_before_any_run(project: Project) -> None:
    project.config("jobs:\n  - run_command: echo hi\n")
    proc = project.cli("status")
    assert proc.returncode == 7
    assert "cloudsend run" in proc.stderr
