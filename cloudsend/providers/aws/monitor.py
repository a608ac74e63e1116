"""Watch a stack's instances through the EC2 API and say what happened to them.

SSH tells the pipeline that a host stopped answering; only the EC2 API tells why: stopped (start
it again, its disk is intact), terminated or reclaimed by a spot interruption (its disk is gone:
provision a replacement and hand its jobs to other hosts), or ended by its own eco_life (the
instance shut itself down at launch + eco_life: "expired", never replaced, so eco_life caps
what it costs). `InstanceMonitor.poll()` turns
successive describe_instances answers into events; `plan_reaction()` is the pure decision the
pipeline applies (design.md, "Failure handling"). Nothing here waits or sleeps: the pipeline's
watch loop owns the rhythm.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Literal

from cloudsend.errors import ProvisionError
from cloudsend.providers.aws.session import client
from cloudsend.providers.aws.spec import ECO_LIFE_TAG  # the program's tag: minutes from launch
from cloudsend.providers.base import Reaction

if TYPE_CHECKING:
    from boto3.session import Session

EventKind = Literal["stopped", "terminated", "spot_interrupted", "expired", "running", "missing"]

SPOT_TERMINATION = "Server.SpotInstanceTermination"
SELF_SHUTDOWN = "Client.InstanceInitiatedShutdown"  # `shutdown` on the instance (eco_life's)
GONE = ("terminated", "spot_interrupted", "expired")  # kinds whose machine and disk are gone
# The instance's clock and ours may differ: a self-shutdown this close to the deadline is
# eco_life's (a job's own `shutdown` hours earlier is not).
CLOCK_SLACK = timedelta(minutes=5)


@dataclass(frozen=True)
class InstanceInfo:
    id: str
    name: str  # the Name tag (host name); the instance id when the tag is missing
    state: str  # pending | running | stopping | stopped | shutting-down | terminated
    public_ip: str | None
    private_ip: str | None
    region: str
    state_reason: str = ""  # StateReason.Code, e.g. Server.SpotInstanceTermination
    state_message: str = ""
    spot: bool = False
    launch_time: datetime | None = None
    eco_life_minutes: int | None = None  # the ECO_LIFE_TAG: it ends itself that long after launch
    observed: datetime | None = None  # when describe_instances said this (UTC)

    @property
    def eco_life_end(self) -> datetime | None:
        """When the instance's eco_life ends (launch + eco_life), None without one."""
        if self.eco_life_minutes is None or self.launch_time is None:
            return None
        return self.launch_time + timedelta(minutes=self.eco_life_minutes)

    def eco_life_ended(self) -> bool:
        """Seen at or after its eco_life's end (within CLOCK_SLACK when it shut itself down)."""
        end = self.eco_life_end
        if end is None or self.observed is None:
            return False
        slack = CLOCK_SLACK if self.state_reason == SELF_SHUTDOWN else timedelta(0)
        return self.observed + slack >= end

    @property
    def kind(self) -> EventKind | None:
        """What this state means to cloudsend; None while in transit (pending, stopping)."""
        if self.state in ("shutting-down", "terminated"):
            if self.eco_life_ended():
                # it ran out its eco_life: the time budget the user gave it, not a loss
                return "expired"
            if self.state_reason == SPOT_TERMINATION:
                return "spot_interrupted"
            # A spot instance that AWS ended (any Server.* reason) rather than the user or the
            # instance itself (Client.*) was reclaimed, whatever code this API version reports.
            if self.spot and not self.state_reason.startswith("Client."):
                return "spot_interrupted"
            return "terminated"
        if self.state == "stopped":
            return "stopped"
        if self.state == "running":
            return "running"
        return None


@dataclass(frozen=True)
class InstanceEvent:
    kind: EventKind
    instance_id: str
    name: str
    state: str  # "" for "missing"
    reason_code: str = ""
    reason_message: str = ""
    region: str = ""


@dataclass
class InstanceReaction:
    """What to do about a batch of events, in EC2's terms: `start` holds instance ids (the
    rest host names). `hosts()` is the provider-neutral Reaction (host names only)."""

    start: list[str] = field(default_factory=list)  # instance ids to start (were stopped)
    replace: list[str] = field(default_factory=list)  # host names to provision again
    lost_hosts: list[str] = field(default_factory=list)  # host names whose jobs go elsewhere
    # host names AWS interrupted (spot): never what auto_stop did, whatever else is known
    interrupted: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)  # host names whose eco_life ended
    names: dict[str, str] = field(default_factory=dict)  # instance id → host name (start)

    def __bool__(self) -> bool:
        return bool(self.start or self.replace or self.lost_hosts or self.expired)

    def hosts(self) -> Reaction:
        return Reaction(
            start=[self.names.get(i, i) for i in self.start],
            replace=list(self.replace),
            lost_hosts=list(self.lost_hosts),
            interrupted=list(self.interrupted),
            expired=list(self.expired),
        )


