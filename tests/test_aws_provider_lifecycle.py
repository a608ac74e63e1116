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
