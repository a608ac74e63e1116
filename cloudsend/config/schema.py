"""The config's JSON Schema, for editors (YAML language servers, IDEs).

Generated from the pydantic models, so descriptions and types never drift from what the
loader accepts; adjusted where the loader is more lenient than the models' types.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

from cloudsend.config.messages import GROUP_FIELDS, INTERNAL_KEYS
from cloudsend.config.models import GROUPS, Config

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def config_json_schema() -> dict[str, Any]:
    """JSON Schema of a cloudsend config file (a fresh copy the caller may modify)."""
    return copy.deepcopy(_schema())


@lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    schema = Config.model_json_schema(mode="validation")
    for key in INTERNAL_KEYS:  # set by the loader, not written in files
        schema["properties"].pop(key, None)
    # a provider's group is written flat in files: its keys are top-level keys there
    flat: dict[str, Any] = {}
    for key, prop in schema["properties"].items():
        if key in GROUP_FIELDS:
            group = schema["$defs"].pop(GROUPS[key].__name__)
            flat.update(group["properties"])
        else:
            flat[key] = prop
    schema["properties"] = flat
    required = [k for k in schema.pop("required", []) if k not in INTERNAL_KEYS]
    if required:
        schema["required"] = required
    schema["$schema"] = SCHEMA_DIALECT
    schema["title"] = "cloudsend config"
    schema["description"] = (
        "A cloudsend config: globals, then instances (machines), environments (software) "
        "and jobs (what to run). Relative paths are relative to the config file."
    )
    job = schema["$defs"]["JobConfig"]["properties"]
    # The original tool's singular spellings, folded into the plurals by the loader.
    for single in ("input_file", "output_file"):
        plural = job[single + "s"]
        job[single] = {**plural, "title": single.replace("_", " ").title()}
        job[single]["description"] = f"Same as {single}s (the original tool's spelling)."
    for definition in [schema, *schema["$defs"].values()]:
        for prop in definition.get("properties", {}).values():
            _allow_null(prop)  # any key may be left empty: it then takes its default
    return schema


def _allow_null(prop: dict[str, Any]) -> None:
    if "anyOf" in prop:
        if {"type": "null"} not in prop["anyOf"]:
            prop["anyOf"].append({"type": "null"})
    elif "type" in prop:
        kind = prop.pop("type")
        extra = {
            k: prop.pop(k)
            for k in ("items", "format", "minimum", "maximum", "exclusiveMinimum", "enum")
            if k in prop
        }
        prop["anyOf"] = [{"type": kind, **extra}, {"type": "null"}]
    elif "$ref" in prop or "enum" in prop or "const" in prop:
        branch = {k: prop.pop(k) for k in ("$ref", "enum", "const") if k in prop}
        prop["anyOf"] = [branch, {"type": "null"}]
