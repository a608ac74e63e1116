"""Job and instance states, with the names of the original CloudSend tool.

`JobState` is the one job-state vocabulary: the store keeps its values as text, the pipeline,
CLI and API compare against its members. `CloudSendProcessState` is the seed API's view of the
same states as flags, so callers can wait on ``DONE | ABORTED``.
"""

from __future__ import annotations

from enum import Enum, IntFlag


class CloudSendProcessState(IntFlag):
    """State of one job (process). An IntFlag so callers can wait on ``DONE | ABORTED``."""

    UNKNOWN = 1
    WAIT = 2  # its environment is being set up
    QUEUE = 4  # waiting for a free CPU slot
    IDLE = 8  # about to start
    RUNNING = 16
    DONE = 32
    ABORTED = 64
    CANCELLED = 128  # cancelled by the user (cancel, down): final, not a failure
    ANY = 255

    @classmethod
    def from_name(cls, name: str) -> CloudSendProcessState:
        try:
            return cls[name.upper()]
        except KeyError:
            return cls.UNKNOWN


class JobState(str, Enum):
    """A job's state. Each member's value is its name, so a member compares (and hashes)
    equal to the plain string: ``JobState.DONE == "DONE"``, ``"DONE" in FINAL``, and JSON
    writes ``"DONE"``."""

    UNKNOWN = "UNKNOWN"  # no host has reported on it yet
    WAIT = "WAIT"  # its environment is being set up
    QUEUE = "QUEUE"  # waiting for a free CPU slot
    IDLE = "IDLE"  # about to start (the seed's state; agents never report it)
    RUNNING = "RUNNING"
    DONE = "DONE"  # exited 0
    ABORTED = "ABORTED"  # failed or killed (an output missing counts as failed)
    CANCELLED = "CANCELLED"  # cancelled by the user (cancel, down): final, not retried

    def __str__(self) -> str:  # "DONE", not "JobState.DONE", in f-strings and rich Text
        return self.value

    @classmethod
    def parse(cls, state: JobState | CloudSendProcessState | str) -> JobState:
        """A state from an agent, the store or the API: a name in any case or a single flag.

        BUILDING (an environment being built) is WAIT for the jobs waiting on it; anything
        else that is not one state (ANY, a combination of flags, a name we do not know) is
        UNKNOWN, never an error: an agent of another version may say more than we know.
        """
        if isinstance(state, JobState):
            return state
        if isinstance(state, CloudSendProcessState):
            return _FROM_FLAG.get(state, cls.UNKNOWN)
        if not isinstance(state, str):  # a broken status document: say so, do not crash
            return cls.UNKNOWN
        key = state.strip().upper()
        if key == "BUILDING":
            return cls.WAIT
        try:
            return cls(key)
        except ValueError:
            return cls.UNKNOWN

    @property
    def process_state(self) -> CloudSendProcessState:
        return CloudSendProcessState[self.name]

    @property
    def is_final(self) -> bool:
        """DONE, ABORTED or CANCELLED: the agent will not change it again (unless
        resubmitted)."""
        return self in FINAL


_FROM_FLAG = {CloudSendProcessState[s.name]: s for s in JobState}

# The states an agent never leaves by itself. Holds plain strings too ("DONE" in FINAL).
FINAL: frozenset[JobState] = frozenset({JobState.DONE, JobState.ABORTED, JobState.CANCELLED})
FINAL_STATES = (
    CloudSendProcessState.DONE | CloudSendProcessState.ABORTED | CloudSendProcessState.CANCELLED
)

def in_states(state: JobState, states: CloudSendProcessState) -> bool:
    """Whether a job's state is one of the flags `states`. CANCELLED matches ABORTED too:
    the seed's callers wait on ``DONE | ABORTED`` for "finished", a cancelled job included."""
    flag = state.process_state
    if flag == CloudSendProcessState.CANCELLED and states & CloudSendProcessState.ABORTED:
        return True
    return bool(flag & states)


# The reason an agent gives a job it cancelled (it reports such a job ABORTED: the wire
# protocol keeps the agent's own states; cloudsend tells a cancel from a failure by it).
CANCEL_REASON = "cancelled"


def reported_state(state: object, reason: object) -> JobState:
    """The state of a job as an agent reports it: ABORTED with the cancel reason is
    CANCELLED (a user's decision, not a failure); anything else as JobState.parse says."""
    parsed = JobState.parse(state) if isinstance(state, str) else JobState.UNKNOWN
    if parsed == JobState.ABORTED and reason == CANCEL_REASON:
        return JobState.CANCELLED
    return parsed


class CloudSendInstanceState(str, Enum):
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    TERMINATING = "TERMINATING"
    TERMINATED = "TERMINATED"
    UNKNOWN = "UNKNOWN"
