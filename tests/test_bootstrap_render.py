"""Rendering of bootstrap.sh and run.sh: golden files, hashing, quoting, errors.

Goldens live in tests/golden/{bootstrap,job}/. After an intended template change, regenerate
them with `UPDATE_GOLDEN=1 python -m pytest tests/test_bootstrap_render.py` and review the diff.
Rendered scripts must never contain the tmp paths of the inputs (a teammate's checkout lives
elsewhere and must get the same env_id), so goldens need no path normalisation: that property
is asserted instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import venv
from pathlib import Path

import jinja2
import pytest

from cloudsend.bootstrap import (
    RenderedEnv,
    bootstrap_error,
    bootstrap_failure_reason,
    render_environment,
    render_job_script,
    template_dir,
)
from cloudsend.bootstrap import jinja as jinja_module
from cloudsend.bootstrap.jinja import heredoc, jinja_environment, render_template
from cloudsend.bootstrap.render import env_slug, environment_context
from cloudsend.config.models import Config, EnvironmentConfig, JobConfig
from cloudsend.errors import BootstrapError, ConfigError

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
CONFIG = Config(base_dir=Path("/project"))  # where relative paths would resolve


def check_golden(name: str, text: str, tmp_path: Path | None = None) -> None:
    if tmp_path is not None:
        assert str(tmp_path) not in text, "a local path leaked into the rendered script"
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    assert path.exists(), f"missing golden {path}: run with UPDATE_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8"), f"{name} differs from its golden file"


def bash_syntax_ok(script: str) -> None:
    proc = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert proc.returncode == 0, proc.stderr


def render(env: EnvironmentConfig) -> RenderedEnv:
    return render_environment(env, CONFIG)


# ---------------------------------------------------------------- local inputs (fixtures)


@pytest.fixture(scope="module")
def frozen_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real venv with pip, plus two hand-made installs: one normal, one from a local path."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    venv.EnvBuilder(with_pip=True).create(root)
    site = next(root.glob("lib/python*/site-packages"))
    for name, version, direct_url in (("tinypkg", "1.2.3", None), ("localpkg", "0.1", True)):
        info = site / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "RECORD").write_text("")
        (info / "INSTALLER").write_text("pip\n")
        if direct_url:
            url = {"url": (root / "proj").as_uri(), "dir_info": {}}
            (info / "direct_url.json").write_text(json.dumps(url))
    return root


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def conda_env_dir(root: Path) -> Path:
    """A hand-made conda env: conda-meta records and one package pip installed inside it."""
    records = [
        (
            "python",
            "3.11.7",
            "hab00c5b_0_cpython",
            "https://conda.anaconda.org/conda-forge/linux-64",
        ),
        ("pip", "24.0", "pyhd8ed1ab_0", "https://conda.anaconda.org/conda-forge/noarch"),
        ("samtools", "1.19", "h50ea8bc_0", "https://conda.anaconda.org/bioconda/linux-64"),
    ]
    for name, version, build, channel in records:
        record = {"name": name, "version": version, "build": build, "channel": channel}
        write(root / "conda-meta" / f"{name}-{version}-{build}.json", json.dumps(record))
    info = root / "lib/python3.11/site-packages/tinypkg-1.2.3.dist-info"
    write(info / "METADATA", "Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.2.3\n")
    write(info / "INSTALLER", "pip\n")
    conda_info = root / "lib/python3.11/site-packages/certifi-2024.2.2.dist-info"
    write(conda_info / "METADATA", "Name: certifi\nVersion: 2024.2.2\n")
    write(conda_info / "INSTALLER", "conda\n")
    return root


ENVIRONMENT_YML = """\
name: analysis
channels:
  - conda-forge
  - nodefaults
dependencies:
  - python=3.11
  - numpy>=1.26
  - pip:
      - six==1.16.0
variables:
  OMP_NUM_THREADS: "1"
