"""Issue 10, the CLI's items: foreign text made safe for the terminal (21), jobs named by a
prefix, index or name and ids kept on one line (22), messages in the user's words rather than
internal command lines (23), one CONFIG convention, documented exit codes and defaults, a clean
offline preview (25), and what a long environment build is doing (26)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cloudsend.errors import EXIT_CODES_HELP, CloudsendError, TransportError
from cloudsend.pipeline.reporting import JobView, NullReporter
from cloudsend.textsafe import clean
from tests.conftest import Project
from tests.sshd_harness import SshdHost

REPO = Path(__file__).resolve().parents[1]


def _status(project: Project, *args: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(project.cli("status", "--json", *args, check=True).stdout)
    return doc


def _on_a_terminal(project: Project, *args: str, timeout: float = 60) -> bytes:
    """`cloudsend ARGS` with its stdout on a pseudo-terminal (as a user sees it)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloudsend", *args],
        cwd=project.path,
        stdout=follower,
        stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"},
    )
    os.close(follower)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=30)
    os.close(leader)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    return out


# ---- 21: what a job wrote cannot drive the user's terminal --------------------------------

HOSTILE = (  # an OSC title, clear-screen, colours, markup-like brackets, a right-to-left override
    r"printf '[config] \033]0;PWNED\007title \033[2Jclear \033[31mred\033[0m "
    r"[bold]b[/bold] \342\200\256gnp.exe\n'"
)


def test_logs_on_a_terminal_cannot_retitle_clear_or_recolour_it(project: Project) -> None:
    project.config(f"project: hostile\njobs:\n  - run_command: {HOSTILE}\n")
    project.cli("run", check=True)
    job = _status(project)["jobs"][0]["job_id"]
    shown = _on_a_terminal(project, "logs", job)
    assert b"\x1b" not in shown and "\u202e".encode() not in shown, shown
    text = shown.decode()
    for visible in ("[config]", "title", "clear", "red", "[bold]b[/bold]", "gnp.exe"):
        assert visible in text, (visible, text)
    # to a pipe or a file the bytes are the job's, exactly
    piped = subprocess.run(
        [sys.executable, "-m", "cloudsend", "logs", job],
        cwd=project.path,
        capture_output=True,
        check=True,
    ).stdout
    assert b"\x1b]0;PWNED\x07" in piped and b"\x1b[31m" in piped


def test_tables_and_notes_show_brackets_and_drop_controls(project: Project) -> None:
    project.config(f"project: hostile2\njobs:\n  - run_command: {HOSTILE} >&2; exit 3\n")
    assert project.cli("run").returncode == 6
    table = _on_a_terminal(project, "status").decode()
    assert "[config]" in table and "gnp.exe" in table
    assert "\u202e" not in table  # a right-to-left override would reorder what is read
    assert "PWNED" not in table and "\x1b]" not in table and "\x1b[2J" not in table


def test_api_aborted_logs_on_a_terminal_are_filtered(project: Project) -> None:
    from cloudsend.api import SyncClient

    cfg = project.config(f"project: hostile3\njobs:\n  - run_command: {HOSTILE} >&2; exit 3\n")
    client = SyncClient(cfg, poll_wait=0.3)
    leader, follower = pty.openpty()
    try:
        client.start()
        client.deploy()
        client.run()
        client.wait(timeout=60)
        with open(follower, "w", closefd=True) as terminal:
            client.print_aborted_logs(file=terminal)
        shown = b""
        while select.select([leader], [], [], 0.5)[0]:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        client.close()
        os.close(leader)
    assert b"[config]" in shown and b"gnp.exe" in shown, shown
    assert b"\x1b" not in shown and "\u202e".encode() not in shown, shown


def test_terminal_filter_holds_a_sequence_split_between_chunks() -> None:
    from cloudsend.textsafe import TerminalFilter

    data = "a\x1b]0;T\x07b\r\nc\x1b[31md\x1b[0m 10%\r20%\r\nü\u202e\n".encode()
    whole = TerminalFilter().feed(data, final=True)
    bytewise = TerminalFilter()
    pieces = b"".join(bytewise.feed(data[i : i + 1]) for i in range(len(data)))
    pieces += bytewise.feed(b"", final=True)
    assert whole == pieces == "ab\ncd 10%\n20%\nü\n".encode()
    assert clean("x\u2066y\u202az") == "xyz"


# ---- 22: jobs named as users name them; ids on one line -----------------------------------

JOBS = [  # scheduling.jobref.JobName fields: id, index, repetition, name
    ("j000-train-1a2b3c4d-0", 0, 0, "train"),
    ("j000-train-1a2b3c4d-1", 0, 1, "train"),
    ("j001-eval-99887766-0", 1, 0, "eval"),
    ("j002-j001-abcdef01-0", 2, 0, "j001"),
]


