"""Process and instance states, with the names of the original CloudSend tool."""

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
    ANY = 127

    @classmethod
    def from_name(cls, name: str) -> CloudSendProcessState:
        try:
            return cls[name.upper()]
        except KeyError:
            return cls.UNKNOWN


FINAL_STATES = CloudSendProcessState.DONE | CloudSendProcessState.ABORTED


class CloudSendInstanceState(str, Enum):
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    TERMINATING = "TERMINATING"
    TERMINATED = "TERMINATED"
    UNKNOWN = "UNKNOWN"
