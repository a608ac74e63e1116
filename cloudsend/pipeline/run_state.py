"""The run's own bookkeeping while it is watched, owned by the Session (one place).

The store holds what must survive cloudsend (jobs, attempts, fetches, host health); this holds
what one `cloudsend run` learns while it watches: which hosts it declared lost or auto_stop
stopped, what it re-queued from a lost host (to settle if that host returns), how often a job
died with its host, and when this run last (re)submitted each job. The decision functions of
scheduling.reactions read it; only the owner's carrying-out of their actions writes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RunState:
    lost: set[str] = field(default_factory=set)  # hosts declared lost (jobs moved elsewhere)
    stopped: set[str] = field(default_factory=set)  # hosts auto_stop powered off
    # lost host → {job_id: the attempt it had there}, to settle if the host comes back
    requeued: dict[str, dict[str, int]] = field(default_factory=dict)
    casualties: dict[str, int] = field(default_factory=dict)  # job → re-queues after restarts
    submitted_at: dict[str, float] = field(default_factory=dict)  # job → last (re)submission

    def unavailable(self) -> set[str]:
        """Hosts that must not be handed work: lost or stopped."""
        return self.lost | self.stopped
