"""Issue 11, part 3: what the AWS maestro's role may do to re-create a lost worker itself.

With a shared s3:// state and awskms:// secrets (and only then) the program gives the maestro's
role a second inline policy, `<project>-maestro-recreate`, for Pulumi's refresh + up of this
stack; with a file:// state, a passphrase or a backend the role cannot reach the laptop
re-creates lost workers and the maestro's role keeps its two read/power statements.

Real components: the program under Pulumi's mock runtime (offline.offline_plan: recorded
inputs, mocks set with preview=False), the offline preview of the real AwsProvider, a real
moto server for the maestro's refusal, and tests/iam_eval.py to replay requests against the
documents (a RunInstances is allowed only when each of its resources is).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pulumi_aws")

from cloudsend.config import load_config  # noqa: E402
from cloudsend.errors import ConfigError  # noqa: E402
from cloudsend.onmaestro import OnAwsMaestro, write  # noqa: E402
from cloudsend.providers.aws import offline  # noqa: E402
from cloudsend.providers.aws.recreation import (  # noqa: E402
    CANONICAL_OWNER,
    KmsKey,
    Recreation,
    S3State,
    maestro_recreation,
    parse_awskms,
    parse_s3_backend,
)
from cloudsend.providers.aws.spec import StackSpec, stack_spec  # noqa: E402
from tests.iam_eval import allows, run_instances_allowed  # noqa: E402

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests test"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
ACCOUNT = "123456789012"  # the offline mocks' account
S3 = "s3://team-state/cloudsend?region=eu-west-1"
KMS = "awskms://alias/team?region=eu-west-1"
TAGS = {"cloudsend:project": "demo", "cloudsend:stack": "demo"}
WORKERS = [{"type": "t3.small", "number": 2}, {"type": "c5.large", "eco": True, "eco_life": "2h"}]


def make_spec(doc: dict[str, Any], **kwargs: Any) -> StackSpec:
    config = load_config({"project": "demo", "provider": "aws", "region": "us-east-1", **doc})
    return stack_spec(config, public_key=KEY, ssh_cidrs=["198.51.100.23/32"], now=NOW, **kwargs)


class IdMocks(offline.OfflineMocks):
    """The offline mocks, keeping each resource's id (to check what the policy names)."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(names)
        self.ids: dict[str, str] = {}

    def new_resource(self, args: Any) -> tuple[str | None, dict[Any, Any]]:
        ident, state = super().new_resource(args)
        self.ids[args.name] = str(ident)
        return ident, state


def policies_of(spec: StackSpec) -> tuple[dict[str, dict[str, Any]], IdMocks]:
    names = [i.name for i in spec.instances] + ([spec.maestro.name] if spec.maestro else [])
    mocks = IdMocks(names)
    plan = offline.offline_plan(spec, mocks)
    found = {
        r["name"]: {"role": r["inputs"]["role"], **json.loads(r["inputs"]["policy"])}
        for r in plan.resources
        if r["type"] == ROLE_POLICY
    }
    return found, mocks


@pytest.fixture(scope="module")
def shared() -> tuple[StackSpec, dict[str, dict[str, Any]], IdMocks]:
    spec = make_spec(
        {"maestro": "remote", "state_backend": S3, "secrets_provider": KMS, "instances": WORKERS}
    )
    return (spec, *policies_of(spec))


