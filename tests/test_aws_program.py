"""The Pulumi program under Pulumi's mock runtime: no CLI, no credentials, no network.

Every test declares a stack through `offline` (mocks installed with preview=False before the
program runs, each resource's (type, name, inputs) recorded) and asserts on the recorded
inputs, which arrive camelCase as the engine would see them.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import stat
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pulumi_aws")

from cloudsend.config import load_config  # noqa: E402
from cloudsend.errors import ConfigError  # noqa: E402
from cloudsend.providers.aws import offline  # noqa: E402
from cloudsend.providers.aws.keys import stack_key  # noqa: E402
from cloudsend.providers.aws.spec import StackSpec, stack_spec  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
MY_IP = "198.51.100.23/32"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests test"
INSTANCE = "aws:ec2/instance:Instance"


def make_spec(doc: dict[str, Any], **kwargs: Any) -> StackSpec:
    config = load_config({"project": "demo", "provider": "aws", "region": "us-east-1", **doc})
    options: dict[str, Any] = {"public_key": KEY, "ssh_cidrs": [MY_IP], "now": NOW}
    options.update(kwargs)
    return stack_spec(config, **options)


def of_type(resources: list[dict[str, Any]], suffix: str) -> list[dict[str, Any]]:
    return [r for r in resources if r["type"].endswith(suffix)]


def instances(resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r["inputs"] for r in resources if r["type"] == INSTANCE}


@pytest.fixture(scope="module")
def mixed() -> tuple[StackSpec, offline.OfflinePlan]:
    spec = make_spec(
        {
            "instances": [
                {"type": "t3.small", "number": 2},
                {
                    "type": "c5.large",
                    "eco": True,
                    "max_bid": 0.05,
                    "eco_life": "6h",
                    "cpus": 1,
                    "disk_size": 64,
                    "disk_type": "io2",
                },
                {"type": "m5.large", "eco": True},
            ]
        }
    )
    return spec, offline.offline_plan(spec)


def test_instance_count_is_the_sum_of_number() -> None:
    spec = make_spec({"instances": [{"number": 3}, {"number": 4, "type": "m5.large"}, {}]})
    assert len(spec.instances) == 8
    found = instances(offline.declared_resources(spec))
    assert sorted(found) == sorted(
        f"demo-{e}-{n}" for e, k in ((0, 3), (1, 4), (2, 1)) for n in range(k)
    )
    assert {v["instanceType"] for v in found.values()} == {"t3.micro", "m5.large"}


def test_ssh_ingress_is_only_the_given_cidr(mixed: tuple[StackSpec, offline.OfflinePlan]) -> None:
    groups = of_type(mixed[1].resources, "SecurityGroup")
    assert groups
    for group in groups:
        ingress = group["inputs"]["ingress"]
        assert len(ingress) == 1
        rule = ingress[0]
        assert (rule["protocol"], rule["fromPort"], rule["toPort"]) == ("tcp", 22, 22)
        assert rule["cidrBlocks"] == [MY_IP]
        assert "0.0.0.0/0" not in json.dumps(ingress)
        assert "::/0" not in json.dumps(ingress)


def test_empty_ssh_cidrs_is_refused() -> None:
    with pytest.raises(ConfigError, match="SSH"):
        make_spec({"instances": [{}]}, ssh_cidrs=[])


def test_a_bad_cidr_is_refused() -> None:
    with pytest.raises(ConfigError, match="ssh_cidrs"):
        make_spec({"instances": [{}]}, ssh_cidrs=["198.51.100.23/24"])  # host bits set


def test_spot_options_exactly_when_eco(mixed: tuple[StackSpec, offline.OfflinePlan]) -> None:
    found = instances(mixed[1].resources)
    assert "instanceMarketOptions" not in found["demo-0-0"]
    assert "instanceMarketOptions" not in found["demo-0-1"]
    bid = found["demo-1-0"]["instanceMarketOptions"]
    assert bid["marketType"] == "spot"
    assert bid["spotOptions"] == {
        "spotInstanceType": "one-time",
        "instanceInterruptionBehavior": "terminate",
        "maxPrice": "0.05",
    }
    # No max_bid: the key is left out (EC2 then caps at the on-demand price).
    assert found["demo-2-0"]["instanceMarketOptions"]["spotOptions"] == {
        "spotInstanceType": "one-time",
        "instanceInterruptionBehavior": "terminate",
    }
    for name in ("demo-1-0", "demo-2-0"):
        assert found[name]["instanceInitiatedShutdownBehavior"] == "terminate"


def test_eco_life_ends_the_spot_instance(mixed: tuple[StackSpec, offline.OfflinePlan]) -> None:
    spec, plan = mixed
    eco = next(i for i in spec.instances if i.name == "demo-1-0")
    assert eco.valid_until == "2025-03-01T18:00:00Z"  # now + 6h, for reports
    found = instances(plan.resources)
    # EC2 ignores ValidUntil on one-time requests: the instance shuts itself down instead,
    # with a delay relative to boot so the program is the same at every run.
    assert "validUntil" not in found["demo-1-0"]["instanceMarketOptions"]["spotOptions"]
    assert "shutdown -P +360" in found["demo-1-0"]["userData"]
    assert "userData" not in found["demo-2-0"]  # no eco_life
    assert "userData" not in found["demo-0-0"]


def test_root_volume(mixed: tuple[StackSpec, offline.OfflinePlan]) -> None:
    found = instances(mixed[1].resources)
    custom = found["demo-1-0"]["rootBlockDevice"]
    assert (custom["volumeSize"], custom["volumeType"]) == (64, "io2")
    assert custom["encrypted"] is True and custom["deleteOnTermination"] is True
    default = found["demo-0-0"]["rootBlockDevice"]
    assert (default["volumeSize"], default["volumeType"]) == (20, "gp3")


def test_hdd_root_volume_is_refused() -> None:
    with pytest.raises(ConfigError, match="disk_type"):
        make_spec({"instances": [{"disk_type": "st1"}]})


def test_cpu_options_only_when_cpus_set(mixed: tuple[StackSpec, offline.OfflinePlan]) -> None:
    found = instances(mixed[1].resources)
    assert found["demo-1-0"]["cpuOptions"] == {"coreCount": 1, "threadsPerCore": 1}
    assert "cpuOptions" not in found["demo-0-0"]


def test_imdsv2_and_public_ip(mixed: tuple[StackSpec, offline.OfflinePlan]) -> None:
    for inputs in instances(mixed[1].resources).values():
        assert inputs["metadataOptions"]["httpTokens"] == "required"
        assert inputs["associatePublicIpAddress"] is True
        assert inputs["ami"] == offline.OFFLINE_AMI  # resolved through the SSM lookup


def _taggable(token: str) -> bool:
    """Does the pulumi_aws resource behind `token` ("aws:ec2/vpc:Vpc") accept tags?"""
    _, path, cls_name = token.split(":")
    module = importlib.import_module(f"pulumi_aws.{path.split('/')[0]}")
    cls = getattr(module, cls_name)
    return "tags" in inspect.signature(cls._internal_init).parameters


def test_tags_on_every_taggable_resource(mixed: tuple[StackSpec, offline.OfflinePlan]) -> None:
    custom = [r for r in mixed[1].resources if r["custom"] and r["type"].startswith("aws:")]
    taggable = [r for r in custom if _taggable(r["type"])]
    assert {r["type"].rsplit(":", 1)[1] for r in taggable} >= {
        "Vpc", "Subnet", "InternetGateway", "RouteTable", "SecurityGroup", "KeyPair", "Role",
        "InstanceProfile", "Instance",
    }  # fmt: skip
    for resource in taggable:
        tags = resource["inputs"].get("tags")
        assert tags, resource["type"]
        assert tags["cloudsend:project"] == "demo"
        assert tags["cloudsend:stack"] == "demo"
        assert tags["Name"]
    for inputs in instances(mixed[1].resources).values():
        assert inputs["rootBlockDevice"]["tags"]["cloudsend:stack"] == "demo"


def _actions(document: Any) -> list[str]:
    statements = document.get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    found: list[str] = []
    for statement in statements:
        action = statement.get("Action", [])
        found += [action] if isinstance(action, str) else list(action)
    return found


def test_iam_least_privilege_by_default(mixed: tuple[StackSpec, offline.OfflinePlan]) -> None:
    resources = mixed[1].resources
    types = {r["type"] for r in resources}
    assert "aws:iam/rolePolicy:RolePolicy" not in types  # no inline policy
    assert "aws:iam/policy:Policy" not in types
    assert "aws:iam/rolePolicyAttachment:RolePolicyAttachment" not in types  # nothing by default
    (role,) = of_type(resources, "iam/role:Role")
    assert "inlinePolicies" not in role["inputs"] or not role["inputs"]["inlinePolicies"]
    trust = json.loads(role["inputs"]["assumeRolePolicy"])
    (statement,) = trust["Statement"]
    assert statement["Principal"] == {"Service": "ec2.amazonaws.com"}
    assert _actions(trust) == ["sts:AssumeRole"]
    for resource in resources:
        for key in ("policy", "assumeRolePolicy"):
            text = resource["inputs"].get(key)
            if isinstance(text, str):
                assert not any("*" in a for a in _actions(json.loads(text)))


def test_policy_arns_become_attachments() -> None:
    arn = "arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess"
    spec = make_spec({"instances": [{}], "iam_policy_arns": [arn]})
    attachments = of_type(offline.declared_resources(spec), "RolePolicyAttachment")
    assert [a["inputs"]["policyArn"] for a in attachments] == [arn]
    with pytest.raises(ConfigError, match="iam_policy_arns"):
        make_spec({"instances": [{}], "iam_policy_arns": ["AmazonS3ReadOnlyAccess"]})


def test_key_pair_is_the_local_stack_key(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    pair = stack_key("demo", "demo", keys_dir=keys)
    assert stat.S_IMODE(pair.private_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert pair.public_openssh.startswith("ssh-ed25519 ")
    assert b"PRIVATE KEY" in pair.private_path.read_bytes()
    again = stack_key("demo", "demo", keys_dir=keys)
    assert again == pair  # created once, reused
    assert stack_key("demo", "other", keys_dir=keys).public_openssh != pair.public_openssh
    spec = make_spec({"instances": [{}]}, public_key=pair.public_openssh)
    resources = offline.declared_resources(spec)
    (key_pair,) = of_type(resources, "KeyPair")
    assert key_pair["inputs"]["publicKey"] == pair.public_openssh
    assert "PRIVATE" not in json.dumps(resources)


def test_stack_key_tightens_a_loose_private_key(tmp_path: Path) -> None:
    pair = stack_key("demo", "demo", keys_dir=tmp_path)
    pair.private_path.chmod(0o644)
    assert stack_key("demo", "demo", keys_dir=tmp_path) == pair
    assert stat.S_IMODE(pair.private_path.stat().st_mode) == 0o600


def test_concurrent_first_use_gives_one_key(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        pairs = list(pool.map(lambda _: stack_key("demo", "race", keys_dir=tmp_path), range(8)))
    assert len({p.public_openssh for p in pairs}) == 1
    assert sorted(f.name for f in tmp_path.iterdir()) == ["demo--race", "demo--race.pub"]


def test_multi_region_network_and_provider_per_region() -> None:
    spec = make_spec(
        {"instances": [{"number": 2}, {"region": "eu-west-1"}, {"region": "us-west-2"}]}
    )
    resources = offline.declared_resources(spec)
    regions = ["us-east-1", "eu-west-1", "us-west-2"]
    providers = of_type(resources, "pulumi:providers:aws")
    assert sorted(p["inputs"]["region"] for p in providers) == sorted(regions)
    assert sorted(r["name"] for r in of_type(resources, "cloudsend:aws:Network")) == sorted(
        f"demo-{r}" for r in regions
    )
    assert len(of_type(resources, "ec2/vpc:Vpc")) == 3
    assert len(of_type(resources, "SecurityGroup")) == 3
    assert len(of_type(resources, "iam/role:Role")) == 1  # IAM is global
    # Each instance is created through its own region's provider.
    for res in of_type(resources, "ec2/instance:Instance"):
        region = next(i.region for i in spec.instances if i.name == res["name"])
        assert f"::demo-{region}::" in res["provider"]


def test_given_vpc_uses_its_public_subnet() -> None:
    spec = make_spec({"instances": [{"cloud_id": "vpc-0abc"}]})
    assert spec.vpc_id == "vpc-0abc"
    resources = offline.declared_resources(spec)
    assert not of_type(resources, "ec2/vpc:Vpc") and not of_type(resources, "Subnet")
    (group,) = of_type(resources, "SecurityGroup")
    assert group["inputs"]["vpcId"] == "vpc-0abc"
    (inst,) = instances(resources).values()
    assert inst["subnetId"] == "subnet-offline-vpc-0abc"


def test_img_id_and_given_amis_skip_the_lookup() -> None:
    spec = make_spec(
        {"instances": [{"img_id": "ami-123", "img_username": "ec2-user"}, {}]},
        amis={"us-east-1": "ami-resolved"},
    )
    found = instances(offline.declared_resources(spec))
    assert found["demo-0-0"]["ami"] == "ami-123"
    assert found["demo-1-0"]["ami"] == "ami-resolved"
    assert spec.instances[0].username == "ec2-user"
    # ami.ubuntu_amis keys its answer by (region, type).
    by_type = make_spec({"instances": [{}]}, amis={("us-east-1", "t3.micro"): "ami-t3"})
    assert by_type.instances[0].ami == "ami-t3"


def test_a_newer_latest_image_does_not_replace_instances() -> None:
    from cloudsend.providers.aws.program import instance_options

    pinned, latest = make_spec({"instances": [{"img_id": "ami-123"}, {}]}).instances
    assert (pinned.ami_pinned, latest.ami_pinned) == (True, False)
    assert not instance_options(pinned, None).ignore_changes
    assert instance_options(latest, None).ignore_changes == ["ami"]


def test_outputs_exported(mixed: tuple[StackSpec, offline.OfflinePlan]) -> None:
    exported = mixed[1].outputs["instances"]
    assert set(exported) == {i.name for i in mixed[0].instances}
    one = exported["demo-0-0"]
    assert one["region"] == "us-east-1" and one["user"] == "ubuntu"
    assert one["id"].startswith("i-") and one["public_ip"].startswith("203.0.113.")
    assert one["private_ip"].startswith("10.0.")


def test_offline_twice_in_one_process_is_consistent() -> None:
    spec = make_spec({"instances": [{"number": 2, "eco": True, "eco_life": 2}]})
    first = offline.offline_plan(spec)
    second = offline.offline_plan(spec)
    assert first.resources == second.resources
    assert first.outputs == second.outputs
    assert len(instances(first.resources)) == 2


def test_offline_from_async_code_and_errors_propagate() -> None:
    spec = make_spec({"instances": [{}]})

    async def caller() -> list[dict[str, Any]]:
        return offline.declared_resources(spec)  # a running loop in this thread

    assert len(instances(asyncio.run(caller()))) == 1

    def broken() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        offline.run_mocked(broken, offline.OfflineMocks(), project="p", stack="s")
    assert offline.declared_resources(spec)  # the runtime is still usable after a failure


def test_region_is_required() -> None:
    config = load_config({"project": "demo", "provider": "aws", "instances": [{}]})
    with pytest.raises(ConfigError, match="region"):
        stack_spec(config, public_key=KEY, ssh_cidrs=[MY_IP])
    spec = stack_spec(config, public_key=KEY, ssh_cidrs=[MY_IP], default_region="eu-central-1")
    assert spec.region == "eu-central-1" and spec.instances[0].region == "eu-central-1"


def test_graviton_types_get_the_arm_image() -> None:
    spec = make_spec({"instances": [{"type": "t4g.small"}, {"type": "g4dn.xlarge"}]})
    assert [i.arch for i in spec.instances] == ["arm64", "amd64"]
    assert "/arm64/" in spec.instances[0].ssm_parameter


def test_pulumi_cli_entry(tmp_path: Path) -> None:
    """stacks/__main__.py, as `pulumi up` would run it, declares the same instances."""
    (tmp_path / "cloudsend.yaml").write_text(
        "project: demo\nprovider: aws\ninstances:\n  - number: 2\n    type: t3.small\n"
    )
    mocks = offline.OfflineMocks()
    home_keys = tmp_path / "keys"

    def program() -> None:
        import runpy

        from cloudsend.providers.aws import keys

        original = keys.default_keys_dir
        keys.default_keys_dir = lambda: home_keys  # never touch the real ~/.cloudsend
        try:
            runpy.run_path(str(REPO / "stacks" / "__main__.py"), run_name="__main__")
        finally:
            keys.default_keys_dir = original

    outputs = offline.run_mocked(
        program,
        mocks,
        project="demo",  # Pulumi.yaml's name must be the config's project (slug)
        stack="dev",
        config={
            "cloudsend:config": str(tmp_path / "cloudsend.yaml"),
            "cloudsend:sshCidrs": json.dumps([MY_IP]),
            "aws:region": "eu-west-1",
        },
    )
    assert sorted(outputs["instances"]) == ["demo-0-0", "demo-0-1"]
    assert {v["region"] for v in outputs["instances"].values()} == {"eu-west-1"}
    (key_pair,) = [r for r in mocks.records if r["type"].endswith("KeyPair")]
    assert key_pair["inputs"]["tags"]["cloudsend:stack"] == "dev"
    assert key_pair["inputs"]["publicKey"] == stack_key("demo", "dev", home_keys).public_openssh


def test_pulumi_project_files() -> None:
    import yaml

    project = yaml.safe_load((REPO / "Pulumi.yaml").read_text())
    assert project["name"] == "cloudsend"
    assert project["runtime"]["name"] == "python"
    assert (REPO / project["main"] / "__main__.py").is_file()
    stack = yaml.safe_load((REPO / project["stackConfigDir"] / "Pulumi.dev.yaml").read_text())
    assert "cloudsend:config" in stack["config"]
    from cloudsend.providers.aws import project_dir

    assert project_dir() == REPO


def test_pulumi_cli_entry_refuses_another_project_name(tmp_path: Path) -> None:
    """Under a Pulumi project other than the config's slug, the CLI would keep a second state
    for the machines `cloudsend up` manages: the entry stops before declaring anything."""
    import runpy

    import pulumi

    (tmp_path / "cloudsend.yaml").write_text(
        "project: My_Demo\nprovider: aws\ninstances:\n  - type: t3.small\n"
    )
    mocks = offline.OfflineMocks()
    config = {
        "cloudsend:config": str(tmp_path / "cloudsend.yaml"),
        "cloudsend:sshCidrs": json.dumps([MY_IP]),
        "cloudsend:publicKey": KEY,
        "aws:region": "eu-west-1",
    }

    def program() -> None:
        runpy.run_path(str(REPO / "stacks" / "__main__.py"), run_name="__main__")

    with pytest.raises(pulumi.RunError, match="name: my-demo"):
        offline.run_mocked(program, mocks, project="cloudsend", stack="dev", config=config)
    assert mocks.records == []
    outputs = offline.run_mocked(program, mocks, project="my-demo", stack="dev", config=config)
    assert sorted(outputs["instances"]) == ["my-demo-0-0"]


def test_engine_provider_and_program_agree_on_the_project_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloudsend.config import load_config
    from cloudsend.providers.aws.engine import Engine
    from cloudsend.providers.aws.provider import AwsProvider

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = load_config(
        {
            "project": "My.Big_Exp",
            "provider": "aws",
            "region": "eu-west-1",
            "ssh_cidrs": [MY_IP],
            "instances": [{"type": "t3.small", "img_id": "ami-12345678"}],
        }
    )
    provider = AwsProvider(config)
    spec = provider.plan(offline=True)
    engine = provider.engine(spec)
    assert provider.project == spec.project == engine.project == "my-big-exp"
    assert provider.stack == spec.stack == engine.stack_name == "my-big-exp"
    assert spec.tags["cloudsend:project"] == "my-big-exp"
    # an offline plan deploys nothing: it makes no key (issue 10)
    assert not (tmp_path / "home" / ".cloudsend" / "keys").exists()
    # the key the instances get is the one the provider logs in with (and stacks/ would use)
    stack_key(provider.project, provider.stack)
    keys = sorted(p.name for p in (tmp_path / "home" / ".cloudsend" / "keys").iterdir())
    assert keys == ["my-big-exp--my-big-exp", "my-big-exp--my-big-exp.pub"]
    # any caller of the engine gets a valid Pulumi project name
    assert Engine("My.Big_Exp", "dev", lambda: None, plugins={}).project == "my-big-exp"
