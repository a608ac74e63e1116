"""Assignment of job units to hosts by CPU slots (``job_assign``: random | multi_knapsack).

The result is ``{host name: [job ids in submission order]}`` with every host present (possibly
with an empty list). Each host's agent runs its queue up to its own CPU slots, so the order only
matters for what starts first; the capacity that matters is the host's ``cpus``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from cloudsend.errors import ConfigError
from cloudsend.scheduling.expand import JobUnit

Strategy = Literal["random", "multi_knapsack"]
STRATEGIES: tuple[Strategy, ...] = ("random", "multi_knapsack")


@dataclass(frozen=True)
class HostSlots:
    """A host as the scheduler sees it: a name and how many CPU slots its agent runs."""

    name: str
    cpus: int


def _check_hosts(hosts: Sequence[HostSlots]) -> None:
    # Programming errors (the provider builds these), not user errors: no hint to give.
    names = [h.name for h in hosts]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate host names: {sorted(names)}")
    for h in hosts:
        if h.cpus < 1:
            raise ValueError(f"host {h.name!r} has {h.cpus} CPUs; at least 1 is needed")


def check_fits(units: Sequence[JobUnit], hosts: Sequence[HostSlots]) -> None:
    """Raise ConfigError when some job needs more CPUs than the biggest host has.

    Such a job would wait forever in an agent's queue, so it is a config error, reported
    before anything is submitted, naming each offending ``jobs[i]`` once (not once per rep).
    """
    if not units:
        return
    if not hosts:
        raise ConfigError(
            f"there are {len(units)} jobs to run but no hosts",
            hint="add an entry to instances[] (or use the local provider)",
        )
    biggest = max(hosts, key=lambda h: h.cpus)
    too_big: dict[int, int] = {}
    for u in units:
        if u.cpus > biggest.cpus:
            too_big.setdefault(u.index, u.cpus)
    if too_big:
        jobs = ", ".join(f"jobs[{i}] (cpus_req={c})" for i, c in sorted(too_big.items()))
        raise ConfigError(
            f"{jobs} needs more CPUs than any host has: the biggest host, {biggest.name!r}, "
            f"has {biggest.cpus}",
            hint="lower cpus_req, or give instances[] more cpus (or a bigger type); "
            "explode only ever splits a host into smaller ones",
        )


def knapsack_waves(
    units: Sequence[JobUnit], hosts: Sequence[HostSlots]
) -> dict[str, list[list[str]]]:
    """Pack units into bins ``(host, wave)`` of capacity ``host.cpus``: ``{host: [wave...]}``.

    A wave is what a host can run at once. Units are taken biggest first (first-fit
    decreasing, ties in config order) and go into the earliest wave with room on some host;
    within that wave, to the host with the most free CPUs (ties: the first host). So wave 0
    fills every host before wave 1 opens and the load is spread rather than stacked on the
    first host: 8 one-CPU jobs on two 4-CPU hosts give 4 and 4, 4 jobs give 2 and 2.
    """
    _check_hosts(hosts)
    check_fits(units, hosts)
    caps = [h.cpus for h in hosts]
    free: list[list[int]] = []  # free[wave][host]
    bins: list[list[list[str]]] = []  # bins[wave][host] -> job ids
    # Room only shrinks, so a wave that could not take a unit of size s never takes another
    # unit of size s: scanning resumes where the last unit of the same size went, and restarts
    # from the first live wave only when the size drops. Waves before `first_live` have no room
    # even for the smallest unit. This keeps thousands of jobs from costing jobs x waves.
    smallest = min((u.cpus for u in units), default=1)
    first_live = scan_from = 0
    size = 0
    for u in sorted(units, key=lambda unit: -unit.cpus):  # sorted() is stable: config order kept
        if u.cpus != size:
            size, scan_from = u.cpus, first_live
        target: tuple[int, int] | None = None
        for w in range(max(scan_from, first_live), len(free)):
            row = free[w]
            best = max(range(len(row)), key=lambda h: row[h])  # first host with the most room
            if row[best] >= u.cpus:
                target = (w, best)
                break
        if target is None:
            # A fresh wave: the host with the most room is the biggest; check_fits made sure
            # the unit fits there.
            free.append(list(caps))
            bins.append([[] for _ in hosts])
            target = (len(free) - 1, max(range(len(caps)), key=lambda h: caps[h]))
        w, h = target
        scan_from = w
        free[w][h] -= u.cpus
        bins[w][h].append(u.job_id)
        while first_live < len(free) and max(free[first_live]) < smallest:
            first_live += 1
    return {
        host.name: [bins[w][h] for w in range(len(bins)) if bins[w][h]]
        for h, host in enumerate(hosts)
    }


def _assign_random(
    units: Sequence[JobUnit], hosts: Sequence[HostSlots], seed: int
) -> dict[str, list[str]]:
    # The original's strategy, kept for users who rely on it: each unit goes to a uniformly
    # chosen host among those it fits on. Seeded so a resumed run makes the same choices.
    _check_hosts(hosts)
    check_fits(units, hosts)
    rng = random.Random(seed)
    out: dict[str, list[str]] = {h.name: [] for h in hosts}
    for u in units:
        host = rng.choice([h for h in hosts if h.cpus >= u.cpus])
        out[host.name].append(u.job_id)
    return out


def assign(
    units: Sequence[JobUnit],
    hosts: Sequence[HostSlots],
    strategy: Strategy,
    seed: int = 0,
) -> dict[str, list[str]]:
    """``{host name: [job ids]}``: every unit placed exactly once, on a host it fits on.

    ``multi_knapsack``: the waves of :func:`knapsack_waves` flattened, so each host's queue
    is in wave order (``seed`` is unused: the packing is deterministic). ``random``: a seeded
    random host among those that fit, queues in config order. Raises ConfigError when a unit
    fits on no host (see :func:`check_fits`).
    """
    if strategy == "multi_knapsack":
        return {
            name: [job_id for wave in host_waves for job_id in wave]
            for name, host_waves in knapsack_waves(units, hosts).items()
        }
    if strategy == "random":
        return _assign_random(units, hosts, seed)
    raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")


def waves(
    assignment: dict[str, list[str]],
    units: Sequence[JobUnit],
    hosts: Sequence[HostSlots],
) -> dict[str, list[list[str]]]:
    """Split each host's queue into consecutive waves that fit its CPUs (greedy).

    For a ``multi_knapsack`` assignment this gives back exactly :func:`knapsack_waves` (a unit
    went to a later wave only because no earlier one had room for it, and room only shrinks).
    For any assignment it tells how many rounds each host needs if its queue runs in order.
    """
    cpus = {u.job_id: u.cpus for u in units}
    caps = {h.name: h.cpus for h in hosts}
    out: dict[str, list[list[str]]] = {}
    for name, queue in assignment.items():
        host_waves: list[list[str]] = []
        used = caps[name] + 1  # forces a new wave for the first job
        for job_id in queue:
            if used + cpus[job_id] > caps[name]:
                host_waves.append([])
                used = 0
            host_waves[-1].append(job_id)
            used += cpus[job_id]
        out[name] = host_waves
    return out
