"""Where a command's time goes, phase by phase: for `benchmarks/dispatch.py --profile`.

Off (one dict lookup per span) unless CLOUDSEND_PHASES names a file: then every span is kept
and, when the process exits, the file gets one JSON document {"phases": {phase: {"first",
"last", "busy", "count"}}, "trace": [[phase, thread, start, end], ...]}, times in seconds of
the wall clock (time.time(), so the benchmark can put the interpreter's own start, which it
timed from outside, in the same table). "busy" sums a phase's spans (threads' spans overlap,
so it can exceed last - first). Stdlib only and imported by the package's first line, so
`born` is when cloudsend's own imports began.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
from collections.abc import Iterator

born = time.time()
_PATH = os.environ.get("CLOUDSEND_PHASES")
_lock = threading.Lock()
_spans: dict[str, list[float]] = {}  # phase -> [first start, last end, busy, count]
_trace: list[tuple[str, str, float, float]] = []  # (phase, thread, start, end): a timeline


def on() -> bool:
    return _PATH is not None


def add(name: str, start: float, end: float) -> None:
    """Record one span of `name` (wall-clock seconds)."""
    if _PATH is None:
        return
    with _lock:
        _trace.append((name, threading.current_thread().name, start, end))
        got = _spans.get(name)
        if got is None:
            _spans[name] = [start, end, end - start, 1]
        else:
            got[0] = min(got[0], start)
            got[1] = max(got[1], end)
            got[2] += end - start
            got[3] += 1


@contextlib.contextmanager
def span(name: str) -> Iterator[None]:
    if _PATH is None:
        yield
        return
    start = time.time()
    try:
        yield
    finally:
        add(name, start, time.time())


def since_born(name: str) -> None:
    """A phase from the start of cloudsend's imports until now (start-up, before the work)."""
    add(name, born, time.time())


def _write() -> None:
    if _PATH is None or not _spans:
        return
    with _lock:
        doc = {
            "phases": {
                name: {"first": s[0], "last": s[1], "busy": s[2], "count": int(s[3])}
                for name, s in _spans.items()
            },
            "trace": _trace,
        }
    import json  # only when asked: `cloudsend --help` stays light

    with contextlib.suppress(OSError), open(_PATH, "w") as out:
        json.dump(doc, out)


atexit.register(_write)
