"""Shared fixtures: a project folder with a config, the CLI as users run it, and cleanup of
every agent daemon a test started (no process may outlive its test)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["tests.sshd_harness", "tests.moto_harness"]


def _kill_agents(root: Path) -> None:
    for agent in root.rglob("agent.py"):
        if (agent.parent / "agent.json").exists():
            subprocess.run(
                [sys.executable, str(agent), "--root", str(agent.parent), "stop", "--kill-jobs"],
                capture_output=True,
                timeout=30,
            )
    for pid_file in root.rglob("agent.pid"):
        try:
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
        except (ValueError, OSError, IndexError):
            pass


class Project:
    """A folder holding a cloudsend config and its files."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, rel: str, text: str, mode: int | None = None) -> Path:
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text))
        if mode is not None:
            target.chmod(mode)
        return target

    def config(self, text: str, name: str = "cloudsend.yaml") -> Path:
        return self.write(name, text)

    def cli(
        self,
        *args: str,
        timeout: float = 240,
        check: bool = False,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "cloudsend", *args],
            cwd=self.path,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"cloudsend {' '.join(args)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "cloudsend", *args],
            cwd=self.path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def state_dir(self) -> Path:
        """The project's own state folder (.cloudsend/projects/<project>/): the only one."""
        found = sorted((self.path / ".cloudsend" / "projects").glob("*"))
        assert len(found) == 1, f"expected one project's state, found {found}"
        return found[0]

    def results(self) -> Path:
        runs = sorted(self.path.glob("results/*/run-*"), key=lambda p: int(p.name[4:]))
        assert runs, "no results dir"
        return runs[-1]


@pytest.fixture(autouse=True, scope="session")
def _own_working_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every test runs in a folder of the session's own, never in the directory the suite was
    started from: that one may be removed while the suite runs (and what a test leaves in the
    working directory must not land in the user's)."""
    try:
        started_in: str | None = os.getcwd()
    except FileNotFoundError:
        started_in = None
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    if started_in is not None and os.path.isdir(started_in):
        os.chdir(started_in)


@pytest.fixture(autouse=True)
def _no_stray_agents(tmp_path: Path) -> Iterator[None]:
    """Whatever a test started under its tmp dir is stopped when it ends."""
    yield
    _kill_agents(tmp_path)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    proj = Project(tmp_path / "proj")
    proj.path.mkdir()
    return proj


@pytest.fixture
def ledger_dir() -> Iterator[Path]:
    """A dir every test user may append to (pytest's tmp dirs are root-only): jobs run as
    the ssh hosts' users record their executions there."""
    path = Path(tempfile.mkdtemp(prefix="cloudsend-ledger-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
