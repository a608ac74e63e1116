"""`maestro: remote` on provider ssh under faults, end to end on real sshd hosts (loopback):
a worker terminated mid-run and the maestro's watcher SIGKILLed (restarted by the laptop's
next call, resuming with nothing redone), a teammate's checkout fetching every result once;
the maestro unreachable (each laptop command says so, the run goes on); the laptop's `run`
killed while it ships cloudsend (the next `run` resumes). The decisions (when the laptop
restarts the maestro's watcher, what a ship still has to do) are table tests below."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ssh_helpers import pname, processes_under
from tests.test_maestro_remote import _cli, _status, _worker_home
from tests.test_maestro_ship import USER_LINES
from tests.waiting import wait_until

TIMES: dict[str, float] = {}  # test -> seconds (printed, for the report)
PROJECT = "faults"
# the job: one ledger line per execution (its job id and where it ran), then its output
JOB = (
    'echo "$CLOUDSEND_JOB_ID $PWD" >> {ledger} && sleep {sleep} && '
    'echo "$CLOUDSEND_JOB_ID" > out.txt'
)


@pytest.fixture(scope="module")
def wheel_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache of cloudsend's wheel for the module (built once, by the first ship)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def maestro_root() -> Iterator[Path]:
    """A cloudsend root on "the maestro" (this machine) shared by tests with different
    projects and maestro sshds: cloudsend's venv is installed there once for the module."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="cloudsend-maestro-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def ledger(wheel_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A file every worker's user may append to (jobs record each execution there)."""
    import tempfile

    monkeypatch.setenv("XDG_CACHE_HOME", str(wheel_cache))
    folder = Path(tempfile.mkdtemp(prefix="cloudsend-faults-"))
    folder.chmod(0o777)
    path = folder / "ledger"
    path.touch()
    path.chmod(0o666)  # the workers log in as different users
    try:
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Remote:
    maestro: Any  # SshdHost
    workers: list[Any]
    keys_files: list[Path]  # each worker's ~/.ssh/authorized_keys
    laptop: Path
    config: dict[str, Any]
    ledger: Path
    root: Path  # cloudsend's root on the maestro (maestro_host.root)
    project: str

    @property
    def run_dir(self) -> Path:
        return self.root / "runs" / self.project

    @property
    def watcher_dir(self) -> Path:
        return self.run_dir / ".cloudsend" / "projects" / self.project

    def watcher_pid(self) -> int | None:
        try:
            return int((self.watcher_dir / "watcher.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def checkout(self, name: str) -> Path:
        """Another folder holding only the config (a teammate's checkout)."""
        folder = self.laptop.parent / name
        folder.mkdir()
        (folder / "cloudsend.yaml").write_text(yaml.safe_dump(self.config))
        return folder

    def story(self) -> str:
        """What the maestro's watcher logged, and the ledger (for failure messages)."""
        log = self.watcher_dir / "watcher.log"
        text = log.read_text()[-3000:] if log.exists() else "(no watcher.log)"
        return f"watcher.log:\n{text}\nledger: {self.ledger_lines()}"

    def ledger_lines(self) -> list[tuple[str, str]]:
        """(job id, the folder it ran in) of every execution so far."""
        if not self.ledger.exists():
            return []
        lines = self.ledger.read_text().splitlines()
        return [(line.split()[0], line.split()[1]) for line in lines if line.strip()]


def remote_project(
    sshd_factory: Any, tmp_path: Path, ledger: Path, *, workers: int, jobs: int, sleep: float,
    cpus: int = 2, lost_after: float = 5, root: Path | None = None, project: str = PROJECT,
) -> Remote:
    """A laptop folder with a remote-maestro config: a fresh maestro (its cloudsend root
    `root`, default its own: a shared one holds cloudsend's venv already), `workers` fresh
    workers, `jobs` runs of JOB."""
    maestro = sshd_factory(1)[0]
    root = root or maestro.root / "m"
    hosts = [sshd_factory(1, user=f"csfault{i}")[0] for i in range(workers)]
    keys_files = [_worker_home(h) for h in hosts]
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    config = {
        "project": project,
        "provider": "ssh",
        "maestro": "remote",
        "host_lost_after": lost_after,
        "maestro_host": {
            "address": "127.0.0.1", "port": maestro.port, "key": str(maestro.key),
            "root": str(root),
        },
        "hosts": [
            {"address": "127.0.0.1", "port": h.port, "user": h.user, "key": str(h.key),
             "cpus": cpus, "root": str(h.root)}
            for h in hosts
        ],
        "jobs": [
            {"run_command": JOB.format(ledger=ledger, sleep=sleep), "output_files": ["out.txt"],
             "repeat": jobs}
        ],
    }
    (laptop / "cloudsend.yaml").write_text(yaml.safe_dump(config))
    return Remote(maestro, hosts, keys_files, laptop, config, ledger, root, project)


def _running_on(host: Any) -> bool:
    return any(" sleep " in p for p in processes_under(host.root))


def _fetch_count(out: str) -> int:
    head = out.split("fetched ", 1)[1]
    return int(head.split(" job(s)", 1)[0])


def _check_results(folder: Path, job_ids: set[str], project: str) -> None:
    """Every job's output in folder's results, once, with its own content."""
    outs = sorted((folder / "results" / project).rglob("out.txt"))
    assert sorted(p.parent.name for p in outs) == sorted(job_ids), outs
    for out in outs:
        assert out.read_text().strip() == out.parent.name


@pytest.mark.slow
def test_worker_terminated_watcher_killed_teammate_fetches(
    sshd_factory: Any, tmp_path: Path, ledger: Path, maestro_root: Path
) -> None:
    begin = time.monotonic()
    r = remote_project(sshd_factory, tmp_path, ledger, workers=3, jobs=12, sleep=4,
                       root=maestro_root, project="terminated")
    first = _cli(r.laptop, "run", "--json", "cloudsend.yaml")
    assert first.returncode == 0, first.stdout + first.stderr
    shutil.rmtree(r.laptop / ".cloudsend")  # the laptop forgets everything

    victim = r.workers[1]
    gone = pname(victim)
    wait_until(lambda: _running_on(victim), 60, lambda: f"a job on the victim\n{r.story()}")
    victim.kill()  # terminated for good: sshd, agent and jobs gone with its disk
    victim.wipe()
    on_victim = {job for job, where in r.ledger_lines() if where.startswith(str(victim.root))}
    assert on_victim

    def requeued() -> dict[str, Any] | None:
        doc = _status(r.laptop)
        stuck = [j for j in doc["jobs"] if j["host"] == gone and not j["fetched"]]
        return None if stuck else doc

    doc = wait_until(requeued, 90, "the maestro re-queuing the victim's jobs", every=1)
    assert any(j["state"] != "DONE" for j in doc["jobs"]), "nothing left for the kill below"

    old = r.watcher_pid()
    assert old is not None
    os.kill(old, signal.SIGKILL)  # the watcher on the maestro dies once
    wait_until(lambda: not Path(f"/proc/{old}").exists(), 10, "the watcher gone")
    ran_before = Counter(job for job, _ in r.ledger_lines())

    follow = _cli(r.laptop, "attach", "cloudsend.yaml", timeout=300)  # restarts it, follows
    assert follow.returncode == 0, follow.stdout + follow.stderr
    assert "the maestro's watcher had stopped mid-run: restarted" in follow.stderr, follow.stderr
    assert "Traceback" not in follow.stderr
    new = json.loads((r.watcher_dir / "watcher.json").read_text())
    assert new["pid"] != old and new["exit_code"] == 0, new

    doc = _status(r.laptop)
    assert len(doc["jobs"]) == 12 and all(j["state"] == "DONE" and j["fetched"]
                                          for j in doc["jobs"]), doc
    assert {j["host"] for j in doc["jobs"]} <= {pname(w) for w in r.workers if w is not victim}
    job_ids = {j["job_id"] for j in doc["jobs"]}
    # each job ran exactly once off the victim; twice only if its first try was on the victim
    lines = r.ledger_lines()
    elsewhere = Counter(job for job, where in lines if not where.startswith(str(victim.root)))
    assert elsewhere == Counter(dict.fromkeys(job_ids, 1)), lines
    assert {job for job, n in Counter(j for j, _ in lines).items() if n > 1} <= on_victim
    # the restarted watcher redid nothing that had started before it was killed
    assert all(Counter(job for job, _ in lines)[job] == n for job, n in ran_before.items()
               if job not in on_victim)

    mate = r.checkout("teammate")  # only the config: no .cloudsend
    seen = _status(mate)
    assert sorted(j["job_id"] for j in seen["jobs"]) == sorted(job_ids)
    got = _cli(mate, "fetch", "cloudsend.yaml")
    assert got.returncode == 0 and _fetch_count(got.stdout) == 12, got.stdout + got.stderr
    _check_results(mate, job_ids, r.project)
    again = _cli(mate, "fetch", "cloudsend.yaml")
    assert again.returncode == 0 and _fetch_count(again.stdout) == 0, again.stdout
    mine = _cli(r.laptop, "fetch", "cloudsend.yaml")  # the first laptop, independently
    assert mine.returncode == 0 and _fetch_count(mine.stdout) == 12, mine.stdout + mine.stderr
    _check_results(r.laptop, job_ids, r.project)

    # down while the terminated worker is gone: the others are cleaned, it is named
    partial = _cli(r.laptop, "down", "cloudsend.yaml", "--yes")
    assert partial.returncode == 3, partial.stdout + partial.stderr
    assert f"{gone}: the run key stays in its authorized_keys" in partial.stderr, partial.stderr
    assert "Traceback" not in partial.stderr
    for w, path in zip(r.workers, r.keys_files, strict=True):
        assert (path.read_text() == USER_LINES) is (w is not victim), path
    victim.start()  # its address answers again (its disk is gone): down again
    down = _cli(r.laptop, "down", "cloudsend.yaml", "--yes")
    assert down.returncode == 0, down.stdout + down.stderr
    for path in r.keys_files:
        assert path.read_text() == USER_LINES, path
    TIMES["worker terminated + watcher killed + teammate"] = time.monotonic() - begin
    print(f"\n{TIMES}")


def _one_message(proc: subprocess.CompletedProcess[str], where: str) -> None:
    """Non-zero, one clear message naming the maestro and its address, no traceback."""
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    first = proc.stderr.strip().splitlines()[0]
    assert first.startswith(f"transport error: could not reach the maestro {where}"), proc.stderr
    assert proc.stderr.count("could not reach the maestro") == 1, proc.stderr
    assert "nothing is lost" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_maestro_unreachable_then_back(
    sshd_factory: Any, tmp_path: Path, ledger: Path, maestro_root: Path
) -> None:
    begin = time.monotonic()
    r = remote_project(sshd_factory, tmp_path, ledger, workers=2, jobs=6, sleep=4, cpus=1,
                       root=maestro_root, project="unreachable")
    first = _cli(r.laptop, "run", "--json", "cloudsend.yaml")
    assert first.returncode == 0, first.stdout + first.stderr
    where = f"root@127.0.0.1:{r.maestro.port}"
    # reachable, answering an error: another kind, with the maestro's own exit code
    unknown = _cli(r.laptop, "logs", "nosuchjob", "cloudsend.yaml", timeout=120)
    assert unknown.returncode == 2, unknown.stdout + unknown.stderr
    assert unknown.stderr.startswith("error on the maestro: usage error:"), unknown.stderr
    assert "could not reach" not in unknown.stderr
    wait_until(lambda: r.ledger_lines(), 60, lambda: f"jobs to start\n{r.story()}")

    r.maestro.kill()  # the laptop cannot reach the maestro any more
    # the maestro's machine has trouble too: its watcher dies while nobody can reach it
    old = r.watcher_pid()
    assert old is not None
    os.kill(old, signal.SIGKILL)
    timed: dict[str, float] = {}
    for argv in (["status"], ["status", "--json"], ["attach"], ["fetch"], ["logs", "0"]):
        t0 = time.monotonic()
        proc = _cli(r.laptop, *argv, "cloudsend.yaml", timeout=120)
        timed[" ".join(argv)] = round(time.monotonic() - t0, 1)
        _one_message(proc, where)
    # the jobs are the workers' agents': they all run to the end without maestro or laptop
    ids = wait_until(
        lambda: (lambda seen: seen if len(seen) == 6 else None)({j for j, _ in r.ledger_lines()}),
        90, lambda: f"every job run by the workers\n{r.story()}",
    )
    outs = lambda: sorted(p for w in r.workers for p in w.root.glob("jobs/*/work/out.txt"))  # noqa: E731
    wait_until(lambda: len(outs()) == 6, 60, "every output on the workers")

    r.maestro.start()  # same port, same host key
    r.maestro.freeze()  # ...but first frozen: it accepts TCP and never answers
    t0 = time.monotonic()
    frozen = _cli(r.laptop, "status", "cloudsend.yaml", timeout=120)
    timed["status (frozen)"] = round(time.monotonic() - t0, 1)
    r.maestro.thaw()
    _one_message(frozen, where)

    back = _cli(r.laptop, "status", "cloudsend.yaml", timeout=120)  # back: the dead watcher
    assert back.returncode == 0, back.stdout + back.stderr  # is restarted, resumes, collects
    assert back.stdout.startswith("note: the maestro's watcher had stopped mid-run: restarted")
    doc = _status(r.laptop)
    # restarted (it may have collected everything and ended already: the workers had done)
    assert doc["watcher"]["state"] in ("running", "ended"), doc["watcher"]
    assert json.loads((r.watcher_dir / "watcher.json").read_text())["pid"] != old
    doc = wait_until(
        lambda: (lambda d: d if all(j["state"] == "DONE" and j["fetched"] for j in d["jobs"])
                 else None)(_status(r.laptop)),
        120, lambda: f"the run completing on the maestro\n{r.story()}", every=1,
    )
    assert {j["job_id"] for j in doc["jobs"]} == ids
    lines = r.ledger_lines()
    assert Counter(j for j, _ in lines) == Counter(dict.fromkeys(ids, 1)), lines  # nothing redone
    got = _cli(r.laptop, "fetch", "cloudsend.yaml")
    assert got.returncode == 0 and _fetch_count(got.stdout) == 6, got.stdout + got.stderr
    _check_results(r.laptop, ids, r.project)
    TIMES["maestro unreachable then back"] = time.monotonic() - begin
    print(f"\n{TIMES}\nlaptop calls while the maestro is unreachable (s): {timed}")


@pytest.mark.slow
def test_laptop_run_killed_while_shipping_then_resumed(
    sshd_factory: Any, tmp_path: Path, ledger: Path
) -> None:
    """`cloudsend run` SIGKILLed while cloudsend's venv is being made on the maestro: the
    install goes on there, the next `run` waits for it (the wheel is not sent again) and the
    run proceeds. Then a wheel torn at its final name (other bytes, no marker): the next
    `run` sends it again, makes the venv from clean, and nothing done is redone."""
    from cloudsend.maestro import ship as shipping

    begin = time.monotonic()
    r = remote_project(sshd_factory, tmp_path, ledger, workers=1, jobs=2, sleep=0.2)
    wheel = shipping.build_wheel(Path(os.environ["XDG_CACHE_HOME"]) / "cloudsend" / "wheels")
    folder = r.root / "cloudsend" / wheel.key
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloudsend", "run", "--json", "cloudsend.yaml"],
        cwd=r.laptop, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_until(  # the venv is being made on the maestro
        lambda: proc.poll() is not None or (folder / "venv" / "bin" / "python").exists(),
        120, "the install to begin on the maestro",
    )
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (folder / "done").exists()
    assert processes_under(folder), "the install should go on on the maestro"

    again = _cli(r.laptop, "run", "--json", "cloudsend.yaml")
    assert again.returncode == 0, again.stdout + again.stderr
    sent = json.loads(again.stdout[again.stdout.index("{"):])["bytes_sent"]
    assert sent < wheel.path.stat().st_size, sent  # the wheel was there: not sent again
    assert (folder / "done").exists() and not list(folder.glob("*.part-*"))
    ran = wait_until(
        lambda: (lambda d: d if d["jobs"] and all(j["state"] == "DONE" and j["fetched"]
                                                   for j in d["jobs"]) else None)(
            _status(r.laptop)),
        120, lambda: f"the run to complete\n{r.story()}", every=1,
    )

    # a wheel torn at its final name (half of it) with a dead transfer's temp, no marker
    (folder / "done").unlink()
    half = wheel.path.read_bytes()[: wheel.path.stat().st_size // 2]
    (folder / wheel.path.name).write_bytes(half)
    (folder / f"{wheel.path.name}.part-dead").write_bytes(half)
    third = _cli(r.laptop, "run", "--json", "cloudsend.yaml")
    assert third.returncode == 0, third.stdout + third.stderr
    sent = json.loads(third.stdout[third.stdout.index("{"):])["bytes_sent"]
    assert sent >= wheel.path.stat().st_size, sent  # sent again, whole
    assert shipping.sha256_file(folder / wheel.path.name) == wheel.sha256
    assert (folder / "done").exists() and not list(folder.glob("*.part-*"))
    version = subprocess.run([str(folder / "venv" / "bin" / "cloudsend"), "--version"],
                             capture_output=True, text=True)
    assert version.returncode == 0, version.stderr
    doc = _status(r.laptop)
    assert {j["job_id"] for j in doc["jobs"]} == {j["job_id"] for j in ran["jobs"]}
    lines = r.ledger_lines()
    assert Counter(j for j, _ in lines) == Counter({j["job_id"]: 1 for j in ran["jobs"]}), lines
    TIMES["laptop run killed while shipping"] = time.monotonic() - begin
    print(f"\n{TIMES}")


# -- the decisions, as tables ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "probe", "expected"),
    [
        ("status", (False, True, False), True),  # died mid-run: restarted
        ("attach", (False, True, False), True),
        ("fetch", (False, True, False), True),  # results reach the maestro only if it runs
        ("status", (True, True, False), False),  # alive: never a rival
        ("attach", (True, False, False), False),  # alive, not recorded yet (just starting)
        ("status", (False, True, True), False),  # the run ended: `run` starts it again
        ("status", (False, False, False), False),  # never started: `run` starts it
        ("logs", (False, True, False), False),  # reads only
        ("cancel", (False, True, False), False),  # the maestro's cancel acts on the agents
        ("down", (False, True, False), False),  # going away: no restart
        ("status", None, False),  # no probe answer (an older maestro): as before
    ],
)
def test_revive(command: str, probe: tuple[bool, bool, bool] | None, expected: bool) -> None:
    from cloudsend.pipeline.maestro_link import WatcherProbe, revive

    assert revive(command, None if probe is None else WatcherProbe(*probe)) is expected


@pytest.mark.parametrize(
    ("stdout", "probe", "rest"),
    [
        ('__cloudsend_watcher__{"held": false, "recorded": true, "ended": false}\n{"jobs": []}\n',
         (False, True, False), '{"jobs": []}\n'),
        ('{"jobs": []}\n', None, '{"jobs": []}\n'),  # no probe line
        ("__cloudsend_watcher__{torn\nTABLE\n", None, "TABLE\n"),  # a torn answer: none
    ],
)
def test_split_probe(stdout: str, probe: tuple[bool, bool, bool] | None, rest: str) -> None:
    from cloudsend.pipeline.maestro_link import WatcherProbe, split_probe

    assert split_probe(stdout) == (None if probe is None else WatcherProbe(*probe), rest)


def _look(*lines: str) -> str:
    return "motd noise\n__cloudsend_ship__\n" + "".join(f"{line}\n" for line in lines)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (_look("done", "/m/cloudsend/k"), (False, False)),  # ready: nothing to do
        (_look("todo", "/m/cloudsend/k", "3.11", "none"), (True, True)),  # first time
        (_look("todo", "/m/cloudsend/k", "3.11", "aaaa"), (False, True)),  # the wheel is there
        (_look("todo", "/m/cloudsend/k", "3.11", "torn"), (True, True)),  # other bytes: again
        (_look("todo", "/m/cloudsend/k", "3.12"), (True, True)),  # no sha line: send it
    ],
)
def test_plan_ship(answer: str, expected: tuple[bool, bool]) -> None:
    from cloudsend.maestro.ship import Wheel, plan_ship

    wheel = Wheel(Path("cloudsend-1.0-py3-none-any.whl"), "1.0", "aaaa")
    plan = plan_ship(answer, wheel)
    assert (plan.upload, plan.install) == expected and plan.folder == "/m/cloudsend/k"


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (_look("todo", "/m/k", "3.8", "none"), "needs python3 >= 3.10 there, found 3.8"),
        (_look("todo", "/m/k", "none", "none"), "found none"),
        ("no marker at all", "unexpected answer"),
    ],
)
def test_plan_ship_refuses(answer: str, message: str) -> None:
    from cloudsend.errors import ProvisionError
    from cloudsend.maestro.ship import Wheel, plan_ship

    with pytest.raises(ProvisionError, match=message.replace(".", r"\.")):
        plan_ship(answer, Wheel(Path("w.whl"), "1.0", "aaaa"))


