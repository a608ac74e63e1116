"""Property tests: whatever load_config is fed, only ConfigError escapes.

Random YAML text, random nested structures, and structures built around the real key
names (so they get past the first checks and exercise pydantic and the file checks).
"""

from __future__ import annotations

import string
import tempfile
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudsend.config import Config, load_config
from cloudsend.config.messages import keys_of
from cloudsend.config.models import EnvironmentConfig, InstanceConfig, JobConfig
from cloudsend.errors import ConfigError

FIXTURES = Path(__file__).parent / "configs"
SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


def check(source: Any, base_dir: Path | None = None) -> None:
    try:
        config = load_config(source, base_dir=base_dir)
    except ConfigError as exc:
        assert str(exc).strip(), "a ConfigError must say something"
        return
    assert isinstance(config, Config)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "",
            "0",
            "-1",
            "local",
            "remote",
            "random",
            "6h",
            "../x",
            "/etc/passwd",
            "~/x",
            "scripts/train.py 1 2",
            "data/input.csv",
            "env/setup.sh",
            'a b "c',
            "py",
        ]
    ),
    st.just(timedelta(hours=1)),
    st.just(date(2024, 1, 1)),
)
any_key = st.text(max_size=8) | st.sampled_from([0, 1, None])
nested = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(any_key, inner, max_size=4)
        | st.tuples(inner, inner)
    ),
    max_leaves=20,
)


def section(model: type) -> st.SearchStrategy[dict[str, Any]]:
    """Mappings whose keys are (mostly) the model's real keys, with random values."""
    keys = st.sampled_from(keys_of(model)) | st.sampled_from(["repet", "nmae", "source"])
    return st.dictionaries(keys, nested, max_size=5)


realistic = st.fixed_dictionaries(
    {},
    optional={
        "project": scalars,
        "debug": scalars,
        "maestro": scalars,
        "provider": scalars,
        "job_assign": scalars,
        "auto_stop": scalars,
        "instances": st.lists(section(InstanceConfig), max_size=3) | nested,
        "environments": st.lists(section(EnvironmentConfig), max_size=3) | nested,
        "jobs": st.lists(section(JobConfig), max_size=3) | nested,
    },
)


@SETTINGS
@given(text=st.text(alphabet=string.printable + "é\u00a0&*!|>%@`", max_size=200))
def test_random_yaml_text(workdir: Path, text: str) -> None:
    path = workdir / "random.yaml"
    path.write_text(text, encoding="utf-8")
    check(path)


ALL_KEYS = sorted(
    {k for m in (Config, InstanceConfig, EnvironmentConfig, JobConfig) for k in keys_of(m)}
)
yaml_line = st.tuples(
    st.sampled_from(["", "  ", "    ", "  - ", "- ", "\t"]),
    st.sampled_from(ALL_KEYS) | st.text(alphabet=string.ascii_letters + "_-", max_size=8),
    st.sampled_from([": ", ":", " : ", ": [", ": {", ": &a ", ": *a ", ": !!int ", ": |\n  "]),
    st.text(alphabet=string.ascii_letters + string.digits + " ./-_'\"[]{},#~", max_size=15),
).map("".join)


@SETTINGS
@given(lines=st.lists(yaml_line, min_size=1, max_size=12))
def test_yaml_lines_around_real_keys(workdir: Path, lines: list[str]) -> None:
    path = workdir / "keyed.yaml"
    path.write_text("\n".join(lines), encoding="utf-8")
    check(path, base_dir=FIXTURES)


@SETTINGS
@given(data=realistic)
def test_realistic_structures_as_yaml(workdir: Path, data: dict[str, Any]) -> None:
    # Through YAML text too, so line lookups run on what the structure turned into.
    try:
        text = yaml.safe_dump(data, allow_unicode=True)
    except yaml.YAMLError:
        return  # not representable as safe YAML (e.g. a timedelta value)
    target = workdir / "structured.yaml"
    target.write_text(text, encoding="utf-8")
    check(target, base_dir=FIXTURES)


@SETTINGS
@given(data=nested)
def test_random_structures(data: Any) -> None:
    check(data if isinstance(data, dict) else {"jobs": data}, base_dir=FIXTURES)


@SETTINGS
@given(data=realistic)
def test_realistic_structures(data: dict[str, Any]) -> None:
    check(data, base_dir=FIXTURES)
