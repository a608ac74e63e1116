"""Who re-creates a lost worker of a `maestro: remote` stack, and what the maestro's role needs
to do it itself (pure: no pulumi, no boto3).

`maestro_recreation(state_backend, secrets_provider)` decides (table: tests/
test_maestro_aws_policy.py). The maestro runs Pulumi (refresh, then up) only when everything
Pulumi needs is reachable with its instance role alone, since cloudsend copies no credential
and no secret to it:

- the state in S3 (`s3://bucket[/prefix][?region=...]`): a `file://` backend lives on the
  laptop; Pulumi Cloud, gs:// or azblob:// need credentials the role does not hold;
- the secrets in AWS KMS (`awskms://...`): a passphrase (PULUMI_CONFIG_PASSPHRASE[_FILE] on the
  laptop) would have to be copied to the maestro, which cloudsend never does, and other KMS
  (gcpkms, azurekeyvault, hashivault) are out of the role's reach.

Otherwise the maestro leaves re-creation to the laptop's `cloudsend up` (its jobs go to the
remaining workers meanwhile) and says why.

When it runs Pulumi, `recreate_policy(grant)` is the second statement set of its role (the
program attaches it as the `<project>-maestro-recreate` inline policy). What it holds comes
from what Pulumi's refresh + up of this stack calls through the AWS provider (pulumi-aws
bridges terraform-provider-aws; the calls are those of its Read of each resource type the
program declares, and of aws_instance's Create) and from what the maestro's own plan calls
(ami.py, zones.py, cpus.py):

- refresh reads: Vpc (DescribeVpcs, DescribeVpcAttribute, DescribeNetworkAcls,
  DescribeRouteTables, DescribeSecurityGroups), Subnet, InternetGateway, RouteTable(+Association),
  SecurityGroup (inline rules), KeyPair, Instance (DescribeInstances, DescribeInstanceTypes,
  DescribeInstanceAttribute, DescribeInstanceCreditSpecifications for burstable types,
  DescribeVolumes for the root block device, DescribeSpotInstanceRequests for spot ones;
  its Create describes the image for its root device name: DescribeImages);
  EC2 supports no resource-level permission on Describe* calls: Resource "*". IAM Role,
  RolePolicy, RolePolicyAttachment and InstanceProfile reads (GetRole, ListRolePolicies,
  GetRolePolicy, ListAttachedRolePolicies, GetInstanceProfile, and the tag listings) only on
  this stack's roles and profiles. The plan adds DescribeInstanceTypeOfferings (zones.py) and
  ssm:GetParameter on the Ubuntu AMI parameters (ami.py; public parameters' ARNs have no
  account: arn:aws:ssm:<region>::parameter/aws/service/...).
- a worker's creation: ec2:RunInstances, where every resource of the call must be allowed
  (EC2 user guide, "Launch instances (RunInstances)"): the instance (tagged with the stack's
  tags in the request, one of the stack's types, the workers' instance profile), the stack's
  subnets, its workers' security group and key pair, a network interface in those subnets, an
  encrypted root volume of the stack's sizes and types, an Ubuntu image (owner Canonical) or a
  pinned img_id. The volume carries no aws:RequestTag condition: the provider does not tag it
  in RunInstances (no volume_tags) but afterwards (resourceInstanceCreate tags the root block
  device with a separate CreateTags), and a RequestTag condition on an untagged resource fails
  the whole call. A one-time spot request is not evaluated unless it is tagged at launch,
  which the program does not do; the EC2 Spot service-linked role a spot launch needs exists
  already (the laptop's first `up` launched the stack's spot workers). ec2:CreateTags at
  launch (ec2:CreateAction = RunInstances), and on volumes afterwards only with the stack's
  tags and the program's tag keys; the spot workers' shutdown behaviour is set after launch
  (ModifyInstanceAttribute on the stack's tagged instances); iam:PassRole of the workers' role
  only, to EC2 only.
- the state: s3:GetObject/PutObject/DeleteObject under the backend's prefix (Pulumi's DIY
  backend keeps everything under <prefix>/.pulumi/: stacks, locks, history, backups; a copy
  is a Get then a Put), s3:ListBucket with s3:prefix under it (it lists locks and stack files).
- the secrets: kms:Decrypt (the stack's data key) and kms:Encrypt on the provider's key; the
  gocloud keeper Pulumi uses calls nothing else (no GenerateDataKey). An IAM policy names a KMS
  key by its key ARN only; for an alias it allows the region's keys that carry the alias
  (kms:ResourceAliases: Decrypt requests name no alias, so kms:RequestAlias would not match).

Nothing here can be checked against AWS from the machines cloudsend is built on; the tests check
the documents and replay the maestro's recorded boto3 calls against them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from cloudsend.errors import ConfigError

CANONICAL_OWNER = "099720109477"  # the AWS account Canonical publishes Ubuntu images from
STATE_DIR = ".pulumi"  # Pulumi's DIY backend keeps every object under <prefix>/.pulumi/

# What Pulumi's refresh reads for the program's EC2 resources, and the plan's own EC2 reads.
RECREATE_EC2_READS = (
    "ec2:DescribeVpcs",
    "ec2:DescribeVpcAttribute",
    "ec2:DescribeNetworkAcls",
    "ec2:DescribeRouteTables",
    "ec2:DescribeSecurityGroups",
    "ec2:DescribeSubnets",
    "ec2:DescribeInternetGateways",
    "ec2:DescribeKeyPairs",
    "ec2:DescribeInstances",
    "ec2:DescribeInstanceAttribute",
    "ec2:DescribeInstanceTypes",
    "ec2:DescribeInstanceTypeOfferings",
    "ec2:DescribeInstanceCreditSpecifications",
    "ec2:DescribeImages",
    "ec2:DescribeVolumes",
    "ec2:DescribeSpotInstanceRequests",
    "ec2:DescribeTags",
)
RECREATE_ROLE_READS = (
    "iam:GetRole",
    "iam:ListRolePolicies",
    "iam:GetRolePolicy",
    "iam:ListAttachedRolePolicies",
    "iam:ListRoleTags",
)
RECREATE_PROFILE_READS = ("iam:GetInstanceProfile", "iam:ListInstanceProfileTags")
STATE_OBJECT_ACTIONS = ("s3:GetObject", "s3:PutObject", "s3:DeleteObject")
SECRETS_ACTIONS = ("kms:Decrypt", "kms:Encrypt")


# ---- the state backend and the secrets provider --------------------------------------------


@dataclass(frozen=True)
class S3State:
    """An `s3://bucket[/prefix][?region=...]` state backend."""

    bucket: str
    prefix: str = ""  # no leading or trailing "/"
    region: str | None = None

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")

    @property
    def keys(self) -> str:
        """The key pattern of every state object (the prefix, else Pulumi's .pulumi/ dir)."""
        return f"{self.prefix}/*" if self.prefix else f"{STATE_DIR}/*"

    @property
    def object_arn(self) -> str:
        return f"arn:aws:s3:::{self.bucket}/{self.keys}"

    @property
    def bucket_arn(self) -> str:
        return f"arn:aws:s3:::{self.bucket}"


def parse_s3_backend(url: str) -> S3State:
    """`s3://bucket/prefix?region=eu-west-1&profile=x` → S3State (the query's other keys, such
    as a laptop's profile, do not matter to the maestro)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ConfigError(
            f"state_backend: {url!r} names no S3 bucket",
            hint="write s3://BUCKET/PREFIX?region=REGION",
        )
    region = dict(parse_qsl(parts.query)).get("region") or None
    return S3State(bucket=parts.netloc, prefix=parts.path.strip("/"), region=region)


@dataclass(frozen=True)
class KmsKey:
    """An `awskms://` secrets provider: a key id, a key ARN, an alias or an alias ARN."""

    alias: str | None = None  # "alias/team"
    key_id: str | None = None  # a key id, or the key ARN's id
    region: str | None = None  # the URL's ?region= or the ARN's
    account: str | None = None  # from an ARN

    def resource(self, default_region: str, default_account: str) -> str:
        """The key ARN an IAM policy must name (for an alias: the region's keys, narrowed by
        the alias condition)."""
        region = self.region or default_region
        account = self.account or default_account
        return f"arn:aws:kms:{region}:{account}:key/{self.key_id or '*'}"


def parse_awskms(url: str) -> KmsKey:
    """`awskms://alias/team?region=r`, `awskms://<key id>?region=r`, `awskms:///arn:aws:kms:
    r:acct:key/<id>` or `...:alias/<name>` (gocloud's forms: host + path is the key id)."""
    if not url.startswith("awskms://"):
        raise ConfigError(f"secrets_provider: {url!r} is not an awskms:// URL")
    rest, _, query = url[len("awskms://") :].partition("?")
    ident = rest.strip("/")
    region = dict(parse_qsl(query)).get("region") or None
    if not ident:
        raise ConfigError(
            f"secrets_provider: {url!r} names no KMS key",
            hint="write awskms://alias/NAME?region=REGION",
        )
    if ident.startswith("arn:"):
        fields = ident.split(":", 5)
        if len(fields) != 6 or fields[2] != "kms" or "/" not in fields[5]:
            raise ConfigError(f"secrets_provider: {ident!r} is not a KMS key or alias ARN")
        kind, _, name = fields[5].partition("/")
        arn_region, account = fields[3] or None, fields[4] or None
        if kind == "alias":
            return KmsKey(alias=f"alias/{name}", region=arn_region, account=account)
        return KmsKey(key_id=name, region=arn_region, account=account)
    if ident.startswith("alias/"):
        return KmsKey(alias=ident, region=region)
    return KmsKey(key_id=ident, region=region)


# ---- the decision ----------------------------------------------------------------------------


class Recreation(str, Enum):
    ON_MAESTRO = "on the maestro"  # it runs Pulumi itself: refresh, then up
    BY_LAPTOP = "by the laptop"  # its jobs go elsewhere; `cloudsend up` re-creates the worker


@dataclass(frozen=True)
class RecreationPlan:
    where: Recreation
    reason: str  # why, in words for `preview`, `status` and the refusal
    state: S3State | None = None  # ON_MAESTRO: the bucket the role may use
    key: KmsKey | None = None  # ON_MAESTRO: the key the role may use

    @property
    def on_maestro(self) -> bool:
        return self.where is Recreation.ON_MAESTRO


def maestro_recreation(state_backend: str | None, secrets_provider: str | None) -> RecreationPlan:
    """Where a lost worker of a `maestro: remote` stack is re-created. Pure."""
    backend = (state_backend or "").strip()
    if not backend or backend.startswith("file://"):
        return RecreationPlan(
            Recreation.BY_LAPTOP,
            "the stack's state is in a file:// backend on the laptop: Pulumi cannot run on "
            "the maestro",
        )
    scheme = backend.split("://", 1)[0]
    if scheme != "s3":
        return RecreationPlan(
            Recreation.BY_LAPTOP,
            f"a {scheme}:// state backend needs credentials other than the maestro's instance "
            "role, and cloudsend copies none to it (only s3:// works there)",
        )
    state = parse_s3_backend(backend)
    provider = (secrets_provider or "passphrase").strip()
    if provider == "passphrase":
        return RecreationPlan(
            Recreation.BY_LAPTOP,
            "the stack's secrets use a passphrase, which would have to be copied to the "
            "maestro, and cloudsend copies no secret there; use secrets_provider: "
            "awskms://alias/NAME?region=REGION so the maestro decrypts with its role",
        )
    if not provider.startswith("awskms://"):
        return RecreationPlan(
            Recreation.BY_LAPTOP,
            f"the secrets provider {provider.split('://', 1)[0]}:// is out of the maestro's "
            "instance role's reach; use secrets_provider: awskms://alias/NAME?region=REGION",
        )
    return RecreationPlan(
        Recreation.ON_MAESTRO,
        "the state is in S3 and the secrets in KMS: the maestro's role reaches both",
        state=state,
        key=parse_awskms(provider),
    )


# ---- the maestro's second statement set ------------------------------------------------------


@dataclass(frozen=True)
class RecreateGrant:
    """Everything the re-creation statements name, resolved (the program fills it from its
    resources' outputs)."""

    region: str
    account: str
    tags: Mapping[str, str]  # the stack's tags (project, stack)
    worker_role_arn: str
    worker_profile_arn: str
    role_arns: Sequence[str]  # every role of the stack (refresh reads each)
    profile_arns: Sequence[str]
    subnet_ids: Sequence[str]
    security_group_ids: Sequence[str]  # the workers' group
    key_name: str
    instance_types: Sequence[str]
    volume_types: Sequence[str]
    max_volume_gb: int
    state: S3State
    key: KmsKey
    ubuntu_parameters: Sequence[str] = ()  # SSM names the plan reads (instances without img_id)
    pinned_images: Sequence[str] = ()  # img_id AMIs
    volume_tag_keys: Sequence[str] = ()  # the keys the program puts on root volumes
    spot: bool = False  # spot workers: their shutdown behaviour is set after launch


def recreate_policy(grant: RecreateGrant) -> dict[str, Any]:
    """The re-creation statements (see the module doc for where each comes from)."""
    if not grant.tags:
        raise ConfigError("the maestro's policy needs the stack's tags (it would reach everything)")
    ec2 = f"arn:aws:ec2:{grant.region}:{grant.account}"
    stack_tags = {f"aws:RequestTag/{k}": v for k, v in sorted(grant.tags.items())}
    resource_tags = {f"aws:ResourceTag/{k}": v for k, v in sorted(grant.tags.items())}
    subnets = sorted(f"{ec2}:subnet/{s}" for s in set(grant.subnet_ids))
    types = sorted(set(grant.instance_types))
    statements: list[dict[str, Any]] = [
        {
            "Sid": "RefreshReadEc2",
            "Effect": "Allow",
            "Action": list(RECREATE_EC2_READS),
            "Resource": "*",  # EC2 Describe* calls support no resource-level permission
        },
        {
            "Sid": "RefreshReadThisStacksRoles",
            "Effect": "Allow",
            "Action": list(RECREATE_ROLE_READS),
            "Resource": sorted(set(grant.role_arns)),
        },
        {
            "Sid": "RefreshReadThisStacksProfiles",
            "Effect": "Allow",
            "Action": list(RECREATE_PROFILE_READS),
            "Resource": sorted(set(grant.profile_arns)),
        },
    ]
    if grant.ubuntu_parameters:
        statements.append(
            {
                "Sid": "ReadUbuntuAmiParameter",
                "Effect": "Allow",
                "Action": ["ssm:GetParameter"],
                "Resource": sorted(
                    {f"arn:aws:ssm:{grant.region}::parameter{n}" for n in grant.ubuntu_parameters}
                ),
            }
        )
    statements += [
        {
            "Sid": "LaunchThisStacksWorker",
            "Effect": "Allow",
            "Action": ["ec2:RunInstances"],
            "Resource": f"{ec2}:instance/*",
            "Condition": {
                "StringEquals": {**stack_tags, "ec2:InstanceType": types},
                "ArnEquals": {"ec2:InstanceProfile": grant.worker_profile_arn},
            },
        },
        {
            "Sid": "LaunchIntoThisStacksNetwork",
            "Effect": "Allow",
            "Action": ["ec2:RunInstances"],
            "Resource": [
                *subnets,
                *sorted(f"{ec2}:security-group/{g}" for g in set(grant.security_group_ids)),
                f"{ec2}:key-pair/{grant.key_name}",
            ],
        },
        {
            "Sid": "LaunchInterfaceInThisStacksSubnets",
            "Effect": "Allow",
            "Action": ["ec2:RunInstances"],
            "Resource": f"{ec2}:network-interface/*",
            "Condition": {"ArnEquals": {"ec2:Subnet": subnets}},
        },
        {
            "Sid": "LaunchEncryptedRootVolume",
            "Effect": "Allow",
            "Action": ["ec2:RunInstances"],
            "Resource": f"{ec2}:volume/*",
            "Condition": {
                "Bool": {"ec2:Encrypted": "true"},
                "NumericLessThanEquals": {"ec2:VolumeSize": str(grant.max_volume_gb)},
                "StringEquals": {"ec2:VolumeType": sorted(set(grant.volume_types))},
            },
        },
    ]
    images = f"arn:aws:ec2:{grant.region}::image"
    if grant.ubuntu_parameters:
        statements.append(
            {
                "Sid": "LaunchFromUbuntuImages",
                "Effect": "Allow",
                "Action": ["ec2:RunInstances"],
                "Resource": f"{images}/*",
                "Condition": {"StringEquals": {"ec2:Owner": CANONICAL_OWNER}},
            }
        )
    if grant.pinned_images:
        statements.append(
            {
                "Sid": "LaunchFromPinnedImages",
                "Effect": "Allow",
                "Action": ["ec2:RunInstances"],
                "Resource": sorted(f"{images}/{i}" for i in set(grant.pinned_images)),
            }
        )
    statements += [
        {
            "Sid": "TagAtLaunchOnly",
            "Effect": "Allow",
            "Action": ["ec2:CreateTags"],
            "Resource": [f"{ec2}:instance/*", f"{ec2}:volume/*"],
            "Condition": {"StringEquals": {"ec2:CreateAction": "RunInstances"}},
        },
        {
            "Sid": "TagRootVolumeWithTheStacksTags",
            "Effect": "Allow",
            "Action": ["ec2:CreateTags"],
            "Resource": f"{ec2}:volume/*",
            "Condition": {
                "StringEquals": stack_tags,
                "ForAllValues:StringEquals": {"aws:TagKeys": sorted(set(grant.volume_tag_keys))},
            },
        },
    ]
    if grant.spot:
        statements.append(
            {
                "Sid": "SetShutdownOfThisStacksInstances",
                "Effect": "Allow",
                "Action": ["ec2:ModifyInstanceAttribute"],
                "Resource": f"{ec2}:instance/*",
                "Condition": {"StringEquals": resource_tags},
            }
        )
    statements += [
        {
            "Sid": "PassOnlyTheWorkersRole",
            "Effect": "Allow",
            "Action": ["iam:PassRole"],
            "Resource": grant.worker_role_arn,
            "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
        },
        {
            "Sid": "StateObjects",
            "Effect": "Allow",
            "Action": list(STATE_OBJECT_ACTIONS),
            "Resource": grant.state.object_arn,
        },
        {
            "Sid": "StateListing",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": grant.state.bucket_arn,
            "Condition": {"StringLike": {"s3:prefix": [grant.state.keys]}},
        },
    ]
    secrets: dict[str, Any] = {
        "Sid": "StateSecrets",
        "Effect": "Allow",
        "Action": list(SECRETS_ACTIONS),
        "Resource": grant.key.resource(grant.region, grant.account),
    }
    if grant.key.alias is not None:
        secrets["Condition"] = {
            "ForAnyValue:StringEquals": {"kms:ResourceAliases": grant.key.alias}
        }
    statements.append(secrets)
    return {"Version": "2012-10-17", "Statement": statements}


def account_of(arn: str) -> str:
    """The account of an ARN (`arn:aws:iam::123456789012:role/x` → 123456789012)."""
    fields = arn.split(":")
    if len(fields) < 6 or not fields[4]:
        raise ValueError(f"{arn!r} is not an ARN with an account")
    return fields[4]
