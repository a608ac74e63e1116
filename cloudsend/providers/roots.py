"""A host root is a folder cloudsend made and marked as its own; only such a folder is removed.

The root (where the agent, files, envs and jobs live on a host) comes from the config: the
project name or `hosts[].root`. The config loader refuses unsafe names, and this is the second
line of defence: the first deploy writes `<root>/.cloudsend-root` naming the project, refusing
a folder that already holds anything else; `down` and `run --reset` remove a root only when its
marker names this project, and report any other folder instead of deleting it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from cloudsend.config.layout import MARKER, marker_text
from cloudsend.errors import ProvisionError
from cloudsend.providers.base import Host

# What the shell snippets print (one of these on the first line of their output).
CLAIMED = "__cloudsend_root_ok__"
NOT_OURS = "__cloudsend_root_not_ours__"
OTHER_PROJECT = "__cloudsend_root_other__"
REMOVED = "__cloudsend_root_removed__"
ABSENT = "__cloudsend_root_absent__"


# What a root made by a cloudsend from before markers holds (the agent's own layout): such a
# folder, with agent.py in it and nothing else, is adopted. A user's folder has other names.
LEGACY_NAMES = (
    *("agent.py", "agent.json", "agent.pid", "agent.lock", "agent.log", "version"),
    *("status.json", "wake", "inbox", "files", "envs", "jobs", "outbox", "__pycache__"),
)


def _quoted(root: str, project: str) -> tuple[str, str, str]:
    return shlex.quote(root), shlex.quote(f"{root}/{MARKER}"), shlex.quote(marker_text(project))


def _legacy_test(r: str) -> str:
    """Shell test: `r` is a marker-less root of an older cloudsend (LEGACY_NAMES only)."""
    names = "|".join(n.replace(".", "\\.") for n in LEGACY_NAMES)
    return f"[ -f {r}/agent.py ] && [ -z \"$(ls -A {r} | grep -vxE '{names}')\" ]"


def claim_command(root: str, project: str) -> str:
    """Shell: make `root` cloudsend's (mkdir + marker) unless it is a non-empty folder with no
    marker (a root of an older cloudsend, holding only the agent's layout, is adopted), or the
    marker names another project. Prints one of CLAIMED / NOT_OURS / OTHER_PROJECT (then the
    marker's line); exits 0 in every case."""
    r, m, want = _quoted(root, project)
    mark = f"printf '%s\\n' {want} > {m} && echo {CLAIMED}"
    return (
        "umask 077; "  # the root and its marker are the login user's alone
        f"if [ -f {m} ]; then IFS= read -r cs_mark < {m} || true; "
        f'if [ "$cs_mark" = {want} ]; then echo {CLAIMED}; '
        f'else echo {OTHER_PROJECT}; printf "%s\\n" "$cs_mark"; fi; '
        f"elif [ -d {r} ] && {_legacy_test(r)}; then {mark}; "
        f'elif [ -e {r} ] && [ -n "$(ls -A {r} 2>/dev/null)" ]; then echo {NOT_OURS}; '
        f"elif [ -e {r} ] && [ ! -d {r} ]; then echo {NOT_OURS}; "
        f"else mkdir -p {r} && chmod 700 {r} && {mark}; fi"
    )


def remove_command(root: str, project: str) -> str:
    """Shell: `rm -rf root` only when its marker names `project` (or it is an older
    cloudsend's marker-less root). Prints REMOVED, ABSENT (also for an empty folder cloudsend
    never used: left as it is), NOT_OURS or OTHER_PROJECT; exits 0 in every case."""
    r, m, want = _quoted(root, project)
    return (
        f"if [ -f {m} ]; then IFS= read -r cs_mark < {m} || true; "
        f'if [ "$cs_mark" = {want} ]; then rm -rf {r} && echo {REMOVED}; '
        f"else echo {OTHER_PROJECT}; fi; "
        f"elif [ -d {r} ] && [ ! -L {r} ] && {_legacy_test(r)}; then rm -rf {r} && echo {REMOVED}; "
        f'elif [ -d {r} ] && [ ! -L {r} ] && [ -z "$(ls -A {r})" ]; then echo {ABSENT}; '
        f"elif [ -e {r} ] || [ -L {r} ]; then echo {NOT_OURS}; "
        f"else echo {ABSENT}; fi"
    )


@dataclass(frozen=True)
class RootRefused:
    """Why a root was not claimed or not removed (shown to the user, never silently)."""

    host: str
    root: str
    other: bool  # True: another project's marker; False: a folder cloudsend did not make

    @property
    def what(self) -> str:
        if self.other:
            return f"{self.root} belongs to another cloudsend project"
        return f"{self.root} exists and was not made by cloudsend (no {MARKER} in it)"

    @property
    def message(self) -> str:
        return f"host {self.host}: {self.what}"


def claim_outcome(host: str, root: str, output: str) -> RootRefused | None:
    """What `claim_command` printed: None when the root is ours now."""
    first = output.strip().splitlines()[0] if output.strip() else ""
    if first == CLAIMED:
        return None
    if first == OTHER_PROJECT:
        return RootRefused(host, root, other=True)
    if first == NOT_OURS:
        return RootRefused(host, root, other=False)
    raise ProvisionError(
        f"host {host}: could not create cloudsend's folder {root}: "
        f"{output.strip()[-300:] or 'no answer'}",
        hint="check that the login user may write there (or set hosts[].root)",
    )


def refusal_error(refused: RootRefused) -> ProvisionError:
    """The error for a root cloudsend will not use."""
    return ProvisionError(
        f"{refused.message}; refusing to use it, since `cloudsend down` would delete it",
        hint="set hosts[].root (or project:) to a new or empty folder; if it is an old "
        "cloudsend folder you no longer need, remove it yourself",
    )


def removal_refused(host: str, root: str, output: str) -> str | None:
    """What `remove_command` printed: None when the root is gone, else why it was kept."""
    first = output.strip().splitlines()[0] if output.strip() else ""
    if first in (REMOVED, ABSENT):
        return None
    if first in (NOT_OURS, OTHER_PROJECT):
        refused = RootRefused(host, root, other=first == OTHER_PROJECT)
        return f"{refused.what}; left in place (remove it yourself if you are sure)"
    return f"could not remove {root}: {output.strip()[-200:] or 'no answer'}"


def remove_root(host: Host, project: str) -> str | None:
    """Remove `host`'s root if it is marked for `project` (remove_command, one round trip);
    None when it is gone, else why it was kept. Transport errors are the caller's."""
    what = f"removing the project's folder {host.root}"
    out = host.transport.run(remove_command(host.root, project), timeout=120, what=what).stdout
    return removal_refused(host.name, host.root, out)


def host_root(configured: str | None, home: str, project: str) -> str:
    """The absolute root on a host: `hosts[].root` (already checked by the config, `~` being
    the login user's home) or ~/.cloudsend/<project>."""
    if configured is None:
        return f"{home.rstrip('/')}/.cloudsend/{project}"
    if configured == "~" or configured.startswith("~/"):
        return home.rstrip("/") + configured[1:]
    return configured
