"""Whom cloudsend trusts over SSH, against real sshd hosts (tests/sshd_harness): the user's own
known_hosts files (as OpenSSH reads them, from a home dir made per test, never the machine's
~/.ssh), host_key_policy tofu|strict, the first-contact fingerprint, and private key modes."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudsend.errors import ProvisionError, TransportError
from cloudsend.transport.host_trust import HostKeyUnknown
from cloudsend.transport.known_hosts import HostKeyChanged
from cloudsend.transport.ssh import SshTransport
from cloudsend.transport.user_known_hosts import SshFiles, _names_host
from tests.conftest import Project
from tests.ssh_helpers import ledger_ids, ssh_config
from tests.sshd_harness import SSH_KEYGEN, SshdHost


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """The local user's home for the test: an empty ~/.ssh."""
    path = tmp_path / "home"
    (path / ".ssh").mkdir(parents=True, mode=0o700)
    return path


@pytest.fixture
def pins(tmp_path: Path) -> Path:
    return tmp_path / "state" / "known_hosts"  # the project's file


@pytest.fixture
def connect(pins: Path, home: Path) -> Iterator[Callable[..., SshTransport]]:
    """connect(host, **target_overrides) -> SshTransport as provider ssh makes it."""
    opened: list[SshTransport] = []

    def make(host: SshdHost, **overrides: Any) -> SshTransport:
        overrides = {"user_known_hosts": True, "home": home, **overrides}
        key = overrides.pop("key", host.key)
        transport = SshTransport(dataclasses.replace(host.target(pins, **overrides), key=key))
        opened.append(transport)
        return transport

    yield make
    for transport in opened:
        transport.close()


def host_line(host: SshdHost, pub: Path | None = None) -> str:
    """A known_hosts line naming the host, with its key (or the key in `pub`)."""
    kind, blob = (pub or Path(f"{host.host_key}.pub")).read_text().split()[:2]
    return f"[{host.address}]:{host.port} {kind} {blob}\n"


def other_key(tmp_path: Path) -> Path:
    """Another ed25519 public key (what an impostor would offer, or a stale entry)."""
    key = tmp_path / "other_ed25519"
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return Path(f"{key}.pub")


def openssh_fingerprint(host: SshdHost) -> str:
    """`ssh-ed25519 SHA256:...` as OpenSSH's own ssh-keygen -l computes it."""
    out = subprocess.run(
        [SSH_KEYGEN, "-l", "-f", f"{host.host_key}.pub"], capture_output=True, text=True, check=True
    ).stdout.split()  # 256 SHA256:... comment (ED25519)
    return f"ssh-{out[-1].strip('()').lower()} {out[1]}"


def pinned_names(pins: Path) -> list[str]:
    return [line.split()[0] for line in pins.read_text().splitlines()] if pins.exists() else []


# -- the user's known_hosts files -------------------------------------------------------------


def test_user_known_hosts_with_another_key_refuses_before_anything_runs(
    sshd_host: SshdHost, connect: Callable, home: Path, pins: Path, tmp_path: Path
) -> None:
    user_file = home / ".ssh" / "known_hosts"
    user_file.write_text("# my hosts\n" + host_line(sshd_host, other_key(tmp_path)))
    logins = sshd_host.accepted_logins()
    side_effect = tmp_path / "side-effect"
    with pytest.raises(HostKeyChanged) as info:
        connect(sshd_host).run(f"touch {side_effect}")
    message = str(info.value)
    assert f"does not match {user_file} line 2" in message
    assert openssh_fingerprint(sshd_host) in message  # what it offered
    assert f"ssh-keygen -R '[127.0.0.1]:{sshd_host.port}' -f {user_file}" in message
    assert not side_effect.exists()
    assert sshd_host.accepted_logins() == logins  # refused before authentication
    assert pinned_names(pins) == []  # nothing pinned


