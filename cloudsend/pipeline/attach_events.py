"""The live progress of a detached run as a stream of events, one JSON document a line.

`cloudsend attach --events` prints them on the machine the watcher runs on (a remote maestro);
the laptop's `attach` reads them from one SSH channel and draws them with its own reporter,
so a remote run looks as a local one does: the live line while it runs, the run's table and
exit code at the end. Lines that are not events (a login shell's chatter) are ignored.

    {"event": "progress", "run": 1, "jobs": [JobView...], "activity": [EnvActivity...]}
    {"event": "notice", "message": "..."}        {"event": "phase", "name": "...", "detail": ""}
    {"event": "log", "host": "...", "text": "..."}
    {"event": "alive"}                            nothing changed (sent every HEARTBEAT s)
    {"event": "end", "run": 1, "exit_code": 0, "message": "", "summary": {ui.summary_doc}}

A progress event goes out when a job's state, host, attempt, exit code, reason or fetched flag
changes (not the elapsed seconds alone): the stream stays small for long runs. The heartbeat
also ends the emitter soon after its reader left (its next write fails).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from cloudsend.core import JobState
from cloudsend.pipeline.reporting import EnvActivity, JobView

HEARTBEAT = 5.0  # seconds without an event before an "alive" one


@dataclass(frozen=True)
class Progress:
    run: int | None
    jobs: list[JobView]
    activity: list[EnvActivity] = field(default_factory=list)


@dataclass(frozen=True)
class Notice:
    message: str


@dataclass(frozen=True)
class Phase:
    name: str
    detail: str = ""


@dataclass(frozen=True)
class Log:
    host: str
    text: str


@dataclass(frozen=True)
class Alive:
    pass


@dataclass(frozen=True)
class End:
    run: int | None
    exit_code: int
    message: str = ""  # the error the run ended with (exit_code != 0)
    summary: dict[str, Any] = field(default_factory=dict)  # ui.summary_doc; {}: no run opened


Event = Progress | Notice | Phase | Log | Alive | End

_NAMES: dict[type, str] = {
    Progress: "progress", Notice: "notice", Phase: "phase", Log: "log", Alive: "alive", End: "end",
}


def encode(event: Event) -> str:
    """One line (no newline) for `event`."""
    return json.dumps({"event": _NAMES[type(event)], **asdict(event)}, default=str)


def job_view(doc: dict[str, Any]) -> JobView:
    """A JobView from its JSON form (asdict; the state as its name)."""
    return JobView(
        job_id=str(doc["job_id"]),
        index=int(doc["index"]),
        rep=int(doc["rep"]),
        state=JobState.parse(str(doc["state"])),
        host=doc.get("host"),
        attempt=int(doc.get("attempt") or 0),
        exit_code=doc.get("exit_code"),
        reason=doc.get("reason"),
        fetched=bool(doc.get("fetched")),
        elapsed=doc.get("elapsed"),
    )


def decode(line: str) -> Event | None:
    """The event on `line`; None for anything else (not JSON, not an event, malformed)."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict):
            return None
        kind = doc.get("event")
        if kind == "progress":
            run = doc.get("run")
            return Progress(
                run if isinstance(run, int) else None,
                [job_view(j) for j in doc.get("jobs") or []],
                [EnvActivity(str(a["env"]), str(a["host"]), a.get("started"))
                 for a in doc.get("activity") or []],
            )
        if kind == "notice":
            return Notice(str(doc["message"]))
        if kind == "phase":
            return Phase(str(doc["name"]), str(doc.get("detail") or ""))
        if kind == "log":
            return Log(str(doc["host"]), str(doc["text"]))
        if kind == "alive":
            return Alive()
        if kind == "end":
            run = doc.get("run")
            summary = doc.get("summary")
            return End(
                run if isinstance(run, int) else None,
                int(doc["exit_code"]),
                str(doc.get("message") or ""),
                summary if isinstance(summary, dict) else {},
            )
    except (KeyError, TypeError, ValueError):
        return None
    return None


class LineReader:
    """Bytes in (as they arrive, cut anywhere), events out."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> list[Event]:
        lines = (self._rest + data).split(b"\n")
        self._rest = lines.pop()
        found = (decode(raw.decode("utf-8", "replace")) for raw in lines)
        return [e for e in found if e is not None]


def _changes(jobs: Sequence[JobView]) -> list[tuple[Any, ...]]:
    return [(j.job_id, j.state, j.host, j.attempt, j.exit_code, j.reason, j.fetched) for j in jobs]


class EventReporter:
    """A Reporter (pipeline.reporting) that prints events; `run` is the run they belong to.
    When its reader has gone (the write fails) it ends the process quietly."""

    def __init__(self, out: IO[str] | None = None, heartbeat: float = HEARTBEAT) -> None:
        self.out = out or sys.stdout
        self.run: int | None = None
        self.heartbeat = heartbeat
        self._last: tuple[int | None, list[tuple[Any, ...]], list[EnvActivity]] | None = None
        self._sent = 0.0

    def emit(self, event: Event) -> None:
        try:
            self.out.write(encode(event) + "\n")
            self.out.flush()
        except (BrokenPipeError, ValueError, OSError):  # the reader left (the laptop detached)
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), self.out.fileno())
            raise SystemExit(0) from None
        self._sent = time.monotonic()

    def phase(self, name: str, detail: str = "") -> None:
        self.emit(Phase(name, detail))

    def notice(self, message: str) -> None:
        self.emit(Notice(message))

    def log(self, host: str, text: str) -> None:
        self.emit(Log(host, text))

    def progress(self, jobs: list[JobView], activity: Sequence[EnvActivity] = ()) -> None:
        key = (self.run, _changes(jobs), list(activity))
        if key != self._last:
            self._last = key
            self.emit(Progress(self.run, list(jobs), list(activity)))
        elif time.monotonic() - self._sent >= self.heartbeat:
            self.emit(Alive())

    def end(self, exit_code: int, message: str, summary: dict[str, Any]) -> None:
        self.emit(End(self.run, exit_code, message, summary))

    def close(self) -> None:
        pass
