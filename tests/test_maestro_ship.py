"""Issue 11 part 2's building blocks: `maestro_host:` in the config, cloudsend shipped to
the maestro (its wheel, a venv, content-keyed, resumable), and the run key installed on and
removed from the workers' authorized_keys. Real sshd hosts (tests/sshd_harness.py)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cloudsend.config import load_config
from cloudsend.errors import CloudsendError, ConfigError, ProvisionError
from cloudsend.maestro import runkey
from cloudsend.maestro import ship as shipping

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


def test_maestro_remote_is_refused_on_the_local_provider(tmp_path: Path) -> None:
    path = _config_file(tmp_path, "project: demo\nmaestro: remote\nmaestro_host: {address: m}\n")
    message = _error(path)
    assert "maestro: remote is not supported with provider: local" in message
    assert "Traceback" not in message


# -- (c) the run key: pure edits ----------------------------------------------------------------

TAG = "cloudsend-run:demo:r1"
OURS = f"no-pty ssh-ed25519 AAAAours {TAG}"
USER = "ssh-ed25519 AAAAuser me@laptop"
OTHER_RUN = "no-pty ssh-ed25519 AAAAother cloudsend-run:demo:r2"
OTHER_PROJECT = "no-pty ssh-ed25519 AAAAp cloudsend-run:demo2:r1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", f"{OURS}\n"),  # empty or missing file
        (f"{USER}\n", f"{USER}\n{OURS}\n"),
        (f"{USER}", f"{USER}\n{OURS}\n"),  # no final newline: one is added before ours
        (f"{USER}\n{OURS}\n", f"{USER}\n{OURS}\n"),  # already there: unchanged
        (f"{OURS}\n{USER}\n", f"{OURS}\n{USER}\n"),  # there, elsewhere: unchanged
        (f"{OURS}\n{USER}\n{OURS}\n", f"{USER}\n{OURS}\n"),  # twice: once
        (f"from=\"10.0.0.1\" ssh-ed25519 AAAAold {TAG}\n{USER}\n", f"{USER}\n{OURS}\n"),
        (f"# {TAG}\n{USER}\r\n", f"# {TAG}\n{USER}\r\n{OURS}\n"),  # comments, CRLF kept
        (f"{OTHER_RUN}\n", f"{OTHER_RUN}\n{OURS}\n"),  # another run's key is not ours
    ],
)
def test_with_key(text: str, expected: str) -> None:
    assert runkey.with_key(text, OURS, TAG) == expected


@pytest.mark.parametrize(
    ("text", "tag", "expected"),
    [
        (f"{USER}\n{OURS}\n", TAG, f"{USER}\n"),
        (f"{OURS}\n{USER}", TAG, f"{USER}"),  # the user's last line kept as it was
        (f"{USER}\n\n# x\n{OTHER_RUN}\n", TAG, f"{USER}\n\n# x\n{OTHER_RUN}\n"),  # not ours
        (f"{OURS}\n{OTHER_RUN}\n{OTHER_PROJECT}\n{USER}\n", runkey.run_tag("demo"),
         f"{OTHER_PROJECT}\n{USER}\n"),  # every run of the project, not demo2's
        (f"ssh-ed25519 AAAA x{TAG}\n", TAG, f"ssh-ed25519 AAAA x{TAG}\n"),  # exact field only
        ("", TAG, ""),
    ],
)
def test_without_key(text: str, tag: str, expected: str) -> None:
    assert runkey.without_key(text, tag) == expected


@pytest.mark.parametrize(
    ("sources", "expected"),
    [
        ((), None),
        (("127.0.0.1",), 'from="127.0.0.1"'),
        (("10.0.0.0/24", "::1"), 'from="10.0.0.0/24,::1"'),
    ],
)
def test_from_option(sources: tuple[str, ...], expected: str | None) -> None:
    assert runkey.from_option(sources) == expected


@pytest.mark.parametrize("bad", ['1.2.3.4" ssh-rsa x', "host.example", "1.2.3.4,5.6.7.8", ""])
def test_from_option_refuses_what_is_not_an_address(bad: str) -> None:
    with pytest.raises(ValueError):
        runkey.from_option([bad])


def test_run_key_file_is_0600_and_made_once(tmp_path: Path) -> None:
    key = runkey.make_run_key(tmp_path / "keys", "demo", "r1")
    assert key.private.stat().st_mode & 0o777 == 0o600
    assert key.public.startswith("ssh-ed25519 ") and key.tag == TAG
    assert runkey.make_run_key(tmp_path / "keys", "demo", "r1") == key  # loaded, not remade
    line = runkey.authorized_line(key, ["127.0.0.1"])
    assert line.startswith('from="127.0.0.1",no-agent-forwarding,') and line.endswith(TAG)
    assert "PRIVATE" not in line and key.private.read_text() not in line


# -- (c) the run key on real sshd workers ---------------------------------------------------------

USER_LINES = "# the user's own lines, kept byte for byte\nssh-ed25519 AAAAunrelated someone@else\n"


def test_run_key_installed_works_from_the_maestro_only_and_is_removed(
    sshd_factory: Any, tmp_path: Path
) -> None:
    from cloudsend.transport.ssh import SshTransport

    workers = sshd_factory(3)
    known = tmp_path / "known_hosts"
    for host in workers:  # the user's key, plus lines cloudsend must leave alone
        host.authorized_keys.write_text(host.authorized_keys.read_text() + USER_LINES)
    before = {host.name: host.authorized_keys.read_text() for host in workers}
    key = runkey.make_run_key(tmp_path / "keys", "demo", "r1")
    sources = {"h0": ["127.0.0.1"], "h1": ["127.0.0.1"], "h2": ["10.9.9.9"]}
    users = {host.name: SshTransport(host.target(known)) for host in workers}
    for host in workers:
        path = str(host.authorized_keys)
        assert runkey.install(users[host.name], key, sources[host.name], path=path)
        # twice: added once
        assert not runkey.install(users[host.name], key, sources[host.name], path=path)
        text = host.authorized_keys.read_text()
        assert text.count(key.public) == 1 and text.startswith(before[host.name])
        assert text.endswith(runkey.authorized_line(key, sources[host.name]) + "\n")

    def with_run_key(host: Any) -> SshTransport:
        return SshTransport(replace(host.target(known), key=key.private))

    for host in workers[:2]:  # from="127.0.0.1": the maestro (here, this machine) gets in
        with with_run_key(host) as transport:
            assert transport.run("echo in").stdout.strip().endswith("in")
    with with_run_key(workers[2]) as transport, pytest.raises(CloudsendError):
        transport.run("echo in")  # from another address only: refused by sshd
    assert "not from a permitted host" in workers[2].log.read_text()

    removed = [
        runkey.remove(users[h.name], runkey.run_tag("demo"), path=str(h.authorized_keys))
        for h in workers
    ]
    assert removed == [True, True, True]
    for host in workers:  # gone from every worker; every other line as it was
        assert host.authorized_keys.read_text() == before[host.name]
        assert not runkey.remove(users[host.name], key.tag, path=str(host.authorized_keys))
    with with_run_key(workers[0]) as transport, pytest.raises(CloudsendError):
        transport.run("echo in")
    for transport in users.values():
        transport.close()


def test_run_key_into_a_missing_authorized_keys(sshd_host: Any, tmp_path: Path) -> None:
    """A user without ~/.ssh: the folder and file are made (0700/0600)."""
    from cloudsend.transport.ssh import SshTransport

    key = runkey.make_run_key(tmp_path / "keys", "demo", "r1")
    target = sshd_host.root / "fresh" / ".ssh" / "authorized_keys"
    with SshTransport(sshd_host.target(tmp_path / "kh")) as transport:
        assert runkey.install(transport, key, path=str(target))
        assert target.read_text() == runkey.authorized_line(key) + "\n"
        assert target.stat().st_mode & 0o777 == 0o600
        assert target.parent.stat().st_mode & 0o777 == 0o700
        assert runkey.remove(transport, key.tag, path=str(target))
    assert target.read_text() == ""


# -- (b) shipping cloudsend to the maestro ---------------------------------------------------------

# what a ship does, for the report (pytest -s shows it)
FIGURES: list[str] = []


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> shipping.Wheel:
    cache = tmp_path_factory.mktemp("wheels")
    built = shipping.build_wheel(cache)
    again = shipping.build_wheel(cache)  # cached by the source tree's content
    assert again == built and built.version == cloudsend_version()
    return built


def cloudsend_version() -> str:
    import cloudsend

    return cloudsend.__version__


def _venv_runs_cloudsend(transport: Any, report: shipping.ShipReport) -> None:
    """The maestro's venv runs the shipped cloudsend (not this checkout: no PYTHONPATH over
    ssh), with its dependencies importable."""
    res = transport.run(
        f"{report.cloudsend} --version && {report.venv}/bin/python -c "
        "'import cloudsend, fabric, pydantic; print(cloudsend.__file__)'"
    )
    assert f"version {cloudsend_version()}" in res.stdout
    assert f"{report.venv}/lib/" in res.stdout.splitlines()[-1]


@pytest.mark.slow
def test_ship_installs_once_then_is_a_one_round_trip_no_op(
    sshd_host: Any, tmp_path: Path, wheel: shipping.Wheel
) -> None:
    from cloudsend.transport.ssh import SshTransport

    root = str(sshd_host.root / "maestro")
    with SshTransport(sshd_host.target(tmp_path / "kh")) as transport:
        first = shipping.ship(transport, wheel, root)
        assert first.installed and first.uploaded == wheel.path.stat().st_size
        assert first.venv == f"{root}/cloudsend/{wheel.key}/venv"
        _venv_runs_cloudsend(transport, first)
        calls, sent = transport.calls, transport.bytes_sent
        second = shipping.ship(transport, wheel, root)
        assert not second.installed and second.uploaded == 0 and second.round_trips == 1
        assert (transport.calls - calls, transport.bytes_sent - sent) == (1, 0)
        assert second.venv == first.venv
    FIGURES.append(
        f"first ship {first.seconds:.1f} s, {first.uploaded} bytes in {first.round_trips} "
        f"round trips; second ship {second.seconds * 1000:.0f} ms, 0 bytes, 1 round trip"
    )
    print("\n" + FIGURES[-1])


# a ship run in its own process, to be killed
_SHIP = """
import json, sys
from pathlib import Path
from cloudsend.maestro import ship
from cloudsend.transport.ssh import SshTarget, SshTransport
a = json.loads(sys.argv[1])
target = SshTarget("maestro", "127.0.0.1", port=a["port"], user="root", key=Path(a["key"]),
                   known_hosts=Path(a["known"]))
