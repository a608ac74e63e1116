"""Typed config models (pydantic, extra keys forbidden).

Field names are the original CloudSend tool's keys (see shared/config-reference.md);
list-or-scalar keys are normalised to lists so the rest of the code sees one shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


def _as_list(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [value]
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False)


class InstanceConfig(_Model):
    region: str | None = None
    cloud_id: str | None = None
    img_id: str | None = None
    img_username: str | None = None
    type: str | None = None
    cpus: int | None = Field(default=None, ge=1)
    gpu: str | None = None
    disk_size: int | None = Field(default=None, ge=1)
    disk_type: str | None = None
    eco: bool = False
    eco_life: str | int | None = None
    max_bid: float | None = Field(default=None, gt=0)
    number: int = Field(default=1, ge=1)
    explode: bool = False


class EnvironmentConfig(_Model):
    name: str | None = None
    command: str | None = None
    env_aptget: list[str] = Field(default_factory=list)
    # list of packages, or a path (environment.yml or a conda env dir); paths are resolved
    env_conda: list[str] | Path | None = None
    env_conda_channels: list[str] = Field(default_factory=list)
    # list of packages, or a path (requirements.txt or a venv dir to freeze)
    env_pypi: list[str] | Path | None = None
    env_julia: list[str] = Field(default_factory=list)

    _norm_lists = field_validator("env_aptget", "env_conda_channels", "env_julia", mode="before")(
        classmethod(lambda cls, v: _as_list(v))
    )


class JobConfig(_Model):
    env_name: str | None = None
    cpus_req: int = Field(default=1, ge=1)
    run_script: str | None = None
    run_command: str | None = None
    upload_files: list[Path] = Field(default_factory=list)
    input_files: list[Path] = Field(default_factory=list)
    output_files: list[str] = Field(default_factory=list)
    repeat: int = Field(default=1, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _singular_aliases(cls, data: Any) -> Any:
        # The original accepts input_file/output_file as well as the plural forms.
        if isinstance(data, dict):
            data = dict(data)
            for single, plural in (("input_file", "input_files"), ("output_file", "output_files")):
                if single in data:
                    extra = _as_list(data.pop(single))
                    data[plural] = _as_list(data.get(plural)) + list(extra)
        return data

    _norm_lists = field_validator("upload_files", "input_files", "output_files", mode="before")(
        classmethod(lambda cls, v: _as_list(v))
    )


class Config(_Model):
    project: str | None = None
    profile: str | None = None
    dev: bool = False
    debug: int = Field(default=0, ge=0, le=3)
    maestro: Literal["local", "remote"] = "local"
    auto_stop: bool = True
    provider: Literal["local", "ssh", "aws"] = "local"
    job_assign: Literal["random", "multi_knapsack"] = "multi_knapsack"
    recover: bool = True
    print_deploy: bool = False
    mutualize_uploads: bool = True

    instances: list[InstanceConfig] = Field(default_factory=list)
    environments: list[EnvironmentConfig] = Field(default_factory=list)
    jobs: list[JobConfig] = Field(default_factory=list)

    # Where the config came from: relative paths were resolved against base_dir.
    source: Path | None = Field(default=None, exclude=True)
    base_dir: Path = Field(default_factory=Path.cwd, exclude=True)

    @property
    def project_name(self) -> str:
        if self.project:
            return self.project
        if self.source is not None:
            return self.source.stem
        return "cloudsend"

    @property
    def state_dir(self) -> Path:
        """`.cloudsend/` beside the config file: the state store and local hosts live here."""
        return self.base_dir / ".cloudsend"

    def environment(self, name: str | None) -> EnvironmentConfig | None:
        if name is None:
            return self.environments[0] if len(self.environments) == 1 else None
        for env in self.environments:
            if env.name == name:
                return env
        return None
