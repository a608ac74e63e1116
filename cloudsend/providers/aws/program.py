"""The Pulumi program: a StackSpec declared as AWS resources.

Four ComponentResources, each with a typed args dataclass and its children parented to it:

- `Network` (per region): our own VPC 10.0.0.0/16, one public subnet (/20), an internet gateway and
  a 0.0.0.0/0 route. When the region's instances name a VPC (`cloud_id`), nothing is created
  in it: an existing subnet of that VPC that gives public IPs is used. Creating a subnet in
  someone else's VPC would need a free CIDR range and a route to an internet gateway, neither
  of which we can know; a VPC without such a subnet fails at `up` with a clear message.
- `Access` (per region): a security group with SSH from `spec.ssh_cidrs` only (never opened
  to the world by default; an empty list is refused), and the stack's key pair.
- `Identity` (once; IAM is global): a role only EC2 can assume, its instance profile, and the
  managed policies the config lists — no inline policy, so by default no permission at all.
- `Compute` (per region): one `ec2.Instance` per InstanceSpec.
- `Maestro` (maestro: remote, in the default region): a small on-demand instance with a
  security group of its own (SSH from `spec.ssh_cidrs` only), admitted by the workers' group;
  its role may only describe EC2 and stop/start/terminate instances tagged with this stack
  (an inline policy with IAM conditions on the stack's tags; no AWS credentials anywhere).
  With a shared s3:// state and awskms:// secrets (recreation.maestro_recreation) a second
  inline policy lets it re-create a lost worker with Pulumi (recreation.recreate_policy).

Every region, the default included, gets an explicit `aws.Provider`: resources must never
depend on an ambient `aws:region` setting that may name another region than the spec.

Spot (`eco`) instances are one-time requests that terminate on interruption. EC2 ignores
ValidUntil on one-time requests (it is "supported only for persistent requests", which in turn
cannot terminate on interruption), so `eco_life` is enforced by the instance itself: its user
data schedules `shutdown` after eco_life and the shutdown behaviour is `terminate`. The delay is
relative to boot, so the program does not change between runs (a deadline computed from the
clock would replace every spot instance at every `up`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

from cloudsend.errors import ConfigError
from cloudsend.providers.aws.recreation import (
    RecreateGrant,
    RecreationPlan,
    account_of,
    recreate_policy,
)
from cloudsend.providers.aws.spec import (
    ECO_LIFE_TAG,
    InstanceSpec,
    MaestroSpec,
    StackSpec,
    eco_life_minutes,
)

_EC2_TRUST_POLICY = (
    '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", '
    '"Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}'
)


# Hosts (and the maestro) install packages and fetch data: outbound stays open.
_OPEN_EGRESS: list[aws.ec2.SecurityGroupEgressArgsDict] = [
    {
        "protocol": "-1",
        "from_port": 0,
        "to_port": 0,
        "cidr_blocks": ["0.0.0.0/0"],
        "ipv6_cidr_blocks": ["::/0"],
    }
]


def _ssh_from(cidrs: Sequence[str]) -> aws.ec2.SecurityGroupIngressArgs:
    """Port 22 from these ranges only (the workers' and the maestro's groups)."""
    if not cidrs:
        # Defence in depth: stack_spec refuses this too. No range must never become "open".
        raise ConfigError("no SSH source range: refusing to open port 22 to everyone")
    return aws.ec2.SecurityGroupIngressArgs(
        protocol="tcp",
        from_port=22,
        to_port=22,
        cidr_blocks=[c for c in cidrs if ":" not in c] or None,
        ipv6_cidr_blocks=[c for c in cidrs if ":" in c] or None,
        description="SSH",
    )


def _tags(base: dict[str, str], name: str) -> dict[str, str]:
    return {**base, "Name": name}


@dataclass
class NetworkArgs:
    tags: dict[str, str]
    vpc_id: str | None = None  # an existing VPC (cloud_id): use a subnet of it, create nothing
    # One public subnet per zone (the zones the region's instances were placed in); empty:
    # one subnet in a zone of EC2's choosing (offline plans, which know no zones).
    zones: Sequence[str] = ()


class Network(pulumi.ComponentResource):
    vpc_id: pulumi.Output[str]
    subnet_id: pulumi.Output[str]  # the subnet of instances without a zone (the first one)
    subnet_ids: dict[str, pulumi.Output[str]]  # zone → its public subnet

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions) -> None:
        super().__init__("cloudsend:aws:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        zones = list(args.zones)
        places: list[str | None] = [*zones] if zones else [None]
        self.subnet_ids = {}
        if args.vpc_id is not None:
            vpc_id = args.vpc_id
            self.vpc_id = pulumi.Output.from_input(vpc_id)
            for zone in places:
                filters: list[aws.ec2.GetSubnetsFilterArgsDict] = [
                    {"name": "vpc-id", "values": [vpc_id]},
                    {"name": "map-public-ip-on-launch", "values": ["true"]},
                ]
                if zone is not None:
                    filters.append({"name": "availability-zone", "values": [zone]})
                found = aws.ec2.get_subnets_output(
                    filters=filters, opts=pulumi.InvokeOptions(parent=self)
                )
                chosen = found.ids.apply(functools.partial(_first_subnet, vpc_id=vpc_id, zone=zone))
                if zone is None:
                    self.subnet_id = chosen
                else:
                    self.subnet_ids[zone] = chosen
        else:
            vpc = aws.ec2.Vpc(
                f"{name}-vpc",
                cidr_block="10.0.0.0/16",
                enable_dns_hostnames=True,
                enable_dns_support=True,
                tags=_tags(args.tags, f"{name}-vpc"),
                opts=child,
            )
            gateway = aws.ec2.InternetGateway(
                f"{name}-igw", vpc_id=vpc.id, tags=_tags(args.tags, f"{name}-igw"), opts=child
            )
            table = aws.ec2.RouteTable(
                f"{name}-rt",
                vpc_id=vpc.id,
                routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": gateway.id}],
                tags=_tags(args.tags, f"{name}-rt"),
                opts=child,
            )
            for zone in places:
                suffix = f"-{zone}" if zone else ""
                subnet = aws.ec2.Subnet(
                    f"{name}-subnet{suffix}",
                    vpc_id=vpc.id,
                    # a /20 (4091 addresses: room for big fleets) per zone, fixed by the
                    # zone's letter so adding a zone never moves another zone's subnet
                    cidr_block=_zone_cidr(zone),
                    availability_zone=zone,
                    map_public_ip_on_launch=True,
                    tags=_tags(args.tags, f"{name}-subnet{suffix}"),
                    opts=child,
                )
                aws.ec2.RouteTableAssociation(
                    f"{name}-rta{suffix}", subnet_id=subnet.id, route_table_id=table.id, opts=child
                )
                if zone is None:
                    self.subnet_id = subnet.id
                else:
                    self.subnet_ids[zone] = subnet.id
            self.vpc_id = vpc.id
        if zones:
            self.subnet_id = self.subnet_ids[zones[0]]
        self.register_outputs(
            {"vpc_id": self.vpc_id, "subnet_id": self.subnet_id, "subnet_ids": self.subnet_ids}
        )


def _zone_cidr(zone: str | None) -> str:
    """10.0.0.0/20 without a zone; 10.0.16.0/20 for zone a, 10.0.32.0/20 for b, ... o.

    A zone's range never overlaps the zone-less one, so a stack made before zones were
    chosen can create its new subnets before the old one is deleted (EC2 refuses two
    subnets with one range)."""
    if zone is None:
        return "10.0.0.0/20"
    index = ord(zone[-1]) - ord("a") + 1
    if not 1 <= index < 16:
        raise ConfigError(f"availability zone {zone}: no subnet range for it in 10.0.0.0/16")
    return f"10.0.{16 * index}.0/20"


def _first_subnet(ids: Sequence[str] | None, vpc_id: str, zone: str | None = None) -> str:
    if not ids:
        where = f" in {zone}" if zone else ""
        raise ConfigError(
            f"cloud_id: VPC {vpc_id} has no subnet{where} that gives instances a public IP",
            hint="add one (map-public-ip-on-launch, routed to an internet gateway) "
            "or remove cloud_id to let cloudsend create its own VPC",
        )
    return sorted(ids)[0]  # sorted: the same subnet at every run


@dataclass
class AccessArgs:
    vpc_id: pulumi.Input[str]
    ssh_cidrs: Sequence[str]
    public_key: str
    tags: dict[str, str]
    # maestro: remote: the maestro's security group, admitted on port 22 beside ssh_cidrs
    maestro_group_id: pulumi.Input[str] | None = None


class Access(pulumi.ComponentResource):
    security_group_id: pulumi.Output[str]
    key_name: pulumi.Output[str]

    def __init__(self, name: str, args: AccessArgs, opts: pulumi.ResourceOptions) -> None:
        super().__init__("cloudsend:aws:Access", name, None, opts)
        ssh = _ssh_from(args.ssh_cidrs)
        child = pulumi.ResourceOptions(parent=self)
        ingress = [ssh]
        if args.maestro_group_id is not None:
            ingress.append(
                aws.ec2.SecurityGroupIngressArgs(
                    protocol="tcp",
                    from_port=22,
                    to_port=22,
                    security_groups=[args.maestro_group_id],
                    description="SSH from the maestro",
                )
            )
        group = aws.ec2.SecurityGroup(
            f"{name}-sg",
            description="cloudsend: SSH from the allowed ranges only",
            vpc_id=args.vpc_id,
            ingress=ingress,
            egress=_OPEN_EGRESS,
            tags=_tags(args.tags, f"{name}-sg"),
            opts=child,
        )
        key = aws.ec2.KeyPair(
            f"{name}-key",
            public_key=args.public_key,
            tags=_tags(args.tags, f"{name}-key"),
            opts=child,
        )
        self.security_group_id = group.id
        self.key_name = key.key_name
        self.register_outputs(
            {"security_group_id": self.security_group_id, "key_name": self.key_name}
        )


@dataclass
class IdentityArgs:
    policy_arns: Sequence[str]
    tags: dict[str, str]


class Identity(pulumi.ComponentResource):
    instance_profile: pulumi.Output[str]
    role_name: pulumi.Output[str]
    role_arn: pulumi.Output[str]  # the maestro's re-creation statements pass only this role
    profile_arn: pulumi.Output[str]

    def __init__(self, name: str, args: IdentityArgs, opts: pulumi.ResourceOptions) -> None:
        super().__init__("cloudsend:aws:Identity", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        role = aws.iam.Role(
            f"{name}-role",
            assume_role_policy=_EC2_TRUST_POLICY,
            description="cloudsend instances; permissions only from iam_policy_arns",
            tags=_tags(args.tags, f"{name}-role"),
            opts=child,
        )
        for i, arn in enumerate(args.policy_arns):
            aws.iam.RolePolicyAttachment(
                f"{name}-policy-{i}", role=role.name, policy_arn=arn, opts=child
            )
        profile = aws.iam.InstanceProfile(
            f"{name}-profile",
            role=role.name,
            tags=_tags(args.tags, f"{name}-profile"),
            opts=child,
        )
        self.role_name = role.name
        self.role_arn = role.arn
        self.instance_profile = profile.name
        self.profile_arn = profile.arn
        self.register_outputs({"role": self.role_name, "instance_profile": self.instance_profile})


# What the watcher on a remote maestro calls (monitor.py, power.py, pricing.py): reads, which
# EC2 does not scope to resources, and power actions only on this stack's tagged instances.
MAESTRO_READ_ACTIONS = (
    "ec2:DescribeInstances",
    "ec2:DescribeInstanceStatus",
    "ec2:DescribeInstanceTypes",
    "ec2:DescribeSpotInstanceRequests",
    "ec2:DescribeSpotPriceHistory",
)
MAESTRO_POWER_ACTIONS = ("ec2:StartInstances", "ec2:StopInstances", "ec2:TerminateInstances")


def maestro_policy(region: str, tags: Mapping[str, str]) -> dict[str, Any]:
    """The maestro role's only permissions: EC2 reads, and start/stop/terminate of the
    instances (in `region`) that carry every one of the stack's tags (project and stack: two
    projects may both have a stack "dev")."""
    if not tags:
        raise ConfigError("the maestro's policy needs the stack's tags (it would reach everything)")
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadEc2",
                "Effect": "Allow",
                "Action": list(MAESTRO_READ_ACTIONS),
                "Resource": "*",  # Describe* calls support no resource-level permission
            },
            {
                "Sid": "PowerThisStacksInstances",
                "Effect": "Allow",
                "Action": list(MAESTRO_POWER_ACTIONS),
                "Resource": f"arn:aws:ec2:{region}:*:instance/*",
                "Condition": {
                    "StringEquals": {
                        f"aws:ResourceTag/{key}": value for key, value in sorted(tags.items())
                    }
                },
            },
        ],
    }


@dataclass
class MaestroArgs:
    spec: MaestroSpec
    vpc_id: pulumi.Input[str]
    ssh_cidrs: Sequence[str]
    tags: dict[str, str]
    # a shared s3:// state with awskms:// secrets: the maestro re-creates lost workers itself
    spec_recreation: RecreationPlan | None = None


@dataclass
class RecreateArgs:
    """This stack's resources the maestro's re-creation statements name."""

    instances: Sequence[InstanceSpec]  # the workers (their types, disks, images)
    worker_role_arn: pulumi.Input[str]
    worker_profile_arn: pulumi.Input[str]
    subnet_ids: Sequence[pulumi.Input[str]]
    security_group_id: pulumi.Input[str]
    key_name: pulumi.Input[str]


class Maestro(pulumi.ComponentResource):
    """The remote maestro: its security group and identity at construction (the workers'
    group admits the former), its instance at `launch` (it needs the stack's key pair)."""

    security_group_id: pulumi.Output[str]
    instance_profile: pulumi.Output[str]
    instance: aws.ec2.Instance

    def __init__(self, name: str, args: MaestroArgs, opts: pulumi.ResourceOptions) -> None:
        super().__init__("cloudsend:aws:Maestro", name, None, opts)
        ssh = _ssh_from(args.ssh_cidrs)
        self.args = args
        self.name = name
        child = pulumi.ResourceOptions(parent=self)
        group = aws.ec2.SecurityGroup(
            f"{name}-sg",
            description="cloudsend maestro: SSH from the allowed ranges only",
            vpc_id=args.vpc_id,
            ingress=[ssh],
            egress=_OPEN_EGRESS,
            tags=_tags(args.tags, f"{name}-sg"),
            opts=child,
        )
        role = aws.iam.Role(
            f"{name}-role",
            assume_role_policy=_EC2_TRUST_POLICY,
            description="cloudsend maestro: EC2 reads, power on this stack's instances only",
            tags=_tags(args.tags, f"{name}-role"),
            opts=child,
        )
        aws.iam.RolePolicy(
            f"{name}-policy",
            role=role.name,
            policy=json.dumps(maestro_policy(args.spec.region, args.tags), sort_keys=True),
            opts=child,
        )
        profile = aws.iam.InstanceProfile(
            f"{name}-profile", role=role.name, tags=_tags(args.tags, f"{name}-profile"), opts=child
        )
        self.security_group_id = group.id
        self.instance_profile = profile.name
        self.role = role
        self.profile = profile

    def allow_recreation(self, args: RecreateArgs) -> aws.iam.RolePolicy:
        """The second statement set of the maestro's role (a shared s3:// state and awskms://
        secrets only): what Pulumi's refresh + up of this stack needs to re-create a lost
        worker (recreation.recreate_policy), naming this stack's own resources."""
        plan = self.args.spec_recreation
        assert plan is not None and plan.state is not None and plan.key is not None
        state, key = plan.state, plan.key
        workers = list(args.instances)
        maestro = self.args.spec
        tag_keys = {*self.args.tags, "Name", "cloudsend:instance"}
        if any(i.eco and i.eco_life_hours is not None for i in workers):
            tag_keys.add(ECO_LIFE_TAG)
        parameters = sorted(
            {i.ssm_parameter for i in workers if not i.ami_pinned} | {maestro.ssm_parameter}
        )
        region, tags = maestro.region, dict(self.args.tags)

        def document(values: list[Any]) -> str:
            role_arn, profile_arn, maestro_role, maestro_profile, group, key_name, *subnets = (
                values
            )
            grant = RecreateGrant(
                region=region,
                account=account_of(str(role_arn)),
                tags=tags,
                worker_role_arn=str(role_arn),
                worker_profile_arn=str(profile_arn),
                role_arns=[str(role_arn), str(maestro_role)],
                profile_arns=[str(profile_arn), str(maestro_profile)],
                subnet_ids=[str(s) for s in subnets],
                security_group_ids=[str(group)],
                key_name=str(key_name),
                instance_types=sorted({i.type for i in workers}),
                volume_types=sorted({i.disk_type for i in workers}),
                max_volume_gb=max([i.disk_size for i in workers], default=maestro.disk_size),
                state=state,
                key=key,
                ubuntu_parameters=parameters,
                pinned_images=sorted({i.ami for i in workers if i.ami_pinned and i.ami}),
                volume_tag_keys=sorted(tag_keys),
                spot=any(i.eco for i in workers),
            )
            return json.dumps(recreate_policy(grant), sort_keys=True)

        policy = pulumi.Output.all(
            args.worker_role_arn,
            args.worker_profile_arn,
            self.role.arn,
            self.profile.arn,
            args.security_group_id,
            args.key_name,
            *args.subnet_ids,
        ).apply(document)
        return aws.iam.RolePolicy(
            f"{self.name}-recreate",
            role=self.role.name,
            policy=policy,
            opts=pulumi.ResourceOptions(parent=self),
        )

    def launch(
        self, subnet_id: pulumi.Input[str], key_name: pulumi.Input[str], ami: pulumi.Input[str]
    ) -> aws.ec2.Instance:
        spec = self.args.spec
        tags = {**_tags(self.args.tags, spec.name), "cloudsend:role": "maestro"}
        self.instance = aws.ec2.Instance(
            spec.name,
            instance_type=spec.type,
            ami=ami,
            subnet_id=subnet_id,
            associate_public_ip_address=True,
            vpc_security_group_ids=[self.security_group_id],
            key_name=key_name,
            iam_instance_profile=self.instance_profile,
            root_block_device={
                "volume_size": spec.disk_size,
                "volume_type": spec.disk_type,
                "delete_on_termination": True,
                "encrypted": True,
                "tags": tags,
            },
            metadata_options={"http_endpoint": "enabled", "http_tokens": "required"},
            tags=tags,
            # like the workers: a newer latest-Ubuntu does not replace a running maestro
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["ami"]),
        )
        self.register_outputs(
            {
                "instance": self.instance.id,
                "security_group_id": self.security_group_id,
                "instance_profile": self.instance_profile,
            }
        )
        return self.instance


