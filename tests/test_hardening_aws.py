"""Issue 10, the aws items: the profile reaches Pulumi, io1/io2 IOPS, availability zones, the
pulumi floor, max_bid, the AMI output in the clear, a refreshed preview, `down --keep`, and
credentials errors.

Real components only: the program under Pulumi's mock runtime (recorded inputs), boto3 against
a real moto server (tests/moto_harness.py), and the real Automation API driving a stand-in
`pulumi` executable that records what the SDK asked of it (the real CLI cannot be installed
here; the stand-in never answers for Pulumi, it only fails the operation after recording).
"""

from __future__ import annotations

import json
import re
import shlex
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pulumi_aws")

from cloudsend.config import load_config  # noqa: E402
from cloudsend.errors import ConfigError, ProvisionError  # noqa: E402
from cloudsend.providers.aws import offline  # noqa: E402
from cloudsend.providers.aws.spec import StackSpec, stack_spec  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests test"
INSTANCE = "aws:ec2/instance:Instance"
PROVIDER = "pulumi:providers:aws"


def make_spec(doc: dict[str, Any], **kwargs: Any) -> StackSpec:
    config = load_config({"project": "demo", "provider": "aws", "region": "us-east-1", **doc})
    options: dict[str, Any] = {"public_key": KEY, "ssh_cidrs": ["198.51.100.23/32"], "now": NOW}
    options.update(kwargs)
    return stack_spec(config, **options)


def instances(resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r["inputs"] for r in resources if r["type"] == INSTANCE}


def _stub_pulumi(bin_dir: Path, record: Path) -> None:
    """A `pulumi` executable that records each call (AWS_PROFILE and argv, one JSON line),
    reports a version, accepts the set-up commands and fails preview/up/destroy/refresh the
    way the real CLI fails (exit 255, a message on stderr)."""
    script = bin_dir / "pulumi"
    script.write_text(
        "#!/bin/sh\n"
        f"{shlex.quote(__import__('sys').executable)} -c 'import json, os, sys; "
        "print(json.dumps({\"profile\": os.environ.get(\"AWS_PROFILE\"), \"argv\": sys.argv[1:]}))'"
        f' "$@" >> {shlex.quote(str(record))}\n'
        'for a in "$@"; do case "$a" in\n'
        "  version) echo v3.272.0; exit 0;;\n"
        "  output) echo '{}'; exit 0;;\n"  # `stack output --json`: a stack without outputs
        '  preview|up|destroy|refresh) echo "error: stand-in pulumi: no engine" >&2; exit 255;;\n'
        "esac; done\nexit 0\n"
    )
    script.chmod(0o755)


def _calls(record: Path) -> list[dict[str, Any]]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines() if line.strip()]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE", "PULUMI_BACKEND_URL"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def stub_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-in pulumi first on PATH; returns the file its calls are recorded in."""
    bin_dir = tmp_path / "stub-bin"
    bin_dir.mkdir()
    record = tmp_path / "pulumi-calls.jsonl"
    _stub_pulumi(bin_dir, record)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return record


def _write_profile(moto_aws: Any, name: str, region: str = "eu-west-1") -> None:
    """A named profile in the (per-test) AWS config files the moto fixture points boto3 at."""
    import os

    Path(os.environ["AWS_CONFIG_FILE"]).write_text(f"[profile {name}]\nregion = {region}\n")
    Path(os.environ["AWS_SHARED_CREDENTIALS_FILE"]).write_text(
        f"[{name}]\naws_access_key_id = testing\naws_secret_access_key = testing\n"
    )


def _aws_provider(tmp_path: Path, doc: str) -> Any:
    from cloudsend.providers.aws.provider import AwsProvider

    path = tmp_path / "proj" / "cloudsend.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(doc)
    return AwsProvider(load_config(path))


# -- 1. profile: reaches the Pulumi providers, the engine's environment and an s3 backend ------


