"""Solve and install a conda prefix with py-rattler: cloudsend's conda engine for hosts that
have no micromamba, mamba or conda. Embedded in bootstrap scripts; run with a python that has
py-rattler (written against py-rattler 0.28's `solve`/`install`).

usage: python rattler_install.py REQUEST.json PREFIX CACHE_DIR
REQUEST.json: {"channels": [...], "specs": [...], "channel_priority": "strict"|"disabled"}
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import rattler

# conda's `defaults` is not on conda.anaconda.org, where rattler would look for it by name.
_DEFAULTS = ["https://repo.anaconda.com/pkgs/main", "https://repo.anaconda.com/pkgs/r"]


def _channels(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        for channel in _DEFAULTS if name == "defaults" else [name]:
            if channel not in out:
                out.append(channel)
    return out


async def _build(request: dict, prefix: Path, cache: Path) -> None:
    priority = (
        rattler.ChannelPriority.Disabled
        if request.get("channel_priority") == "disabled"
        else rattler.ChannelPriority.Strict
    )
    records = await rattler.solve(
        sources=_channels(request["channels"]),
        # Parsed leniently, as conda does: rattler's strict parser (used for plain strings)
        # rejects the conda form `name=version=build` that exact pins use.
        specs=[rattler.MatchSpec(spec) for spec in request["specs"]],
        gateway=rattler.Gateway(cache_dir=cache / "repodata"),
        # Without the host's __glibc/__unix/__linux, most conda-forge packages are unsolvable.
        virtual_packages=rattler.VirtualPackage.detect(),
        channel_priority=priority,
    )
    for record in sorted(records, key=lambda r: r.name.normalized):
        print(f"  {record.name.normalized} {record.version} {record.build}  ({record.channel})")
    await rattler.install(
        records,
        target_prefix=prefix,
        cache_dir=cache / "pkgs",
        show_progress=False,
        # No requested_specs: py-rattler 0.28 hands its MatchSpec wrappers to the Rust layer
        # unwrapped and fails ("not an instance of PyMatchSpec"); it is only metadata anyway.
    )


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    request = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    try:
        asyncio.run(_build(request, Path(argv[1]), Path(argv[2])))
    except Exception as exc:  # the message is the point: solver conflicts, missing packages
        first = str(exc).strip().splitlines() or [type(exc).__name__]
        print(str(exc), file=sys.stderr)
        print(f"cloudsend: conda solve/install with rattler failed: {first[0]}", file=sys.stderr)
        return 1
    print(f"  installed {len(request['specs'])} requested spec(s) into {argv[1]}")
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # py-rattler 0.28 sometimes crashes (SIGSEGV/SIGABRT) while the interpreter shuts down,
    # after the work is done: leave without running the finaliser.
    os._exit(code)
