"""What a stack costs per hour: live prices when the caller has them, else the bundled table.

`prices.json` (beside this module) is a dated table of approximate public list prices
(Linux, USD/hour) for common types in us-east-1, us-west-2, eu-west-1 and eu-central-1; its
`as_of` date is shown with every estimate so nobody mistakes it for a quote. `pricing.py`
(boto3) fetches live prices in the same shape, {(region, type): {"on_demand", "spot"}}; a
live price wins over the table key by key.

A spot instance is estimated at the spot price, capped at its max_bid (it never pays more).
A max_bid below the estimated spot price is warned about: such a request may never start.
Unknown (region, type) pairs are left out of the total with a warning rather than guessed.

Beside the instance-hours, two charges every instance brings are counted, as `charges` lines of
their own (in the total, the eco_life total and the max_cost_per_hour guard): its public IPv4
address ($0.005 per address-hour since 2024-02, the same in every region) and its root EBS
volume (USD per GB-month by volume type, us-east-1 list prices, at 730 hours a month; other
regions are approximated by the us-east-1 rate, as their lines' source "us-east-1 rate" says:
no per-region figures are bundled, and most regions charge somewhat more). Provisioned
IOPS/throughput above the baseline, snapshots and data transfer are not counted. A stopped
instance (auto_stop) still pays for its volume, not for an auto-assigned public IP.

The eco_life total is what the whole plan costs over the longest eco_life: every instance, not
only the spot ones. A spot instance ends at its own eco_life (the program shuts it down); an
on-demand one, or a spot one without eco_life, is counted for the whole window, since nothing
ends it before auto_stop or `cloudsend down`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from importlib import resources
from typing import Any

from cloudsend.providers.aws.spec import InstanceSpec, MaestroSpec, StackSpec

LivePrices = Mapping[tuple[str, str], Mapping[str, float | None]]

HOURS_PER_MONTH = 730  # AWS's own conversion of monthly rates
PUBLIC_IPV4_HOURLY = 0.005  # USD per public IPv4 address-hour (since 2024-02-01, all regions)
EBS_REGION = "us-east-1"  # the region the EBS rates are from; others approximated by them
EBS_GB_MONTH = {  # USD per GB-month of an EBS volume, us-east-1
    "gp3": 0.08,
    "gp2": 0.10,
    "io1": 0.125,
    "io2": 0.125,
    "st1": 0.045,
    "sc1": 0.015,
    "standard": 0.05,
}


@dataclass(frozen=True)
class ChargeLine:
    """A charge beside the instance-hours, summed over the stack's instances in a region."""

    name: str  # "public IPv4" | "EBS <volume type>"
    detail: str  # what is counted: "3 address(es)", "60 GB"
    region: str
    hourly: float
    source: str  # "rate", or "us-east-1 rate" where another region's is approximated
    total_for_eco_life: float | None = None


@dataclass(frozen=True)
class CostLine:
    name: str
    type: str
    region: str
    market: str  # "spot" | "on-demand"
    hourly: float | None  # None: unknown (not in the total)
    source: str  # "live" | "table" | "unknown" | "max_bid" (spot price unknown: the bid caps it)
    eco_life_hours: float | None = None  # spot with eco_life: it ends by then
    # hourly × the hours it runs within the plan's eco_life window (its own eco_life for a
    # spot instance that has one, the whole window for the others)
    total_for_eco_life: float | None = None


