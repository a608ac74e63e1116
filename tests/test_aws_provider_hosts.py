"""AwsProvider's glue from stack outputs to hosts, a whole run over them, and down's leak check.

The Pulumi engine is replaced by a stub that returns stack outputs, because the pulumi CLI
cannot be installed here (tests/test_aws_engine.py covers the engine itself, and its real-CLI
tests are skipped with that reason). Everything else is real: the instances' "addresses" are
sshd daemons on loopback logging in with the stack's own generated key, boto3 calls go to a
moto server, and the leak check reads moto after the (stubbed) destroy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Project


class EngineStub:
    """Stands in for engine.Engine (no pulumi CLI here): returns fixed stack outputs and
    records which operations ran, in order, so tests can check what the provider asked for."""

    def __init__(self, outputs: dict[str, Any], on_destroy: Any = None) -> None:
        self._outputs = outputs
        self.destroyed = False
        self.calls: list[str] = []
        self._on_destroy = on_destroy

    def preview(self, *, refresh: bool = False) -> list[Any]:
        self.calls.append("preview+refresh" if refresh else "preview")
        return []

    def refresh(self) -> None:
        self.calls.append("refresh")

    def up(self, on_change: Any = None) -> dict[str, Any]:
        self.calls.append("up")
        return self._outputs

    def outputs(self) -> dict[str, Any]:
        self.calls.append("outputs")
        return self._outputs

    def destroy(self, on_change: Any = None) -> None:
        self.calls.append("destroy")
        self.destroyed = True
        if self._on_destroy is not None:
            self._on_destroy()  # e.g. terminate the moto instances, as pulumi destroy would


def test_stack_outputs_become_hosts_and_a_run_goes_through(
    sshd_factory: Any,
    project: Project,
    moto_aws: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from cloudsend.api import SyncClient
    from cloudsend.providers.aws.keys import stack_key
    from cloudsend.providers.aws.provider import AwsProvider

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    hosts = sshd_factory(1, user="ubuntu") + sshd_factory(1)
    key = stack_key("awsrun", "awsrun")
    for h in hosts:  # the instances accept the stack's key, as EC2 installs it at boot
        h.authorized_keys.write_text(h.authorized_keys.read_text() + key.public_openssh + "\n")
    outputs = {
        "instances": {
            f"awsrun-0-{i}": {
                "id": f"i-{i}",
                "public_ip": "127.0.0.1",
                "port": h.port,
                "user": h.user,
                "region": "us-east-1",
            }
            for i, h in enumerate(hosts)
        }
    }
    stub = EngineStub(outputs)
    monkeypatch.setattr(AwsProvider, "engine", lambda self, spec: stub)
    cfg = project.config(
        """
        project: awsrun
        provider: aws
        region: us-east-1
        auto_stop: false
        ssh_cidrs: [198.51.100.7/32]
        instances:
          - {type: t3.micro, number: 2, img_id: ami-12345678}
        jobs:
          - run_command: hostname > h.txt; whoami >> h.txt
            output_file: h.txt
            repeat: 4
        """
    )
    client = SyncClient(cfg, poll_wait=0.5)
    try:
        client.start()
        assert sorted(h.name for h in client.session.hosts) == ["awsrun-0-0", "awsrun-0-1"]
        client.deploy()
        client.run()
        views = client.wait(timeout=120)
        # a terminated instance is replaced by a new `up`: the host of that name comes back
        replaced = client.session.provider.machines.replace(["awsrun-0-1"])  # type: ignore[union-attr]
        assert [h.name for h in replaced] == ["awsrun-0-1"]
        added = client.session.add_hosts(replaced)
        assert [h.name for h in client.session.hosts].count("awsrun-0-1") == 1
        assert added[0].transport.run("test -f " + added[0].agent).ok
        client.down()
    finally:
        client.close()
    assert [v.state for v in views] == ["DONE"] * 4
    users = {p.read_text().split()[-1] for p in client.session.results_dir.glob("*/h.txt")}
    assert users == {"ubuntu", "root"}  # both "instances" ran jobs
    assert stub.destroyed
    # known_hosts pinned the "instances" for the project
    assert (project.path / ".cloudsend" / "known_hosts").read_text().count("[127.0.0.1]") == 2


def test_down_lists_leftovers_and_fails(
    project: Project, moto_aws: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from cloudsend.errors import ProvisionError
    from cloudsend.providers.aws.provider import AwsProvider

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    stub = EngineStub({"instances": {}})
    monkeypatch.setattr(AwsProvider, "engine", lambda self, spec: stub)
    cfg = project.config(
        """
        project: leaky
        provider: aws
        region: us-east-1
        instances:
          - {type: t3.micro, img_id: ami-12345678}
        jobs:
          - run_command: "true"
        """
    )
    from cloudsend.config import load_config

    provider = AwsProvider(load_config(cfg))
    provider.down([])  # nothing tagged with the stack: clean
    moto_aws.run_instances(1, {"cloudsend:project": "leaky", "cloudsend:stack": "leaky"})
    with pytest.raises(ProvisionError) as err:
        provider.down([])
    assert "remain" in err.value.message and "instance" in err.value.message
    assert stub.destroyed
