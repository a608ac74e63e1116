"""Fan-out to hosts with a group result, as Fabric's ThreadingGroup returns one.

`each_host` runs one call per host in parallel and returns what each host answered and which
hosts failed (with the error), so callers neither repeat a try/except per closure nor lose a
failure in a bare `pool.map`. Errors other than the expected kinds (a bug, a refused root) are
not per-host outcomes: the first one is raised once every call has ended.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from cloudsend.errors import AgentError, CloudsendError, TransportError
from cloudsend.providers.base import Host

T = TypeVar("T")
MAX_PARALLEL = 16


@dataclass
class GroupResult(Generic[T]):
    """Per host: its answer (`ok`) or the error it failed with (`failed`), in host order."""

    ok: dict[str, T] = field(default_factory=dict)
    failed: dict[str, CloudsendError] = field(default_factory=dict)

    def __iter__(self) -> Iterator[T]:
        return iter(self.ok.values())

    def raise_failure(self) -> None:
        """Raise the first host's failure, if any (for callers that cannot go on without
        every host)."""
        for exc in self.failed.values():
            raise exc


def each_host(
    fn: Callable[[Host], T],
    hosts: Sequence[Host],
    *,
    failures: tuple[type[CloudsendError], ...] = (TransportError, AgentError),
) -> GroupResult[T]:
    """`fn(host)` for every host, in parallel (one thread per host, at most MAX_PARALLEL).
    An exception of a `failures` kind is that host's outcome; any other is raised after all
    calls have ended."""
    result: GroupResult[T] = GroupResult()
    if not hosts:
        return result

    def one(host: Host) -> tuple[str, T | None, CloudsendError | None, BaseException | None]:
        try:
            return host.name, fn(host), None, None
        except failures as exc:
            return host.name, None, exc, None
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after the others end
            return host.name, None, None, exc

    if len(hosts) == 1:
        outcomes = [one(hosts[0])]
    else:
        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(hosts))) as pool:
            outcomes = list(pool.map(one, hosts))
    for name, value, failure, error in outcomes:
        if error is not None:
            raise error
        if failure is not None:
            result.failed[name] = failure
        else:
            result.ok[name] = value  # type: ignore[assignment]
    return result
