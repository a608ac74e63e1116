"""Watching hosts: one thread per host long-polls its agent and fetches what finishes.

The main thread only applies the events to the store, so SQLite sees one writer at a time and
the report stays consistent.
"""

from __future__ import annotations

import queue
import shlex
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudsend.pipeline.agent_client import AgentClient
from cloudsend.pipeline.fetch import fetch_jobs
from cloudsend.providers.base import Host

FINAL = ("DONE", "ABORTED")


@dataclass
class HostEvent:
    host: str
    status: dict[str, Any] | None = None
    fetched: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    error: BaseException | None = None
    finished: bool = False
    log: str = ""


class HostWatcher(threading.Thread):
    """Follows the jobs `expected` (job_id → attempt) on one host until all are final and home."""

    def __init__(
        self,
        host: Host,
        expected: dict[str, int],
        fetched: set[str],
        results_dir: Path,
        events: queue.Queue[HostEvent],
        stop: threading.Event,
        poll_wait: float,
        stream_logs: bool = False,
    ) -> None:
        super().__init__(name=f"watch-{host.name}", daemon=True)
        self.host = host
        self.expected = dict(expected)
        self.fetched = set(fetched)
        self.results_dir = results_dir
        self.events = events
        self.stop_event = stop
        self.poll_wait = poll_wait
        self.stream_logs = stream_logs
        self._log_offsets: dict[str, int] = {}
        self._log_closed: set[str] = set()

    def _done(self) -> bool:
        return all(job in self.fetched for job in self.expected)

    def _stream_env_logs(self, envs: dict[str, Any]) -> bool:
        """print_deploy: send new bootstrap log bytes. Returns True while a build is going on."""
        building = False
        for env_id, env in envs.items():
            if env_id in self._log_closed or not env.get("started"):
                continue
            offset = self._log_offsets.get(env_id, 0)
            path = shlex.quote(f"{self.host.root}/envs/{env_id}/bootstrap.log")
            got = self.host.transport.run(f"tail -c +{offset + 1} {path}", check=False)
            if got.stdout:
                self._log_offsets[env_id] = offset + len(got.stdout.encode())
                self.events.put(HostEvent(self.host.name, log=f"[{env_id}] " + got.stdout))
            if env.get("state") in ("READY", "FAILED"):
                self._log_closed.add(env_id)
            else:
                building = True
        return building

    def run(self) -> None:
        client = AgentClient(self.host)
        version: int | None = None
        wait = self.poll_wait
        try:
            while not self.stop_event.is_set() and not self._done():
                status = client.status(since=version, wait=wait if version else 0)
                version = status.get("version")
                self.events.put(HostEvent(self.host.name, status=status))
                if self.stream_logs:
                    # log growth does not bump the agent's version: poll faster while building
                    building = self._stream_env_logs(status.get("envs", {}))
                    wait = 0.5 if building else self.poll_wait
                jobs = status.get("jobs", {})
                ready = [
                    job
                    for job, attempt in self.expected.items()
                    if job not in self.fetched
                    and job in jobs
                    and jobs[job].get("attempt") == attempt
                    and jobs[job].get("state") in FINAL
                ]
                if ready:
                    got = fetch_jobs(self.host, ready, self.results_dir)
                    self.fetched.update(ready)
                    attempts = {job: self.expected[job] for job in ready}
                    self.events.put(HostEvent(self.host.name, fetched=got, attempts=attempts))
        except BaseException as exc:  # handed to the main thread, which decides
            self.events.put(HostEvent(self.host.name, error=exc))
        finally:
            self.events.put(HostEvent(self.host.name, finished=True))