"""


def kinds(tmp: Path, frozen: Path) -> dict[str, EnvironmentConfig]:
    reqs = write(tmp / "reqs" / "requirements.txt", "six==1.16.0  # pinned\n-r more.txt\n")
    write(tmp / "reqs" / "more.txt", "attrs>=23\n")
    setup = write(tmp / "setup.sh", 'echo "setting up in $PWD"\nmkdir -p data\n')
    yml = write(tmp / "environment.yml", ENVIRONMENT_YML)
    return {
        "apt": EnvironmentConfig(name="apt", env_aptget=["hello", "libgomp1"]),
        "pypi_list": EnvironmentConfig(name="py", env_pypi=["six==1.16.0", "requests[socks]>=2"]),
        "pypi_requirements": EnvironmentConfig(name="py", env_pypi=reqs),
        "pypi_venv": EnvironmentConfig(name="py", env_pypi=frozen),
        "conda_list": EnvironmentConfig(
            name="conda",
            env_conda=["numpy>=1.26", "python=3.11"],
            env_conda_channels=["conda-forge", "bioconda"],
        ),
        "conda_yml": EnvironmentConfig(name="conda", env_conda=yml),
        "conda_envdir": EnvironmentConfig(name="conda", env_conda=conda_env_dir(tmp / "cenv")),
        "julia": EnvironmentConfig(name="jl", env_julia=["Example", "JSON"]),
        "command_file": EnvironmentConfig(name="cmd", command=str(setup)),
        "command_inline": EnvironmentConfig(name="cmd", command="echo 'hi there' > \"$HOME/x\""),
        "combo_conda_pypi": EnvironmentConfig(
            env_aptget=["libgomp1"],
            env_conda=["numpy"],
            env_pypi=["six"],
            env_julia="Example",
            command=str(setup),
        ),
        "combo_apt_venv": EnvironmentConfig(
            name="web app", env_aptget=["python3-venv"], env_pypi=reqs, command="make -C /opt/x"
        ),
    }


@pytest.fixture()
def all_kinds(tmp_path: Path, frozen_venv: Path) -> dict[str, EnvironmentConfig]:
    return kinds(tmp_path, frozen_venv)


# ---------------------------------------------------------------- goldens


KIND_NAMES = [
    "apt",
    "pypi_list",
    "pypi_requirements",
    "pypi_venv",
    "conda_list",
    "conda_yml",
    "conda_envdir",
    "julia",
    "command_file",
    "command_inline",
    "combo_conda_pypi",
    "combo_apt_venv",
]


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_bootstrap_golden(kind: str, all_kinds: dict[str, EnvironmentConfig], tmp_path: Path):
    rendered = render(all_kinds[kind])
    check_golden(f"bootstrap/{kind}.sh", rendered.script, tmp_path)
    bash_syntax_ok(rendered.script)
    assert rendered.env_id == f"{env_slug(all_kinds[kind].name)}-{rendered.content_hash[:12]}"
    if all_kinds[kind].name == "web app":  # a name the loader refuses: made safe, with its hash
        assert env_slug("web app") == "web-app-" + hashlib.sha256(b"web app").hexdigest()[:8]


def test_kind_specifics(all_kinds: dict[str, EnvironmentConfig]):
    s = {kind: render(env).script for kind, env in all_kinds.items()}
    assert "-o DPkg::Lock::Timeout=300" in s["apt"] and "sudo -n" in s["apt"]
    assert "--no-install-recommends" in s["apt"] and "apt-update.stamp" in s["apt"]
    assert "'requests[socks]>=2'" in s["pypi_list"] and "python3 -m venv" in s["pypi_list"]
    assert "attrs>=23" in s["pypi_requirements"]  # -r more.txt was inlined
    assert "tinypkg==1.2.3" in s["pypi_venv"]
    assert "# not reproducible on a host (local install): localpkg" in s["pypi_venv"]
    assert "cs_conda_channels=(conda-forge bioconda)" in s["conda_list"]
    yml = s["conda_yml"]
    assert "nodefaults" not in yml.split("environment.yml")[-1].split("cs_conda_specs")[-1]
    assert "cs_conda_specs=(python=3.11 'numpy>=1.26' pip)" in yml  # pip added for the pip part
    assert "six==1.16.0" in yml and "export OMP_NUM_THREADS=1" in yml
    envdir = s["conda_envdir"]
    assert (
        "samtools=1.19=h50ea8bc_0" in envdir
        and "cs_conda_channels=(conda-forge bioconda)" in envdir
    )
    assert "tinypkg==1.2.3" in envdir and "certifi" not in envdir  # only pip's own installs
    assert '"channel_priority": "disabled"' in envdir
    assert "Pkg.add(ARGS)' Example JSON" in s["julia"]
    assert 'echo "setting up in $PWD"' in s["command_file"]
    assert "bash -c 'echo '\"'\"'hi there'\"'\"' > \"$HOME/x\"'" in s["command_inline"]
    combo = s["combo_conda_pypi"]
    order = [
        combo.index(f"CS_STEP={step}\n")
        for step in ("apt", "conda", "pypi", "julia", "command", "activate")
    ]
    assert order == sorted(order)
    assert (
        '"$CS_CONDA/bin/python"' in combo
        and "python3 -m venv" not in combo.split("cs_make_venv() {")[1].split("CS_STEP=pypi")[1]
    )


def test_conda_list_defaults_to_conda_forge():
    script = render(EnvironmentConfig(env_conda=["numpy"])).script
    assert "cs_conda_channels=(conda-forge)" in script


# ---------------------------------------------------------------- hashing and ids


def test_hash_stable_and_content_sensitive(tmp_path: Path):
    reqs = write(tmp_path / "requirements.txt", "six==1.16.0\n")
    setup = write(tmp_path / "setup.sh", "echo one\n")
    env = EnvironmentConfig(name="e", env_pypi=reqs, command=str(setup))
    first = render(env)
    assert render(env) == first
    assert render(EnvironmentConfig(name="e", env_pypi=reqs, command=str(setup))) == first
    os.utime(reqs, (1, 1))  # a touch is not a change of content
    assert render(env).env_id == first.env_id

    write(reqs, "six==1.17.0\n")
    second = render(env)
    assert second.env_id != first.env_id and second.env_id.startswith("e-")
    write(setup, "echo two\n")
    assert render(env).env_id not in (first.env_id, second.env_id)
    assert render(EnvironmentConfig(name="e", env_pypi=["six"])).env_id != first.env_id


def test_same_content_elsewhere_gives_same_env_id(tmp_path: Path, frozen_venv: Path):
    """A teammate's checkout lives at another path: same content, same env_id."""
    ids = []
    for where in ("alice/project", "bob/work/checkout"):
        envs = kinds(tmp_path / where, frozen_venv)
        ids.append({kind: render(env).env_id for kind, env in envs.items()})
    assert ids[0] == ids[1]


