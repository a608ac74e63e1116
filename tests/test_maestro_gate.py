"""`maestro: remote` validates and previews, but until the watcher runs on the maestro `run`
and `up` refuse it: running the watcher here instead, or creating a maestro that sits idle and
bills, would not be what the user asked for (issue 11 in progress)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CONFIG = """
project: demo
provider: ssh
hosts: [{address: 127.0.0.1, port: 1, key: id_test}]
maestro: remote
maestro_host: {address: 127.0.0.1, port: 1, key: id_test}
jobs:
  - run_command: echo hi
"""


@pytest.mark.parametrize("command", ["run", "up"])
def test_run_and_up_refuse_a_remote_maestro_before_touching_a_host(
    tmp_path: Path, command: str
) -> None:
    (tmp_path / "id_test").write_text("not really a key\n")
    (tmp_path / "id_test").chmod(0o600)
    (tmp_path / "cloudsend.yaml").write_text(textwrap.dedent(CONFIG).lstrip())
    ok = subprocess.run(
        [sys.executable, "-m", "cloudsend", "validate", "cloudsend.yaml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert ok.returncode == 0, ok.stderr  # the config itself is fine
    proc = subprocess.run(
        [sys.executable, "-m", "cloudsend", command, "cloudsend.yaml", "--yes"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "maestro: remote is not runnable yet" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / ".cloudsend").exists()  # no run opened, no host contacted


def test_the_api_refuses_it_too(tmp_path: Path) -> None:
    from cloudsend.api import SyncClient
    from cloudsend.config import load_config
    from cloudsend.errors import ConfigError

    (tmp_path / "id_test").write_text("not really a key\n")
    (tmp_path / "id_test").chmod(0o600)
    path = tmp_path / "cloudsend.yaml"
    path.write_text(textwrap.dedent(CONFIG).lstrip())
    client = SyncClient(load_config(path))
    try:
        with pytest.raises(ConfigError, match="not runnable yet"):
            client.start()
    finally:
        client.close()
