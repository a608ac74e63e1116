"""What the AWS stack should contain, as plain data: Config → StackSpec (pure, no pulumi).

The Pulumi program (`program.py`), the offline preview, the cost estimate and the provider all
read this one description, so they cannot disagree about names, counts or prices. Everything
that needs the outside world (the caller's public IP, the latest AMI, the default region of the
AWS credential chain, the clock) is passed in, which keeps this module deterministic and
testable without AWS.

Choices made here (and why):

- Region: `instances[].region`, else the global `region:`, else `default_region` — the caller
  passes the region of boto3's credential chain (AWS_REGION / AWS_DEFAULT_REGION / profile).
  This module never reads the environment itself. No region anywhere → ConfigError.
- `number` is expanded (instance count == sum of `number`); `explode` is ignored on AWS:
  splitting an entry would need smaller instance *types*, which we do not pick for the user.
- Names are `<project>-<entry index>-<n>` (both 0-based, like the local provider's hosts),
  with the project reduced to [a-z0-9-] so it is valid in every AWS name it ends up in.
- A missing `type` is t3.micro, or the usual type for `gpu:` when one is asked for.
- Root volume: 20 GB gp3 by default — the stock Ubuntu image's 8 GB leaves too little room
  for a conda environment; st1/sc1 (HDD) cannot be boot volumes and are refused here.
- `eco_life`: the spot deadline `valid_until` is computed from `now` for reporting; EC2 only
  honours ValidUntil on *persistent* requests, so the program enforces eco_life differently
  (see program.py).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from cloudsend.config.models import Config, InstanceConfig
from cloudsend.errors import ConfigError
from cloudsend.providers.aws.recreation import RecreationPlan, maestro_recreation

DEFAULT_TYPE = "t3.micro"
DEFAULT_USERNAME = "ubuntu"
DEFAULT_DISK_GB = 20
DEFAULT_DISK_TYPE = "gp3"
DEFAULT_MAESTRO_TYPE = "t3.micro"  # maestro: remote: the watcher needs little CPU or memory
MAESTRO_DISK_GB = 20  # results gather on the maestro's disk before `fetch`
# An EC2 instance type name: family (letters, a generation digit, attribute letters, an
# optional "-flex"-style suffix), a dot, a size ("micro", "2xlarge", "metal-24xl").
_INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\d[a-z0-9-]*\.[a-z0-9][a-z0-9-]*$")
ROOT_DISK_TYPES = ("gp3", "gp2", "io2", "io1", "standard")
_HDD_TYPES = ("st1", "sc1")
# On a spot instance with eco_life: its lifetime in minutes from launch (the monitor reads it).
ECO_LIFE_TAG = "cloudsend:eco_life_minutes"
# Provisioned IOPS: EC2 requires Iops for io1/io2 and allows it on gp3 (3000 included);
# type → (most IOPS per GB, most IOPS per volume). gp2/standard take none.
IOPS_LIMITS = {"io1": (50, 64_000), "io2": (1_000, 256_000), "gp3": (500, 16_000)}
DEFAULT_IOPS = 3_000

# gpu: kind → the smallest common instance type that has one (used only when `type` is unset).
GPU_DEFAULT_TYPES = {"t4": "g4dn.xlarge", "a10g": "g5.xlarge", "v100": "p3.2xlarge"}

UBUNTU_SSM_PARAMETER = (
    "/aws/service/canonical/ubuntu/server/24.04/stable/current/{arch}/hvm/ebs-gp3/ami-id"
)

# Graviton families: a digit then "g" (t4g, m7gd, c6gn, g5g, x2gd...) and the first one, a1.
_ARM_FAMILY = re.compile(r"^(a1|[a-z]+\d+g[a-z]*)(-[a-z]+)?$")
_STACK_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
_SLUG_BAD = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class InstanceSpec:
    """One EC2 instance to create (an `instances[]` entry × `number` gives several)."""

    name: str  # <project>-<entry>-<n>: the Pulumi logical name, the Name tag and the host name
    entry: int  # index in config.instances
    type: str
    ami: str | None  # None: the program looks up the latest Ubuntu LTS for `arch` in `region`
    username: str
    region: str
    disk_size: int
    disk_type: str
    disk_iops: int | None = None  # io1/io2 always (EC2 requires it), gp3 when asked
    eco: bool = False
    max_price: str | None = None  # spot only, "$/hour" as EC2 wants it (a string)
    valid_until: str | None = None  # spot only: now + eco_life, UTC "YYYY-MM-DDTHH:MM:SSZ"
    eco_life_hours: float | None = None  # spot only
    cpus: int | None = None  # cpu_options core_count (one thread per core)
    gpu: str | None = None
    vpc_id: str | None = None  # the entry's cloud_id: use this VPC instead of creating one
    arch: str = "amd64"  # "arm64" for Graviton types: picks the matching Ubuntu image
    # True when img_id names the image (changing it replaces the instance); False for "the
    # latest Ubuntu", which moves every few weeks and must not replace running instances.
    ami_pinned: bool = False
    # The availability zone (the program puts the instance in that zone's subnet); None: let
    # EC2 pick (offline plans, which cannot ask which zones offer the type).
    zone: str | None = None

    @property
    def ssm_parameter(self) -> str:
        return UBUNTU_SSM_PARAMETER.format(arch=self.arch)


@dataclass(frozen=True)
class MaestroSpec:
    """`maestro: remote`: the small on-demand instance that runs the watcher, in the stack's
    default region (its VPC, a security group of its own, a least-privilege instance role)."""

    name: str  # <project>-maestro: Pulumi name, Name tag
    type: str
    region: str
    ami: str | None = None  # None: the latest Ubuntu of `arch` (SSM), like the workers
    username: str = DEFAULT_USERNAME
    disk_size: int = MAESTRO_DISK_GB
    disk_type: str = DEFAULT_DISK_TYPE
    arch: str = "amd64"
    zone: str | None = None

    @property
    def ssm_parameter(self) -> str:
        return UBUNTU_SSM_PARAMETER.format(arch=self.arch)


@dataclass(frozen=True)
class StackSpec:
    """The whole stack: instances plus what they share (network, access, identity)."""

    project: str  # slug, as used in names
    stack: str
    region: str  # default region: the instances' when they do not set one; IAM lives here
    instances: tuple[InstanceSpec, ...]
    ssh_cidrs: tuple[str, ...]
    public_key: str  # OpenSSH text, "ssh-ed25519 AAAA... comment"
    iam_policy_arns: tuple[str, ...] = ()
    vpc_ids: dict[str, str] = field(default_factory=dict)  # region → cloud_id given for it
    tags: dict[str, str] = field(default_factory=dict)
    # The config's `profile:`: the Pulumi providers deploy with the account boto3 looks at.
    profile: str | None = None
    maestro: MaestroSpec | None = None  # maestro: remote
    # The stack key's private half (OpenSSH PEM), exported as a secret stack output so a
    # teammate's `up` reuses it instead of replacing the key pair and every instance.
    private_key: str | None = field(default=None, repr=False)
    # maestro: remote: who re-creates a lost worker (the maestro with a shared s3:// state and
    # awskms:// secrets, which adds the re-creation statements to its role; else the laptop)
    recreation: RecreationPlan | None = None

    @property
    def vpc_id(self) -> str | None:
        """The first entry's cloud_id (if any); per region see `vpc_ids`."""
        return next(iter(self.vpc_ids.values()), None)

    @property
    def regions(self) -> list[str]:
        """Regions used, the default one first, then in order of appearance."""
        seen = [self.region]
        for inst in self.instances:
            if inst.region not in seen:
                seen.append(inst.region)
        return seen

    def in_region(self, region: str) -> list[InstanceSpec]:
        return [i for i in self.instances if i.region == region]

    def zones(self, region: str) -> list[str]:
        """The availability zones the region's instances (and maestro) were placed in."""
        zones = {i.zone for i in self.in_region(region) if i.zone is not None}
        if self.maestro is not None and self.maestro.region == region and self.maestro.zone:
            zones.add(self.maestro.zone)
        return sorted(zones)

    def maestro_in(self, region: str) -> MaestroSpec | None:
        return self.maestro if self.maestro is not None and self.maestro.region == region else None


