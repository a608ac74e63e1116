"""Turn a failed bootstrap's log into a reason a user can act on.

Bootstrap scripts end a failure with `cloudsend: <what went wrong>` lines on stderr (see
templates/bootstrap/base.sh.j2). The pipeline gets the log (or its tail from the agent's
status) and needs one readable paragraph: the most specific cloudsend line first, then the
last lines of output, cleaned of progress-bar carriage returns and colour codes.
"""

from __future__ import annotations

import re

from cloudsend.errors import BootstrapError

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
# The generic line the EXIT trap prints; the line before it is usually the useful one.
_GENERIC = re.compile(r"^cloudsend: bootstrap of environment .* failed in step ")

# (pattern in the log, hint for the user): first match wins.
_HINTS: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(r"julia is not installed on this host"),
        "install julia on the host image, or add it to the environment "
        "(env_conda: [julia] from conda-forge, or a command that installs it)",
    ),
    (
        re.compile(r"venv module is missing|python3 is not installed"),
        "add python3-venv (and python3) to the environment's env_aptget",
    ),
    (
        re.compile(r"env_aptget needs root|env_aptget needs apt-get"),
        "run as root or give the host user passwordless sudo, or drop env_aptget",
    ),
    (
        re.compile(r"no conda engine on this host"),
        "install micromamba on the host, or let the host reach PyPI to install py-rattler",
    ),
    (
        re.compile(r"Unable to locate package|has no installation candidate"),
        "check the package names in env_aptget (`apt-cache search NAME` on the host's OS)",
    ),
    (
        re.compile(r"No matching distribution found|Could not find a version"),
        "check the package names and versions in env_pypi",
    ),
    (
        re.compile(r"cannot solve|failed to solve|nothing provides|conda solve/install", re.I),
        "check the packages and channels in env_conda / env_conda_channels",
    ),
]


def _clean_lines(log_text: str) -> list[str]:
    lines = []
    for raw in log_text.split("\n"):  # not splitlines(): it would split on the \r too
        # pip/apt progress bars rewrite a line with \r: only the last state is worth showing.
        line = _ANSI.sub("", raw.rsplit("\r", 1)[-1]).rstrip()
        lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _headline(lines: list[str]) -> str | None:
    """The most specific `cloudsend:` line: the last one that is not the generic trap line."""
    generic = None
    for line in reversed(lines):
        if line.startswith("cloudsend: "):
            if not _GENERIC.match(line):
                return line
            generic = generic or line
    return generic


def bootstrap_failure_reason(log_text: str, lines: int = 20) -> str:
    """The last `lines` lines of a bootstrap log, cleaned; the cloudsend message is kept even
    when more output followed it (it goes first, then `...`, then the tail)."""
    cleaned = _clean_lines(log_text)
    if not cleaned:
        return "(the bootstrap log is empty)"
    tail = cleaned[-max(lines, 1) :]
    headline = _headline(cleaned)
    if headline and headline not in tail:
        tail = [headline, "...", *tail]
    return "\n".join(tail)


def bootstrap_hint(log_text: str) -> str | None:
    for pattern, hint in _HINTS:
        if pattern.search(log_text):
            return hint
    return None


def bootstrap_error(
    env_id: str,
    log_text: str,
    *,
    host: str | None = None,
    exit_code: int | None = None,
    lines: int = 20,
) -> BootstrapError:
    """A BootstrapError for a failed environment: headline, log tail and a fix when known."""
    cleaned = _clean_lines(log_text)
    where = f" on host {host}" if host else ""
    code = f" (exit code {exit_code})" if exit_code is not None else ""
    headline = _headline(cleaned)
    summary = headline[len("cloudsend: ") :] if headline else "see the log below"
    reason = bootstrap_failure_reason(log_text, lines)
    indented = "\n".join(f"    {line}" for line in reason.splitlines())
    hint = bootstrap_hint(log_text) or (
        f"the full log is envs/{env_id}/bootstrap.log under the host's cloudsend root"
    )
    return BootstrapError(
        f"environment {env_id} failed{where}{code}: {summary}\n{indented}", hint=hint
    )