# ---- the decision: who re-creates a lost worker -------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "secrets", "where", "words"),
    [
        (None, None, Recreation.BY_LAPTOP, "file:// backend on the laptop"),
        ("file:///team/state", KMS, Recreation.BY_LAPTOP, "file:// backend on the laptop"),
        (S3, None, Recreation.BY_LAPTOP, "passphrase"),  # PULUMI_CONFIG_PASSPHRASE: not copied
        (S3, "passphrase", Recreation.BY_LAPTOP, "cloudsend copies no secret there"),
        (S3, "gcpkms://projects/p/locations/l/keyRings/r/cryptoKeys/k", Recreation.BY_LAPTOP,
         "gcpkms:// is out of the maestro's instance role's reach"),
        (S3, "hashivault://team", Recreation.BY_LAPTOP, "use secrets_provider: awskms://"),
        ("https://api.pulumi.com", KMS, Recreation.BY_LAPTOP, "a https:// state backend"),
        ("gs://team-state", KMS, Recreation.BY_LAPTOP, "only s3:// works there"),
        ("azblob://state", KMS, Recreation.BY_LAPTOP, "credentials other than"),
        (S3, KMS, Recreation.ON_MAESTRO, "the maestro's role reaches both"),
        ("s3://team-state", "awskms:///arn:aws:kms:eu-west-1:111122223333:key/1234abcd",
         Recreation.ON_MAESTRO, "S3"),
    ],
)
def test_who_recreates_a_lost_worker(
    backend: str | None, secrets: str | None, where: Recreation, words: str
) -> None:
    plan = maestro_recreation(backend, secrets)
    assert plan.where is where
    assert words in plan.reason
    assert plan.on_maestro is (where is Recreation.ON_MAESTRO)
    assert (plan.state is not None and plan.key is not None) is plan.on_maestro


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://team-state/cloudsend?region=eu-west-1",
         S3State("team-state", "cloudsend", "eu-west-1")),
        ("s3://team-state/a/b/?profile=laptop", S3State("team-state", "a/b", None)),
        ("s3://team-state", S3State("team-state", "", None)),
    ],
)
def test_the_state_bucket_prefix_and_region_of_an_s3_backend(url: str, expected: S3State) -> None:
    state = parse_s3_backend(url)
    assert state == expected
    # Pulumi's DIY backend keeps every object under <prefix>/.pulumi/
    assert state.keys == (f"{expected.prefix}/*" if expected.prefix else ".pulumi/*")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("awskms://alias/team?region=eu-west-1", KmsKey(alias="alias/team", region="eu-west-1")),
        ("awskms://1234abcd-12ab?region=us-east-2", KmsKey(key_id="1234abcd-12ab",
                                                           region="us-east-2")),
        ("awskms:///arn:aws:kms:eu-west-1:111122223333:key/1234abcd",
         KmsKey(key_id="1234abcd", region="eu-west-1", account="111122223333")),
        ("awskms:///arn:aws:kms:eu-west-1:111122223333:alias/team",
         KmsKey(alias="alias/team", region="eu-west-1", account="111122223333")),
    ],
)
def test_the_key_of_an_awskms_provider(url: str, expected: KmsKey) -> None:
    assert parse_awskms(url) == expected


@pytest.mark.parametrize(
    ("backend", "secrets", "words"),
    [("s3://", KMS, "names no S3 bucket"), (S3, "awskms://", "names no KMS key"),
     (S3, "awskms:///arn:aws:s3:::bucket", "not a KMS key or alias ARN")],
)
def test_a_malformed_backend_or_key_is_one_clear_error(
    backend: str, secrets: str, words: str
) -> None:
    with pytest.raises(ConfigError, match=words):
        maestro_recreation(backend, secrets)


# ---- the policy documents -------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc",
    [
        {},  # file://: the maestro never runs Pulumi
        {"state_backend": S3},  # a passphrase: the laptop re-creates
        {"state_backend": S3, "secrets_provider": "passphrase"},
        {"state_backend": "https://api.pulumi.com", "secrets_provider": KMS},
    ],
)
def test_without_recreation_on_the_maestro_its_role_keeps_two_statements(
    doc: dict[str, Any],
) -> None:
    found, _ = policies_of(make_spec({"maestro": "remote", "instances": WORKERS, **doc}))
    assert list(found) == ["demo-maestro-policy"]
    statements = found["demo-maestro-policy"]["Statement"]
    assert [s["Sid"] for s in statements] == ["ReadEc2", "PowerThisStacksInstances"]


def test_a_shared_backend_gives_the_maestro_a_second_policy(shared: Any) -> None:
    spec, found, mocks = shared
    assert sorted(found) == ["demo-maestro-policy", "demo-maestro-recreate"]
    assert found["demo-maestro-recreate"]["role"] == "demo-maestro-role"  # the maestro's own
    assert [s["Sid"] for s in found["demo-maestro-policy"]["Statement"]] == [
        "ReadEc2", "PowerThisStacksInstances"]  # the first one unchanged
    # only a maestro gets it: a stack without one has no inline policy at all
    alone, _ = policies_of(make_spec({"state_backend": S3, "secrets_provider": KMS,
                                      "instances": WORKERS}))
    assert alone == {}