def test_hashed_user_entry_with_the_right_key_connects_and_pins_quietly(
    sshd_host: SshdHost, connect: Callable, home: Path, pins: Path
) -> None:
    user_file = home / ".ssh" / "known_hosts2"  # OpenSSH's second default file
    user_file.write_text(host_line(sshd_host))
    subprocess.run([SSH_KEYGEN, "-q", "-H", "-f", str(user_file)], check=True, capture_output=True)
    assert user_file.read_text().startswith("|1|")  # hashed by OpenSSH itself
    transport = connect(sshd_host, host_key_policy="strict")  # known: strict lets it in
    assert transport.run("echo hi").stdout == "hi\n"
    assert transport.first_contact == ""  # known already: no first-contact notice
    assert pinned_names(pins) == [f"[127.0.0.1]:{sshd_host.port}"]


def test_unknown_host_tofu_pins_and_reports_the_sha256_fingerprint(
    sshd_host: SshdHost, connect: Callable, pins: Path
) -> None:
    transport = connect(sshd_host)
    transport.run("true")
    assert transport.first_contact == openssh_fingerprint(sshd_host)
    again = connect(sshd_host)
    again.run("true")
    assert again.first_contact == ""  # pinned now: not a first contact any more


def test_strict_refuses_an_unknown_host_with_its_fingerprint_and_the_fix(
    sshd_host: SshdHost, connect: Callable, home: Path, pins: Path
) -> None:
    logins = sshd_host.accepted_logins()
    with pytest.raises(HostKeyUnknown) as info:
        connect(sshd_host, host_key_policy="strict").run("true")
    message = str(info.value)
    assert openssh_fingerprint(sshd_host) in message
    assert f"ssh-keyscan -p {sshd_host.port} 127.0.0.1 >> {home}/.ssh/known_hosts" in message
    assert sshd_host.accepted_logins() == logins
    assert pinned_names(pins) == []
    # a key already pinned in the project is known too
    connect(sshd_host).run("true")
    connect(sshd_host, host_key_policy="strict").run("true")


def test_ssh_config_user_and_global_known_hosts_files_are_honoured(
    sshd_host: SshdHost, connect: Callable, home: Path, pins: Path, tmp_path: Path
) -> None:
    (home / ".ssh" / "known_hosts").write_text(host_line(sshd_host))  # replaced, not read
    elsewhere = home / "team" / "hosts"
    elsewhere.parent.mkdir()
    elsewhere.write_text(host_line(sshd_host, other_key(tmp_path)))
    global_file = tmp_path / "global_known_hosts"  # missing for now
    (home / ".ssh" / "config").write_text(
        "Host other\n  UserKnownHostsFile /nonexistent\n"
        "Host 127.0.0.1\n  UserKnownHostsFile ~/team/hosts\n"
        f"  GlobalKnownHostsFile {global_file}\n"
    )
    with pytest.raises(HostKeyChanged, match=f"does not match {elsewhere} line 1"):
        connect(sshd_host).run("true")
    assert pinned_names(pins) == []
    # the user file says nothing about the host now, the global one has its key: strict
    # lets it in
    elsewhere.write_text("")
    global_file.write_text(host_line(sshd_host))
    transport = connect(sshd_host, host_key_policy="strict")
    transport.run("true")
    assert transport.first_contact == ""


def test_revoked_key_is_refused(
    sshd_host: SshdHost, connect: Callable, home: Path, pins: Path
) -> None:
    (home / ".ssh" / "known_hosts").write_text(
        host_line(sshd_host) + "@revoked " + host_line(sshd_host)
    )
    with pytest.raises(HostKeyChanged, match="marked @revoked in .*known_hosts line 2"):
        connect(sshd_host).run("true")
    assert pinned_names(pins) == []


