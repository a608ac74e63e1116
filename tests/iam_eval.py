"""A small IAM evaluator for the policy documents cloudsend writes (Allow statements only):
is `action` on `resource`, with these request/resource `context` keys, allowed?

It covers what the documents use: Action lists, Resource strings or lists with `*` wildcards
(IAM's `*` matches any run of characters, `/` and `:` included), and the condition operators
StringEquals, StringLike, ArnEquals, ArnLike, Bool, NumericLessThanEquals, and the
ForAllValues:/ForAnyValue: set forms. As in IAM: a single-valued operator on a key the request
lacks is false; ForAllValues on a missing key is true; ForAnyValue on a missing key is false;
several values for one key are ORed; several keys and operators are ANDed. Keys are compared
without regard to case, values with (StringEquals is case-sensitive).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any

Context = Mapping[str, str | list[str]]


def _values(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _match_one(op: str, wanted: list[str], actual: str) -> bool:
    if op in ("StringEquals", "ArnEquals"):
        return actual in wanted
    if op in ("StringLike", "ArnLike"):
        return any(fnmatch.fnmatchcase(actual, w) for w in wanted)
    if op == "Bool":
        return actual.lower() in [w.lower() for w in wanted]
    if op == "NumericLessThanEquals":
        return any(float(actual) <= float(w) for w in wanted)
    raise AssertionError(f"iam_eval: operator {op} is not supported")


def _condition_holds(condition: Mapping[str, Mapping[str, Any]], context: Context) -> bool:
    lowered = {k.lower(): v for k, v in context.items()}
    for op, keys in condition.items():
        set_op, _, base = op.rpartition(":")
        for key, wanted in keys.items():
            present = key.lower() in lowered
            actual = _values(lowered[key.lower()]) if present else []
            wanted_values = _values(wanted)
            if set_op == "ForAllValues":
                ok = all(_match_one(base, wanted_values, a) for a in actual)
            elif set_op == "ForAnyValue":
                ok = any(_match_one(base, wanted_values, a) for a in actual)
            else:
                ok = present and len(actual) == 1 and _match_one(base, wanted_values, actual[0])
            if not ok:
                return False
    return True


def allows(
    documents: Iterable[Mapping[str, Any]],
    action: str,
    resource: str,
    context: Context | None = None,
) -> bool:
    """True when some Allow statement of `documents` grants `action` on `resource`."""
    context = context or {}
    for document in documents:
        for statement in document["Statement"]:
            assert statement["Effect"] == "Allow"  # cloudsend writes no Deny
            if action not in _values(statement["Action"]):
                continue
            if not any(fnmatch.fnmatchcase(resource, r) for r in _values(statement["Resource"])):
                continue
            if _condition_holds(statement.get("Condition", {}), context):
                return True
    return False


def run_instances_allowed(
    documents: Iterable[Mapping[str, Any]], resources: Mapping[str, Context]
) -> list[str]:
    """A RunInstances request is allowed only when every resource it uses or creates is:
    returns the resource ARNs that are not (empty: allowed)."""
    docs = list(documents)
    return [arn for arn, ctx in resources.items() if not allows(docs, "ec2:RunInstances", arn, ctx)]