def test_env_id_names():
    assert render(EnvironmentConfig(env_aptget=["x"])).env_id.startswith("default-")
    weird = render(EnvironmentConfig(name="my env/../x", env_aptget=["x"])).env_id
    assert "/" not in weird and " " not in weird and weird.startswith("my-env-.-x-")


# ---------------------------------------------------------------- jinja strictness, quoting


def test_strict_undefined_raises(all_kinds: dict[str, EnvironmentConfig]):
    with pytest.raises(jinja2.UndefinedError):
        jinja_environment().from_string("{{ not_given }}").render()
    context = environment_context(all_kinds["apt"])
    del context["apt_lock_timeout"]
    with pytest.raises(BootstrapError, match="undefined") as info:
        render_template("bootstrap/base.sh.j2", context)
    assert isinstance(info.value.__cause__, jinja2.UndefinedError)


def test_hostile_values_stay_data(tmp_path: Path):
    """Names with newlines, quotes and $(...) never become shell code: run it and see."""
    marker = tmp_path / "pwned"
    evil = f"x\ntouch {marker}\n$(touch {marker})`touch {marker}`;touch {marker}"
    env = EnvironmentConfig(name=evil, env_julia=[evil], command=f"printf %s {shlex.quote(evil)}")
    script = render(env).script
    bash_syntax_ok(script)
    bash_syntax_ok(render(EnvironmentConfig(env_aptget=[evil], env_pypi=[evil])).script)
    # real julia cannot be installed here: a shim that records its argv
    shim_dir = tmp_path / "bin"
    write(shim_dir / "julia", f"#!{sys.executable}\n{PRINT_ARGV}").chmod(0o755)
    envdir = tmp_path / "env"
    envdir.mkdir()
    (envdir / "bootstrap.sh").write_text(script)
    proc = subprocess.run(
        ["bash", "bootstrap.sh"],
        cwd=envdir,
        text=True,
        capture_output=True,
        timeout=60,
        env={
            **os.environ,
            "PATH": f"{shim_dir}:{os.environ['PATH']}",
            "CLOUDSEND_ENV_DIR": str(envdir),
            "CLOUDSEND_ROOT": str(tmp_path),
        },
    )
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()
    argv_line = next(ln for ln in proc.stdout.splitlines() if ln.startswith('["--startup'))
    assert json.loads(argv_line) == ["--startup-file=no", "-e", "using Pkg; Pkg.add(ARGS)", evil]
    assert proc.stdout.rstrip().endswith("environment ready")
    assert evil in proc.stdout  # the command printed it verbatim


