"""Issue 11 part 2's building blocks: `maestro_host:` in the config, cloudsend shipped to
the maestro (its wheel, a venv, content-keyed, resumable), and the run key installed on and
removed from the workers' authorized_keys. Real sshd hosts (tests/sshd_harness.py)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from cloudsend.config import load_config
from cloudsend.errors import ConfigError

# -- (a) config: maestro_host -----------------------------------------------------------------


def _config_file(folder: Path, text: str) -> Path:
    (folder / "id_test").write_text("not really a key\n")
    (folder / "id_test").chmod(0o600)
    path = folder / "c.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


SSH_HEAD = """
    project: demo
    provider: ssh
    hosts: [{address: worker1, key: id_test}]
"""


def _error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value) + "\nhint: " + str(info.value.hint)


def test_maestro_remote_with_maestro_host_is_accepted(tmp_path: Path) -> None:
    path = _config_file(
        tmp_path,
        SSH_HEAD
        + "    maestro: remote\n"
        + "    maestro_host: {address: ' m1 ', port: 2222, user: me, key: id_test, root: ~/m/}\n",
    )
    config = load_config(path)
    entry = config.ssh.maestro_host
    assert config.maestro == "remote" and entry is not None
    assert (entry.address, entry.port, entry.user, entry.root) == ("m1", 2222, "me", "~/m")
    assert entry.key == tmp_path / "id_test"  # resolved against the config's folder


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        # remote without the machine
        ("maestro: remote\n", "c.yaml:4: maestro: remote needs a maestro_host:"),
        # the machine without remote
        ("maestro_host: {address: m1}\n", "c.yaml:4: maestro_host: maestro_host is only used "
         "with maestro: remote"),
        # the same checks as a hosts: entry
        ("maestro: remote\nmaestro_host: {address: m1, key: nokey}\n",
         "c.yaml:5: maestro_host.key: key 'nokey' not found"),
        ("maestro: remote\nmaestro_host: {address: m1, port: 0}\n",
         "c.yaml:5: maestro_host.port: expected an integer from 1 to 65535, got 0"),
        ("maestro: remote\nmaestro_host: {address: '  '}\n",
         "c.yaml:5: maestro_host.address: expected a host name or IP address"),
        ("maestro: remote\nmaestro_host: {port: 22}\n",
         "c.yaml:5: maestro_host.address: is required"),
        ("maestro: remote\nmaestro_host: {address: m1, cpus: 2}\n",
         "c.yaml:5: maestro_host.cpus: unknown key 'cpus' here"),
        ("maestro: remote\nmaestro_host: {address: m1, root: /}\n",
         "c.yaml:5: maestro_host.root: '/' is the root folder"),
    ],
)
def test_maestro_host_checks(tmp_path: Path, extra: str, expected: str) -> None:
    path = _config_file(tmp_path, SSH_HEAD + textwrap.indent(extra, "    "))
    assert expected in _error(path)


def test_maestro_remote_is_refused_off_the_ssh_provider(tmp_path: Path) -> None:
    path = _config_file(tmp_path, "project: demo\nmaestro: remote\nmaestro_host: {address: m}\n")
    message = _error(path)
    assert "maestro: remote is not supported yet with provider: local" in message
    assert "Traceback" not in message
