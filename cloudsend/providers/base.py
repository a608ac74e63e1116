"""The small contract between the generic pipeline and each provider."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from cloudsend.errors import ProvisionError
from cloudsend.transport.base import Transport


@dataclass
class Host:
    """A machine jobs run on: where its agent lives and how to reach it."""

    name: str
    cpus: int
    root: str  # absolute path of cloudsend's dir on the host
    python: str  # interpreter that runs the agent there
    transport: Transport
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def agent(self) -> str:
        return f"{self.root}/agent.py"


class HostsNotCleaned(ProvisionError):
    """`down` could not clean some hosts (unreachable, or a root that is not cloudsend's);
    the others were. `hosts`: host name → why."""

    def __init__(self, hosts: dict[str, str]) -> None:
        self.hosts = dict(hosts)
        listing = "\n".join(f"  {name}: {why}" for name, why in sorted(self.hosts.items()))
        super().__init__(
            f"down did not clean {len(self.hosts)} host(s); their agents or folders may "
            f"remain:\n{listing}",
            hint="make them reachable and run `cloudsend down` again (the hosts already "
            "cleaned are skipped quickly)",
        )


@dataclass
class Reaction:
    """What the run should do about a batch of machine events (Machines.poll)."""

    start: list[str] = field(default_factory=list)  # host names whose machines stopped
    replace: list[str] = field(default_factory=list)  # host names to provision again
    lost_hosts: list[str] = field(default_factory=list)  # host names whose jobs go elsewhere
    # host names the cloud interrupted (spot): never what auto_stop did, whatever else is known
    interrupted: list[str] = field(default_factory=list)
    # host names whose machines ran out their time budget (aws: eco_life): never replaced
    expired: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.start or self.replace or self.lost_hosts or self.expired)


@dataclass
class PowerOff:
    """What Machines.stop did: machines stopped (disks kept) or terminated (one-time spot)."""

    stopped: list[str] = field(default_factory=list)  # host names
    terminated: list[str] = field(default_factory=list)  # host names


# ---- what `preview` shows ----------------------------------------------------------------

# Display order, most consequential first; also decides which op a resource keeps when several
# engine steps touch it (the earlier in this tuple wins).
OP_ORDER = ("replace", "delete", "create", "update", "import", "read", "refresh", "same")


@dataclass
class ResourceChange:
    """One resource in a preview or an update: what happens to it and which properties differ.

    status: "planned" (preview), or "started" / "done" / "failed" while an up/destroy runs.
    """

    op: str  # one of OP_ORDER
    type: str
    name: str
    urn: str
    changed_properties: list[str] = field(default_factory=list)
    detailed_diff: dict[str, str] = field(default_factory=dict)  # property path -> diff kind
    replace_keys: list[str] = field(default_factory=list)  # properties forcing a replacement
    status: str = "planned"


def op_rank(op: str) -> int:
    return OP_ORDER.index(op) if op in OP_ORDER else len(OP_ORDER)


def ordered_changes(changes: Iterable[ResourceChange]) -> list[ResourceChange]:
    """Display order. Stable: within one op, resources keep the engine's (dependency) order."""
    return sorted(changes, key=lambda change: op_rank(change.op))


def summary_counts(changes: Iterable[ResourceChange]) -> dict[str, int]:
    """{op: number of resources}, most consequential op first; "same" included."""
    counts: dict[str, int] = {}
    for change in changes:
        counts[change.op] = counts.get(change.op, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (op_rank(item[0]), item[0])))


def changes_to_json(changes: Iterable[ResourceChange]) -> list[dict[str, Any]]:
    """Plain dicts (json.dumps-able) in display order, for `cloudsend preview --json`."""
    return [asdict(change) for change in ordered_changes(changes)]


