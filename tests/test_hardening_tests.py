"""Issue 10, items 27-30: the test set-up (users, sudo, concurrent suites) and loading speed."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudsend.config import load_config, shellwords
from cloudsend.errors import ConfigError
from cloudsend.scheduling import expand_jobs, job_slug
from cloudsend.scheduling.expand import SLUG_MAX

MB = 1 << 20


# --- item 29: loading is linear in a command's length ---------------------------------------


def _split_or_error(split: object, text: str) -> object:
    try:
        return split(text)  # type: ignore[operator]
    except ValueError as exc:
        return ("error", str(exc))


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet="ab '\"\\\t\n\r\x0b#é", max_size=24))
def test_shellwords_split_is_shlex_split(text: str) -> None:
    """Same words, same errors: job ids and run_script argv stay what they were."""
    assert _split_or_error(shellwords.split, text) == _split_or_error(shlex.split, text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "  a\t'b c'  \"d\\\"e\\x\" f\\ g ''",
        "train.py --lr 0.1",
        "'unclosed",
        '"escape at the end\\',
        "trailing\\",
        "a'b'\"c\"d",
    ],
)
def test_shellwords_split_on_examples(text: str) -> None:
    assert _split_or_error(shellwords.split, text) == _split_or_error(shlex.split, text)


def _write(path: Path, doc: dict[str, object]) -> Path:
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    path.write_text(yaml.dump(doc, Dumper=dumper, width=1 << 30))
    return path


def test_job_name_from_a_huge_command_is_bounded_and_stable(tmp_path: Path) -> None:
    """A 10 MB command loads (the cap is 16 MB), and its job is named by its first word:
    bounded, the same on every load, whatever follows (before: shlex on 10 MB ran for minutes,
    and the 4 MB cap refused the file)."""
    tail = "'" + "x" * (5 * MB) + "' " + " ".join(f"f{i}.dat" for i in range(500_000))
    path = _write(tmp_path / "big.yaml", {"jobs": [{"run_command": f"/opt/bin/Solve.X {tail}"}]})
    assert path.stat().st_size > 10 * MB
    first, second = load_config(path), load_config(path)
    assert job_slug(first.jobs[0]) == "solve-x"
    assert len(job_slug(first.jobs[0])) <= SLUG_MAX
    ids = [u.job_id for u in expand_jobs(first)]
    assert ids == [u.job_id for u in expand_jobs(second)]
    assert ids[0].startswith("j000-solve-x-")
    # a long first word is cut to SLUG_MAX, and quotes in it are read as a shell reads them
    long_first = {"run_command": "'" + "Ab" * MB + "' && echo \"done\""}
    slug = job_slug(load_config({"jobs": [long_first]}, base_dir=tmp_path).jobs[0])
    assert slug == ("ab" * SLUG_MAX)[:SLUG_MAX]


def test_huge_run_script_arguments_load(tmp_path: Path) -> None:
    (tmp_path / "task.py").write_text("print('hi')\n")
    args = " ".join(f"'arg {i}'" for i in range(300_000))
    config = load_config({"jobs": [{"run_script": f"task.py {args}"}]}, base_dir=tmp_path)
    argv = config.script_argv(config.jobs[0])
    assert argv is not None
    assert argv[0] == str(tmp_path / "task.py")
    assert argv[1:3] == ["arg 0", "arg 1"] and len(argv) == 300_001


def test_config_over_the_cap_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("jobs:\n  - run_command: echo " + "x" * (17 * MB) + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.message.startswith(
        f"{path}: is 17.0 MB; a config file may be at most 16 MB"
    )