def _jobs() -> list[Any]:
    from cloudsend.scheduling.jobref import JobName

    return [JobName(*job) for job in JOBS]


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("j001-eval-99887766-0", "j001-eval-99887766-0"),  # a full id
        ("j001-e", "j001-eval-99887766-0"),  # a unique prefix
        ("1", "j001-eval-99887766-0"),  # the index in jobs[]
        ("0.1", "j000-train-1a2b3c4d-1"),  # index.repetition
        ("eval", "j001-eval-99887766-0"),  # the name
        ("j001", "j002-j001-abcdef01-0"),  # a name beats a prefix
        (" j002 ", "j002-j001-abcdef01-0"),
    ],
)
def test_a_reference_names_one_job(ref: str, expected: str) -> None:
    from cloudsend.scheduling.jobref import resolve_job

    assert resolve_job(ref, _jobs()) == expected


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("j000", r"'j000' \(prefix of a job id\) names 2 jobs: j000-train-1a2b3c4d-0, j000-tr"),
        ("0", r"(?s)\(job index\) names 2 jobs.*e\.g\. 0\.0"),
        ("train", r"\(job name\) names 2 jobs"),
        ("nope", r"no job 'nope' in this run"),
        ("7", r"no job '7'"),
        ("", r"no job ''"),
    ],
)
def test_an_unknown_or_ambiguous_reference_is_refused(ref: str, message: str) -> None:
    from cloudsend.scheduling.jobref import resolve_job

    with pytest.raises(CloudsendError, match=message) as info:
        resolve_job(ref, _jobs())
    assert info.value.exit_code == 2 and info.value.hint


def test_references_resolve_in_order_without_duplicates() -> None:
    from cloudsend.scheduling.jobref import resolve_jobs

    assert resolve_jobs(["eval", "1", "0.0"], _jobs()) == [
        "j001-eval-99887766-0",
        "j000-train-1a2b3c4d-0",
    ]


def test_logs_and_cancel_take_a_prefix_index_or_name(project: Project) -> None:
    project.config(
        """
        project: refs
        instances:
          - cpus: 4
        jobs:
          - run_command: echo first
          - run_command: sleep 60
            repeat: 2
        """
    )
    run = project.popen("run", "--json")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            proc = project.cli("status", "--json")
            if proc.returncode == 0:
                jobs = json.loads(proc.stdout)["jobs"]
                if len(jobs) == 3 and [j["state"] for j in jobs[1:]] == ["RUNNING"] * 2:
                    break
            time.sleep(0.2)
        else:
            raise AssertionError("the sleepers never ran")
        first = jobs[0]["job_id"]
        assert project.cli("logs", first[:6], check=True).stdout == "first\n"
        assert project.cli("logs", "0", check=True).stdout == "first\n"
        assert project.cli("logs", "echo", check=True).stdout == "first\n"
        ambiguous = project.cli("logs", "sleep")
        assert ambiguous.returncode == 2, ambiguous.stderr
        assert "names 2 jobs" in ambiguous.stderr and jobs[1]["job_id"] in ambiguous.stderr
        assert "Traceback" not in ambiguous.stderr
        unknown = project.cli("cancel", "zzz")
        assert unknown.returncode == 2 and "no job 'zzz'" in unknown.stderr
        assert "cancelled 1 job(s)" in project.cli("cancel", "1.0", check=True).stdout
        assert "cancelled 1 job(s)" in project.cli("cancel", "1.1", check=True).stdout
        run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()


def test_status_keeps_every_job_id_on_one_line_at_80_columns(project: Project) -> None:
    project.config(
        """
        project: narrow
        jobs:
          - run_command: a_rather_long_command_name --with arguments; exit 1
          - run_command: echo short
        """
    )
    project.cli("run")
    ids = [j["job_id"] for j in _status(project)["jobs"]]
    table = project.cli("status", check=True, env={"COLUMNS": "80"}).stdout
    assert all(len(line) <= 80 for line in table.splitlines()), table
    for job_id in ids:
        assert job_id in table, (job_id, table)


# ---- 23: messages say what was lost in the user's words ------------------------------------


def test_a_lost_agent_call_names_the_jobs_not_the_command(
    sshd_host: SshdHost, tmp_path: Path
) -> None:
    from cloudsend.pipeline.agent_client import AgentClient
    from cloudsend.pipeline.deploy import ensure_agent
    from cloudsend.providers.base import Host
    from cloudsend.transport.ssh import SshTransport

    transport = SshTransport(sshd_host.target(tmp_path / "known_hosts"))
    host = Host("h1", 1, str(sshd_host.root), "python3", transport)
    try:
        ensure_agent(host, "lostwords")
        version = AgentClient(host).status()["version"]
        threading.Timer(0.5, sshd_host.kill).start()
        with pytest.raises(TransportError) as info:
            # the watcher's long poll, in flight when the link dies
            AgentClient(host).collect(
                f"{host.root}/outbox/x.tar.gz", {"j000-train-1a2b3c4d-0": 1}, version, wait=20
            )
    finally:
        transport.close()
        sshd_host.start()
    message = str(info.value)
    assert re.search(r"(lost|failed) during watching j000-train-1a2b3c4d-0", message), message
    assert "import sys" not in message and "python3 -c" not in message and "--root" not in message


