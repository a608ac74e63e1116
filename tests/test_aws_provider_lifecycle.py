"""AwsProvider across a machine's life: the region it looks in, replacing a terminated instance,
auto_stop (stop on-demand, terminate one-time spot), starting stopped instances on `up`, and a
`down` that does not wait for SSH on stopped ones.

boto3 goes to a real moto server (tests/moto_harness.py). The Pulumi engine is the stub of
tests/test_aws_provider_hosts.py, because the pulumi CLI cannot be installed here: it returns
the stack outputs a real `up` would (the moto instances' ids) and records which operations the
provider asked for. SSH is replaced where a test needs it: moto's instance addresses look like
real internet hosts and must never be connected to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Project
from tests.test_aws_provider_hosts import EngineStub

AWS_CONFIG = """
project: life
provider: aws
{region}
ssh_cidrs: [198.51.100.7/32]
instances:
  - {{type: t3.micro, number: 2, img_id: ami-12345678}}
jobs:
  - run_command: "true"
"""
TAGS = {"cloudsend:project": "life", "cloudsend:stack": "life"}
NAMES = ["life-0-0", "life-0-1"]


def _provider(project: Project, region: str = "region: us-east-1") -> Any:
    from cloudsend.config import load_config
    from cloudsend.providers.aws.provider import AwsProvider

    return AwsProvider(load_config(project.config(AWS_CONFIG.format(region=region))))


def _outputs(ids: list[str], region: str = "us-east-1") -> dict[str, Any]:
    return {
        "instances": {
            name: {"id": iid, "public_ip": "192.0.2.1", "region": region, "user": "ubuntu"}
            for name, iid in zip(NAMES, ids, strict=True)
        }
    }


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_the_region_of_the_credential_chain_is_used_by_plan_monitor_and_leak_check(
    project: Project, moto_aws: Any, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No `region:` in the config and AWS_DEFAULT_REGION=eu-west-1: instances there are seen
    by the monitor and by down's leak check (it used to look in us-east-1 and say clean)."""
    from cloudsend.errors import ProvisionError
    from cloudsend.providers.aws.provider import AwsProvider

    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    ids = moto_aws.run_instances(2, TAGS, region="eu-west-1", names=NAMES)
    stub = EngineStub(_outputs(ids, "eu-west-1"))
    monkeypatch.setattr(AwsProvider, "engine", lambda self, spec: stub)
    provider = _provider(project, region="")
    assert provider.plan(offline=True).region == "eu-west-1"
    assert provider.plan().region == "eu-west-1"
    assert sorted(provider._monitor().instances()) == NAMES
    moto_aws.stop(ids[0], region="eu-west-1")
    assert provider.machines.poll_instances().start == [ids[0]]
    with pytest.raises(ProvisionError) as err:
        provider.down([])
    assert all(f"instance {i} (eu-west-1)" in err.value.message for i in ids)
    # the config's region still comes first
    assert _provider(project, region="region: us-west-2").plan(offline=True).region == "us-west-2"


