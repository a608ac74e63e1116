"""The small contract between the generic pipeline and each provider."""

from __future__ import annotations

from dataclasses import dataclass, field
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

    def __bool__(self) -> bool:
        return bool(self.start or self.replace or self.lost_hosts)


@dataclass
class PowerOff:
    """What Machines.stop did: machines stopped (disks kept) or terminated (one-time spot)."""

    stopped: list[str] = field(default_factory=list)  # host names
    terminated: list[str] = field(default_factory=list)  # host names


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


class Provider(Protocol):
    name: str
    unreachable: dict[str, str]  # host name → why, for hosts up() had to leave out
    # True: down destroys the machines themselves (aws), so a host whose agent could not be
    # stopped leaves nothing behind; False (local, ssh): such a host is reported not cleaned.
    owns_machines: bool
    # The machine operations, or None when the provider has no machines of its own (local,
    # ssh): the watch loop then neither polls, starts, stops nor replaces anything.
    machines: Machines | None

    def up(self) -> list[Host]:
        """Create or find the hosts (idempotent)."""
        ...

    def attach(self) -> list[Host]:
        """The hosts that exist now, creating nothing (status, logs, fetch, down)."""
        ...

    def down(self, hosts: list[Host], keep: bool = False) -> None:
        """Tear the hosts down (after their agents were stopped); `keep` leaves their files.
        Raises HostsNotCleaned naming the hosts it could not clean, after trying them all."""
        ...

    def notices(self) -> list[str]:
        """Things the user should know about how this provider reads the config."""
        ...
