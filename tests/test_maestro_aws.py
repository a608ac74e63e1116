"""Issue 11, the AWS program side: `maestro: remote` (its instance, security group, role and
least-privilege policy, cost and preview lines) and team-shared stacks (one stack key kept as a
secret output, every caller's SSH range kept, a secrets provider required).

Real components only: the program under Pulumi's mock runtime (recorded inputs, mocks set with
preview=False before the program runs), boto3 against a real moto server for the online plan,
the real Automation API for the engine, and the real CLI in a subprocess for the message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pulumi_aws")

from pulumi.runtime.mocks import MockResourceArgs  # noqa: E402

from cloudsend.config import load_config  # noqa: E402
from cloudsend.errors import CloudsendError, ConfigError, ProvisionError  # noqa: E402
from cloudsend.providers.aws import offline  # noqa: E402
from cloudsend.providers.aws.costs import estimate  # noqa: E402
from cloudsend.providers.aws.engine import Engine  # noqa: E402
from cloudsend.providers.aws.keys import adopt_key, private_openssh, stack_key  # noqa: E402
from cloudsend.providers.aws.spec import (  # noqa: E402
    SharedState,
    StackSpec,
    shared_ssh_cidrs,
    stack_spec,
)

REPO = Path(__file__).resolve().parents[1]
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
MY_IP = "198.51.100.23/32"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests test"
INSTANCE = "aws:ec2/instance:Instance"
SG = "aws:ec2/securityGroup:SecurityGroup"
KEYPAIR = "aws:ec2/keyPair:KeyPair"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"


def config_of(doc: dict[str, Any]) -> Any:
    return load_config({"project": "demo", "provider": "aws", "region": "us-east-1", **doc})


def make_spec(doc: dict[str, Any], **kwargs: Any) -> StackSpec:
    options: dict[str, Any] = {"public_key": KEY, "ssh_cidrs": [MY_IP], "now": NOW}
    options.update(kwargs)
    return stack_spec(config_of(doc), **options)


class IdMocks(offline.OfflineMocks):
    """The offline mocks, also keeping each resource's id (to follow references)."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(names)
        self.ids: dict[str, str] = {}

    def new_resource(self, args: MockResourceArgs) -> tuple[str | None, dict[Any, Any]]:
        ident, state = super().new_resource(args)
        self.ids[args.name] = str(ident)
        return ident, state


def run(spec: StackSpec) -> tuple[list[dict[str, Any]], dict[str, Any], IdMocks]:
    names = [i.name for i in spec.instances] + ([spec.maestro.name] if spec.maestro else [])
    mocks = IdMocks(names)
    plan = offline.offline_plan(spec, mocks)
    return plan.resources, plan.outputs, mocks


def by_name(resources: list[dict[str, Any]], rtype: str) -> dict[str, dict[str, Any]]:
    return {r["name"]: r["inputs"] for r in resources if r["type"] == rtype}


@pytest.fixture(scope="module")
def remote() -> tuple[StackSpec, list[dict[str, Any]], dict[str, Any], IdMocks]:
    spec = make_spec({"maestro": "remote", "instances": [{"type": "t3.small", "number": 2}]})
    return (spec, *run(spec))


# -- Part 3: the maestro in the program ------------------------------------------------------