@dataclass
class ComputeArgs:
    instances: Sequence[InstanceSpec]
    subnet_id: pulumi.Input[str]  # for instances without a zone
    security_group_id: pulumi.Input[str]
    key_name: pulumi.Input[str]
    instance_profile: pulumi.Input[str]
    amis: dict[str, pulumi.Input[str]]  # arch → latest Ubuntu, for specs without `ami`
    tags: dict[str, str]
    subnet_ids: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)  # zone → subnet


class Compute(pulumi.ComponentResource):
    instances: dict[str, aws.ec2.Instance]

    def __init__(self, name: str, args: ComputeArgs, opts: pulumi.ResourceOptions) -> None:
        super().__init__("cloudsend:aws:Compute", name, None, opts)
        self.instances = {}
        for spec in args.instances:
            ami = spec.ami if spec.ami is not None else args.amis[spec.arch]
            tags = {**_tags(args.tags, spec.name), "cloudsend:instance": spec.name}
            if spec.eco and spec.eco_life_hours is not None:
                # the monitor tells an eco_life end (never replaced) from a loss by this
                tags[ECO_LIFE_TAG] = str(eco_life_minutes(spec.eco_life_hours))
            self.instances[spec.name] = aws.ec2.Instance(
                spec.name,
                instance_type=spec.type,
                ami=ami,
                subnet_id=args.subnet_ids[spec.zone] if spec.zone else args.subnet_id,
                associate_public_ip_address=True,  # also in a given VPC's subnet
                vpc_security_group_ids=[args.security_group_id],
                key_name=args.key_name,
                iam_instance_profile=args.instance_profile,
                root_block_device={
                    "volume_size": spec.disk_size,
                    "volume_type": spec.disk_type,
                    **({"iops": spec.disk_iops} if spec.disk_iops is not None else {}),
                    "delete_on_termination": True,
                    "encrypted": True,
                    "tags": tags,  # volumes are tagged too, so leak checks find them
                },
                metadata_options={"http_endpoint": "enabled", "http_tokens": "required"},
                tags=tags,
                opts=instance_options(spec, self),
                **_spot_args(spec),
                **_cpu_args(spec),
            )
        self.register_outputs({"instances": {n: i.id for n, i in self.instances.items()}})