def test_a_failed_internal_command_says_what_it_was_doing(tmp_path: Path) -> None:
    from cloudsend.transport.local import LocalTransport

    with pytest.raises(TransportError) as timed_out:
        LocalTransport().run("sleep 5", timeout=0.2, what="a job status check")
    assert "a job status check" in str(timed_out.value) and "sleep" not in str(timed_out.value)
    failed = LocalTransport().run("exit 3", check=False, what="listing the files")
    with pytest.raises(TransportError, match=r"exit code 3\): listing the files"):
        failed.raise_for_status()
    # without a description the command is shown, as before
    with pytest.raises(TransportError, match="sleep 5"):
        LocalTransport().run("sleep 5", timeout=0.2)


# ---- 25: one CONFIG convention, exit codes, docs, a clean offline preview ------------------


def test_cancel_takes_config_positionally_and_a_directory_means_its_cloudsend_yaml(
    project: Project, tmp_path: Path
) -> None:
    project.config("project: other\njobs:\n  - run_command: sleep 60\n", name="other.yaml")
    run = project.popen("run", "other.yaml")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            proc = project.cli("status", "--json", "other.yaml")
            if proc.returncode == 0 and json.loads(proc.stdout)["jobs"][0]["state"] == "RUNNING":
                break
            time.sleep(0.2)
        cancel = project.cli("cancel", "0", "other.yaml")
        assert cancel.returncode == 0, cancel.stderr
        assert "cancelled 1 job(s)" in cancel.stdout
        run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    # the old option still works, hidden from --help
    again = project.cli("cancel", "--config", "other.yaml", "--all", check=True)
    assert "cancelled 0 job(s)" in again.stdout and "deprecated" in again.stderr
    assert "--config" not in project.cli("cancel", "--help", check=True).stdout
    # a directory as CONFIG: its cloudsend.yaml, from anywhere
    folder = Project(tmp_path / "folder")
    folder.path.mkdir()
    folder.config("project: indir\njobs:\n  - run_command: echo hi\n")
    assert project.cli("validate", str(folder.path), check=True).stdout.endswith(
        "ok (0 environment(s), 1 job run(s))\n"
    )
    project.cli("run", str(folder.path), check=True)
    doc = json.loads(project.cli("status", "--json", str(folder.path), check=True).stdout)
    assert [j["state"] for j in doc["jobs"]] == ["DONE"]
    assert (folder.path / "results").is_dir()


def _help_lines() -> dict[int, str]:
    return {
        int(m[1]): m[2]
        for m in re.finditer(r"^\s+(\d+)\s+(.*)$", EXIT_CODES_HELP, flags=re.MULTILINE)
    }


def test_every_error_kind_exits_with_the_code_help_gives_it() -> None:
    import cloudsend.errors as errors

    lines = _help_lines()
    kinds = [
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, CloudsendError) and cls is not CloudsendError
    ]
    assert len(kinds) >= 8
    for cls in kinds:
        assert cls.exit_code in lines, cls
        word = cls.kind.split()[0]  # "config error" → config, "usage error" → usage
        assert word in lines[cls.exit_code], (cls, lines[cls.exit_code])
    # the generic CloudsendError (e.g. "not confirmed: nothing was created") exits 1
    assert "not confirmed" in lines[1]


def test_exit_codes_of_commands_match_help(project: Project) -> None:
    lines = _help_lines()
    project.config("project: codes\njobs:\n  - run_command: exit 1\n")
    never_ran = project.cli("status")
    assert never_ran.returncode == 7 and "no run" in lines[7], never_ran.stderr
    assert project.cli("run").returncode == 6 and "ABORTED" in lines[6]
    unknown_job = project.cli("logs", "nope")
    assert unknown_job.returncode == 2 and "unknown job" in lines[2], unknown_job.stderr
    assert project.cli("validate", "missing.yaml").returncode == 2
    assert project.cli("cancel").returncode == 2  # usage: nothing named
    assert project.cli("status", "--json").returncode == 0  # a table to show: success


def _doc_defaults() -> dict[str, dict[str, str]]:
    """docs/config.md: section → key → the default column."""
    sections: dict[str, dict[str, str]] = {}
    current = None
    for line in (REPO / "docs" / "config.md").read_text().splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            sections[current] = {}
        row = re.match(r"^\| `([a-z_]+)` \| ([^|]*) \|", line)
        if row and current is not None:
            sections[current][row[1]] = row[2].strip()
    return sections


