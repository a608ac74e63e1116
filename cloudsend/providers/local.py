"""The `local` provider: hosts are folders on this machine, each with its own agent.

Each instance entry × number becomes one local host, so a config written for several cloud
machines runs here unchanged (and the scheduler is exercised across hosts). Without instances,
one host gets every CPU of this machine.
"""

from __future__ import annotations

import os
import shutil
import sys

from cloudsend.config.layout import project_paths
from cloudsend.config.models import Config, InstanceConfig
from cloudsend.providers.base import Host, Machines, Preview
from cloudsend.scheduling import explode_instances
from cloudsend.transport.local import LocalTransport


class LocalProvider:
    name = "local"
    owns_machines = False
    machines: Machines | None = None  # no machines of its own
    needs_modules: tuple[str, ...] = ()

    def __init__(self, config: Config) -> None:
        self.config = config
        self.unreachable: dict[str, str] = {}
        self.hosts_dir = project_paths(config).hosts_dir  # the project's own

    def shapes(self) -> list[tuple[str, int]]:
        """(name, cpus) of every host `up` makes, known without making them."""
        cpus_here = os.cpu_count() or 1
        instances = self.config.instances or [InstanceConfig()]
        biggest = max((j.cpus_req for j in self.config.jobs), default=1)
        machines = explode_instances(instances, biggest)
        if len(machines) == 1:
            return [("local", machines[0][1].cpus or cpus_here)]
        shapes: list[tuple[str, int]] = []
        seen: dict[int, int] = {}
        for entry, inst in machines:
            n = seen[entry] = seen.get(entry, -1) + 1
            shapes.append((f"local-{entry}-{n}", inst.cpus or cpus_here))
        return shapes

    def up(self) -> list[Host]:
        hosts = []
        for name, cpus in self.shapes():
            root = self.hosts_dir / name
            root.mkdir(parents=True, exist_ok=True)
            hosts.append(
                Host(
                    name=name,
                    cpus=cpus,
                    root=str(root.resolve()),
                    python=sys.executable,
                    transport=LocalTransport(name),
                    info={"provider": "local"},
                )
            )
        return hosts

    def check_down(self, keep: bool) -> None:
        """Both kinds of down can be done here (keep: the hosts' folders stay)."""

    def down(self, hosts: list[Host], keep: bool = False) -> None:
        if not keep and self.hosts_dir.exists():
            shutil.rmtree(self.hosts_dir)

    def attach(self) -> list[Host]:
        """The hosts, creating nothing (here the same as up)."""
        return self.up()

    def check(self) -> list[str]:
        """This machine's hosts are known now: a job too big for all of them is caught."""
        from cloudsend.scheduling import HostSlots, JobUnit, check_fits

        # One unit per jobs[] entry, not per repeat: the fit does not depend on repeat, and
        # expanding (hashing every entry, one object per run) took 0.8 s for 100 000 runs.
        units = [
            JobUnit(f"jobs[{i}]", i, 0, job, job.env_name, job.cpus_req)
            for i, job in enumerate(self.config.jobs)
        ]
        check_fits(units, [HostSlots(name, cpus) for name, cpus in self.shapes()])
        return self.notices()

    def preview(self, *, offline: bool = False, enforce_budget: bool = False) -> Preview:
        return Preview("local", sum(i.number for i in self.config.instances) or 1)

    def notices(self) -> list[str]:
        return local_notices(self.config)


# Instance keys (and the global profile) that only mean something on a cloud.
CLOUD_ONLY_KEYS = (
    "eco",
    "eco_life",
    "max_bid",
    "img_id",
    "img_username",
    "region",
    "cloud_id",
    "type",
    "gpu",
    "disk_size",
    "disk_type",
)


def local_notices(config: Config) -> list[str]:
    """One notice per cloud-only key the user set (to a non-default value) that the local
    provider ignores; none when the config is not for the local provider."""
    if config.provider != "local":
        return []
    notices = []
    if config.aws.profile is not None:
        notices.append(_ignored("profile"))
    for index, instance in enumerate(config.instances):
        for key in CLOUD_ONLY_KEYS:
            default = InstanceConfig.model_fields[key].get_default(call_default_factory=True)
            if key in instance.model_fields_set and getattr(instance, key) != default:
                notices.append(_ignored(f"instances[{index}].{key}"))
    return notices


def _ignored(key: str) -> str:
    return f"{key} is ignored by the local provider (it only means something on a cloud)"
