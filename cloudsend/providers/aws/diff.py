"""What a preview or an update changes: the ResourceChange model, built from Pulumi engine
events, and its renderings (a rich table, op counts, JSON).

Nothing here imports pulumi: events are read through their attributes only, so the parsing is
a pure function tested with the SDK's own event classes. rich is imported inside the one
function that draws, because `cloudsend --help` must not pay for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "OP_ORDER",
    "ResourceChange",
    "change_from_event",
    "changes_from_events",
    "changes_table",
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
# Display order, most consequential first; also decides which op a URN keeps when several
# steps touch it (the earlier in this tuple wins).
OP_ORDER = ("replace", "delete", "create", "update", "import", "read", "refresh", "same")
_STYLE = {"create": "green", "update": "yellow", "replace": "magenta", "delete": "red"}
_SYMBOL = {"create": "+", "update": "~", "replace": "+-", "delete": "-", "same": " "}


@dataclass
class ResourceChange:
    """One resource in a preview or an update: what happens to it and which properties differ.

    status: "planned" (preview), or "started" / "done" / "failed" while an up/destroy runs.
    """

    op: str
    type: str
    name: str
    urn: str
    changed_properties: list[str] = field(default_factory=list)
    detailed_diff: dict[str, str] = field(default_factory=dict)  # property path -> diff kind
    replace_keys: list[str] = field(default_factory=list)  # properties forcing a replacement
    status: str = "planned"


def _text(value: object) -> str:
    """Enum members (OpType, DiffKind) and plain strings alike -> their string value."""
    value = getattr(value, "value", value)
    return "" if value is None else str(value)


def _rank(op: str) -> int:
    return OP_ORDER.index(op) if op in OP_ORDER else len(OP_ORDER)


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
        if _rank(change.op) < _rank(seen.op):
            seen.op = change.op
        seen.changed_properties += [
            p for p in change.changed_properties if p not in seen.changed_properties
        ]
        seen.replace_keys += [k for k in change.replace_keys if k not in seen.replace_keys]
        seen.detailed_diff.update(change.detailed_diff)
    return list(by_urn.values())


# -- renderings --------------------------------------------------------------------------------


def summary_counts(changes: Iterable[ResourceChange]) -> dict[str, int]:
    """{op: number of resources}, most consequential op first; "same" included."""
    counts: dict[str, int] = {}
    for change in changes:
        counts[change.op] = counts.get(change.op, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (_rank(item[0]), item[0])))


def changes_to_json(changes: Iterable[ResourceChange]) -> list[dict[str, Any]]:
    """Plain dicts (json.dumps-able) in display order, for `cloudsend preview --json`."""
    return [asdict(change) for change in _ordered(changes)]


def _ordered(changes: Iterable[ResourceChange]) -> list[ResourceChange]:
    # Stable sort: within one op, resources keep the engine's (dependency) order.
    return sorted(changes, key=lambda change: _rank(change.op))


def _describe_properties(change: ResourceChange) -> str:
    parts = []
    for prop in change.changed_properties:
        kind = change.detailed_diff.get(prop, "")
        forces = prop in change.replace_keys or kind.endswith("-replace")
        parts.append(f"{prop} (forces replacement)" if forces else prop)
    # Replacement keys the engine named but that are not among the diffs still matter.
    parts += [
        f"{key} (forces replacement)"
        for key in change.replace_keys
        if key not in change.changed_properties
    ]
    return ", ".join(parts)


def changes_table(
    changes: Iterable[ResourceChange], *, show_same: bool = False, title: str | None = None
) -> Table:
    """A rich Table: one row per resource, grouped by op, with the properties that change.

    Unchanged resources are hidden unless show_same; the caption always counts them, so a
    no-op preview still says what it looked at.
    """
    from rich.table import Table

    changes = list(changes)
    table = Table(title=title, show_lines=False, header_style="bold")
    table.add_column("op")
    table.add_column("type")
    table.add_column("name")
    table.add_column("changed properties", overflow="fold")
    previous_op: str | None = None
    for change in _ordered(changes):
        if change.op == "same" and not show_same:
            continue
        if previous_op is not None and change.op != previous_op:
            table.add_section()
        previous_op = change.op
        style = _STYLE.get(change.op, "")
        symbol = _SYMBOL.get(change.op, "?")
        table.add_row(
            f"{symbol} {change.op}",
            change.type,
            change.name,
            _describe_properties(change),
            style=style or None,
        )
    counts = summary_counts(changes)
    if counts:
        table.caption = ", ".join(f"{n} {op}" for op, n in counts.items())
    else:
        table.caption = "no resources"
    return table