def _statements(found: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for doc in found.values() for s in doc["Statement"]]


def _list(value: Any) -> list[str]:
    return value if isinstance(value, list) else [value]


READ_PREFIXES = ("Describe", "Get", "List")


def _under_a_key_prefix(arn: str) -> bool:
    """arn:aws:s3:::bucket/prefix/*: the objects under one key prefix of one bucket."""
    bucket, _, keys = arn.removeprefix("arn:aws:s3:::").partition("/")
    return arn.startswith("arn:aws:s3:::") and "*" not in bucket and keys.endswith("/*") and (
        "*" not in keys[:-2] and bool(keys[:-2]))


def test_no_wildcard_action_and_every_write_is_conditioned_or_named(shared: Any) -> None:
    _, found, _ = shared
    statements = _statements(found)
    text = json.dumps(found)
    assert "NotAction" not in text and "NotResource" not in text
    for statement in statements:
        assert statement["Effect"] == "Allow"
        for action in _list(statement["Action"]):
            service, _, name = action.partition(":")
            assert "*" not in action and name, action  # no ec2:*, no ec2:Describe*, no *
            assert service in ("ec2", "iam", "ssm", "s3", "kms"), action
        resources = _list(statement["Resource"])
        writes = [a for a in _list(statement["Action"])
                  if not a.split(":")[1].startswith(READ_PREFIXES)]
        if writes:
            # a mutating action: a Condition, or only named resources (no wildcard, but for
            # the keys under the state's prefix in its bucket)
            named = all("*" not in r or _under_a_key_prefix(r) for r in resources)
            assert "Condition" in statement or named, statement
        if resources == ["*"]:
            # only EC2's reads, which support no resource-level permission
            assert all(a.startswith("ec2:Describe") for a in _list(statement["Action"]))
    # no IAM write but PassRole, no credential or secret reads anywhere
    actions = {a for s in statements for a in _list(s["Action"])}
    iam_writes = {a for a in actions if a.startswith("iam:")
                  and not a.split(":")[1].startswith(READ_PREFIXES)}
    assert iam_writes == {"iam:PassRole"}
    assert not any(a.startswith(("sts:", "secretsmanager:", "ssm:Put", "ssm:GetParameters"))
                   for a in actions)
    assert "ec2:RunInstances" in actions and "ec2:TerminateInstances" in actions
    # what a refresh of each resource type and a worker's creation read (terraform-provider-aws)
    for read in ("ec2:DescribeVpcAttribute", "ec2:DescribeRouteTables", "ec2:DescribeKeyPairs",
                 "ec2:DescribeInstanceAttribute", "ec2:DescribeVolumes", "ec2:DescribeImages",
                 "ec2:DescribeInstanceTypeOfferings", "iam:GetRole", "iam:GetRolePolicy",
                 "iam:ListAttachedRolePolicies", "iam:GetInstanceProfile", "ssm:GetParameter"):
        assert read in actions, read