def instance_options(spec: InstanceSpec, parent: pulumi.Resource | None) -> pulumi.ResourceOptions:
    """The latest-Ubuntu AMI changes every few weeks; replacing every instance (and its running
    jobs) at the next `up` for that would be wrong, so only new instances get the new image.
    An img_id from the config is the user's choice: changing it does replace."""
    return pulumi.ResourceOptions(
        parent=parent, ignore_changes=None if spec.ami_pinned else ["ami"]
    )


def _spot_args(spec: InstanceSpec) -> dict[str, Any]:
    if not spec.eco:
        return {}
    spot: dict[str, Any] = {
        "spot_instance_type": "one-time",
        "instance_interruption_behavior": "terminate",
    }
    if spec.max_price is not None:
        spot["max_price"] = spec.max_price
    out: dict[str, Any] = {
        "instance_market_options": {"market_type": "spot", "spot_options": spot},
        # A one-time spot instance cannot be stopped: shutting down means terminating.
        "instance_initiated_shutdown_behavior": "terminate",
    }
    if spec.eco_life_hours is not None:
        minutes = eco_life_minutes(spec.eco_life_hours)
        out["user_data"] = (
            "#!/bin/sh\n# cloudsend: eco_life - this spot instance ends itself after "
            f"{minutes} min\nshutdown -P +{minutes}\n"
        )
        out["user_data_replace_on_change"] = True  # a new eco_life: a new spot instance
    return out


