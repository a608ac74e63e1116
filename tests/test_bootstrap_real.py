"""Rendered bootstrap scripts run for real with bash, the way the host agent runs them:
`bash bootstrap.sh` in ROOT/envs/<env_id>/ with CLOUDSEND_ROOT and CLOUDSEND_ENV_DIR set,
stdout and stderr going to bootstrap.log.

- pypi: a real venv and a real package (`six`) from PyPI.
- apt: a real Debian package (`hello`), as root (marked slow; skipped only without apt-get).
- conda: the rattler engine against a local file:// channel built here from hand-made noarch
  packages; every proxy variable points at a closed port, so a request to the internet fails.
- julia: julia cannot be installed on this machine (not in Debian, not on PyPI), so a shim
  named `julia` on PATH records its argv; the missing-julia case runs with julia off PATH.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloudsend.bootstrap import (
    RenderedEnv,
    bootstrap_error,
    bootstrap_failure_reason,
    render_environment,
    render_job_script,
)
from cloudsend.config.models import Config, EnvironmentConfig, JobConfig

CONFIG = Config(base_dir=Path("/project"))  # where relative paths would resolve
# Any HTTP(S) request through these fails at once: proof that a step stayed offline.
OFFLINE = {
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "ALL_PROXY": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "all_proxy": "http://127.0.0.1:9",
    "NO_PROXY": "",
    "no_proxy": "",
    "PIP_NO_INDEX": "1",
    "PIP_CONFIG_FILE": os.devnull,
}


@dataclass
class Built:
    rc: int
    envdir: Path
    log: str
    stderr: str


def base_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDSEND_")}
    env.update(extra or {})
    return env


def run_bootstrap(
    rendered: RenderedEnv, root: Path, extra: dict[str, str] | None = None, timeout: float = 300
) -> Built:
    envdir = root / "envs" / rendered.env_id
    envdir.mkdir(parents=True, exist_ok=True)
    (envdir / "bootstrap.sh").write_text(rendered.script)
    env = base_env(extra)
    env.update(CLOUDSEND_ROOT=str(root), CLOUDSEND_ENV_DIR=str(envdir))
    # Both streams into one log like the agent; stderr is also teed alone to stderr.log.
    wrapper = "set -o pipefail; exec 3>&1; bash bootstrap.sh 2>&1 1>&3 3>&- | tee stderr.log"
    proc = subprocess.run(
        ["bash", "-c", wrapper],
        cwd=envdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    (envdir / "bootstrap.log").write_text(proc.stdout)
    stderr = (envdir / "stderr.log").read_text()
    return Built(proc.returncode, envdir, proc.stdout, stderr)


def in_env(envdir: Path, command: str, extra: dict[str, str] | None = None) -> str:
    """Run `command` after sourcing the env's activate file, as a job's run.sh does."""
    env = base_env(extra)
    env["CLOUDSEND_ENV_DIR"] = str(envdir)
    proc = subprocess.run(
        ["bash", "-c", f'set -euo pipefail; source "$CLOUDSEND_ENV_DIR/activate"; {command}'],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def render(env: EnvironmentConfig) -> RenderedEnv:
    return render_environment(env, CONFIG)


def shim(bin_dir: Path, name: str, body: str) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text(body)
    path.chmod(0o755)
    return path


def run_job(
    run_script: str,
    script: Path,
    rendered: RenderedEnv,
    built: Built,
    extra: dict[str, str] | None = None,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run a job's run.sh as the agent does (the script linked into work/); must succeed."""
    run_sh = render_job_script(JobConfig(run_script=run_script), rendered, CONFIG)
    work = built.envdir.parent.parent / "jobs" / "j1" / "work"
    work.mkdir(parents=True)
    (work.parent / "run.sh").write_text(run_sh)
    (work / script.name).symlink_to(script)
    proc = subprocess.run(
        ["bash", "../run.sh"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=60,
        env=base_env({**(extra or {}), "CLOUDSEND_ENV_DIR": str(built.envdir)}),
    )
    assert proc.returncode == 0, proc.stderr
    return proc, work


def path_without(*tools: str) -> str:
    """PATH minus every directory that holds one of `tools`."""
    dirs = os.environ["PATH"].split(os.pathsep)
    return os.pathsep.join(d for d in dirs if not any((Path(d) / t).exists() for t in tools))


# ---------------------------------------------------------------- pypi + command (real)


def test_pypi_list_real_venv_and_job(tmp_path: Path):
    setup = tmp_path / "setup.sh"
    setup.write_text('python -c "import six, sys; print(sys.prefix)" > command-saw.txt\n')
    rendered = render(EnvironmentConfig(name="py", env_pypi=["six"], command=str(setup)))
    built = run_bootstrap(rendered, tmp_path / "root")
    assert built.rc == 0, built.log
    venv_python = built.envdir / "venv" / "bin" / "python"
    assert in_env(built.envdir, 'echo "$CLOUDSEND_PYTHON"') == str(venv_python)
    in_env(built.envdir, '"$CLOUDSEND_PYTHON" -c "import six"')
    # The command ran after pip, with the venv first on PATH.
    assert (built.envdir / "command-saw.txt").read_text().strip() == str(built.envdir / "venv")

    # A job using the env: run.sh as the agent runs it, the script linked into work/.
    script = tmp_path / "show.py"
    script.write_text("import sys, six\nprint(six.__name__, *sys.argv[1:])\n")
    proc, _ = run_job(f"{script} 'a b' '$HOME'", script, rendered, built)
    assert proc.stdout.strip() == "six a b $HOME"


def test_pypi_from_a_requirements_file_and_from_a_local_venv(tmp_path: Path):
    """Both other forms of env_pypi, built for real: a requirements.txt, and a venv of the
    user's that is frozen here and reproduced on the host."""
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("# pinned for the test\nsix==1.16.0\n")
    built = run_bootstrap(render(EnvironmentConfig(name="req", env_pypi=str(reqs))), tmp_path / "a")
    assert built.rc == 0, built.log
    assert in_env(built.envdir, '"$CLOUDSEND_PYTHON" -c "import six; print(six.__version__)"') == (
        "1.16.0"
    )
    # the user's own venv, holding six: the host's env gets the same packages
    mine = tmp_path / "myvenv"
    subprocess.run([sys.executable, "-m", "venv", str(mine)], check=True, timeout=120)
    subprocess.run(
        [str(mine / "bin" / "python"), "-m", "pip", "install", "-q", "six==1.16.0"],
        check=True,
        timeout=300,
    )
    rendered = render(EnvironmentConfig(name="frozen", env_pypi=str(mine)))
    assert "six==1.16.0" in rendered.script
    built = run_bootstrap(rendered, tmp_path / "b")
    assert built.rc == 0, built.log
    assert in_env(built.envdir, '"$CLOUDSEND_PYTHON" -m pip freeze') == "six==1.16.0"


def test_failing_command_then_retry(tmp_path: Path):
    root = tmp_path / "root"
    command = 'echo "checking prerequisites"; [ -e "$CLOUDSEND_ROOT/ready" ] || exit 9'
    rendered = render(EnvironmentConfig(name="flaky", command=command))
    built = run_bootstrap(rendered, root)
    assert built.rc == 9
    assert not (built.envdir / "activate").exists()
    reason = bootstrap_failure_reason(built.log)
    assert "checking prerequisites" in reason
    assert reason.splitlines()[-1] == (
        "cloudsend: bootstrap of environment flaky failed in step command (exit code 9)"
    )
    error = bootstrap_error(rendered.env_id, built.log, host="local", exit_code=built.rc)
    assert f"environment {rendered.env_id} failed on host local (exit code 9)" in str(error)

    (root / "ready").touch()  # the agent retries a FAILED env by running the script again
    again = run_bootstrap(rendered, root)
    assert again.rc == 0, again.log
    assert (again.envdir / "activate").is_file()


def test_venv_module_missing_is_a_clear_failure(tmp_path: Path):
    bin_dir = tmp_path / "bin"
    shim(bin_dir, "python3", "#!/bin/sh\nexit 1\n")  # a python3 without venv/ensurepip
    rendered = render(EnvironmentConfig(env_pypi=["six"]))
    built = run_bootstrap(rendered, tmp_path / "root", {"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert built.rc == 1
    assert "cloudsend: python3's venv module is missing on this host" in built.stderr
    assert "python3-venv" in (bootstrap_error(rendered.env_id, built.log).hint or "")


# ---------------------------------------------------------------- apt


def test_apt_as_non_root_without_sudo_rights(tmp_path: Path):
    """A non-root host whose sudo wants a password: one clear line, no hang."""
    bin_dir = tmp_path / "bin"
    shim(bin_dir, "id", '#!/bin/sh\nif [ "$1" = -u ]; then echo 1000; else echo tester; fi\n')
    shim(bin_dir, "sudo", "#!/bin/sh\necho 'sudo: a password is required' >&2\nexit 1\n")
    shim(bin_dir, "apt-get", "#!/bin/sh\nexit 0\n")  # present even on a machine without apt
    rendered = render(EnvironmentConfig(env_aptget=["cloudsend-no-such-package"]))
    built = run_bootstrap(rendered, tmp_path / "root", {"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert built.rc == 1
    assert "cloudsend: env_aptget needs root: sudo asks tester for a password" in built.stderr


@pytest.mark.slow
def test_apt_real_install(tmp_path: Path):
    if shutil.which("apt-get") is None:
        pytest.skip("apt-get is not on this machine (not Debian/Ubuntu)")
    if os.geteuid() != 0:
        pytest.skip("installing a real apt package needs root (run the tests as root)")
    was_installed = subprocess.run(["dpkg", "-s", "hello"], capture_output=True).returncode == 0
    root = tmp_path / "root"
    # Hold apt's lists lock for a few seconds, as cloud-init does after boot: the bootstrap
    # must wait for it (apt-get update alone would fail at once).
    lock_fd = os.open("/var/lib/apt/lists/lock", os.O_RDWR | os.O_CREAT)
    fcntl.lockf(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    threading.Timer(4, os.close, [lock_fd]).start()
    try:
        built = run_bootstrap(render(EnvironmentConfig(name="apt", env_aptget=["hello"])), root)
        assert built.rc == 0, built.log
        assert "the apt lists are locked by another process: waiting" in built.log
        assert (root / "apt-update.stamp").is_file()
        assert in_env(built.envdir, "hello").startswith("Hello, world!")
        # Installed now: another env with it neither updates nor installs.
        other = run_bootstrap(render(EnvironmentConfig(name="apt2", env_aptget=["hello"])), root)
        assert other.rc == 0 and "already installed: hello" in other.log
    finally:
        if not was_installed:  # leave the machine as found, so a rerun installs for real
            subprocess.run(["apt-get", "purge", "-y", "-q", "hello"], capture_output=True)


# ---------------------------------------------------------------- conda (rattler, offline)


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    tar.addfile(info, io.BytesIO(data))


def build_noarch_package(
    channel: Path, name: str, version: str, depends: list[str], files: dict[str, tuple[bytes, int]]
) -> None:
    """A minimal noarch conda package (.tar.bz2 with info/index.json and info/paths.json)."""
    index = {
        "name": name,
        "version": version,
        "build": "0",
        "build_number": 0,
        "depends": depends,
        "noarch": "generic",
        "subdir": "noarch",
        "license": "MIT",
        "timestamp": 1700000000000,
    }
    paths = {
        "paths_version": 1,
        "paths": [
            {
                "_path": p,
                "path_type": "hardlink",
                "sha256": hashlib.sha256(d).hexdigest(),
                "size_in_bytes": len(d),
            }
            for p, (d, _) in files.items()
        ],
    }
    (channel / "noarch").mkdir(parents=True, exist_ok=True)
    with tarfile.open(channel / "noarch" / f"{name}-{version}-0.tar.bz2", "w:bz2") as tar:
        _add(tar, "info/index.json", json.dumps(index).encode())
        _add(tar, "info/paths.json", json.dumps(paths).encode())
        _add(tar, "info/files", "".join(f"{p}\n" for p in files).encode())
        for path, (data, mode) in files.items():
            _add(tar, path, data, mode)


@pytest.fixture(scope="module")
def local_channel(tmp_path_factory: pytest.TempPathFactory) -> str:
    """file:// channel: cloudsend-hello 1.0 and 2.0, both depending on cloudsend-greeting."""
    from rattler.index import index_fs

    channel = tmp_path_factory.mktemp("channel") / "chan"
    build_noarch_package(
        channel,
        "cloudsend-greeting",
        "1.0",
        [],
        {"share/cloudsend-greeting.txt": (b"greetings from a conda package\n", 0o644)},
    )
    for version in ("1.0", "2.0"):
        hello = (
            "#!/bin/sh\n"
            f'echo "hello {version}: $(cat "$(dirname "$0")/../share/cloudsend-greeting.txt")"\n'
        ).encode()
        build_noarch_package(
            channel,
            "cloudsend-hello",
            version,
            ["cloudsend-greeting >=1"],
            {"bin/cloudsend-hello": (hello, 0o755)},
        )
    asyncio.run(index_fs(channel, write_zst=False, write_shards=False))
    return channel.as_uri()


RATTLER = {"CLOUDSEND_CONDA_ENGINE": "rattler", "CLOUDSEND_RATTLER_PYTHON": sys.executable}


def test_conda_list_with_rattler_offline(tmp_path: Path, local_channel: str):
    rendered = render(
        EnvironmentConfig(
            name="conda", env_conda=["cloudsend-hello <2"], env_conda_channels=[local_channel]
        )
    )
    built = run_bootstrap(rendered, tmp_path / "root", {**OFFLINE, **RATTLER})
    assert built.rc == 0, built.log
    out = in_env(
        built.envdir, 'echo "$CONDA_PREFIX"; cloudsend-hello; echo "${CLOUDSEND_PYTHON-no}"'
    )
    # No python in this env: CLOUDSEND_PYTHON stays unset and jobs fall back to python3.
    assert out.splitlines() == [
        str(built.envdir / "conda"),
        "hello 1.0: greetings from a conda package",
        "no",
    ]
    # A job in this env finds the package's command on PATH.
    run_sh = render_job_script(JobConfig(run_command="cloudsend-hello"), rendered, CONFIG)
    (tmp_path / "run.sh").write_text(run_sh)
    proc = subprocess.run(
        ["bash", "run.sh"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=base_env({"CLOUDSEND_ENV_DIR": str(built.envdir)}),
    )
    assert proc.stdout.startswith("hello 1.0"), proc.stderr

    # Reproduce that env from its directory: exact pins, channel read from conda-meta.
    copy = render(EnvironmentConfig(name="copy", env_conda=built.envdir / "conda"))
    assert "cloudsend-hello=1.0=0" in copy.script
    rebuilt = run_bootstrap(copy, tmp_path / "root", {**OFFLINE, **RATTLER})
    assert rebuilt.rc == 0, rebuilt.log
    assert in_env(rebuilt.envdir, "cloudsend-hello").startswith("hello 1.0")


def test_environment_yml_with_rattler_offline(tmp_path: Path, local_channel: str):
    yml = tmp_path / "environment.yml"
    yml.write_text(
        f"name: x\nchannels:\n  - {local_channel}\ndependencies:\n  - cloudsend-hello\n"
        "variables:\n  GREETING: hi there\n"
    )
    built = run_bootstrap(
        render(EnvironmentConfig(env_conda=yml)), tmp_path / "root", {**OFFLINE, **RATTLER}
    )
    assert built.rc == 0, built.log
    assert in_env(built.envdir, 'echo "$GREETING"; cloudsend-hello').splitlines() == [
        "hi there",
        "hello 2.0: greetings from a conda package",
    ]


def test_conda_unsolvable_is_a_clear_failure(tmp_path: Path, local_channel: str):
    rendered = render(
        EnvironmentConfig(env_conda=["cloudsend-nonexistent"], env_conda_channels=[local_channel])
    )
    built = run_bootstrap(rendered, tmp_path / "root", {**OFFLINE, **RATTLER})
    assert built.rc == 1
    assert "cloudsend: conda solve/install with rattler failed" in built.stderr
    assert "env_conda" in (bootstrap_error(rendered.env_id, built.log).hint or "")


def test_conda_engine_detection_prefers_micromamba(tmp_path: Path):
    bin_dir = tmp_path / "bin"
    record = tmp_path / "micromamba-argv.json"
    shim(
        bin_dir,
        "micromamba",
        (
            f"#!{sys.executable}\nimport json, os, sys\n"
            f"json.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n"
            "prefix = sys.argv[sys.argv.index('-p') + 1]\n"
            "os.makedirs(os.path.join(prefix, 'bin'))\n"
        ),
    )
    rendered = render(EnvironmentConfig(env_conda=["numpy", "scipy >=1"]))
    built = run_bootstrap(
        rendered, tmp_path / "root", {**OFFLINE, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    )
    assert built.rc == 0, built.log
    assert json.loads(record.read_text()) == [
        "create",
        "-y",
        "-p",
        str(built.envdir / "conda"),
        "--override-channels",
        "-c",
        "conda-forge",
        "numpy",
        "scipy >=1",
    ]


def test_forced_engine_missing(tmp_path: Path):
    built = run_bootstrap(
        render(EnvironmentConfig(env_conda=["numpy"])),
        tmp_path / "root",
        {"CLOUDSEND_CONDA_ENGINE": "micromamba", "PATH": path_without("micromamba")},
    )
    assert built.rc == 1
    assert "CLOUDSEND_CONDA_ENGINE=micromamba but micromamba is not on this host's PATH" in (
        built.stderr
    )


def test_no_engine_and_rattler_not_installable(tmp_path: Path):
    """No micromamba/mamba/conda and pip cannot get py-rattler: a clear error, exit non-zero."""
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    built = run_bootstrap(
        render(EnvironmentConfig(env_conda=["numpy"])),
        tmp_path / "root",
        {
            **OFFLINE,
            "PIP_FIND_LINKS": str(empty),
            "PATH": path_without("micromamba", "mamba", "conda"),
        },
    )
    assert built.rc != 0
    assert "cloudsend: no conda engine on this host (micromamba, mamba or conda)" in built.stderr


@pytest.mark.slow
def test_rattler_tool_venv_from_pypi(tmp_path: Path, local_channel: str):
    """The default path on a bare host: py-rattler pip-installed once into ROOT/tools/rattler.

    pip reaches PyPI for py-rattler; the conda solve itself only knows the local channel.
    """
    root = tmp_path / "root"
    no_engines = {"PATH": path_without("micromamba", "mamba", "conda")}
    env = EnvironmentConfig(env_conda=["cloudsend-hello"], env_conda_channels=[local_channel])
    built = run_bootstrap(render(env), root, no_engines)
    assert built.rc == 0, built.log
    assert "installing py-rattler" in built.log
    assert (root / "tools" / "rattler" / "bin" / "python").exists()
    assert in_env(built.envdir, "cloudsend-hello").startswith("hello 2.0")
    env2 = EnvironmentConfig(
        name="again", env_conda=["cloudsend-hello <2"], env_conda_channels=[local_channel]
    )
    second = run_bootstrap(render(env2), root, {**no_engines, **OFFLINE})
    assert second.rc == 0, second.log
    assert "installing py-rattler" not in second.log  # the tool venv is reused


# ---------------------------------------------------------------- julia (shim)


def test_julia_through_recorded_shim(tmp_path: Path):
    """Real julia cannot be installed on this machine: a `julia` shim records what it got."""
    bin_dir = tmp_path / "bin"
    record = tmp_path / "julia-call.json"
    shim(
        bin_dir,
        "julia",
        (
            f"#!{sys.executable}\nimport json, os, sys\n"
            f"json.dump({{'argv': sys.argv[1:], 'project': os.environ.get('JULIA_PROJECT')}},"
            f" open({str(record)!r}, 'w'))\n"
        ),
    )
    rendered = render(EnvironmentConfig(name="jl", env_julia=["Example", "JSON"]))
    built = run_bootstrap(rendered, tmp_path / "root", {"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert built.rc == 0, built.log
    call = json.loads(record.read_text())
    project = str(built.envdir / "julia")
    assert call == {
        "argv": ["--startup-file=no", "-e", "using Pkg; Pkg.add(ARGS)", "Example", "JSON"],
        "project": project,
    }
    assert in_env(built.envdir, 'echo "$JULIA_PROJECT"') == project


def test_jl_job_runs_with_the_environment_julia(tmp_path: Path):
    """A .jl run_script runs with julia in the environment's project, its arguments kept:
    julia itself cannot be installed here, so a shim records how it was called."""
    bin_dir, record = tmp_path / "bin", tmp_path / "julia-job.json"
    shim(
        bin_dir,
        "julia",
        (
            f"#!{sys.executable}\nimport json, os, sys\n"
            "calls = json.load(open(sys.argv[0] + '.log')) if os.path.exists(sys.argv[0] + '.log')"
            " else []\n"
            "calls.append({'argv': sys.argv[1:], 'project': os.environ.get('JULIA_PROJECT'),"
            " 'cwd': os.getcwd()})\n"
            "json.dump(calls, open(sys.argv[0] + '.log', 'w'))\n"
            f"json.dump(calls, open({str(record)!r}, 'w'))\n"
        ),
    )
    path = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    rendered = render(EnvironmentConfig(name="jl", env_julia="Example"))
    built = run_bootstrap(rendered, tmp_path / "root", path)
    assert built.rc == 0, built.log
    script = tmp_path / "fit.jl"
    script.write_text('println("fit ", ARGS)\n')
    _, work = run_job(f"{script} --n 3 'two words'", script, rendered, built, path)
    job_call = json.loads(record.read_text())[-1]
    assert job_call["argv"][-4:] == ["fit.jl", "--n", "3", "two words"]
    assert job_call["project"] == str(built.envdir / "julia")
    assert job_call["cwd"] == str(work)


def test_julia_missing_fails_clearly(tmp_path: Path):
    rendered = render(EnvironmentConfig(name="jl", env_julia=["Example"]))
    built = run_bootstrap(rendered, tmp_path / "root", {"PATH": path_without("julia")}, timeout=30)
    assert built.rc == 3
    assert built.stderr.splitlines()[0] == (
        "cloudsend: julia is not installed on this host; add it with env_aptget or a command"
    )
    assert not (built.envdir / "activate").exists()
