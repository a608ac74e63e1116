"""`maestro: remote` validates and previews everywhere; `run` goes to the maestro on ssh
(tests/test_maestro_remote.py runs it end to end) and on aws (tests/test_maestro_aws_laptop.py);
`up` alone is refused on ssh before anything is touched (on aws it makes the stack whole
and tells the maestro), and a watcher in this process (the API's `start`) is refused with a
message pointing at `cloudsend run`."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SSH = """
project: demo
provider: ssh
hosts: [{address: 127.0.0.1, port: 1, key: id_test}]
maestro: remote
maestro_host: {address: 127.0.0.1, port: 1, key: id_test}
jobs:
  - run_command: echo hi
"""

AWS = """
project: demo
provider: aws
region: us-east-1
instances: [{type: t3.small, number: 1}]
maestro: remote
jobs:
  - run_command: echo hi
"""


def _project(tmp_path: Path, text: str) -> None:
    (tmp_path / "id_test").write_text("not really a key\n")
    (tmp_path / "id_test").chmod(0o600)
    (tmp_path / "cloudsend.yaml").write_text(textwrap.dedent(text).lstrip())


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloudsend", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )


def test_ssh_up_refuses_a_remote_maestro_before_touching_anything(tmp_path: Path) -> None:
    # (aws: `up` makes the stack whole and tells the maestro: tests/test_maestro_aws_laptop.py)
    _project(tmp_path, SSH)
    ok = _cli(tmp_path, "validate", "cloudsend.yaml")
    assert ok.returncode == 0, ok.stderr  # the config itself is fine
    proc = _cli(tmp_path, "up", "cloudsend.yaml", "--yes")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "the watcher runs on the maestro" in proc.stderr
    assert "cloudsend run CONFIG" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / ".cloudsend").exists()  # no run opened, no stack touched


def test_the_gate_lets_aws_and_ssh_through(tmp_path: Path) -> None:
    from cloudsend.config import load_config
    from cloudsend.pipeline.session import refuse_remote_maestro

    for text in (AWS, SSH):  # `run` goes on to the maestro: no refusal
        _project(tmp_path, text)
        refuse_remote_maestro(load_config(tmp_path / "cloudsend.yaml"))


def test_ssh_run_is_accepted_and_goes_to_the_hosts(tmp_path: Path) -> None:
    _project(tmp_path, SSH)
    proc = _cli(tmp_path, "run", "cloudsend.yaml", "--yes")
    assert "not runnable yet" not in proc.stderr  # the gate is lifted on ssh
    assert proc.returncode not in (0, 2), proc.stdout + proc.stderr  # port 1: nobody answers
    assert "could be used" in proc.stderr and "Traceback" not in proc.stderr


def test_the_api_refuses_a_watcher_here(tmp_path: Path) -> None:
    from cloudsend.api import SyncClient
    from cloudsend.config import load_config
    from cloudsend.errors import ConfigError

    for text, message in ((AWS, "the watcher runs on the maestro"),
                          (SSH, "the watcher runs on the maestro")):
        _project(tmp_path, text)
        client = SyncClient(load_config(tmp_path / "cloudsend.yaml"))
        try:
            with pytest.raises(ConfigError, match=message):
                client.start()
        finally:
            client.close()