def _cpu_args(spec: InstanceSpec) -> dict[str, Any]:
    # One thread per core, so the vCPUs the host shows equal the `cpus` slots jobs are packed
    # into (with the default 2 threads per core, cpus: 4 would show 8 CPUs).
    if spec.cpus is None:
        return {}
    return {"cpu_options": {"core_count": spec.cpus, "threads_per_core": 1}}


def _latest_ubuntu(
    members: Sequence[InstanceSpec | MaestroSpec], parent: pulumi.Resource
) -> dict[str, pulumi.Input[str]]:
    """arch → the latest Ubuntu LTS image of the region (SSM public parameter), for the
    instances that have no AMI given; looked up through the region's provider (the parent's)."""
    wanted = {i.arch: i.ssm_parameter for i in members if i.ami is None}
    # insecure_value: the provider marks `value` secret for every parameter, so the AMI id
    # would show as [secret] in the outputs; Canonical's parameters are plain Strings (the
    # provider fills insecure_value for any parameter that is not a SecureString).
    return {
        arch: aws.ssm.get_parameter_output(
            name=name, with_decryption=False, opts=pulumi.InvokeOptions(parent=parent)
        ).insecure_value
        for arch, name in sorted(wanted.items())
    }


def declare(spec: StackSpec) -> dict[str, aws.ec2.Instance]:
    """Declare every resource of `spec`; returns the instances by name (see declare_all)."""
    return declare_all(spec)[0]


