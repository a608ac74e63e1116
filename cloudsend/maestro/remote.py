"""Getting a remote maestro ready for a run (provider ssh): cloudsend shipped there, the run
key on every worker, the config and files sent. Each step is idempotent, so `prepare` after a
crash or on a second run only does what is missing (one round trip per step when nothing is).

Starting the watcher there and talking to it from the laptop: cloudsend.pipeline.maestro_control.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cloudsend.config.models import Config, MaestroHostConfig
from cloudsend.maestro import bundle as bundling
from cloudsend.maestro import runkey
from cloudsend.maestro import ship as shipping
from cloudsend.transport.base import Transport

if TYPE_CHECKING:  # fabric is imported lazily
    from cloudsend.transport.ssh import SshTransport


@dataclass(frozen=True)
class Prepared:
    venv: str  # cloudsend's venv on the maestro
    run_dir: str  # the bundle: <run_dir>/cloudsend.yaml is the config the maestro runs
    tag: str  # the run key's comment on the workers
    ship: shipping.ShipReport
    sent: bundling.Sent
    keys_added: tuple[str, ...]  # workers whose authorized_keys changed
    seconds: float


def maestro_transport(config: Config, entry: MaestroHostConfig) -> SshTransport:
    """A transport to the maestro, with the user's own key (it stays on this machine)."""
    from cloudsend.transport.ssh import SshTarget, SshTransport

    return SshTransport(
        SshTarget(
            name=f"maestro {entry.address}",
            address=entry.address,
            port=entry.port,
            user=entry.user,
            key=entry.key,
            known_hosts=config.state_dir / "known_hosts",
            host_key_policy=config.ssh.host_key_policy,
            user_known_hosts=True,
        )
    )


def run_id(key_dir: Path) -> str:
    """This project's run id for the remote maestro, made once and kept in key_dir."""
    path = key_dir / "run"
    if not path.exists():
        key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = key_dir / f".run.{secrets.token_hex(4)}"
        tmp.write_text(runkey.new_run_id() + "\n")
        os.replace(tmp, path)
    return path.read_text().strip()


def prepare(
    config: Config,
    maestro: Transport,
    workers: Sequence[Transport],
    *,
    key_dir: Path,
    wheel_cache: Path,
    sources: Sequence[str] | None = None,
    root: str | None = None,
    bundle: bundling.Bundle | None = None,
    extras: tuple[str, ...] = (),
) -> Prepared:
    """Ship cloudsend, install the run key on `workers` (restricted to `sources`, default
    the maestro_host address: see runkey.maestro_sources) and send the run's bundle
    (default plan_bundle(config)). `root`: cloudsend's folder on the maestro (default
    maestro_host's; aws passes it, with the maestro's private address as `sources` and
    its extra in `extras`: `aws-maestro`, or `aws` when Pulumi runs there)."""
    start = time.monotonic()
    entry = config.ssh.maestro_host  # ssh: where the maestro is and its root
    project = config.project_name
    key = runkey.make_run_key(key_dir, project, run_id(key_dir))
    if root is None:
        assert entry is not None, "prepare needs maestro_host (the config checks refuse it)"
        root = entry.root or shipping.DEFAULT_ROOT
    shipped = shipping.ship(maestro, shipping.build_wheel(wheel_cache), root, extras)
    if sources is None:
        assert entry is not None
        sources = runkey.maestro_sources(entry.address)
    added = tuple(w.name for w in workers if runkey.install(w, key, list(sources)))
    run_dir = f"{shipped.root}/runs/{project}"
    planned = bundle if bundle is not None else bundling.plan_bundle(config)
    sent = bundling.send_bundle(maestro, planned, run_dir, key.private)
    return Prepared(
        venv=shipped.venv,
        run_dir=run_dir,
        tag=key.tag,
        ship=shipped,
        sent=sent,
        keys_added=added,
        seconds=time.monotonic() - start,
    )