def test_a_known_rsa_key_is_negotiated_even_when_the_host_prefers_ed25519(
    sshd_factory: Callable[..., list[SshdHost]],
    connect: Callable,
    home: Path,
    pins: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host = sshd_factory(1)[0]
    rsa = host.dir / "host_rsa"
    subprocess.run([SSH_KEYGEN, "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(rsa)])
    config = host.config_path.read_text()
    monkeypatch.setattr(
        host, "_write_config", lambda: host.config_path.write_text(config + f"HostKey {rsa}\n")
    )
    host.restart()
    (home / ".ssh" / "known_hosts").write_text(host_line(host, Path(f"{rsa}.pub")))
    connect(host, host_key_policy="strict").run("true")  # judged on the RSA key it knows
    assert pins.read_text().split()[1] == "ssh-rsa"


@pytest.mark.parametrize(
    ("patterns", "name", "matches"),
    [
        ("a.lan,b.lan", "b.lan", True),
        ("*.lan", "Box.LAN", True),
        ("*.lan,!bad.lan", "bad.lan", False),
        ("[10.0.0.?]:2222", "[10.0.0.7]:2222", True),
        ("[10.0.0.7]:2222", "10.0.0.7", False),  # another port is another host
        ("10.0.0.7", "[10.0.0.7]:2222", False),
    ],
)
def test_known_hosts_patterns_match_as_openssh_does(
    patterns: str, name: str, matches: bool
) -> None:
    assert _names_host(patterns, name) is matches


def test_ssh_files_follow_include_alias_tokens_and_none(tmp_path: Path) -> None:
    home, etc = tmp_path / "home", tmp_path / "etc"
    (home / ".ssh" / "conf.d").mkdir(parents=True)
    etc.mkdir()
    (home / ".ssh" / "config").write_text("Include conf.d/*.conf\n")
    (home / ".ssh" / "conf.d" / "team.conf").write_text(
        "Host box\n  HostKeyAlias box-alias\n  UserKnownHostsFile ~/kh/%h_%p %d/second\n"
        "Host quiet\n  UserKnownHostsFile none\n  GlobalKnownHostsFile none\n"
    )
    (etc / "ssh_config").write_text("Host *\n  GlobalKnownHostsFile /srv/team_hosts\n")
    files = SshFiles(home, etc)
    box = files.lookup("box", 2222, "me")
    assert box.name == "box-alias"  # OpenSSH looks an aliased host up by its alias alone
    assert box.files == (home / "kh" / "box_2222", home / "second", Path("/srv/team_hosts"))
    assert files.lookup("quiet", 22, "me").files == ()
    plain = files.lookup("10.0.0.5", 22, "me")
    assert plain.name == "10.0.0.5"
    assert plain.files[:2] == (home / ".ssh" / "known_hosts", home / ".ssh" / "known_hosts2")
    (home / ".ssh" / "config").write_text("Match nonsense\n")
    with pytest.raises(TransportError, match=f"cannot parse your ssh config {home}/.ssh/config"):
        files.lookup("box", 22, "me")


# -- private keys -----------------------------------------------------------------------------


def test_private_key_readable_by_others_is_refused(
    sshd_host: SshdHost, connect: Callable, home: Path, tmp_path: Path
) -> None:
    key = tmp_path / "id_test"
    shutil.copy(sshd_host.key, key)
    key.chmod(0o644)
    logins = sshd_host.accepted_logins()
    with pytest.raises(TransportError) as info:
        connect(sshd_host, key=key).run("true")
    assert str(info.value) == (
        f"UNPROTECTED PRIVATE KEY FILE: {key} is accessible by others (mode 0644); "
        f"refusing to use it, as ssh does\n  hint: chmod 600 {key}"
    )
    assert sshd_host.accepted_logins() == logins
    key.chmod(0o600)
    connect(sshd_host, key=key).run("true")
    # a default key paramiko would pick up (no key given) is held to the same rule
    default = home / ".ssh" / "id_ed25519"
    shutil.copy(sshd_host.key, default)
    default.chmod(0o640)
    with pytest.raises(TransportError, match=f"UNPROTECTED PRIVATE KEY FILE: {default} "):
        connect(sshd_host, key=None).run("true")


# -- through the CLI, provider ssh ------------------------------------------------------------


def cli_config(project: Project, host: SshdHost, ledger: Path, extra: str = "") -> None:
    project.config(ssh_config([host], ledger, jobs=1, sleep=0, extra=extra))


def one_line(text: str) -> str:
    return " ".join(text.split())  # the console wraps long lines


def test_cli_first_contact_notice_then_quiet(
    sshd_host: SshdHost, project: Project, home: Path, ledger_dir: Path
) -> None:
    cli_config(project, sshd_host, ledger_dir / "ledger")
    env = {"HOME": str(home)}
    first = project.cli("run", env=env, check=True)
    assert (
        f"host 127.0.0.1: first contact, pinned {openssh_fingerprint(sshd_host)} in "
        ".cloudsend/known_hosts" in one_line(first.stdout)
    )
    again = project.cli("run", env=env, check=True)
    assert "first contact" not in again.stdout


def test_cli_refuses_a_host_the_users_known_hosts_contradicts(
    sshd_host: SshdHost, project: Project, home: Path, ledger_dir: Path, tmp_path: Path
) -> None:
    ledger = ledger_dir / "ledger"
    cli_config(project, sshd_host, ledger)
    user_file = home / ".ssh" / "known_hosts"
    user_file.write_text(host_line(sshd_host, other_key(tmp_path)))
    proc = project.cli("run", env={"HOME": str(home)})
    assert proc.returncode == ProvisionError.exit_code, proc.stderr
    assert f"does not match {user_file} line 1" in one_line(proc.stderr)
    assert "Traceback" not in proc.stderr
    assert ledger_ids(ledger) == []  # no job ran
    assert pinned_names(project.path / ".cloudsend" / "known_hosts") == []


def test_cli_strict_refuses_an_unknown_host_until_keyscanned(
    sshd_host: SshdHost, project: Project, home: Path, ledger_dir: Path
) -> None:
    ledger = ledger_dir / "ledger"
    cli_config(project, sshd_host, ledger, extra="host_key_policy: strict")
    env = {"HOME": str(home)}
    proc = project.cli("run", env=env)
    assert proc.returncode == ProvisionError.exit_code, proc.stderr
    assert "  3  provision error" in project.cli("--help").stdout  # the code users look up
    stderr = one_line(proc.stderr)
    assert "host_key_policy: strict" in stderr and openssh_fingerprint(sshd_host) in stderr
    assert "Traceback" not in proc.stderr
    assert ledger_ids(ledger) == []
    # what the hint says, with OpenSSH's own ssh-keyscan
    fix = re.search(r"then add it: (ssh-keyscan .*)$", proc.stderr, re.MULTILINE)
    assert fix is not None, proc.stderr
    subprocess.run(fix.group(1), shell=True, check=True, capture_output=True, env=env)
    done = project.cli("run", env=env, check=True)
    assert "first contact" not in done.stdout
    assert len(ledger_ids(ledger)) == 1


def test_cli_private_key_readable_by_others(
    sshd_host: SshdHost, project: Project, home: Path, ledger_dir: Path, tmp_path: Path
) -> None:
    key = tmp_path / "id_loose"
    shutil.copy(sshd_host.key, key)
    key.chmod(0o644)
    sshd_host.key = key
    ledger = ledger_dir / "ledger"
    cli_config(project, sshd_host, ledger)
    proc = project.cli("run", env={"HOME": str(home)})
    assert proc.returncode != 0
    assert f"UNPROTECTED PRIVATE KEY FILE: {key}" in one_line(proc.stderr)
    assert f"hint: chmod 600 {key}" in one_line(proc.stderr)
    assert "Traceback" not in proc.stderr
    assert ledger_ids(ledger) == []
