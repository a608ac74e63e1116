"""What a preview or an update changes: providers.base.ResourceChange built from Pulumi
engine events. The model, its op counts and JSON are provider-neutral (providers/base.py); the
table is drawn by cloudsend.ui.changes_table.

Nothing here imports pulumi: events are read through their attributes only, so the parsing is
a pure function tested with the SDK's own event classes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cloudsend.providers.base import (
    OP_ORDER,
    ResourceChange,
    changes_to_json,
    op_rank,
    summary_counts,
)

__all__ = [
    "OP_ORDER",
    "ResourceChange",
    "change_from_event",
    "changes_from_events",
    "changes_to_json",
    "name_from_urn",
    "summary_counts",
]

# The engine reports one replacement as up to three steps on one URN (create-replacement,
# replace, delete-replaced); users think of a single "replace".
_REPLACE_STEPS = frozenset(
    {
        "replace",
        "create-replacement",
        "delete-replaced",
        "discard-replaced",
        "read-replacement",
        "import-replacement",
        "remove-pending-replace",
    }
)


def _text(value: object) -> str:
    """Enum members (OpType, DiffKind) and plain strings alike -> their string value."""
    value = getattr(value, "value", value)
    return "" if value is None else str(value)


def name_from_urn(urn: str) -> str:
    """urn:pulumi:<stack>::<project>::<type>::<name> -> name (a name may itself hold '::')."""
    parts = urn.split("::", 3)
    return parts[3] if len(parts) == 4 else urn


def _change_from_metadata(meta: Any, status: str) -> ResourceChange | None:
    op, urn, rtype = _text(meta.op), _text(meta.urn), _text(meta.type)
    name = name_from_urn(urn)
    # Default providers are engine plumbing; `pulumi preview` does not show them either.
    if rtype.startswith("pulumi:providers:") and name.startswith("default"):
        return None
    raw_detailed = getattr(meta, "detailed_diff", None) or {}
    detailed = {str(k): _text(getattr(v, "diff_kind", v)) for k, v in raw_detailed.items()}
    # `diffs` holds the top-level keys; detailed_diff paths are the fallback (some providers
    # only fill one of the two).
    props = [str(p) for p in (getattr(meta, "diffs", None) or [])] or sorted(detailed)
    replacing = op in _REPLACE_STEPS
    return ResourceChange(
        op="replace" if replacing else op,
        type=rtype,
        name=name,
        urn=urn,
        changed_properties=props,
        detailed_diff=detailed,
        replace_keys=[str(k) for k in (getattr(meta, "keys", None) or [])] if replacing else [],
        status=status,
    )


def change_from_event(event: Any) -> ResourceChange | None:
    """The ResourceChange one engine event describes (with its status), or None."""
    for attr, status in (
        ("resource_pre_event", "started"),
        ("res_outputs_event", "done"),
        ("res_op_failed_event", "failed"),
    ):
        sub = getattr(event, attr, None)
        if sub is not None and getattr(sub, "metadata", None) is not None:
            return _change_from_metadata(sub.metadata, status)
    return None


def changes_from_events(events: Iterable[Any]) -> list[ResourceChange]:
    """One planned ResourceChange per URN, in first-seen order, from the resource pre-events.

    Only reads attributes, so it takes pulumi.automation.events.EngineEvent objects or
    anything shaped like them. Unchanged resources are kept with op "same" so a summary can
    count them; renderers decide whether to show them.
    """
    by_urn: dict[str, ResourceChange] = {}
    for event in events:
        pre = getattr(event, "resource_pre_event", None)
        if pre is None or getattr(pre, "metadata", None) is None:
            continue
        change = _change_from_metadata(pre.metadata, "planned")
        if change is None:
            continue
        seen = by_urn.get(change.urn)
        if seen is None:
            by_urn[change.urn] = change
            continue
        if op_rank(change.op) < op_rank(seen.op):
            seen.op = change.op
        seen.changed_properties += [
            p for p in change.changed_properties if p not in seen.changed_properties
        ]
        seen.replace_keys += [k for k in change.replace_keys if k not in seen.replace_keys]
        seen.detailed_diff.update(change.detailed_diff)
    return list(by_urn.values())
