"""Nothing depends on the working directory: a run from a folder that was then removed (as a
test suite leaves behind, or a shell in a deleted checkout) loads configs given by absolute
path, and says clearly what is wrong when a path needs the missing directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from cloudsend.config import Config

CONFIGS = Path(__file__).parent / "configs"

# Runs its argv[2:] (a Python snippet, or `-m cloudsend ...`) from a directory it removes first.
FROM_REMOVED_CWD = """
import os, sys, tempfile
gone = tempfile.mkdtemp(dir=sys.argv[1])
os.chdir(gone)
os.rmdir(gone)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""

LOADING = """
import json, sys
from pathlib import Path
from cloudsend.config import Config, load_config
from cloudsend.errors import ConfigError

config = load_config(sys.argv[1])
out = {"base_dir": str(config.base_dir), "state_dir": str(config.state_dir)}
out["direct"] = str(Config(base_dir=Path("/srv/p")).state_dir)
out["dict_with_base_dir"] = str(load_config({"jobs": []}, base_dir=Path(sys.argv[2])).base_dir)
for name, source in (("dict", {"jobs": []}), ("relative", "cloudsend.yaml")):
    try:
        load_config(source)
    except ConfigError as exc:
        out[name] = [exc.message, exc.hint]
print(json.dumps(out))
"""


def project(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copy(CONFIGS / "quickstart.yaml", folder / "cloudsend.yaml")
    for name in ("scripts", "data", "env"):
        shutil.copytree(CONFIGS / name, folder / name)
    return folder


def from_removed_cwd(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", FROM_REMOVED_CWD, str(tmp_path), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_COLOR": "1"},
    )


def test_config_loads_in_a_removed_cwd_and_relative_paths_say_why_not(tmp_path: Path) -> None:
    folder = project(tmp_path)
    done = from_removed_cwd(tmp_path, "-c", LOADING, str(folder / "cloudsend.yaml"), str(folder))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["base_dir"] == str(folder) and out["state_dir"] == str(folder / ".cloudsend")
    assert out["direct"] == "/srv/p/.cloudsend"
    assert out["dict_with_base_dir"] == str(folder)
    for name in ("dict", "relative"):  # one clear message, not a FileNotFoundError
        message, hint = out[name]
        assert "the current directory no longer exists" in message, out[name]
        assert "absolute path" in hint


def test_cli_validate_by_absolute_path_from_a_removed_cwd(tmp_path: Path) -> None:
    config = project(tmp_path) / "cloudsend.yaml"
    done = from_removed_cwd(tmp_path, "-m", "cloudsend", "validate", str(config))
    assert done.returncode == 0, done.stderr
    assert f"{config}: ok (2 environment(s), 4 job run(s))" in done.stdout
    assert "Traceback" not in done.stderr

    done = from_removed_cwd(tmp_path, "-m", "cloudsend", "validate", "cloudsend.yaml")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "the current directory no longer exists" in done.stderr + done.stdout


def test_a_config_built_in_code_names_its_folder() -> None:
    """No cwd default: the folder relative paths resolve against is always said."""
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="base_dir"):
        Config()  # type: ignore[call-arg]
    assert Config(base_dir=Path("/srv/p")).state_dir == Path("/srv/p/.cloudsend")
