"""The aws provider's machine operations (providers.base.Machines) while a run goes on.

The watch loop speaks host names; EC2 speaks instance ids. The translation happens here,
through the InstanceMonitor's {host name: instance} view, so nothing outside the aws package
sees an instance id. Built lazily by AwsProvider.machines: the monitor (boto3) and the session
are asked for only when an operation runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from cloudsend.providers.aws.monitor import InstanceReaction, plan_reaction
from cloudsend.providers.aws.session import credentials_errors
from cloudsend.providers.base import Host, PowerOff, Reaction

if TYPE_CHECKING:
    from boto3.session import Session

    from cloudsend.providers.aws.monitor import InstanceMonitor


class AwsMachines:
    """`monitor` and `session` are called on each use (the provider creates them once);
    `replace` re-provisions machines by host name (AwsProvider: refresh + pulumi up)."""

    def __init__(
        self,
        monitor: Callable[[], InstanceMonitor],
        session: Callable[[], Session],
        replace: Callable[[list[str]], list[Host]],
        *,
        profile: str | None = None,  # for the credentials message only
        stop_self: Callable[[], str] | None = None,  # on the maestro: stop this machine
        # on a maestro without Pulumi: host name → the instance id the run knows it by; a
        # worker seen running under another id (the laptop re-created it) is to be replaced
        recorded: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        self._monitor = monitor
        self._session = session
        self._replace = replace
        self._profile = profile
        self._stop_self = stop_self
        self._recorded = recorded

    def poll(self) -> Reaction:
        return self.poll_instances().hosts()

    def poll_instances(self) -> InstanceReaction:
        """poll() in EC2's terms (instance ids to start)."""
        with credentials_errors(self._profile):
            events = self._monitor().poll()
        reaction = plan_reaction(events)
        if self._recorded is not None:
            from cloudsend.providers.aws.maestro_side import rejoined

            for name in rejoined(events, self._recorded()):
                if name not in reaction.replace:
                    reaction.replace.append(name)
        return reaction

    def start(self, names: list[str]) -> list[str]:
        """Start the stopped machines of these hosts (all of them: the caller decides which);
        returns the host names started. Machines still stopping are not started: the next
        poll reports them stopped."""
        with credentials_errors(self._profile):
            infos = self._monitor().instances()
            by_id = {infos[n].id: n for n in names if n in infos}
            started = self._monitor().start(list(by_id))
        return [by_id[i] for i in started]

    def stop(self, names: list[str]) -> PowerOff:
        """auto_stop: on-demand instances are stopped (disks stay; `down` destroys), one-time
        spot ones terminated (EC2 cannot stop them)."""
        from cloudsend.providers.aws.power import power_off

        with credentials_errors(self._profile):
            infos = self._monitor().instances()
            return power_off(self._session(), [infos[n] for n in names if n in infos])

    def replace(self, names: list[str]) -> list[Host]:
        return self._replace(names)

    def stop_maestro(self) -> str | None:
        if self._stop_self is None:
            return None  # the watcher runs on the laptop: nothing of the stack to stop there
        with credentials_errors(self._profile):
            return self._stop_self()
