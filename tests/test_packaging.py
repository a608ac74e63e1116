"""The built wheel carries the templates and the agent, and runs a job from a fresh venv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out)],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    return next(out.glob("cloudsend-*.whl"))


def test_wheel_contents(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "cloudsend/agent/agent.py" in names
    assert "cloudsend/agent/protocol.py" in names  # uploaded beside agent.py
    assert any(n.startswith("cloudsend/templates/") and n.endswith(".j2") for n in names)
    assert any(n.endswith("entry_points.txt") for n in names)


def test_wheel_runs_a_job_in_a_fresh_venv(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    # System site-packages provide the dependencies (no download); the wheel itself is installed
    # into the venv, whose site-packages come first, and we check that copy is the one used.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    # a PYTHONPATH naming a checkout (as a second suite run from a worktree sets) would win
    # over the venv: the wheel's copy must be the one tested
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, env=env
    )
    where = subprocess.run(
        [
            str(py),
            "-c",
            "import cloudsend.bootstrap as b, cloudsend; print(cloudsend.__file__);"
            " print(b.template_dir())",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env=env,
    ).stdout.split()
    assert all(str(venv) in w for w in where), where
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "cloudsend.yaml").write_text(
        "environments:\n  - name: e\n    command: echo ready\n"
        "jobs:\n  - run_command: echo from-wheel > o.txt\n    output_file: o.txt\n"
    )
    try:
        proc = subprocess.run(
            [str(venv / "bin" / "cloudsend"), "run", "--json"],
            cwd=proj,
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        out = next(Path(doc["results_dir"]).glob("*/o.txt"))
        assert out.read_text().strip() == "from-wheel"
    finally:
        subprocess.run(
            [str(venv / "bin" / "cloudsend"), "down"], cwd=proj, capture_output=True, env=env
        )
