"""The whole pipeline on the local provider, driven through the CLI as a user would."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

from tests.conftest import Project
from tests.waiting import wait_until

SLEEPY = """
project: sleepy
instances:
  - cpus: 2
    number: 2
environments:
  - name: plain
    command: "echo plain ready"
jobs:
  - env_name: plain
    run_command: >-
      echo "$CLOUDSEND_JOB_ID $(date +%s.%N)" >> {ledger} &&
      sleep {sleep} && echo "result of $CLOUDSEND_JOB_ID" > out.txt
    output_file: out.txt
    repeat: {repeat}
"""


def _ledger(path: Path) -> list[str]:
    return path.read_text().split("\n")[:-1] if path.exists() else []


def test_run_fetches_every_output_and_reports(project: Project, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    project.config(SLEEPY.format(ledger=ledger, sleep=0.3, repeat=6))
    proc = project.cli("run", "--json", check=True)
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True
    assert doc["counts"] == {"DONE": 6}
    results = Path(doc["results_dir"])
    outs = sorted(results.glob("*/out.txt"))
    assert len(outs) == 6
    for out in outs:
        assert out.read_text().strip() == f"result of {out.parent.name}"
        assert (out.parent / "stdout.log").exists()
    # two local hosts of 2 CPUs each: both were used and jobs ran side by side
    assert {j["host"] for j in doc["jobs"]} == {"local-0-0", "local-0-1"}
    assert len(_ledger(ledger)) == 6


def test_rerun_of_finished_config_does_nothing(project: Project, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    project.config(SLEEPY.format(ledger=ledger, sleep=0, repeat=3))
    project.cli("run", check=True)
    again = json.loads(project.cli("run", "--json", check=True).stdout)
    assert again["counts"] == {"DONE": 3}
    assert again["bytes_sent"] == 0 and again["files_sent"] == 0
    assert again["envs_submitted"] == 0
    assert len(_ledger(ledger)) == 3  # nothing executed twice


def test_sigkill_mid_run_then_resume(project: Project, tmp_path: Path) -> None:
    """cloudsend killed with SIGKILL mid-run: the next run completes, no DONE job re-executed."""
    ledger = tmp_path / "ledger.txt"
    project.config(SLEEPY.format(ledger=ledger, sleep=1.0, repeat=10))
    first = project.popen("run")
    wait_until(lambda: len(_ledger(ledger)) >= 5, 60, "jobs to start")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    second = json.loads(project.cli("run", "--json", check=True).stdout)
    assert second["counts"] == {"DONE": 10}
    ids = [line.split()[0] for line in _ledger(ledger)]
    assert len(ids) == 10 and len(set(ids)) == 10, f"a job ran twice: {ids}"
    results = Path(second["results_dir"])
    assert len(list(results.glob("*/out.txt"))) == 10


def test_failing_job_is_aborted_with_reason_and_retried(project: Project) -> None:
    project.config(
        """
        jobs:
          - run_command: echo fine > ok.txt
            output_file: ok.txt
          - run_command: "echo something broke >&2; exit 3"
        """
    )
    proc = project.cli("run", "--json")
    assert proc.returncode == 6, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["counts"] == {"DONE": 1, "ABORTED": 1}
    bad = next(j for j in doc["jobs"] if j["state"] == "ABORTED")
    assert bad["exit_code"] == 3
    assert "something broke" in bad["reason"]
    assert "job error: 1 job(s) ABORTED" in proc.stderr
    assert "Traceback" not in proc.stderr
    # the failed job's logs came home too
    assert (
        "something broke" in (Path(doc["results_dir"]) / bad["job_id"] / "stderr.log").read_text()
    )
    # a new `run` retries the aborted job (attempt 2), not the done one
    again = json.loads(project.cli("run", "--json").stdout)
    bad2 = next(j for j in again["jobs"] if j["job_id"] == bad["job_id"])
    good2 = next(j for j in again["jobs"] if j["job_id"] != bad["job_id"])
    assert bad2["attempt"] == 2 and good2["attempt"] == 1


def test_failed_bootstrap_aborts_its_jobs_with_log_tail(project: Project) -> None:
    project.config(
        """
        environments:
          - name: broken
            command: "echo installing things; echo no such package >&2; exit 7"
          - name: fine
            command: "true"
        jobs:
          - env_name: broken
            run_command: echo never
          - env_name: fine
            run_command: echo fine
        """
    )
    proc = project.cli("run", "--json")
    assert proc.returncode == 5, proc.stderr
    doc = json.loads(proc.stdout)
    by_env = {j["job_id"]: j for j in doc["jobs"]}
    states = sorted(j["state"] for j in by_env.values())
    assert states == ["ABORTED", "DONE"]
    aborted = next(j for j in by_env.values() if j["state"] == "ABORTED")
    assert "no such package" in aborted["reason"]
    assert "bootstrap error" in proc.stderr


def test_bad_config_is_one_message_without_traceback(project: Project) -> None:
    project.config(
        """
        jobs:
          - run_comand: echo hi
        """
    )
    proc = project.cli("run")
    assert proc.returncode == 2
    assert "run_comand" in proc.stderr and "run_command" in proc.stderr
    assert "Traceback" not in proc.stderr
    debug = project.cli("--debug", "run")
    assert "Traceback" in debug.stderr


def test_status_logs_cancel(project: Project, tmp_path: Path) -> None:
    project.config(
        """
        instances:
          - cpus: 3
        jobs:
          - run_command: "echo started; sleep 60"
            repeat: 2
          - run_command: "echo quick"
        """
    )
    bg = project.popen("run")
    try:
        running: list[dict[str, object]] = []
        doc: dict[str, object] = {}

        def two_running() -> bool:
            nonlocal doc, running
            proc = project.cli("status", "--json")
            if proc.returncode == 0:  # exit 7 until `run` has recorded its run
                doc = json.loads(proc.stdout)
                running = [j for j in doc["jobs"] if j["state"] == "RUNNING"]  # type: ignore[union-attr,index]
            return len(running) == 2

        def why() -> str:
            died = "" if bg.poll() is None else bg.communicate()[1]
            last = project.cli("status", "--json")
            return f"2 running jobs: {doc}\nrun: {died}\nstatus: {last.stdout} {last.stderr}"

        wait_until(two_running, 60, why, every=0.3)
        assert doc["hosts"][0]["health"] == "ok"  # type: ignore[index]
        job = str(running[0]["job_id"])
        wait_until(
            lambda: "started" in project.cli("logs", job, check=True).stdout, 30, "its output"
        )
        out = project.cli("cancel", "--all", check=True)
        assert "cancelled 2 job(s)" in out.stdout
        bg.wait(timeout=60)
        assert bg.returncode == 0  # cancelled: the user's decision, not an error
    finally:
        if bg.poll() is None:
            bg.kill()
    doc = json.loads(project.cli("status", "--json", check=True).stdout)
    states = sorted(j["state"] for j in doc["jobs"])
    assert states == ["CANCELLED", "CANCELLED", "DONE"]
    assert all(j["reason"] == "cancelled" for j in doc["jobs"] if j["state"] == "CANCELLED")


def test_host_roots_are_private_under_a_umask_of_022(project: Project) -> None:
    """A shared machine: no file or dir under a host root is readable by other users
    (uploads, agent, state, logs, env and work dirs, job outputs, archives)."""
    project.write("data/input.csv", "a,b\n1,2\n")
    project.write("tool.sh", "echo tool\n", mode=0o755)
    project.config(
        """
        environments:
          - name: plain
            command: "echo plain ready > built.txt"
        jobs:
          - env_name: plain
            run_command: "cat input.csv > copy.csv && mkdir -p res && echo x > res/x.txt"
            input_file: data/input.csv
            upload_files: tool.sh
            output_files: [copy.csv, res]
            repeat: 2
        """
    )
    old = os.umask(0o022)
    try:
        doc = json.loads(project.cli("run", "--json", check=True).stdout)
    finally:
        os.umask(old)
    assert doc["counts"] == {"DONE": 2}
    roots = list((project.state_dir() / "hosts").iterdir())
    assert roots
    seen, shared = 0, []
    for root in roots:
        for path in [root, *root.rglob("*")]:
            st = path.lstat()
            if path.is_symlink():
                continue  # a link's own mode means nothing; its target is checked
            seen += 1
            if st.st_mode & 0o077:
                shared.append(f"{oct(st.st_mode & 0o777)} {path.relative_to(root)}")
    assert seen > 20 and not shared, shared


def test_local_uploads_are_owner_only(tmp_path: Path) -> None:
    """Before any job makes the agent tighten them: the copy itself is 0600 in a 0700 dir."""
    from cloudsend.transport.local import LocalTransport

    src = tmp_path / "src.txt"
    src.write_text("data\n")
    dest = tmp_path / "root" / "files" / "abc"
    old = os.umask(0o022)
    try:
        LocalTransport().put(src, str(dest))
    finally:
        os.umask(old)
    assert dest.read_text() == "data\n"
    assert (dest.stat().st_mode & 0o777, dest.parent.stat().st_mode & 0o777) == (0o600, 0o700)


def test_down_removes_local_hosts(project: Project) -> None:
    project.config("jobs:\n  - run_command: echo hi\n")
    project.cli("run", check=True)
    hosts = project.state_dir() / "hosts"
    assert hosts.exists()
    project.cli("down", check=True)
    assert not hosts.exists()


def test_host_restart_mid_run_reruns_the_jobs_it_killed(project: Project, tmp_path: Path) -> None:
    """A host "reboots" mid-run (its agent and every job SIGKILLed, disk intact): the restarted
    agent reports the jobs as vanished and they run again in the same `cloudsend run`."""
    from tests.agent_helpers import processes_under

    ledger = tmp_path / "ledger.txt"
    project.config(SLEEPY.format(ledger=ledger, sleep=1.5, repeat=4))
    host_root = project.path / ".cloudsend/projects/sleepy/hosts/local-0-0"
    run = project.popen("run", "--json")
    wait_until(lambda: len(_ledger(ledger)) >= 4, 60, "jobs to start")
    assert len(_ledger(ledger)) == 4, "jobs did not start"
    victims = processes_under(host_root)
    assert victims, "nothing runs under the host"
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    doc = json.loads(out)
    assert doc["counts"] == {"DONE": 4}, err
    ids = [line.split()[0] for line in _ledger(ledger)]
    assert len(set(ids)) == 4 and len(ids) == 6, ids  # the two killed ones started again
    assert len(list(Path(doc["results_dir"]).glob("*/out.txt"))) == 4
