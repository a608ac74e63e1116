"""Big outputs and logs come home streamed, byte-exact, on the local provider and over real
sshd hosts; a fetch killed with SIGKILL leaves nothing behind once the next fetch has run.

(Memory itself is measured by benchmarks/stream.py, not here.)
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cloudsend.pipeline.fetch import PART_PREFIX, clean_leftovers
from cloudsend.pipeline.logs import SCAN, tail_start
from cloudsend.transport.base import CHUNK
from cloudsend.transport.local import open_local
from cloudsend.transport.ssh_file import WINDOW
from tests.conftest import Project
from tests.ssh_helpers import ssh_config

OUT_SIZE = 9 * CHUNK + 12_345  # several chunks, not a multiple of one
LOG_SIZE = 3 * CHUNK + 7


def cli_bytes(project: Project, *args: str) -> bytes:
    proc = subprocess.run(
        [sys.executable, "-m", "cloudsend", *args],
        cwd=project.path,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def expected_tail(data: bytes, n: int) -> bytes:
    """What `tail -n N` prints."""
    ends = data.endswith(b"\n")
    lines = data.split(b"\n")
    if ends:
        lines = lines[:-1]
    return b"\n".join(lines[-n:]) + (b"\n" if ends else b"")


def wait_for(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def job_ids(project: Project) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "cloudsend", "status", "--json"],
        cwd=project.path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        return []
    return sorted(j["job_id"] for j in json.loads(proc.stdout)["jobs"])


def test_tail_start_finds_the_last_lines(tmp_path: Path) -> None:
    cases = [b"", b"\n", b"a", b"a\n", b"a\nb", b"a\nb\n", b"\n\n\n", b"x" * (3 * SCAN) + b"\ny"]
    long_lines = b"".join(b"%d %s\n" % (i, b"z" * (i * 997 % (2 * SCAN))) for i in range(60))
    cases += [long_lines, long_lines + b"no newline at the end"]
    for data in cases:
        path = tmp_path / "log"
        path.write_bytes(data)
        with open_local(path, "log") as f:
            for n in (1, 2, 3, 50, 1000):
                start = tail_start(f, len(data), n)
                assert data[start:] == expected_tail(data, n), (data[:40], n)
            assert tail_start(f, len(data), 0) == 0


def test_logs_tail_by_default_all_with_lines_0_and_big_output_byte_exact(
    project: Project, tmp_path: Path
) -> None:
    flag, written = tmp_path / "go", tmp_path / "written"
    ref_out, ref_log = tmp_path / "ref_out", tmp_path / "ref_log"
    project.config(
        f"""
        project: streams
        instances:
          - cpus: 2
        jobs:
          - run_command: >-
              for i in $(seq 1 200); do echo "line $i"; done; printf 'no newline at the end';
              while [ ! -e {flag} ]; do sleep 0.05; done
          - run_command: >-
              head -c {OUT_SIZE} /dev/urandom | tee {ref_out} > out.bin &&
              head -c {LOG_SIZE} /dev/urandom | tee {ref_log} && touch {written} &&
              while [ ! -e {flag} ]; do sleep 0.05; done
            output_file: out.bin
        """
    )
    run = project.popen("run", "--json")
    try:
        talker, big = wait_for(lambda: len(ids := job_ids(project)) == 2 and ids, 60, "the jobs")
        wait_for(written.exists, 60, "the big log written")
        lines = [f"line {i}" for i in range(1, 201)]
        text = ("\n".join(lines) + "\nno newline at the end").encode()
        # on the host, while the jobs run
        assert cli_bytes(project, "logs", talker) == expected_tail(text, 50)
        last3 = b"line 199\nline 200\nno newline at the end"
        assert cli_bytes(project, "logs", talker, "-n", "3") == last3
        assert cli_bytes(project, "logs", talker, "--lines", "0") == text
        assert cli_bytes(project, "logs", big, "--lines", "0") == ref_log.read_bytes()
        assert cli_bytes(project, "logs", big) == expected_tail(ref_log.read_bytes(), 50)
        flag.touch()
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, err
    results = Path(json.loads(out)["results_dir"])
    got = results / big / "out.bin"
    assert got.stat().st_size == OUT_SIZE and sha256(got) == sha256(ref_out)
    assert (results / big / "stdout.log").read_bytes() == ref_log.read_bytes()
    # fetched: now read from results/, the same bytes
    assert cli_bytes(project, "logs", big, "--lines", "0") == ref_log.read_bytes()
    assert cli_bytes(project, "logs", talker) == expected_tail(text, 50)
    assert not list((project.state_dir() / "tmp").iterdir())


def test_fetch_killed_mid_download_leaves_nothing_after_the_next_fetch(
    project: Project, tmp_path: Path
) -> None:
    ref = tmp_path / "ref"
    size = 200 * CHUNK
    project.config(
        f"""
        project: killed
        jobs:
          - run_command: head -c {size} /dev/urandom | tee {ref} > out.bin
            output_file: out.bin
        """
    )
    tmp = project.path / ".cloudsend" / "projects" / "killed" / "tmp"

    def parts() -> list[Path]:
        try:
            return [p for p in tmp.iterdir() if p.name.startswith(PART_PREFIX)]
        except FileNotFoundError:
            return []

    run = project.popen("run")
    try:
        wait_for(lambda: any(p.stat().st_size > 0 for p in parts()), 180, "a download begun")
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    left = parts()
    assert left and all(p.stat().st_size < size for p in left)  # a partial file, as left
    old_style = project.results() / ".fetch-x1y2z3.tar.gz"  # what older versions left
    old_style.write_bytes(b"\x1f\x8b partial")

    fetched = project.cli("fetch", check=True)
    assert "results:" in fetched.stdout
    assert parts() == [] and not old_style.exists()
    got = next(project.results().glob("*/out.bin"))
    assert got.stat().st_size == size and sha256(got) == sha256(ref)
    assert not list(project.results().glob("**/*.part"))


def test_clean_leftovers_spares_a_file_a_live_fetch_is_writing(tmp_path: Path) -> None:
    tmp, results = tmp_path / "tmp", tmp_path / "results"
    tmp.mkdir()
    (results / "run-3").mkdir(parents=True)
    dead = tmp / f"{PART_PREFIX}dead"
    dead.write_bytes(b"half")
    live = tmp / f"{PART_PREFIX}live"
    other = tmp / "not-ours"
    other.write_text("x")
    old = results / "run-3" / ".fetch-abc.tar.gz"
    old.write_bytes(b"x")
    with open(live, "wb") as writer:
        fcntl.flock(writer, fcntl.LOCK_EX)
        assert clean_leftovers(tmp, results) == 2
        assert live.exists() and other.exists()
        assert not dead.exists() and not old.exists()
    assert clean_leftovers(tmp, results) == 1  # released (the writer died): stale now
    assert not live.exists()
    assert clean_leftovers(tmp_path / "missing", tmp_path / "none") == 0
    os.unlink(other)


def test_over_ssh_big_output_and_whole_log_arrive_byte_exact(
    sshd_factory: Any, project: Project, ledger_dir: Path
) -> None:
    host = sshd_factory(1)[0]
    flag, written = ledger_dir / "go", ledger_dir / "written"
    ref_out, ref_log = ledger_dir / "ref_out", ledger_dir / "ref_log"
    size = WINDOW + 12_345  # more than the SFTP reader's window, not a multiple of it
    command = (
        f"head -c {size} /dev/urandom | tee {ref_out} > out.txt && "
        f"head -c {LOG_SIZE} /dev/urandom | tee {ref_log} && touch {written} && "
        f"while [ ! -e {flag} ]; do sleep 0.05; done"
    )
    project.config(ssh_config([host], ledger_dir, jobs=1, sleep=0, command=command))
    run = project.popen("run", "--json")
    try:
        wait_for(written.exists, 90, "the log written")
        (job,) = wait_for(lambda: job_ids(project), 30, "the job")
        log = ref_log.read_bytes()
        assert cli_bytes(project, "logs", job, "--lines", "0") == log  # from the host
        assert cli_bytes(project, "logs", job, "-n", "5") == expected_tail(log, 5)
        flag.touch()
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, err
    got = Path(json.loads(out)["results_dir"]) / job / "out.txt"
    assert got.stat().st_size == size and sha256(got) == sha256(ref_out)
