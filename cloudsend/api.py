"""The Python API, with the original CloudSend tool's lifecycle.

    client = cloudsend.provider.get_client("cloudsend.yaml")
    await client.start()
    await client.deploy()
    await client.run()
    await client.wait(CloudSendProcessState.DONE | CloudSendProcessState.ABORTED)
    await client.fetch_results("out")
    await client.finalize()

`SyncClient` offers the same methods for plain scripts. Nothing here prints unless given a
reporter (the CLI passes one that draws progress).
"""

from __future__ import annotations

import asyncio
import codecs
import sys
from pathlib import Path
from typing import Any, TextIO

from cloudsend.config import load_config
from cloudsend.config.models import Config
from cloudsend.core import FINAL_STATES, CloudSendProcessState, JobState
from cloudsend.pipeline import operations
from cloudsend.pipeline.logs import write_log
from cloudsend.pipeline.reporting import DownReport, JobView, Reporter, RunSummary
from cloudsend.pipeline.session import Session
from cloudsend.textsafe import TerminalFilter, clean


def _print_log(session: Session, job_id: str, stream: str, out: TextIO) -> None:
    """The tail of a job's log as text (streamed), ending with a newline."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    last = "\n"
    # to a terminal, what the job wrote must not drive it (titles, clear-screen, colours)
    shown = TerminalFilter() if _is_terminal(out) else None

    def write(data: bytes, final: bool = False) -> None:
        nonlocal last
        if shown is not None:
            data = shown.feed(data, final)
        text = decoder.decode(data, final)
        if text:
            out.write(text)
            last = text[-1]

    write_log(session, job_id, write, stream)
    write(b"", final=True)
    if last != "\n":
        out.write("\n")


def _is_terminal(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream
        return False


def _load(config: Config | dict[str, Any] | str | Path) -> Config:
    return config if isinstance(config, Config) else load_config(config)


class SyncClient:
    """Blocking lifecycle: start, deploy, run, wait, fetch_results, finalize, down."""

    def __init__(
        self,
        config: Config | dict[str, Any] | str | Path,
        reporter: Reporter | None = None,
        *,
        poll_wait: float = 2.0,
    ) -> None:
        self.config = _load(config)
        self.session = Session(self.config, reporter, poll_wait=poll_wait)

    def start(self, reset: bool = False, resume: bool = False) -> None:
        self.session.start(reset=reset, resume=resume)

    def deploy(self) -> None:
        self.session.deploy()

    def run(self, retry_cancelled: bool = False) -> int:
        """Submit what is left to run; CANCELLED jobs too with retry_cancelled."""
        return self.session.run(retry_cancelled=retry_cancelled)

    def wait(
        self, states: CloudSendProcessState = FINAL_STATES, timeout: float | None = None
    ) -> list[JobView]:
        return self.session.wait(states, timeout)

    def wakeup(self) -> None:
        """Reconnect after a pause (laptop asleep, cloudsend restarted): refresh from hosts."""
        if self.session.run_id is None:
            self.session.attach()
        self.session.reconcile()

    def get_jobs_states(self) -> dict[str, CloudSendProcessState]:
        self.session.reconcile()
        return {v.job_id: v.state.process_state for v in self.session.views()}

    def summary(self) -> RunSummary:
        return self.session.summary()

    def print_jobs_summary(self, file: TextIO | None = None) -> None:
        out = file or sys.stdout
        counts = self.summary().counts()
        print(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "no jobs", file=out)
        for v in self.session.views():
            print(f"  {v.job_id:40} {v.state:8} {v.host or '-'}", file=out)

    def print_aborted_logs(self, file: TextIO | None = None) -> None:
        out = file or sys.stdout
        for v in self.session.views():
            if v.state == JobState.ABORTED:
                reason = clean(v.reason or "") if _is_terminal(out) else v.reason or ""
                print(f"--- {v.job_id} (exit {v.exit_code}): {reason}", file=out)
                _print_log(self.session, v.job_id, "stderr", out)

    def fetch_results(self, out_dir: str | Path | None = None) -> Path:
        return operations.fetch_results(
            self.session, Path(out_dir) if out_dir is not None else None
        )

    def finalize(self) -> None:
        self.session.finalize()

    def down(self, keep: bool = False, force: bool = False) -> DownReport:
        """Tear the hosts down; unfinished jobs are cancelled (recorded CANCELLED) without
        asking (the CLI asks first: session.unfinished_jobs())."""
        return self.session.down(keep=keep, force=force)

    def close(self) -> None:
        self.session.close()


class Client:
    """The asynchronous lifecycle of the original tool; each call runs in a worker thread."""

    def __init__(
        self,
        config: Config | dict[str, Any] | str | Path,
        reporter: Reporter | None = None,
        *,
        poll_wait: float = 2.0,
    ) -> None:
        self.sync = SyncClient(config, reporter, poll_wait=poll_wait)

    async def start(self, reset: bool = False) -> None:
        await asyncio.to_thread(self.sync.start, reset)

    async def deploy(self) -> None:
        await asyncio.to_thread(self.sync.deploy)

    async def run(self, retry_cancelled: bool = False) -> int:
        return await asyncio.to_thread(self.sync.run, retry_cancelled)

    async def wait(
        self, states: CloudSendProcessState = FINAL_STATES, timeout: float | None = None
    ) -> list[JobView]:
        return await asyncio.to_thread(self.sync.wait, states, timeout)

    async def wakeup(self) -> None:
        await asyncio.to_thread(self.sync.wakeup)

    async def get_jobs_states(self) -> dict[str, CloudSendProcessState]:
        return await asyncio.to_thread(self.sync.get_jobs_states)

    async def print_jobs_summary(self) -> None:
        await asyncio.to_thread(self.sync.print_jobs_summary)

    async def print_aborted_logs(self) -> None:
        await asyncio.to_thread(self.sync.print_aborted_logs)

    async def fetch_results(self, out_dir: str | Path | None = None) -> Path:
        return await asyncio.to_thread(self.sync.fetch_results, out_dir)

    async def finalize(self) -> None:
        await asyncio.to_thread(self.sync.finalize)

    async def down(self, keep: bool = False, force: bool = False) -> DownReport:
        return await asyncio.to_thread(self.sync.down, keep, force)

    def close(self) -> None:
        self.sync.close()
