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
    assert provider.poll_instances().start == [ids[0]]
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


def test_replace_refreshes_the_stack_before_up(
    project: Project, moto_aws: Any, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A terminated instance is still in Pulumi's state: replace() must refresh first, or up
    believes the dead instance exists and creates nothing."""
    from cloudsend.providers.aws.provider import AwsProvider

    ids = moto_aws.run_instances(2, TAGS, names=NAMES)
    stub = EngineStub(_outputs(ids))
    monkeypatch.setattr(AwsProvider, "engine", lambda self, spec: stub)
    _no_ssh(monkeypatch)
    provider = _provider(project)
    provider.up()
    assert "refresh" not in stub.calls  # every instance alive: a plain up, no refresh
    moto_aws.terminate(ids[1])
    stub.calls.clear()
    hosts = provider.replace(["life-0-1"])
    assert [h.name for h in hosts] == ["life-0-1"]
    assert "refresh" in stub.calls and stub.calls.index("refresh") < stub.calls.index("up")
    # a plain `up` (the next `cloudsend run`) also refreshes once an instance is gone
    stub.calls.clear()
    provider.up()
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
    done = _provider(project).stop_hosts(NAMES)
    assert moto_aws.state(spot) == "terminated" and moto_aws.state(od) == "stopped"
    assert done.terminated == ["life-0-0"] and done.stopped == ["life-0-1"]
    assert _provider(project).stop_hosts(NAMES).stopped == []  # already off: nothing to do


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
        provider.stop_hosts(["life-0-0"])
    assert gone in err.value.message and "billing" in (err.value.hint or "")


def test_watch_loop_reports_a_failed_auto_stop_and_goes_on(moto_aws: Any) -> None:
    from types import SimpleNamespace

    from cloudsend.core import CloudSendProcessState
    from cloudsend.pipeline.monitor import RunMonitor
    from cloudsend.pipeline.reporting import NullReporter
    from cloudsend.providers.aws.monitor import InstanceInfo
    from cloudsend.providers.aws.power import power_off

    notices: list[str] = []
    stale = InstanceInfo("i-0123456789abcdef0", "a", "running", None, None, "us-east-1")
    provider = SimpleNamespace(stop_hosts=lambda names: power_off(moto_aws.session(), [stale]))
    reporter = NullReporter()
    reporter.notice = notices.append  # type: ignore[method-assign]
    session: Any = SimpleNamespace(
        provider=provider,
        hosts=[SimpleNamespace(name="a")],
        lost_hosts=set(),
        reporter=reporter,
        current_run=lambda: 1,
        views=lambda: [],
    )
    monitor = RunMonitor(session, CloudSendProcessState.DONE)
    monitor._auto_stop()  # moto answers InvalidInstanceID.NotFound: reported, not raised
    assert monitor.stopped == {"a"}
    assert any(n.startswith("auto_stop failed") and "hint" in n for n in notices), notices
