"""cloudsend running ON a stack's maestro (provider aws; the laptop's `cloudsend run` started it).

The laptop did `pulumi up` and sent a bundle: the config (`maestro: local` in it: the watcher
is local here), the job files, the run key (`.cloudsend/run_key`) and `.cloudsend/on_maestro.json`
(cloudsend.onmaestro.OnAwsMaestro: this instance's id, the stack's outputs, whether Pulumi runs
here). With that file present, AwsProvider is the maestro's:

- hosts come from the contract's outputs: workers are reached by private_ip (stable inside
  the VPC across stop/start), with the run key, as the outputs' user (and port, test stacks);
- instance states are watched with boto3 through the instance profile (boto3's default
  chain: the config's `profile:` names a profile of the laptop, not of this machine);
- a lost worker is re-created here only when Pulumi runs here (`pulumi_here`, a shared state
  backend); with a file:// backend its jobs go to the remaining workers and re-creation waits
  for `cloudsend up` from the laptop (`lost_worker`, a pure decision); the worker that `up`
  makes joins the run when the maestro's poll sees it (`rejoined`), at the address of the
  contract the laptop sent again, else at its private IP;
- auto_stop stops the workers and then this machine (`stop_maestro`), once every result is on
  its disk (scheduling.maestro_end decides when).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudsend import onmaestro
from cloudsend.errors import ProvisionError
from cloudsend.onmaestro import OnAwsMaestro

if TYPE_CHECKING:
    from boto3.session import Session

    from cloudsend.providers.aws.monitor import InstanceEvent


@dataclass(frozen=True)
class MaestroSide:
    """The contract found in a run dir, and where that run dir is (the run key is beside)."""

    contract: OnAwsMaestro
    base_dir: Path

    @classmethod
    def find(cls, base_dir: Path) -> MaestroSide | None:
        """The maestro side of the run dir `base_dir`; None on the laptop (no contract)."""
        try:
            contract = onmaestro.read(base_dir)
        except (ValueError, KeyError, TypeError) as exc:  # a torn or foreign file
            raise ProvisionError(
                f"{base_dir / onmaestro.FILE} cannot be read: {exc}",
                hint="`cloudsend run CONFIG` on the laptop sends it again",
            ) from None
        return None if contract is None else cls(contract, base_dir)

    @property
    def pulumi_here(self) -> bool:
        return self.contract.pulumi_here

    @property
    def key_path(self) -> Path:
        return self.base_dir / self.contract.key

    @property
    def outputs(self) -> dict[str, Any]:
        return dict(self.contract.outputs)

    @property
    def maestro_type(self) -> str:
        """This instance's type, as the stack's outputs recorded it (the spec declares it)."""
        from cloudsend.providers.aws.spec import DEFAULT_MAESTRO_TYPE

        maestro = self.contract.outputs.get("maestro") or {}
        return str(maestro.get("type") or DEFAULT_MAESTRO_TYPE)


# What cloudsend needs installed on a maestro that runs no Pulumi (the laptop ships it with
# the `aws-maestro` extra: boto3, not pulumi and pulumi-aws).
MAESTRO_MODULES = ("boto3",)


def needs_modules(base_dir: Path, everywhere: tuple[str, ...]) -> tuple[str, ...]:
    """The modules provider aws needs in the run dir `base_dir`: `everywhere` (the `aws`
    extra) on the laptop and on a maestro that runs Pulumi, boto3 alone on one that does not."""
    side = MaestroSide.find(base_dir)
    return everywhere if side is None or side.pulumi_here else MAESTRO_MODULES


# ---- a lost worker -------------------------------------------------------------------------


class LostWorker(str, Enum):
    RECREATE_HERE = "recreate here"  # pulumi up in this process (laptop, or a maestro with Pulumi)
    LEAVE_TO_LAPTOP = "leave to the laptop"  # its jobs go elsewhere; `cloudsend up` re-creates it
    RETIRE = "retire"  # never re-created (its eco_life ran out: a new one would start a new one)


def lost_worker(
    kind: str, *, on_maestro: bool, pulumi_here: bool, retired: bool = False
) -> LostWorker:
    """What to do with a worker whose machine is gone (`kind`: monitor's terminated,
    spot_interrupted, missing, expired): pure, see the table in tests/test_maestro_aws_side.py."""
    if kind == "expired" or retired:
        return LostWorker.RETIRE
    if not on_maestro or pulumi_here:
        return LostWorker.RECREATE_HERE
    return LostWorker.LEAVE_TO_LAPTOP


def rejoined(events: Iterable[InstanceEvent], recorded: Mapping[str, str]) -> list[str]:
    """Workers whose machine runs again under an instance id the run does not know
    (`recorded`: host name → the instance id the run reaches it on): the laptop's `cloudsend
    up` re-created them. Pure; a worker started again under its own id is not one."""
    names: list[str] = []
    for event in events:
        known = recorded.get(event.name)
        new = event.kind == "running" and known is not None and event.instance_id != known
        if new and event.name not in names:
            names.append(event.name)
    return names


def recreation_waits(host: str) -> str:
    """The notice `status` shows for a worker a file:// maestro cannot re-create."""
    return f"re-creation of {host} waits for `cloudsend up` from the laptop"


class RecreationDeferred(ProvisionError):
    """The maestro's replace refused: Pulumi cannot run here (file:// state backend). `hosts`:
    the workers left to the laptop; their jobs go to the remaining workers meanwhile."""

    def __init__(self, hosts: Iterable[str], why: str | None = None) -> None:
        self.hosts = tuple(sorted(hosts))
        why = why or (
            "the stack's state is in a file:// backend on the laptop: Pulumi cannot run on "
            "the maestro"
        )
        super().__init__(
            "; ".join(recreation_waits(h) for h in self.hosts) + f" ({why})",
            hint="run `cloudsend up CONFIG` on the laptop, or use a shared state_backend "
            "(s3://...) with secrets_provider: awskms://... so the maestro re-creates lost "
            "workers itself",
        )


# ---- stopping this machine -----------------------------------------------------------------


def stop_maestro(session: Session, side: MaestroSide) -> str:
    """Stop this instance (its disk, with every result on it, stays; `cloudsend fetch` on the
    laptop starts it again). The maestro's role allows ec2:StopInstances on the stack's tagged
    instances (program.maestro_policy), this one included. Returns its id."""
    from botocore.exceptions import BotoCoreError, ClientError

    from cloudsend.providers.aws.session import client

    instance = side.contract.instance_id
    ec2 = client(session, "ec2", side.contract.region)
    try:
        ec2.stop_instances(InstanceIds=[instance])
    except (ClientError, BotoCoreError) as exc:
        raise ProvisionError(
            f"auto_stop could not stop the maestro {instance} in {side.contract.region}: {exc}",
            hint="it keeps billing while running: stop it in the EC2 console, or run "
            "`cloudsend down` on the laptop",
        ) from exc
    return instance