class Cost(Protocol):
    """An hourly cost estimate (aws: costs.CostEstimate). `to_dict()` is what is shown:
    {"as_of", "instances": [{"name", "type", "region", "market", "hourly", "source"}],
    "charges"?: [{"name", "detail", "region", "hourly", "source"}] (public IPv4, EBS),
    "total_per_hour", "total_for_eco_life"?, "total_for_eco_life_covers"?, "warnings"}."""

    total_per_hour: float

    def to_dict(self) -> dict[str, Any]: ...


@dataclass
class Preview:
    """What `up` would do, for `cloudsend preview` and the confirmation of `up` / `run`.
    The CLI only renders it (cloudsend.ui): which fields are set says what there is to show."""

    provider: str
    hosts: int  # how many hosts `up` makes
    changes: list[ResourceChange] = field(default_factory=list)  # the engine's plan (online)
    resources: list[dict[str, Any]] | None = None  # offline: what the program declares
    cost: Cost | None = None  # None: nothing billed by cloudsend (local, ssh)
    warnings: list[str] = field(default_factory=list)

    @property
    def up_to_date(self) -> bool:
        """Nothing to create or change (no confirmation to ask)."""
        return all(c.op in ("same", "read") for c in self.changes)


# ---- machines ----------------------------------------------------------------------------


class Machines(Protocol):
    """The machine operations of a provider whose hosts are machines it manages (aws).
    Every name is a host name; errors are ProvisionError."""

    def poll(self) -> Reaction:
        """Look at the machines once: what stopped, ended or was interrupted since last time."""
        ...

    def start(self, names: list[str]) -> list[str]:
        """Start these hosts' stopped machines; returns the names started."""
        ...

    def stop(self, names: list[str]) -> PowerOff:
        """auto_stop: power these hosts' machines off."""
        ...

    def replace(self, names: list[str]) -> list[Host]:
        """Provision these hosts' machines again (same names); returns the new hosts."""
        ...

    def stop_maestro(self) -> str | None:
        """auto_stop's last step on a remote maestro: stop the machine this watcher runs on
        (aws: the stack's maestro); returns its id, None where the watcher's machine is not
        the provider's (the laptop, ssh)."""
        ...


class Provider(Protocol):
    name: str
    unreachable: dict[str, str]  # host name → why, for hosts up() had to leave out
    # True: down destroys the machines themselves (aws), so a host whose agent could not be
    # stopped leaves nothing behind; False (local, ssh): such a host is reported not cleaned.
    owns_machines: bool
    # modules the provider's extra installs (`pip install 'cloudsend[<name>]'`); get_provider
    # names the missing ones instead of failing with an ImportError
    needs_modules: tuple[str, ...]

    @property
    def machines(self) -> Machines | None:
        """The machine operations, or None when the provider has no machines of its own
        (local, ssh): the watch loop then neither polls, starts, stops nor replaces anything."""
        ...

    def check(self) -> list[str]:
        """`cloudsend validate`: what can be told from the config alone, touching no machine
        and needing no extra. Raises ConfigError (e.g. a job no host fits); returns notices."""
        ...

    def preview(self, *, offline: bool = False, enforce_budget: bool = False) -> Preview:
        """What `up` would create and cost. offline: no network, no credentials (the
        resources declared, bundled prices). enforce_budget (`up`, `run`): a plan over the
        budget raises ConfigError before anything is created."""
        ...

    def up(self) -> list[Host]:
        """Create or find the hosts (idempotent)."""
        ...

    def attach(self) -> list[Host]:
        """The hosts that exist now, creating nothing (status, logs, fetch, down)."""
        ...

    def check_down(self, keep: bool) -> None:
        """Refuse (ConfigError) a `down` the provider cannot do as asked, before anything is
        stopped: e.g. `keep` where the hosts' files cannot be kept."""
        ...

    def down(self, hosts: list[Host], keep: bool = False) -> None:
        """Tear the hosts down (after their agents were stopped); `keep` leaves their files.
        Raises HostsNotCleaned naming the hosts it could not clean, after trying them all."""
        ...

    def notices(self) -> list[str]:
        """Things the user should know about how this provider reads the config."""
        ...
