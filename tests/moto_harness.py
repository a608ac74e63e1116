"""A real moto server on 127.0.0.1 standing in for AWS, with the faults moto cannot make.

There is no AWS account on the machines cloudsend is built on, so every boto3 call the aws
provider makes is exercised against `moto.server.ThreadedMotoServer`, started in this process:
boto3 talks to it over HTTP exactly as to AWS (through CLOUDSEND_AWS_ENDPOINT_URL), and the
fixture can still reach into moto's backends for what its API cannot do (testing-notes.md,
"moto"): seed Canonical's Ubuntu SSM parameters, and mark an instance as reclaimed by a spot
interruption. moto's fake public IPs look like real internet addresses: never connect to them.

Registered from tests/conftest.py with `pytest_plugins` (or `pytest -p moto_harness`).

Fixtures: `moto_server` (session: the server's URL), `moto_aws` (per test: a clean account,
dummy credentials and the endpoint override in the environment) -> MotoAws helpers:
`session()`, `client(service)`, `run_instances(n, tags, spot=False)`, `stop(id)`,
`terminate(id)`, `spot_interrupt(id)`, `vanish(id)`, `state(id)`, `seed_ssm()`/`drop_ssm()`,
`instance(id)` and `ec2_backend()` (moto's objects).
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest

ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"
UBUNTU_AMIS = {  # (release, arch) -> the AMI id seeded in every region the harness knows
    ("24.04", "amd64"): "ami-0a1b2c3d4e5f60001",
    ("24.04", "arm64"): "ami-0a1b2c3d4e5f60002",
    ("22.04", "amd64"): "ami-0a1b2c3d4e5f60003",
}
SEEDED_REGIONS = ("us-east-1", "eu-west-1")
SPOT_REASON = (
    "Server.SpotInstanceTermination",
    "Server.SpotInstanceTermination: Spot instance termination",
)


def _post(url: str) -> None:
    request = urllib.request.Request(url, data=b"", method="POST")
    # No proxy: the server is on loopback, and a developer's proxy must not see these calls.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as resp:
        resp.read()


class MotoAws:
    """One test's view of the moto server: boto3 clients and in-process fault injection."""

    UBUNTU_AMIS = UBUNTU_AMIS

    def __init__(self, url: str, region: str = REGION) -> None:
        self.url = url
        self.region = region
        # Cached: a boto3 session and client cost ~0.1 s each to create.
        self._sessions: dict[str, Any] = {}
        self._clients: dict[tuple[str, str], Any] = {}

    # ---- boto3, through cloudsend's own factory (so the endpoint override is exercised) ----

    def session(self, region: str | None = None) -> Any:
        from cloudsend.providers.aws.session import aws_session

        region = region or self.region
        if region not in self._sessions:
            self._sessions[region] = aws_session(None, region)
        return self._sessions[region]

    def client(self, service: str, region: str | None = None) -> Any:
        from cloudsend.providers.aws.session import client

        key = (service, region or self.region)
        if key not in self._clients:
            self._clients[key] = client(self.session(key[1]), service, key[1])
        return self._clients[key]

    # ---- moto's backends, in-process ---------------------------------------------------------

    def ec2_backend(self, region: str | None = None) -> Any:
        from moto.ec2.models import ec2_backends

        return ec2_backends[ACCOUNT][region or self.region]

    def instance(self, instance_id: str, region: str | None = None) -> Any:
        return self.ec2_backend(region).get_instance(instance_id)

    def seed_ssm(self, name: str, value: str, region: str | None = None) -> None:
        """Put a parameter moto's API refuses to create (names under /aws/ are AWS's own)."""
        from moto.ssm.models import Parameter, ssm_backends

        backend = ssm_backends[ACCOUNT][region or self.region]
        backend._parameters[name].append(
            Parameter(  # type: ignore[abstract]  # (CloudFormation hooks we never use)
                account_id=ACCOUNT,
                name=name,
                value=value,
                parameter_type="String",
                description=None,
                allowed_pattern=None,
                keyid=None,
                last_modified_date=datetime.now(timezone.utc),
                version=len(backend._parameters[name]) + 1,
                data_type="aws:ec2:image",
            )
        )

    def drop_ssm(self, name: str, region: str | None = None) -> None:
        from moto.ssm.models import ssm_backends

        ssm_backends[ACCOUNT][region or self.region]._parameters.pop(name, None)

    def seed_ubuntu(self) -> None:
        from cloudsend.providers.aws.ami import ubuntu_parameter

        for region in SEEDED_REGIONS:
            for (release, arch), ami in UBUNTU_AMIS.items():
                self.seed_ssm(ubuntu_parameter(release, arch), ami, region)

    # ---- instances and their faults -----------------------------------------------------------

    def run_instances(
        self,
        n: int,
        tags: dict[str, str],
        spot: bool = False,
        *,
        region: str | None = None,
        instance_type: str = "t3.micro",
        names: list[str] | None = None,
    ) -> list[str]:
        """Launch n instances tagged with `tags`, each with its own Name tag (default
        `<project>-0-<i>`, the provider's naming); returns their ids in order."""
        ec2 = self.client("ec2", region)
        project = tags.get("cloudsend:project", "host")
        names = names or [f"{project}-0-{i}" for i in range(n)]
        ids: list[str] = []
        for name in names[:n]:
            all_tags = [{"Key": k, "Value": v} for k, v in {**tags, "Name": name}.items()]
            kwargs: dict[str, Any] = {
                "ImageId": UBUNTU_AMIS[("24.04", "amd64")],
                "InstanceType": instance_type,
                "MinCount": 1,
                "MaxCount": 1,
                "TagSpecifications": [
                    {"ResourceType": "instance", "Tags": all_tags},
                    {"ResourceType": "volume", "Tags": all_tags},
                ],
            }
            if spot:
                kwargs["InstanceMarketOptions"] = {
                    "MarketType": "spot",
                    "SpotOptions": {
                        "SpotInstanceType": "one-time",
                        "InstanceInterruptionBehavior": "terminate",
                    },
                }
            answer = ec2.run_instances(**kwargs)
            ids.append(answer["Instances"][0]["InstanceId"])
        return ids

    def stop(self, instance_id: str, region: str | None = None) -> None:
        self.client("ec2", region).stop_instances(InstanceIds=[instance_id])

    def terminate(self, instance_id: str, region: str | None = None) -> None:
        self.client("ec2", region).terminate_instances(InstanceIds=[instance_id])

    def spot_interrupt(self, instance_id: str, region: str | None = None) -> None:
        """What AWS does when it reclaims a spot instance: terminate it with the spot reason.

        moto has no interruptions, so terminate through the API and then overwrite the state
        reason in its backend, as AWS would report it.
        """
        from moto.ec2.models.instances import StateReason

        self.terminate(instance_id, region)
        code, message = SPOT_REASON
        instance = self.instance(instance_id, region)
        instance.state_reason = StateReason(message, code)
        instance._reason = f"{code}: Spot instance termination"

    def vanish(self, instance_id: str, region: str | None = None) -> None:
        """Drop an instance from the API altogether, as AWS does about an hour after it is
        terminated (moto keeps terminated instances forever)."""
        backend = self.ec2_backend(region)
        for res_id, reservation in list(backend.reservations.items()):
            reservation.instances = [i for i in reservation.instances if i.id != instance_id]
            if not reservation.instances:
                del backend.reservations[res_id]

    def state(self, instance_id: str, region: str | None = None) -> str:
        return str(self.instance(instance_id, region).state)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto server on a free loopback port for the whole session; yields its URL."""
    pytest.importorskip(
        "moto.server", reason="moto not installed (pip install 'moto[ec2,ssm,iam]')"
    )
    pytest.importorskip("flask", reason="moto's server needs flask")
    from moto.server import ThreadedMotoServer

    # werkzeug logs every request at INFO; keep test output readable.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def moto_aws(
    moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> MotoAws:
    """A clean fake AWS account for one test, reachable only through the endpoint override."""
    _post(f"{moto_server}/moto-api/reset")
    empty = tmp_path_factory.mktemp("aws-config")
    for var in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_SECURITY_TOKEN",
        "AWS_ENDPOINT_URL",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
    ):
        monkeypatch.delenv(var, raising=False)
    # A developer's ~/.aws must not leak into the tests (nor real credentials out to moto).
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty / "credentials"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("CLOUDSEND_AWS_ENDPOINT_URL", moto_server)
    aws = MotoAws(moto_server)
    aws.seed_ubuntu()
    return aws
