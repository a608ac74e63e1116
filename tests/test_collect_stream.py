"""`collect --stream`: the agent's answer and the results archive on one command's stdout, read
by AgentClient.collecting over LocalTransport.output and unpacked as it comes (fetch.unpack).
The same over ssh is in test_transport_ssh.py (output) and test_ssh_lifecycle.py (a cut stream).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudsend.agent import AGENT_FILES, AGENT_PATH, protocol
from cloudsend.errors import AgentError, TransportError
from cloudsend.pipeline.agent_client import AgentClient
from cloudsend.pipeline.fetch import unpack
from cloudsend.providers.base import Host
from cloudsend.transport.local import LocalTransport
from tests.agent_helpers import Agent, job, shut_down
from tests.test_agent_protocol import conforms


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    a = Agent(tmp_path / "host")
    try:
        yield a
    finally:
        shut_down(a)


def _host(root: Path) -> Host:
    """The host as cloudsend reaches it: the agent's files installed in its root."""
    root.mkdir(parents=True, exist_ok=True)
    for path in AGENT_FILES:
        if not (root / path.name).exists():
            shutil.copy(path, root / path.name)
    return Host("h1", 1, str(root), sys.executable, LocalTransport("h1"))


def _outbox(agent: Agent) -> list[str]:
    box = agent.root / "outbox"
    return sorted(os.listdir(box)) if box.is_dir() else []


def test_the_agent_writes_its_answer_line_then_the_archive_and_removes_it(
    agent: Agent, tmp_path: Path
) -> None:
    agent.start(2)
    agent.submit([job("s1", "echo one > o.txt", outputs=["o.txt"])])
    agent.wait_final(["s1"])
    out = str(agent.root / "outbox" / "c.tar.gz")
    proc = subprocess.run(
        [sys.executable, str(AGENT_PATH), "--root", str(agent.root), "collect", "--stream",
         "--out", out],
        input=b'{"s1": 1}', capture_output=True, timeout=60, check=True,
    )
    line, _, archive = proc.stdout.partition(b"\n")
    doc = json.loads(line)
    conforms(doc, protocol.CollectAnswer, "collect --stream")
    assert doc["pack"]["jobs"] == ["s1"] and doc["pack"]["path"] == out
    assert archive[:2] == b"\x1f\x8b"
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == ["s1/o.txt", "s1/stderr.log", "s1/stdout.log"]
        member = tar.extractfile("s1/o.txt")
        assert member is not None and member.read() == b"one\n"
    assert not Path(out).exists(), "a sent archive is removed"
    # nothing final wanted: the line alone
    quiet = subprocess.run(
        [sys.executable, str(AGENT_PATH), "--root", str(agent.root), "collect", "--stream",
         "--out", out],
        input=b"{}", capture_output=True, timeout=60, check=True,
    )
    assert quiet.stdout.count(b"\n") == 1 and json.loads(quiet.stdout)["pack"] is None