def test_docs_show_the_models_defaults() -> None:
    from cloudsend.config.reference import SECTIONS, defaults, tables

    assert "PydanticUndefined" not in tables()
    documented = _doc_defaults()
    for section in SECTIONS:
        model = defaults(section)
        for key, shown in documented[section].items():
            assert key in model, f"docs/config.md {section}: {key} is no key of the config"
            assert shown == model[key], f"docs/config.md {section}: {key}: {shown!r}"
    assert documented["`hosts[]` (provider: ssh)"]["address"] == "required"


AWS_OFFLINE = """
project: offl
provider: aws
instances:
  - type: t3.micro
jobs:
  - run_command: echo hi
"""


def test_offline_preview_leaves_no_key_no_loop_and_names_its_placeholder(
    project: Project, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    project.config(AWS_OFFLINE)
    env = {**os.environ, "HOME": str(home), "AWS_CONFIG_FILE": "/nonexistent"}
    proc = subprocess.run(
        # -X dev: an event loop left open is reported when it is collected (ResourceWarning)
        [sys.executable, "-X", "dev", "-W", "ignore::DeprecationWarning"]
        + ["-m", "cloudsend", "preview", "--offline"],
        cwd=project.path,
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "200"},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "unclosed event loop" not in proc.stderr and "Exception ignored" not in proc.stderr
    assert "203.0.113.10/32 is a placeholder for your public IP" in proc.stdout
    assert not (home / ".cloudsend").exists(), list(home.rglob("*"))  # nothing deployed
    doc = json.loads(project.cli("preview", "--offline", "--json", env={"HOME": str(home)}).stdout)
    assert any("placeholder" in w for w in doc["warnings"])
    keys = [r for r in doc["resources"] if r["type"] == "aws:ec2/keyPair:KeyPair"]
    assert "PLACEHOLDER" in keys[0]["inputs"]["publicKey"]
    # a config that names its own ssh range has nothing to flag
    project.config(AWS_OFFLINE + "ssh_cidrs: [198.51.100.7/32]\n")
    doc = json.loads(project.cli("preview", "--offline", "--json", env={"HOME": str(home)}).stdout)
    assert not any("placeholder" in w for w in doc["warnings"])


# ---- 26: what a long build is doing; how long each job has run -----------------------------


def _view(state: str, elapsed: float | None = None) -> JobView:
    from cloudsend.core import JobState

    view = JobView("j000-x-0", 0, 0, JobState(state), "local", 1, None, None, False)
    view.elapsed = elapsed  # type: ignore[attr-defined]  # (absent before issue 10)
    return view


def test_progress_line_names_the_build_its_host_and_elapsed() -> None:
    from cloudsend.pipeline.reporting import EnvActivity
    from cloudsend.ui import duration, progress_line

    building = [EnvActivity("py311", "gpu-1", started=1000.0), EnvActivity("r", "gpu-2", None)]
    line = progress_line([_view("WAIT")] * 3, building, now=1065.0).plain
    assert line.startswith("WAIT 3")
    assert "building env py311 on host gpu-1 (1m05s)" in line
    assert "env r waits its turn on host gpu-2" in line
    assert [duration(s) for s in (None, 5, 65, 3725)] == ["", "5s", "1m05s", "1h02m"]


class _Progress(NullReporter):
    def __init__(self) -> None:
        self.activity: list[list[Any]] = []  # EnvActivity

    def progress(self, jobs: list[JobView], activity: Any = ()) -> None:
        self.activity.append(list(activity))


def test_a_run_reports_the_build_while_it_lasts_and_status_shows_elapsed(
    project: Project,
) -> None:
    from cloudsend.api import SyncClient

    cfg = project.config(
        """
        project: slowbuild
        environments:
          - name: slowenv
            command: sleep 2.5
        jobs:
          - run_command: sleep 1.2
        """
    )
    reporter = _Progress()
    client = SyncClient(cfg, reporter, poll_wait=0.3)
    try:
        client.start()
        client.deploy()
        client.run()
        client.wait(timeout=120)
        client.fetch_results()
        views = client.session.views()
    finally:
        client.close()
    seen = [a for calls in reporter.activity for a in calls]
    assert seen and {(a.env, a.host) for a in seen} == {("slowenv", "local")}, seen
    assert any(a.started is not None for a in seen)
    assert views[0].state == "DONE" and views[0].elapsed is not None
    assert 1.0 <= views[0].elapsed < 30
    doc = _status(project)
    assert 1.0 <= doc["jobs"][0]["elapsed"] < 30
    table = project.cli("status", check=True, env={"COLUMNS": "120"}).stdout
    assert re.search(r"\btime\b", table) and re.search(r"\b1s\b|\b2s\b", table), table