@pytest.mark.parametrize(("code", "expected"), [(2, 2), (6, 6), (0, 1), (-1, 1), (300, 1)])
def test_maestro_answered_keeps_its_exit_code(code: int, expected: int) -> None:
    from cloudsend.errors import TransportError
    from cloudsend.pipeline.maestro_link import MaestroAnswered, MaestroUnreachable

    err = MaestroAnswered("x", exit_code=code)
    assert err.exit_code == expected and not isinstance(err, TransportError)
    assert issubclass(MaestroUnreachable, TransportError) and MaestroUnreachable.exit_code == 4


@pytest.mark.parametrize(
    ("code", "said", "expected"),
    [
        (0, "", "keys"),
        (127, "sh: 1: .cloudsend/venv/bin/cloudsend: No such file", "keys"),  # never ran there
        (3, "provision error: down did not clean 1 host(s); their agents or folders may remain",
         "keys, then report"),  # a worker unreachable: the others still lose the key
        (7, "state error: 2 finished job(s) have results not fetched yet", "stop"),
        (1, "error: down would cancel 3 job(s) not finished", "stop"),
        (3, "provision error: none of the 2 ssh host(s) could be used", "stop"),
    ],
)
def test_after_maestro_down(code: int, said: str, expected: str) -> None:
    from cloudsend.pipeline.maestro_control import after_maestro_down

    assert after_maestro_down(code, said) == expected