def _append_once(items: list[str], value: str) -> None:
    if value not in items:
        items.append(value)


def plan_reaction(events: Iterable[InstanceEvent]) -> InstanceReaction:
    """Decide what to do; later events about an instance supersede earlier ones.

    - stopped → start it (disk intact; the agent reports jobs killed by the stop as vanished and
      the pipeline re-queues them itself).
    - terminated, spot_interrupted, missing → replace the host and declare it lost: its disk and
      every job on it are gone.
    - expired (it ran out its eco_life) → not replaced (a new instance would start a new
      eco_life): the pipeline hands its jobs to other hosts or reports the budget ran out.
    - running → nothing, and a host already running again under a new instance id (replaced
      meanwhile) needs no further replacement; its old jobs stay lost.
    """
    latest: dict[str, InstanceEvent] = {}
    for event in events:
        latest.pop(event.instance_id, None)  # re-insert: keep the order of the latest news
        latest[event.instance_id] = event
    reaction = InstanceReaction()
    running_names: set[str] = set()
    for event in latest.values():
        if event.kind == "stopped":
            _append_once(reaction.start, event.instance_id)
            reaction.names[event.instance_id] = event.name
        elif event.kind in ("terminated", "spot_interrupted", "missing"):
            _append_once(reaction.replace, event.name)
            _append_once(reaction.lost_hosts, event.name)
            if event.kind == "spot_interrupted" and event.reason_code.startswith("Server."):
                # AWS says it reclaimed it: not something cloudsend's own terminate did
                _append_once(reaction.interrupted, event.name)
            running_names.discard(event.name)
        elif event.kind == "expired":
            _append_once(reaction.expired, event.name)
        elif event.kind == "running":
            running_names.add(event.name)
    reaction.replace = [name for name in reaction.replace if name not in running_names]
    return reaction


def reachable_address(info: InstanceInfo) -> str | None:
    """Where this machine connects to the instance: the public IP EC2 reports now (an
    instance started again has a new one), else its private IP. The one place a live EC2
    address becomes an SSH address (tests map moto's fake internet addresses here)."""
    return info.public_ip or info.private_ip


def _tag(tags: Sequence[dict[str, str]] | None, key: str) -> str | None:
    for tag in tags or ():
        if tag.get("Key") == key:
            return tag.get("Value")
    return None


