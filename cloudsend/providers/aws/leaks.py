"""After `down`: is anything tagged with the stack still there (and maybe still billed)?

Pulumi's destroy is trusted but verified: a resource removed from the state by hand, an
interrupted destroy or a provider bug would leave instances or addresses that cost money and
that nobody looks at. `leftovers()` asks each EC2 and IAM listing API for resources carrying
all the stack's tags and returns them; an empty list means clean.

A check that cannot be made (access denied, no network) is reported as a Leftover of kind
"unchecked" rather than skipped: "nothing found" must never be claimed without looking.

IAM is global and its listings do not filter by tag, so roles are matched by their tags
(list_role_tags, one call per role, a few threads at a time); `iam_name_prefix` narrows that
to names Pulumi derived from the project when the account has many roles. Service-linked roles
(path /aws-service-role/) are skipped: nobody but AWS can create them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cloudsend.providers.aws.session import client

if TYPE_CHECKING:
    from boto3.session import Session

GLOBAL = "global"
_TAG_THREADS = 8


@dataclass(frozen=True)
class Leftover:
    kind: str  # instance | volume | vpc | subnet | security_group | internet_gateway |
    # route_table | key_pair | elastic_ip | iam_role | instance_profile | unchecked
    id: str
    region: str  # "global" for IAM
    detail: str = ""

    def __str__(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.kind} {self.id} in {self.region}{extra}"


def _tag_filters(tags: dict[str, str]) -> list[dict[str, Any]]:
    return [{"Name": f"tag:{k}", "Values": [v]} for k, v in sorted(tags.items())]


def _items(api: Any, operation: str, key: str, **kwargs: Any) -> list[dict[str, Any]]:
    """Every item of a listing, through its paginator when botocore has one."""
    if api.can_paginate(operation):
        pages = api.get_paginator(operation).paginate(**kwargs)
        return [item for page in pages for item in page.get(key, [])]
    return list(getattr(api, operation)(**kwargs).get(key, []))


def _name(item: dict[str, Any]) -> str:
    for tag in item.get("Tags") or ():
        if tag.get("Key") == "Name":
            return str(tag.get("Value", ""))
    return ""


def _ec2_checks(ec2: Any, tags: dict[str, str]) -> list[tuple[str, Callable[[], list[Leftover]]]]:
    flt = _tag_filters(tags)

    def instances() -> list[Leftover]:
        # Terminated instances stay listed for about an hour; they cost nothing.
        alive = ["pending", "running", "shutting-down", "stopping", "stopped"]
        found = _items(
            ec2,
            "describe_instances",
            "Reservations",
            Filters=[*flt, {"Name": "instance-state-name", "Values": alive}],
        )
        return [
            Leftover("instance", i["InstanceId"], "", f"{_name(i) or '-'} {i['State']['Name']}")
            for r in found
            for i in r.get("Instances", [])
        ]

    def volumes() -> list[Leftover]:
        found = _items(ec2, "describe_volumes", "Volumes", Filters=flt)
        return [
            Leftover("volume", v["VolumeId"], "", f"{v.get('Size', '?')} GiB {v.get('State', '')}")
            for v in found
            if v.get("State") != "deleted"
        ]

    def simple(
        kind: str, operation: str, key: str, id_key: str, describe: Callable[..., str]
    ) -> Callable[[], list[Leftover]]:
        def check() -> list[Leftover]:
            found = _items(ec2, operation, key, Filters=flt)
            return [Leftover(kind, str(x[id_key]), "", describe(x)) for x in found]

        return check

    return [
        ("instances", instances),
        ("volumes", volumes),
        ("vpcs", simple("vpc", "describe_vpcs", "Vpcs", "VpcId", lambda x: x.get("CidrBlock", ""))),
        (
            "subnets",
            simple(
                "subnet",
                "describe_subnets",
                "Subnets",
                "SubnetId",
                lambda x: f"{x.get('CidrBlock', '')} in {x.get('VpcId', '?')}",
            ),
        ),
        (
            "security groups",
            simple(
                "security_group",
                "describe_security_groups",
                "SecurityGroups",
                "GroupId",
                lambda x: f"{x.get('GroupName', '')} in {x.get('VpcId', '?')}",
            ),
        ),
        (
            "internet gateways",
            simple(
                "internet_gateway",
                "describe_internet_gateways",
                "InternetGateways",
                "InternetGatewayId",
                lambda x: (
                    "attached to "
                    + (
                        ", ".join(a.get("VpcId", "?") for a in x.get("Attachments", []))
                        or "nothing"
                    )
                ),
            ),
        ),
        (
            "route tables",
            simple(
                "route_table",
                "describe_route_tables",
                "RouteTables",
                "RouteTableId",
                lambda x: f"in {x.get('VpcId', '?')}",
            ),
        ),
        (
            "key pairs",
            simple(
                "key_pair",
                "describe_key_pairs",
                "KeyPairs",
                "KeyName",
                lambda x: x.get("KeyPairId", ""),
            ),
        ),
        (
            "elastic IPs",
            simple(
                "elastic_ip",
                "describe_addresses",
                "Addresses",
                "AllocationId",
                lambda x: x.get("PublicIp", ""),
            ),
        ),
    ]


def _matches(found: Iterable[dict[str, str]], tags: dict[str, str]) -> bool:
    have = {t.get("Key"): t.get("Value") for t in found}
    return all(have.get(k) == v for k, v in tags.items())


def _iam_leftovers(iam: Any, tags: dict[str, str], name_prefix: str | None) -> list[Leftover]:
    roles = [
        r
        for r in _items(iam, "list_roles", "Roles")
        if not r.get("Path", "/").startswith("/aws-service-role/")
        and (name_prefix is None or r["RoleName"].startswith(name_prefix))
    ]

    def role_tags(role: dict[str, Any]) -> list[dict[str, str]]:
        if "Tags" in role:  # some endpoints include them; real ListRoles does not
            return list(role["Tags"])
        return _items(iam, "list_role_tags", "Tags", RoleName=role["RoleName"])

    with ThreadPoolExecutor(max_workers=_TAG_THREADS) as pool:
        role_tag_lists = list(pool.map(role_tags, roles))
    tagged_roles = {
        r["RoleName"] for r, t in zip(roles, role_tag_lists, strict=True) if _matches(t, tags)
    }
    found = [Leftover("iam_role", name, GLOBAL, "role") for name in sorted(tagged_roles)]

    for profile in _items(iam, "list_instance_profiles", "InstanceProfiles"):
        name = profile["InstanceProfileName"]
        if name_prefix is not None and not name.startswith(name_prefix):
            continue
        holds = sorted(
            r["RoleName"] for r in profile.get("Roles", []) if r["RoleName"] in tagged_roles
        )
        if "Tags" in profile:
            tagged = _matches(profile["Tags"], tags)
        elif holds:
            tagged = True  # holding a stack role is enough; spare the tag call
        else:
            tagged = _matches(
                _items(iam, "list_instance_profile_tags", "Tags", InstanceProfileName=name), tags
            )
        if tagged or holds:
            detail = f"holds role {', '.join(holds)}" if holds else "instance profile"
            found.append(Leftover("instance_profile", name, GLOBAL, detail))
    return found


def _reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def leftovers(
    session: Session,
    tags: dict[str, str],
    regions: Sequence[str],
    *,
    iam: bool = True,
    iam_name_prefix: str | None = None,
) -> list[Leftover]:
    """Everything still tagged with all of `tags` in `regions` (plus IAM, which is global).

    Empty list = clean. Checks that fail are returned as kind "unchecked" (id: what was not
    checked, detail: why), so a caller printing "clean" for an empty list is never wrong.
    """
    if not tags:
        raise ValueError("leftovers() needs the stack's tags (it would list the whole account)")
    found: list[Leftover] = []
    for region in dict.fromkeys(regions):
        try:
            ec2 = client(session, "ec2", region)
        except Exception as exc:  # no region, bad endpoint...
            found.append(Leftover("unchecked", "ec2", region, _reason(exc)))
            continue
        for what, check in _ec2_checks(ec2, tags):
            try:
                found.extend(Leftover(x.kind, x.id, region, x.detail) for x in check())
            except Exception as exc:  # AccessDenied, network: report, keep checking the rest
                found.append(Leftover("unchecked", what, region, _reason(exc)))
    if iam:
        try:
            # IAM has one global endpoint; any region signs for it.
            iam_client = client(session, "iam", next(iter(regions), None) or "us-east-1")
            found.extend(_iam_leftovers(iam_client, tags, iam_name_prefix))
        except Exception as exc:  # AccessDenied on iam:List*, network
            found.append(
                Leftover("unchecked", "iam roles and instance profiles", GLOBAL, _reason(exc))
            )
    return found