# -- the restart through the maestro's shell, with this machine as the maestro (no sshd) ------

_FAKE_CLOUDSEND = """#!/bin/sh
echo "$*" >> calls.log
case "$1" in
  run) if [ -f fail ]; then
         echo "the last watcher (pid 1) died mid-run: resuming" >&2
         printf "provision error: none of the 2 ssh host(s) could be used\\n  hint: check\\n" >&2
         exit 3
       fi
       echo '{"run": 1, "pid": 4242, "ended": false}' ;;
  status) if [ "$2" = --json ]; then echo '{"jobs": [], "watcher": {}}'; else echo TABLE; fi ;;
esac
"""


@pytest.mark.parametrize(
    ("record", "hold_lock", "fail", "restarted"),
    [
        ({"exit_code": None}, False, False, True),  # died mid-run: restarted, then asked
        ({"exit_code": None}, False, True, True),  # restart refused: the status still shows
        ({"exit_code": 0}, False, False, False),  # ended: left alone
        ({"exit_code": None}, True, False, False),  # alive (holds the lock): left alone
        (None, False, False, False),  # never started
    ],
)
def test_status_restarts_a_dead_watcher_on_the_maestro(
    tmp_path: Path, record: dict[str, Any] | None, hold_lock: bool, fail: bool, restarted: bool
) -> None:
    import fcntl

    from cloudsend.config import load_config
    from cloudsend.pipeline import maestro_control as control
    from cloudsend.transport.local import LocalTransport

    key = tmp_path / "id"
    key.write_text("not used\n")
    config = load_config(
        {"project": PROJECT, "provider": "ssh", "maestro": "remote",
         "maestro_host": {"address": "127.0.0.1", "key": str(key), "root": str(tmp_path / "m")},
         "hosts": [{"address": "127.0.0.1", "key": str(key)}]},
        base_dir=tmp_path,
    )
    run_dir = Path(control.run_dir(config))
    (run_dir / ".cloudsend" / "venv" / "bin").mkdir(parents=True)
    fake = run_dir / ".cloudsend" / "venv" / "bin" / "cloudsend"
    fake.write_text(_FAKE_CLOUDSEND)
    fake.chmod(0o755)
    watcher = run_dir / ".cloudsend" / "projects" / PROJECT
    watcher.mkdir(parents=True)
    if record is not None:
        (watcher / "watcher.json").write_text(json.dumps({"pid": 1, "detached": True,
                                                          "started": 0.0, **record}))
    if fail:
        (run_dir / "fail").touch()
    said: list[str] = []
    with open(watcher / "watcher.lock", "ab") as lock:
        if hold_lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        text = control.status_text(config, False, LocalTransport())
        doc = control.status(config, LocalTransport(), command="attach", say=said.append)
    calls = (run_dir / "calls.log").read_text().splitlines()
    runs = [c for c in calls if c.startswith("run ")]
    assert len(runs) == (2 if restarted else 0), calls  # once per call: status, then attach
    assert text.endswith("TABLE\n") and doc == {"jobs": [], "watcher": {}}
    if not restarted:
        assert not text.startswith("note:") and not said
    elif fail:
        assert text.startswith("note: the maestro's watcher had stopped mid-run and could not be "
                               "restarted: provision error: none of the 2 ssh host(s)"), text
        assert len(said) == 1 and said[0] in text
    else:
        assert text.startswith("note: the maestro's watcher had stopped mid-run: restarted "
                               "(pid 4242)\nTABLE"), text
        assert said == ["note: the maestro's watcher had stopped mid-run: restarted (pid 4242)"]


