"""Turning config problems into one clear ConfigError: key path, file:line, what to do.

Every check (reading, pydantic, cross-section checks) produces `Issue`s; `config_error`
sorts them by line and reports them all at once, so a user fixes everything in one pass.
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from pydantic import BaseModel, ValidationError

from cloudsend.config.models import (
    GROUPS,
    Config,
    EnvironmentConfig,
    InstanceConfig,
    JobConfig,
    MaestroHostConfig,
    SshHostConfig,
)
from cloudsend.errors import ConfigError

KeyPath = tuple[str | int, ...]

# Set by the loader, never read from a file.
INTERNAL_KEYS = frozenset({"source", "base_dir"})
# Config's per-provider groups: never written in a file (their keys are written flat).
GROUP_FIELDS = frozenset(GROUPS)
# Keys a model accepts beyond its fields (folded in by a validator).
_ALIASES: dict[type[BaseModel], tuple[str, ...]] = {JobConfig: ("input_file", "output_file")}
_SECTIONS: dict[type[BaseModel], str] = {
    Config: "the top level",
    InstanceConfig: "instances[] entries",
    SshHostConfig: "hosts[] entries",
    MaestroHostConfig: "maestro_host",
    EnvironmentConfig: "environments[] entries",
    JobConfig: "jobs[] entries",
}


@dataclass(frozen=True)
class Issue:
    path: KeyPath
    message: str
    hint: str | None = None
    line: int | None = None  # when known without a key path (e.g. a YAML syntax error)


@dataclass
class Locator:
    """Where keys are: `lines` maps key paths to 1-based lines (YAML nodes, or the `ast` of a
    Python file); `present` holds every key path of the data (to name the key as written)."""

    name: str | None = None
    lines: dict[KeyPath, int] = field(default_factory=dict)
    present: set[KeyPath] = field(default_factory=set)

    def line_of(self, issue: Issue) -> int | None:
        return issue.line if issue.line is not None else self.line(issue.path)

    def line(self, path: KeyPath) -> int | None:
        # The key itself, else its nearest ancestor (e.g. a scalar normalised into a list).
        for end in range(len(path), -1, -1):
            found = self.lines.get(self.as_written(path[:end]))
            if found is not None:
                return found
        return None

    def as_written(self, path: KeyPath) -> KeyPath:
        """input_files[0] is reported as input_file when that is what the file says."""
        out: list[str | int] = []
        for part in path:
            here = (*out, part)
            if part in ("input_files", "output_files") and here not in self.present:
                singular = (*out, str(part)[:-1])
                if singular in self.present:
                    out.append(singular[-1])
                    continue
            out.append(part)
        return tuple(out)

    def render(self, issue: Issue) -> str:
        where = []
        if self.name:
            line = self.line_of(issue)
            where.append(f"{self.name}:{line}" if line else self.name)
        if issue.path:
            where.append(format_path(self.as_written(issue.path)))
        return ": ".join([*where, issue.message])


def format_path(path: Sequence[str | int]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif len(part) > 60:  # a key no config has: shortened, not echoed whole
            text += f"[{show(part)}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", part):
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text


def show(value: Any, limit: int = 60) -> str:
    """A short repr for messages (never raises, never floods the terminal)."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(exc: BaseException) -> str:
    """'ValueError: bad thing' for messages, whatever the exception's __str__ does."""
    try:
        text = str(exc)
    except Exception:
        text = ""
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    if len(word) > 100:  # no typo of a real name; and difflib is quadratic in the length
        return None
    pool = {c.lower(): c for c in candidates if len(c) <= 100}
    close = difflib.get_close_matches(word.lower(), list(pool), n=1, cutoff=0.6)
    return pool[close[0]] if close else None


def keys_of(model: type[BaseModel]) -> list[str]:
    """The keys a file may write in this section (a group's keys flat, at the top level)."""
    keys: list[str] = []
    for key in model.model_fields:
        if model is Config and key in GROUP_FIELDS:
            keys += list(GROUPS[key].model_fields)
        elif key not in INTERNAL_KEYS:
            keys.append(key)
    return keys + list(_ALIASES.get(model, ()))


def unknown_key(path: KeyPath, key: str, model: type[BaseModel]) -> Issue:
    known = keys_of(model)
    guess = did_you_mean(key, known)
    # A real key of another section may be misplaced rather than misspelt: say both.
    elsewhere = [s for m, s in _SECTIONS.items() if m is not model and key in keys_of(m)]
    if guess and elsewhere:
        text = f"did you mean {guess!r}? ({key!r} belongs in {elsewhere[0]})"
        return Issue(path, f"unknown key {show(key)} here; {text}")
    if elsewhere:
        return Issue(path, f"unknown key {show(key)} here; it belongs in {elsewhere[0]}")
    if guess:
        return Issue(path, f"unknown key {show(key)}; did you mean {guess!r}?")
    section = _SECTIONS.get(model, "this section")  # a model added later still gets a message
    return Issue(path, f"unknown key {show(key)}", hint=f"keys of {section}: " + ", ".join(known))


def config_error(issues: Sequence[Issue], locator: Locator) -> ConfigError:
    """One ConfigError reporting every issue, in file order (raise it `from None`)."""
    order = sorted(range(len(issues)), key=lambda i: (locator.line_of(issues[i]) or 10**9, i))
    lines = [locator.render(issues[i]) for i in order]
    hints = {issue.hint for issue in issues if issue.hint}
    hint = hints.pop() if len(hints) == 1 else None
    if len(lines) == 1:
        return ConfigError(lines[0], hint=hint)
    head = f"{len(lines)} problems in {locator.name or 'the config'}:"
    return ConfigError("\n  ".join([head, *lines]), hint=hint)


