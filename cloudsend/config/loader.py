"""`load_config`: any source in, a validated Config with absolute paths out, or one ConfigError.

The steps, each a plain function: read the source (sources.py) → copy it into plain data,
rejecting what no config can hold (this bounds size and depth, so nothing later can
recurse or loop on a hostile file) → pydantic → cross-section and file checks (checks.py).
Whatever the input, the only exception that leaves is ConfigError.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from pathlib import Path, PurePath
from typing import Any

from pydantic import ValidationError

from cloudsend.config.checks import check_and_resolve
from cloudsend.config.messages import (
    GROUP_FIELDS,
    INTERNAL_KEYS,
    Issue,
    KeyPath,
    Locator,
    config_error,
    describe,
    issues_from_validation,
    show,
    unknown_key,
)
from cloudsend.config.models import Config
from cloudsend.config.sources import MAX_DEPTH, MAX_NODES, read_source

# Exact types: a subclass (a Python config's own class) could run code when pydantic or the
# checks use it, so str/int/float subclasses are copied into the base type and others refused.
_SCALARS = frozenset({str, int, float, bool, date, datetime, time, timedelta, type(None)})


def load_config(source: str | Path | dict[Any, Any], *, base_dir: Path | None = None) -> Config:
    """Load and validate a config.

    `source` is a path to a YAML (.yaml/.yml) or Python (.py, defining `config = {...}`)
    file, or a dict. Relative paths in the config are resolved against `base_dir`, which
    defaults to the config file's folder (for a dict: the current directory). The returned
    Config has `source` (the file, absolute; None for a dict) and `base_dir` set.
    """
    raw = read_source(source, base_dir)
    data, present, issues = plain_data(raw.data)
    locator = Locator(raw.name, raw.lines, present)
    issues = raw.issues + issues
    if data is None and issues:  # too big or too deep: nothing more worth saying
        raise config_error(issues, locator)
    if not isinstance(data, dict):
        kind = _kind(raw.data)
        issues.append(
            Issue(
                (),
                f"the top level must be a mapping of keys, got {kind}",
                hint="a config is a mapping of keys: project:, instances:, environments:, jobs:",
            )
        )
        raise config_error(issues, locator)
    for key in (INTERNAL_KEYS | GROUP_FIELDS) & data.keys():
        issues.append(unknown_key((key,), key, Config))
        del data[key]
    if issues:
        raise config_error(issues, locator)
    try:
        config = Config.model_validate({**data, "base_dir": raw.base_dir})
    except ValidationError as exc:
        raise config_error(issues_from_validation(exc), locator) from None
    config.source = raw.path
    issues = check_and_resolve(config)
    if issues:
        raise config_error(issues, locator)
    return config


def plain_data(value: Any) -> tuple[Any, set[KeyPath], list[Issue]]:
    """A copy of `value` made of dicts with string keys, lists and scalars of exact built-in
    types (tuples become lists, paths strings), the set of key paths it holds, and the
    problems found.

    Iterative and bounded (MAX_DEPTH, MAX_NODES, counted before a container's items are
    taken), so self-referencing YAML anchors or Python objects, or a list of ten million
    references to one dict, end in an Issue instead of a hang or a RecursionError.
    """
    present: set[KeyPath] = set()
    issues: list[Issue] = []
    root: list[Any] = [None]
    # (value, key path, container to write into, slot in it)
    stack: list[tuple[Any, KeyPath, Any, Any]] = [(value, (), root, 0)]
    nodes = 1  # values taken onto the stack so far
    while stack:
        item, path, parent, slot = stack.pop()
        if len(path) > MAX_DEPTH:
            text = f"nests deeper than {MAX_DEPTH} levels (a YAML anchor inside itself?)"
            return None, present, [Issue(path[:4], text)]
        if path:
            present.add(path)
        try:
            children = _children(item, MAX_NODES - nodes)
            if children is None:
                parent[slot] = _scalar(item)
                continue
        except _TooLarge:
            text = f"is too large (more than {MAX_NODES} values; YAML aliases?)"
            return None, present, [Issue((), text)]
        except _Unsupported as exc:
            issues.append(Issue(path, str(exc)))
            continue
        except Exception as exc:  # a Python config's own object, whose methods raise
            issues.append(Issue(path, f"cannot be read: {describe(exc)}"))
            continue
        nodes += len(children)
        if isinstance(item, dict):
            copy: dict[str, Any] = {}
            for key, child in children:
                if type(key) is not str:
                    if not isinstance(key, str):
                        text = f"keys must be strings, got {show(key)} (put it in quotes)"
                        issues.append(Issue(path, text))
                        continue
                    key = str.__str__(key)
                copy[key] = None
                stack.append((child, (*path, key), copy, key))
            parent[slot] = copy
        else:
            items: list[Any] = [None] * len(children)
            for index, child in enumerate(children):
                stack.append((child, (*path, index), items, index))
            parent[slot] = items
    return root[0], present, issues


def _children(item: Any, room: int) -> list[Any] | None:
    """A container's items ((key, value) pairs for a dict), taken through the built-in
    methods, which a subclass cannot change; None for anything else. _TooLarge when there
    are more than `room`, before any is copied."""
    items: Any
    if isinstance(item, dict):
        size, items = dict.__len__(item), dict.items(item)
    elif isinstance(item, list):
        size, items = list.__len__(item), list.__iter__(item)
    elif isinstance(item, tuple):
        size, items = tuple.__len__(item), tuple.__iter__(item)
    else:
        return None
    if size > room:
        raise _TooLarge
    return list(items)


class _TooLarge(Exception):
    pass


class _Unsupported(Exception):
    pass


def _scalar(item: Any) -> Any:
    if type(item) in _SCALARS:
        return item
    # The base types' own methods copy a subclass's value without running its code.
    if isinstance(item, str):
        return str.__str__(item)
    if isinstance(item, int):
        return int.__int__(item)
    if isinstance(item, float):
        return float.__float__(item)
    if isinstance(item, PurePath):
        return str.__str__(str(item))
    raise _Unsupported(
        f"unsupported value of type {type(item).__name__} "
        "(use strings, numbers, true/false, lists and mappings)"
    )


def _kind(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, str):
        return f"a string ({show(value, 40)})"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if value is None:
        return "nothing"
    return f"a {type(value).__name__}"