def test_maestro_transport_tells_unreachable_from_answered(sshd_host: Any, tmp_path: Path) -> None:
    """Over a real sshd: a command that fails there is MaestroAnswered (its exit code); with
    the sshd gone, run, get and reading are MaestroUnreachable naming the address."""
    from cloudsend.pipeline.maestro_link import (
        MaestroAnswered,
        MaestroTransport,
        MaestroUnreachable,
    )
    from cloudsend.transport.ssh import SshTransport

    inner = SshTransport(sshd_host.target(tmp_path / "kh"))
    where = f"root@127.0.0.1:{sshd_host.port}"
    link = MaestroTransport(inner, where, inner.target.label)
    try:
        assert link.run("echo hi").stdout == "hi\n"
        with pytest.raises(MaestroAnswered) as answered:
            link.run("echo broken >&2; exit 3", what="a test command")
        assert answered.value.exit_code == 3 and "broken" in answered.value.message
        assert not link.run("exit 5", check=False).ok  # check=False: a Result, as before
        sshd_host.kill()
        for call in (
            lambda: link.run("true"),
            lambda: link.get("/etc/hostname", tmp_path / "x"),
            lambda: link.reading("/etc/hostname").__enter__(),
        ):
            with pytest.raises(MaestroUnreachable) as lost:
                call()
            assert lost.value.message.startswith(f"could not reach the maestro {where}")
            assert lost.value.exit_code == 4 and "nothing is lost" in (lost.value.hint or "")
    finally:
        link.close()