def test_heredoc_delimiter_never_in_content():
    content = "line\nCLOUDSEND_EOF_x\n"
    doc = heredoc(content, "$D/f")
    delimiter = doc.splitlines()[0].split("<<'")[1].rstrip("'")
    assert delimiter not in content.splitlines()
    assert doc.endswith(f"\n{delimiter}")


def test_template_dir_points_at_templates():
    root = template_dir()
    assert (root / "bootstrap" / "base.sh.j2").is_file()
    assert (root / "job" / "run.sh.j2").is_file()


def test_template_dir_prefers_the_wheel_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    package = tmp_path / "site" / "cloudsend"
    monkeypatch.setattr(jinja_module, "_PACKAGE_DIR", package)
    with pytest.raises(BootstrapError, match="templates folder is missing"):
        template_dir()
    (tmp_path / "site" / "templates" / "bootstrap").mkdir(parents=True)  # checkout layout
    assert template_dir() == tmp_path / "site" / "templates"
    (package / "templates" / "bootstrap").mkdir(parents=True)  # wheel layout wins
    assert template_dir() == package / "templates"


# ---------------------------------------------------------------- render-time errors


def test_local_input_errors(tmp_path: Path):
    with pytest.raises(BootstrapError, match="env_pypi .* does not exist"):
        render(EnvironmentConfig(env_pypi=tmp_path / "nope"))
    with pytest.raises(BootstrapError, match="env_conda .* does not exist"):
        render(EnvironmentConfig(env_conda=tmp_path / "nope"))
    with pytest.raises(BootstrapError, match="requirements file .* does not exist"):
        render(EnvironmentConfig(env_pypi=write(tmp_path / "r0.txt", "-r missing.txt\n")))
    # Not an existing file: the loader's contract makes it an inline command.
    assert (
        "bash -c /nonexistent/setup.sh"
        in render(EnvironmentConfig(command="/nonexistent/setup.sh")).script
    )
    (tmp_path / "notvenv").mkdir()
    with pytest.raises(BootstrapError, match="not a virtualenv"):
        render(EnvironmentConfig(env_pypi=tmp_path / "notvenv"))
    broken = tmp_path / "broken"
    write(broken / "bin" / "python", "#!/bin/sh\necho 'bad interpreter' >&2\nexit 3\n").chmod(0o755)
    with pytest.raises(BootstrapError, match="bad interpreter"):
        render(EnvironmentConfig(env_pypi=broken))
    with pytest.raises(BootstrapError, match="not a conda env"):
        render(EnvironmentConfig(env_conda=tmp_path / "notvenv"))
    with pytest.raises(BootstrapError, match="not valid YAML"):
        render(EnvironmentConfig(env_conda=write(tmp_path / "e.yml", "a: [b\n")))
    with pytest.raises(BootstrapError, match="another local file"):
        render(EnvironmentConfig(env_pypi=write(tmp_path / "r.txt", "-c constraints.txt\n")))


