"""Watching hosts: one thread per host long-polls its agent and fetches what finishes.

The main thread (pipeline.monitor) applies the events to the store, so SQLite sees one writer
at a time and the report stays consistent. A watcher never gives up on an unreachable host:
transport errors are reported as health events and retried with backoff; deciding that a host
is *lost* is the monitor's job (it knows when the host last answered). An agent that answers
with an error (AgentError) is reachable: reported as such, retried, and after
AGENT_ERROR_LIMIT failures in a row raised to the monitor, which ends the wait with it.
"""

from __future__ import annotations

import queue
import shlex
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from cloudsend import phases
from cloudsend.core import FINAL
from cloudsend.errors import AgentError, CloudsendError
from cloudsend.pipeline.agent_client import AgentClient
from cloudsend.pipeline.fetch import Fetched, unpack
from cloudsend.providers.base import Host

AGENT_ERROR_LIMIT = 4  # the same call answered with an error this many times in a row: give up


@dataclass
class HostEvent:
    host: str
    status: dict[str, Any] | None = None  # a protocol.StatusDoc
    fetched: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    outputs: Fetched | None = None  # with `fetched`: what the agent could not pack
    attempts: dict[str, int] = field(default_factory=dict)
    error: BaseException | None = None  # not a transport problem: a bug to surface
    unreachable: str | None = None  # a transport error, with its message
    agent_error: str | None = None  # the agent answered with an error: reachable, not lost
    finished: bool = False
    log: str = ""
    at: float = 0.0  # time.monotonic() when the status call was issued
    alive: bool = False  # the host answered without a status: a download advanced or ended


