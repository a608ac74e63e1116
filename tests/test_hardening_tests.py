"""Issue 10, items 27-30: the test set-up (users, sudo, concurrent suites) and loading speed."""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudsend.config import load_config, shellwords
from cloudsend.errors import ConfigError
from cloudsend.scheduling import expand_jobs, job_slug
from cloudsend.scheduling.expand import SLUG_MAX
from tests import sshd_harness

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


# --- items 27 and 28: the harness's users, on a machine without sudo and under two suites --


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture
def throwaway_user() -> Iterator[str]:
    """A user name of this test's own (never the `ubuntu` other suites may be using)."""
    name = f"cst{uuid.uuid4().hex[:8]}"
    yield name
    if _user_exists(name):  # the test failed half-way: leave the machine as it was
        subprocess.run(["userdel", "-r", name], capture_output=True)
    sshd_harness.sudoers_file(name).unlink(missing_ok=True)
    (sshd_harness.USERS_STATE / f"{name}.json").unlink(missing_ok=True)


@pytest.mark.parametrize("missing", ["root", "sudo"])
def test_a_machine_without_root_or_sudo_skips_the_user_tests(
    missing: str, throwaway_user: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Before: /etc/sudoers.d missing was a FileNotFoundError, and a non-root run tried
    useradd; now the tests that need the user are skipped, saying what is missing."""
    monkeypatch.delenv("CI", raising=False)  # in CI a missing tool is a failure, by design
    if missing == "root":
        monkeypatch.setattr(os, "geteuid", lambda: 1000)
    else:
        monkeypatch.setattr(sshd_harness, "SUDOERS_DIR", tmp_path / "no-sudoers.d")
    with pytest.raises(pytest.skip.Exception) as skipped:
        sshd_harness.ensure_user(throwaway_user)
    assert missing in str(skipped.value)
    assert not _user_exists(throwaway_user)


def test_two_suites_at_once_share_a_user_and_the_last_removes_it(
    throwaway_user: str, tmp_path: Path
) -> None:
    """Two pytest processes of a small sshd suite (tests/concurrent_suite.py) at once: own
    ports and temp dirs, one test user both log in as (with sudo). The first suite ends while
    the second still uses the user: the user stays; when the second ends, the user, its home
    and its sudoers entry are gone (before: created once and never removed)."""
    if os.geteuid() != 0 or shutil.which("sshd") is None or shutil.which("sudo") is None:
        pytest.skip("needs root, sshd and sudo (see the README's `make test`)")
    assert not _user_exists(throwaway_user)
    sync = tmp_path / "sync"
    sync.mkdir()
    repo = Path(__file__).resolve().parent.parent
    procs = {}
    for role in ("first", "second"):
        env = {
            **os.environ,
            "CLOUDSEND_CS_USER": throwaway_user,
            "CLOUDSEND_CS_SYNC": str(sync),
            "CLOUDSEND_CS_ROLE": role,
            "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
        }
        procs[role] = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x"]
            + ["tests/concurrent_suite.py"],
            cwd=repo,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        out_first, _ = procs["first"].communicate(timeout=120)
        assert procs["first"].returncode == 0, out_first
        # the first suite has released the user: the second still holds it
        assert _user_exists(throwaway_user)
        assert sshd_harness.sudoers_file(throwaway_user).exists()
        (sync / "first.exited").write_text("")
        out_second, _ = procs["second"].communicate(timeout=120)
        assert procs["second"].returncode == 0, out_second
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    first = (sync / "first.port").read_text().split()
    second = (sync / "second.port").read_text().split()
    assert first[0] != second[0], "both suites' sshd on one port"
    assert first[1] != second[1] and first[2] != second[2], "a temp dir shared by both"
    home = Path("/home") / throwaway_user
    assert not _user_exists(throwaway_user), "the last suite left the test user behind"
    assert not home.exists()
    assert not sshd_harness.sudoers_file(throwaway_user).exists()
    assert not (sshd_harness.USERS_STATE / f"{throwaway_user}.json").exists()


def test_a_free_port_taken_by_another_suite_first_is_not_mistaken_for_ours(
    sshd_client_key: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Another suite's listener gets the port between our pick and our sshd's bind: our sshd
    fails to bind, and the harness picks another port (before: the other listener answered,
    and the host was taken as up on a port that was not its own)."""
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    picks = iter([taken])
    real_free_port = sshd_harness._free_port
    monkeypatch.setattr(sshd_harness, "_free_port", lambda: next(picks, None) or real_free_port())
    base = tmp_path / "hosts"
    base.mkdir()
    host = sshd_harness.SshdHost("h0", base, sshd_client_key)
    try:
        host.start()
        assert host.port != taken
        with socket.create_connection((host.address, host.port), timeout=5) as conn:
            assert conn.recv(64).startswith(b"SSH-2.0-OpenSSH")
    finally:
        host.kill()
        squatter.close()