def test_venv_without_pip_is_listed(tmp_path: Path):
    """A venv made --without-pip cannot run `pip freeze`: its packages are listed anyway."""
    root = tmp_path / "bare"
    venv.EnvBuilder(with_pip=False).create(root)
    site = next(root.glob("lib/python*/site-packages"))
    write(site / "tinypkg-1.2.3.dist-info" / "METADATA", "Name: tinypkg\nVersion: 1.2.3\n")
    assert "tinypkg==1.2.3" in render(EnvironmentConfig(env_pypi=root)).script


# ---------------------------------------------------------------- job scripts


ARGS = ["arg with space", "$HOME", "it's", 'a"b', "*", "", "--x=1;rm -rf /", "$(id)"]
PRINT_ARGV = "import json, sys\nprint(json.dumps(sys.argv[1:]))\n"


def job(run_script: str | None = None, run_command: str | None = None) -> JobConfig:
    return JobConfig(run_script=run_script, run_command=run_command)


def run_job(tmp_path: Path, script: str, files: dict[str, str], env: dict[str, str] | None = None):
    """Run a rendered run.sh the way the agent does: `bash ../run.sh` in the work dir."""
    jobdir = tmp_path / "job"
    work = jobdir / "work"
    work.mkdir(parents=True)
    (jobdir / "run.sh").write_text(script)
    for name, text in files.items():
        (work / name).write_text(text)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDSEND_")}
    full_env.update(env or {})
    return subprocess.run(
        ["bash", "../run.sh"], cwd=work, env=full_env, text=True, capture_output=True, timeout=60
    )


def quoted_run_script(path: str) -> str:
    return " ".join(shlex.quote(word) for word in [path, *ARGS])


JOB_CASES = {
    "py": "/home/me/proj/scripts/train model.py",
    "jl": "/home/me/proj/sim.jl",
    "exe": "/home/me/proj/run.sh",
}


@pytest.mark.parametrize("kind", sorted(JOB_CASES))
def test_job_golden_and_quoting(kind: str, tmp_path: Path):
    script = render_job_script(job(quoted_run_script(JOB_CASES[kind])), None, CONFIG)
    check_golden(f"job/{kind}.sh", script)
    name = Path(JOB_CASES[kind]).name
    env = {}
    if kind == "jl":  # real julia cannot be installed here: a shim that prints its argv
        shim_dir = tmp_path / "bin"
        write(shim_dir / "julia", f"#!{sys.executable}\n{PRINT_ARGV}").chmod(0o755)
        env["PATH"] = f"{shim_dir}:{os.environ['PATH']}"
    body = PRINT_ARGV if kind != "exe" else f"#!{sys.executable}\n{PRINT_ARGV}"
    proc = run_job(tmp_path, script, {name: body}, env)
    assert proc.returncode == 0, proc.stderr
    argv = json.loads(proc.stdout)
    assert argv == ([name, *ARGS] if kind == "jl" else ARGS)