def test_profile_is_set_on_every_aws_provider_resource() -> None:
    spec = make_spec(
        {"profile": "team", "instances": [{}, {"region": "eu-west-1"}]}, default_region=None
    )
    providers = [r for r in offline.declared_resources(spec) if r["type"] == PROVIDER]
    assert {r["inputs"].get("region") for r in providers} == {"us-east-1", "eu-west-1"}
    assert all(r["inputs"].get("profile") == "team" for r in providers), providers
    # without profile: none set (the default chain, as boto3 uses it)
    plain = make_spec({"instances": [{}]})
    assert all(
        "profile" not in r["inputs"]
        for r in offline.declared_resources(plain)
        if r["type"] == PROVIDER
    )


@pytest.mark.parametrize(
    ("url", "profile", "expected"),
    [
        ("s3://bucket/prefix", "team", "s3://bucket/prefix?profile=team"),
        ("s3://b?region=eu-west-1", "team", "s3://b?region=eu-west-1&profile=team"),
        ("s3://b?profile=other", "team", "s3://b?profile=other"),  # the URL's own wins
        ("s3://b", None, "s3://b"),
        ("file:///tmp/state", "team", "file:///tmp/state"),
        ("s3://b", "my team", "s3://b?profile=my%20team"),
    ],
)
def test_backend_for_profile(url: str, profile: str | None, expected: str) -> None:
    from cloudsend.providers.aws.engine import backend_for_profile

    assert backend_for_profile(url, profile) == expected