def test_maestro_is_a_small_on_demand_instance_in_the_stacks_vpc(remote: Any) -> None:
    spec, resources, outputs, mocks = remote
    machines = by_name(resources, INSTANCE)
    assert sorted(machines) == ["demo-0-0", "demo-0-1", "demo-maestro"]
    maestro = machines["demo-maestro"]
    assert maestro["instanceType"] == "t3.micro"  # the default maestro_type
    assert "instanceMarketOptions" not in maestro  # on-demand: never interrupted
    assert maestro["subnetId"] == machines["demo-0-0"]["subnetId"]  # the stack's own VPC
    assert maestro["keyName"] == machines["demo-0-0"]["keyName"]
    assert maestro["metadataOptions"]["httpTokens"] == "required"
    assert maestro["tags"]["cloudsend:stack"] == "demo"  # it may stop itself (auto_stop)
    assert maestro["tags"]["cloudsend:role"] == "maestro"
    assert "cloudsend:instance" not in maestro["tags"]  # not a worker host
    # its own group and profile, not the workers'
    assert maestro["vpcSecurityGroupIds"] == [mocks.ids["demo-maestro-sg"]]
    assert maestro["iamInstanceProfile"] == "demo-maestro-profile"
    for name in ("demo-0-0", "demo-0-1"):
        assert machines[name]["iamInstanceProfile"] == "demo-identity-profile"
        assert machines[name]["vpcSecurityGroupIds"] == [mocks.ids["demo-us-east-1-sg"]]
    # the address is a stack output (a teammate attaches through it)
    assert outputs["maestro"]["public_ip"] and outputs["maestro"]["id"].startswith("i-")
    assert outputs["maestro"]["user"] == "ubuntu"
    assert set(outputs["instances"]) == {"demo-0-0", "demo-0-1"}  # the maestro runs no jobs


def test_security_groups_maestro_from_the_callers_workers_from_the_maestro(remote: Any) -> None:
    _, resources, _, mocks = remote
    groups = by_name(resources, SG)
    assert sorted(groups) == ["demo-maestro-sg", "demo-us-east-1-sg"]
    maestro_rules = groups["demo-maestro-sg"]["ingress"]
    assert [(r["protocol"], r["fromPort"], r["toPort"]) for r in maestro_rules] == [("tcp", 22, 22)]
    assert maestro_rules[0]["cidrBlocks"] == [MY_IP]
    assert "securityGroups" not in maestro_rules[0]
    worker_rules = groups["demo-us-east-1-sg"]["ingress"]
    assert all((r["protocol"], r["fromPort"], r["toPort"]) == ("tcp", 22, 22) for r in worker_rules)
    # exactly: the caller's ranges, and the maestro's group; nothing else, never the world
    sources = sorted(
        [("cidr", c) for r in worker_rules for c in r.get("cidrBlocks") or []]
        + [("group", g) for r in worker_rules for g in r.get("securityGroups") or []]
    )
    assert sources == [("cidr", MY_IP), ("group", mocks.ids["demo-maestro-sg"])]
    for group in groups.values():
        assert "0.0.0.0/0" not in json.dumps(group["ingress"])
        assert "::/0" not in json.dumps(group["ingress"])


def test_maestro_policy_is_least_privilege_on_the_stacks_tags(remote: Any) -> None:
    spec, resources, _, _ = remote
    policies = by_name(resources, ROLE_POLICY)
    assert list(policies) == ["demo-maestro-policy"]  # workers still get no inline policy
    assert policies["demo-maestro-policy"]["role"] == "demo-maestro-role"
    document = json.loads(policies["demo-maestro-policy"]["policy"])
    statements = document["Statement"]
    actions = [a for s in statements for a in s["Action"]]
    assert all("*" not in a for a in actions), actions  # no wildcard action at all
    assert all(s["Effect"] == "Allow" for s in statements)
    assert "NotAction" not in json.dumps(document) and "NotResource" not in json.dumps(document)
    for needed in ("ec2:DescribeInstances", "ec2:DescribeSpotPriceHistory"):
        assert needed in actions
    writes = set()
    for statement in statements:
        if all(a.startswith("ec2:Describe") for a in statement["Action"]):
            continue  # reads: EC2 scopes no Describe call to a resource
        writes |= set(statement["Action"])
        assert statement["Resource"] == "arn:aws:ec2:us-east-1:*:instance/*"
        assert statement["Condition"] == {
            "StringEquals": {
                "aws:ResourceTag/cloudsend:stack": spec.stack,
                "aws:ResourceTag/cloudsend:project": spec.project,
            }
        }
    assert writes == {"ec2:StartInstances", "ec2:StopInstances", "ec2:TerminateInstances"}
    # no managed policy on the maestro's role, and nothing that reads credentials or secrets
    attachments = [
        r for r in resources if r["type"] == "aws:iam/rolePolicyAttachment:RolePolicyAttachment"
    ]
    assert attachments == []
    assert not any(a.split(":")[0] in ("iam", "sts", "secretsmanager", "ssm") for a in actions)


