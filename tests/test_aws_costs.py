"""Cost estimates from the bundled price table and from live prices."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

import pytest

from cloudsend.config import load_config
from cloudsend.providers.aws.costs import estimate, price_table
from cloudsend.providers.aws.spec import StackSpec, stack_spec

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests test"


def make_spec(instances: list[dict[str, Any]], region: str = "us-east-1") -> StackSpec:
    config = load_config(
        {"project": "demo", "provider": "aws", "region": region, "instances": instances}
    )
    return stack_spec(
        config,
        public_key=KEY,
        ssh_cidrs=["198.51.100.23/32"],
        now=datetime(2025, 3, 1, tzinfo=timezone.utc),
    )


def charged(result: Any) -> float:
    """The public IPv4 and EBS charges in a total (tests/test_hardening_money.py checks them)."""
    return float(sum(c.hourly for c in result.charges))


def table_price(region: str, itype: str, kind: str) -> float:
    value: float = price_table()["regions"][region][itype][kind]
    return value


def test_bundled_table_is_dated_and_broad() -> None:
    table = price_table()
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", table["as_of"])
    assert "approximate" in table["source"]
    assert set(table["regions"]) >= {"us-east-1", "us-west-2", "eu-west-1", "eu-central-1"}
    for region, types in table["regions"].items():
        assert len(types) >= 40, region
        for itype, prices in types.items():
            assert 0 < prices["spot"] < prices["on_demand"], (region, itype)
    assert table["regions"]["us-east-1"]["t3.micro"] == {"on_demand": 0.0104, "spot": 0.0031}


def test_on_demand_from_the_table() -> None:
    result = estimate(make_spec([{"type": "m5.large", "number": 3}]))
    assert [line.source for line in result.lines] == ["table"] * 3
    assert [line.market for line in result.lines] == ["on-demand"] * 3
    assert result.total_per_hour == pytest.approx(
        3 * table_price("us-east-1", "m5.large", "on_demand") + charged(result)
    )
    assert result.complete and not result.warnings
    assert result.eco_life_hours is None and result.total_for_eco_life is None
    assert result.as_of == price_table()["as_of"]


def test_spot_vs_on_demand() -> None:
    result = estimate(make_spec([{"type": "c5.large"}, {"type": "c5.large", "eco": True}]))
    on_demand, spot = result.lines
    assert (on_demand.market, spot.market) == ("on-demand", "spot")
    assert on_demand.hourly == table_price("us-east-1", "c5.large", "on_demand")
    assert spot.hourly == table_price("us-east-1", "c5.large", "spot")
    assert spot.hourly is not None and on_demand.hourly is not None
    assert spot.hourly < on_demand.hourly


def test_live_prices_override_the_table() -> None:
    spec = make_spec(
        [{"type": "t3.micro"}, {"type": "t3.micro", "eco": True}, {"type": "c5.large"}]
    )
    live = {("us-east-1", "t3.micro"): {"on_demand": 0.02, "spot": 0.004}}
    result = estimate(spec, live)
    assert [(line.hourly, line.source) for line in result.lines] == [
        (0.02, "live"),
        (0.004, "live"),
        (table_price("us-east-1", "c5.large", "on_demand"), "table"),
    ]
    # A live entry lacking one kind falls back to the table for that kind only.
    partial = estimate(spec, {("us-east-1", "t3.micro"): {"spot": 0.005}})
    assert [line.source for line in partial.lines] == ["table", "live", "table"]


def test_eco_life_total() -> None:
    spec = make_spec(
        [
            {"type": "m5.large", "eco": True, "eco_life": "6h", "number": 2},
            {"type": "m5.large", "eco": True, "eco_life": "90m"},
            {"type": "m5.large", "eco": True},  # no eco_life: unbounded
            {"type": "m5.large", "eco_life": "3h"},  # not spot: eco_life does not apply
        ]
    )
    result = estimate(spec)
    spot = table_price("us-east-1", "m5.large", "spot")
    on_demand = table_price("us-east-1", "m5.large", "on_demand")
    assert [line.eco_life_hours for line in result.lines] == [6, 6, 1.5, None, None]
    assert result.eco_life_hours == 6
    # the whole plan over the 6 h window: spot ones until their own eco_life, the unbounded
    # spot one and the on-demand one for all 6 h (they are not only the spot instances)
    extra = sum(c.total_for_eco_life or 0.0 for c in result.charges)
    assert result.total_for_eco_life == pytest.approx(
        spot * (6 + 6 + 1.5 + 6) + on_demand * 6 + extra
    )
    assert [line.total_for_eco_life for line in result.lines] == pytest.approx(
        [spot * 6, spot * 6, spot * 1.5, spot * 6, on_demand * 6]
    )
    assert result.eco_life_note is not None and "every instance for 6 h" in result.eco_life_note
    assert result.to_dict()["total_for_eco_life_covers"] == result.eco_life_note


def test_eco_life_total_in_the_cost_table() -> None:
    from rich.console import Console

    from cloudsend.ui import cost_table

    spec = make_spec([{"type": "m5.large", "eco": True, "eco_life": "2h"}, {"type": "m5.large"}])
    console = Console(width=200, record=True)
    console.print(cost_table(estimate(spec)))
    text = " ".join(console.export_text().split())  # the caption wraps at the table width
    assert "over eco_life (every instance for 2 h; spot instances until their own eco_life)" in text


def test_no_eco_life_no_window() -> None:
    result = estimate(make_spec([{"type": "m5.large", "eco": True}, {"type": "m5.large"}]))
    assert result.eco_life_hours is None and result.total_for_eco_life is None
    assert result.eco_life_note is None


def test_unknown_type_and_region_warn() -> None:
    result = estimate(make_spec([{"type": "x9z.huge", "number": 2}, {"type": "t3.micro"}]))
    assert [line.source for line in result.lines] == ["unknown", "unknown", "table"]
    assert result.lines[0].hourly is None
    assert result.total_per_hour == pytest.approx(
        table_price("us-east-1", "t3.micro", "on_demand") + charged(result)
    )
    assert not result.complete
    assert len(result.warnings) == 1  # one warning per (region, type), not per instance
    assert "x9z.huge" in result.warnings[0] and "not counted" in result.warnings[0]
    elsewhere = estimate(make_spec([{"type": "t3.micro"}], region="ap-south-1"))
    assert elsewhere.lines[0].source == "unknown" and "ap-south-1" in elsewhere.warnings[0]


def test_max_bid_caps_and_warns() -> None:
    spot = table_price("us-east-1", "g4dn.xlarge", "spot")
    low, high = round(spot / 2, 4), round(spot * 2, 4)
    spec = make_spec(
        [
            {"type": "g4dn.xlarge", "eco": True, "max_bid": low},
            {"type": "g4dn.xlarge", "eco": True, "max_bid": high},
        ]
    )
    result = estimate(spec)
    assert result.lines[0].hourly == low  # never pays more than the bid
    assert result.lines[1].hourly == spot
    (warning,) = result.warnings
    assert "demo-0-0" in warning
    assert "max_bid below the current spot price" in warning.replace(f" {low}", "")
    assert "may never start" in warning
    # Unknown spot price: the bid is the upper bound that gets counted.
    unknown = estimate(make_spec([{"type": "x9z.huge", "eco": True, "max_bid": 0.5}]))
    assert (unknown.lines[0].hourly, unknown.lines[0].source) == (0.5, "max_bid")
    assert unknown.total_per_hour == pytest.approx(0.5 + charged(unknown))
    assert "max_bid" in unknown.warnings[0]


def test_most_expensive_order_and_budget_message() -> None:
    spec = make_spec(
        [
            {"type": "t3.micro"},
            {"type": "p3.2xlarge"},
            {"type": "x9z.huge"},
            {"type": "m5.large"},
            {"type": "g5.xlarge", "eco": True},
        ]
    )
    result = estimate(spec)
    top = result.most_expensive(3)
    assert [line.type for line in top] == ["p3.2xlarge", "g5.xlarge", "m5.large"]
    assert [line.type for line in result.most_expensive(10)][-1] == "t3.micro"
    assert result.most_expensive(0) == []
    assert result.over_budget(None) is None
    assert "no price is known" in (result.over_budget(1000.0) or "")  # x9z.huge unpriced
    message = result.over_budget(1.0)  # the known part alone is over: that is what is said
    assert message is not None
    assert "exceeds max_cost_per_hour" in message and "p3.2xlarge" in message


def test_to_dict_is_json_ready() -> None:
    import json

    result = estimate(make_spec([{"type": "m5.large", "eco": True, "eco_life": 2}]))
    doc = json.loads(json.dumps(result.to_dict()))
    assert set(doc) == {
        "instances",
        "charges",
        "total_per_hour",
        "complete",
        "eco_life_hours",
        "total_for_eco_life",
        "total_for_eco_life_covers",
        "as_of",
        "warnings",
    }
    line = doc["instances"][0]
    assert {line[k] for k in ("name", "type", "region", "market", "source")} == {
        "demo-0-0",
        "m5.large",
        "us-east-1",
        "spot",
        "table",
    }
    assert doc["eco_life_hours"] == 2


def test_budget_guard_refuses_an_estimate_with_unknown_prices() -> None:
    result = estimate(make_spec([{"type": "x9z.huge"}, {"type": "t3.micro"}]))
    assert not result.complete
    assert result.over_budget(None) is None
    message = result.over_budget(1000.0)  # the known part is far below, but is not the total
    assert message is not None
    assert "no price is known for demo-0-0 (x9z.huge, us-east-1)" in message
    assert "remove max_cost_per_hour" in message
