"""The provider contract's machine operations (providers.base.Machines): AwsMachines speaks host
names only, against a real moto server (tests/moto_harness.py).

The Pulumi engine is the stub of tests/test_aws_provider_hosts.py (the pulumi CLI cannot be
installed here) and SSH is replaced: moto's instance addresses are not machines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Project
from tests.test_aws_provider_lifecycle import (
    NAMES,
    TAGS,
    RecreatingStub,
    _no_ssh,
    _provider,
)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_poll_then_start_by_host_name(project: Project, moto_aws: Any, home: Path) -> None:
    from cloudsend.providers.base import Reaction

    ids = moto_aws.run_instances(2, TAGS, names=NAMES)
    machines = _provider(project).machines
    assert machines.poll() == Reaction()  # baseline: both running, nothing to do
    moto_aws.stop(ids[0])
    moto_aws.terminate(ids[1])
    reaction = machines.poll()
    # host names, never instance ids, in every field
    assert reaction == Reaction(
        start=["life-0-0"], replace=["life-0-1"], lost_hosts=["life-0-1"], interrupted=[]
    )
    assert not machines.poll()  # said once
    # start skips nothing itself: a running or ended host's machine is just not started
    assert machines.start(["life-0-0", "life-0-1", "not-a-host"]) == ["life-0-0"]
    assert moto_aws.state(ids[0]) == "running" and moto_aws.state(ids[1]) == "terminated"
    assert machines.start(["life-0-0"]) == []  # running already


def test_spot_interruption_is_reported_by_host_name(
    project: Project, moto_aws: Any, home: Path
) -> None:
    (spot,) = moto_aws.run_instances(1, TAGS, spot=True, names=["life-0-0"])
    machines = _provider(project).machines
    assert not machines.poll()
    moto_aws.spot_interrupt(spot)
    reaction = machines.poll()
    assert reaction.interrupted == ["life-0-0"] and reaction.lost_hosts == ["life-0-0"]
    assert reaction.start == []


def test_stop_powers_off_by_host_name(project: Project, moto_aws: Any, home: Path) -> None:
    from cloudsend.providers.base import PowerOff

    (spot,) = moto_aws.run_instances(1, TAGS, spot=True, names=["life-0-0"])
    (od,) = moto_aws.run_instances(1, TAGS, names=["life-0-1"])
    machines = _provider(project).machines
    assert machines.stop(NAMES + ["not-a-host"]) == PowerOff(
        stopped=["life-0-1"], terminated=["life-0-0"]
    )
    assert moto_aws.state(spot) == "terminated" and moto_aws.state(od) == "stopped"
    assert machines.stop(NAMES) == PowerOff()  # already off
    # a stopped host comes back through start(), as the watch loop asks when work arrives
    assert machines.start(["life-0-1"]) == ["life-0-1"]


def test_replace_provisions_the_same_names_again(
    project: Project, moto_aws: Any, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloudsend.providers.aws.provider import AwsProvider

    ids = moto_aws.run_instances(2, TAGS, names=NAMES)
    stub = RecreatingStub(moto_aws, list(ids))
    monkeypatch.setattr(AwsProvider, "engine", lambda self, spec: stub)
    _no_ssh(monkeypatch)
    provider = _provider(project)
    moto_aws.terminate(ids[1])
    hosts = provider.machines.replace(["life-0-1"])
    assert [h.name for h in hosts] == ["life-0-1"]
    assert hosts[0].info["instance_id"] not in ids
    assert "refresh" in stub.calls and stub.calls.index("refresh") < stub.calls.index("up")


def test_machine_errors_are_provision_errors(
    project: Project, moto_aws: Any, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloudsend.errors import ProvisionError

    moto_aws.run_instances(1, TAGS, names=["life-0-0"])
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    machines = _provider(project).machines
    for operation in (machines.poll, lambda: machines.start(["life-0-0"])):
        # (issue 10, item 20: a credentials problem says so, not "could not list ...")
        with pytest.raises(ProvisionError, match="no AWS credentials found"):
            operation()


def test_machines_are_created_once_and_lazily(project: Project, home: Path) -> None:
    """No boto3 session nor monitor before an operation runs (an aws config without
    credentials still builds a provider)."""
    provider = _provider(project)
    machines = provider.machines
    assert provider.machines is machines
    assert provider._session is None and provider._instance_monitor is None