def declare_all(spec: StackSpec) -> tuple[dict[str, aws.ec2.Instance], aws.ec2.Instance | None]:
    """Declare every resource of `spec`; returns the instances by name and the maestro."""
    # profile: the same account as boto3's lookups, the monitor and the leak check (an
    # ambient AWS_PROFILE or default credentials could name another one).
    providers = {
        region: aws.Provider(f"{spec.project}-{region}", region=region, profile=spec.profile)
        for region in spec.regions
    }
    identity = Identity(
        f"{spec.project}-identity",
        IdentityArgs(policy_arns=spec.iam_policy_arns, tags=spec.tags),
        pulumi.ResourceOptions(provider=providers[spec.region]),
    )
    instances: dict[str, aws.ec2.Instance] = {}
    maestro_instance: aws.ec2.Instance | None = None
    for region in spec.regions:
        members = spec.in_region(region)
        maestro_spec = spec.maestro_in(region)
        if not members and maestro_spec is None:
            continue  # the default region may hold only IAM
        opts = pulumi.ResourceOptions(provider=providers[region])
        prefix = f"{spec.project}-{region}"
        network = Network(
            prefix, NetworkArgs(spec.tags, spec.vpc_ids.get(region), spec.zones(region)), opts
        )
        maestro = None
        if maestro_spec is not None:
            maestro = Maestro(
                f"{spec.project}-maestro",
                MaestroArgs(
                    maestro_spec,
                    network.vpc_id,
                    spec.ssh_cidrs,
                    spec.tags,
                    spec_recreation=spec.recreation
                    if spec.recreation is not None and spec.recreation.on_maestro
                    else None,
                ),
                opts,
            )
        access = Access(
            prefix,
            AccessArgs(
                network.vpc_id,
                spec.ssh_cidrs,
                spec.public_key,
                spec.tags,
                maestro_group_id=maestro.security_group_id if maestro is not None else None,
            ),
            opts,
        )
        if maestro is not None and maestro_spec is not None:
            ami: pulumi.Input[str]
            if maestro_spec.ami is not None:
                ami = maestro_spec.ami
            else:
                ami = _latest_ubuntu([maestro_spec], network)[maestro_spec.arch]
            zone = maestro_spec.zone
            maestro_instance = maestro.launch(
                network.subnet_ids[zone] if zone else network.subnet_id, access.key_name, ami
            )
            if maestro.args.spec_recreation is not None:
                maestro.allow_recreation(
                    RecreateArgs(
                        instances=members,
                        worker_role_arn=identity.role_arn,
                        worker_profile_arn=identity.profile_arn,
                        subnet_ids=list(network.subnet_ids.values()) or [network.subnet_id],
                        security_group_id=access.security_group_id,
                        key_name=access.key_name,
                    )
                )
        if not members:
            continue
        compute = Compute(
            prefix,
            ComputeArgs(
                instances=members,
                subnet_id=network.subnet_id,
                subnet_ids=network.subnet_ids,
                security_group_id=access.security_group_id,
                key_name=access.key_name,
                instance_profile=identity.instance_profile,
                amis=_latest_ubuntu(members, network),
                tags=spec.tags,
            ),
            opts,
        )
        instances.update(compute.instances)
    return instances, maestro_instance