def test_the_maestro_is_declared_only_with_maestro_remote() -> None:
    resources, outputs, _ = run(make_spec({"instances": [{}]}))
    assert "demo-maestro" not in by_name(resources, INSTANCE)
    assert by_name(resources, ROLE_POLICY) == {}
    assert "maestro" not in outputs
    ingress = by_name(resources, SG)["demo-us-east-1-sg"]["ingress"]
    assert len(ingress) == 1 and "securityGroups" not in ingress[0]


def test_maestro_type_default_custom_and_bad() -> None:
    assert make_spec({"maestro": "remote"}).maestro.type == "t3.micro"  # type: ignore[union-attr]
    spec = make_spec({"maestro": "remote", "maestro_type": "t4g.nano"})
    assert spec.maestro is not None and (spec.maestro.type, spec.maestro.arch) == (
        "t4g.nano",
        "arm64",
    )
    with pytest.raises(ConfigError) as info:
        make_spec({"maestro": "remote", "maestro_type": "one small box"})
    assert info.value.message == "maestro_type: 'one small box' is not an EC2 instance type"


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ({"maestro_type": "t3.nano"}, "maestro_type is only used with maestro: remote"),
        ({"provider": "local", "maestro": "remote"}, "not supported with provider: local"),
    ],
)
def test_maestro_keys_in_the_config(doc: dict[str, Any], words: str) -> None:
    with pytest.raises(CloudsendError) as info:
        config_of(doc)
    assert words in str(info.value)


def test_maestro_remote_keeps_workers_in_its_region() -> None:
    with pytest.raises(ConfigError, match="maestro: remote with instances in eu-west-1"):
        make_spec({"maestro": "remote", "instances": [{}, {"region": "eu-west-1"}]})


def test_maestro_cost_line_from_the_price_table() -> None:
    spec = make_spec({"maestro": "remote", "instances": [{"type": "t3.small", "eco": True}]})
    cost = estimate(spec)
    line = next(x for x in cost.lines if x.name == "demo-maestro")
    assert (line.type, line.market, line.hourly, line.source) == (
        "t3.micro",
        "on-demand",
        0.0104,
        "table",
    )
    ipv4 = next(c for c in cost.charges if c.name == "public IPv4")
    assert ipv4.detail == "2 address(es)"  # the worker's and the maestro's
    without = estimate(make_spec({"instances": [{"type": "t3.small", "eco": True}]}))
    assert cost.total_per_hour > without.total_per_hour + 0.0104  # instance + its disk and IP


def test_offline_preview_shows_the_maestro_its_policy_and_cost(tmp_path: Path) -> None:
    from cloudsend.providers.aws.provider import AwsProvider

    path = tmp_path / "cloudsend.yaml"
    path.write_text(
        "project: demo\nprovider: aws\nregion: us-east-1\nmaestro: remote\n"
        "maestro_type: t3.nano\ninstances:\n  - {type: t3.small}\n"
        "jobs:\n  - run_command: 'true'\n"
    )
    preview = AwsProvider(load_config(path)).preview(offline=True)
    names = {(r["type"], r["name"]) for r in preview.resources or []}
    assert (INSTANCE, "demo-maestro") in names and (ROLE_POLICY, "demo-maestro-policy") in names
    note = next(w for w in preview.warnings if w.startswith("maestro demo-maestro"))
    assert "t3.nano on-demand" in note and "ec2:TerminateInstances" in note
    assert "cloudsend:stack=demo" in note
    assert preview.cost is not None
    assert any(x.name == "demo-maestro" and x.hourly == 0.0052 for x in preview.cost.lines)