def place_in_zones(
    spec: StackSpec, choices: Mapping[tuple[str, str], Sequence[str]]
) -> StackSpec:
    """Each (region, type)'s instances spread over its zones, round robin in spec order (so
    spot capacity comes from several pools, and the same spec always lands the same way).
    A pair without zones keeps zone None (EC2 picks)."""
    seen: dict[tuple[str, str], int] = {}
    placed: list[InstanceSpec] = []
    maestro = spec.maestro
    if maestro is not None:
        zones = list(choices.get((maestro.region, maestro.type)) or ())
        if zones:
            maestro = replace(maestro, zone=zones[0])
    for inst in spec.instances:
        key = (inst.region, inst.type)
        zones = list(choices.get(key) or ())
        if not zones:
            placed.append(inst)
            continue
        n = seen.get(key, 0)
        seen[key] = n + 1
        placed.append(replace(inst, zone=zones[n % len(zones)]))
    return replace(spec, instances=tuple(placed), maestro=maestro)


def stack_spec(
    config: Config,
    *,
    public_key: str,
    ssh_cidrs: list[str],
    amis: Mapping[Any, str] | None = None,
    now: datetime | None = None,
    default_region: str | None = None,
    private_key: str | None = None,
    on_maestro_type: str | None = None,
) -> StackSpec:
    """Build the StackSpec of `config` (raises ConfigError naming the key on bad values).

    `ssh_cidrs`: who may SSH in (the caller passes config.aws.ssh_cidrs, or the detected public
    IP as /32); empty is refused — we never fall back to an open port 22.
    `amis`: AMI ids already resolved by the caller, keyed by region or by (region, type) as
    `ami.ubuntu_amis` returns them; instances with img_id keep theirs, the rest without an
    entry here are resolved by the program through SSM.
    `now`: the clock for eco_life deadlines (UTC; default: the current time).
    `default_region`: the credential chain's region, used when the config names none.
    `private_key`: the stack key's private half, exported as a secret output (see StackSpec).
    `on_maestro_type`: set when this runs ON the stack's maestro (its config says `maestro:
    local`, the watcher being local there): the maestro is declared all the same, of this type
    unless the config's maestro_type says otherwise; a program without it would destroy it.
    """
    project = project_slug(config)
    stack = stack_name(config)
    if not _STACK_NAME.match(stack):
        raise ConfigError(
            f"stack: {stack!r} is not a valid Pulumi stack name",
            hint="use letters, digits, '-', '_' and '.' only",
        )
    entries = config.instances or [InstanceConfig()]
    region = config.aws.region or default_region
    if region is None and any(e.region is None for e in entries):
        raise ConfigError(
            "no AWS region: set `region:` in the config (or on each instance) or AWS_REGION",
            hint="e.g. region: us-east-1",
        )
    when = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    instances: list[InstanceSpec] = []
    vpc_ids: dict[str, str] = {}
    for index, entry in enumerate(entries):
        where = f"instances[{index}]"
        inst_region = entry.region or region
        assert inst_region is not None  # checked above
        if entry.cloud_id:
            known = vpc_ids.setdefault(inst_region, entry.cloud_id)
            if known != entry.cloud_id:
                raise ConfigError(
                    f"{where}.cloud_id: {entry.cloud_id} differs from {known}, "
                    f"already used in {inst_region}",
                    hint="use one VPC per region",
                )
        for n in range(entry.number):
            instances.append(
                _instance(entry, where, f"{project}-{index}-{n}", index, inst_region, amis, when)
            )
    default = region or instances[0].region
    maestro = _maestro(config, project, default, amis, on_maestro_type)
    if maestro is not None:
        others = sorted({i.region for i in instances} - {default})
        if others:
            raise ConfigError(
                f"maestro: remote with instances in {', '.join(others)}: the maestro lives in "
                f"{default} and reaches workers through its security group, which does not "
                "cross regions",
                hint=f"keep every instance in {default} (or use maestro: local)",
            )
    return StackSpec(
        project=project,
        stack=stack,
        region=default,
        instances=tuple(instances),
        ssh_cidrs=tuple(check_cidrs(ssh_cidrs)),
        public_key=_check_public_key(public_key),
        iam_policy_arns=tuple(_check_arns(config.aws.iam_policy_arns)),
        vpc_ids=vpc_ids,
        tags={"cloudsend:project": project, "cloudsend:stack": stack},
        profile=config.aws.profile or None,
        maestro=maestro,
        private_key=private_key,
        recreation=None
        if maestro is None
        else maestro_recreation(config.aws.state_backend, config.aws.secrets_provider),
    )


