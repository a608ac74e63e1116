"""Per-host deployment: the agent, the files its jobs need, and its environments."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import cast

from cloudsend.agent import AGENT_FILES, agent_sha256
from cloudsend.agent.protocol import OpenAnswer
from cloudsend.pipeline.agent_client import AgentClient
from cloudsend.pipeline.files import FileIndex, sync_files
from cloudsend.providers.base import Host
from cloudsend.providers.roots import CLAIMED, claim_command, claim_outcome, refusal_error

_STARTED = "__cloudsend_agent_started__"


@dataclass
class DeployReport:
    host: str
    files_sent: int = 0
    bytes_sent: int = 0


@dataclass
class Opened:
    """A host made ready for a run by ensure_agent."""

    listing: set[str]  # the content-addressed files it already has
    answer: OpenAnswer  # its agent's start, what it cancelled if asked, its status


def ensure_agent(host: Host, project: str, cancel_all: bool = False) -> Opened:
    """Make sure the host runs the current agent, in one round trip when it already has it.

    The same command claims the host root for `project` (providers.roots: a folder that is
    not cloudsend's is refused with a ProvisionError, never written into), lists the
    content-addressed files the host already has (the submit step then needs not ask again)
    and, when the host's agent (agent.py and protocol.py) is the current one, opens it (agent
    `open`: started, every job cancelled if `cancel_all` — a new run's first step — and its
    status, which the run's first reconcile then needs not ask again).
    """
    root = shlex.quote(host.root)
    client = AgentClient(host)
    opening = client.command(
        "open", "--slots", str(host.cpus), *(["--cancel-all"] if cancel_all else [])
    )
    want = agent_sha256()
    probe = host.transport.run(
        f"cs_claim=$({claim_command(host.root, project)}); "
        'printf "%s\\n" "$cs_claim"; '
        f'case "$cs_claim" in {CLAIMED}*) '
        f"mkdir -p {root}/files && cd {root} && ls -1 files && "
        f'{{ [ "$(cat agent.py protocol.py 2>/dev/null | sha256sum | cut -c1-64)" != {want} ] || '
        f"{{ echo {_STARTED}; {opening}; }}; }};; esac",
        what="checking the host's cloudsend folder and agent",
        check=False,  # the agent's own error, if it answers one, is an AgentError
    )
    lines = probe.stdout.splitlines()[1:]
    if _STARTED not in lines:
        probe.raise_for_status()  # failed before the agent answered: not the agent's error
    refused = claim_outcome(host.name, host.root, probe.stdout)
    if refused is not None:
        raise refusal_error(refused)
    if _STARTED in lines:  # the listing, the marker, then the agent's answer
        at = lines.index(_STARTED)
        listing = {line.strip() for line in lines[:at] if line.strip()}
        text = "\n".join(lines[at + 1 :])
        return Opened(listing, cast(OpenAnswer, client.answer("open", text, probe)))
    for path in AGENT_FILES:  # agent.py and the protocol.py it imports, side by side
        host.transport.put(path, f"{host.root}/{path.name}")
    listing = {line.strip() for line in lines if line.strip()}
    return Opened(listing, client.open(host.cpus, cancel_all))


def deploy_host(
    host: Host, index: FileIndex, needed: set[str], present: set[str] | None = None
) -> DeployReport:
    """The files a host's new jobs need (its agent was ensured by Session.deploy)."""
    report = DeployReport(host.name)
    report.files_sent, report.bytes_sent = sync_files(host, index, needed, present)
    return report
