"""Talks to the host agent through a transport: one command, one JSON document back."""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

from cloudsend import phases
from cloudsend.agent.protocol import (
    CancelAnswer,
    CollectAnswer,
    EnvSpec,
    JobSpec,
    OpenAnswer,
    PackAnswer,
    StartAnswer,
    StatusDoc,
    StopAnswer,
    SubmitAnswer,
    SubmitRequest,
)
from cloudsend.errors import AgentError, TransportError
from cloudsend.providers.base import Host
from cloudsend.transport.base import Result

log = logging.getLogger(__name__)

_BOOT = "import sys; sys.path.insert(0, sys.argv[2]); import agent; sys.exit(agent.main())"


def _jobs(job_ids: list[str]) -> str:
    """Job ids for a message: the first few, and how many more."""
    more = f" and {len(job_ids) - 3} more" if len(job_ids) > 3 else ""
    return ", ".join(job_ids[:3]) + more


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
        self,
        *args: str,
        stdin: str | None = None,
        timeout: float | None = 120,
        what: str | None = None,
    ) -> dict[str, Any]:
        """Run the agent once and return its JSON document.

        TransportError: the agent could not be run (no connection, ssh's exit 255, no python
        or no agent there: a non-zero exit without a document). AgentError: it ran and
        answered an error document (any exit code), or exited 0 with something that is not
        one JSON object."""
        h = self.host
        command = self.command(*args)
        began = time.monotonic()
        # messages say what the call was for (`what`), never the internal command line
        doing = what or f"the agent's {args[0]!r} call"
        with phases.span(f"agent call: {args[0]}"):
            result = h.transport.run(
                command, stdin=stdin, timeout=timeout, check=False, what=doing
            )
        log.debug(
            "agent %s on %s: exit %d in %.0f ms",
            args[0], h.name, result.exit_code, (time.monotonic() - began) * 1000,
        )
        return self._document(args[0], result.stdout, lambda: result)

    def _document(
        self, name: str, stdout: str, ended: Callable[[], Result], streamed: bool = False
    ) -> dict[str, Any]:
        """The agent's answer in `stdout`; `ended()` says how its command ended. `streamed`:
        the command is still sending (an archive follows), so a document is taken as it is
        and `ended()` is asked only when there is none."""
        doc: object = None
        if stdout.strip():
            try:
                doc = json.loads(stdout)
            except json.JSONDecodeError:
                doc = None
        failed = f"agent on host {self.host.name!r} failed running {name!r}"
        hint = "run with --debug; the agent log is agent.log in the host's root dir"
        if isinstance(doc, dict) and "error" in doc:
            raise AgentError(f"{failed}: {str(doc['error'])[:2000]}", hint=hint)
        if streamed and isinstance(doc, dict):
            return doc
        result = ended()
        if not result.ok:
            if isinstance(doc, dict):  # a document but a failure exit: not the protocol
                raise AgentError(f"{failed}: exit {result.exit_code}: {result.tail()}", hint=hint)
            raise TransportError(f"{failed}: {result.tail()}", hint=hint)
        if not isinstance(doc, dict):
            raise AgentError(
                f"{failed}: its answer is not a JSON object: {stdout[:200]!r}", hint=hint
            )
        return doc

    def start(self, slots: int) -> StartAnswer:
        return cast(
            StartAnswer, self._call("start", "--slots", str(slots), what="starting the agent")
        )

    def open(self, slots: int, cancel_all: bool = False) -> OpenAnswer:
        """A run's first call: start, cancel every job (an earlier run's) if asked, status."""
        args = ["open", "--slots", str(slots)] + (["--cancel-all"] if cancel_all else [])
        return cast(OpenAnswer, self._call(*args, what="starting the agent"))

    def answer(self, name: str, text: str, result: Result) -> dict[str, Any]:
        """The agent's answer `text`, printed within a longer shell command that ended as
        `result`: errors as for a call (an error document is an AgentError)."""
        return self._document(name, text, lambda: result)

    def submit(self, envs: list[EnvSpec], jobs: list[JobSpec]) -> SubmitAnswer:
        request: SubmitRequest = {"envs": envs, "jobs": jobs}
        ids = [j["job_id"] for j in jobs]
        what = f"submitting {_jobs(ids)}" if ids else "submitting environments"
        return cast(SubmitAnswer, self._call("submit", stdin=json.dumps(request), what=what))

    def status(self, since: int | None = None, wait: float = 0) -> StatusDoc:
        args = ["status"]
        if since is not None and wait > 0:
            args += ["--since", str(since), "--wait", str(wait)]
        return cast(StatusDoc, self._call(*args, timeout=wait + 60, what="a job status check"))

    def cancel(self, job_ids: list[str] | None = None) -> CancelAnswer:
        what = f"cancelling {_jobs(job_ids)}" if job_ids else "cancelling every job"
        return cast(
            CancelAnswer, self._call("cancel", *(job_ids if job_ids else ["--all"]), what=what)
        )

    def collect(
        self, out: str, want: dict[str, int], since: int | None = None, wait: float = 0
    ) -> CollectAnswer:
        """One round: long-poll status, then pack the wanted jobs that are final."""
        args = ["collect", "--out", out]
        if since is not None and wait > 0:
            args += ["--since", str(since), "--wait", str(wait)]
        what = f"watching {_jobs(list(want))}" if want else "a job status check"
        return cast(
            CollectAnswer,
            self._call(*args, stdin=json.dumps(want), timeout=wait + 60, what=what),
        )

    @contextlib.contextmanager
    def collecting(
        self, out: str, want: dict[str, int], since: int | None = None, wait: float = 0
    ) -> Iterator[tuple[CollectAnswer, Iterator[bytes]]]:
        """`collect` with its archive on the same channel (`--stream`): one round trip per
        round, no file to fetch after. Yields the answer and the archive's bytes (empty when
        `pack` is null), to be read before the block ends. Errors as for every call."""
        h = self.host
        args = ["collect", "--stream", "--out", out]
        if since is not None and wait > 0:
            args += ["--since", str(since), "--wait", str(wait)]
        what = f"watching {_jobs(list(want))}" if want else "a job status check"
        with (
            phases.span("agent call: collect"),
            h.transport.output(
                self.command(*args), stdin=json.dumps(want), timeout=wait + 60, what=what
            ) as output,
        ):
            chunks = output.chunks()
            head = bytearray()
            rest = b""
            for chunk in chunks:  # the JSON line first
                end = chunk.find(b"\n")
                if end < 0:
                    head += chunk
                    continue
                head += chunk[:end]
                rest = chunk[end + 1 :]
                break
            text = head.decode("utf-8", "replace")
            doc = self._document(args[0], text, output.finish, streamed=True)

            def archive() -> Iterator[bytes]:
                if rest:
                    yield rest
                yield from chunks

            yield cast(CollectAnswer, doc), archive()
            if doc.get("pack"):
                done = output.finish()  # the archive read whole: how the command ended
                if not done.ok:
                    raise TransportError(
                        f"agent on host {h.name!r} failed sending the results archive: "
                        f"{done.tail()}",
                        hint="run again: the jobs are packed again next round",
                    )

    def pack(self, out: str, job_ids: list[str]) -> PackAnswer:
        what = f"packing the outputs of {_jobs(job_ids)}"
        return cast(PackAnswer, self._call("pack", "--out", out, *job_ids, what=what))

    def stop(self, kill_jobs: bool = False) -> StopAnswer:
        args = ["--kill-jobs"] if kill_jobs else []
        return cast(StopAnswer, self._call("stop", *args, what="stopping the agent"))