def test_job_py_imports_linked_siblings(tmp_path: Path):
    """Files are symlinks into ROOT/files/<sha256>, as the agent links them."""
    store = tmp_path / "files"
    write(store / "aaa", "import helper\nprint(helper.VALUE)\n")
    write(store / "bbb", "VALUE = 'imported from beside the script'\n")
    script = render_job_script(job("/p/main.py"), None, CONFIG)
    work = tmp_path / "job" / "work"
    work.mkdir(parents=True)
    (work.parent / "run.sh").write_text(script)
    (work / "main.py").symlink_to(store / "aaa")
    (work / "helper.py").symlink_to(store / "bbb")
    proc = subprocess.run(["bash", "../run.sh"], cwd=work, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "imported from beside the script"


def test_job_run_command(tmp_path: Path):
    command = "printf '%s\\n' 'a b' '$HOME' \"$CLOUDSEND_MARK\"; exit 4"
    script = render_job_script(job(run_command=command), None, CONFIG)
    check_golden("job/command.sh", script)
    proc = run_job(tmp_path, script, {}, {"CLOUDSEND_MARK": "from env"})
    assert proc.returncode == 4
    assert proc.stdout.splitlines() == ["a b", "$HOME", "from env"]


def test_job_sources_activate(tmp_path: Path):
    rendered = render(EnvironmentConfig(name="e", env_pypi=["six"]))
    script = render_job_script(job("/p/show.py one"), rendered, CONFIG)
    check_golden("job/py_with_env.sh", script)
    assert f"# environment {rendered.env_id}" in script
    envdir = tmp_path / "env"
    shim = write(envdir / "py", f"#!{sys.executable}\nimport sys\nprint('shim', *sys.argv[1:])\n")
    shim.chmod(0o755)
    write(envdir / "activate", f"export CLOUDSEND_PYTHON={shlex.quote(str(shim))}\n")
    proc = run_job(tmp_path, script, {"show.py": ""}, {"CLOUDSEND_ENV_DIR": str(envdir)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "shim show.py one"


def test_job_env_not_ready(tmp_path: Path):
    rendered = render(EnvironmentConfig(name="e", env_pypi=["six"]))
    script = render_job_script(job(run_command="true"), rendered, CONFIG)
    proc = run_job(tmp_path, script, {}, {"CLOUDSEND_ENV_DIR": str(tmp_path / "missing")})
    assert proc.returncode == 1 and "is not ready" in proc.stderr


def test_job_script_priority_and_errors():
    both = render_job_script(job("/a/x.py", "echo ignored"), None, CONFIG)
    assert "x.py" in both and "ignored" not in both
    with pytest.raises(ConfigError, match="neither"):
        render_job_script(job(), None, CONFIG)
    with pytest.raises(ConfigError, match="cannot be parsed"):
        render_job_script(job("x.py 'unterminated"), None, CONFIG)
    assert "./-odd.py" in render_job_script(job("/a/-odd.py"), None, CONFIG)


# ---------------------------------------------------------------- failure reasons


def test_failure_reason_tail_and_headline():
    noise = [f"line {i}" for i in range(50)]
    log = "\n".join(
        ["==> cloudsend [julia] start"]
        + ["cloudsend: julia is not installed on this host; add it with env_aptget or a command"]
        + noise
        + ["cloudsend: bootstrap of environment 'x' failed in step julia (exit code 3)", ""]
    )
    reason = bootstrap_failure_reason(log, lines=5)
    lines = reason.splitlines()
    assert lines[0].startswith("cloudsend: julia is not installed") and lines[1] == "..."
    assert lines[-1].endswith("(exit code 3)") and len(lines) == 7
    err = bootstrap_error("jl-123", log, host="h1", exit_code=3, lines=5)
    assert isinstance(err, BootstrapError)
    assert err.message.startswith("environment jl-123 failed on host h1 (exit code 3): julia is")
    assert err.hint and "julia" in err.hint


def test_failure_reason_cleans_progress_and_colours():
    log = (
        "Downloading 10%\r Downloading 100%\n"
        "\x1b[31mERROR: No matching distribution found for x\x1b[0m\n"
    )
    expected = " Downloading 100%\nERROR: No matching distribution found for x"
    assert bootstrap_failure_reason(log) == expected
    assert "env_pypi" in (bootstrap_error("e", log).hint or "")
    assert bootstrap_failure_reason("") == "(the bootstrap log is empty)"
    assert "bootstrap.log" in (bootstrap_error("e-1", "weird\n").hint or "")
