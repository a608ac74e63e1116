"""`cpus` of an instance entry → EC2 CPU options, checked against the type's real limits.

The program asks for `cpus` cores at one thread each, so the host shows exactly the slots jobs
are packed into. EC2 refuses CPU options on some types (T2, most burstable and bare-metal ones
report no ValidCores) and accepts only some core counts on the rest: both are known from
describe_instance_types before anything is created, so a bad pair is a config error at
preview time instead of a failed `up`, and a type without CPU options keeps all its vCPUs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from cloudsend.errors import ConfigError, ProvisionError
from cloudsend.providers.aws.session import client
from cloudsend.providers.aws.spec import StackSpec

if TYPE_CHECKING:
    from boto3.session import Session


def vcpu_info(session: Session, wanted: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    """{(region, type): VCpuInfo}, one describe_instance_types call per region."""
    by_region: dict[str, set[str]] = {}
    for region, kind in wanted:
        by_region.setdefault(region, set()).add(kind)
    found: dict[tuple[str, str], Any] = {}
    for region, kinds in sorted(by_region.items()):
        try:
            answer = client(session, "ec2", region).describe_instance_types(
                InstanceTypes=sorted(kinds)
            )
        except Exception as exc:  # InvalidInstanceType and friends are ClientErrors
            raise ProvisionError(
                f"cannot read the CPU limits of {', '.join(sorted(kinds))} in {region}: {exc}",
                hint="check the instance type names, or pick a region that offers them",
            ) from exc
        for item in answer.get("InstanceTypes", []):
            found[(region, item["InstanceType"])] = item.get("VCpuInfo", {})
    return found


def fit_cpu_options(
    spec: StackSpec, infos: dict[tuple[str, str], Any]
) -> tuple[StackSpec, list[str]]:
    """The spec with `cpus` kept only where EC2 takes it; notices for the ones dropped.

    Raises ConfigError naming the entry when `cpus` is more than the type has, or a core count
    the type does not offer at one thread per core."""
    notices: list[str] = []
    instances = []
    dropped: set[int] = set()
    for inst in spec.instances:
        info = infos.get((inst.region, inst.type))
        if inst.cpus is None or info is None:
            instances.append(inst)
            continue
        vcpus = int(info.get("DefaultVCpus") or 0)
        where = f"instances[{inst.entry}] ({inst.type}, cpus: {inst.cpus})"
        if vcpus and inst.cpus > vcpus:
            raise ConfigError(
                f"{where}: the type has only {vcpus} vCPUs",
                hint=f"set cpus to at most {vcpus}, or pick a bigger type",
            )
        cores = [int(c) for c in info.get("ValidCores") or []]
        threads = [int(t) for t in info.get("ValidThreadsPerCore") or []]
        if not cores or 1 not in threads:
            if inst.entry not in dropped:
                dropped.add(inst.entry)
                notices.append(
                    f"{where}: {inst.type} does not allow CPU options; its instances keep all "
                    f"{vcpus or 'their'} vCPUs"
                )
            instances.append(dataclasses.replace(inst, cpus=None))
            continue
        if inst.cpus not in cores:
            raise ConfigError(
                f"{where}: {inst.type} offers {', '.join(map(str, cores))} core(s) at one "
                "thread per core",
                hint="set cpus to one of these, or leave it out to use every vCPU",
            )
        instances.append(inst)
    return dataclasses.replace(spec, instances=tuple(instances)), notices
