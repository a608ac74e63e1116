"""Config: load a YAML or Python config file (or a dict) into validated, typed models.

    load_config(source, *, base_dir=None) -> Config   raises only ConfigError
    config_json_schema() -> dict                       JSON Schema for editors

`Config.script_argv(job)` gives a job's run_script as an argv with the script absolute.
"""

from __future__ import annotations

from cloudsend.config.loader import load_config
from cloudsend.config.models import Config, EnvironmentConfig, InstanceConfig, JobConfig
from cloudsend.config.schema import config_json_schema

__all__ = [
    "Config",
    "EnvironmentConfig",
    "InstanceConfig",
    "JobConfig",
    "config_json_schema",
    "load_config",
]
