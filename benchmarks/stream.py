"""Peak memory of the maestro while big outputs and logs come home, on the local provider.

A real `cloudsend run` of a one-job config whose job writes an output file of OUT_MB (default
1000) and a stdout log of LOG_MB (default 200), then `cloudsend logs JOB --lines 0 >/dev/null`;
the same with a 1 KB output and log as the baseline. For each it prints the peak RSS in MB
(/usr/bin/time -v; else getrusage(RUSAGE_CHILDREN)) and the ratio to the baseline, and for the
run the peak disk the project folder took (on local the hosts' folders are in it).
The figure covers cloudsend and the commands it waited for (agent calls), not the detached
agent daemon. Target: peak RSS near the baseline (tens of MB), not proportional to the size.
Prints figures; not a test. `python benchmarks/stream.py [OUT_MB [LOG_MB]]`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

TIME = "/usr/bin/time"
CONFIG = """\
project: {name}
environments:
  - name: shell
    command: 'true'
jobs:
  - env_name: shell
    run_command: >-
      head -c {out_bytes} /dev/urandom > out.bin &&
      head -c {log_raw} /dev/urandom | base64 -w 76
    output_file: out.bin
"""


def peak_rss(args: list[str], cwd: Path, stdout: int | None = None) -> tuple[float, str]:
    """Run a command; its peak RSS in MB and its stdout (unless redirected)."""
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(Path.cwd()))}
    if os.path.exists(TIME):
        proc = subprocess.run(
            [TIME, "-v", *args],
            cwd=cwd,
            env=env,
            stdout=stdout if stdout is not None else subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-2000:]}")
        found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        assert found, proc.stderr[-500:]
        return int(found.group(1)) / 1024, proc.stdout or ""
    # no GNU time: the largest child waited for so far (runs go from small to big)
    proc = subprocess.run(
        args, cwd=cwd, env=env, stdout=stdout or subprocess.PIPE, text=True, check=True
    )
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, proc.stdout or ""


class DiskWatch:
    """The most disk the project folder (its local hosts included) took beyond its
    start, sampled every 0.2 s (a walk of the folder: the machine's other users do not count)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.start = self.used()
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def used(self) -> int:
        total = 0
        for folder, _dirs, files in os.walk(self.path):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(folder, name)).st_blocks * 512
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self.used() - self.start)

    def __enter__(self) -> DiskWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(base: Path, name: str, out_bytes: int, log_bytes: int) -> dict[str, float]:
    proj = base / name
    proj.mkdir()
    log_raw = log_bytes * 76 // 77 * 3 // 4  # base64 -w 76: 4/3 the bytes, one \n per 76
    (proj / "cloudsend.yaml").write_text(
        CONFIG.format(name=name, out_bytes=out_bytes, log_raw=log_raw)
    )
    cli = [sys.executable, "-m", "cloudsend"]
    try:
        with DiskWatch(proj) as disk:
            run_mb, out = peak_rss([*cli, "run", "--json"], proj)
        doc = json.loads(out)
        assert doc["counts"] == {"DONE": 1}, doc["counts"]
        job = doc["jobs"][0]["job_id"]
        got = Path(doc["results_dir"]) / job / "out.bin"
        assert got.stat().st_size == out_bytes, (got, got.stat().st_size)
        with open(os.devnull, "w") as null:
            logs_mb, _ = peak_rss([*cli, "logs", job, "--lines", "0"], proj, stdout=null.fileno())
        log_size = (Path(doc["results_dir"]) / job / "stdout.log").stat().st_size
        return {
            "run": run_mb,
            "logs": logs_mb,
            "disk": disk.peak / 1e6,
            "out": out_bytes / 1e6,
            "log": log_size / 1e6,
        }
    finally:
        subprocess.run([*cli, "down"], cwd=proj, capture_output=True, check=False)
        shutil.rmtree(proj, ignore_errors=True)


def main() -> None:
    out_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    log_mb = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    base = Path(tempfile.mkdtemp(prefix="cloudsend-bench-stream-"))
    try:
        small = measure(base, "small", 1000, 1000)
        big = measure(base, "big", out_mb * 1_000_000, log_mb * 1_000_000)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    how = "/usr/bin/time -v" if os.path.exists(TIME) else "getrusage(RUSAGE_CHILDREN)"
    print(f"peak RSS ({how}), MB: baseline = 1 KB output and log")
    print(
        f"  run + fetch, {big['out']:6.0f} MB output : {big['run']:7.1f}   "
        f"baseline {small['run']:6.1f}   ratio {big['run'] / small['run']:5.2f}"
    )
    print(
        f"  logs --lines 0, {big['log']:4.0f} MB log : {big['logs']:7.1f}   "
        f"baseline {small['logs']:6.1f}   ratio {big['logs'] / small['logs']:5.2f}"
    )
    print(
        f"peak disk of the project during the run: {big['disk']:.0f} MB (output "
        f"{big['out']:.0f} MB + log {big['log']:.0f} MB, on the host, in its archive, home)"
    )


if __name__ == "__main__":
    main()
