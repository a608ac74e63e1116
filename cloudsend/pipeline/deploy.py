"""Per-host deployment: the agent, the files its jobs need, and its environments."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from cloudsend.agent import AGENT_PATH, agent_sha256
from cloudsend.pipeline.agent_client import AgentClient
from cloudsend.pipeline.files import FileIndex, sync_files
from cloudsend.providers.base import Host


@dataclass
class DeployReport:
    host: str
    files_sent: int = 0
    bytes_sent: int = 0
    agent_sent: bool = False


def ensure_agent(host: Host) -> bool:
    """Upload the agent when the host's copy differs, then start it. Returns True if uploaded."""
    root = shlex.quote(host.root)
    probe = host.transport.run(
        f"mkdir -p {root} && cd {root} && (sha256sum agent.py 2>/dev/null || true)"
    )
    have = probe.stdout.split()[0] if probe.stdout.strip() else ""
    sent = have != agent_sha256()
    if sent:
        host.transport.put(AGENT_PATH, host.agent)
    AgentClient(host).start(host.cpus)
    return sent


def deploy_host(host: Host, index: FileIndex, needed: set[str]) -> DeployReport:
    report = DeployReport(host.name)
    report.agent_sent = ensure_agent(host)
    report.files_sent, report.bytes_sent = sync_files(host, index, needed)
    return report