def test_collecting_reads_the_answer_and_unpacks_the_archive_in_one_call(
    agent: Agent, tmp_path: Path
) -> None:
    agent.start(2)
    big = 3 * 2**20  # many chunks: the archive is read while it comes
    agent.submit(
        [
            job("a", f"head -c {big} /dev/urandom > o.bin", outputs=["o.bin"]),
            job("b", "echo bee > o.txt", outputs=["o.txt", "never.txt"]),
            job("slow", "sleep 30"),
        ]
    )
    agent.wait_final(["a", "b"])
    host = _host(agent.root)
    client = AgentClient(host)
    calls = host.transport.calls  # type: ignore[attr-defined]
    out = str(agent.root / "outbox" / "c.tar.gz")
    with client.collecting(out, {"a": 1, "b": 1, "slow": 1}) as (doc, archive):
        assert set(doc["status"]["jobs"]) == {"a", "b", "slow"}
        assert doc["pack"] is not None and sorted(doc["pack"]["jobs"]) == ["a", "b"]
        assert doc["pack"]["missing"] == {"b": ["never.txt"]}
        got = unpack(host, archive, ["a", "b"], tmp_path / "results", tmp_path / "tmp")
    assert host.transport.calls == calls + 1  # type: ignore[attr-defined]  # one round trip
    assert {j: sorted(r for r, _ in files) for j, files in got.items()} == {
        "a": ["o.bin", "stderr.log", "stdout.log"], "b": ["o.txt", "stderr.log", "stdout.log"]
    }
    there = agent.root / "jobs" / "a" / "work" / "o.bin"
    assert (tmp_path / "results" / "a" / "o.bin").read_bytes() == there.read_bytes()
    assert (tmp_path / "results" / "b" / "o.txt").read_text() == "bee\n"
    assert _outbox(agent) == []
    # a round with nothing to pack: the answer only, and nothing to read after it
    with client.collecting(out, {"slow": 1}) as (doc, archive):
        assert doc["pack"] is None
        assert list(archive) == []


def test_a_long_poll_returns_early_on_a_change(agent: Agent) -> None:
    agent.start(1)
    agent.submit([job("w", "sleep 1; echo w > o.txt", outputs=["o.txt"])])
    client = AgentClient(_host(agent.root))
    version = agent.status()["version"]
    out = str(agent.root / "outbox" / "c.tar.gz")
    started = time.monotonic()
    with client.collecting(out, {"w": 1}, since=version, wait=20) as (doc, archive):
        waited = time.monotonic() - started
        for _ in archive:
            pass
    assert waited < 10, waited
    assert doc["status"]["version"] != version


@pytest.mark.parametrize(
    ("source", "error", "says"),
    [
        # an error document (exit 1): the agent answered
        ("def main():\n    print('{\"error\": \"boom\"}')\n    return 1\n", AgentError, "boom"),
        # a document, then the archive cut short and a failure exit: the stream failed
        (
            "import sys\ndef main():\n"
            "    sys.stdout.write('{\"status\": {}, \"pack\": {\"path\": \"x\", \"jobs\": [\"j\"],"
            " \"missing\": {}, \"refused\": {}}}\\n')\n"
            "    sys.stdout.buffer.write(b'\\x1f\\x8b\\x08')\n    sys.stdout.flush()\n"
            "    sys.stderr.write('disk gone')\n    return 1\n",
            TransportError,
            "bad results archive",
        ),
        # no document at all, and a failure exit: not reached
        ("import sys\ndef main():\n    sys.stderr.write('crash')\n    return 2\n",
         TransportError, "crash"),
    ],
)
def test_a_stream_that_fails_is_an_error_of_its_kind(
    tmp_path: Path, source: str, error: type[Exception], says: str
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "agent.py").write_text(source)
    host = _host(root)
    with (
        pytest.raises(error) as caught,
        AgentClient(host).collecting(str(root / "c.tgz"), {"j": 1}) as (_doc, archive),
    ):
        unpack(host, archive, ["j"], tmp_path / "results", tmp_path / "tmp")
    assert says in str(caught.value)
    if error is TransportError:
        assert not isinstance(caught.value, AgentError)
    assert not any((tmp_path / "results").rglob("*"))  # nothing half-written


def test_local_output_timeout_exit_code_and_stderr(tmp_path: Path) -> None:
    t = LocalTransport("h1")
    with t.output("cat; echo err >&2; exit 4", stdin="x" * 200_000, timeout=10) as out:
        assert b"".join(out.chunks()) == b"x" * 200_000  # a stdin bigger than a pipe
        res = out.finish()
    assert (res.exit_code, res.stdout, res.stderr) == (4, "", "err\n")
    started = time.monotonic()
    with (
        pytest.raises(TransportError, match="timed out after 1"),
        t.output("echo first; sleep 20", timeout=1) as out,
    ):
        for _ in out.chunks():
            pass
    assert time.monotonic() - started < 5
