"""The host agent, driven as cloudsend drives it: one `python agent.py --root ROOT ...` per call."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from cloudsend.agent import AGENT_FILES, AGENT_PATH, AGENT_SHA256, agent_sha256
from tests.agent_helpers import (
    Agent,
    group_alive,
    intervals,
    job,
    max_load,
    process_alive,
    shut_down,
    timed_script,
)
from tests.waiting import sleeping, wait_until


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    a = Agent(tmp_path / "host")
    try:
        yield a
    finally:
        shut_down(a)


def test_package_exposes_the_agent_file() -> None:
    assert AGENT_PATH.name == "agent.py" and AGENT_PATH.is_file()
    assert agent_sha256() == AGENT_SHA256 and len(agent_sha256()) == 64
    # stdlib only: nothing from cloudsend, so it runs alone on a remote host
    assert "cloudsend." not in "".join(
        line for line in AGENT_PATH.read_text().splitlines() if line.startswith(("import", "from"))
    )


def test_start_twice_is_a_noop_and_concurrent_starts_agree(agent: Agent) -> None:
    first = agent.start(2)
    assert first["started"] is True and process_alive(first["pid"])
    second = agent.start(2)
    assert second == {"pid": first["pid"], "started": False, "slots": 2}
    agent.call("stop")
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: agent.start(2), range(4)))
    assert len({r["pid"] for r in results}) == 1
    assert [r["started"] for r in results].count(True) == 1
    st = agent.status()
    assert st["agent"] == {"pid": results[0]["pid"], "slots": 2, "slots_used": 0, "running": True}
    # a new slot count reaches the running daemon without a restart
    assert agent.start(3) == {"pid": results[0]["pid"], "started": False, "slots": 3}
    assert agent.status()["agent"]["slots"] == 3


def test_a_wiped_root_takes_its_daemon_and_jobs_down(agent: Agent) -> None:
    agent.start(1)
    agent.submit([job("w", "sleep 30")])
    st = agent.wait_state("w", "RUNNING")
    daemon, pgid = st["agent"]["pid"], st["jobs"]["w"]["pid"]
    shutil.rmtree(agent.root)
    wait_until(
        lambda: not (process_alive(daemon) or group_alive(pgid)),
        5,
        "the daemon of a wiped root and its job to end",
    )
    assert agent.status()["jobs"] == {}  # the next call starts afresh


def test_errors_are_json_with_nonzero_exit(agent: Agent) -> None:
    agent.start(1)
    bad = agent.call("frobnicate", check=False)
    assert bad["_rc"] == 2 and "unknown command" in bad["error"]
    cases = [
        job("../evil", "true"),
        job("j", "true", cpus=0),
        job("j", "true", links={"../up": "/etc/hostname"}),
        job("j", "true", links={"x": "relative/src"}),
        job("j", "true", outputs=["/abs"]),
        job("j", "true", outputs=["a/../../b"]),
    ]
    for spec in cases:
        doc = agent.call("submit", stdin=json.dumps({"jobs": [spec]}), check=False)
        assert doc["_rc"] == 1 and doc["error"], spec
    assert agent.call("submit", stdin="not json", check=False)["_rc"] == 1
    assert agent.call("tail", "nope", check=False)["error"] == "unknown job nope"
    assert agent.status()["jobs"] == {}  # nothing half-accepted


def test_slots_are_never_exceeded(agent: Agent, tmp_path: Path) -> None:
    agent.start(2)
    log = tmp_path / "times"
    ids = [f"s{i}" for i in range(5)]
    agent.submit([job(j, timed_script(log, j, "sleep 0.3")) for j in ids])
    st = agent.wait_final(ids)
    assert all(st["jobs"][j]["state"] == "DONE" for j in ids)
    spans = intervals(log)
    assert len(spans) == 5
    assert max_load(spans) == 2  # never 3, and the 2 slots were both used


def test_multi_cpu_jobs_take_several_slots(agent: Agent, tmp_path: Path) -> None:
    agent.start(3)
    log = tmp_path / "times"
    cpus = {"big1": 2, "big2": 2, "small1": 1, "small2": 1}
    agent.submit([job(j, timed_script(log, j, "sleep 0.3"), cpus=c) for j, c in cpus.items()])
    agent.wait_final(cpus)
    spans = intervals(log)
    assert max_load(spans, cpus) <= 3
    a, b = spans["big1"], spans["big2"]
    assert a[1] <= b[0] or b[1] <= a[0]  # two 2-CPU jobs never share a 3-slot host


def test_job_needing_more_cpus_than_the_host_is_aborted(agent: Agent) -> None:
    agent.start(2)
    agent.submit([job("huge", "true", cpus=4), job("fine", "true", cpus=2)])
    st = agent.wait_final(["huge", "fine"])
    assert st["jobs"]["huge"]["state"] == "ABORTED"
    assert st["jobs"]["huge"]["reason"] == "needs 4 CPUs, host has 2"
    assert st["jobs"]["fine"]["state"] == "DONE"


def test_cancel_running_and_queued_jobs(agent: Agent, tmp_path: Path) -> None:
    agent.start(1)
    agent.submit(
        [
            job("run", "sleep 30"),
            job("queued", f"touch {tmp_path / 'queued-ran'}"),
            job("after", "true"),
        ]
    )
    st = agent.wait_state("run", "RUNNING")
    pid = st["jobs"]["run"]["pid"]
    assert agent.call("cancel", "run", "queued", "ghost") == {"cancelled": ["run", "queued"]}
    st = agent.status()  # visible as soon as cancel returns
    for j in ("run", "queued"):
        assert (st["jobs"][j]["state"], st["jobs"][j]["reason"]) == ("ABORTED", "cancelled")
    st = agent.wait_final(["after"])
    assert st["jobs"]["after"]["state"] == "DONE"
    assert not group_alive(pid)
    assert not (tmp_path / "queued-ran").exists()
    assert agent.call("cancel", "run") == {"cancelled": []}  # already final


def test_cancel_escalates_to_sigkill_and_cancel_all(agent: Agent) -> None:
    agent.start(2)
    agent.submit([job("stubborn", "trap '' TERM; sleep 30 & wait; sleep 30"), job("w", "sleep 30")])
    agent.submit([job("q", "true")])
    st = agent.wait(lambda s: s["agent"]["slots_used"] == 2)
    pid = st["jobs"]["stubborn"]["pid"]
    t0 = time.monotonic()
    assert sorted(agent.call("cancel", "--all")["cancelled"]) == ["q", "stubborn", "w"]
    wait_until(lambda: not group_alive(pid), 6, "the SIGTERM-proof job to be killed")
    assert time.monotonic() - t0 >= 1.5  # it got its grace period first
    agent.wait(lambda s: s["agent"]["slots_used"] == 0)


def test_cancel_grace_outlives_the_daemon(agent: Agent) -> None:
    agent.start(2)
    stubborn = "trap '' TERM; sleep 30 & wait; sleep 30"
    agent.submit([job("s1", stubborn), job("s2", stubborn)])
    st = agent.wait(lambda s: s["agent"]["slots_used"] == 2)
    pids = {j: st["jobs"][j]["pid"] for j in ("s1", "s2")}
    agent.call("cancel", "s1")
    agent.kill_daemon()  # the pending SIGKILL is on disk: the next daemon still sends it
    agent.status()
    wait_until(lambda: not group_alive(pids["s1"]), 6, "the restarted daemon's pending SIGKILL")
    agent.call("cancel", "s2")
    agent.call("stop")  # a stopping daemon finishes off what it cancelled
    assert not group_alive(pids["s2"])


def test_nonzero_exit_reports_code_and_stderr_tail(agent: Agent) -> None:
    agent.start(1)
    script = "for i in $(seq 1 15); do echo line$i >&2; done; echo out; exit 7"
    agent.submit([job("bad", script)])
    st = agent.wait_final(["bad"])["jobs"]["bad"]
    assert (st["state"], st["exit_code"]) == ("ABORTED", 7)
    expected = "\n".join(f"line{i}" for i in range(6, 16))
    assert st["reason"] == "exit code 7: " + expected
    tail = agent.call("tail", "bad", "--stream", "stderr", "--lines", "2")
    assert tail == {"job_id": "bad", "stream": "stderr", "text": "line14\nline15"}
    assert agent.call("tail", "bad")["text"] == "out"


def test_env_wait_then_ready_one_bootstrap_at_a_time(agent: Agent, tmp_path: Path) -> None:
    agent.start(2)
    log = tmp_path / "times"
    envs = [
        {"env_id": f"e{i}", "script": timed_script(log, f"e{i}", "sleep 0.4; touch built")}
        for i in (1, 2)
    ]
    check = (
        'test -f "$CLOUDSEND_ENV_DIR/built" && '
        'test "$CLOUDSEND_ENV_DIR" = "$CLOUDSEND_ROOT/envs/e1"'
    )
    res = agent.submit([job("needs-env", check, env_id="e1"), job("free", "true")], envs)
    assert res == {"accepted": ["e1", "e2", "needs-env", "free"], "skipped": []}
    st = agent.status()
    assert st["jobs"]["needs-env"]["state"] == "WAIT"
    assert st["envs"]["e1"]["state"] == "BUILDING"
    st = agent.wait_final(["free"])
    assert st["jobs"]["free"]["state"] == "DONE"  # env_id null: no waiting
    st = agent.wait_final(["needs-env"])
    assert st["jobs"]["needs-env"]["state"] == "DONE"
    st = agent.wait(lambda s: all(e["state"] == "READY" for e in s["envs"].values()))
    assert st["envs"]["e1"]["exit_code"] == 0
    assert st["agent"]["slots_used"] == 0
    assert max_load(intervals(log)) == 1  # bootstraps ran one after the other
    again = agent.submit([], [{"env_id": "e1", "script": "exit 1"}])
    assert again == {"accepted": [], "skipped": ["e1"]}  # READY is never rebuilt


def test_env_failure_aborts_its_jobs_with_the_log_tail(agent: Agent) -> None:
    agent.start(2)
    script = "for i in $(seq 1 25); do echo step$i; done; exit 3"
    agent.submit([job("j1", "true", env_id="bad")], [{"env_id": "bad", "script": script}])
    st = agent.wait_final(["j1"])
    tail = "\n".join(f"step{i}" for i in range(6, 26))
    assert st["jobs"]["j1"]["state"] == "ABORTED"
    assert st["jobs"]["j1"]["reason"] == f"environment bad failed: {tail}"
    env = st["envs"]["bad"]
    assert (env["state"], env["exit_code"], env["log_tail"]) == ("FAILED", 3, tail)
    # a job arriving after the failure is aborted at once; a job for an unknown env waits
    agent.submit([job("j2", "true", env_id="bad"), job("j3", "true", env_id="never")])
    st = agent.status()
    assert st["jobs"]["j2"]["state"] == "ABORTED"
    assert st["jobs"]["j3"]["state"] == "WAIT"
    # a FAILED env is retried when submitted again, and its new jobs run
    res = agent.submit([job("j4", "true", env_id="bad")], [{"env_id": "bad", "script": "true"}])
    assert res["accepted"] == ["bad", "j4"]
    st = agent.wait_final(["j4"])
    assert st["jobs"]["j4"]["state"] == "DONE" and st["envs"]["bad"]["state"] == "READY"


def test_killed_daemon_is_restarted_and_adopts_running_jobs(agent: Agent, tmp_path: Path) -> None:
    agent.start(2)
    runs = tmp_path / "runs"
    runs.mkdir()
    codes = {"a": 0, "b": 5, "c": 0, "d": 0}
    agent.submit(
        [
            job(j, f"echo x >> {runs / j}; sleep 0.8; echo bye >&2; exit {rc}")
            for j, rc in codes.items()
        ]
    )
    agent.wait(lambda s: s["agent"]["slots_used"] == 2)
    old = agent.kill_daemon()
    wait_until(lambda: not process_alive(old), 5, "the killed daemon to be gone")
    st = agent.status()  # restarts the daemon, which adopts a and b
    assert st["agent"]["pid"] != old and process_alive(st["agent"]["pid"])
    assert {st["jobs"][j]["state"] for j in ("a", "b")} == {"RUNNING"}
    st = agent.wait_final(codes, timeout=20)
    for j, rc in codes.items():
        assert st["jobs"][j]["exit_code"] == rc
        assert st["jobs"][j]["state"] == ("DONE" if rc == 0 else "ABORTED")
        assert (runs / j).read_text() == "x\n", f"{j} ran more than once"
    assert st["jobs"]["b"]["reason"] == "exit code 5: bye"


def test_bootstrap_adopted_across_a_daemon_restart(agent: Agent, tmp_path: Path) -> None:
    agent.start(1)
    count = tmp_path / "bootstraps"
    env = {"env_id": "slow", "script": f"echo x >> {count}; sleep 0.8; touch ok"}
    agent.submit([job("uses", 'test -f "$CLOUDSEND_ENV_DIR/ok"', env_id="slow")], [env])
    agent.wait(lambda s: s["envs"]["slow"]["pid"] is not None)
    agent.kill_daemon()
    st = agent.status()
    assert (st["envs"]["slow"]["state"], st["jobs"]["uses"]["state"]) == ("BUILDING", "WAIT")
    st = agent.wait_final(["uses"])
    assert st["jobs"]["uses"]["state"] == "DONE" and st["envs"]["slow"]["state"] == "READY"
    assert count.read_text() == "x\n"


def test_jobs_that_ended_while_no_daemon_ran_are_settled(agent: Agent) -> None:
    agent.start(2)
    agent.submit([job("quick", "sleep 0.3; exit 4"), job("doomed", "sleep 30")])
    st = agent.wait(lambda s: s["agent"]["slots_used"] == 2)
    doomed_pid = st["jobs"]["doomed"]["pid"]
    agent.kill_daemon()
    os.killpg(doomed_pid, signal.SIGKILL)  # "host restart": the job dies without an rc
    wait_until(
        lambda: not process_alive(doomed_pid) and (agent.root / "jobs/quick/rc").exists(),
        5,
        "doomed to die and quick to write its rc",
    )
    st = agent.status()  # the restarted daemon settles both before answering
    assert st["jobs"]["doomed"]["state"] == "ABORTED"
    assert st["jobs"]["doomed"]["reason"] == "process vanished (host restarted?)"
    assert (st["jobs"]["quick"]["state"], st["jobs"]["quick"]["exit_code"]) == ("ABORTED", 4)


def test_resubmission_semantics(agent: Agent, tmp_path: Path) -> None:
    agent.start(2)
    agent.submit(
        [
            job("ok", "true"),
            job("fail", "touch leftover; exit 1"),
            job("slow", "sleep 30"),
        ]
    )
    agent.wait_final(["ok", "fail"])
    assert (agent.root / "jobs/fail/work/leftover").exists()
    res = agent.submit(
        [
            job("ok", "exit 9", attempt=5),  # DONE: never reset
            job("fail", "exit 2", attempt=1),  # same attempt: skipped
            job("slow", "true", attempt=2),  # still running: skipped
        ]
    )
    assert res == {"accepted": [], "skipped": ["ok", "fail", "slow"]}
    res = agent.submit([job("fail", "test ! -e leftover", attempt=2)])
    assert res == {"accepted": ["fail"], "skipped": []}
    st = agent.wait_final(["fail"])
    assert (st["jobs"]["fail"]["state"], st["jobs"]["fail"]["attempt"]) == ("DONE", 2)
    assert st["jobs"]["ok"]["state"] == "DONE" and st["jobs"]["slow"]["state"] == "RUNNING"
    # a new run under recover: false asks for DONE jobs to run again; live ones stay skipped
    res = agent.submit(
        [job("ok", "exit 9", attempt=6, rerun=True), job("slow", "true", attempt=3, rerun=True)]
    )
    assert res == {"accepted": ["ok"], "skipped": ["slow"]}
    st = agent.wait_final(["ok"])
    assert (st["jobs"]["ok"]["state"], st["jobs"]["ok"]["exit_code"]) == ("ABORTED", 9)


def test_long_poll_returns_on_change_or_times_out(agent: Agent) -> None:
    agent.start(1)
    version = agent.status()["version"]
    t0 = time.monotonic()
    same = agent.call("status", "--since", str(version), "--wait", "0.6")
    assert same["version"] == version and time.monotonic() - t0 >= 0.55
    poll = subprocess.Popen(
        [sys.executable, str(AGENT_PATH), "--root", str(agent.root), "status"]
        + ["--since", str(version), "--wait", "20"],
        stdout=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: sleeping(poll.pid), 10, "the long poll to be waiting")
    t1 = time.monotonic()
    agent.submit([job("poke", "true")])
    out, _ = poll.communicate(timeout=10)
    assert time.monotonic() - t1 < 2
    doc = json.loads(out)
    assert doc["version"] > version and "poke" in doc["jobs"]


def test_pack_outputs_missing_and_refused(agent: Agent, tmp_path: Path) -> None:
    agent.start(2)
    script = (
        "echo hello; echo warn >&2; mkdir -p res/sub; echo 1 > res/sub/a.txt; "
        "echo top > top.txt; ln -s /etc/hostname sneaky; ln -s top.txt alias"
    )
    outputs = ["top.txt", "res", "nothing.csv", "sneaky", "alias"]
    agent.submit([job("p1", script, outputs=outputs), job("p2", "true", outputs=["x"])])
    agent.wait_final(["p1", "p2"])
    out = tmp_path / "fetched" / "out.tar.gz"
    doc = agent.call("pack", "--out", str(out), "p1", "p2")
    assert doc == {
        "path": str(out),
        "jobs": ["p1", "p2"],
        "missing": {"p1": ["nothing.csv"], "p2": ["x"]},
        "refused": {"p1": ["sneaky"]},
    }
    with tarfile.open(out) as tar:
        names = {m.name for m in tar.getmembers() if m.isfile()}
        assert names == {
            "p1/stdout.log",
            "p1/stderr.log",
            "p1/top.txt",
            "p1/res/sub/a.txt",
            "p1/alias",
            "p2/stdout.log",
            "p2/stderr.log",
        }
        assert tar.extractfile("p1/alias").read() == b"top\n"  # type: ignore[union-attr]
        assert tar.extractfile("p1/stdout.log").read() == b"hello\n"  # type: ignore[union-attr]
    rel = agent.call("pack", "--out", "batch1.tar.gz", "p2")
    assert rel["path"] == str(agent.root / "outbox" / "batch1.tar.gz")
    assert agent.call("pack", "--out", "x.tgz", "ghost", check=False)["_rc"] == 1


def test_links_copies_and_job_environment(agent: Agent, tmp_path: Path) -> None:
    agent.start(2)
    files = agent.root / "files"
    (files / "abc").write_text("data\n")
    (files / "tree").mkdir()
    (files / "tree" / "f").write_text("in tree\n")
    links = {"in/data.txt": str(files / "abc"), "t": str(files / "tree")}
    # root is not bound by read-only modes: its jobs get copies of the uploads, not links
    as_root = os.geteuid() == 0
    link = "! test -L" if as_root else "test -L"
    check_links = (
        f'{link} in/data.txt && test "$(cat in/data.txt)" = data && {link} t && '
        'test "$(cat t/f)" = "in tree"'
    )
    check_copies = (
        "test -f in/data.txt && ! test -L in/data.txt && test -d t && ! test -L t && "
        'test "$(cat t/f)" = "in tree" && echo changed > in/data.txt'
    )
    check_env = (
        'test "$CLOUDSEND_JOB_ID" = envjob && test "$CLOUDSEND_JOB_DIR" = "$PWD" && '
        f'test "$CLOUDSEND_ROOT" = "{agent.root}" && test -z "${{CLOUDSEND_ENV_DIR+x}}" && '
        'test "$PWD" = "$CLOUDSEND_ROOT/jobs/envjob/work" && read -t 1 x; test $? -ne 0'
    )
    agent.submit(
        [
            job("linked", check_links, links=links),
            job("copied", check_copies, links=links, copy=True),
            job("envjob", check_env),
            job("broken", "true", links={"x": str(files / "missing")}),
            job("nested", "true", links={"t": str(files / "tree"), "t/g": str(files / "abc")}),
        ]
    )
    st = agent.wait_final(["linked", "copied", "envjob", "broken", "nested"])
    for j in ("linked", "copied", "envjob"):
        assert st["jobs"][j]["state"] == "DONE", st["jobs"][j]
    assert (files / "abc").read_text() == "data\n"  # the copy shielded the original
    assert st["jobs"]["broken"]["state"] == "ABORTED"
    assert "input missing" in st["jobs"]["broken"]["reason"]
    if as_root:  # "t" is a copy: "t/g" lands in the job's copy, not in the stored tree
        assert st["jobs"]["nested"]["state"] == "DONE"
    else:
        assert "outside the work dir" in st["jobs"]["nested"]["reason"]
    assert sorted(p.name for p in (files / "tree").iterdir()) == ["f"]  # inputs untouched


def test_stop_kill_jobs_with_and_without_a_daemon(agent: Agent) -> None:
    agent.start(2)
    agent.submit([job("a", "sleep 30"), job("b", "sleep 30")])
    st = agent.wait(lambda s: s["agent"]["slots_used"] == 2)
    pids = [st["jobs"][j]["pid"] for j in ("a", "b")]
    agent.kill_daemon()  # b's and a's processes are orphans now; stop must still find them
    doc = agent.call("stop", "--kill-jobs")
    assert doc["stopped"] is False and sorted(doc["killed"]) == ["a", "b"]
    wait_until(
        lambda: not any(process_alive(p) for p in pids), 3, "the jobs to be killed", every=0.02
    )
    st = json.loads((agent.root / "status.json").read_text())
    assert {st["jobs"][j]["state"] for j in ("a", "b")} == {"ABORTED"}
    assert agent.call("stop") == {"stopped": False, "pid": None, "killed": []}


def test_daemon_survives_stop_without_kill_and_keeps_jobs(agent: Agent) -> None:
    agent.start(1)
    agent.submit([job("long", "sleep 0.6")])
    agent.wait_state("long", "RUNNING")
    doc = agent.call("stop")
    assert doc["stopped"] is True and doc["killed"] == []
    st = agent.wait_final(["long"])  # status restarts the daemon, which adopts the job
    assert st["jobs"]["long"]["state"] == "DONE"


def test_fork_fallback_without_posix_spawn(agent: Agent) -> None:
    agent.env["CLOUDSEND_AGENT_NO_SPAWN"] = "1"
    agent.start(1)
    agent.submit([job("f", "echo $CLOUDSEND_JOB_ID; exit 3")])
    st = agent.wait_final(["f"])
    assert (st["jobs"]["f"]["exit_code"], agent.call("tail", "f")["text"]) == (3, "f")


def test_import_form_caches_bytecode(agent: Agent) -> None:
    """The documented faster invocation: import agent from ROOT (bytecode cached there)."""
    agent.root.mkdir(parents=True)
    for path in AGENT_FILES:  # as deploy uploads it: agent.py and the protocol it imports
        shutil.copy(path, agent.root / path.name)
    code = "import sys; sys.path.insert(0, sys.argv[2]); import agent; sys.exit(agent.main())"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

    def call(*args: str) -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, "-c", code, "--root", str(agent.root), *args],
            input="{}", capture_output=True, text=True, env=env, check=True, timeout=30,
        )  # fmt: skip
        doc: dict[str, Any] = json.loads(out.stdout)
        return doc

    assert call("start", "--slots", "1")["started"] is True
    assert call("submit") == {"accepted": [], "skipped": []}
    assert call("status")["agent"]["running"] is True
    assert list((agent.root / "__pycache__").glob("agent.*.pyc"))


def _python38() -> str:
    # real interpreters only: a pyenv shim for an inactive version fails at run time
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8*/bin/python3.8")))
    candidates += ["/usr/bin/python3.8", "/usr/local/bin/python3.8"]
    return next((c for c in candidates if os.access(c, os.X_OK)), "")


PY38 = _python38()


@pytest.mark.skipif(not PY38, reason="no python3.8 interpreter here")
def test_runs_under_python_3_8(tmp_path: Path) -> None:
    a = Agent(tmp_path / "host", python=PY38)
    try:
        a.start(2)
        a.submit([job("j", "echo ok > o", outputs=["o"])], [{"env_id": "e", "script": "true"}])
        assert a.wait_final(["j"])["jobs"]["j"]["state"] == "DONE"
        assert a.call("pack", "--out", "o.tgz", "j")["missing"] == {}
    finally:
        a.call("stop", "--kill-jobs")


def test_speed_many_jobs(agent: Agent) -> None:
    """Loose bounds (a loaded CI machine); the real figures are in docs/internals.md."""
    agent.start(4)
    t0 = time.monotonic()
    agent.submit([job(f"t{i:02d}", "true") for i in range(50)])
    agent.wait_final([f"t{i:02d}" for i in range(50)], timeout=30)
    assert time.monotonic() - t0 < 10
    agent.call("stop", "--kill-jobs")
    agent.start(1)
    agent.submit([job("blocker", "sleep 30")] + [job(f"q{i:04d}", "true") for i in range(1000)])
    t1 = time.monotonic()
    st = agent.status()
    assert time.monotonic() - t1 < 1.0
    assert len(st["jobs"]) == 1051


def test_collect_long_polls_then_packs_only_wanted_final_jobs(agent: Agent, tmp_path: Path) -> None:
    import json
    import tarfile
    import time

    agent.start(2)
    agent.submit(
        [
            job("c1", "echo one > o.txt", outputs=["o.txt"]),
            job("c2", "sleep 30", outputs=["o.txt"]),
            job("c3", "echo three > o.txt", outputs=["o.txt"]),
        ]
    )
    agent.wait_final(["c1", "c3"])
    want = json.dumps({"c1": 1, "c2": 1, "c3": 2})  # c3 is wanted at another attempt
    out = str(tmp_path / "round1.tar.gz")
    doc = agent.call("collect", "--out", out, stdin=want)
    assert set(doc["status"]["jobs"]) == {"c1", "c2", "c3"}
    assert doc["pack"]["jobs"] == ["c1"]  # c2 is not final, c3's attempt differs
    with tarfile.open(doc["pack"]["path"]) as tar:
        assert "c1/o.txt" in tar.getnames() and not any(n.startswith("c3/") for n in tar.getnames())
    version = doc["status"]["version"]
    # nothing changes: the long poll waits its full time, and nothing final is left to pack
    started = time.monotonic()
    quiet = agent.call(
        "collect",
        "--out",
        str(tmp_path / "r2.tar.gz"),
        "--since",
        str(version),
        "--wait",
        "1.0",
        stdin=json.dumps({"c2": 1}),
    )
    assert time.monotonic() - started >= 0.9
    assert quiet["pack"] is None
    # a change (c2 cancelled) ends the wait early
    cancelled = agent.call("cancel", "c2")
    assert cancelled["cancelled"] == ["c2"]
    started = time.monotonic()
    changed = agent.call(
        "collect",
        "--out",
        str(tmp_path / "r3.tar.gz"),
        "--since",
        str(version),
        "--wait",
        "10",
        stdin=json.dumps({"c2": 1}),
    )
    assert time.monotonic() - started < 5
    assert changed["pack"]["jobs"] == ["c2"]
