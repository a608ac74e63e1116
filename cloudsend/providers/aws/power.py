"""Turning a stack's instances off when idle (auto_stop) and on again (`up`, a re-queue).

- Off: on-demand instances are stopped (their disk stays; `cloudsend run` starts them again).
  Spot instances are terminated: the program creates one-time spot requests, and EC2 refuses
  to stop those ("UnsupportedOperation: You can't stop the Spot Instance ... associated with a
  one-time Spot Instance request"). One such id in a stop_instances call fails the whole call,
  so the two kinds go in separate calls; a spot instance left running would bill for nothing.
- On: stopped instances are started and waited for until EC2 says running; an instance still
  stopping is first waited for until stopped (start_instances refuses it meanwhile).

Every boto3 failure becomes a ProvisionError with a hint: the pipeline only handles
CloudsendError, and a raw botocore ClientError would end the whole watch loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from cloudsend.errors import ProvisionError
from cloudsend.providers.aws.monitor import InstanceInfo
from cloudsend.providers.aws.session import client
from cloudsend.providers.base import PowerOff

__all__ = ["PowerOff", "power_off", "power_on"]

if TYPE_CHECKING:
    from boto3.session import Session

WAIT_DELAY = 5  # seconds between describe calls while waiting (the waiters' own default: 15)
START_TIMEOUT = 300.0  # an instance is usually running ~30 s after start_instances


@contextmanager
def _aws_errors(what: str, region: str, hint: str) -> Iterator[None]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise ProvisionError(f"could not {what} in {region}: {exc}", hint=hint) from exc


def power_off(session: Session, infos: Iterable[InstanceInfo]) -> PowerOff:
    """Stop the on-demand instances among `infos` and terminate the spot ones (pending or
    running only; the rest are off already)."""
    done = PowerOff()
    calls: dict[tuple[str, bool], list[InstanceInfo]] = {}
    for info in infos:
        if info.state in ("pending", "running"):
            calls.setdefault((info.region, info.spot), []).append(info)
    for (region, spot), batch in sorted(calls.items()):
        ids = [i.id for i in batch]
        ec2 = client(session, "ec2", region)
        if spot:
            with _aws_errors(
                f"terminate idle spot instance(s) {', '.join(ids)}",
                region,
                "they keep billing until ended: terminate them in the EC2 console, or run "
                "`cloudsend down`",
            ):
                ec2.terminate_instances(InstanceIds=ids)
            done.terminated += [i.name for i in batch]
        else:
            with _aws_errors(
                f"stop idle instance(s) {', '.join(ids)}",
                region,
                "they keep billing while running: stop them in the EC2 console, or run "
                "`cloudsend down` (check ec2:StopInstances is allowed)",
            ):
                ec2.stop_instances(InstanceIds=ids)
            done.stopped += [i.name for i in batch]
    return done


def power_on(
    session: Session, infos: Iterable[InstanceInfo], timeout: float = START_TIMEOUT
) -> list[str]:
    """Start the stopped (or stopping) instances among `infos` and wait until they run.
    Returns the ids started."""
    by_region: dict[str, list[InstanceInfo]] = {}
    for info in infos:
        if info.state in ("stopped", "stopping"):
            by_region.setdefault(info.region, []).append(info)
    started: list[str] = []
    hint = (
        "AWS may lack capacity for this type right now; try again later, or run "
        "`cloudsend down` and `up` with another type or region"
    )
    for region, batch in sorted(by_region.items()):
        ec2 = client(session, "ec2", region)
        ids = [i.id for i in batch]
        stopping = [i.id for i in batch if i.state == "stopping"]
        with _aws_errors(f"start instance(s) {', '.join(ids)}", region, hint):
            if stopping:
                _wait(ec2, "instance_stopped", stopping, timeout)
            ec2.start_instances(InstanceIds=ids)
            _wait(ec2, "instance_running", ids, timeout)
        started += ids
    return started


def _wait(ec2: Any, waiter: str, ids: list[str], timeout: float) -> None:
    attempts = max(1, int(timeout // WAIT_DELAY))
    ec2.get_waiter(waiter).wait(
        InstanceIds=ids, WaiterConfig={"Delay": WAIT_DELAY, "MaxAttempts": attempts}
    )