@dataclass
class CostEstimate:
    lines: list[CostLine]
    total_per_hour: float  # known lines only; see `complete`
    as_of: str  # date of the bundled table
    eco_life_hours: float | None = None  # the longest eco_life among spot instances
    total_for_eco_life: float | None = None  # every priced instance over that window
    warnings: list[str] = field(default_factory=list)
    charges: list[ChargeLine] = field(default_factory=list)  # public IPv4, EBS (in the totals)

    @property
    def eco_life_note(self) -> str | None:
        """What total_for_eco_life covers, for the cost output."""
        if self.eco_life_hours is None:
            return None
        return (
            f"every instance for {self.eco_life_hours:g} h; spot instances until their own "
            "eco_life"
        )

    @property
    def complete(self) -> bool:
        """True when every instance has a price (the total is not an underestimate)."""
        return all(line.hourly is not None for line in self.lines)

    def most_expensive(self, n: int = 3) -> list[CostLine]:
        """The n priciest priced instances, most expensive first (for budget messages)."""
        priced = [line for line in self.lines if line.hourly is not None]
        priced.sort(key=lambda line: (-(line.hourly or 0.0), line.name))
        return priced[: max(0, n)]

    def over_budget(self, limit: float | None) -> str | None:
        """A message when the total exceeds `limit` $/hour (max_cost_per_hour), else None.

        An estimate missing some prices cannot prove the plan is within the budget: with a
        limit set, that is refused too (naming the unpriced instances) rather than waved
        through as an underestimate."""
        if limit is None:
            return None
        unpriced = [line for line in self.lines if line.hourly is None]
        if unpriced and self.total_per_hour <= limit:
            names = ", ".join(f"{line.name} ({line.type}, {line.region})" for line in unpriced[:3])
            more = f" and {len(unpriced) - 3} more" if len(unpriced) > 3 else ""
            return (
                f"cannot check max_cost_per_hour ${limit:.4f}: no price is known for "
                f"{names}{more} (known part: ${self.total_per_hour:.4f}/hour); "
                "remove max_cost_per_hour to go ahead without a full estimate"
            )
        if self.total_per_hour <= limit:
            return None
        top = ", ".join(
            f"{line.name} ({line.type}, {line.market}) ${line.hourly:.4f}/h"
            for line in self.most_expensive(3)
        )
        extra = sum(c.hourly for c in self.charges)
        charged = f"; public IPv4 and EBS: ${extra:.4f}/h" if extra else ""
        return (
            f"estimated ${self.total_per_hour:.4f}/hour exceeds max_cost_per_hour "
            f"${limit:.4f}; most expensive: {top}{charged}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "instances": [asdict(line) for line in self.lines],
            "charges": [asdict(line) for line in self.charges],
            "total_per_hour": round(self.total_per_hour, 6),
            "complete": self.complete,
            "eco_life_hours": self.eco_life_hours,
            "total_for_eco_life": None
            if self.total_for_eco_life is None
            else round(self.total_for_eco_life, 6),
            "total_for_eco_life_covers": self.eco_life_note,
            "as_of": self.as_of,
            "warnings": list(self.warnings),
        }


@lru_cache(maxsize=1)
def price_table() -> dict[str, Any]:
    """The bundled table: {"as_of", "source", "regions": {region: {type: {...}}}}."""
    text = resources.files("cloudsend.providers.aws").joinpath("prices.json").read_text()
    table: dict[str, Any] = json.loads(text)
    return table


