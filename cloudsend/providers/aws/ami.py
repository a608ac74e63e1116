"""The latest Ubuntu LTS AMI, from the SSM public parameters Canonical maintains.

Canonical publishes the current image id of every release, architecture and volume type under
/aws/service/canonical/ubuntu/server/<release>/stable/current/<arch>/hvm/ebs-gp3/ami-id in every
region. Reading that is one cheap, always-current call, where describe_images would need an
owner id, a name pattern and a sort over hundreds of images.

The architecture follows the instance type (Graviton types need arm64 images); `instance_arch`
asks describe_instance_types so we never keep a list of ARM families by hand.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from cloudsend.errors import ProvisionError
from cloudsend.providers.aws.session import client, credentials_error, profile_of

if TYPE_CHECKING:
    from boto3.session import Session

DEFAULT_RELEASE = "24.04"
ARCHES = ("amd64", "arm64")
PARAMETER = (
    "/aws/service/canonical/ubuntu/server/{release}/stable/current/{arch}/hvm/ebs-gp3/ami-id"
)

# describe_instance_types names architectures the kernel way; Ubuntu names them the Debian way.
_EC2_TO_UBUNTU_ARCH = {"x86_64": "amd64", "arm64": "arm64"}


def ubuntu_parameter(release: str = DEFAULT_RELEASE, arch: str = "amd64") -> str:
    """The SSM parameter name holding the current AMI id for an Ubuntu release and arch."""
    return PARAMETER.format(release=release, arch=arch)


def latest_ubuntu_ami(
    session: Session, region: str, release: str = DEFAULT_RELEASE, arch: str = "amd64"
) -> str:
    """The current Ubuntu Server `release` AMI id for `arch` (amd64 | arm64) in `region`."""
    if arch not in ARCHES:
        raise ProvisionError(
            f"unknown architecture {arch!r} for the Ubuntu image",
            hint=f"use one of: {', '.join(ARCHES)}",
        )
    name = ubuntu_parameter(release, arch)
    ssm = client(session, "ssm", region)
    try:
        answer = ssm.get_parameter(Name=name)
    except Exception as exc:  # botocore errors: ParameterNotFound is a ClientError code
        credentials = credentials_error(exc, profile_of(session))
        if credentials is not None:
            raise credentials from None
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        if code == "ParameterNotFound":
            raise ProvisionError(
                f"no Ubuntu {release} {arch} image is published in {region} "
                f"(SSM parameter {name} not found)",
                hint="use an LTS release Canonical publishes (e.g. 24.04 or 22.04) and check "
                "the region name, or set `img_id:` on the instance to an image id",
            ) from exc
        raise ProvisionError(
            f"could not look up the Ubuntu {release} image in {region}: {exc}",
            hint="check AWS credentials and that ssm:GetParameter is allowed",
        ) from exc
    value = str(answer.get("Parameter", {}).get("Value", "")).strip()
    if not value.startswith("ami-"):
        raise ProvisionError(
            f"the Ubuntu image parameter {name} in {region} holds {value[:40]!r}, not an AMI id",
            hint="set `img_id:` on the instance to an image id",
        )
    return value


def instance_arch(session: Session, region: str, instance_type: str) -> str:
    """The Ubuntu architecture ("amd64" or "arm64") an instance type runs."""
    ec2 = client(session, "ec2", region)
    try:
        answer = ec2.describe_instance_types(InstanceTypes=[instance_type])
    except Exception as exc:  # InvalidInstanceType is a ClientError code
        credentials = credentials_error(exc, profile_of(session))
        if credentials is not None:
            raise credentials from None  # not "is not offered: Unable to locate credentials"
        raise ProvisionError(
            f"instance type {instance_type!r} is not offered in {region}: {exc}",
            hint="check the type name, or pick a region that offers it",
        ) from exc
    found = answer.get("InstanceTypes", [])
    supported = found[0].get("ProcessorInfo", {}).get("SupportedArchitectures", []) if found else []
    for ec2_arch in supported:
        if ec2_arch in _EC2_TO_UBUNTU_ARCH:
            return _EC2_TO_UBUNTU_ARCH[ec2_arch]
    raise ProvisionError(
        f"instance type {instance_type!r} in {region} has no architecture Ubuntu supports "
        f"({', '.join(supported) or 'none reported'})",
        hint="pick an x86_64 or arm64 instance type",
    )


def ubuntu_amis(
    session: Session, wanted: Iterable[tuple[str, str]], release: str = DEFAULT_RELEASE
) -> dict[tuple[str, str], str]:
    """{(region, instance_type): ami_id} for every wanted pair, one SSM call per (region, arch)."""
    arches: dict[tuple[str, str], str] = {}
    amis: dict[tuple[str, str], str] = {}
    result: dict[tuple[str, str], str] = {}
    for region, itype in sorted(set(wanted)):
        if (region, itype) not in arches:
            arches[(region, itype)] = instance_arch(session, region, itype)
        arch = arches[(region, itype)]
        if (region, arch) not in amis:
            amis[(region, arch)] = latest_ubuntu_ami(session, region, release, arch)
        result[(region, itype)] = amis[(region, arch)]
    return result
