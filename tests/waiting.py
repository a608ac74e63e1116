"""Waiting on a condition instead of sleeping a fixed time: a fixed sleep is too short on a
loaded machine and wasted time on an idle one."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    cond: Callable[[], T],
    timeout: float,
    what: str | Callable[[], str],
    *,
    every: float = 0.05,
    check: bool = True,
) -> T:
    """Call `cond` until it returns something truthy and return that. After `timeout` s:
    AssertionError "timed out after T s waiting for WHAT" (`what` may be a function, called
    then, for a message that shows the state), or with check=False the last falsy value."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            if not check:
                return value
            text = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:g} s waiting for {text}")
        time.sleep(every)


def sleeping(pid: int) -> bool:
    """The process is in a timed sleep (time.sleep), e.g. a long poll waiting for a change.
    Where the kernel hides wchan ("0"), any interruptible sleep counts."""
    try:
        with open(f"/proc/{pid}/wchan") as fh:
            wchan = fh.read().strip()
        if wchan not in ("", "0"):
            return "nanosleep" in wchan
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
        return data[data.rindex(b")") + 2 :].split()[0] == b"S"
    except OSError:
        return False


def host_health(state_db: Path, host: str) -> str | None:
    """The health the latest run recorded for `host` in a project's state store."""
    from cloudsend.state import Store

    if not state_db.exists():
        return None
    with Store(state_db) as store:
        run = store.latest_run()
        if run is None:
            return None
        return next((h.health for h in store.hosts(run.id) if h.name == host), None)
