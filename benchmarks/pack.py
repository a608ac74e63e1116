"""How packing time grows with the number of jobs (`multi_knapsack`, the default strategy).

The worst case for the wave scan: 3-cpu jobs on 4-cpu hosts leave a hole in every wave, which
1-cpu jobs fill. Times 10 000 and 100 000 jobs on 20 hosts and prints the time per 1 000 jobs
at 10x over the same at 1x, measured in the same run. Linear growth gives ~1.
Target: ratio <= 2, and 10 000 jobs well under a second. Prints figures; not a test.
"""

from __future__ import annotations

import sys
import time

from cloudsend.config.models import JobConfig
from cloudsend.scheduling import HostSlots, JobUnit, assign


def _units(n: int) -> list[JobUnit]:
    three, one = JobConfig.model_validate({"cpus_req": 3}), JobConfig.model_validate({})
    return [
        JobUnit(f"j{i:06d}-x-00000000-0", i, 0, three if i % 2 else one, None, 3 if i % 2 else 1)
        for i in range(n)
    ]


def _best(n: int, runs: int) -> float:
    units, hosts = _units(n), [HostSlots(f"h{i}", 4) for i in range(20)]
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        assign(units, hosts, "multi_knapsack")
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    small, big = _best(10_000, runs), _best(100_000, runs)
    print(f"pack  10 000 jobs: {small * 1000:7.1f} ms (best of {runs})")
    print(f"pack 100 000 jobs: {big * 1000:7.1f} ms (best of {runs})")
    print(f"time per job at 100k / at 10k: {big / 10 / small:5.2f}  (target <= 2)")


if __name__ == "__main__":
    main()