def check_instance_type(value: str, where: str) -> str:
    """Refuse what cannot be an EC2 instance type name (`t3.micro`, `m7gd.2xlarge`) before
    anything is asked of AWS; whether the region offers it is checked online (zones.py)."""
    itype = value.strip()
    if not _INSTANCE_TYPE.match(itype):
        raise ConfigError(
            f"{where}: {value!r} is not an EC2 instance type",
            hint=f"write family.size, e.g. {DEFAULT_MAESTRO_TYPE} or t3.nano",
        )
    return itype


def _maestro(
    config: Config,
    project: str,
    region: str,
    amis: Mapping[Any, str] | None,
    on_maestro_type: str | None = None,
) -> MaestroSpec | None:
    if config.maestro != "remote" and on_maestro_type is None:
        return None
    wanted = config.aws.maestro_type or on_maestro_type or DEFAULT_MAESTRO_TYPE
    itype = check_instance_type(wanted, "maestro_type")
    return MaestroSpec(
        name=f"{project}-maestro",
        type=itype,
        region=region,
        ami=_given_ami(amis, region, itype),
        arch="arm64" if _ARM_FAMILY.match(itype.split(".")[0]) else "amd64",
    )


def _instance(
    entry: InstanceConfig,
    where: str,
    name: str,
    index: int,
    region: str,
    amis: Mapping[Any, str] | None,
    now: datetime,
) -> InstanceSpec:
    itype = entry.type or _type_for_gpu(entry.gpu, where)
    disk_type = (entry.disk_type or DEFAULT_DISK_TYPE).lower()
    if disk_type in _HDD_TYPES:
        raise ConfigError(
            f"{where}.disk_type: {disk_type} (HDD) cannot be a root volume",
            hint=f"use one of {', '.join(ROOT_DISK_TYPES)}",
        )
    if disk_type not in ROOT_DISK_TYPES:
        raise ConfigError(
            f"{where}.disk_type: unknown EBS volume type {entry.disk_type!r}",
            hint=f"use one of {', '.join(ROOT_DISK_TYPES)}",
        )
    disk_size = entry.disk_size or DEFAULT_DISK_GB
    iops = _disk_iops(where, disk_type, disk_size, entry.disk_iops)
    life = entry.eco_life if entry.eco else None
    return InstanceSpec(
        name=name,
        entry=index,
        type=itype,
        ami=entry.img_id or _given_ami(amis, region, itype),
        username=entry.img_username or DEFAULT_USERNAME,
        region=region,
        disk_size=disk_size,
        disk_type=disk_type,
        disk_iops=iops,
        eco=entry.eco,
        max_price=price_text(entry.max_bid) if entry.eco and entry.max_bid else None,
        valid_until=_deadline(now, life) if life else None,
        eco_life_hours=life.total_seconds() / 3600 if life else None,
        cpus=entry.cpus,
        gpu=entry.gpu,
        vpc_id=entry.cloud_id or None,
        arch="arm64" if _ARM_FAMILY.match(itype.split(".")[0]) else "amd64",
        ami_pinned=bool(entry.img_id),
    )


