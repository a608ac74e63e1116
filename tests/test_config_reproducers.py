"""Minimal reproducers of what the config fuzzer (test_config_fuzz.py) found: each crashed
(a traceback), took seconds to minutes, or used gigabytes before it was fixed."""

from __future__ import annotations

import gc
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import yaml

from cloudsend.config import load_config, sources
from cloudsend.config.loader import plain_data
from cloudsend.errors import ConfigError
from tests.conftest import Project


def error_of(source: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(source)  # type: ignore[arg-type]
    return str(info.value)


@pytest.fixture(params=["libyaml", "pure-python"])
def yaml_loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both PyYAML parsers: libyaml's when PyYAML has it, the pure-Python one otherwise."""
    if request.param == "pure-python":
        monkeypatch.setattr(sources, "_Loader", yaml.SafeLoader)
    elif not hasattr(yaml, "CSafeLoader"):
        pytest.skip("PyYAML without libyaml")
    return str(request.param)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("jobs: " + "[" * 100_000 + "]" * 100_000 + "\n", 1),  # libyaml's composer: a segfault
        ("jobs: " + "{a: " * 100_000 + "1" + "}" * 100_000 + "\n", 1),
        ("jobs:\n  " + "- " * 100_000 + "x\n", 2),
    ],
    ids=["flow-list", "flow-map", "block-seq"],
)
def test_deep_yaml_is_refused_before_composing(
    tmp_path: Path, yaml_loader: str, text: str, line: int
) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    assert error_of(path) == f"{path}:{line}: nests deeper than 32 levels"
    assert gc.isenabled()  # paused only while composing


def test_yaml_too_many_nodes_is_refused_from_events(tmp_path: Path, yaml_loader: str) -> None:
    path = tmp_path / "flat.yaml"
    path.write_text("jobs: [" + "1, " * 300_000 + "]\n")
    assert error_of(path) == f"{path}: is too large (more than 100000 values)"


