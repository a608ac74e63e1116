"""The typed agent protocol (cloudsend/agent/protocol.py): real agent documents have the declared
keys and types, and an agent that answers errors is an AgentError, not an unreachable host."""

from __future__ import annotations

import shutil
import threading
import time
import types
import typing
from pathlib import Path
from typing import Any

import pytest

from cloudsend.agent import AGENT_FILES, AGENT_PATH, agent_sha256, protocol
from cloudsend.errors import EXIT_CODES_HELP, AgentError, TransportError
from cloudsend.pipeline.agent_client import AgentClient
from cloudsend.providers.base import Host
from cloudsend.transport.local import LocalTransport
from tests.agent_helpers import Agent
from tests.conftest import Project

# an agent.py that runs and answers an error to every call
BOOM_AGENT = "def main():\n    print('{\"error\": \"boom\"}')\n    return 1\n"


def conforms(value: Any, tp: Any, where: str = "doc") -> None:
    """Assert `value` (decoded JSON) is of protocol type `tp`, recursively."""
    if isinstance(tp, type) and issubclass(tp, protocol.TypedDict):
        assert isinstance(value, dict), f"{where}: {value!r} is not an object"
        hints = typing.get_type_hints(tp, vars(protocol))
        # an answer carries every declared key and nothing else
        assert set(value) == set(hints), f"{where}: keys {sorted(value)} != {sorted(hints)}"
        for key, sub in hints.items():
            conforms(value[key], sub, f"{where}.{key}")
        return
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            try:
                conforms(value, option, where)
                return
            except AssertionError as exc:
                errors.append(str(exc))
        raise AssertionError(f"{where}: {value!r} is none of {args}: {errors}")
    if origin is dict:
        assert isinstance(value, dict), f"{where}: {value!r} is not an object"
        for k, v in value.items():
            conforms(k, args[0], f"{where} key")
            conforms(v, args[1], f"{where}[{k!r}]")
    elif origin is list:
        assert isinstance(value, list), f"{where}: {value!r} is not a list"
        for i, item in enumerate(value):
            conforms(item, args[0], f"{where}[{i}]")
    elif tp is type(None):
        assert value is None, f"{where}: {value!r} is not null"
    elif tp is float:  # JSON numbers: an int is a float too
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        assert ok, f"{where}: {value!r} is not a number"
    elif tp is int:
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: {value!r}"
    else:
        assert isinstance(value, tp), f"{where}: {value!r} is not {tp.__name__}"


def test_protocol_module_is_uploaded_and_hashed_with_the_agent() -> None:
    assert {p.name for p in AGENT_FILES} == {"agent.py", "protocol.py"}
    assert all(p.parent == AGENT_PATH.parent and p.is_file() for p in AGENT_FILES)
    import hashlib

    both = AGENT_PATH.read_bytes() + (AGENT_PATH.parent / "protocol.py").read_bytes()
    assert agent_sha256() == hashlib.sha256(both).hexdigest()  # `cat agent.py protocol.py`
    source = (AGENT_PATH.parent / "protocol.py").read_text()
    top = [ln for ln in source.splitlines() if ln.startswith(("import", "from"))]
    assert top == ["from __future__ import annotations"], top  # stdlib only, no typing at run time
    # the status fields the agent writes are the TypedDicts' keys
    assert tuple(typing.get_type_hints(protocol.JobStatus)) == protocol.JOB_STATUS_KEYS
    assert tuple(typing.get_type_hints(protocol.EnvStatus)) == protocol.ENV_STATUS_KEYS
    assert "8  agent error" in EXIT_CODES_HELP


def test_real_agent_documents_have_the_declared_keys_and_types(tmp_path: Path) -> None:
    agent = Agent(tmp_path / "host")
    try:
        conforms(agent.start(2), protocol.StartAnswer, "start")
        env: protocol.EnvSpec = {"env_id": "e", "script": "echo built"}
        jobs: list[protocol.JobSpec] = [
            {"job_id": "ok", "env_id": "e", "script": "echo hi > o.txt", "outputs": ["o.txt"]},
            {"job_id": "bad", "script": "echo oops >&2; exit 3", "outputs": ["never.txt"]},
            {"job_id": "slow", "script": "sleep 30"},
        ]
        conforms(agent.submit(jobs, [env]), protocol.SubmitAnswer, "submit")
        agent.wait_final(["ok", "bad"])
        status = agent.status()
        conforms(status, protocol.StatusDoc, "status")
        assert {status["jobs"][j]["state"] for j in ("ok", "bad")} <= set(protocol.JOB_STATES)
        assert status["envs"]["e"]["state"] in protocol.ENV_STATES
        packed = agent.call("pack", "--out", "p.tgz", "ok", "bad")
        conforms(packed, protocol.PackAnswer, "pack")
        assert packed["missing"] == {"bad": ["never.txt"]} and packed["refused"] == {}
        want = '{"ok": 1, "slow": 1}'
        collected = agent.call("collect", "--out", "c.tgz", stdin=want)
        conforms(collected, protocol.CollectAnswer, "collect")
        assert collected["pack"] is not None and collected["pack"]["jobs"] == ["ok"]
        conforms(agent.call("cancel", "slow"), protocol.CancelAnswer, "cancel")
        error = agent.call("tail", "nope", check=False)
        assert error.pop("_rc") == 1
        conforms(error, protocol.ErrorAnswer, "error")
    finally:
        conforms(agent.call("stop", "--kill-jobs"), protocol.StopAnswer, "stop")


