"""Sending cloudsend itself to the maestro: its own wheel, and a venv there with the wheel's
dependencies installed from the package index.

Content-keyed like environments: the venv lives in `<root>/cloudsend/<version>-<wheel hash>/`
and is used only once its `done` marker exists, written after the install succeeded and
`venv/bin/cloudsend --version` ran. A ship of what is there already costs one SSH round trip
and no upload. Resumable: the wheel is uploaded to a temp name and renamed (a re-ship checks
its hash and re-sends it only when it is missing or wrong), the install runs under a lock on
the maestro (a ship killed mid-install leaves it running there; the next one waits for it),
and an install that died half-way (no marker) is redone from a clean venv.

The wheel is built from the source tree of the cloudsend being run (`pip wheel --no-deps`),
cached on this machine by the hash of that tree's content.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cloudsend
from cloudsend.digest import sha256_file
from cloudsend.errors import ProvisionError
from cloudsend.transport.base import Transport

DEFAULT_ROOT = "~/.cloudsend/maestro"
MIN_PYTHON = (3, 10)  # requires-python of the wheel
# what the wheel is built from (pyproject's packages and force-include)
_TREE = ("cloudsend", "templates", "stacks", "Pulumi.yaml", "pyproject.toml", "README.md")
_MARK = "__cloudsend_ship__"


@dataclass(frozen=True)
class Wheel:
    path: Path
    version: str
    sha256: str

    @property
    def key(self) -> str:
        """The folder name on the maestro: one per version and wheel content."""
        return f"{self.version}-{self.sha256[:16]}"


@dataclass(frozen=True)
class ShipReport:
    """What a ship did: `installed` False means the maestro had it already."""

    venv: str  # the venv's path on the maestro
    root: str  # cloudsend's folder on the maestro, absolute
    installed: bool
    uploaded: int  # wheel bytes sent (0 when the maestro had them)
    round_trips: int
    seconds: float

    @property
    def cloudsend(self) -> str:
        return f"{self.venv}/bin/cloudsend"


# -- the wheel ---------------------------------------------------------------------------------


def source_tree() -> Path:
    """The source tree of the running cloudsend (a checkout or an editable install)."""
    tree = Path(cloudsend.__file__).resolve().parent.parent
    pyproject = tree / "pyproject.toml"
    if pyproject.is_file() and re.search(
        r'^name\s*=\s*"cloudsend"', pyproject.read_text(), re.MULTILINE
    ):
        return tree
    raise ProvisionError(
        f"cannot build cloudsend's wheel for the maestro: no source tree beside {tree}",
        hint="install cloudsend from a checkout (pip install -e .) to use maestro: remote",
    )


def tree_digest(tree: Path) -> str:
    """sha256 of the files the wheel is built from (names and contents, in order)."""
    digest = hashlib.sha256()
    for top in _TREE:
        base = tree / top
        files = sorted(base.rglob("*")) if base.is_dir() else [base]
        for path in files:
            if not path.is_file() or "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            digest.update(str(path.relative_to(tree)).encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()



def build_wheel(cache: Path, tree: Path | None = None) -> Wheel:
    """cloudsend's wheel, built once per source content into `cache/<digest>/`."""
    tree = tree or source_tree()
    folder = cache / tree_digest(tree)[:24]
    found = sorted(folder.glob("cloudsend-*.whl")) if folder.is_dir() else []
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        out = tempfile.mkdtemp(dir=cache, prefix=".build-")
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out]
        if _have("hatchling"):
            cmd.append("--no-build-isolation")  # the build backend is here: no index needed
        done = subprocess.run([*cmd, str(tree)], capture_output=True, text=True)
        built = sorted(Path(out).glob("cloudsend-*.whl"))
        if done.returncode != 0 or not built:
            shutil.rmtree(out, ignore_errors=True)
            raise ProvisionError(
                f"cannot build cloudsend's wheel from {tree}: "
                f"{(done.stderr or done.stdout).strip()[-800:]}",
                hint="`pip wheel --no-deps .` in that folder shows the whole error",
            )
        try:
            os.rename(out, folder)  # atomic: a half-built folder is never seen
        except OSError:  # another process built it meanwhile
            shutil.rmtree(out, ignore_errors=True)
            if not folder.is_dir():
                raise
        found = sorted(folder.glob("cloudsend-*.whl"))
    path = found[-1]
    version = path.name.split("-")[1]
    return Wheel(path=path, version=version, sha256=sha256_file(path))


def _have(module: str) -> bool:
    from importlib.util import find_spec

    return find_spec(module) is not None


# -- on the maestro ----------------------------------------------------------------------------


def _quoted(path: str) -> str:
    """A maestro path for its shell: ~/... becomes "$HOME"/..."""
    if path == "~" or path.startswith("~/"):
        return '"$HOME"' + (("/" + shlex.quote(path[2:])) if path[2:] else "")
    return shlex.quote(path)


shell_path = _quoted  # the same quoting for the laptop's commands in the maestro's run dir


def _folder(wheel: Wheel, extras: tuple[str, ...]) -> str:
    """The venv's folder name: one per version, wheel content and extras (aws: `[aws]`)."""
    return wheel.key + "".join(f"+{extra}" for extra in extras)