def estimate(spec: StackSpec, live: LivePrices | None = None) -> CostEstimate:
    """Hourly cost of every instance of `spec`; `live` prices override the table."""
    table = price_table()
    lines: list[CostLine] = []
    warnings: list[str] = []
    warned: set[tuple[str, str, str]] = set()
    for inst in spec.instances:
        kind = "spot" if inst.eco else "on_demand"
        price, source = _lookup(table, live, inst.region, inst.type, kind)
        bid = float(inst.max_price) if inst.eco and inst.max_price is not None else None
        if price is not None and bid is not None and bid < price:
            warnings.append(
                f"{inst.name}: max_bid {inst.max_price} below the current spot price "
                f"{price:.4f} ({source}): may never start"
            )
            price = bid
        key = (inst.region, inst.type, kind)
        if price is None and key not in warned:
            warned.add(key)
            counted = "counted at its max_bid" if bid is not None else "not counted in the total"
            warnings.append(
                f"no {kind.replace('_', '-')} price known for {inst.type} in {inst.region} "
                f"(table of {table['as_of']}): {counted}"
            )
        if price is None and bid is not None:
            price, source = bid, "max_bid"  # spot never charges more than the bid
        life = inst.eco_life_hours if inst.eco else None
        lines.append(
            CostLine(
                name=inst.name,
                type=inst.type,
                region=inst.region,
                market="spot" if inst.eco else "on-demand",
                hourly=price,
                source=source,
                eco_life_hours=life,
            )
        )
    if spec.maestro is not None:  # maestro: remote, always on-demand
        m = spec.maestro
        price, source = _lookup(table, live, m.region, m.type, "on_demand")
        if price is None:
            warnings.append(
                f"no on-demand price known for the maestro's {m.type} in {m.region} "
                f"(table of {table['as_of']}): not counted in the total"
            )
        lines.append(
            CostLine(
                name=m.name,
                type=m.type,
                region=m.region,
                market="on-demand",
                hourly=price,
                source=source,
            )
        )
    window = max((line.eco_life_hours or 0.0 for line in lines), default=0.0) or None
    if window is not None:
        # the whole plan over the window: spot lines end at their eco_life, others run on
        lines = [
            replace(line, total_for_eco_life=line.hourly * (line.eco_life_hours or window))
            if line.hourly is not None
            else line
            for line in lines
        ]
    charges = charge_lines(spec, window, warnings)
    priced = [line.hourly for line in lines if line.hourly is not None]
    return CostEstimate(
        lines=lines,
        total_per_hour=sum(priced) + sum(c.hourly for c in charges),
        as_of=table["as_of"],
        eco_life_hours=window,
        total_for_eco_life=None
        if window is None
        else sum(line.total_for_eco_life or 0.0 for line in lines)
        + sum(c.total_for_eco_life or 0.0 for c in charges),
        warnings=warnings,
        charges=charges,
    )


def charge_lines(spec: StackSpec, window: float | None, warnings: list[str]) -> list[ChargeLine]:
    """The public IPv4 and root-volume charges of `spec`'s instances, one line per (charge,
    region) in order of appearance; over the eco_life `window` each instance's share counts
    for the hours it runs (its own eco_life when it is a spot one with one)."""
    sums: dict[tuple[str, str], list[float]] = {}  # (name, region) → [amount, hourly, total]
    machines: list[InstanceSpec | MaestroSpec] = [*spec.instances]
    if spec.maestro is not None:
        machines.append(spec.maestro)
    for inst in machines:
        eco = isinstance(inst, InstanceSpec) and inst.eco
        life = inst.eco_life_hours if isinstance(inst, InstanceSpec) and eco else None
        hours = life or window or 0.0
        items = [("public IPv4", 1.0, PUBLIC_IPV4_HOURLY)]
        rate = EBS_GB_MONTH.get(inst.disk_type)
        if rate is None:
            warnings.append(f"{inst.name}: no EBS rate for {inst.disk_type}: its disk not counted")
        else:
            gb = float(inst.disk_size)
            items.append((f"EBS {inst.disk_type}", gb, gb * rate / HOURS_PER_MONTH))
        for name, amount, hourly in items:
            acc = sums.setdefault((name, inst.region), [0.0, 0.0, 0.0])
            acc[0] += amount
            acc[1] += hourly
            acc[2] += hourly * hours
    out: list[ChargeLine] = []
    for (name, region), (amount, hourly, total) in sums.items():
        ebs = name.startswith("EBS")
        out.append(
            ChargeLine(
                name=name,
                detail=f"{amount:g} GB" if ebs else f"{amount:g} address(es)",
                region=region,
                hourly=hourly,
                source=f"{EBS_REGION} rate" if ebs and region != EBS_REGION else "rate",
                total_for_eco_life=None if window is None else total,
            )
        )
    return out


def _lookup(
    table: Mapping[str, Any],
    live: LivePrices | None,
    region: str,
    itype: str,
    kind: str,
) -> tuple[float | None, str]:
    if live is not None:
        value = (live.get((region, itype)) or {}).get(kind)
        if value is not None:
            return float(value), "live"
    value = table["regions"].get(region, {}).get(itype, {}).get(kind)
    if value is not None:
        return float(value), "table"
    return None, "unknown"