wheel = ship.Wheel(Path(a["wheel"]), a["version"], a["sha"])
ship.ship(SshTransport(target), wheel, a["root"])
"""


def _pids_using(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if text.encode() in fh.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


@pytest.mark.slow
@pytest.mark.parametrize("maestro_too", [True, False], ids=["install-killed", "laptop-killed"])
def test_a_ship_killed_midway_is_completed_by_the_next(
    sshd_host: Any, tmp_path: Path, wheel: shipping.Wheel, maestro_too: bool
) -> None:
    """The laptop's ship is SIGKILLed mid-install; with maestro_too the install on the maestro
    dies as well (reboot, OOM) and the wheel's transfer is left half done; without, the
    install goes on there and the next ship waits for it (the maestro's lock)."""
    from cloudsend.transport.ssh import SshTransport

    root = str(sshd_host.root / "maestro")
    folder = Path(root) / "cloudsend" / wheel.key
    args = {
        "port": sshd_host.port, "key": str(sshd_host.key), "known": str(tmp_path / "kh"),
        "wheel": str(wheel.path), "version": wheel.version, "sha": wheel.sha256, "root": root,
    }
    env = {**os.environ, "PYTHONPATH": str(Path(shipping.__file__).parents[2])}
    proc = subprocess.Popen(
        [sys.executable, "-c", _SHIP, json.dumps(args)], env=env, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while not (folder / "venv" / "bin" / "python").exists():  # the install has begun
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the laptop's ship dies
    proc.wait()
    assert not (folder / "done").exists() and (folder / "venv").exists()
    if maestro_too:
        for pid in _pids_using(str(folder)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # ...and, as a transfer killed midway leaves it: no wheel, half of it under a temp name
        (folder / wheel.path.name).unlink()
        half = wheel.path.read_bytes()[: wheel.path.stat().st_size // 2]
        (folder / f"{wheel.path.name}.part-dead").write_bytes(half)
    else:
        assert _pids_using(str(folder)), "the install should still be running on the maestro"

    with SshTransport(sshd_host.target(tmp_path / "kh")) as transport:
        resumed = shipping.ship(transport, wheel, root)
        expected = wheel.path.stat().st_size if maestro_too else 0  # the wheel was there
        assert resumed.installed and resumed.uploaded == expected
        _venv_runs_cloudsend(transport, resumed)
        assert not list(folder.glob("*.part-*"))  # the dead transfer's temp is gone
        assert not shipping.ship(transport, wheel, root).installed
    FIGURES.append(f"resumed ship ({'install' if maestro_too else 'laptop'} killed) "
                   f"{resumed.seconds:.1f} s, {resumed.uploaded} bytes")
    print("\n" + FIGURES[-1])


# -- (b) the config and the files jobs need ------------------------------------------------------

CONFIGS = Path(__file__).parent / "configs"


def _remote_project(tmp_path: Path, user_key: Path) -> Path:
    project = tmp_path / "laptop"
    for name in ("scripts", "data", "env"):
        shutil.copytree(CONFIGS / name, project / name)
    outside = tmp_path / "elsewhere" / "big.csv"
    outside.parent.mkdir()
    outside.write_text("x,y\n1,2\n")
    (project / ".cloudsend").mkdir()
    (project / ".cloudsend" / "known_hosts").write_text("[127.0.0.1]:2222 ssh-ed25519 AAAAx\n")
    text = (CONFIGS / "quickstart.yaml").read_text()
    text = text.replace("provider: local", "provider: ssh\nmaestro: remote")
    text = text.replace("instances:\n  - cpus: 4\n    number: 1\n", "")
    text += (
        f"hosts: [{{address: 127.0.0.1, port: 2222, key: {user_key}}}]\n"
        f"maestro_host: {{address: 127.0.0.1, key: {user_key}}}\n"
    )
    text = text.replace("input_files: data/input.csv", f"input_files: [data/input.csv, {outside}]")
    (project / "c.yaml").write_text(text)
    return project / "c.yaml"


def test_bundle_config_loads_on_the_maestro_without_the_users_key(
    sshd_host: Any, tmp_path: Path
) -> None:
    from cloudsend.maestro import bundle as bundling
    from cloudsend.transport.ssh import SshTransport

    user_key = sshd_host.key
    config = load_config(_remote_project(tmp_path, user_key))
    plan = bundling.plan_bundle(config)
    key = runkey.make_run_key(tmp_path / "keys", "quickstart", "r1")
    remote = str(sshd_host.root / "runs" / "quickstart")
    with SshTransport(sshd_host.target(tmp_path / "kh")) as transport:
        sent = bundling.send_bundle(transport, plan, remote, key.private)
        assert sent.files == len(plan.files) + 2  # + the config and the run key
        again = bundling.send_bundle(transport, plan, remote, key.private)
        assert (again.files, again.bytes, again.round_trips) == (0, 0, 1)
    FIGURES.append(f"bundle: {sent.files} files, {sent.bytes} bytes; re-send 1 round trip")
    print("\n" + FIGURES[-1])

    shipped = load_config(Path(remote) / "cloudsend.yaml")  # what the maestro will load
    assert shipped.maestro == "local" and shipped.ssh.maestro_host is None
    assert shipped.ssh.hosts[0].key == Path(remote) / ".cloudsend" / "run_key"
    assert (Path(remote) / ".cloudsend" / "run_key").stat().st_mode & 0o777 == 0o600
    assert (Path(remote) / ".cloudsend").stat().st_mode & 0o777 == 0o700
    assert (Path(remote) / ".cloudsend" / "known_hosts").read_text().startswith("[127.0.0.1]")
    argv = shipped.script_argv(shipped.jobs[0])
    assert argv is not None and argv[1:] == ["--epochs", "3", "arg two"]
    assert Path(argv[0]).read_bytes() == (CONFIGS / "scripts" / "train.py").read_bytes()
    inputs = shipped.jobs[0].input_files
    assert [p.name for p in inputs] == ["input.csv", "big.csv"]  # names in the work dir kept
    assert all(p.is_file() and str(p).startswith(remote) for p in inputs)
    assert shipped.environments[0].command == f"{remote}/env/setup.sh"
    assert shipped.environments[1].command == 'echo "inline setup"'
    secret = user_key.read_bytes()
    for path in Path(remote).rglob("*"):  # the user's private key is nowhere on the maestro
        assert not path.is_file() or secret not in path.read_bytes()


# -- (c) `down` on the ssh provider removes the run key ------------------------------------------


def _reads_home_authorized_keys(host: Any) -> None:
    """Let this sshd also read the login user's own ~/.ssh/authorized_keys (where cloudsend
    puts the run key on a real machine), then restart it."""
    write = host._write_config

    def both() -> None:
        write()
        own = f"AuthorizedKeysFile {host.authorized_keys}"
        text = host.config_path.read_text().replace(own, own + " .ssh/authorized_keys")
        host.config_path.write_text(text)

    host._write_config = both
    host.restart()


def worker_home(host: Any) -> Path:
    """A worker whose sshd reads its login's ~/.ssh/authorized_keys, holding USER_LINES (the
    user's own lines cloudsend must keep); returns that file."""
    import pwd

    _reads_home_authorized_keys(host)
    account = pwd.getpwnam(host.user)
    ssh_dir = Path(account.pw_dir) / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(USER_LINES)
    for path in (ssh_dir, ssh_dir / "authorized_keys"):
        os.chown(path, account.pw_uid, account.pw_gid)
    return ssh_dir / "authorized_keys"


def test_down_removes_the_run_key_from_every_worker(sshd_factory: Any, tmp_path: Path) -> None:

    from cloudsend.providers.ssh import SshProvider
    from cloudsend.transport.ssh import SshTransport

    workers = [sshd_factory(1, user=f"csmaestro{i}")[0] for i in range(2)]
    before = {host.name: worker_home(host) for host in workers}
    config = load_config(
        {
            "project": "demo",
            "provider": "ssh",
            "maestro": "remote",
            "maestro_host": {"address": "127.0.0.1", "key": str(workers[0].key)},
            "hosts": [
                {"address": "127.0.0.1", "port": h.port, "user": h.user, "key": str(h.key)}
                for h in workers
            ],
        },
        base_dir=tmp_path,
    )
    provider = SshProvider(config)
    hosts = provider.up()
    key = runkey.make_run_key(tmp_path / "keys", "demo", "r1")
    for host in hosts:
        assert runkey.install(host.transport, key, ["127.0.0.1"])  # into ~/.ssh/
    for worker in workers:
        text = before[worker.name].read_text()
        assert text.startswith(USER_LINES) and text.count(key.tag) == 1
        with SshTransport(replace(worker.target(tmp_path / "kh"), key=key.private)) as t:
            assert t.run("echo in").stdout.strip().endswith("in")  # sshd reads that file
    provider.down(hosts)
    for worker in workers:  # gone from every worker's authorized_keys, the rest untouched
        assert before[worker.name].read_text() == USER_LINES
        target = replace(worker.target(tmp_path / "kh"), key=key.private)
        with SshTransport(target) as t, pytest.raises(CloudsendError):
            t.run("echo in")
    for host in hosts:
        host.transport.close()


# -- all three together: a maestro made ready, reaching the workers with the run key ------------

_REACH = """
import sys
from pathlib import Path
from cloudsend.transport.ssh import SshTarget, SshTransport
run_dir, user, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
target = SshTarget("w", "127.0.0.1", port=port, user=user,
                   key=Path(run_dir, ".cloudsend/run_key"),
                   known_hosts=Path(run_dir, ".cloudsend/known_hosts"), host_key_policy="strict")
print("reached", SshTransport(target).run("whoami").stdout.split()[-1])
"""


@pytest.mark.slow
def test_prepare_a_remote_maestro_then_down(sshd_factory: Any, tmp_path: Path) -> None:
    import pwd

    from cloudsend.maestro import remote
    from cloudsend.providers.ssh import SshProvider

    maestro = sshd_factory(1)[0]
    workers = [sshd_factory(1, user=f"csmaestro{i}")[0] for i in range(2)]
    for host in workers:
        worker_home(host)
    (tmp_path / "job.py").write_text("print('hi')\n")
    config = load_config(
        {
            "project": "demo",
            "provider": "ssh",
            "maestro": "remote",
            "maestro_host": {
                "address": "127.0.0.1", "port": maestro.port, "key": str(maestro.key),
                "root": str(maestro.root / "m"),
            },
            "hosts": [
                {"address": "127.0.0.1", "port": h.port, "user": h.user, "key": str(h.key)}
                for h in workers
            ],
            "jobs": [{"run_script": "job.py", "cpus_req": 1}],
        },
        base_dir=tmp_path,
    )
    entry = config.ssh.maestro_host
    assert entry is not None
    provider = SshProvider(config)
    hosts = provider.up()  # pins the workers' host keys in .cloudsend/known_hosts
    key_dir, cache = tmp_path / "keys", tmp_path / "wheels"
    with remote.maestro_transport(config, entry) as to_maestro:
        workers_t = [h.transport for h in hosts]
        first = remote.prepare(config, to_maestro, workers_t, key_dir=key_dir, wheel_cache=cache)
        assert first.ship.installed and len(first.keys_added) == 2
        check = to_maestro.run(f"cd {first.run_dir} && {first.venv}/bin/cloudsend validate "
                               "cloudsend.yaml")
        assert "cloudsend.yaml: ok (0 environment(s), 1 job run(s))" in check.stdout
        for worker in workers:  # the maestro reaches each worker with the run key alone
            reach = to_maestro.run(
                f"{first.venv}/bin/python -c {shlex.quote(_REACH)} {first.run_dir} "
                f"{worker.user} {worker.port}"
            )
            assert f"reached {worker.user}" in reach.stdout
        sent = to_maestro.bytes_sent
        second = remote.prepare(config, to_maestro, workers_t, key_dir=key_dir, wheel_cache=cache)
        assert not second.ship.installed and second.keys_added == ()
        assert (second.sent.files, second.sent.round_trips) == (0, 1)
        assert to_maestro.bytes_sent == sent and second.tag == first.tag
    FIGURES.append(
        f"prepare: first {first.seconds:.1f} s ({first.ship.uploaded + first.sent.bytes} bytes"
        f" to the maestro), second {second.seconds:.2f} s (0 bytes)"
    )
    print("\n" + FIGURES[-1])
    provider.down(hosts)
    for worker in workers:
        home = Path(pwd.getpwnam(worker.user).pw_dir)
        assert (home / ".ssh" / "authorized_keys").read_text() == USER_LINES


def test_a_failed_install_says_why_and_leaves_no_marker(sshd_host: Any, tmp_path: Path) -> None:
    from cloudsend.transport.ssh import SshTransport

    bogus = tmp_path / "cloudsend-0.1.0-py3-none-any.whl"
    bogus.write_bytes(b"not a zip file")
    wheel = shipping.Wheel(bogus, "0.1.0", hashlib.sha256(bogus.read_bytes()).hexdigest())
    root = str(sshd_host.root / "maestro")
    target = sshd_host.target(tmp_path / "kh")
    with SshTransport(target) as transport, pytest.raises(ProvisionError) as info:
        shipping.ship(transport, wheel, root)
    message = str(info.value)
    print("\n" + message)
    assert "cannot install cloudsend on the maestro" in message
    assert "zip" in message.lower() or "wheel" in message.lower(), message  # pip's own words
    assert not (Path(root) / "cloudsend" / wheel.key / "done").exists()
