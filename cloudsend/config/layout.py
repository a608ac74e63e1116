"""Where a project's files live on this machine: one folder per project, so two configs in
one folder never share a state store, local hosts or results.

    <config dir>/.cloudsend/known_hosts                 ssh host keys pinned (shared by the folder)
    <config dir>/.cloudsend/projects/<project>/state.db  the project's runs, jobs, hosts
    <config dir>/.cloudsend/projects/<project>/hosts/    the local provider's hosts
    <config dir>/.cloudsend/projects/<project>/config    which config file owns the project
    <config dir>/results/<project>/run-N/<job>/          results (results_folder below)

Two config files with the same project name in one folder would share all of it: the second
is refused (`claim_project`) until it gets a `project:` of its own. A folder laid out by an
older cloudsend (`.cloudsend/state.db`, `.cloudsend/hosts/`) keeps being used, as it is, by
the project its local hosts are marked for (`legacy_owner`); its results stay in results/run-N.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cloudsend.config.models import Config
from cloudsend.errors import StateError

MARKER = ".cloudsend-root"  # the file naming the project a host root belongs to (roots.py)
OWNER_FILE = "config"


def marker_text(project: str) -> str:
    return f"cloudsend root of project {project}"


@dataclass(frozen=True)
class ProjectPaths:
    """The project's folders and files on this machine (see the module doc)."""

    project: str
    state_dir: Path  # .cloudsend/projects/<project>/ (the legacy layout: .cloudsend/)
    results_root: Path  # results/<project>/ (legacy: results/)
    legacy: bool = False

    @property
    def state_db(self) -> Path:
        return self.state_dir / "state.db"

    @property
    def hosts_dir(self) -> Path:
        return self.state_dir / "hosts"

    @property
    def tmp_dir(self) -> Path:
        return self.state_dir / "tmp"

    @property
    def owner_file(self) -> Path:
        return self.state_dir / OWNER_FILE

    def results_dir(self, run_id: int) -> Path:
        return self.results_root / results_folder(run_id)


def results_folder(run_id: int, job_id: str | None = None) -> PurePosixPath:
    """The one rule for where results land, under results/<project>/: `run-N/<job id>/`.

    N is the run that ran the job: `cloudsend run` goes on with the latest run until
    `run --reset` (or `recover: false`) opens the next one. A job's id changes when the job
    (its command, files or environment) is edited, so an edited job's results land in the same
    run-N/ as the old version's, in a folder of their own; the old version's folder is left
    as it is. Unchanged jobs keep their id, and their results are not fetched again.
    """
    if run_id < 1:
        raise ValueError(f"run ids start at 1, got {run_id}")
    folder = PurePosixPath(f"run-{run_id}")
    return folder if job_id is None else folder / job_id


def legacy_owner(marker_lines: list[str]) -> str | None:
    """The project an older layout's local hosts (.cloudsend/hosts/*/.cloudsend-root) were
    marked for, when they all name the same one; else None."""
    prefix = marker_text("")
    names = {line[len(prefix) :] for line in marker_lines if line.startswith(prefix)}
    return names.pop() if len(names) == 1 else None


def _legacy_markers(base: Path) -> list[str]:
    lines = []
    with contextlib.suppress(OSError):
        for host in sorted((base / "hosts").iterdir()):
            with contextlib.suppress(OSError):
                lines.append((host / MARKER).read_text().splitlines()[0].strip())
    return lines


def project_paths(config: Config) -> ProjectPaths:
    """The project's paths: its own folder under .cloudsend/projects/, or the folder an older
    cloudsend laid out, while that folder's local hosts are marked for this project."""
    project = config.project_name
    base = config.state_dir
    own = base / "projects" / project
    if (
        not own.exists()
        and (base / "state.db").exists()
        and legacy_owner(_legacy_markers(base)) == project
    ):
        return ProjectPaths(project, base, config.base_dir / "results", legacy=True)
    return ProjectPaths(project, own, config.base_dir / "results" / project)


def owner_conflict(
    project: str, mine: str, recorded: str | None, recorded_exists: bool
) -> str | None:
    """Why config file `mine` may not use `project`'s state, whose owner file names
    `recorded`: None when it may (no owner yet, the same file, or an owner file that no longer
    exists, i.e. a renamed config)."""
    if recorded is None or recorded == mine or not recorded_exists:
        return None
    return (
        f"{mine} and {recorded} in this folder both name the project {project!r}: they "
        "would share its state, hosts and results"
    )


def claim_project(config: Config, paths: ProjectPaths) -> None:
    """Record which config file owns the project's folder (first use), or refuse a second
    config file of the same project name in the same folder (StateError)."""
    if config.source is None or paths.legacy:
        return  # a config built in code (API) names no file; the legacy layout has no owner
    try:
        mine = os.path.relpath(config.source, config.base_dir)
    except ValueError:
        mine = str(config.source)
    try:
        recorded: str | None = paths.owner_file.read_text().strip() or None
    except FileNotFoundError:
        recorded = None
    except OSError as exc:
        raise StateError(f"cannot read {paths.owner_file}: {exc}") from exc
    exists = recorded is not None and (config.base_dir / recorded).exists()
    why = owner_conflict(paths.project, mine, recorded, exists)
    if why is not None:
        raise StateError(
            why,
            hint=f"give {mine} a project name of its own (project: ...), or remove "
            f"{paths.owner_file} if {recorded} is no longer used",
        )
    if recorded != mine:
        try:
            paths.owner_file.write_text(mine + "\n")
        except OSError as exc:
            raise StateError(f"cannot write {paths.owner_file}: {exc}") from exc


def _private_dirs(top: Path, leaf: Path) -> None:
    """`top` and every folder from it down to `leaf`, each 0700 whatever the umask."""
    chain = [leaf, *leaf.parents]
    for path in reversed(chain[: chain.index(top) + 1] if top in chain else [leaf]):
        path.mkdir(exist_ok=True, mode=0o700)
        if path.stat().st_mode & 0o077:
            path.chmod(0o700)


def open_project(config: Config) -> ProjectPaths:
    """The project's paths, its state folder made (private), and claimed for this config
    file (claim_project). Raises StateError."""
    paths = project_paths(config)
    try:
        config.base_dir.mkdir(parents=True, exist_ok=True)
        _private_dirs(config.state_dir, paths.state_dir)
    except OSError as exc:
        raise StateError(
            f"cannot create the state directory {paths.state_dir}: {exc.strerror or exc}",
            hint="check the permissions of the directory that holds your config file",
        ) from exc
    claim_project(config, paths)
    return paths
