"""The aws provider's boto3 modules against a real moto server on loopback (tests/moto_harness.py).

What moto cannot do is done in-process and said so: the Ubuntu SSM parameters are seeded, spot
interruptions are a termination plus the state reason AWS reports, and the Pricing API (which
moto does not implement: it answers HTTP 500) is exercised with botocore's Stubber, which checks
our request against the real service model and feeds back a recorded-shape answer.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cloudsend.errors import ProvisionError
from cloudsend.providers.aws import ami, leaks, monitor, pricing, session
from cloudsend.providers.aws.monitor import InstanceEvent, InstanceInfo, plan_reaction

pytest.importorskip("boto3")

TAGS = {"cloudsend:project": "demo", "cloudsend:stack": "dev"}
OTHER = {"cloudsend:project": "demo", "cloudsend:stack": "prod"}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- session ------------------------------------------------------------------------------


def test_client_goes_to_the_endpoint_override(moto_aws: Any) -> None:
    sts = session.client(session.aws_session(None, "eu-west-1"), "sts")
    assert sts.meta.endpoint_url == moto_aws.url
    assert sts.meta.region_name == "eu-west-1"
    assert sts.meta.config.retries["total_max_attempts"] == 3  # first try + 2 retries
    assert sts.meta.config.connect_timeout == 5.0
    assert sts.get_caller_identity()["Account"] == "123456789012"


def test_regions_and_profiles(moto_aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    assert session.default_region() == "us-east-1"
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    assert session.default_region() is None
    with pytest.raises(ProvisionError, match="no AWS region"):
        session.client(session.aws_session(None, None), "ec2")
    with pytest.raises(ProvisionError, match="'nosuch' not found") as err:
        session.aws_session("nosuch", None)
    assert err.value.hint and "profile" in err.value.hint


@pytest.fixture
def ip_server() -> Iterator[dict[str, Any]]:
    """A local stand-in for checkip.amazonaws.com; `reply` sets the body, None: never answer."""
    state: dict[str, Any] = {"reply": "203.0.113.7\n"}
    release = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if state["reply"] is None:
                release.wait(5)
                return
            body = state["reply"].encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        yield state
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def test_public_ip_from_a_local_server(
    ip_server: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOUDSEND_PUBLIC_IP_URL", ip_server["url"])
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert session.caller_public_ip() == "203.0.113.7"
    assert session.caller_cidr() == "203.0.113.7/32"
    ip_server["reply"] = "<html>captive portal</html>"
    with pytest.raises(ProvisionError, match="captive portal") as err:
        session.caller_public_ip()
    assert err.value.hint and "ssh_cidrs" in err.value.hint
    ip_server["reply"] = None  # accepts, never answers: the timeout must hold
    started = time.monotonic()
    with pytest.raises(ProvisionError, match="could not detect"):
        session.caller_public_ip(timeout=0.5)
    assert time.monotonic() - started < 3


def test_public_ip_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDSEND_PUBLIC_IP_URL", f"http://127.0.0.1:{_closed_port()}/")
    with pytest.raises(ProvisionError, match="could not detect your public IP") as err:
        session.caller_public_ip()
    assert err.value.hint and "ssh_cidrs:" in err.value.hint


# ---- pricing ------------------------------------------------------------------------------


def test_spot_prices_from_moto(moto_aws: Any) -> None:
    prices = pricing.spot_prices(moto_aws.session(), "us-east-1", ["t3.micro", "m5.large"])
    assert set(prices) == {"t3.micro", "m5.large"}
    assert all(isinstance(p, float) and p > 0 for p in prices.values())
    assert pricing.spot_prices(moto_aws.session(), "us-east-1", []) == {}


def _product(itype: str, usd: str, operation: str = "RunInstances") -> str:
    """One Pricing API PriceList entry, in the shape AWS returns (a JSON string)."""
    sku = f"SKU{abs(hash((itype, usd, operation))) % 10**8}"
    return json.dumps(
        {
            "product": {
                "productFamily": "Compute Instance",
                "attributes": {
                    "instanceType": itype,
                    "operation": operation,
                    "operatingSystem": "Linux",
                    "regionCode": "eu-west-1",
                },
                "sku": sku,
            },
            "serviceCode": "AmazonEC2",
            "terms": {
                "OnDemand": {
                    f"{sku}.JRTCKXETXF": {
                        "priceDimensions": {
                            f"{sku}.JRTCKXETXF.6YS6EN2CT7": {
                                "unit": "Hrs",
                                "pricePerUnit": {"USD": usd},
                                "description": f"${usd} per On Demand Linux {itype} Instance Hour",
                            }
                        },
                        "sku": sku,
                    }
                }
            },
        }
    )


def test_on_demand_prices_with_stubber(moto_aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # moto has no Pricing API, so the real client is stubbed: Stubber validates our request
    # against botocore's service model and checks the exact filters we send.
    from botocore.stub import Stubber

    stubbed = moto_aws.session().client("pricing", region_name="us-east-1")
    stubber = Stubber(stubbed)
    for itype, entries in (
        (
            "m5.large",
            [
                _product("m5.large", "0.1070000000"),
                _product("m5.large", "0.0500000000", "RunInstances:0010"),
            ],
        ),
        ("nosuch.type", []),
        ("t3.micro", [_product("t3.micro", "0.0118000000")]),
    ):
        stubber.add_response(
            "get_products",
            {"FormatVersion": "aws_v1", "PriceList": entries},
            {"ServiceCode": "AmazonEC2", "Filters": pricing._on_demand_filters("eu-west-1", itype)},
        )
    calls: list[tuple[str, str | None]] = []

    def fake_client(_session: Any, service: str, region: str | None = None, **_: Any) -> Any:
        calls.append((service, region))
        return stubbed

    monkeypatch.setattr(pricing, "client", fake_client)
    with stubber:
        prices = pricing.on_demand_prices(
            moto_aws.session(), "eu-west-1", ["t3.micro", "m5.large", "nosuch.type"]
        )
    stubber.assert_no_pending_responses()
    # RunInstances wins over the licensed RunInstances:0010 variant, though that is cheaper.
    assert prices == {"m5.large": 0.107, "t3.micro": 0.0118}
    assert calls == [("pricing", "us-east-1")]  # the Pricing API lives in us-east-1
    fields = {f["Field"]: f["Value"] for f in pricing._on_demand_filters("eu-west-1", "x")}
    assert fields == {
        "instanceType": "x",
        "regionCode": "eu-west-1",
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
    }


def test_parse_price_list_ignores_junk() -> None:
    entries: list[str | dict[str, Any]] = [
        _product("c5.large", "0.0850000000"),
        _product("c5.large", "0.0000000000"),  # free rows (reservations) never win
        json.dumps({"product": {"attributes": {}}}),
        {"product": {"attributes": {"instanceType": "c5.xlarge"}}, "terms": {}},
    ]
    assert pricing.parse_price_list(entries) == {"c5.large": 0.085}


def test_live_prices_never_raise(moto_aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Against moto: spot works, on-demand hits moto's missing Pricing API (HTTP 500).
    table, warnings = pricing.live_prices(
        moto_aws.session(), [("us-east-1", "t3.micro"), ("us-east-1", "m5.large")]
    )
    assert set(table) == {("us-east-1", "t3.micro"), ("us-east-1", "m5.large")}
    assert all(set(v) == {"spot"} for v in table.values())
    assert any("on-demand prices unavailable" in w for w in warnings)

    # No credentials at all: nothing, a warning, and no attempt per region and kind.
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    started = time.monotonic()
    table, warnings = pricing.live_prices(
        session.aws_session(None, None), [("us-east-1", "t3.micro"), ("eu-west-1", "t3.micro")]
    )
    assert table == {}
    assert len(warnings) == 1 and "credentials" in warnings[0].lower()
    assert time.monotonic() - started < 5
    assert "testing" not in " ".join(warnings)

    # No network: the endpoint refuses connections.
    monkeypatch.setenv("CLOUDSEND_AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    started = time.monotonic()
    table, warnings = pricing.live_prices(
        session.aws_session(None, None), [("us-east-1", "t3.micro"), ("eu-west-1", "t3.micro")]
    )
    assert table == {} and len(warnings) == 1 and "connect" in warnings[0].lower()
    assert time.monotonic() - started < 5  # one attempt, then it gives up on every region


# ---- AMI ----------------------------------------------------------------------------------


def test_latest_ubuntu_ami(moto_aws: Any) -> None:
    UBUNTU_AMIS = moto_aws.UBUNTU_AMIS
    s = moto_aws.session()
    assert ami.latest_ubuntu_ami(s, "us-east-1") == UBUNTU_AMIS[("24.04", "amd64")]
    assert (
        ami.latest_ubuntu_ami(s, "eu-west-1", "24.04", "arm64") == UBUNTU_AMIS[("24.04", "arm64")]
    )
    assert ami.latest_ubuntu_ami(s, "us-east-1", "22.04") == UBUNTU_AMIS[("22.04", "amd64")]
    assert ami.instance_arch(s, "us-east-1", "m6g.large") == "arm64"
    assert ami.ubuntu_amis(s, [("us-east-1", "t3.micro"), ("us-east-1", "m6g.large")]) == {
        ("us-east-1", "t3.micro"): UBUNTU_AMIS[("24.04", "amd64")],
        ("us-east-1", "m6g.large"): UBUNTU_AMIS[("24.04", "arm64")],
    }


def test_missing_ubuntu_ami(moto_aws: Any) -> None:
    moto_aws.drop_ssm(ami.ubuntu_parameter("24.04", "amd64"))
    with pytest.raises(ProvisionError, match="no Ubuntu 24.04 amd64 image") as err:
        ami.latest_ubuntu_ami(moto_aws.session(), "us-east-1")
    assert err.value.hint and "img_id" in err.value.hint
    with pytest.raises(ProvisionError, match="Ubuntu 19.10"):
        ami.latest_ubuntu_ami(moto_aws.session(), "us-east-1", "19.10")
    with pytest.raises(ProvisionError, match="architecture"):
        ami.latest_ubuntu_ami(moto_aws.session(), "us-east-1", arch="x86_64")


# ---- monitor ------------------------------------------------------------------------------


def test_monitor_events_reaction_and_start(moto_aws: Any) -> None:
    ids = moto_aws.run_instances(3, TAGS)
    spot_id = moto_aws.run_instances(1, TAGS, spot=True, names=["demo-1-0"])[0]
    moto_aws.run_instances(1, OTHER, names=["demo-0-0"])  # another stack, same name: ignored
    mon = monitor.InstanceMonitor(moto_aws.session(), TAGS)
    assert mon.poll() == []  # baseline: all running, nothing to say

    hosts = mon.instances()
    assert sorted(hosts) == ["demo-0-0", "demo-0-1", "demo-0-2", "demo-1-0"]
    assert hosts["demo-0-0"].id == ids[0] and hosts["demo-1-0"].spot
    assert all(
        h.state == "running" and h.private_ip and h.region == "us-east-1" for h in hosts.values()
    )

    moto_aws.stop(ids[0])
    moto_aws.terminate(ids[1])
    moto_aws.spot_interrupt(spot_id)
    events = mon.poll()
    assert [(e.kind, e.name, e.instance_id) for e in events] == [
        ("stopped", "demo-0-0", ids[0]),
        ("terminated", "demo-0-1", ids[1]),
        ("spot_interrupted", "demo-1-0", spot_id),
    ]
    assert events[1].reason_code == "Client.UserInitiatedShutdown"
    assert events[2].reason_code == "Server.SpotInstanceTermination"
    assert events[2].state == "terminated"
    assert mon.poll() == []  # said once

    reaction = plan_reaction(events)
    assert reaction.start == [ids[0]]
    assert reaction.replace == ["demo-0-1", "demo-1-0"]
    assert reaction.lost_hosts == ["demo-0-1", "demo-1-0"]
    assert reaction.interrupted == ["demo-1-0"]  # AWS's doing, unlike the user's terminate

    assert mon.start(reaction.start + [ids[2]]) == [ids[0]]  # ids[2] is running: left alone
    assert moto_aws.state(ids[0]) == "running"
    assert [(e.kind, e.instance_id) for e in mon.poll()] == [("running", ids[0])]

    # The pipeline provisions a replacement under the same name: it shows up as running and
    # instances() prefers it over the terminated one.
    new_id = moto_aws.run_instances(1, TAGS, names=["demo-0-1"])[0]
    assert [(e.kind, e.instance_id) for e in mon.poll()] == [("running", new_id)]
    assert mon.instances()["demo-0-1"].id == new_id
    assert mon.instances()["demo-1-0"].state == "terminated"

    # AWS forgets terminated instances after a while: not news. A live one vanishing is.
    moto_aws.vanish(ids[1])
    moto_aws.vanish(ids[2])
    assert [(e.kind, e.instance_id, e.name) for e in mon.poll()] == [
        ("missing", ids[2], "demo-0-2")
    ]


def test_monitor_first_poll_reports_what_already_happened(moto_aws: Any) -> None:
    ids = moto_aws.run_instances(3, TAGS)
    moto_aws.stop(ids[0])
    moto_aws.terminate(ids[2])
    mon = monitor.InstanceMonitor(moto_aws.session(), TAGS, regions=["us-east-1", "eu-west-1"])
    assert [(e.kind, e.instance_id) for e in mon.poll()] == [
        ("stopped", ids[0]),
        ("terminated", ids[2]),
    ]
    assert mon.start(["i-0123456789abcdef0", ids[0]]) == [ids[0]]  # unknown ids ignored


def test_monitor_errors_are_provision_errors(
    moto_aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError):
        monitor.InstanceMonitor(moto_aws.session(), {})
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    mon = monitor.InstanceMonitor(session.aws_session(None, None), TAGS)
    with pytest.raises(ProvisionError, match="could not list the stack's instances"):
        mon.poll()


def _info(state: str, reason: str = "", spot: bool = False) -> InstanceInfo:
    return InstanceInfo("i-1", "h", state, None, None, "us-east-1", reason, "", spot)


def test_instance_kinds() -> None:
    assert _info("pending").kind is None and _info("stopping").kind is None
    assert _info("shutting-down", "Server.SpotInstanceTermination").kind == "spot_interrupted"
    # A spot instance ended by AWS for any reason was reclaimed; one the user ended was not.
    assert _info("terminated", "Server.InternalError", spot=True).kind == "spot_interrupted"
    assert _info("terminated", "", spot=True).kind == "spot_interrupted"
    assert _info("terminated", "Client.UserInitiatedShutdown", spot=True).kind == "terminated"
    assert _info("stopped", "Server.SpotInstanceShutdown", spot=True).kind == "stopped"


def test_plan_reaction_latest_news_wins() -> None:
    def ev(kind: Any, iid: str, name: str) -> InstanceEvent:
        return InstanceEvent(kind, iid, name, "")

    assert not plan_reaction([])
    # stopped, then running again before we acted: nothing to start
    assert not plan_reaction([ev("stopped", "i-1", "a"), ev("running", "i-1", "a")])
    # terminated and already replaced by a new instance: no replacement, the jobs stay lost
    reaction = plan_reaction(
        [
            ev("terminated", "i-1", "a"),
            ev("running", "i-2", "a"),
            ev("missing", "i-3", "b"),
            ev("stopped", "i-4", "c"),
            ev("stopped", "i-4", "c"),
        ]
    )
    assert reaction.replace == ["b"]
    assert reaction.lost_hosts == ["a", "b"]
    assert reaction.start == ["i-4"]


# ---- leftovers ----------------------------------------------------------------------------


def _make_stack(aws: Any, tags: dict[str, str], cidr: str) -> dict[str, str]:
    """What the Pulumi program creates, made by hand with the stack's tags."""
    ec2, iam = aws.client("ec2"), aws.client("iam")
    tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]

    def spec(kind: str) -> list[dict[str, Any]]:
        return [{"ResourceType": kind, "Tags": tag_list}]

    made: dict[str, str] = {}
    made["vpc"] = ec2.create_vpc(CidrBlock=cidr, TagSpecifications=spec("vpc"))["Vpc"]["VpcId"]
    made["subnet"] = ec2.create_subnet(
        VpcId=made["vpc"], CidrBlock=cidr, TagSpecifications=spec("subnet")
    )["Subnet"]["SubnetId"]
    made["internet_gateway"] = ec2.create_internet_gateway(
        TagSpecifications=spec("internet-gateway")
    )["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=made["internet_gateway"], VpcId=made["vpc"])
    made["route_table"] = ec2.create_route_table(
        VpcId=made["vpc"], TagSpecifications=spec("route-table")
    )["RouteTable"]["RouteTableId"]
    made["security_group"] = ec2.create_security_group(
        GroupName=f"ssh-{tags['cloudsend:stack']}",
        Description="ssh",
        VpcId=made["vpc"],
        TagSpecifications=spec("security-group"),
    )["GroupId"]
    made["key_pair"] = f"demo-{tags['cloudsend:stack']}"
    ec2.create_key_pair(
        KeyName=made["key_pair"], KeyType="ed25519", TagSpecifications=spec("key-pair")
    )
    made["elastic_ip"] = ec2.allocate_address(Domain="vpc", TagSpecifications=spec("elastic-ip"))[
        "AllocationId"
    ]
    made["instance"] = aws.run_instances(1, tags)[0]
    made["volume"] = ec2.describe_volumes(
        Filters=[{"Name": "attachment.instance-id", "Values": [made["instance"]]}]
    )["Volumes"][0]["VolumeId"]
    made["iam_role"] = f"demo-{tags['cloudsend:stack']}-role-1a2b3c"
    iam.create_role(RoleName=made["iam_role"], AssumeRolePolicyDocument="{}", Tags=tag_list)
    made["instance_profile"] = f"demo-{tags['cloudsend:stack']}-profile-4d5e6f"
    iam.create_instance_profile(InstanceProfileName=made["instance_profile"])  # untagged
    iam.add_role_to_instance_profile(
        InstanceProfileName=made["instance_profile"], RoleName=made["iam_role"]
    )
    return made


def _destroy_stack(aws: Any, made: dict[str, str]) -> None:
    ec2, iam = aws.client("ec2"), aws.client("iam")
    ec2.terminate_instances(InstanceIds=[made["instance"]])  # its root volume goes with it
    ec2.release_address(AllocationId=made["elastic_ip"])
    ec2.delete_key_pair(KeyName=made["key_pair"])
    ec2.delete_security_group(GroupId=made["security_group"])
    ec2.delete_route_table(RouteTableId=made["route_table"])
    ec2.detach_internet_gateway(InternetGatewayId=made["internet_gateway"], VpcId=made["vpc"])
    ec2.delete_internet_gateway(InternetGatewayId=made["internet_gateway"])
    ec2.delete_subnet(SubnetId=made["subnet"])
    ec2.delete_vpc(VpcId=made["vpc"])
    iam.remove_role_from_instance_profile(
        InstanceProfileName=made["instance_profile"], RoleName=made["iam_role"]
    )
    iam.delete_instance_profile(InstanceProfileName=made["instance_profile"])
    iam.delete_role(RoleName=made["iam_role"])


def test_leftovers_listed_then_clean(moto_aws: Any) -> None:
    mine = _make_stack(moto_aws, TAGS, "10.200.0.0/24")
    other = _make_stack(moto_aws, OTHER, "10.201.0.0/24")  # another stack of the project
    s = moto_aws.session()

    found = leaks.leftovers(s, TAGS, ["us-east-1", "eu-west-1"])
    assert {(x.kind, x.id) for x in found} == set(mine.items())
    assert all(
        x.region == ("global" if x.kind.startswith(("iam", "instance_p")) else "us-east-1")
        for x in found
    )
    profile = next(x for x in found if x.kind == "instance_profile")
    assert mine["iam_role"] in profile.detail  # matched through the tagged role it holds
    assert "running" in next(str(x) for x in found if x.kind == "instance")
    assert {x.id for x in leaks.leftovers(s, TAGS, ["us-east-1"], iam_name_prefix="zzz")} == {
        v for k, v in mine.items() if not k.startswith(("iam", "instance_p"))
    }

    _destroy_stack(moto_aws, mine)
    assert leaks.leftovers(s, TAGS, ["us-east-1", "eu-west-1"]) == []
    assert {(x.kind, x.id) for x in leaks.leftovers(s, OTHER, ["us-east-1"])} == set(other.items())


def test_leftovers_never_claim_clean_without_looking(
    moto_aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError):
        leaks.leftovers(moto_aws.session(), {}, ["us-east-1"])
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    found = leaks.leftovers(session.aws_session(None, None), TAGS, ["us-east-1"])
    assert found and all(x.kind == "unchecked" for x in found)
    assert {x.id for x in found} >= {"instances", "volumes", "iam roles and instance profiles"}
    assert all("credentials" in x.detail.lower() for x in found)
