"""The key tables of docs/config.md, from the models: each key's default as the docs show it.

`python -m cloudsend.config.reference` prints the tables (key, default, the field's own
description); docs/config.md keeps longer prose for some keys, and tests check that its
defaults are these.
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from cloudsend.config.models import (
    AwsSettings,
    Config,
    EnvironmentConfig,
    InstanceConfig,
    JobConfig,
    SshHostConfig,
    SshSettings,
)

REQUIRED = "required"
# Config keys that are lists of entries or groups of flat keys, not rows of the globals table
_OWN_SECTION = frozenset({"instances", "hosts", "environments", "jobs", "aws", "ssh"})

# docs/config.md section heading → the models whose keys it lists (globals: flat provider keys)
SECTIONS: dict[str, tuple[type[BaseModel], ...]] = {
    "Globals": (Config, AwsSettings, SshSettings),
    "`instances[]`": (InstanceConfig,),
    "`hosts[]` (provider: ssh)": (SshHostConfig,),
    "`environments[]`": (EnvironmentConfig,),
    "`jobs[]`": (JobConfig,),
}


def default_text(info: FieldInfo) -> str:
    """What the default column shows: `required` (no default), empty (none, or an empty
    list/dict), else the value."""
    if info.is_required():
        return REQUIRED
    factory = info.default_factory
    value = factory() if factory is not None else info.default  # type: ignore[call-arg]
    if value is None or value == [] or value == {} or value == ():
        return ""
    if isinstance(value, Enum):
        value = value.value
    return f"`{value}`"


def defaults(section: str) -> dict[str, str]:
    """key → default text, for the keys of one section."""
    out: dict[str, str] = {}
    for model in SECTIONS[section]:
        for name, info in model.model_fields.items():
            if info.exclude or name in _OWN_SECTION:
                continue  # set by the loader, or listed in a section of its own
            out.setdefault(info.alias or name, default_text(info))
    return out


def tables() -> str:
    """The key tables, as markdown."""
    parts = []
    for section, models in SECTIONS.items():
        rows = ["| key | default | meaning |", "| --- | --- | --- |"]
        shown = defaults(section)
        for model in models:
            for name, info in model.model_fields.items():
                key = info.alias or name
                if key in shown:
                    rows.append(f"| `{key}` | {shown.pop(key)} | {info.description or ''} |")
        parts.append(f"## {section}\n\n" + "\n".join(rows))
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    print(tables(), end="")
