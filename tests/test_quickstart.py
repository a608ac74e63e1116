"""The README's first command: the quickstart config, run for real on the local provider
(its venv comes from PyPI, as on a fresh machine)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_quickstart_runs_and_brings_every_result_home(tmp_path: Path) -> None:
    work = tmp_path / "examples"
    shutil.copytree(EXAMPLES, work, ignore=shutil.ignore_patterns("results", ".cloudsend"))
    proc = subprocess.run(
        [sys.executable, "-m", "cloudsend", "run", "--json", "quickstart.yaml"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["counts"] == {"DONE": 5} and doc["envs_submitted"] == 2
    results = Path(doc["results_dir"])
    assert results.parent == work / "results" / "quickstart"
    reports = sorted(results.glob("*/report.txt"))
    lines = sorted(results.glob("*/lines.txt"))
    assert len(reports) == 3 and len(lines) == 2
    rows = (work / "quickstart" / "numbers.csv").read_text().splitlines()
    for report in reports:
        assert "Sample statistics" in report.read_text()  # the quoted argument arrived whole
    for out in lines:
        assert out.read_text().strip() == str(len(rows))
        assert (out.parent / "checksum.txt").read_text().split()[1] == "numbers.csv"
    # the table the README promises, when not --json
    again = subprocess.run(
        [sys.executable, "-m", "cloudsend", "run", "quickstart.yaml"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("DONE") >= 5 and "sent 0 file(s)" in again.stdout
