"""The CLI commands a user drives by hand, on the local provider: up, status, logs -f, cancel,
fetch --out, run --reset, and the config keys that change how they behave (debug, dev,
recover)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.conftest import Project


def _status(project: Project) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(project.cli("status", "--json", check=True).stdout)
    return doc


def _wait_for(pred: Any, timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_aws_without_the_extra_says_how_to_install(project: Project) -> None:
    project.config("provider: aws\ninstances:\n  - type: t3.micro\njobs:\n  - run_command: x\n")
    hide = "import sys\nfor m in ('boto3', 'pulumi', 'pulumi_aws'):\n    sys.modules[m] = None\n"
    for args in (["preview", "--offline"], ["up", "--yes"], ["run", "--yes"], ["down"]):
        code = hide + f"from cloudsend.cli import main\nmain({args + ['cloudsend.yaml']!r})\n"
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=project.path, capture_output=True, text=True
        )
        assert proc.returncode == 2, (args, proc.stderr)
        assert "pip install 'cloudsend[aws]'" in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_up_then_status_table_then_run(project: Project, tmp_path: Path) -> None:
    built = tmp_path / "built.txt"
    project.config(
        f"""
        project: upfirst
        environments:
          - name: plain
            command: echo built >> {built}
        jobs:
          - run_command: echo hi > out.txt
            output_file: out.txt
            repeat: 2
        """
    )
    up = project.cli("up", check=True)
    assert "hosts ready: local" in up.stdout
    pid_file = project.state_dir() / "hosts/local/agent.pid"
    assert _pid_alive(int(pid_file.read_text().split()[0]))  # the host's agent runs
    assert not built.exists()
    table = project.cli("status", check=True).stdout
    assert "j000-echo" in table and "UNKNOWN" in table
    project.cli("run", check=True)
    assert built.read_text() == "built\n"  # not rebuilt by run
    table = project.cli("status", check=True).stdout
    assert table.count("DONE") == 2 and "host local: ok" in table


def test_cancel_one_job_by_id_logs_follow_and_fetch_out(project: Project, tmp_path: Path) -> None:
    project.config(
        """
        project: handson
        instances:
          - cpus: 3
        jobs:
          - run_command: sleep 60
          - run_command: for i in $(seq 1 12); do echo "line $i"; sleep 0.5; done; echo ok > o.txt
            output_file: o.txt
        """
    )
    run = project.popen("run", "--json")
    try:
        jobs = _wait_for(
            lambda: (
                (doc := _status_or_none(project))
                and all(j["state"] == "RUNNING" for j in doc["jobs"])
                and doc["jobs"]
            ),
            what="both jobs running",
        )
        sleeper = next(j["job_id"] for j in jobs if "sleep" in j["job_id"])
        talker = next(j["job_id"] for j in jobs if j["job_id"] != sleeper)
        follow = project.cli("logs", talker, "-f", timeout=60, check=True).stdout
        assert [f"line {i}" for i in range(1, 13)] == [
            line for line in follow.splitlines() if line.startswith("line ")
        ]
        cancel = project.cli("cancel", sleeper, check=True)
        assert "cancelled 1 job(s)" in cancel.stdout
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err  # a job CANCELLED: the user's decision, not an error
    states = {j["job_id"]: j for j in json.loads(out)["jobs"]}
    assert states[sleeper]["state"] == "CANCELLED" and states[sleeper]["reason"] == "cancelled"
    assert states[talker]["state"] == "DONE"
    fetched = project.cli("fetch", "--out", str(tmp_path / "copy"), check=True)
    assert "results:" in fetched.stdout
    assert (tmp_path / "copy" / talker / "o.txt").read_text() == "ok\n"


def _status_or_none(project: Project) -> dict[str, Any] | None:
    proc = project.cli("status", "--json")
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def test_run_reset_kills_what_the_last_run_left_running(project: Project, tmp_path: Path) -> None:
    flag, pids = tmp_path / "slow", tmp_path / "pids.txt"
    flag.touch()
    project.config(
        f"""
        project: resettable
        jobs:
          - run_command: echo $$ >> {pids}; if [ -e {flag} ]; then sleep 60; fi; echo ok > o.txt
            output_file: o.txt
        """
    )
    first = project.popen("run")
    old = int(_wait_for(lambda: pids.exists() and pids.read_text().split(), what="a job")[0])
    first.kill()  # cloudsend dies; its job goes on on the host
    first.wait(timeout=10)
    assert _pid_alive(old)
    flag.unlink()
    again = json.loads(project.cli("run", "--reset", "--json", check=True).stdout)
    assert again["run"] == 2 and again["counts"] == {"DONE": 1}
    _wait_for(lambda: not _pid_alive(old), timeout=10, what="the old job to be killed")
    assert len(pids.read_text().split()) == 2  # ran again from scratch


def test_recover_false_starts_a_new_run_each_time(project: Project, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    project.config(f"recover: false\njobs:\n  - run_command: echo x >> {ledger}\n")
    first = json.loads(project.cli("run", "--json", check=True).stdout)
    second = json.loads(project.cli("run", "--json", check=True).stdout)
    assert (first["run"], second["run"]) == (1, 2)
    assert ledger.read_text() == "x\nx\n"


def test_debug_key_logs_agent_calls_and_shows_tracebacks(project: Project) -> None:
    project.config("debug: 2\njobs:\n  - run_command: echo hi\n")
    before = project.cli("status")  # no run yet: a StateError, with its traceback at debug >= 1
    assert before.returncode != 0 and "Traceback" in before.stderr
    proc = project.cli("run", check=True)
    assert "agent submit on local: exit 0" in proc.stderr
    project.config("debug: 0\njobs:\n  - run_command: echo hi\n")
    quiet = project.cli("run", check=True)
    assert "agent submit" not in quiet.stderr


def test_dev_keeps_the_environment_across_edits(project: Project, tmp_path: Path) -> None:
    built, ran = tmp_path / "built.txt", tmp_path / "ran.txt"
    text = """
        dev: {dev}
        environments:
          - name: tools
            command: echo {version} >> {built}
        jobs:
          - run_command: echo run >> {ran}
        """
    project.config(text.format(dev="true", version="v1", built=built, ran=ran))
    project.cli("run", check=True)
    project.config(text.format(dev="true", version="v2", built=built, ran=ran))
    again = json.loads(project.cli("run", "--json", check=True).stdout)
    assert again["envs_submitted"] == 0
    assert built.read_text() == "v1\n" and ran.read_text() == "run\n"  # nothing redone
    # without dev the same edit is a new environment, and its job runs in it
    project.config(text.format(dev="false", version="v2", built=built, ran=ran))
    project.cli("run", check=True)
    assert built.read_text() == "v1\nv2\n" and ran.read_text() == "run\nrun\n"


def test_a_job_bigger_than_every_host_is_refused_before_anything_runs(project: Project) -> None:
    project.config(
        "instances:\n  - cpus: 2\n    number: 2\n"
        "jobs:\n  - run_command: echo big\n    cpus_req: 3\n"
    )
    for args in (["validate", "cloudsend.yaml"], ["run"]):
        proc = project.cli(*args)
        assert proc.returncode == 2, proc.stderr
        assert "jobs[0] (cpus_req=3) needs more CPUs than any host has" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (project.path / ".cloudsend/projects/cloudsend/hosts/local-0-0/agent.py").exists()


def test_cloud_only_keys_are_ignored_with_a_notice_on_local(project: Project) -> None:
    project.config(
        "instances:\n  - cpus: 2\n    eco: true\n    max_bid: 0.1\n"
        "jobs:\n  - run_command: echo hi > o.txt\n    output_file: o.txt\n"
    )
    proc = project.cli("run", check=True)
    flat = " ".join(proc.stdout.split())  # rich wraps long lines
    assert "instances[0].eco is ignored by the local provider" in flat
    assert "instances[0].max_bid is ignored by the local provider" in flat
    assert [p.read_text() for p in project.results().glob("*/o.txt")] == ["hi\n"]
