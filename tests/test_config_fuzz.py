"""Config fuzzer: ~440 hostile config files (tests/config_fuzz_cases.py, seeded) through
`cloudsend validate`; each must end within 5 s with exit 0 or 2 and no traceback.

Most go through the CLI's own entry point in-process (`cloudsend.cli.main`, the code path
of the console script) with a per-case wall-clock bound and an alarm so that a hang fails
instead of blocking; a sample runs as real `cloudsend validate` processes (exit codes, no
traceback on either stream, peak memory), and a few valid ones are really `cloudsend run`
on the local provider. Distinct from test_config_properties.py (hypothesis, load_config on
small random structures): here whole files of the kinds users and attackers produce.

CLOUDSEND_FUZZ_SEED picks another seed (to explore; the suite uses the fixed one).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cloudsend import cli
from tests.config_fuzz_cases import FIXTURES, Case, generate

SEED = int(os.environ.get("CLOUDSEND_FUZZ_SEED", "20240611"))
LIMIT_S = 5.0  # the bound on one validate of a hostile file
ALARM_S = 20  # a case still running then is interrupted (fails: not exit 0/2)
SUBPROCESS_CASES = 20
RUN_CASES = 8
MAX_RSS_MB = 400  # a validate process is ~80 MB; a file that blew up memory would show


@dataclass
class Outcome:
    case: Case
    code: int | str  # "traceback": an exception escaped main()
    out: str
    err: str
    seconds: float

    def problems(self) -> list[str]:
        found = []
        if self.code not in (0, 2):
            found.append(f"exit {self.code}")
        if self.case.expect is not None and self.code != self.case.expect:
            found.append(f"exit {self.code}, expected {self.case.expect}")
        if "Traceback" in self.out + self.err:
            found.append("traceback in the output")
        if self.seconds > LIMIT_S:
            found.append(f"took {self.seconds:.1f} s")
        if self.code == 0 and ": ok (" not in self.out:
            found.append("exit 0 without 'ok'")
        if self.code == 2:
            if not self.err.startswith("config error: "):
                found.append("exit 2 without 'config error: '")
            if self.case.filename not in self.err:
                found.append("the message does not name the file")
            # One clear message: never the whole 100 kB string back, never a flood.
            if len(self.err) > 20_000 or max(map(len, self.err.splitlines())) > 2_000:
                found.append(f"message of {len(self.err)} chars")
        return found

    def report(self) -> str:
        tail = (self.err or self.out)[-1500:]
        return f"{self.case.filename}: {', '.join(self.problems())}\n{tail}"


class _Hang(BaseException):
    """Raised by the alarm: not an Exception, so cloudsend's own handlers do not take it."""


def _alarm(signum: int, frame: Any) -> None:
    raise _Hang


def validate_in_process(path: Path, case: Case) -> Outcome:
    cli._VERBOSITY["debug"] = 0  # a global of the CLI process: fresh for each case
    out, err = io.StringIO(), io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, ALARM_S)
    start = time.monotonic()
    code: int | str
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                cli.main(["validate", path.name])
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # what a user would see as a traceback (or the alarm)
                code = "traceback"
                err.write(traceback.format_exc())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return Outcome(case, code, out.getvalue(), err.getvalue(), time.monotonic() - start)


# `python -m cloudsend` that writes its own peak RSS (VmHWM of its own address space) to a
# file at exit. rusage's ru_maxrss would not do: a child spawned by vfork carries the
# parent's high-water mark through exec, so a big pytest process would look like a big child.
_MEASURED = (
    "import atexit, runpy, sys\n"
    "def _hwm(path=sys.argv.pop(1)):\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            open(path, 'w').write(line.split()[1])\n"
    "atexit.register(_hwm)\n"
    "sys.argv[0] = 'cloudsend'\n"
    "runpy.run_module('cloudsend', run_name='__main__')\n"
)


