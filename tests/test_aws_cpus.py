"""`cpus` → EC2 CPU options, checked against the types' real limits as EC2 reports them
(describe_instance_types on a real moto server, which serves AWS's own type catalogue)."""

from __future__ import annotations

from typing import Any

import pytest

from cloudsend.config import load_config
from cloudsend.errors import ConfigError
from cloudsend.providers.aws.cpus import fit_cpu_options, vcpu_info
from cloudsend.providers.aws.spec import StackSpec, stack_spec

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests test"


def _spec(instances: list[dict[str, Any]]) -> StackSpec:
    config = load_config(
        {"project": "cpus", "provider": "aws", "region": "us-east-1", "instances": instances}
    )
    return stack_spec(config, public_key=KEY, ssh_cidrs=["198.51.100.23/32"])


def _fit(moto_aws: Any, instances: list[dict[str, Any]]) -> tuple[StackSpec, list[str]]:
    spec = _spec(instances)
    infos = vcpu_info(moto_aws.session(), {(i.region, i.type) for i in spec.instances})
    return fit_cpu_options(spec, infos)


def test_valid_core_counts_are_kept(moto_aws: Any) -> None:
    spec, notices = _fit(moto_aws, [{"type": "c5.2xlarge", "cpus": 2}, {"type": "c5.xlarge"}])
    assert [i.cpus for i in spec.instances] == [2, None] and notices == []


def test_a_type_without_cpu_options_keeps_its_vcpus_with_a_notice(moto_aws: Any) -> None:
    spec, notices = _fit(moto_aws, [{"type": "t2.medium", "cpus": 1, "number": 2}])
    assert [i.cpus for i in spec.instances] == [None, None]  # no cpu_options declared
    assert notices == [
        "instances[0] (t2.medium, cpus: 1): t2.medium does not allow CPU options; its "
        "instances keep all 2 vCPUs"
    ]


def test_more_cpus_than_the_type_has_is_a_config_error(moto_aws: Any) -> None:
    with pytest.raises(ConfigError, match=r"instances\[0\] \(c5.large, cpus: 8\).*only 2 vCPUs"):
        _fit(moto_aws, [{"type": "c5.large", "cpus": 8}])


def test_a_core_count_the_type_does_not_offer_is_a_config_error(moto_aws: Any) -> None:
    infos = vcpu_info(moto_aws.session(), {("us-east-1", "c5.4xlarge")})
    cores = infos[("us-east-1", "c5.4xlarge")]["ValidCores"]
    odd = next(n for n in range(1, 17) if n not in cores)
    with pytest.raises(ConfigError, match="offers") as err:
        _fit(moto_aws, [{"type": "c5.4xlarge", "cpus": odd}])
    assert str(cores[0]) in err.value.message and err.value.hint


def test_an_unknown_type_is_a_provision_error(moto_aws: Any) -> None:
    from cloudsend.errors import ProvisionError

    with pytest.raises(ProvisionError, match="cannot read the CPU limits"):
        vcpu_info(moto_aws.session(), {("us-east-1", "zz9.huge")})


def test_the_online_plan_applies_the_check(
    moto_aws: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AwsProvider.plan() asks EC2 and says what it dropped (the AMI lookup is moto's too)."""
    from cloudsend.providers.aws.provider import AwsProvider

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = load_config(
        {
            "project": "cpus",
            "provider": "aws",
            "region": "us-east-1",
            "ssh_cidrs": ["198.51.100.23/32"],
            "instances": [{"type": "t2.medium", "cpus": 1}, {"type": "c5.2xlarge", "cpus": 2}],
        }
    )
    provider = AwsProvider(config)
    spec = provider.plan()
    assert [i.cpus for i in spec.instances] == [None, 2]
    assert len(provider.plan_notices) == 1 and "t2.medium" in provider.notices()[0]
