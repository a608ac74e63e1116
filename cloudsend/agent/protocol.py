"""The agent protocol: the documents cloudsend and the host agent exchange (docs/internals.md).

Stdlib only and Python 3.8+: it is uploaded beside agent.py and imported by it on every host.
Every agent call prints one JSON document; these TypedDicts declare them. Type checkers see
typing.TypedDict; at run time the classes are plain dict subclasses with the same (string)
annotations, because importing typing would cost every agent call a few ms (the agent avoids
it for the same reason). Nothing here validates: the agent checks what it is sent
(validate_submit), cloudsend trusts what its own agent answers.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypedDict
else:

    class TypedDict(dict):
        """Run-time stand-in: keeps the class's annotations (as strings) and `total`."""

        def __init_subclass__(cls, total: bool = True, **kwargs: object) -> None:
            super().__init_subclass__(**kwargs)
            cls.__total__ = total


# Job states (IDLE is the store's, never reported by an agent) and environment states.
WAIT, QUEUE, RUNNING, DONE, ABORTED = "WAIT", "QUEUE", "RUNNING", "DONE", "ABORTED"
JOB_STATES = (WAIT, QUEUE, RUNNING, DONE, ABORTED)
FINAL_STATES = (DONE, ABORTED)
BUILDING, READY, FAILED = "BUILDING", "READY", "FAILED"
ENV_STATES = (BUILDING, READY, FAILED)


# ---- what cloudsend sends -------------------------------------------------------------------


class EnvSpec(TypedDict):
    env_id: str
    script: str  # run as `bash bootstrap.sh` in envs/<env_id>/


class _JobSpecRequired(TypedDict):
    job_id: str
    script: str  # written as run.sh, run with cwd = the work dir


class JobSpec(_JobSpecRequired, total=False):
    attempt: int  # >= 1
    env_id: str | None
    cpus: int  # >= 1
    links: dict[str, str]  # relative path in the work dir -> absolute path on the host
    copy: bool  # copy the links' sources instead of symlinking them
    outputs: list[str]  # relative paths inside the work dir
    rerun: bool  # a DONE job runs again (a new run under recover: false)


# The agent fills in what a JobSpec leaves out with these.
JOB_DEFAULTS: dict[str, object] = {
    "attempt": 1,
    "cpus": 1,
    "env_id": None,
    "links": {},
    "copy": False,
    "outputs": [],
}


class SubmitRequest(TypedDict):
    envs: list[EnvSpec]
    jobs: list[JobSpec]


# ---- what the agent answers -----------------------------------------------------------------


class SubmitAnswer(TypedDict):
    accepted: list[str]  # env ids then job ids
    skipped: list[str]


class StartAnswer(TypedDict):
    pid: int
    started: bool
    slots: int


class OpenAnswer(TypedDict):
    """`open`: a run's first call on a host (start, cancel an earlier run's jobs, status)."""

    start: StartAnswer
    cancelled: list[str] | None  # None: not asked to cancel
    status: StatusDoc


class AgentInfo(TypedDict):
    pid: int
    slots: int
    slots_used: int
    running: bool


class JobStatus(TypedDict):
    state: str  # one of JOB_STATES
    attempt: int
    exit_code: int | None
    reason: str | None
    started: float | None  # epoch seconds
    ended: float | None
    pid: int | None  # the job's process group


class EnvStatus(TypedDict):
    state: str  # one of ENV_STATES
    exit_code: int | None
    log_tail: str
    reason: str | None
    started: float | None
    ended: float | None
    pid: int | None


# The fields a status document carries per job / env, in the order the agent writes them.
JOB_STATUS_KEYS = tuple(JobStatus.__annotations__)
ENV_STATUS_KEYS = tuple(EnvStatus.__annotations__)


class StatusDoc(TypedDict):
    version: int
    agent: AgentInfo
    envs: dict[str, EnvStatus]
    jobs: dict[str, JobStatus]


class PackAnswer(TypedDict):
    path: str  # absolute path of the archive on the host
    jobs: list[str]
    missing: dict[str, list[str]]  # job_id -> declared outputs that do not exist
    refused: dict[str, list[str]]  # job_id -> outputs resolving outside the work dir


class CollectAnswer(TypedDict):
    status: StatusDoc
    pack: PackAnswer | None  # None: none of the wanted jobs is final


class CancelAnswer(TypedDict):
    cancelled: list[str]


class StopAnswer(TypedDict):
    stopped: bool
    pid: int | None
    killed: list[str]


class ErrorAnswer(TypedDict):
    error: str  # the agent ran and refused or failed: exit code 2 (usage) or 1
