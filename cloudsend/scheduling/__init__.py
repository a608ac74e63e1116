"""Scheduling: pure functions from config to what runs where (no I/O).

- :mod:`.expand`: jobs × ``repeat`` → :class:`JobUnit` with stable ids; instances × ``number``
  (and ``explode``) → one entry per machine.
- :mod:`.assign`: units → hosts by CPU slots (``random`` | ``multi_knapsack``).
- :mod:`.transitions`: agent state names → :class:`~cloudsend.core.CloudSendProcessState`, and
  the resume decision (what to fetch, submit, watch).
"""

from cloudsend.scheduling.assign import (
    STRATEGIES,
    HostSlots,
    Strategy,
    assign,
    check_fits,
    knapsack_waves,
    waves,
)
from cloudsend.scheduling.expand import (
    JobUnit,
    expand_jobs,
    explode_instances,
    job_config_hash,
    job_slug,
    max_job_cpus,
    resolve_env_name,
)
from cloudsend.scheduling.transitions import (
    Decision,
    HostView,
    JobSnapshot,
    ResumePlan,
    agent_state_to_process_state,
    as_state,
    decide,
    is_final,
    plan_resume,
)

__all__ = [
    "STRATEGIES",
    "Decision",
    "HostSlots",
    "HostView",
    "JobSnapshot",
    "JobUnit",
    "ResumePlan",
    "Strategy",
    "agent_state_to_process_state",
    "as_state",
    "assign",
    "check_fits",
    "decide",
    "expand_jobs",
    "explode_instances",
    "is_final",
    "job_config_hash",
    "job_slug",
    "knapsack_waves",
    "max_job_cpus",
    "plan_resume",
    "resolve_env_name",
    "waves",
]