def test_passrole_only_to_the_workers_role_and_only_to_ec2(shared: Any) -> None:
    _, found, _ = shared
    passing = [s for s in _statements(found) if "iam:PassRole" in _list(s["Action"])]
    assert len(passing) == 1 and _list(passing[0]["Action"]) == ["iam:PassRole"]
    assert passing[0]["Resource"] == f"arn:aws:iam::{ACCOUNT}:role/demo-identity-role"
    assert passing[0]["Condition"] == {
        "StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}
    docs = list(found.values())
    assert not allows(docs, "iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/demo-maestro-role",
                      {"iam:PassedToService": "ec2.amazonaws.com"})  # never its own role
    assert not allows(docs, "iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/demo-identity-role",
                      {"iam:PassedToService": "lambda.amazonaws.com"})
    # IAM reads reach this stack's roles and profiles only
    for statement in _statements(found):
        if any(a.startswith("iam:") for a in _list(statement["Action"])):
            assert all(r.startswith(f"arn:aws:iam::{ACCOUNT}:") and r.split("/")[-1]
                       .startswith("demo-") for r in _list(statement["Resource"])), statement


def test_the_state_bucket_is_reached_under_its_prefix_only(shared: Any) -> None:
    _, found, _ = shared
    docs = list(found.values())
    s3 = [s for s in _statements(found) if any(a.startswith("s3:") for a in _list(s["Action"]))]
    assert {r for s in s3 for r in _list(s["Resource"])} == {
        "arn:aws:s3:::team-state/cloudsend/*", "arn:aws:s3:::team-state"}
    for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
        key = "arn:aws:s3:::team-state/cloudsend/.pulumi/stacks/demo/demo.json"
        assert allows(docs, action, key)
        assert not allows(docs, action, "arn:aws:s3:::team-state/other-team/.pulumi/x.json")
        assert not allows(docs, action, "arn:aws:s3:::another-bucket/cloudsend/x.json")
    bucket = "arn:aws:s3:::team-state"
    assert allows(docs, "s3:ListBucket", bucket, {"s3:prefix": "cloudsend/.pulumi/locks/demo/"})
    assert not allows(docs, "s3:ListBucket", bucket, {"s3:prefix": "other-team/"})
    assert not allows(docs, "s3:ListBucket", bucket)  # the whole bucket: no
    # no prefix in the URL: Pulumi's .pulumi/ dir only
    spec = make_spec({"maestro": "remote", "state_backend": "s3://team-state",
                      "secrets_provider": KMS, "instances": WORKERS})
    bare, _ = policies_of(spec)
    assert allows(list(bare.values()), "s3:PutObject", "arn:aws:s3:::team-state/.pulumi/x.json")
    assert not allows(list(bare.values()), "s3:PutObject", "arn:aws:s3:::team-state/data.csv")


@pytest.mark.parametrize(
    ("secrets", "resource", "condition"),
    [
        (KMS, f"arn:aws:kms:eu-west-1:{ACCOUNT}:key/*",
         {"ForAnyValue:StringEquals": {"kms:ResourceAliases": "alias/team"}}),
        ("awskms:///arn:aws:kms:eu-west-1:111122223333:key/1234abcd",
         "arn:aws:kms:eu-west-1:111122223333:key/1234abcd", None),
        ("awskms://1234abcd?region=us-east-2", f"arn:aws:kms:us-east-2:{ACCOUNT}:key/1234abcd",
         None),
        ("awskms://alias/team", f"arn:aws:kms:us-east-1:{ACCOUNT}:key/*",  # the stack's region
         {"ForAnyValue:StringEquals": {"kms:ResourceAliases": "alias/team"}}),
    ],
)
def test_kms_only_on_the_secrets_providers_key(
    secrets: str, resource: str, condition: dict[str, Any] | None
) -> None:
    found, _ = policies_of(make_spec({"maestro": "remote", "state_backend": S3,
                                      "secrets_provider": secrets, "instances": WORKERS}))
    kms = [s for s in _statements(found) if any(a.startswith("kms:") for a in _list(s["Action"]))]
    assert len(kms) == 1
    assert sorted(kms[0]["Action"]) == ["kms:Decrypt", "kms:Encrypt"]  # gocloud's keeper: no more
    assert kms[0]["Resource"] == resource
    assert kms[0].get("Condition") == condition
    docs = list(found.values())
    if condition is not None:
        key = resource.replace("*", "0000-aaaa")
        assert allows(docs, "kms:Decrypt", key, {"kms:ResourceAliases": ["alias/team"]})
        assert not allows(docs, "kms:Decrypt", key, {"kms:ResourceAliases": ["alias/other"]})
        assert not allows(docs, "kms:Decrypt", key)  # a key without the alias


def _launch(mocks: IdMocks, **change: Any) -> dict[str, dict[str, Any]]:
    """The resources of the RunInstances the maestro's up makes for a lost worker, with the
    context IAM evaluates each in; `change` alters one of them."""
    ec2 = f"arn:aws:ec2:us-east-1:{ACCOUNT}"
    subnet = f"{ec2}:subnet/{mocks.ids['demo-us-east-1-subnet']}"
    request = {
        f"{ec2}:instance/*": {
            **{f"aws:RequestTag/{k}": v for k, v in TAGS.items()},
            "ec2:InstanceType": "c5.large",
            "ec2:InstanceProfile": f"arn:aws:iam::{ACCOUNT}:instance-profile/demo-identity-profile",
        },
        subnet: {},
        f"{ec2}:security-group/{mocks.ids['demo-us-east-1-sg']}": {},
        f"{ec2}:key-pair/demo-us-east-1-key": {},
        f"{ec2}:network-interface/*": {"ec2:Subnet": subnet},
        f"{ec2}:volume/*": {"ec2:Encrypted": "true", "ec2:VolumeSize": "20",
                            "ec2:VolumeType": "gp3"},
        "arn:aws:ec2:us-east-1::image/ami-0abc": {"ec2:Owner": CANONICAL_OWNER},
    }
    for arn, ctx in change.items():
        request[arn.replace("EC2", ec2)] = ctx
    return request


def test_run_instances_only_of_a_tagged_worker_in_the_stacks_network(shared: Any) -> None:
    spec, found, mocks = shared
    docs = list(found.values())
    ec2 = f"arn:aws:ec2:us-east-1:{ACCOUNT}"
    assert run_instances_allowed(docs, _launch(mocks)) == []
    instance = _launch(mocks)[f"{ec2}:instance/*"]
    untagged = {k: v for k, v in instance.items() if not k.startswith("aws:RequestTag")}
    other_stack = {**instance, "aws:RequestTag/cloudsend:stack": "prod"}
    big = {**instance, "ec2:InstanceType": "p4d.24xlarge"}
    admin = {**instance, "ec2:InstanceProfile": f"arn:aws:iam::{ACCOUNT}:instance-profile/admin"}
    for bad in (untagged, other_stack, big, admin):
        assert run_instances_allowed(docs, _launch(mocks, **{"EC2:instance/*": bad})) == [
            f"{ec2}:instance/*"]
    # another subnet, group or key pair, an interface elsewhere, a big or plain volume, an image
    # of anyone: each one refused alone
    elsewhere = f"{ec2}:subnet/subnet-other"
    refused = [
        {elsewhere: {}},
        {f"{ec2}:security-group/sg-other": {}},
        {f"{ec2}:key-pair/someone-elses": {}},
        {"EC2:network-interface/*": {"ec2:Subnet": elsewhere}},
        {"EC2:volume/*": {"ec2:Encrypted": "true", "ec2:VolumeSize": "16000",
                          "ec2:VolumeType": "gp3"}},
        {"EC2:volume/*": {"ec2:Encrypted": "false", "ec2:VolumeSize": "20",
                          "ec2:VolumeType": "gp3"}},
        {"arn:aws:ec2:us-east-1::image/ami-evil": {"ec2:Owner": "444455556666"}},
    ]
    for change in refused:
        assert run_instances_allowed(docs, _launch(mocks, **change)), change
    # tags: at launch only, and afterwards on volumes only the stack's own
    assert allows(docs, "ec2:CreateTags", f"{ec2}:instance/i-new",
                  {"ec2:CreateAction": "RunInstances"})
    assert not allows(docs, "ec2:CreateTags", f"{ec2}:instance/i-old")
    stack_tags = {f"aws:RequestTag/{k}": v for k, v in TAGS.items()}
    root_tags = {**stack_tags, "aws:TagKeys": [*TAGS, "Name", "cloudsend:instance"]}
    assert allows(docs, "ec2:CreateTags", f"{ec2}:volume/vol-new", root_tags)
    assert not allows(docs, "ec2:CreateTags", f"{ec2}:volume/vol-new",
                      {**root_tags, "aws:TagKeys": [*TAGS, "owner"]})
    assert not allows(docs, "ec2:CreateTags", f"{ec2}:volume/vol-new",
                      {**root_tags, "aws:RequestTag/cloudsend:stack": "prod"})
    # the spot workers' shutdown behaviour: on the stack's instances only
    resource_tags = {f"aws:ResourceTag/{k}": v for k, v in TAGS.items()}
    assert allows(docs, "ec2:ModifyInstanceAttribute", f"{ec2}:instance/i-new", resource_tags)
    assert not allows(docs, "ec2:ModifyInstanceAttribute", f"{ec2}:instance/i-other")


def test_pinned_images_and_the_ami_parameter() -> None:
    spec = make_spec({"maestro": "remote", "state_backend": S3, "secrets_provider": KMS,
                      "instances": [{"type": "t3.small", "img_id": "ami-0123456789abcdef0"}]})
    found, _ = policies_of(spec)
    docs = list(found.values())
    image = "arn:aws:ec2:us-east-1::image/ami-0123456789abcdef0"
    assert allows(docs, "ec2:RunInstances", image, {"ec2:Owner": "444455556666"})
    assert not allows(docs, "ec2:RunInstances", "arn:aws:ec2:us-east-1::image/ami-other",
                      {"ec2:Owner": "444455556666"})
    # the maestro's plan still reads its own Ubuntu image's parameter, and only that one
    parameter = spec.maestro.ssm_parameter  # type: ignore[union-attr]
    assert allows(docs, "ssm:GetParameter", f"arn:aws:ssm:us-east-1::parameter{parameter}")
    assert not allows(docs, "ssm:GetParameter", "arn:aws:ssm:us-east-1::parameter/team/secret")
    assert not allows(docs, "ssm:GetParameter",
                      f"arn:aws:ssm:us-east-1::parameter{parameter.replace('amd64', 'arm64')}")


def test_the_maestros_own_program_declares_the_same_policy(tmp_path: Path) -> None:
    """The maestro's up runs its own program (its config says `maestro: local`, the contract
    gives its type): the re-creation policy must come out identical, or that up would have to
    rewrite its own role's policy, which its role may not do."""
    laptop = make_spec({"maestro": "remote", "state_backend": S3, "secrets_provider": KMS,
                        "instances": WORKERS})
    there = make_spec({"maestro": "local", "state_backend": S3, "secrets_provider": KMS,
                       "instances": WORKERS}, on_maestro_type="t3.micro")
    assert policies_of(laptop)[0] == policies_of(there)[0]
    assert "demo-maestro-recreate" in policies_of(there)[0]


# ---- preview and the maestro's refusal --------------------------------------------------------


def _preview(tmp_path: Path, extra: str) -> Any:
    from cloudsend.providers.aws.provider import AwsProvider

    path = tmp_path / "cloudsend.yaml"
    path.write_text(
        "project: demo\nprovider: aws\nregion: us-east-1\nmaestro: remote\n" + extra
        + "instances:\n  - {type: t3.small}\njobs:\n  - run_command: 'true'\n"
    )
    return AwsProvider(load_config(path)).preview(offline=True)


def test_offline_preview_shows_the_recreation_policy(tmp_path: Path) -> None:
    preview = _preview(tmp_path, f"state_backend: {S3}\nsecrets_provider: {KMS}\n")
    policies = {r["name"]: r["inputs"] for r in preview.resources if r["type"] == ROLE_POLICY}
    assert sorted(policies) == ["demo-maestro-policy", "demo-maestro-recreate"]
    sids = [s["Sid"] for s in json.loads(policies["demo-maestro-recreate"]["policy"])["Statement"]]
    assert "PassOnlyTheWorkersRole" in sids and "StateObjects" in sids
    note = next(w for w in preview.warnings if "re-created on the maestro" in w)
    for words in ("demo-maestro-recreate", "ec2:RunInstances only of instances tagged",
                  "iam:PassRole of the workers' role", "arn:aws:s3:::team-state/cloudsend/*",
                  "kms:Decrypt", "alias/team"):
        assert words in note, (words, note)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [("", False), (f"state_backend: {S3}\n", False),
     (f"state_backend: {S3}\nsecrets_provider: {KMS}\n", True)],
)
def test_what_the_laptop_tells_the_maestro(tmp_path: Path, extra: str, expected: bool) -> None:
    from cloudsend.providers.aws.provider import AwsProvider

    path = tmp_path / "cloudsend.yaml"
    path.write_text("project: demo\nprovider: aws\nregion: us-east-1\nmaestro: remote\n" + extra
                    + "instances:\n  - {type: t3.small}\njobs:\n  - run_command: 'true'\n")
    assert AwsProvider(load_config(path)).maestro_runs_pulumi is expected