def test_online_preview_runs_pulumi_with_the_profile_and_refreshes(
    moto_aws: Any, home: Path, stub_cli: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Items 1 and 7 through the provider: every pulumi call gets AWS_PROFILE, the s3 backend
    names the profile, and the preview is a refreshed one (`pulumi preview --refresh`)."""
    _write_profile(moto_aws, "team")
    # a shared (s3://) backend needs a secrets provider the team shares (issue 11)
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "team-passphrase")
    provider = _aws_provider(
        tmp_path,
        "project: prof\nprovider: aws\nprofile: team\nregion: us-east-1\n"
        "ssh_cidrs: [198.51.100.7/32]\nstate_backend: s3://state-bucket/cs\n"
        "instances:\n  - {type: t3.micro}\njobs:\n  - run_command: 'true'\n",
    )
    spec = provider.plan()
    assert spec.profile == "team"
    assert provider.engine(spec).backend_url == "s3://state-bucket/cs?profile=team"
    with pytest.raises(ProvisionError, match="pulumi preview failed"):
        provider.preview()
    calls = [c for c in _calls(stub_cli) if c["argv"] != ["version"]]  # the SDK's own probe
    assert calls and all(c["profile"] == "team" for c in calls), calls
    previews = [c["argv"] for c in calls if "preview" in c["argv"]]
    assert previews and "--refresh" in previews[0], calls


def test_engine_preview_without_refresh_by_default(home: Path, stub_cli: Path) -> None:
    from cloudsend.providers.aws.engine import Engine

    def program() -> None:
        pass

    engine = Engine("demo", "dev", program, plugins={})
    with pytest.raises(ProvisionError):
        engine.preview()
    with pytest.raises(ProvisionError):
        engine.preview(refresh=True)
    previews = [c["argv"] for c in _calls(stub_cli) if "preview" in c["argv"]]
    assert len(previews) == 2
    assert "--refresh" not in previews[0] and "--refresh" in previews[1]


# -- 2. io1/io2 root disks get Iops ---------------------------------------------------------------


def _root(spec: StackSpec) -> dict[str, Any]:
    (inputs,) = instances(offline.declared_resources(spec)).values()
    return dict(inputs["rootBlockDevice"])


@pytest.mark.parametrize(
    ("disk", "iops"),
    [
        ({"disk_type": "io2"}, 3000),  # default, within io2's 1000/GB on 20 GB
        ({"disk_type": "io1"}, 1000),  # 50/GB on the default 20 GB
        ({"disk_type": "io1", "disk_size": 100}, 3000),
        ({"disk_type": "io2", "disk_iops": 8000, "disk_size": 50}, 8000),
        ({"disk_type": "gp3", "disk_iops": 6000}, 6000),
        ({"disk_type": "gp3"}, None),  # gp3's 3000 is included: nothing to provision
        ({}, None),
    ],
)
def test_root_volume_iops(disk: dict[str, Any], iops: int | None) -> None:
    root = _root(make_spec({"instances": [disk]}))
    assert root.get("iops") == iops


@pytest.mark.parametrize(
    ("disk", "words"),
    [
        ({"disk_type": "gp2", "disk_iops": 3000}, "has no provisioned IOPS"),
        ({"disk_type": "io1", "disk_iops": 5000}, "EC2 allows 100 to 1000"),
        ({"disk_type": "io1", "disk_size": 1}, "EC2 allows 100 to 50"),
    ],
)
def test_impossible_iops_are_refused(disk: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)) as info:
        make_spec({"instances": [disk]})
    assert "instances[0].disk_iops" in info.value.message and info.value.hint


def test_disk_iops_bounds_in_the_config() -> None:
    with pytest.raises(ConfigError, match="disk_iops"):
        load_config({"provider": "aws", "instances": [{"disk_type": "io2", "disk_iops": 10}]})


# -- 4. the pulumi floor has LocalWorkspaceOptions(pulumi_command=...) ----------------------------


def test_pulumi_floor_has_pulumi_command() -> None:
    text = (REPO / "pyproject.toml").read_text()  # (tomllib is 3.11+; we support 3.10)
    (spec,) = re.findall(r'^aws = \[.*?"(pulumi>=[0-9.]+)"', text, re.M)
    floor = tuple(int(x) for x in spec.split(">=")[1].split("."))
    # engine.py passes LocalWorkspaceOptions(pulumi_command=...), new in pulumi 3.104.0
    assert floor >= (3, 104), spec
    assert "pulumi_command=" in (REPO / "cloudsend/providers/aws/engine.py").read_text()


# -- 5. max_bid below EC2's smallest price ------------------------------------------------------


@pytest.mark.parametrize("bid", [0.0005, 0.00099, 1e-9])
def test_max_bid_below_a_tenth_of_a_cent_is_refused(bid: float) -> None:
    with pytest.raises(ConfigError, match="max_bid") as info:
        load_config({"provider": "aws", "instances": [{"eco": True, "max_bid": bid}]})
    assert "0.001" in str(info.value)


def test_max_bid_of_a_tenth_of_a_cent_is_accepted() -> None:
    config = load_config({"provider": "aws", "instances": [{"eco": True, "max_bid": 0.001}]})
    assert config.instances[0].max_bid == pytest.approx(0.001)


# -- 6. the AMI from SSM is not a secret --------------------------------------------------------


class _SecretValueMocks(offline.OfflineMocks):
    """Answers the SSM lookup as pulumi-aws does for a plain String parameter: `value` (which
    the provider marks secret) and `insecureValue` (never secret); records the call args."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(names)
        self.ssm_calls: list[dict[str, Any]] = []

    def call(self, args: Any) -> tuple[dict[Any, Any], list[tuple[str, str]]]:
        if args.token == "aws:ssm/getParameter:getParameter":
            self.ssm_calls.append(dict(args.args))
            name = args.args.get("name", "")
            return {
                "name": name,
                "id": name,
                "type": "String",
                "value": "ami-through-the-secret-value",
                "insecureValue": "ami-0123456789abcdef0",
            }, []
        return super().call(args)


def test_latest_ubuntu_comes_from_the_insecure_value() -> None:
    spec = make_spec({"instances": [{"type": "t3.micro"}]})
    mocks = _SecretValueMocks([i.name for i in spec.instances])
    plan = offline.offline_plan(spec, mocks)
    (inputs,) = instances(plan.resources).values()
    assert inputs["ami"] == "ami-0123456789abcdef0"
    assert mocks.ssm_calls and all(c.get("withDecryption") is False for c in mocks.ssm_calls)


# -- 20. credentials problems get their own message --------------------------------------------


@pytest.fixture
def no_credentials(moto_aws: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """moto's account, but a credentials chain that finds nothing (no env keys, empty ~/.aws
    files, no instance metadata)."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    return moto_aws


def _assert_credentials_message(error: ProvisionError, *, secrets: tuple[str, ...] = ()) -> None:
    text = f"{error.message}\n{error.hint}"
    assert "not offered" not in text and "type name" not in text, text
    assert "aws configure" in (error.hint or "") and "AWS_ACCESS_KEY_ID" in (error.hint or "")
    for secret in secrets:
        assert secret not in text


def test_missing_credentials_are_not_an_unknown_instance_type(no_credentials: Any) -> None:
    from cloudsend.providers.aws import ami
    from cloudsend.providers.aws.session import aws_session

    with pytest.raises(ProvisionError) as info:
        ami.instance_arch(aws_session(None, "eu-west-1"), "eu-west-1", "c5.xlarge")
    assert info.value.message.startswith("no AWS credentials found")
    _assert_credentials_message(info.value)


def test_provider_plan_without_credentials(no_credentials: Any, tmp_path: Path) -> None:
    provider = _aws_provider(
        tmp_path,
        "project: nocred\nprovider: aws\nregion: eu-west-1\nssh_cidrs: [198.51.100.7/32]\n"
        "instances:\n  - {type: c5.xlarge}\njobs:\n  - run_command: 'true'\n",
    )
    with pytest.raises(ProvisionError) as info:
        provider.plan()
    assert "no AWS credentials found (the default credentials chain)" in info.value.message
    _assert_credentials_message(info.value)
    # the watch loop's machine operations say the same
    with pytest.raises(ProvisionError, match="no AWS credentials found"):
        provider.machines.poll()


def test_partial_credentials_never_print_the_key(
    no_credentials: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLESECRET1234")
    provider = _aws_provider(
        tmp_path,
        "project: half\nprovider: aws\nregion: eu-west-1\nssh_cidrs: [198.51.100.7/32]\n"
        "instances:\n  - {type: c5.xlarge}\njobs:\n  - run_command: 'true'\n",
    )
    with pytest.raises(ProvisionError) as info:
        provider.plan()
    assert "incomplete AWS credentials in env: AWS_SECRET_ACCESS_KEY is missing" in str(
        info.value
    )
    _assert_credentials_message(info.value, secrets=("AKIAEXAMPLESECRET1234",))


def test_unknown_profile(moto_aws: Any, tmp_path: Path) -> None:
    provider = _aws_provider(
        tmp_path,
        "project: prof\nprovider: aws\nprofile: nosuch\nregion: eu-west-1\n"
        "ssh_cidrs: [198.51.100.7/32]\ninstances:\n  - {type: c5.xlarge}\n"
        "jobs:\n  - run_command: 'true'\n",
    )
    with pytest.raises(ProvisionError, match="AWS profile 'nosuch' not found") as info:
        provider.plan()
    assert "list-profiles" in (info.value.hint or "")


def _client_error(code: str, message: str = "sensitive? no: AWS texts carry no key") -> Exception:
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": message}}, "DescribeInstances")


@pytest.mark.parametrize(
    ("code", "words"),
    [
        ("ExpiredToken", "the AWS credentials have expired"),
        ("RequestExpired", "the AWS credentials have expired"),
        ("InvalidClientTokenId", "AWS refused the credentials"),
        ("AuthFailure", "AWS refused the credentials"),
        ("UnauthorizedOperation", None),  # a permission, not the credentials
        ("InvalidInstanceType", None),
    ],
)
def test_credentials_error_table(code: str, words: str | None) -> None:
    from cloudsend.providers.aws.session import credentials_error

    cause = _client_error(code)
    # as the lookups raise it: a ProvisionError `from` the botocore error
    try:
        try:
            raise cause
        except Exception as exc:
            raise ProvisionError(f"instance type 'c5.xlarge' is not offered: {exc}") from exc
    except ProvisionError as wrapped:
        error = credentials_error(wrapped, "team")
    if words is None:
        assert error is None
    else:
        assert error is not None and error.message.startswith(words)
        assert "profile 'team'" in error.message and "DescribeInstances" in error.message
        assert "aws configure --profile team" in (error.hint or "")


def test_sso_and_process_credentials() -> None:
    from botocore.exceptions import TokenRetrievalError, UnauthorizedSSOTokenError

    from cloudsend.providers.aws.session import credentials_error

    sso = credentials_error(UnauthorizedSSOTokenError(), "sso-dev")
    assert sso is not None and "SSO login has expired" in sso.message
    assert "aws sso login --profile sso-dev" in (sso.hint or "")
    token = credentials_error(TokenRetrievalError(provider="sso", error_msg="x"), None)
    assert token is not None and "could not be obtained from sso" in token.message


# -- 3. availability zones that offer the type, instances spread over them ---------------------


def _zoned(spec: StackSpec) -> list[tuple[str, str | None]]:
    return [(i.name, i.zone) for i in spec.instances]


def test_place_in_zones_round_robin_per_region_and_type() -> None:
    from cloudsend.providers.aws.spec import place_in_zones

    spec = make_spec(
        {
            "instances": [
                {"type": "c5.xlarge", "number": 4},
                {"type": "p4d.24xlarge"},
                {"type": "c5.xlarge", "number": 2, "region": "eu-west-1"},
                {"type": "t3.micro"},  # no zones known: EC2 picks (as offline)
            ]
        }
    )
    choices = {
        ("us-east-1", "c5.xlarge"): ["us-east-1a", "us-east-1b", "us-east-1c"],
        ("us-east-1", "p4d.24xlarge"): ["us-east-1c"],
        ("eu-west-1", "c5.xlarge"): ["eu-west-1b", "eu-west-1c"],
    }
    placed = place_in_zones(spec, choices)
    assert _zoned(placed) == [
        ("demo-0-0", "us-east-1a"),
        ("demo-0-1", "us-east-1b"),
        ("demo-0-2", "us-east-1c"),
        ("demo-0-3", "us-east-1a"),
        ("demo-1-0", "us-east-1c"),
        ("demo-2-0", "eu-west-1b"),
        ("demo-2-1", "eu-west-1c"),
        ("demo-3-0", None),
    ]
    assert placed.zones("us-east-1") == ["us-east-1a", "us-east-1b", "us-east-1c"]
    assert place_in_zones(spec, choices) == placed  # the same spec lands the same way


def test_own_vpc_gets_a_subnet_per_zone_and_instances_use_their_zones() -> None:
    from cloudsend.providers.aws.spec import place_in_zones

    spec = place_in_zones(
        make_spec({"instances": [{"type": "c5.xlarge", "number": 3}]}),
        {("us-east-1", "c5.xlarge"): ["us-east-1a", "us-east-1c"]},
    )
    resources = offline.declared_resources(spec)
    subnets = {r["name"]: r["inputs"] for r in resources if r["type"] == "aws:ec2/subnet:Subnet"}
    assert {n: (i["availabilityZone"], i["cidrBlock"]) for n, i in subnets.items()} == {
        "demo-us-east-1-subnet-us-east-1a": ("us-east-1a", "10.0.16.0/20"),
        "demo-us-east-1-subnet-us-east-1c": ("us-east-1c", "10.0.48.0/20"),
    }
    # (never 10.0.0.0/20: the zone-less subnet of a stack made before zones keeps it until
    # its instances have moved, and EC2 refuses two subnets with one range)
    assert all(i["mapPublicIpOnLaunch"] for i in subnets.values())
    associations = [r for r in resources if r["type"].endswith("RouteTableAssociation")]
    assert len(associations) == 2
    by_zone = {i.name: i.zone for i in spec.instances}
    for name, inputs in instances(resources).items():
        subnet_name = f"demo-us-east-1-subnet-{by_zone[name]}"
        expected = _offline_id("aws:ec2/subnet:Subnet", subnet_name)
        assert inputs["subnetId"] == expected, (name, inputs["subnetId"])


def _offline_id(typ: str, name: str) -> str:
    import hashlib

    digest = hashlib.sha256(f"{typ}|{name}".encode()).hexdigest()[:12]
    return f"{typ.rsplit(':', 1)[-1].lower()}-offline-{digest}"


def test_given_vpc_takes_a_public_subnet_in_each_zone() -> None:
    from cloudsend.providers.aws.spec import place_in_zones

    spec = place_in_zones(
        make_spec({"instances": [{"cloud_id": "vpc-0abc", "number": 2}]}),
        {("us-east-1", "t3.micro"): ["us-east-1a", "us-east-1b"]},
    )
    found = instances(offline.declared_resources(spec))
    assert found["demo-0-0"]["subnetId"] == "subnet-offline-vpc-0abc-us-east-1a"
    assert found["demo-0-1"]["subnetId"] == "subnet-offline-vpc-0abc-us-east-1b"


def _zone_provider(tmp_path: Path, instances_yaml: str, region: str = "eu-west-1") -> Any:
    return _aws_provider(
        tmp_path,
        f"project: zones\nprovider: aws\nregion: {region}\nssh_cidrs: [198.51.100.7/32]\n"
        f"instances:\n{instances_yaml}jobs:\n  - run_command: 'true'\n",
    )


def test_plan_places_instances_in_zones_that_offer_their_type(
    moto_aws: Any, home: Path, tmp_path: Path
) -> None:
    # moto's offerings are AWS's: in eu-west-1, c5.xlarge is in a, b and c, p4d.24xlarge in c
    provider = _zone_provider(
        tmp_path,
        "  - {type: c5.xlarge, number: 4, img_id: ami-12345678}\n"
        "  - {type: p4d.24xlarge, img_id: ami-12345678}\n",
    )
    spec = provider.plan()
    assert _zoned(spec) == [
        ("zones-0-0", "eu-west-1a"),
        ("zones-0-1", "eu-west-1b"),
        ("zones-0-2", "eu-west-1c"),
        ("zones-0-3", "eu-west-1a"),
        ("zones-1-0", "eu-west-1c"),
    ]


def test_plan_refuses_a_type_no_zone_offers(moto_aws: Any, home: Path, tmp_path: Path) -> None:
    provider = _zone_provider(tmp_path, "  - {type: c5.superbig, img_id: ami-12345678}\n")
    with pytest.raises(ProvisionError) as info:
        provider.plan()
    assert info.value.message == (
        "instances[0]: instance type 'c5.superbig' is not offered in any availability "
        "zone of eu-west-1"
    )


def test_plan_with_cloud_id_uses_the_zones_of_its_public_subnets(
    moto_aws: Any, home: Path, tmp_path: Path
) -> None:
    ec2 = moto_aws.client("ec2", "eu-west-1")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    public = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24", AvailabilityZone="eu-west-1b")
    ec2.modify_subnet_attribute(
        SubnetId=public["Subnet"]["SubnetId"], MapPublicIpOnLaunch={"Value": True}
    )
    ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.2.0/24", AvailabilityZone="eu-west-1c")  # private
    provider = _zone_provider(
        tmp_path, f"  - {{type: c5.xlarge, number: 2, cloud_id: {vpc}, img_id: ami-12345678}}\n"
    )
    assert _zoned(provider.plan()) == [("zones-0-0", "eu-west-1b"), ("zones-0-1", "eu-west-1b")]
    # p4d.24xlarge is only in eu-west-1c, where this VPC has no public subnet
    provider = _zone_provider(
        tmp_path, f"  - {{type: p4d.24xlarge, cloud_id: {vpc}, img_id: ami-12345678}}\n"
    )
    with pytest.raises(ProvisionError, match="no subnet giving public IPs there") as info:
        provider.plan()
    assert "eu-west-1c" in info.value.message and "eu-west-1b" in info.value.message


# -- 14. down --keep on aws: stop the instances, keep the stack; refused for spot ------------

LIFE_TAGS = {"cloudsend:project": "keep", "cloudsend:stack": "keep"}
LIFE_NAMES = ["keep-0-0", "keep-0-1"]


def _keep_provider(tmp_path: Path, *, eco: bool) -> Any:
    return _aws_provider(
        tmp_path,
        "project: keep\nprovider: aws\nregion: us-east-1\nssh_cidrs: [198.51.100.7/32]\n"
        f"instances:\n  - {{type: t3.micro, number: 2, img_id: ami-12345678, eco: {eco}}}\n"
        "jobs:\n  - run_command: 'true'\n",
    )


def _engine_stub(monkeypatch: pytest.MonkeyPatch, moto_aws: Any, ids: list[str]) -> Any:
    from cloudsend.providers.aws.provider import AwsProvider
    from tests.test_aws_provider_hosts import EngineStub

    outputs = {
        "instances": {
            n: {"id": i, "public_ip": "192.0.2.1", "region": "us-east-1", "user": "ubuntu"}
            for n, i in zip(LIFE_NAMES, ids, strict=True)
        }
    }
    stub = EngineStub(outputs, on_destroy=lambda: [moto_aws.terminate(i) for i in ids])
    monkeypatch.setattr(AwsProvider, "engine", lambda self, spec: stub)
    return stub


def test_down_keep_stops_the_instances_and_keeps_the_stack(
    moto_aws: Any, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = moto_aws.run_instances(2, LIFE_TAGS, names=LIFE_NAMES)
    stub = _engine_stub(monkeypatch, moto_aws, ids)
    provider = _keep_provider(tmp_path, eco=False)
    provider.check_down(True)  # on-demand: allowed
    provider.down([], keep=True)
    assert [moto_aws.state(i) for i in ids] == ["stopped", "stopped"]  # disks (files) stay
    assert not stub.destroyed and "destroy" not in stub.calls
    # a plain down afterwards destroys the stack as before
    _keep_provider(tmp_path, eco=False).down([])
    assert stub.destroyed and [moto_aws.state(i) for i in ids] == ["terminated", "terminated"]


def test_down_keep_with_spot_instances_is_refused_before_anything_stops(
    moto_aws: Any, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloudsend.api import SyncClient
    from cloudsend.errors import TransportError
    from cloudsend.pipeline.reporting import NullReporter
    from cloudsend.providers.aws.provider import AwsProvider

    def no_ssh(transport: Any) -> dict[str, Any]:
        # moto's addresses look like internet hosts: never connect (were attach ever reached)
        raise TransportError(f"not connecting to {transport.target.address} in tests")

    monkeypatch.setattr(AwsProvider, "_wait_for_ssh", staticmethod(no_ssh))
    ids = moto_aws.run_instances(2, LIFE_TAGS, spot=True, names=LIFE_NAMES)
    stub = _engine_stub(monkeypatch, moto_aws, ids)
    _keep_provider(tmp_path, eco=True)  # writes the config
    client = SyncClient(tmp_path / "proj" / "cloudsend.yaml", NullReporter())
    try:
        refused = re.escape("down --keep: spot instances (eco: true in instances[0])")
        with pytest.raises(ConfigError, match=refused) as info:
            client.down(keep=True)
    finally:
        client.close()
    assert "nothing was stopped" in info.value.message and "without --keep" in (
        info.value.hint or ""
    )
    assert stub.calls == []  # no attach (no agent stopped), no destroy
    assert [moto_aws.state(i) for i in ids] == ["running", "running"]


def test_down_keep_never_terminates_spot_instances_the_config_no_longer_has(
    moto_aws: Any, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = moto_aws.run_instances(2, LIFE_TAGS, spot=True, names=LIFE_NAMES)
    _engine_stub(monkeypatch, moto_aws, ids)
    provider = _keep_provider(tmp_path, eco=False)  # the config was edited to on-demand
    refused = re.escape("spot instances (keep-0-0, keep-0-1) cannot be stopped")
    with pytest.raises(ProvisionError, match=refused):
        provider.down([], keep=True)
    assert [moto_aws.state(i) for i in ids] == ["running", "running"]


@pytest.mark.parametrize("provider_name", ["local", "ssh"])
def test_down_keep_is_possible_on_local_and_ssh(provider_name: str, tmp_path: Path) -> None:
    from cloudsend.providers import get_provider

    doc: dict[str, Any] = {"provider": provider_name}
    if provider_name == "ssh":
        doc["hosts"] = [{"address": "127.0.0.1"}]
    provider = get_provider(load_config(doc, base_dir=tmp_path))
    provider.check_down(True)
    provider.check_down(False)