def _disk_iops(where: str, disk_type: str, size: int, asked: int | None) -> int | None:
    """The root volume's Iops: EC2 refuses io1/io2 volumes without one ("Iops is required")."""
    limits = IOPS_LIMITS.get(disk_type)
    if limits is None:
        if asked is not None:
            raise ConfigError(
                f"{where}.disk_iops: a {disk_type} volume has no provisioned IOPS",
                hint="remove disk_iops, or use disk_type io2, io1 or gp3",
            )
        return None
    per_gb, most = limits
    allowed = min(most, per_gb * size)
    if asked is None:
        if disk_type == "gp3":
            return None  # gp3's 3000 baseline is included
        asked = min(DEFAULT_IOPS, allowed)
    if asked > allowed or asked < 100:
        raise ConfigError(
            f"{where}.disk_iops: {asked} IOPS on a {size} GB {disk_type} volume; EC2 allows "
            f"100 to {allowed} ({per_gb} per GB, at most {most})",
            hint="lower disk_iops or raise disk_size",
        )
    return asked


def _given_ami(amis: Mapping[Any, str] | None, region: str, itype: str) -> str | None:
    if not amis:
        return None
    return amis.get((region, itype)) or amis.get(region)


def _type_for_gpu(gpu: str | None, where: str) -> str:
    if gpu is None:
        return DEFAULT_TYPE
    default = GPU_DEFAULT_TYPES.get(gpu.strip().lower())
    if default is None:
        raise ConfigError(
            f"{where}.gpu: no default instance type for GPU {gpu!r}",
            hint=f"set `type:` to an instance type that has it (known kinds: "
            f"{', '.join(sorted(GPU_DEFAULT_TYPES))})",
        )
    return default