def test_the_maestros_pulumi_is_told_the_stacks_region(tmp_path: Path) -> None:
    """No AWS config on the maestro names a region: its engine (the s3:// backend, awskms://
    secrets) gets the stack's; on the laptop the profile's chain decides, as before."""
    from cloudsend.providers.aws.provider import AwsProvider

    path = tmp_path / "cloudsend.yaml"
    path.write_text("project: demo\nprovider: aws\nregion: eu-west-1\nmaestro: local\n"
                    f"state_backend: {S3}\nsecrets_provider: {KMS}\n"
                    "instances:\n  - {type: t3.small}\njobs:\n  - run_command: 'true'\n")
    laptop = AwsProvider(load_config(path))._engine(lambda: None)
    assert "AWS_REGION" not in laptop.workspace_env()
    write(tmp_path, OnAwsMaestro(instance_id="i-m", region="eu-west-1", stack="demo",
                                 pulumi_here=True, outputs={"maestro": {"type": "t3.micro"}}))
    provider = AwsProvider(load_config(path))
    assert provider.side is not None and provider.side.pulumi_here  # s3 + kms: it may
    assert provider._engine(lambda: None).workspace_env()["AWS_REGION"] == "eu-west-1"


def test_offline_preview_says_the_laptop_recreates_with_a_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "the team's passphrase")
    preview = _preview(tmp_path, f"state_backend: {S3}\n")
    assert not any(r["name"] == "demo-maestro-recreate" for r in preview.resources)
    note = next(w for w in preview.warnings if "re-created by `cloudsend up`" in w)
    assert "passphrase" in note and "awskms://" in note