def _minutes(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None  # not ours to trust: treated as no eco_life


def _info(raw: dict[str, Any], region: str, observed: datetime | None = None) -> InstanceInfo:
    reason = raw.get("StateReason") or {}
    return InstanceInfo(
        id=raw["InstanceId"],
        name=_tag(raw.get("Tags"), "Name") or raw["InstanceId"],
        state=raw.get("State", {}).get("Name", "unknown"),
        public_ip=raw.get("PublicIpAddress") or None,
        private_ip=raw.get("PrivateIpAddress") or None,
        region=region,
        state_reason=reason.get("Code") or "",
        state_message=reason.get("Message") or "",
        spot=raw.get("InstanceLifecycle") == "spot",
        launch_time=raw.get("LaunchTime"),
        eco_life_minutes=_minutes(_tag(raw.get("Tags"), ECO_LIFE_TAG)),
        observed=observed,
    )


def _event(kind: EventKind, info: InstanceInfo) -> InstanceEvent:
    return InstanceEvent(
        kind=kind,
        instance_id=info.id,
        name=info.name,
        state=info.state,
        reason_code=info.state_reason,
        reason_message=info.state_message,
        region=info.region,
    )


class InstanceMonitor:
    """The instances tagged with a stack's tags, and what changed since the last poll.

    `tags` are the stack's tags ({"cloudsend:project": ..., "cloudsend:stack": ...}); an
    instance must carry all of them. `regions` default to the session's region.
    """

    def __init__(
        self, session: Session, tags: dict[str, str], regions: Sequence[str] | None = None
    ) -> None:
        if not tags:
            raise ValueError("InstanceMonitor needs the stack's tags (it would watch everything)")
        self.session = session
        self.tags = dict(tags)
        default = [session.region_name] if session.region_name else []
        self.regions = list(dict.fromkeys(regions or default))
        if not self.regions:
            raise ProvisionError(
                "no AWS region to watch instances in",
                hint="set `region:` in the config or AWS_DEFAULT_REGION",
            )
        self._clients: dict[str, Any] = {}  # one per region: creating one costs ~50-100 ms
        self._kinds: dict[str, EventKind | None] = {}
        self._last: dict[str, InstanceInfo] = {}
        self._polled = False

    def _ec2(self, region: str) -> Any:
        if region not in self._clients:
            self._clients[region] = client(self.session, "ec2", region)
        return self._clients[region]

    def _describe(self, region: str) -> list[InstanceInfo]:
        ec2 = self._ec2(region)
        filters = [{"Name": f"tag:{k}", "Values": [v]} for k, v in sorted(self.tags.items())]
        try:
            pages = ec2.get_paginator("describe_instances").paginate(Filters=filters)
            now = datetime.now(timezone.utc)
            return [
                _info(raw, region, now)
                for page in pages
                for reservation in page.get("Reservations", [])
                for raw in reservation.get("Instances", [])
            ]
        except Exception as exc:  # botocore errors share no useful base beyond Exception
            raise ProvisionError(
                f"could not list the stack's instances in {region}: {exc}",
                hint="check AWS credentials and that ec2:DescribeInstances is allowed",
            ) from exc

    def _snapshot(self) -> dict[str, InstanceInfo]:
        return {info.id: info for region in self.regions for info in self._describe(region)}

    def poll(self) -> list[InstanceEvent]:
        """Events since the previous poll, ordered by host name.

        The first poll is the baseline: it reports only instances already stopped, terminated
        or interrupted (cloudsend may have been restarted after that happened), not the running
        ones. Later polls report every change of kind, new instances (a replacement appears as
        "running") and instances that vanished from the API ("missing"; terminated instances
        drop out of describe_instances about an hour after they end, which is not news).
        Transitional states (pending, stopping) produce nothing until they settle.
        """
        current = self._snapshot()
        events: list[InstanceEvent] = []
        for info in current.values():
            kind = info.kind
            if info.id not in self._kinds:
                if kind is not None and (self._polled or kind != "running"):
                    events.append(_event(kind, info))
                self._kinds[info.id] = kind
                continue
            previous = self._kinds[info.id]
            if kind is None or kind == previous:
                continue
            if previous in GONE and kind in GONE:
                continue  # e.g. the reason code showed up after shutting-down: already said
            events.append(_event(kind, info))
            self._kinds[info.id] = kind
        for gone_id in [i for i in self._kinds if i not in current]:
            if self._kinds[gone_id] not in GONE and gone_id in self._last:
                old = self._last[gone_id]
                events.append(InstanceEvent("missing", gone_id, old.name, "", region=old.region))
            del self._kinds[gone_id]
        self._last = current
        self._polled = True
        return sorted(events, key=lambda e: (e.name, e.instance_id))

    def instances(self) -> dict[str, InstanceInfo]:
        """{host name: InstanceInfo} now (a fresh describe; poll()'s history is untouched).

        When several instances carry one name (a terminated one and its replacement), the
        live one wins, then the most recently launched.
        """
        best: dict[str, InstanceInfo] = {}
        for info in self._snapshot().values():
            other = best.get(info.name)
            if other is None or _rank(info) > _rank(other):
                best[info.name] = info
        return dict(sorted(best.items()))

    def start(self, instance_ids: Iterable[str]) -> list[str]:
        """Start those of `instance_ids` that are stopped; returns the ids started.

        Instances still stopping are skipped: the next poll reports them stopped and the
        pipeline asks again. Ids not tagged with the stack are ignored.
        """
        wanted = set(instance_ids)
        started: list[str] = []
        for region in self.regions:
            if not wanted - set(started):
                break
            # The stack's tag filter, not InstanceIds: an id from another region (or another
            # stack) would fail the whole call with InvalidInstanceID.NotFound.
            stopped = [
                info.id
                for info in self._describe(region)
                if info.id in wanted and info.state == "stopped"
            ]
            if not stopped:
                continue
            try:
                self._ec2(region).start_instances(InstanceIds=stopped)
            except Exception as exc:  # e.g. InsufficientInstanceCapacity
                raise ProvisionError(
                    f"could not start instance(s) {', '.join(stopped)} in {region}: {exc}",
                    hint="AWS may lack capacity for this type right now; try again later or "
                    "run `cloudsend down` and `up` with another type or region",
                ) from exc
            started.extend(stopped)
        return started


def _rank(info: InstanceInfo) -> tuple[int, float]:
    alive = 0 if info.kind in GONE else 1
    stamp = info.launch_time.timestamp() if info.launch_time else 0.0
    return (alive, stamp)
