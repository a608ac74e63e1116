"""Per-host deployment: the agent, the files its jobs need, and its environments."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from cloudsend.agent import AGENT_FILES, agent_sha256
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


def ensure_agent(host: Host, project: str) -> set[str]:
    """Make sure the host runs the current agent, in one round trip when it already has it.

    The same command claims the host root for `project` (providers.roots: a folder that is
    not cloudsend's is refused with a ProvisionError, never written into), lists the
    content-addressed files the host already has (the submit step then needs not ask again)
    and, when the host's agent (agent.py and protocol.py) is the current one, starts it.
    Returns that listing.
    """
    root = shlex.quote(host.root)
    start = AgentClient(host).command("start", "--slots", str(host.cpus))
    want = agent_sha256()
    probe = host.transport.run(
        f"cs_claim=$({claim_command(host.root, project)}); "
        'printf "%s\\n" "$cs_claim"; '
        f'case "$cs_claim" in {CLAIMED}*) '
        f"mkdir -p {root}/files && cd {root} && ls -1 files && "
        f'{{ [ "$(cat agent.py protocol.py 2>/dev/null | sha256sum | cut -c1-64)" != {want} ] || '
        f"{{ echo {_STARTED}; {start} >/dev/null; }}; }};; esac",
        what="checking the host's cloudsend folder and agent",
    )
    refused = claim_outcome(host.name, host.root, probe.stdout)
    if refused is not None:
        raise refusal_error(refused)
    lines = {line.strip() for line in probe.stdout.splitlines()[1:] if line.strip()}
    if _STARTED not in lines:
        for path in AGENT_FILES:  # agent.py and the protocol.py it imports, side by side
            host.transport.put(path, f"{host.root}/{path.name}")
        AgentClient(host).start(host.cpus)
    return lines - {_STARTED}


def deploy_host(
    host: Host, index: FileIndex, needed: set[str], present: set[str] | None = None
) -> DeployReport:
    """The files a host's new jobs need (its agent was ensured by Session.deploy)."""
    report = DeployReport(host.name)
    report.files_sent, report.bytes_sent = sync_files(host, index, needed, present)
    return report