def test_plan_checks_that_the_region_offers_the_maestro_type(
    moto_aws: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloudsend.providers.aws.provider import AwsProvider

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = tmp_path / "cloudsend.yaml"

    def provider(mtype: str) -> AwsProvider:
        path.write_text(
            "project: demo\nprovider: aws\nregion: eu-west-1\nssh_cidrs: [198.51.100.7/32]\n"
            f"maestro: remote\nmaestro_type: {mtype}\n"
            "instances:\n  - {type: c5.xlarge, img_id: ami-12345678}\n"
            "jobs:\n  - run_command: 'true'\n"
        )
        return AwsProvider(load_config(path))

    spec = provider("t3.micro").plan()
    assert spec.maestro is not None and spec.maestro.zone and spec.maestro.ami
    assert spec.maestro.zone in spec.zones("eu-west-1")  # the network has a subnet there
    with pytest.raises(ProvisionError) as info:
        provider("t3.superbig").plan()  # EC2 knows no such type
    assert info.value.message.startswith("maestro_type: instance type 't3.superbig' is not offered")
    # a real type that the region's zones do not offer (moto has AWS's offerings)
    with pytest.raises(ProvisionError) as info:
        provider("trn1.2xlarge").plan()
    assert info.value.message == (
        "maestro_type: instance type 'trn1.2xlarge' is not offered in any availability "
        "zone of eu-west-1"
    )


# -- Part 4: shared stacks ----------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE", "PULUMI_BACKEND_URL"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.mark.parametrize(
    "backend", ["s3://team-state/cloudsend", "azblob://state", "https://api.pulumi.com"]
)
def test_shared_backend_without_a_secrets_provider_is_refused(
    clean_env: Path, backend: str
) -> None:
    engine = Engine("demo", "dev", lambda: None, backend_url=backend)
    with pytest.raises(ProvisionError) as info:
        engine.stack()  # refused before the pulumi CLI is even looked for
    assert "shared state backend" in info.value.message
    assert "no secrets provider" in info.value.message
    assert "awskms://" in (info.value.hint or "") and "PULUMI_CONFIG_PASSPHRASE" in (
        info.value.hint or ""
    )
    assert not (clean_env / ".cloudsend" / "pulumi" / "demo-dev.passphrase").exists()