def run_cli(cwd: Path, args: list[str], timeout: float) -> tuple[int, str, str, float, float]:
    """A real `cloudsend` process: (exit code, stdout, stderr, seconds, peak RSS in MB)."""
    env = {k: v for k, v in os.environ.items() if k != "CLOUDSEND_DEBUG"}
    hwm = cwd / ".hwm"
    hwm.unlink(missing_ok=True)
    with open(cwd / ".out", "w+b") as out, open(cwd / ".err", "w+b") as err:
        start = time.monotonic()
        try:
            proc = subprocess.run(
                [sys.executable, "-c", _MEASURED, str(hwm), *args],
                cwd=cwd,
                stdout=out,
                stderr=err,
                env=env,
                timeout=timeout,
            )
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = -9
        seconds = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        texts = [f.read().decode("utf-8", "replace") for f in (out, err)]
    rss = int(hwm.read_text()) / 1024 if hwm.exists() else 0.0
    return code, texts[0], texts[1], seconds, rss


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    return generate(SEED)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of tests/configs (the files the bases name), where every case is written."""
    root = tmp_path_factory.mktemp("fuzz") / "configs"
    shutil.copytree(FIXTURES, root)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _write(workdir: Path, case: Case) -> Path:
    path = workdir / case.filename
    path.write_bytes(case.content)
    return path


def _pick_for_subprocess(cases: list[Case]) -> list[Case]:
    """One of each family (its biggest file), then the biggest others, SUBPROCESS_CASES in
    all, in a fixed order."""
    by_kind: dict[str, Case] = {}
    for case in cases:
        best = by_kind.get(case.kind)
        if best is None or len(case.content) > len(best.content):
            by_kind[case.kind] = case
    chosen = sorted(by_kind.values(), key=lambda c: -len(c.content))[:SUBPROCESS_CASES]
    return sorted(chosen, key=lambda c: c.name)


def test_fuzz_validate(
    cases: list[Case],
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("CLOUDSEND_DEBUG", raising=False)
    monkeypatch.chdir(workdir)
    assert len(cases) >= 400
    outcomes = []
    for case in cases:
        path = _write(workdir, case)
        outcomes.append(validate_in_process(path, case))
        path.unlink()
    sample = _pick_for_subprocess(cases)
    peak = 0.0
    by_name = {o.case.name: o for o in outcomes}
    for case in sample:
        path = _write(workdir, case)
        code, out, err, seconds, rss = run_cli(workdir, ["validate", path.name], timeout=60)
        path.unlink()
        peak = max(peak, rss)
        real = Outcome(case, code, out, err, seconds)
        # The process says what the in-process run said: the same code path.
        if code != by_name[case.name].code:
            real.err += f"\n(in-process exit was {by_name[case.name].code})"
            outcomes.append(Outcome(case, f"{code} vs in-process", out, real.err, seconds))
        outcomes.append(real)
        if rss > MAX_RSS_MB:
            outcomes.append(Outcome(case, f"{rss:.0f} MB", out, err, seconds))

    crashes = [o for o in outcomes if o.problems()]
    valid = sum(o.code == 0 for o in outcomes[: len(cases)])
    refused = sum(o.code == 2 for o in outcomes[: len(cases)])
    slowest = max(outcomes[: len(cases)], key=lambda o: o.seconds)
    with capsys.disabled():
        print(
            f"\nfuzz (seed {SEED}): {len(cases)} configs, {valid} valid (exit 0), "
            f"{refused} refused (exit 2), {len(crashes)} crashes, slowest "
            f"{slowest.seconds:.2f} s ({slowest.case.filename}); {len(sample)} also as "
            f"processes, peak RSS {peak:.0f} MB"
        )
    assert not crashes, "\n\n".join(o.report() for o in crashes[:10])
    assert valid >= 60 and refused >= 250  # the generator still makes both kinds


def test_fuzz_run_valid_configs(
    cases: list[Case], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A few valid mutated echo configs really run on the local provider, end cleanly, and
    leave no agent running."""
    runnable = [c for c in cases if c.runs]
    step = len(runnable) // RUN_CASES
    chosen = [runnable[i * step + i % step] for i in range(RUN_CASES)]  # YAML and Python
    assert len(chosen) == RUN_CASES and any(c.suffix == ".py" for c in chosen)
    total = 0.0
    for case in chosen:
        folder = tmp_path / case.name
        folder.mkdir()
        (folder / case.filename).write_bytes(case.content)
        code, out, err, seconds, _ = run_cli(folder, ["run", "--json", case.filename], 120)
        total += seconds
        assert code == 0, f"{case.filename}: exit {code}\n{err[-2000:]}"
        assert "Traceback" not in out + err
        summary = json.loads(out)
        assert summary["ok"] and summary["counts"] == {"DONE": case.runs}, out[-2000:]
        for pid_file in folder.rglob("agent.pid"):  # run stops its agents when done
            pid = int(pid_file.read_text().split()[0])
            assert not _alive(pid), f"{case.filename}: agent {pid} still running"
    with capsys.disabled():
        print(f"\nfuzz run: {len(chosen)} valid configs run on local, all DONE, {total:.1f} s")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
