"""One error hierarchy. Every error carries a hint telling the user how to fix it.

The CLI is the only place that turns these into a message and an exit code.
"""

from __future__ import annotations


class CloudsendError(Exception):
    """Base of every error cloudsend reports to a user (never shown as a traceback)."""

    exit_code = 1
    kind = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class ConfigError(CloudsendError):
    """The config file is wrong: names the key, the file and line, and how to fix it."""

    exit_code = 2
    kind = "config error"


class UsageError(CloudsendError):
    """A command-line argument names nothing (an unknown or ambiguous job, ...)."""

    exit_code = 2
    kind = "usage error"


class ProvisionError(CloudsendError):
    """Machines could not be created, found or destroyed."""

    exit_code = 3
    kind = "provision error"


class TransportError(CloudsendError):
    """A host could not be reached or a command/file transfer on it failed."""

    exit_code = 4
    kind = "transport error"


class AgentError(CloudsendError):
    """A host's agent ran and answered with an error (or an answer that is not its protocol):
    the host is reachable, so this never counts toward host_lost_after (TransportError does)."""

    exit_code = 8
    kind = "agent error"


class BootstrapError(CloudsendError):
    """An environment could not be set up on a host."""

    exit_code = 5
    kind = "bootstrap error"


class JobError(CloudsendError):
    """One or more jobs failed (ABORTED)."""

    exit_code = 6
    kind = "job error"


class StateError(CloudsendError):
    """The local state store is unreadable or inconsistent."""

    exit_code = 7
    kind = "state error"


class BudgetError(CloudsendError):
    """The run's time budget ran out: hosts reached their eco_life with jobs unfinished."""

    exit_code = 9
    kind = "time budget"


EXIT_CODES_HELP = """Exit codes:
  0  success (every job DONE, or CANCELLED by you; status, logs, fetch: what was asked is shown)
  1  unexpected error, or not confirmed (up, run, down: nothing was done)
  2  config or usage error (bad key, type, path; unknown job, bad option)
  3  provision error (machines)
  4  transport error (host unreachable)
  5  bootstrap error (environment setup failed)
  6  job error (some jobs ABORTED: failed, or a declared output missing)
  7  state error (.cloudsend/state.db; no run recorded yet; results not fetched)
  8  agent error (a host's agent answered with an error)
  9  time budget ran out (eco_life ended with jobs unfinished)
  130 interrupted (Ctrl-C); run again to resume"""