def _host(root: Path) -> Host:
    import sys

    return Host("h1", 1, str(root), sys.executable, LocalTransport("h1"))


@pytest.mark.parametrize(
    ("source", "says"),
    [
        (BOOM_AGENT, "boom"),  # an error document, exit 1
        ('def main():\n    print(\'{"error": "zero"}\')\n    return 0\n', "zero"),  # exit 0
        ("def main():\n    print('not json')\n    return 0\n", "not a JSON object"),
        ("def main():\n    print('[1, 2]')\n    return 0\n", "not a JSON object"),
    ],
)
def test_an_agent_that_answers_wrongly_is_an_agent_error(
    tmp_path: Path, source: str, says: str
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "agent.py").write_text(source)
    with pytest.raises(AgentError) as caught:
        AgentClient(_host(root)).status()
    assert "'h1'" in caught.value.message and "'status'" in caught.value.message
    assert says in caught.value.message
    assert not isinstance(caught.value, TransportError)


def test_an_agent_that_cannot_run_is_a_transport_error(tmp_path: Path) -> None:
    # no agent in the root (a wiped host): python runs, the agent does not
    with pytest.raises(TransportError) as caught:
        AgentClient(_host(tmp_path / "wiped")).status()
    assert not isinstance(caught.value, AgentError)
    assert "'h1'" in caught.value.message


def test_an_agent_answering_errors_is_reported_and_its_host_not_declared_lost(
    project: Project, tmp_path: Path
) -> None:
    from cloudsend.api import SyncClient
    from cloudsend.pipeline.reporting import NullReporter

    flag = tmp_path / "go"
    cfg = project.config(
        f"""
        project: proto
        host_lost_after: 2
        instances:
          - cpus: 1
            number: 2
        jobs:
          - run_command: while [ ! -e {flag} ]; do sleep 0.05; done; echo "$CLOUDSEND_JOB_ID" > o
            output_file: o
            repeat: 2
        """
    )
    notices: list[str] = []

    class Recorder(NullReporter):
        def notice(self, message: str) -> None:
            notices.append(message)

    client = SyncClient(cfg, Recorder(), poll_wait=0.5)
    hosts_dir = project.state_dir() / "hosts"
    victim: Path | None = None
    began: list[float] = []

    def break_one_agent() -> None:
        nonlocal victim
        store, run_id = client.session.store, client.session.current_run()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # both jobs running, one per host
            running = [r for r in store.jobs(run_id) if r.state == "RUNNING"]
            if len(running) == 2 and len({r.host for r in running}) == 2:
                break
            time.sleep(0.05)
        victim = hosts_dir / str(running[0].host)
        (victim / "agent.py").write_text(BOOM_AGENT)  # its daemon and job keep running
        began.append(time.monotonic())
        # a collect already under way runs the old code: it could still bring the job home.
        # Let the jobs end only once the watcher has met the broken agent.
        while time.monotonic() < deadline + 30:
            health = {h.name: h.health for h in store.hosts(run_id)}
            if health.get(victim.name) == "agent error":
                break
            time.sleep(0.05)
        flag.touch()  # both jobs finish; only the healthy host's can come home

    fault = threading.Thread(target=break_one_agent)
    try:
        client.start()
        client.deploy()
        client.run()
        fault.start()
        with pytest.raises(AgentError) as caught:
            client.wait(timeout=60)
        ended = time.monotonic()
        fault.join()
        assert victim is not None
        name = victim.name
        run_id = client.session.current_run()
        records = {r.job_id: r for r in client.session.store.jobs(run_id)}
        health = {h.name: h for h in client.session.store.hosts(run_id)}
    finally:
        fault.join()
        if victim is not None:  # the real agent back, so cleanup can stop its daemon and job
            shutil.copy(AGENT_PATH, victim / "agent.py")
        client.close()
    message = caught.value.message
    assert f"'{name}'" in message and "'collect'" in message and "boom" in message, message
    # it kept answering (errors) for longer than host_lost_after, and was never declared lost
    assert ended - began[0] > 2, (ended - began[0], notices)
    assert health[name].health == "agent error" and "boom" in health[name].detail
    assert not any("lost" in n or "re-queuing" in n for n in notices), notices
    assert any(f"host {name}: agent error" in n for n in notices), notices
    stuck = [r for r in records.values() if r.host == name]
    assert len(stuck) == 1 and stuck[0].attempt == 1 and not stuck[0].fetched, records
    home = [r for r in records.values() if r.host != name]
    assert len(home) == 1 and home[0].state == "DONE" and home[0].fetched, records
