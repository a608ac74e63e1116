"""Talks to the host agent through a transport: one command, one JSON document back."""

from __future__ import annotations

import json
import logging
import shlex
import time
from typing import Any

from cloudsend.errors import TransportError
from cloudsend.providers.base import Host

log = logging.getLogger(__name__)

_BOOT = "import sys; sys.path.insert(0, sys.argv[2]); import agent; sys.exit(agent.main())"


class AgentClient:
    def __init__(self, host: Host) -> None:
        self.host = host

    def command(self, *args: str) -> str:
        """The shell command that runs the agent with these arguments on the host."""
        h = self.host
        # Imported rather than run as a script so its compiled code is cached in
        # ROOT/__pycache__: every call (status polls included) starts ~14 ms faster.
        return " ".join(shlex.quote(a) for a in (h.python, "-c", _BOOT, "--root", h.root, *args))

    def _call(
        self, *args: str, stdin: str | None = None, timeout: float | None = 120
    ) -> dict[str, Any]:
        h = self.host
        command = self.command(*args)
        began = time.monotonic()
        result = h.transport.run(command, stdin=stdin, timeout=timeout, check=False)
        log.debug(
            "agent %s on %s: exit %d in %.0f ms",
            args[0], h.name, result.exit_code, (time.monotonic() - began) * 1000,
        )
        try:
            doc = json.loads(result.stdout) if result.stdout.strip() else {}
        except json.JSONDecodeError:
            doc = {}
        if not result.ok or not isinstance(doc, dict) or "error" in doc:
            error = doc.get("error") if isinstance(doc, dict) else None
            detail = error or result.tail()
            raise TransportError(
                f"agent on host {h.name!r} failed running {args[0]!r}: {detail}",
                hint="run with --debug; the agent log is agent.log in the host's root dir",
            )
        return doc

    def start(self, slots: int) -> dict[str, Any]:
        return self._call("start", "--slots", str(slots))

    def submit(self, envs: list[dict[str, Any]], jobs: list[dict[str, Any]]) -> dict[str, Any]:
        return self._call("submit", stdin=json.dumps({"envs": envs, "jobs": jobs}))

    def status(self, since: int | None = None, wait: float = 0) -> dict[str, Any]:
        args = ["status"]
        if since is not None and wait > 0:
            args += ["--since", str(since), "--wait", str(wait)]
        return self._call(*args, timeout=wait + 60)

    def cancel(self, job_ids: list[str] | None = None) -> dict[str, Any]:
        return self._call("cancel", *(job_ids if job_ids else ["--all"]))

    def collect(
        self, out: str, want: dict[str, int], since: int | None = None, wait: float = 0
    ) -> dict[str, Any]:
        """One round: long-poll status, then pack the wanted jobs that are final."""
        args = ["collect", "--out", out]
        if since is not None and wait > 0:
            args += ["--since", str(since), "--wait", str(wait)]
        return self._call(*args, stdin=json.dumps(want), timeout=wait + 60)

    def pack(self, out: str, job_ids: list[str]) -> dict[str, Any]:
        return self._call("pack", "--out", out, *job_ids)

    def stop(self, kill_jobs: bool = False) -> dict[str, Any]:
        return self._call("stop", *(["--kill-jobs"] if kill_jobs else []))