def test_yaml_errors_keep_their_line_with_either_parser(tmp_path: Path, yaml_loader: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("project: x\njobs:\n  - run_command: ls\n   repeat: [2\n")
    assert error_of(path).startswith(f"{path}:4: YAML syntax error")
    path.write_text("jobs: [{run_command: echo}]\n---\njobs: []\n")
    assert error_of(path).startswith(f"{path}:2: YAML syntax error")
    assert gc.isenabled()


@pytest.mark.parametrize("suffix", [".yaml", ".py"])
def test_file_over_16_mb_is_refused_unread(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"big{suffix}"
    path.write_text("# " + "x" * (17 * 2**20) + "\nconfig = {}\n")
    message = error_of(path)
    assert message.startswith(f"{path}: is 17.0 MB; a config file may be at most 16 MB")
    assert "hint: use repeat:" in message


def test_utf16_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "utf16.yaml"
    path.write_bytes("jobs: [{run_command: echo}]\n".encode("utf-16"))
    message = error_of(path)
    assert "is not UTF-8 text" in message and "hint: the file is UTF-16 text" in message


def test_python_list_of_ten_million_references_is_refused_without_walking_it() -> None:
    # `[{...}] * 10_000_000` in a .py config: every reference was put on a stack (26 s).
    items = [{"run_command": "echo"}] * 1_000_000
    tracemalloc.start()
    try:
        data, _, issues = plain_data({"jobs": items})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert data is None and "is too large (more than 100000 values" in issues[0].message
    assert peak < 5_000_000, f"walked it: {peak} bytes"


def test_python_subclasses_with_hostile_methods_are_read_as_plain_values(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sub.py"
    path.write_text(
        "class S(str):\n    def strip(self, *a):\n        raise ValueError('strip')\n"
        "    def __eq__(self, other):\n        raise ValueError('eq')\n"
        "    __hash__ = str.__hash__\n"
        "class D(dict):\n    def items(self):\n        raise ValueError('items')\n"
        "class I(int):\n    def __int__(self):\n        raise ValueError('int')\n"
        "config = D({S('project'): S('sub'), 'jobs': [D(run_command=S('echo'), repeat=I(2))]})\n"
    )
    config = load_config(path)
    assert config.project == "sub" and type(config.project) is str
    assert config.jobs[0].repeat == 2 and config.jobs[0].run_command == "echo"


def test_python_object_whose_methods_raise_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "obj.py"
    path.write_text(
        "class P(__import__('pathlib').PurePosixPath):\n"
        "    def __str__(self):\n        raise ValueError('no str')\n"
        "config = {'jobs': [{'run_command': 'echo', 'output_files': [P('o')]}]}\n"
    )
    assert "jobs[0].output_files[0]: cannot be read: ValueError: no str" in error_of(path)


@pytest.mark.parametrize(
    ("raised", "shown"),
    [("GeneratorExit", "GeneratorExit"), ("type('Stop', (BaseException,), {})()", "Stop")],
)
def test_python_base_exceptions_are_config_errors(tmp_path: Path, raised: str, shown: str) -> None:
    path = tmp_path / "base.py"
    path.write_text(f"raise {raised}\n")
    assert error_of(path).startswith(f"{path}:1: running the file raised {shown}")


def test_eco_life_beyond_float_is_a_config_error() -> None:
    message = error_of({"instances": [{"eco_life": 10**400}], "jobs": []})
    assert "instances[0].eco_life: expected a positive duration of at most a year" in message


def test_output_of_fifty_thousand_folders_is_refused_at_once() -> None:
    # Each of its folders was listed as a string of up to 100 kB: 8 s and 2.5 GB.
    tracemalloc.start()
    try:
        message = error_of({"jobs": [{"run_command": "echo", "output_files": "a/" * 50_000}]})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "jobs[0].output_files[0]: 'a/a/a/" in message
    assert "is 100000 characters long; a path is at most 4096" in message
    assert peak < 50_000_000


@pytest.mark.parametrize(
    ("job", "where"),
    [
        ({"run_script": "x" * 100_000}, "jobs[0].run_script"),
        ({"run_command": "echo", "upload_files": "u" * 100_000}, "jobs[0].upload_files[0]"),
        ({"run_command": "echo", "input_files": ["i" * 5_000]}, "jobs[0].input_files[0]"),
    ],
)
def test_paths_longer_than_path_max_are_refused_briefly(job: dict[str, str], where: str) -> None:
    message = error_of({"jobs": [job]})
    assert f"{where}: '" in message and "characters long; a path is at most 4096" in message
    assert len(message) < 300  # was 200 kB: the path, twice


@pytest.mark.parametrize(
    "data",
    [
        {"q" * 100_000: 1},
        {"jobs": [{"run_command": "echo", "q" * 100_000: 1}]},
        {"jobs": [{"run_command": "echo", "env_name": "q" * 100_000}]},
        {
            "environments": [{"name": "e" * 100_000}],
            "jobs": [{"run_command": "ls", "env_name": "x"}],
        },
        {"instances": [{"eco_life": "q" * 100_000}]},
        {"environments": [{"env_pypi": [list(range(50_000))]}]},
    ],
    ids=["top-key", "job-key", "env_name", "env-names", "eco_life", "env_pypi"],
)
def test_huge_keys_and_values_are_shortened_in_messages(data: dict[str, object]) -> None:
    message = error_of(data)
    assert len(message) < 600, message[:300]
    assert "..." in message


def test_validate_checks_fits_without_expanding_repeat(project: Project) -> None:
    project.config("jobs:\n  - run_command: echo\n    repeat: 99999\n  - run_command: ls\n")
    code = (
        "import sys, cloudsend.scheduling as s\n"
        "def boom(*a, **k):\n    raise AssertionError('validate expanded the jobs')\n"
        "s.expand_jobs = boom\n"
        "from cloudsend.cli import main\n"
        "main(['validate', 'cloudsend.yaml'])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=project.path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "ok (0 environment(s), 100000 job run(s))" in proc.stdout
    project.config("jobs:\n  - run_command: echo\n  - run_command: ls\n    cpus_req: 1024\n")
    proc = project.cli("validate", "cloudsend.yaml")
    assert proc.returncode == 2
    assert proc.stderr.startswith(
        "config error: cloudsend.yaml: jobs[1] (cpus_req=1024) needs more CPUs than any host has"
    )