def _look_script(root: str, wheel: Wheel, extras: tuple[str, ...] = ()) -> str:
    """One round trip: the venv is ready (`done`), or what is missing: python, the wheel."""
    d = f"{_quoted(root)}/cloudsend/{_folder(wheel, extras)}"
    return (
        f"d={d}; printf '%s\\n' {_MARK}; "
        'if [ -f "$d/done" ]; then printf "done\\n%s\\n" "$d"; exit 0; fi; '
        'printf "todo\\n%s\\n" "$d"; '
        "python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])' 2>/dev/null "
        "|| echo none; "
        f'w="$d"/{shlex.quote(wheel.path.name)}; '
        'if [ -f "$w" ]; then sha256sum < "$w" | cut -d" " -f1; else echo none; fi'
    )


def _install_script(folder: str, wheel: Wheel, extras: tuple[str, ...] = ()) -> str:
    """Under the maestro's lock: a clean venv, the wheel and its dependencies, a check that
    cloudsend runs, then the marker (tmp + rename). Left-over upload temps are removed. Its
    output goes to install.log there (shown when it fails)."""
    d = shlex.quote(folder)
    whl = shlex.quote(wheel.path.name)
    wanted = shlex.quote(f"[{','.join(extras)}]" if extras else "")
    inner = (
        "set -e; cd \"$1\"; "
        "[ -f done ] && exit 0; "
        # to a log, not the channel: an install whose ship was killed goes on to the end
        "exec > install.log 2>&1; "
        "rm -rf venv ./*.part-*; "
        "python3 -m venv venv; "
        "venv/bin/python -m pip install -q --disable-pip-version-check "
        "--no-input \"./$2$3\"; "
        "venv/bin/cloudsend --version; "
        "echo \"$2\" > done.tmp; mv -f done.tmp done"
    )
    return (
        f"mkdir -p {d} && flock {d}/.lock sh -c {shlex.quote(inner)} ship {d} {whl} {wanted}"
    )


@dataclass(frozen=True)
class ShipPlan:
    """What a ship still has to do, from the look's answer (`plan_ship`)."""

    folder: str  # <root>/cloudsend/<key>, absolute
    upload: bool  # the wheel is missing there, or not this wheel (a torn or foreign file)
    install: bool  # no `done` marker: the venv is made (again, from clean) under the lock


def plan_ship(answer: str, wheel: Wheel, name: str = "the maestro") -> ShipPlan:
    """The look's answer (`_look_script`) as a plan. Only the `done` marker (written last, by
    rename, after `cloudsend --version` ran) makes a venv ready: a venv dir, a log or an
    upload temp left by a killed ship count for nothing. The wheel counts when its sha256 is
    this wheel's: a half-sent one never has the final name (put writes a temp, then
    renames), and one that does with other bytes is sent again."""
    lines = answer.split(_MARK + "\n")[-1].splitlines()
    if len(lines) < 2 or lines[0] not in ("done", "todo"):
        raise ProvisionError(f"{name}: unexpected answer {answer[-300:]!r}")
    folder = lines[1]
    if lines[0] == "done":
        return ShipPlan(folder, upload=False, install=False)
    python, remote_sha = (lines[2:4] + ["none", "none"])[:2]
    found = None if python == "none" else tuple(int(p) for p in python.split("."))
    if found is None or found < MIN_PYTHON:
        need = ".".join(map(str, MIN_PYTHON))
        raise ProvisionError(
            f"maestro {name}: cloudsend needs python3 >= {need} there, found "
            f"{'none' if python == 'none' else python}",
            hint="install python3 (with venv: apt-get install python3-venv) on the maestro",
        )
    return ShipPlan(folder, upload=remote_sha != wheel.sha256, install=True)


def ship(
    transport: Transport, wheel: Wheel, root: str = DEFAULT_ROOT, extras: tuple[str, ...] = ()
) -> ShipReport:
    """Make `<root>/cloudsend/<key>/venv` on the maestro hold this cloudsend (see above),
    with its `extras` (an aws maestro: what provider aws needs there)."""
    start = time.monotonic()
    res = transport.run(
        _look_script(root, wheel, extras), what="look for cloudsend on the maestro"
    )
    plan = plan_ship(res.stdout, wheel, transport.name)
    folder = plan.folder
    venv = f"{folder}/venv"
    absolute_root = folder[: -len(f"/cloudsend/{_folder(wheel, extras)}")]
    if not plan.install:
        return ShipReport(venv, absolute_root, False, 0, 1, time.monotonic() - start)
    trips, uploaded = 1, 0
    if plan.upload:
        transport.put(wheel.path, f"{folder}/{wheel.path.name}")
        trips, uploaded = trips + 1, wheel.path.stat().st_size
    done = transport.run(
        _install_script(folder, wheel, extras),
        check=False,
        timeout=1800,
        what="install cloudsend on the maestro",
    )
    if not done.ok:
        log = transport.run(f"tail -n 15 {shlex.quote(folder)}/install.log", check=False)
        raise ProvisionError(
            f"cannot install cloudsend on the maestro {transport.name} "
            f"(exit code {done.exit_code}):\n"
            + "\n".join(t for t in (done.tail(5), log.stdout.strip()) if t),
            hint="the maestro needs python3-venv and access to the package index (PyPI); "
            "run again to resume",
        )
    return ShipReport(venv, absolute_root, True, uploaded, trips + 1, time.monotonic() - start)