def make_program(spec: StackSpec) -> Callable[[], None]:
    """The Pulumi program for `spec` (for the Automation API, the CLI entry and the mocks).

    Exports `instances` = {name: {"id", "public_ip", "private_ip", "region", "user"}};
    with maestro: remote, `maestro` = the same keys for the maestro; when the spec carries the
    stack key's private half, `stack_key` (a secret) and `ssh_cidrs`, which the next caller of
    a shared stack reads back (provider.shared_state) so its `up` keeps the key pair.
    """
    by_name = {i.name: i for i in spec.instances}

    def program() -> None:
        created, maestro = declare_all(spec)
        if maestro is not None and spec.maestro is not None:
            pulumi.export(
                "maestro",
                {
                    "id": maestro.id,
                    "public_ip": maestro.public_ip,
                    "private_ip": maestro.private_ip,
                    "region": spec.maestro.region,
                    "user": spec.maestro.username,
                    "type": spec.maestro.type,
                },
            )
        if spec.private_key is not None:
            pulumi.export("stack_key", pulumi.Output.secret(spec.private_key))
            pulumi.export("ssh_cidrs", list(spec.ssh_cidrs))
        pulumi.export(
            "instances",
            {
                name: {
                    "id": inst.id,
                    "public_ip": inst.public_ip,
                    "private_ip": inst.private_ip,
                    "region": by_name[name].region,
                    "user": by_name[name].username,
                }
                for name, inst in created.items()
            },
        )

    return program
