"""Live EC2 prices: spot from describe_spot_price_history, on-demand from the Pricing API.

Both are optional refinements of the bundled, dated `prices.json` that `costs.py` uses: a preview
must work offline and without credentials, so `live_prices()` never raises and hands back
warnings instead; the caller falls back to the bundled table for whatever is missing.

Prices are USD per instance-hour for Linux, shared tenancy, no pre-installed software.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from cloudsend.errors import ProvisionError
from cloudsend.providers.aws.session import aws_session, client

if TYPE_CHECKING:
    from boto3.session import Session

# The Pricing API is only served from a few regions; us-east-1 answers for every region's prices.
PRICING_REGION = "us-east-1"

# AWS still files some spot prices under the EC2-Classic era "(Amazon VPC)" description; both
# mean a Linux instance in a VPC today.
SPOT_PRODUCTS = ("Linux/UNIX", "Linux/UNIX (Amazon VPC)")

PriceTable = dict[tuple[str, str], dict[str, float]]


def _error_text(exc: BaseException) -> str:
    """A one-line reason for a warning. botocore messages name the operation and the error
    code, never the credentials."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _hopeless(exc: BaseException) -> bool:
    """True when the failure is about credentials or connectivity, not this one call."""
    from botocore.exceptions import (
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
    )

    fatal = (ConnectTimeoutError, EndpointConnectionError, NoCredentialsError, NoRegionError)
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, fatal):
            return True
        seen = seen.__cause__
    return False


def spot_prices(
    session: Session, region: str, types: Iterable[str], *, max_attempts: int = 3
) -> dict[str, float]:
    """The current spot price of each instance type in `region`.

    The latest price per availability zone, then the highest across zones: these feed the
    `max_cost_per_hour` guard, which must not under-estimate, and the stack may pin a zone that
    is not the cheapest. Types without spot offers in the region are absent from the result.
    """
    wanted = sorted(set(types))
    if not wanted:
        return {}
    ec2 = client(session, "ec2", region, max_attempts=max_attempts)
    # StartTime=now makes AWS return just the price in effect now for each zone, instead of
    # 90 days of history.
    now = datetime.now(timezone.utc)
    latest: dict[tuple[str, str], tuple[datetime, float]] = {}
    try:
        pages = ec2.get_paginator("describe_spot_price_history").paginate(
            InstanceTypes=wanted, ProductDescriptions=list(SPOT_PRODUCTS), StartTime=now
        )
        for page in pages:
            for item in page.get("SpotPriceHistory", []):
                itype = item.get("InstanceType")
                if itype not in wanted or item.get("ProductDescription") not in SPOT_PRODUCTS:
                    continue  # moto ignores both filters; real AWS honours them
                key = (itype, item.get("AvailabilityZone", ""))
                stamp = item.get("Timestamp") or now
                price = float(item["SpotPrice"])
                if key not in latest or stamp >= latest[key][0]:
                    latest[key] = (stamp, price)
    except Exception as exc:  # botocore's errors share no useful base beyond Exception
        raise ProvisionError(
            f"could not read spot prices in {region}: {_error_text(exc)}",
            hint="check AWS credentials and that ec2:DescribeSpotPriceHistory is allowed",
        ) from exc
    result: dict[str, float] = {}
    for (itype, _zone), (_stamp, price) in latest.items():
        result[itype] = max(price, result.get(itype, 0.0))
    return result


def _on_demand_filters(region: str, itype: str) -> list[dict[str, str]]:
    fields = {
        "instanceType": itype,
        "regionCode": region,
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        # "Used" is the normal on-demand rate; the other statuses are capacity reservations.
        "capacitystatus": "Used",
    }
    return [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in fields.items()]


