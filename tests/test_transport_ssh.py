"""SshTransport against real OpenSSH daemons on loopback, with real faults (tests/sshd_harness).

The fake hosts share this machine's filesystem, so a test can look at a host's files directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cloudsend.errors import TransportError
from cloudsend.transport.base import CHUNK
from cloudsend.transport.ssh import SshTarget, SshTransport, probe
from cloudsend.transport.ssh_file import PIECE, WINDOW
from tests.sshd_harness import SshdHost

Factory = Callable[..., list[SshdHost]]


@pytest.fixture
def known_hosts(tmp_path: Path) -> Path:
    return tmp_path / "state" / "known_hosts"  # parent missing on purpose


@pytest.fixture
def connect(known_hosts: Path) -> Iterator[Callable[..., SshTransport]]:
    """connect(host, **target_overrides) -> SshTransport, closed after the test."""
    opened: list[SshTransport] = []

    def make(host: SshdHost, **overrides: object) -> SshTransport:
        transport = SshTransport(host.target(known_hosts, **overrides))
        opened.append(transport)
        return transport

    yield make
    for transport in opened:
        transport.close()


def test_run_output_exit_codes_and_stdin(sshd_host: SshdHost, connect: Callable) -> None:
    t = connect(sshd_host)
    res = t.run("echo out; echo err >&2")
    assert (res.exit_code, res.stdout, res.stderr, res.host) == (0, "out\n", "err\n", "h0")

    failed = t.run("echo nope >&2; exit 3", check=False)
    assert (failed.exit_code, failed.ok, failed.stderr) == (3, False, "nope\n")
    with pytest.raises(TransportError, match=r"exit code 3(.|\n)*nope"):
        t.run("echo nope >&2; exit 3")

    # a JSON document on stdin, as the agent's submit reads it: fed whole, then closed
    doc = {"jobs": [{"job_id": f"j{i:04d}", "script": "x" * 100} for i in range(1000)]}
    text = json.dumps(doc)
    started = time.monotonic()
    echoed = t.run(
        "python3 -c 'import json,sys; print(len(json.load(sys.stdin)[\"jobs\"]))'", stdin=text
    )
    assert echoed.stdout.strip() == "1000"
    assert time.monotonic() - started < 30, "stdin must not trickle in byte by byte"
    assert t.run("wc -c", stdin="héllo").stdout.strip() == str(len("héllo".encode()))
    # without stdin the command sees EOF at once instead of waiting for input
    assert t.run("cat; echo done", timeout=10).stdout == "done\n"
    # killed by a signal: no exit status, but the link is fine, so a failed Result
    assert t.run("kill -9 $$", check=False).exit_code == -1
    assert t.calls == 7 and t.connects == 1


def test_timeout_raises_and_connection_survives(sshd_host: SshdHost, connect: Callable) -> None:
    t = connect(sshd_host)
    t.run("true")
    started = time.monotonic()
    with pytest.raises(TransportError, match=r"timed out after 1 s on h0 .*127\.0\.0\.1:\d+"):
        t.run("sleep 20", timeout=1)
    assert time.monotonic() - started < 3
    assert t.run("echo still here").stdout == "still here\n"
    assert t.connects == 1


def test_put_get_round_trip_counts_bytes_atomically(
    sshd_host: SshdHost, connect: Callable, tmp_path: Path
) -> None:
    t = connect(sshd_host)
    small = tmp_path / "small.txt"
    small.write_text("hello\n")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(8 << 20))
    dest = sshd_host.root / "files" / "deep" / "big.bin"  # parents do not exist yet

    # a reader on the host polls the destination while it is written: never a partial file
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                seen.append(dest.stat().st_size)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        t.put(big, str(dest))
        t.put(small, str(dest))  # overwrite: readers see the old or the new, whole
    finally:
        stop.set()
        watcher.join()
    assert set(seen) <= {big.stat().st_size, small.stat().st_size}
    assert dest.read_text() == "hello\n"
    assert not [p for p in dest.parent.iterdir() if ".part-" in p.name]
    assert t.bytes_sent == (8 << 20) + 6

    t.put(big, str(dest))
    back = tmp_path / "fetched" / "big.bin"
    t.get(str(dest), back)
    assert back.read_bytes() == big.read_bytes()
    assert t.bytes_received == 8 << 20
    with pytest.raises(TransportError, match="cannot fetch .*missing"):
        t.get(str(sshd_host.root / "missing"), tmp_path / "nothing")
    assert not list(tmp_path.glob("nothing*"))
    assert t.calls == 5 and t.connects == 1


def test_one_connection_for_many_calls(
    sshd_host: SshdHost, connect: Callable, tmp_path: Path
) -> None:
    t = connect(sshd_host)
    src = tmp_path / "f"
    src.write_text("x")
    for i in range(10):
        t.run(f"echo {i}")
        t.put(src, f"{sshd_host.root}/f{i}")
        t.get(f"{sshd_host.root}/f{i}", tmp_path / f"g{i}")
    assert t.calls == 30
    assert t.connects == 1
    assert sshd_host.accepted_logins() == 1  # sshd's own view: one authenticated connection


def test_twenty_concurrent_runs_under_stock_sshd_limits(
    sshd_factory: Factory, connect: Callable
) -> None:
    host = sshd_factory(1, stock_limits=True)[0]  # MaxSessions 10: 20 channels would fail
    t = connect(host)
    with ThreadPoolExecutor(20) as pool:
        outs = list(pool.map(lambda i: t.run(f"sleep 0.3; echo {i}").stdout, range(20)))
    assert outs == [f"{i}\n" for i in range(20)]
    assert t.connects == 1


def test_long_call_does_not_block_other_calls(sshd_host: SshdHost, connect: Callable) -> None:
    # the pipeline's long-poll `status --wait` holds a channel for seconds
    t = connect(sshd_host)
    t.run("true")
    long = threading.Thread(target=t.run, args=("sleep 5",), kwargs={"timeout": 15})
    long.start()
    time.sleep(0.3)
    for i in range(5):
        assert t.run(f"echo {i}").stdout == f"{i}\n"
    assert long.is_alive(), "the quick calls waited for the long one"
    long.join()


def test_many_first_contacts_at_once_under_stock_limits(
    sshd_factory: Factory, known_hosts: Path
) -> None:
    # 16 clients connecting at once trip the stock MaxStartups 10:30:100 (banner errors):
    # retries absorb it, and concurrent first contacts pin exactly one line
    host = sshd_factory(1, stock_limits=True)[0]
    transports = [SshTransport(host.target(known_hosts)) for _ in range(16)]
    try:
        with ThreadPoolExecutor(16) as pool:
            outs = list(pool.map(lambda t: t.run("echo ok").stdout, transports))
    finally:
        for t in transports:
            t.close()
    assert outs == ["ok\n"] * 16
    assert len(known_hosts.read_text().splitlines()) == 1


def test_killed_sshd_mid_command_then_restart(sshd_host: SshdHost, connect: Callable) -> None:
    t = connect(sshd_host)
    t.run("true")
    threading.Timer(0.5, sshd_host.kill).start()
    started = time.monotonic()
    with pytest.raises(TransportError, match=r"lost while running: sleep 30"):
        t.run("sleep 30")
    assert time.monotonic() - started < 2.5

    started = time.monotonic()
    with pytest.raises(TransportError, match=r"127\.0\.0\.1:\d+.*connection refused"):
        t.run("true")  # host still down: a few quick retries, then a clear error
    assert time.monotonic() - started < 4

    sshd_host.start()
    assert t.run("echo back").stdout == "back\n"
    assert t.connects == 2
    sshd_host.restart()  # dropped while idle: the next call just reconnects
    assert t.run("echo again").stdout == "again\n"
    assert t.connects == 3


def test_put_cut_by_host_death_leaves_no_file(
    sshd_host: SshdHost, connect: Callable, tmp_path: Path
) -> None:
    t = connect(sshd_host)
    big = tmp_path / "big.bin"
    with big.open("wb") as fh:
        fh.truncate(200 << 20)  # sparse: cheap to make, ~3 s to send
    dest = sshd_host.root / "big.bin"
    t.run("true")
    threading.Timer(0.3, sshd_host.kill).start()
    with pytest.raises(TransportError, match="cannot upload"):
        t.put(big, str(dest))
    assert not dest.exists()
    assert t.bytes_sent == 0
    sshd_host.start()
    small = tmp_path / "small"
    small.write_text("ok")
    t.put(small, str(dest))  # retried on a new connection, whole
    assert dest.read_text() == "ok"


def test_frozen_host_detected_fast_then_recovers(sshd_host: SshdHost, connect: Callable) -> None:
    t = connect(sshd_host)
    t.run("true")
    errors: dict[str, tuple[float, Exception]] = {}

    def call(tag: str, command: str) -> None:
        started = time.monotonic()
        try:
            t.run(command)
        except TransportError as exc:
            errors[tag] = (time.monotonic() - started, exc)

    running = threading.Thread(target=call, args=("running", "sleep 20"))
    running.start()
    time.sleep(0.5)  # the command is in flight when the host freezes
    sshd_host.freeze()
    fresh = threading.Thread(target=call, args=("fresh", "true"))
    fresh.start()
    running.join(20)
    fresh.join(20)
    assert set(errors) == {"running", "fresh"}
    for tag, (spent, exc) in errors.items():
        assert spent < 15, f"{tag} call took {spent:.1f} s to fail on a frozen host"
        assert "h0" in str(exc) and str(sshd_host.port) in str(exc)

    sshd_host.thaw()
    assert t.run("echo thawed").stdout == "thawed\n"


def test_first_contact_pins_host_key(
    sshd_host: SshdHost, connect: Callable, known_hosts: Path
) -> None:
    assert not known_hosts.exists()
    connect(sshd_host).run("true")
    assert known_hosts.stat().st_mode & 0o777 == 0o600
    pub = Path(str(sshd_host.host_key) + ".pub").read_text().split()[:2]
    assert known_hosts.read_text().split() == [f"[127.0.0.1]:{sshd_host.port}", *pub]
    connect(sshd_host).run("true")  # a second client trusts the pinned key
    assert len(known_hosts.read_text().splitlines()) == 1


def test_changed_host_key_is_refused_before_anything_runs(
    sshd_host: SshdHost, connect: Callable, known_hosts: Path, tmp_path: Path
) -> None:
    first = connect(sshd_host)
    first.run("true")
    sshd_host.regenerate_host_key()  # rebuilt host (or an impostor) on the same address
    logins = sshd_host.accepted_logins()
    side_effect = tmp_path / "side-effect"
    for t in (connect(sshd_host), first):  # a new client, and a reconnecting one
        with pytest.raises(TransportError) as info:
            t.run(f"touch {side_effect}")
        message = str(info.value)
        assert f"h0 (root@127.0.0.1:{sshd_host.port})" in message
        assert "changed" in message and str(known_hosts) in message
        assert f"remove its line '[127.0.0.1]:{sshd_host.port} ...'" in message
    assert not side_effect.exists()
    assert sshd_host.accepted_logins() == logins  # refused before authentication

    known_hosts.write_text("")  # what the hint says: forget the old key
    connect(sshd_host).run(f"touch {side_effect}")
    assert side_effect.exists()


def test_nothing_listening_fails_fast(sshd_host: SshdHost, known_hosts: Path) -> None:
    sshd_host.kill()
    t = SshTransport(sshd_host.target(known_hosts))
    started = time.monotonic()
    with pytest.raises(TransportError, match=rf"127\.0\.0\.1:{sshd_host.port}.*refused"):
        t.run("true")
    assert time.monotonic() - started < 3
    assert t.connects == 0


def test_unauthorized_key_is_not_retried(
    sshd_host: SshdHost, known_hosts: Path, tmp_path: Path
) -> None:
    sshd_host.authorized_keys.write_text("")
    t = SshTransport(sshd_host.target(known_hosts))
    started = time.monotonic()
    with pytest.raises(TransportError, match="authentication failed on h0"):
        t.run("true")
    assert time.monotonic() - started < 2


def test_ubuntu_user_with_passwordless_sudo(
    sshd_factory: Factory, connect: Callable, tmp_path: Path
) -> None:
    host = sshd_factory(1, user="ubuntu")[0]
    t = connect(host)
    assert t.run("id -un").stdout == "ubuntu\n"
    assert t.run("sudo -n true", check=False).exit_code == 0
    src = tmp_path / "payload"
    src.write_text("data")
    t.put(src, f"{host.root}/sub/payload")  # the root is writable by the login user
    assert (host.root / "sub" / "payload").stat().st_uid == host._pw.pw_uid
    host.wipe()  # a wiped root can be recreated by the login user
    t.put(src, f"{host.root}/payload")
    facts = t.probe()
    assert facts["home"] == "/home/ubuntu"


def test_probe_returns_home_cpus_python(sshd_host: SshdHost, known_hosts: Path) -> None:
    target: SshTarget = sshd_host.target(known_hosts)
    facts = probe(target)
    assert facts["home"] == "/root"
    assert facts["cpus"] == len(os.sched_getaffinity(0))  # same machine: nproc
    python = facts["python"]
    assert python and os.path.isabs(python) and os.access(python, os.X_OK)
    assert "shims" not in python  # the real interpreter, not a pyenv wrapper
    assert facts["python_version"] and int(facts["python_version"].split(".")[1]) >= 8


def test_reading_streams_a_file_in_bounded_windows(
    sshd_host: SshdHost, connect: Callable, tmp_path: Path
) -> None:
    t = connect(sshd_host)
    data = os.urandom(2 * WINDOW + 3 * PIECE + 123)  # windows and pieces, neither whole
    path = sshd_host.root / "big.bin"
    path.write_bytes(data)
    with t.reading(str(path)) as f:
        assert f.size() == len(data)
        assert f.pread(len(data) - 10, 100) == data[-10:]
        chunks = list(f.chunks())
        assert b"".join(chunks) == data and max(map(len, chunks)) <= CHUNK
        assert b"".join(f.chunks(WINDOW - 5, WINDOW + 5)) == data[WINDOW - 5 : WINDOW + 5]
        early = f.chunks(7)  # a reader that stops mid-window...
        assert next(early) == data[7 : 7 + PIECE]
        early.close()
        assert f.pread(0, 4) == data[:4]  # ...leaves the session in step
    back = tmp_path / "back.bin"
    t.get(str(path), back)  # the next transfer on the same SFTP session
    assert back.read_bytes() == data
    with pytest.raises(FileNotFoundError), t.reading(str(sshd_host.root / "missing")):
        pass
    assert t.connects == 1 and t.bytes_received >= 2 * len(data)


def test_reading_when_sshd_dies_midway_is_a_transport_error(
    sshd_host: SshdHost, connect: Callable
) -> None:
    t = connect(sshd_host)
    path = sshd_host.root / "big.bin"
    path.write_bytes(os.urandom(64 << 20))
    with (
        pytest.raises(TransportError, match=r"lost while reading .*big\.bin"),
        t.reading(str(path)) as f,
    ):
        chunks = f.chunks()
        next(chunks)
        sshd_host.kill()
        started = time.monotonic()
        for _ in chunks:
            assert time.monotonic() - started < 20
    sshd_host.start()
    assert t.run("echo back").stdout == "back\n"  # and the transport reconnects


# ---- output(): a command's stdout as bytes while it comes (collect --stream) ---------------


def test_output_hands_over_stdout_then_exit_code_and_stderr(
    sshd_host: SshdHost, connect: Callable
) -> None:
    t = connect(sshd_host)
    blob = sshd_host.root / "blob.bin"
    blob.write_bytes(os.urandom(3 * CHUNK + 123))
    # a document line, then bytes; stdin read first, as the agent's collect does; a lot
    # of stderr before any stdout must not stall stdout on the channel's shared window
    command = (
        f"head -c 5000000 /dev/zero | tr '\\0' e >&2; "
        f"python3 -c 'import sys; print(len(sys.stdin.read()))'; cat {blob}; exit 3"
    )
    with t.output(command, stdin="x" * 100_000, timeout=30) as out:
        got = b"".join(out.chunks())
        res = out.finish()
    line, _, rest = got.partition(b"\n")
    assert line == b"100000" and rest == blob.read_bytes()
    assert res.exit_code == 3 and res.stdout == ""
    assert len(res.stderr) == 1 << 16 and set(res.stderr) == {"e"}  # its last 64 KB kept
    # finish() without reading: the rest is discarded, the exit code still known
    with t.output("seq 1 200000; exit 0", timeout=30) as out:
        assert out.finish().ok
    assert t.connects == 1


def test_output_timeout_and_link_loss_are_transport_errors(
    sshd_host: SshdHost, connect: Callable
) -> None:
    t = connect(sshd_host)
    started = time.monotonic()
    with (
        pytest.raises(TransportError, match=r"timed out after 1 s without output on h0"),
        t.output("echo first; sleep 20", timeout=1) as out,
    ):
        for _ in out.chunks():
            pass
    assert time.monotonic() - started < 5
    assert t.run("echo still").stdout == "still\n"  # the connection survived

    started = time.monotonic()
    with (
        pytest.raises(TransportError, match=r"h0 .*127\.0\.0\.1:\d+\) (lost|failed)"),
        t.output("while true; do echo x; sleep 0.1; done", timeout=30) as out,
    ):
        chunks = out.chunks()
        next(chunks)
        sshd_host.kill()
        for _ in chunks:
            assert time.monotonic() - started < 20
        out.finish()  # closed without an exit status on a dead link
    assert time.monotonic() - started < 20
    sshd_host.start()
    with t.output("echo back") as out:  # and the transport reconnects
        assert b"".join(out.chunks()) == b"back\n" and out.finish().ok