# -- pydantic errors ------------------------------------------------------------------------


def _sub_model(annotation: Any) -> type[BaseModel] | None:
    """The model inside `list[Model]`, if that is what a field holds."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation  # a group (Config.aws): its keys follow, not an index
    args = typing.get_args(annotation)
    single = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
    if typing.get_origin(annotation) is not list and len(single) == 1:
        return single[0]  # `Model | None` (maestro_host): its keys follow, not an index
    if typing.get_origin(annotation) is list and args:
        inner = args[0]
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner
    return None


def _resolve(loc: Sequence[Any]) -> tuple[KeyPath, type[BaseModel] | None, str | None]:
    """Walk a pydantic `loc` down the models: (clean key path, model owning the last key,
    field name). Union member tags (strings below a leaf field) are dropped."""
    path: list[str | int] = []
    model: type[BaseModel] | None = Config
    owner: type[BaseModel] | None = None
    name: str | None = None
    expect_index = False
    for part in loc:
        if isinstance(part, int):
            path.append(part)
            expect_index = False
        elif model is not None and not expect_index:
            owner, name = model, part
            info = model.model_fields.get(part)
            model = _sub_model(info.annotation) if info is not None else None
            if owner is Config and part in GROUP_FIELDS:
                continue  # the user wrote the group's keys flat: name them so
            path.append(part)
            expect_index = info is not None and typing.get_origin(info.annotation) is list
        # else: a union tag below a leaf field, not a key
    return tuple(path), owner, name


def _bounds(owner: type[BaseModel] | None, name: str | None) -> str:
    info = owner.model_fields.get(name) if owner and name else None
    if info is None:
        return ""
    metadata = list(info.metadata)
    for arg in typing.get_args(info.annotation):  # bounds inside `Annotated[int, Ge(1)] | None`
        metadata += getattr(arg, "__metadata__", ())
    got = {}
    for meta in metadata:  # annotated_types.Ge(ge=1) and friends
        for key in ("ge", "gt", "le", "lt"):
            if hasattr(meta, key):
                got[key.capitalize()] = getattr(meta, key)
    if "Ge" in got and "Le" in got:
        return f" from {got['Ge']} to {got['Le']}"
    for key, sign in (("Ge", ">="), ("Gt", ">"), ("Le", "<="), ("Lt", "<")):
        if key in got:
            return f" {sign} {got[key]}"
    return ""


def _literal_values(owner: type[BaseModel] | None, name: str | None) -> list[str]:
    info = owner.model_fields.get(name) if owner and name else None
    if info is None or typing.get_origin(info.annotation) is not typing.Literal:
        return []
    return [str(v) for v in typing.get_args(info.annotation)]


_EXPECTED = {
    "int": "an integer",
    "float": "a number",
    "finite_number": "a finite number",
    "bool": "true or false",
    "string": "a string",
    "list": "a list",
    "path": "a path (a string)",
    "model": "a mapping of keys",
    "dict": "a mapping of keys",
}


def _expected(err: Any, owner: type[BaseModel] | None, name: str | None) -> str:
    kind = str(err["type"])
    if kind == "missing":
        return "is required, got nothing"
    if kind == "value_error":
        ctx = err.get("ctx") or {}
        return str(ctx.get("error", err["msg"]))
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        is_int = isinstance(err["input"], int)
        return f"expected {'an integer' if is_int else 'a number'}{_bounds(owner, name)}"
    if kind == "literal_error":
        return "expected one of " + ", ".join(repr(v) for v in _literal_values(owner, name))
    if kind == "int_from_float":
        return "expected an integer"
    prefix = kind.split("_", 1)[0] if kind != "finite_number" else kind
    if prefix == "string" and isinstance(err["input"], (int, float, date)):
        return "expected a string (put the value in quotes)"
    if prefix in _EXPECTED:
        return f"expected {_EXPECTED[prefix]}{_bounds(owner, name)}"
    msg = str(err["msg"])
    return msg[:1].lower() + msg[1:]


def issues_from_validation(error: ValidationError) -> list[Issue]:
    """One Issue per key: errors pydantic reports per union member are merged."""
    issues: list[Issue] = []
    expected: dict[KeyPath, list[str]] = {}
    given: dict[KeyPath, Any] = {}
    suffix: dict[KeyPath, str] = {}
    for err in error.errors():
        path, owner, name = _resolve(err["loc"])
        if err["type"] == "extra_forbidden" and owner is not None and name is not None:
            issues.append(unknown_key(path, name, owner))
            continue
        text = _expected(err, owner, name)
        if text not in expected.setdefault(path, []):
            expected[path].append(text)
        given.setdefault(path, err["input"])
        if err["type"] == "literal_error":
            guess = did_you_mean(str(err["input"]), _literal_values(owner, name))
            if guess:
                suffix[path] = f"; did you mean {guess!r}?"
    for path, texts in expected.items():
        text = "; or ".join(texts)
        if "got " not in text:
            text += f", got {show(given[path])}"
        issues.append(Issue(path, text + suffix.get(path, "")))
    return issues