def parse_price_list(items: Iterable[str | Mapping[str, Any]]) -> dict[str, float]:
    """Hourly on-demand USD per instance type from Pricing API `PriceList` entries (JSON strings).

    When several products match one type (e.g. a licensed variant slipped through the
    filters), the plain `RunInstances` operation wins, then the lowest non-zero price.
    """
    candidates: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for raw in items:
        doc = json.loads(raw) if isinstance(raw, str) else raw
        attrs = doc.get("product", {}).get("attributes", {})
        itype = attrs.get("instanceType")
        if not itype:
            continue
        rank = 0 if attrs.get("operation", "RunInstances") == "RunInstances" else 1
        for offer in doc.get("terms", {}).get("OnDemand", {}).values():
            for dim in offer.get("priceDimensions", {}).values():
                if dim.get("unit", "Hrs") not in ("Hrs", "Hours"):
                    continue
                usd = float(dim.get("pricePerUnit", {}).get("USD", "0") or 0)
                if usd > 0:
                    candidates[itype].append((rank, usd))
    return {itype: min(found)[1] for itype, found in candidates.items() if found}


def on_demand_prices(
    session: Session, region: str, types: Iterable[str], *, max_attempts: int = 3
) -> dict[str, float]:
    """The on-demand price of each instance type in `region`, from the Pricing API.

    One get_products query per type (the filters keep each answer to one or two products).
    Types the API does not know are absent from the result.
    """
    pricing = client(session, "pricing", PRICING_REGION, max_attempts=max_attempts)
    result: dict[str, float] = {}
    for itype in sorted(set(types)):
        try:
            pages = pricing.get_paginator("get_products").paginate(
                ServiceCode="AmazonEC2", Filters=_on_demand_filters(region, itype)
            )
            entries = [entry for page in pages for entry in page.get("PriceList", [])]
        except Exception as exc:  # botocore's errors share no useful base beyond Exception
            raise ProvisionError(
                f"could not read on-demand prices for {itype} in {region}: {_error_text(exc)}",
                hint="check AWS credentials and that pricing:GetProducts is allowed",
            ) from exc
        price = parse_price_list(entries).get(itype)
        if price is not None:
            result[itype] = price
    return result


def live_prices(
    session: Session | None, wanted: Iterable[tuple[str, str]]
) -> tuple[PriceTable, list[str]]:
    """{(region, type): {"on_demand": x, "spot": y}} for the wanted (region, type) pairs, plus
    warnings for what could not be read.

    Never raises: no credentials, no network, a denied call or an unparseable answer become a
    warning, and the pair lacks that key (or is absent). The caller fills the gaps from the
    bundled price table and shows the warnings.
    """
    by_region: dict[str, set[str]] = defaultdict(set)
    for region, itype in wanted:
        by_region[region].add(itype)
    table: PriceTable = {}
    warnings: list[str] = []
    if session is None:
        try:
            session = aws_session(None, None)
        except Exception as exc:  # no boto3, broken config file...
            return {}, [f"live prices unavailable: {_error_text(exc)}"]
    for region in sorted(by_region):
        types = sorted(by_region[region])
        for kind, fetch in (("on_demand", on_demand_prices), ("spot", spot_prices)):
            try:
                # One attempt: this is a best-effort refinement of a preview, and the bundled
                # table is right there; botocore's retries would add seconds of backoff.
                prices = fetch(session, region, types, max_attempts=1)
            except Exception as exc:  # the contract: never raise, warn instead
                reason = exc.message if isinstance(exc, ProvisionError) else _error_text(exc)
                warnings.append(f"live {kind.replace('_', '-')} prices unavailable: {reason}")
                if _hopeless(exc):
                    # No credentials or no network: every further call would fail the same
                    # way after its timeouts, so stop here rather than make the user wait.
                    return table, warnings
                continue
            for itype in types:
                if itype in prices:
                    table.setdefault((region, itype), {})[kind] = prices[itype]
                else:
                    warnings.append(
                        f"no live {kind.replace('_', '-')} price for {itype} in {region}"
                    )
    return table, warnings