def test_no_region_anywhere_is_us_east_1(
    project: Project, home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    assert _provider(project, region="").plan(offline=True).region == "us-east-1"


def _no_ssh(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Hosts without SSH: moto's addresses are not machines. Records the addresses asked."""
    from cloudsend.providers.aws.provider import AwsProvider

    asked: list[str] = []

    def probe(transport: Any) -> dict[str, Any]:
        asked.append(transport.target.address)
        return {"cpus": 2, "home": "/home/ubuntu", "python": "/usr/bin/python3"}

    monkeypatch.setattr(AwsProvider, "_wait_for_ssh", staticmethod(probe))
    return asked


class RecreatingStub(EngineStub):
    """An up after a refresh re-creates the instances EC2 has ended, as Pulumi would once its
    state knows they are gone (moto launches the new one under the same name)."""

    def __init__(self, moto_aws: Any, ids: list[str]) -> None:
        super().__init__(_outputs(ids))
        self.moto_aws, self.ids = moto_aws, ids

    def up(self, on_change: Any = None) -> dict[str, Any]:
        if "refresh" in self.calls:
            for n, iid in enumerate(self.ids):
                if self.moto_aws.state(iid) == "terminated":
                    (self.ids[n],) = self.moto_aws.run_instances(1, TAGS, names=[NAMES[n]])
            self._outputs = _outputs(self.ids)
        return super().up(on_change)


def test_replace_refreshes_the_stack_before_up(
    project: Project, moto_aws: Any, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A terminated instance is still in Pulumi's state: replace() must refresh first, or up
    believes the dead instance exists and creates nothing."""
    from cloudsend.providers.aws.provider import AwsProvider

    ids = moto_aws.run_instances(2, TAGS, names=NAMES)
    stub = RecreatingStub(moto_aws, list(ids))
    monkeypatch.setattr(AwsProvider, "engine", lambda self, spec: stub)
    _no_ssh(monkeypatch)
    provider = _provider(project)
    provider.up()
    assert "refresh" not in stub.calls  # every instance alive: a plain up, no refresh
    moto_aws.terminate(ids[1])
    stub.calls.clear()
    hosts = provider.machines.replace(["life-0-1"])
    assert "refresh" in stub.calls and stub.calls.index("refresh") < stub.calls.index("up")
    assert [h.name for h in hosts] == ["life-0-1"] and hosts[0].info["instance_id"] != ids[1]
    # a plain `up` (the next `cloudsend run`) also refreshes once an instance is gone
    moto_aws.terminate(stub.ids[0])
    stub.calls.clear()
    assert [h.name for h in provider.up()] == NAMES
    assert stub.calls.index("refresh") < stub.calls.index("up")


def test_auto_stop_stops_on_demand_and_terminates_spot(
    project: Project, moto_aws: Any, home: Path
) -> None:
    """EC2 refuses to stop one-time spot instances (and fails the whole stop_instances call
    for them; moto does not emulate that refusal, so the test checks what was asked): idle
    spot instances are terminated, on-demand ones stopped, in separate calls."""
    (spot,) = moto_aws.run_instances(1, TAGS, spot=True, names=["life-0-0"])
    (od,) = moto_aws.run_instances(1, TAGS, names=["life-0-1"])
    infos = _provider(project)._monitor().instances()
    assert infos["life-0-0"].spot and not infos["life-0-1"].spot  # InstanceLifecycle: spot
    done = _provider(project).machines.stop(NAMES)
    assert moto_aws.state(spot) == "terminated" and moto_aws.state(od) == "stopped"
    assert done.terminated == ["life-0-0"] and done.stopped == ["life-0-1"]
    assert _provider(project).machines.stop(NAMES).stopped == []  # already off: nothing to do


def test_auto_stop_errors_are_provision_errors(
    project: Project, moto_aws: Any, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A botocore ClientError is not a CloudsendError: it used to escape the watch loop."""
    from cloudsend.errors import ProvisionError

    (gone,) = moto_aws.run_instances(1, TAGS, names=["life-0-0"])
    provider = _provider(project)
    monitor = provider._monitor()
    stale = monitor.instances()  # described just before the instance vanished
    moto_aws.vanish(gone)
    monkeypatch.setattr(monitor, "instances", lambda: stale)
    with pytest.raises(ProvisionError) as err:
        provider.machines.stop(["life-0-0"])
    assert gone in err.value.message and "billing" in (err.value.hint or "")


def test_watch_loop_reports_a_failed_auto_stop_and_goes_on(moto_aws: Any) -> None:
    from types import SimpleNamespace

    from cloudsend.core import CloudSendProcessState
    from cloudsend.pipeline.monitor import RunMonitor
    from cloudsend.pipeline.reporting import NullReporter
    from cloudsend.pipeline.run_state import RunState
    from cloudsend.providers.aws.monitor import InstanceInfo
    from cloudsend.providers.aws.power import power_off

    notices: list[str] = []
    stale = InstanceInfo("i-0123456789abcdef0", "a", "running", None, None, "us-east-1")
    stop = SimpleNamespace(stop=lambda names: power_off(moto_aws.session(), [stale]))
    provider = SimpleNamespace(machines=stop)
    reporter = NullReporter()
    reporter.notice = notices.append  # type: ignore[method-assign]
    session: Any = SimpleNamespace(
        provider=provider,
        hosts=[SimpleNamespace(name="a")],
        state=RunState(),
        reporter=reporter,
        current_run=lambda: 1,
        views=lambda: [],
    )
    monitor = RunMonitor(session, CloudSendProcessState.DONE)
    monitor._auto_stop()  # moto answers InvalidInstanceID.NotFound: reported, not raised
    assert monitor.stopped == {"a"}
    assert any(n.startswith("auto_stop failed") and "hint" in n for n in notices), notices


def test_up_starts_instances_auto_stop_stopped_and_uses_their_new_address(
    project: Project, moto_aws: Any, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second `cloudsend run` after auto_stop: `up` starts the stopped instances and waits
    for them to run before connecting (it used to find no instance answering)."""
    from cloudsend.providers.aws.provider import AwsProvider

    ids = moto_aws.run_instances(2, TAGS, names=NAMES)
    stub = EngineStub(_outputs(ids))
    monkeypatch.setattr(AwsProvider, "engine", lambda self, spec: stub)
    asked = _no_ssh(monkeypatch)
    moto_aws.stop(ids[0])
    hosts = _provider(project).up()
    assert [moto_aws.state(i) for i in ids] == ["running", "running"]
    assert [h.name for h in hosts] == NAMES
    described = moto_aws.client("ec2").describe_instances(InstanceIds=ids)["Reservations"]
    live = {i["InstanceId"]: i["PublicIpAddress"] for r in described for i in r["Instances"]}
    assert asked == [live[i] for i in ids]  # EC2's address now, not the outputs' old one
    assert "refresh" not in stub.calls  # stopped is not gone: nothing to re-create


def test_down_does_not_wait_for_ssh_on_stopped_instances(
    project: Project, moto_aws: Any, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After auto_stop, `down` only needs destroy and the leak check: no SSH wait (300 s per
    instance before) and no start of a machine that is about to be destroyed."""
    from cloudsend.api import SyncClient
    from cloudsend.errors import ProvisionError
    from cloudsend.pipeline.reporting import NullReporter
    from cloudsend.providers.aws.provider import AwsProvider

    ids = moto_aws.run_instances(2, TAGS, names=NAMES)
    stub = EngineStub(_outputs(ids), on_destroy=lambda: [moto_aws.terminate(i) for i in ids])
    monkeypatch.setattr(AwsProvider, "engine", lambda self, spec: stub)
    asked = _no_ssh(monkeypatch)
    for iid in ids:
        moto_aws.stop(iid)
    provider = _provider(project)
    with pytest.raises(ProvisionError, match="no instance"):
        provider.attach()
    assert asked == []
    assert all("is stopped" in why for why in provider.unreachable.values())
    notices: list[str] = []
    reporter = NullReporter()
    reporter.notice = notices.append  # type: ignore[method-assign]
    client = SyncClient(project.path / "cloudsend.yaml", reporter)
    try:
        client.down()
    finally:
        client.close()
    assert asked == [] and stub.destroyed
    assert [moto_aws.state(i) for i in ids] == ["terminated", "terminated"]
