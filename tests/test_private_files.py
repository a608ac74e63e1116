"""cloudsend's own state is private to the user whatever the umask (a shared machine)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cloudsend.state import Store
from tests.conftest import Project


def test_the_state_dir_and_database_are_private_under_umask_022(project: Project) -> None:
    project.config(
        """
        project: modes
        jobs:
          - run_command: echo hi > out.txt
            output_file: out.txt
        """
    )
    old = os.umask(0o022)  # the subprocess inherits it
    try:
        proc = project.cli("run")
    finally:
        os.umask(old)
    assert proc.returncode == 0, proc.stderr
    for folder in (".cloudsend", ".cloudsend/projects", ".cloudsend/projects/modes"):
        assert stat.S_IMODE((project.path / folder).stat().st_mode) == 0o700, folder
    state = project.state_dir()
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        if (state / name).exists():
            assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name


def test_an_existing_state_db_with_loose_modes_is_tightened(tmp_path: Path) -> None:
    state = tmp_path / ".cloudsend"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    db = state / "state.db"
    old = os.umask(0o022)
    try:
        Store(db).close()
        db.chmod(0o644)
        with Store(db) as store:
            assert store.latest_run() is None
    finally:
        os.umask(old)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