@pytest.mark.parametrize(
    ("backend", "provider", "env"),
    [
        (None, None, {}),  # the default file:// backend: the passphrase file is fine
        ("file:///tmp/elsewhere", None, {}),
        ("s3://team-state", "awskms://alias/team?region=eu-west-1", {}),
        ("s3://team-state", None, {"PULUMI_CONFIG_PASSPHRASE": "shared by the team"}),
        ("s3://team-state", "passphrase", {"PULUMI_CONFIG_PASSPHRASE_FILE": "/team/pass"}),
    ],
)
def test_secrets_that_teammates_can_read_are_accepted(
    clean_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    backend: str | None,
    provider: str | None,
    env: dict[str, str],
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    Engine(
        "demo", "dev", lambda: None, backend_url=backend, secrets_provider=provider
    ).check_secrets()


def test_cli_refuses_a_shared_backend_without_secrets_with_one_message(
    clean_env: Path, tmp_path: Path
) -> None:
    path = tmp_path / "team.yaml"
    path.write_text(
        "project: demo\nprovider: aws\nregion: us-east-1\nssh_cidrs: [198.51.100.7/32]\n"
        "state_backend: s3://team-state/cloudsend\ninstances:\n  - {type: t3.micro}\n"
        "jobs:\n  - run_command: 'true'\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    done = subprocess.run(
        [sys.executable, "-m", "cloudsend", "preview", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    text = done.stdout + done.stderr
    assert done.returncode != 0, text
    assert "no secrets provider" in text and "awskms://" in text, text
    assert "Traceback" not in text


def test_offline_preview_says_up_would_refuse_the_shared_backend(clean_env: Path) -> None:
    from cloudsend.providers.aws.provider import AwsProvider

    path = clean_env / "team.yaml"
    path.write_text(
        "project: demo\nprovider: aws\nregion: us-east-1\nstate_backend: s3://team/x\n"
        "instances:\n  - {type: t3.micro}\njobs:\n  - run_command: 'true'\n"
    )
    preview = AwsProvider(load_config(path)).preview(offline=True)
    assert any("no secrets provider" in w and "`up` refuses" in w for w in preview.warnings)


def test_shared_ssh_cidrs_keep_every_caller() -> None:
    assert shared_ssh_cidrs([], [], "198.51.100.1/32") == ["198.51.100.1/32"]
    # the second caller is added, the first stays
    assert shared_ssh_cidrs([], ["198.51.100.1/32"], "203.0.113.9/32") == [
        "198.51.100.1/32",
        "203.0.113.9/32",
    ]
    assert shared_ssh_cidrs([], ["198.51.100.1/32"], "198.51.100.1/32") == ["198.51.100.1/32"]
    # an explicit ssh_cidrs is the list, exactly
    assert shared_ssh_cidrs(["192.0.2.0/24"], ["198.51.100.1/32"], None) == ["192.0.2.0/24"]
    with pytest.raises(ConfigError):
        shared_ssh_cidrs([], [], None)


def test_a_second_user_keeps_the_key_pair_and_every_instance(tmp_path: Path) -> None:
    """Alice's `up` records the stack key as a secret output; Bob (another machine: another
    keys dir, another public IP) reads it back, so his program declares the same key pair and
    the same instances (no replacement), and his address joins Alice's."""
    doc = {
        "maestro": "remote",
        "state_backend": "s3://team/state",
        "instances": [{"type": "t3.small", "number": 2}, {"type": "c5.large", "eco": True}],
    }
    alice_key = stack_key("demo", "demo", keys_dir=tmp_path / "alice")
    alice = make_spec(
        doc,
        public_key=alice_key.public_openssh,
        private_key=private_openssh(alice_key),
        ssh_cidrs=shared_ssh_cidrs([], [], "198.51.100.1/32"),
    )
    alice_res, alice_out, _ = run(alice)
    assert alice_out["stack_key"] == private_openssh(alice_key)
    assert alice_out["ssh_cidrs"] == ["198.51.100.1/32"]

    shared = SharedState.from_outputs(alice_out)
    assert "BEGIN OPENSSH PRIVATE KEY" not in repr(shared)  # never in a repr
    own = stack_key("demo", "demo", keys_dir=tmp_path / "bob")  # Bob's machine had its own
    assert own.public_openssh != alice_key.public_openssh
    assert shared.private_key is not None
    bob_key = adopt_key("demo", "demo", shared.private_key, keys_dir=tmp_path / "bob")
    assert bob_key.public_openssh == alice_key.public_openssh
    assert (bob_key.private_path.stat().st_mode & 0o777) == 0o600
    assert (tmp_path / "bob" / "demo--demo.replaced-1").exists()  # his old key, kept aside
    bob = make_spec(
        doc,
        public_key=bob_key.public_openssh,
        private_key=private_openssh(bob_key),
        ssh_cidrs=shared_ssh_cidrs([], shared.ssh_cidrs, "203.0.113.9/32"),
    )
    bob_res, bob_out, _ = run(bob)

    assert by_name(bob_res, KEYPAIR) == by_name(alice_res, KEYPAIR)
    assert by_name(bob_res, INSTANCE) == by_name(alice_res, INSTANCE)
    assert bob_out["ssh_cidrs"] == ["198.51.100.1/32", "203.0.113.9/32"]
    rules = by_name(bob_res, SG)["demo-us-east-1-sg"]["ingress"]
    assert rules[0]["cidrBlocks"] == ["198.51.100.1/32", "203.0.113.9/32"]  # Alice not locked out

    # what the stack prevents: Bob's own key would have replaced the key pair
    lone = make_spec(doc, public_key=own.public_openssh, ssh_cidrs=["203.0.113.9/32"])
    assert by_name(run(lone)[0], KEYPAIR) != by_name(alice_res, KEYPAIR)


def test_the_stack_key_output_is_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The private key is exported wrapped as a Pulumi secret (encrypted in the state)."""
    import pulumi

    from cloudsend.providers.aws.program import make_program

    spec = make_spec({"instances": [{}]}, private_key="-----BEGIN OPENSSH PRIVATE KEY-----\nx\n")
    real_export = pulumi.export

    def spy(name: str, value: Any) -> None:
        real_export(name, value)
        if isinstance(value, pulumi.Output):
            real_export(f"{name}__is_secret", pulumi.Output.from_input(value.is_secret()))

    monkeypatch.setattr(pulumi, "export", spy)
    outputs = offline.run_mocked(
        make_program(spec), offline.OfflineMocks(), project="demo", stack="demo"
    )
    assert outputs["stack_key"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert outputs["stack_key__is_secret"] is True
    assert "ssh_cidrs__is_secret" not in outputs  # a plain list, not worth hiding


def _stub_pulumi_with_outputs(bin_dir: Path, outputs: dict[str, Any]) -> None:
    """A stand-in `pulumi` (the real CLI cannot be installed here) that answers the SDK's
    version probe and set-up commands, and `stack output --json` with a recorded stack's
    outputs; it never pretends to preview or deploy."""
    data = bin_dir / "outputs.json"
    data.write_text(json.dumps(outputs))
    script = bin_dir / "pulumi"
    script.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do case "$a" in\n'
        "  version) echo v3.272.0; exit 0;;\n"
        f"  output) cat {data}; exit 0;;\n"
        '  preview|up|destroy|refresh) echo "error: stand-in pulumi" >&2; exit 255;;\n'
        "esac; done\nexit 0\n"
    )
    script.chmod(0o755)


def test_second_users_plan_reads_the_stack_key_and_callers_from_the_stack(
    moto_aws: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through AwsProvider.plan and the real Automation API: Bob's plan of Alice's shared stack
    installs Alice's key (from the stack's outputs) and keeps her address in the SSH rule."""
    import http.server
    import threading

    from cloudsend.providers.aws.provider import AwsProvider

    alice_key = stack_key("demo", "demo", keys_dir=tmp_path / "alice-keys")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub_pulumi_with_outputs(
        bin_dir, {"stack_key": private_openssh(alice_key), "ssh_cidrs": ["198.51.100.1/32"]}
    )
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("HOME", str(tmp_path / "bob"))
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "the team's passphrase")

    class Ip(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"203.0.113.9\n")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Ip)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("CLOUDSEND_PUBLIC_IP_URL", f"http://127.0.0.1:{server.server_port}/")
    try:
        path = tmp_path / "team.yaml"
        path.write_text(
            "project: demo\nprovider: aws\nregion: us-east-1\nmaestro: remote\n"
            "state_backend: s3://team-state/cloudsend\n"
            "instances:\n  - {type: t3.small, img_id: ami-12345678}\n"
            "jobs:\n  - run_command: 'true'\n"
        )
        spec = AwsProvider(load_config(path)).plan()
    finally:
        server.shutdown()
    assert spec.public_key == alice_key.public_openssh
    assert spec.private_key == private_openssh(alice_key)
    assert spec.ssh_cidrs == ("198.51.100.1/32", "203.0.113.9/32")
    bob_file = tmp_path / "bob" / ".cloudsend" / "keys" / "demo--demo"
    assert bob_file.read_text() == alice_key.private_path.read_text()
    assert spec.maestro is not None and spec.maestro.ami  # looked up like the workers'
