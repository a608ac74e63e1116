"""The agent's `open` (a run's first call on a host: start, cancel an earlier run's jobs,
status in one answer) and deploy's use of it: one round trip for a host with the current
agent, and no status call for the first reconcile."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from cloudsend.agent import protocol
from cloudsend.errors import AgentError
from cloudsend.pipeline.deploy import ensure_agent
from cloudsend.providers.base import Host
from cloudsend.transport.local import LocalTransport
from tests.agent_helpers import Agent, job, shut_down
from tests.conftest import Project
from tests.test_agent_protocol import conforms


def _host(root: Path) -> Host:
    return Host("h1", 2, str(root), sys.executable, LocalTransport("h1"))


def test_open_starts_cancels_and_answers_the_status(tmp_path: Path) -> None:
    agent = Agent(tmp_path / "host")
    try:
        first = agent.call("open", "--slots", "2")
        conforms(first, protocol.OpenAnswer, "open")
        assert first["start"]["started"] and first["cancelled"] is None
        assert first["status"]["jobs"] == {}
        agent.submit([job("old", "sleep 30"), job("done", "true")])
        agent.wait_final(["done"])
        again = agent.call("open", "--slots", "2", "--cancel-all")
        conforms(again, protocol.OpenAnswer, "open")
        assert not again["start"]["started"]  # the daemon was running: the same one
        assert again["cancelled"] == ["old"]
        # the status is the one written after the cancel
        assert again["status"]["jobs"]["old"]["state"] in ("CANCELLED", "ABORTED")
        assert again["status"]["jobs"]["done"]["state"] == "DONE"
    finally:
        shut_down(agent)


def test_deploy_opens_a_current_agent_in_one_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "root"
    host = _host(root)
    transport = host.transport
    assert isinstance(transport, LocalTransport)
    try:
        # no agent there yet: uploaded (2 puts), then opened by its own call
        first = ensure_agent(host, "proj")
        assert transport.calls == 4 and first.answer["start"]["started"]
        assert first.listing == set()
        (root / "files" / "abc123").write_text("x")
        before = transport.calls
        again = ensure_agent(host, "proj", cancel_all=True)
        assert transport.calls == before + 1  # claim, listing, agent check, open: one command
        assert again.listing == {"abc123"} and again.answer["cancelled"] == []
        assert again.answer["status"]["agent"]["slots"] == 2
    finally:
        shut_down(Agent(root))


def test_an_agent_error_in_open_is_an_agent_error(tmp_path: Path) -> None:
    root = tmp_path / "root"
    host = _host(root)
    try:
        ensure_agent(host, "proj")
        shut_down(Agent(root))
        # the current agent, whose state the daemon cannot read back: it answers an error
        (root / "agent.json").write_text("{not json")
        (root / "status.json").unlink(missing_ok=True)
        shutil.rmtree(root / "inbox")
        (root / "inbox").write_text("a file where the inbox should be")
        with pytest.raises(AgentError, match="'open'"):
            ensure_agent(host, "proj")
    finally:
        (root / "inbox").unlink(missing_ok=True)
        shut_down(Agent(root))


def test_a_new_run_cancels_the_last_runs_jobs_without_extra_round_trips(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloudsend.api import SyncClient
    from cloudsend.pipeline.agent_client import AgentClient

    calls: list[str] = []
    for name in ("status", "cancel", "open"):
        original = getattr(AgentClient, name)

        def counted(self: AgentClient, *a: object, _n: str = name, _o: object = original,
                    **k: object) -> object:
            calls.append(_n)
            return _o(self, *a, **k)  # type: ignore[operator]

        monkeypatch.setattr(AgentClient, name, counted)
    cfg = project.config(
        """
        project: opener
        recover: false
        jobs:
          - run_command: sleep 60
        """
    )
    first = SyncClient(cfg, poll_wait=0.2)
    try:
        first.start()
        first.deploy()
        first.run()
    finally:
        first.close()  # cloudsend goes away; the job runs on
    second = SyncClient(cfg, poll_wait=0.2)
    try:
        second.start()
        second.deploy()
        # the earlier run's job was cancelled by the open: this run submits its own attempt
        assert second.run() == 1
    finally:
        second.close()
    # the first run's agent was uploaded then opened by its own call; the second's opened
    # in deploy's one command: no status or cancel round trip of their own before submitting
    assert calls == ["open"], calls
    (agent_file,) = project.path.glob(".cloudsend/projects/opener/hosts/*/agent.py")
    root = agent_file.parent
    (only,) = Agent(root).status()["jobs"].values()
    assert only["attempt"] == 2 and only["state"] in ("QUEUE", "RUNNING"), only
