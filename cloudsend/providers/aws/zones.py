"""Availability zones: where each instance type is offered, and which zones a VPC reaches.

A subnet without an availability zone lets EC2 pick one, which may not offer the instance type
("Unsupported: Your requested instance type is not supported in your requested Availability
Zone") and puts every spot instance in one zone's capacity pool. `plan()` therefore asks EC2
which zones offer each type (describe_instance_type_offerings, location type
availability-zone), keeps those where the stack can have a public subnet (any zone of our own
VPC; for a `cloud_id`, the zones of its subnets that give public IPs), and `spec.place_in_zones`
spreads each type's instances over them. Only regular zones are used (`<region><letter>`):
Local and Wavelength zones need opting in and their own subnets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from cloudsend.errors import ProvisionError
from cloudsend.providers.aws.session import client, credentials_error, profile_of

if TYPE_CHECKING:
    from boto3.session import Session

    from cloudsend.providers.aws.spec import StackSpec


def is_regular_zone(region: str, zone: str) -> bool:
    return re.fullmatch(re.escape(region) + r"[a-z]", zone) is not None


def _failure(exc: Exception, session: Session, what: str, hint: str) -> ProvisionError:
    credentials = credentials_error(exc, profile_of(session))
    return credentials if credentials is not None else ProvisionError(f"{what}: {exc}", hint=hint)


def offered_zones(session: Session, region: str, types: Iterable[str]) -> dict[str, list[str]]:
    """{instance type: sorted regular zones of `region` offering it} (a type offered
    nowhere maps to [])."""
    wanted = sorted(set(types))
    found: dict[str, set[str]] = {t: set() for t in wanted}
    ec2 = client(session, "ec2", region)
    try:
        pages = ec2.get_paginator("describe_instance_type_offerings").paginate(
            LocationType="availability-zone",
            Filters=[{"Name": "instance-type", "Values": wanted}],
        )
        for page in pages:
            for offer in page.get("InstanceTypeOfferings", []):
                zone, itype = offer.get("Location", ""), offer.get("InstanceType", "")
                if itype in found and is_regular_zone(region, zone):
                    found[itype].add(zone)
    except Exception as exc:  # botocore errors share no useful base beyond Exception
        raise _failure(
            exc,
            session,
            f"could not read which zones of {region} offer {', '.join(wanted)}",
            "check that ec2:DescribeInstanceTypeOfferings is allowed",
        ) from exc
    return {t: sorted(z) for t, z in found.items()}


def public_subnet_zones(session: Session, region: str, vpc_id: str) -> set[str]:
    """The zones where `vpc_id` has a subnet that gives instances public IPs (the subnets the
    program may use; see program.Network)."""
    ec2 = client(session, "ec2", region)
    try:
        pages = ec2.get_paginator("describe_subnets").paginate(
            Filters=[
                {"Name": "vpc-id", "Values": [vpc_id]},
                {"Name": "map-public-ip-on-launch", "Values": ["true"]},
            ]
        )
        return {
            str(s.get("AvailabilityZone"))
            for page in pages
            for s in page.get("Subnets", [])
            if is_regular_zone(region, str(s.get("AvailabilityZone", "")))
        }
    except Exception as exc:
        raise _failure(
            exc,
            session,
            f"could not list the subnets of VPC {vpc_id} in {region}",
            "check the cloud_id and that ec2:DescribeSubnets is allowed",
        ) from exc


def zone_choices(session: Session, spec: StackSpec) -> dict[tuple[str, str], list[str]]:
    """{(region, type): the zones its instances may go to}: offered there, and reachable by
    the region's network. Raises ProvisionError when a type has no such zone."""
    choices: dict[tuple[str, str], list[str]] = {}
    for region in spec.regions:
        members = spec.in_region(region)
        maestro = spec.maestro_in(region)
        if not members and maestro is None:
            continue
        types = {i.type for i in members} | ({maestro.type} if maestro is not None else set())
        offered = offered_zones(session, region, types)
        vpc_id = spec.vpc_ids.get(region)
        reachable: set[str] | None = None
        if vpc_id is not None:
            reachable = public_subnet_zones(session, region, vpc_id)
        for itype, zones in offered.items():
            usable = [z for z in zones if reachable is None or z in reachable]
            if usable:
                choices[(region, itype)] = usable
                continue
            entries = sorted({i.entry for i in members if i.type == itype})
            where = ", ".join(
                [f"instances[{e}]" for e in entries]
                + (["maestro_type"] if maestro is not None and maestro.type == itype else [])
            )
            if not zones:
                raise ProvisionError(
                    f"{where}: instance type {itype!r} is not offered in any availability "
                    f"zone of {region}",
                    hint="check the type name, or pick a region that offers it "
                    "(`aws ec2 describe-instance-type-offerings --location-type "
                    "availability-zone`)",
                )
            raise ProvisionError(
                f"{where}: instance type {itype!r} is offered in {', '.join(zones)} but VPC "
                f"{vpc_id} has no subnet giving public IPs there "
                f"(it has: {', '.join(sorted(reachable or ())) or 'none'})",
                hint="add a public subnet in one of those zones to the VPC, pick another type, "
                "or remove cloud_id to let cloudsend create its own VPC",
            )
    return choices