def test_a_maestro_told_to_run_pulumi_with_a_passphrase_leaves_it_to_the_laptop(
    tmp_path: Path, moto_aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The contract says pulumi_here (a shared backend) but the secrets are a passphrase the
    maestro never gets: its replace refuses with that reason, and never reaches the engine."""
    from cloudsend.providers.aws.maestro_side import RecreationDeferred
    from cloudsend.providers.aws.provider import AwsProvider

    monkeypatch.setenv("HOME", str(tmp_path / "maestro-home"))

    def refuse(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the maestro asked for the Pulumi engine")

    monkeypatch.setattr(AwsProvider, "engine", refuse)
    monkeypatch.setattr(AwsProvider, "_engine", refuse)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "cloudsend.yaml").write_text(
        "project: demo\nprovider: aws\nregion: us-east-1\nmaestro: local\n"
        f"state_backend: {S3}\nssh_cidrs: [198.51.100.7/32]\n"
        "instances:\n  - {type: t3.micro, img_id: ami-12345678}\njobs:\n  - run_command: 'true'\n"
    )
    worker = moto_aws.run_instances(1, TAGS, names=["demo-0-0"])[0]
    maestro = moto_aws.run_instances(1, {**TAGS, "cloudsend:role": "maestro"},
                                     names=["demo-maestro"])[0]
    write(run_dir, OnAwsMaestro(
        instance_id=maestro, region="us-east-1", stack="demo", pulumi_here=True,
        outputs={"instances": {"demo-0-0": {"id": worker, "private_ip": "10.0.0.4"}},
                 "maestro": {"id": maestro, "type": "t3.micro"}}))
    provider = AwsProvider(load_config(run_dir / "cloudsend.yaml"))
    assert provider.side is not None and not provider.side.pulumi_here
    assert not provider.maestro_runs_pulumi and provider.shared_backend
    moto_aws.terminate(worker)
    with pytest.raises(RecreationDeferred) as refused:
        provider.machines.replace(["demo-0-0"])
    assert refused.value.hosts == ("demo-0-0",)
    assert "waits for `cloudsend up` from the laptop" in refused.value.message
    assert "passphrase" in refused.value.message and "awskms://" in (refused.value.hint or "")


def test_both_inline_policies_fit_in_iams_quota() -> None:
    """IAM limits a role's inline policies to 10,240 characters together (whitespace not
    counted): a big stack (many types and zones, pinned images, spot) stays well inside."""
    spec = make_spec({"maestro": "remote", "state_backend": S3, "secrets_provider": KMS,
                      "instances": [{"type": f"c5.{size}", "number": 3, "eco": True,
                                     "eco_life": "3h", "img_id": f"ami-0123456789abcde{n}"}
                                    for n, size in enumerate(["large", "xlarge", "2xlarge",
                                                              "4xlarge", "9xlarge"])]})
    zones = {("us-east-1", t): ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d"]
             for t in {i.type for i in spec.instances} | {"t3.micro"}}
    from cloudsend.providers.aws.spec import place_in_zones

    found, _ = policies_of(place_in_zones(spec, zones))
    text = "".join(json.dumps({k: v for k, v in d.items() if k != "role"}) for d in found.values())
    size = len("".join(text.split()))
    assert 2000 < size < 9000, size  # ~5.7k today: room for more subnets or images