def _deadline(now: datetime, life: timedelta) -> str:
    return (now + life).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def price_text(value: float) -> str:
    """0.05 → "0.05": EC2 takes max prices as decimal strings (no exponent, no float noise)."""
    return f"{value:.6f}".rstrip("0").rstrip(".")


def eco_life_minutes(hours: float) -> int:
    """Whole minutes (rounded up) for `shutdown +N`; at least one."""
    return max(1, math.ceil(hours * 60 - 1e-9))


def slug(text: str) -> str:
    """A project name reduced to what every AWS name accepts: [a-z0-9-], at most 32 chars.

    Also a valid Pulumi project name (those allow letters, digits, '-', '_' and '.'), and
    idempotent: slug(slug(x)) == slug(x), so passing a slug through it again changes nothing.
    """
    cleaned = _SLUG_BAD.sub("-", text.lower()).strip("-")[:32].strip("-")
    return cleaned or "cloudsend"


def project_slug(config: Config) -> str:
    """The one project name of a config on AWS: the Pulumi project the engine drives, the
    name stacks/__main__.py expects in Pulumi.yaml, the stack key's name, tags and names."""
    return slug(config.project_name)


def stack_name(config: Config) -> str:
    """The Pulumi stack: the config's `stack:`, else the project slug."""
    return config.aws.stack or project_slug(config)


@dataclass(frozen=True)
class SharedState:
    """What a shared stack's last `up` recorded for the next caller (its stack outputs): the
    stack key's private half (a secret output) and the SSH ranges it allowed."""

    private_key: str | None = field(default=None, repr=False)
    ssh_cidrs: tuple[str, ...] = ()

    @classmethod
    def from_outputs(cls, outputs: Mapping[str, Any]) -> SharedState:
        key = outputs.get("stack_key")
        cidrs = outputs.get("ssh_cidrs") or ()
        return cls(
            private_key=key if isinstance(key, str) and key.strip() else None,
            ssh_cidrs=tuple(str(c) for c in cidrs if isinstance(c, str)),
        )


def shared_ssh_cidrs(
    configured: Sequence[str], recorded: Sequence[str], caller: str | None
) -> list[str]:
    """Who may SSH into a shared stack: the config's ssh_cidrs when it sets them (exactly
    those); else every earlier caller's range (recorded by the stack) plus this caller's /32,
    so a teammate's `up` never locks the previous one out."""
    if configured:
        return check_cidrs(list(configured))
    return check_cidrs([*recorded, *([caller] if caller else [])])


def check_cidrs(cidrs: list[str] | tuple[str, ...]) -> list[str]:
    """Normalise SSH source ranges; refuse an empty list (it would mean "nobody", and the only
    way to make that work would be to open port 22 to everyone, which we never do silently)."""
    if not cidrs:
        raise ConfigError(
            "no SSH source range: refusing to create a security group open to everyone",
            hint="set ssh_cidrs: [your.public.ip/32] (cloudsend detects it when it can)",
        )
    out: list[str] = []
    for cidr in cidrs:
        try:
            net = ipaddress.ip_network(cidr.strip() if isinstance(cidr, str) else cidr)
        except ValueError as exc:
            raise ConfigError(
                f"ssh_cidrs: {cidr!r} is not a CIDR range ({exc})",
                hint="write an address range such as 203.0.113.7/32",
            ) from None
        if str(net) not in out:
            out.append(str(net))
    return out


def _check_public_key(text: str) -> str:
    key = text.strip()
    parts = key.split()
    if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-")):
        raise ConfigError(
            "the SSH public key is not in OpenSSH format ('ssh-ed25519 AAAA...')",
            hint="let cloudsend generate the stack key (keys.stack_key)",
        )
    return key


def _check_arns(arns: list[str]) -> list[str]:
    for arn in arns:
        if not arn.startswith("arn:") or ":iam::" not in arn or ":policy/" not in arn:
            raise ConfigError(
                f"iam_policy_arns: {arn!r} is not an IAM policy ARN",
                hint="e.g. arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess",
            )
    return list(dict.fromkeys(arns))