class HostWatcher(threading.Thread):
    """Follows the jobs `expected` (job_id → attempt) on one host until all are final and home."""

    def __init__(
        self,
        host: Host,
        results_dir: Path,
        tmp_dir: Path,
        events: queue.Queue[HostEvent],
        stop: threading.Event,
        poll_wait: float,
        stream_logs: bool = False,
    ) -> None:
        super().__init__(name=f"watch-{host.name}", daemon=True)
        self.host = host
        self.results_dir = results_dir
        self.tmp_dir = tmp_dir
        self.events = events
        self.stop_event = stop
        self.poll_wait = poll_wait
        self.stream_logs = stream_logs
        self._lock = threading.Lock()
        self._expected: dict[str, int] = {}
        self._fetched: set[str] = set()
        self.keep_watching = False  # a lost host: keep polling after its own work is done
        self._closed = False
        self._log_offsets: dict[str, int] = {}
        self._log_closed: set[str] = set()

    def expect(self, jobs: dict[str, int], fetched: set[str] | None = None) -> bool:
        """Watch these jobs too. False when this watcher has already finished: start another."""
        with self._lock:
            if self._closed:
                return False
            self._expected.update(jobs)
            self._fetched -= set(jobs)
            self._fetched |= fetched or set()
            return True

    def forget(self, job_ids: set[str]) -> None:
        """These jobs moved to another host (or attempt): no longer fetched from here."""
        with self._lock:
            for job in job_ids:
                self._expected.pop(job, None)

    def _done(self) -> bool:
        with self._lock:
            if self.stop_event.is_set() or (
                not self.keep_watching and all(j in self._fetched for j in self._expected)
            ):
                self._closed = True  # from now on expect() refuses: no job can be missed
            return self._closed

    def _ready(self, jobs: dict[str, Any]) -> dict[str, int]:
        with self._lock:
            return {
                job: attempt
                for job, attempt in self._expected.items()
                if job not in self._fetched
                and job in jobs
                and jobs[job].get("attempt") == attempt
                and str(jobs[job].get("state")) in FINAL
            }

    def _stream_env_logs(self, envs: dict[str, Any]) -> bool:
        """print_deploy: send new bootstrap log bytes. Returns True while a build is going on."""
        building = False
        for env_id, env in envs.items():
            if env_id in self._log_closed or not env.get("started"):
                continue
            offset = self._log_offsets.get(env_id, 0)
            path = shlex.quote(f"{self.host.root}/envs/{env_id}/bootstrap.log")
            got = self.host.transport.run(
                f"tail -c +{offset + 1} {path}",
                check=False,
                what=f"reading the build log of {env_id}",
            )
            if got.stdout:
                self._log_offsets[env_id] = offset + len(got.stdout.encode())
                self.events.put(HostEvent(self.host.name, log=f"[{env_id}] " + got.stdout))
            if env.get("state") in ("READY", "FAILED"):
                self._log_closed.add(env_id)
            else:
                building = True
        return building

    def _wanted(self) -> dict[str, int]:
        with self._lock:
            return {j: a for j, a in self._expected.items() if j not in self._fetched}

    def _heartbeat(self, every: float = 1.0) -> Callable[[int], None]:
        """A download's progress callback. Bytes arriving prove the host answers, which the
        monitor is told (at most every `every` s): an archive that takes longer than
        host_lost_after to come home must not get a healthy host declared lost."""
        last = time.monotonic()

        def beat(_received: int) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last >= every:
                last = now
                self.events.put(HostEvent(self.host.name, alive=True))

        return beat

    def _round(self, client: AgentClient, version: int | None, wait: float) -> tuple[int, float]:
        """One round trip: wait for a change, get the status and the finished jobs' outputs."""
        out = f"{self.host.root}/outbox/collect-{uuid.uuid4().hex}.tar.gz"
        issued = time.monotonic()
        with client.collecting(
            out, self._wanted(), since=version, wait=wait if version is not None else 0
        ) as (doc, archive):
            status = cast(dict[str, Any], doc["status"])
            self.events.put(HostEvent(self.host.name, status=status, at=issued))
            packed = doc.get("pack")
            if packed:
                ready = self._ready(status.get("jobs", {}))
                jobs = [j for j in packed.get("jobs", []) if j in ready]
                with phases.span("watch: archive unpack (streamed with the answer), per host"):
                    got = unpack(
                        self.host,
                        archive,
                        jobs,
                        self.results_dir,
                        self.tmp_dir,
                        progress=self._heartbeat(),
                    )
        if self.stream_logs:
            # log growth does not bump the agent's version: poll faster while building
            wait = 0.5 if self._stream_env_logs(status.get("envs", {})) else self.poll_wait
        if packed:
            with self._lock:
                self._fetched.update(jobs)
            problems = Fetched(
                got,
                {j: v for j, v in (packed.get("missing") or {}).items() if j in ready},
                {j: v for j, v in (packed.get("refused") or {}).items() if j in ready},
            )
            self.events.put(
                HostEvent(
                    self.host.name,
                    fetched=got,
                    outputs=problems,
                    attempts={j: ready[j] for j in jobs},
                    alive=True,
                )
            )
        return int(status.get("version", 0)), wait

    def run(self) -> None:
        client = AgentClient(self.host)
        version: int | None = None
        wait = self.poll_wait
        failures = agent_failures = 0
        try:
            while not self._done():
                try:
                    version, wait = self._round(client, version, wait)
                    failures = agent_failures = 0
                except AgentError as exc:
                    # it answers, with an error: a bug or a broken root, which retrying
                    # forever would hide; a few tries ride out a passing one
                    agent_failures += 1
                    if agent_failures >= AGENT_ERROR_LIMIT:
                        raise
                    version = None
                    self.events.put(HostEvent(self.host.name, agent_error=exc.message))
                    self.stop_event.wait(min(0.25 * 2**agent_failures, 5.0))
                except CloudsendError as exc:
                    # unreachable (or a download failing): report, back off, try again
                    failures += 1
                    version = None
                    self.events.put(HostEvent(self.host.name, unreachable=str(exc)))
                    self.stop_event.wait(min(0.25 * 2**failures, 5.0))
        except BaseException as exc:  # a bug or a failing agent: the monitor re-raises it
            self.events.put(HostEvent(self.host.name, error=exc))
        finally:
            self.events.put(HostEvent(self.host.name, finished=True))
