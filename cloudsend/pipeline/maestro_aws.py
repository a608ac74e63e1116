"""The laptop's side of `maestro: remote` on provider aws: the maestro is an instance of the
stack (providers/aws/program.py, Maestro), created with the workers.

`run`: AwsProvider.up() (workers and maestro), then the maestro is made ready as on ssh
(maestro.remote.prepare: cloudsend shipped with boto3, plus pulumi and the Pulumi CLI only
when the maestro runs Pulumi (a shared backend), the run key installed on each
worker from here over their public addresses but restricted to the maestro's PRIVATE address,
since the maestro reaches the workers inside the VPC, and the bundle sent with
`.cloudsend/on_maestro.json`: cloudsend.onmaestro, what cloudsend there needs to know about the
stack), and the run starts detached there. The maestro is reached with the stack's key (the
stack's, not the user's own) as the user the stack's outputs name, at the address EC2 gives it
now: auto_stop stops it once every result is on its disk, and an instance started again has a
new public IP.

status, attach, logs and cancel go through pipeline.maestro_control unchanged (`endpoint`
here; a stopped maestro is refused with what to do). `fetch` on a stopped maestro starts it,
fetches (exactly once, as on ssh) and stops it again. `down` refuses while results would be
lost (--force overrides), asks the maestro to cancel its run when it answers, then destroys the
whole stack from here and checks that nothing tagged with it is left.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudsend import onmaestro
from cloudsend.bootstrap.maestro import maestro_extra_setup
from cloudsend.config.models import Config
from cloudsend.errors import CloudsendError, ProvisionError, StateError, TransportError
from cloudsend.maestro import bundle as bundling
from cloudsend.maestro import remote
from cloudsend.maestro import ship as shipping
from cloudsend.maestro.remote import Prepared
from cloudsend.pipeline import maestro_control as control
from cloudsend.transport.base import Transport

if TYPE_CHECKING:
    from cloudsend.pipeline.maestro_link import MaestroTransport
    from cloudsend.providers.aws.monitor import InstanceInfo
    from cloudsend.providers.aws.provider import AwsProvider

Say = Callable[[str], None]
# What provider aws needs installed on the maestro: boto3 only when Pulumi does not run there
# (a file:// backend: the laptop re-creates workers), the whole `aws` extra (pulumi,
# pulumi-aws: a large download) and the Pulumi CLI when it does (a shared backend).
EXTRAS = ("aws-maestro",)
PULUMI_EXTRAS = ("aws",)


def extras(pulumi_here: bool) -> tuple[str, ...]:
    return PULUMI_EXTRAS if pulumi_here else EXTRAS


SECRET_OUTPUTS = ("stack_key",)  # never written into the bundle (on_maestro.json is not secret)
SSH_READY_TIMEOUT = 300.0  # an instance started again takes a minute or so before sshd answers


class MaestroStopped(StateError):
    """The stack's maestro is stopped: nothing can be asked of it without starting it."""


@dataclass(frozen=True)
class Maestro:
    """The stack's maestro now: what the outputs say of it, and what EC2 says."""

    id: str
    region: str
    user: str
    port: int  # 22 unless the stack exports another (test stacks)
    private_ip: str | None
    state: str  # EC2's (running, stopped, ...); "missing" when EC2 does not list it
    address: str | None  # where to connect now; None while it is not running
    info: InstanceInfo | None = None

    @property
    def stopped(self) -> bool:
        return self.state in ("stopped", "stopping")


def _provider(config: Config) -> AwsProvider:
    from cloudsend.providers.aws.provider import AwsProvider

    return AwsProvider(config)


def stack_outputs(provider: AwsProvider) -> dict[str, Any]:
    """The stack's last outputs (no lookups: the program is only needed to name the stack)."""
    return dict(provider.engine(provider.plan(offline=True)).outputs())


def _maestro_output(provider: AwsProvider, outputs: dict[str, Any]) -> dict[str, Any]:
    entry = outputs.get("maestro")
    if not isinstance(entry, dict) or not entry.get("id"):
        raise StateError(
            f"stack {provider.stack} has no maestro yet (nothing was run with maestro: remote)",
            hint="`cloudsend run CONFIG` creates it with the workers and starts the run there",
        )
    return entry


def look(provider: AwsProvider, outputs: dict[str, Any]) -> Maestro:
    """The maestro of the stack's outputs, as EC2 sees it now (one describe call)."""
    from cloudsend.providers.aws.monitor import InstanceMonitor, reachable_address
    from cloudsend.providers.aws.session import credentials_errors

    entry = _maestro_output(provider, outputs)
    region = str(entry.get("region") or provider.default_region())
    with credentials_errors(provider.config.aws.profile):
        tags = dict(provider.plan(offline=True).tags)
        monitor = InstanceMonitor(provider.session(), tags, [region])
        info = next((i for i in monitor.instances().values() if i.id == entry["id"]), None)
    state = info.state if info is not None else "missing"
    return Maestro(
        id=str(entry["id"]),
        region=region,
        user=str(entry.get("user") or "ubuntu"),
        port=int(entry.get("port") or 22),
        private_ip=(info.private_ip if info else None) or entry.get("private_ip"),
        state=state,
        address=reachable_address(info) if info is not None and state == "running" else None,
        info=info,
    )


def wake(provider: AwsProvider, outputs: dict[str, Any], maestro: Maestro) -> Maestro:
    """Start the stopped maestro, wait until EC2 says it runs, and read it again (its new
    public IP)."""
    from cloudsend.providers.aws.power import power_on
    from cloudsend.providers.aws.session import credentials_errors

    assert maestro.info is not None
    with credentials_errors(provider.config.aws.profile):
        power_on(provider.session(), [maestro.info])
    return look(provider, outputs)


def sleep(provider: AwsProvider, maestro: Maestro) -> None:
    """Stop the maestro (on-demand: its disk and the results on it stay)."""
    from cloudsend.providers.aws.power import power_off
    from cloudsend.providers.aws.session import credentials_errors

    if maestro.info is None:
        return
    with credentials_errors(provider.config.aws.profile):
        power_off(provider.session(), [maestro.info])


def _key(provider: AwsProvider, outputs: dict[str, Any]) -> Path:
    """The stack's key (a shared stack's from its secret output: a teammate reaches the
    maestro with it too). Never the user's own key."""
    from cloudsend.providers.aws.keys import adopt_key, stack_key

    secret = outputs.get("stack_key")
    if isinstance(secret, str) and secret.strip():
        return adopt_key(provider.project, provider.stack, secret).private_path
    return stack_key(provider.project, provider.stack).private_path


def endpoint_of(
    provider: AwsProvider, outputs: dict[str, Any], maestro: Maestro
) -> control.Endpoint:
    if maestro.stopped:
        raise MaestroStopped(
            f"the maestro {maestro.id} is stopped (auto_stop stops it once every result is on "
            "its disk): its run's last state cannot be read without starting it",
            hint="`cloudsend fetch CONFIG` starts it, brings the results home and stops it "
            "again; `cloudsend down CONFIG` destroys it with the stack",
        )
    if maestro.state != "running" or maestro.address is None:
        raise ProvisionError(
            f"the maestro {maestro.id} is {maestro.state}",
            hint="wait for it to run (`cloudsend status` again), or `cloudsend run CONFIG` "
            "to make the stack whole again",
        )
    return control.Endpoint(
        name=f"maestro {maestro.id}",
        address=maestro.address,
        port=maestro.port,
        user=maestro.user,
        key=_key(provider, outputs),
        root=shipping.DEFAULT_ROOT,
        instance=maestro.id,
        origin=f"the stack's maestro {maestro.id}",
    )


def endpoint(config: Config) -> control.Endpoint:
    """maestro_control's endpoint on aws: from the stack's outputs and EC2."""
    provider = _provider(config)
    outputs = stack_outputs(provider)
    return endpoint_of(provider, outputs, look(provider, outputs))


def _answering(transport: MaestroTransport, timeout: float = SSH_READY_TIMEOUT) -> None:
    """Wait for the maestro's sshd (an instance just started takes a while)."""
    from cloudsend.transport.ssh import SshTransport

    inner = transport.inner
    assert isinstance(inner, SshTransport), "the maestro is reached over SSH"
    deadline = time.monotonic() + timeout
    while True:
        try:
            inner.probe()
            return
        except CloudsendError:
            if time.monotonic() > deadline:
                raise
            time.sleep(3)


def on_maestro(provider: AwsProvider, outputs: dict[str, Any], maestro: Maestro) -> (
    onmaestro.OnAwsMaestro
):
    """What the laptop tells cloudsend on the maestro (nothing secret: not the stack key)."""
    return onmaestro.OnAwsMaestro(
        instance_id=maestro.id,
        region=maestro.region,
        stack=provider.stack,
        outputs={k: v for k, v in outputs.items() if k not in SECRET_OUTPUTS},
        pulumi_here=provider.maestro_runs_pulumi,
    )


def private_names(
    hosts: Sequence[tuple[str, str]], outputs: dict[str, Any]
) -> list[tuple[str, str]]:
    """(the name a worker's host key is pinned under here, the name the maestro looks it up
    under) for each of `hosts` (name, the address this machine reached it at): the laptop
    reaches workers by public address, the maestro by the outputs' private_ip (same port).
    Pure."""
    from cloudsend.transport.known_hosts import host_key_name

    instances = outputs.get("instances") or {}
    moves: list[tuple[str, str]] = []
    for name, address in hosts:
        inst = instances.get(name) or {}
        private, port = inst.get("private_ip"), int(inst.get("port") or 22)
        if private:
            moves.append((host_key_name(address, port), host_key_name(str(private), port)))
    return moves


def rekeyed_known_hosts(known: Path, moves: Sequence[tuple[str, str]], out: Path) -> Path:
    """`out`: the laptop's pinned host keys (`known`) plus each worker's under the address the
    maestro uses (`moves`: private_names), so the maestro's first contact with a worker is a
    check against the key pinned here, not trust on first use."""
    from cloudsend.transport.known_hosts import KnownHosts

    out.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    if known.is_file():
        out.write_text(known.read_text())
        out.chmod(0o600)
    here, there = KnownHosts(known), KnownHosts(out)
    for pinned, private in moves:
        for key in here.lookup(pinned):
            there.pin(private, key)
    return out


def plan_bundle(
    config: Config,
    side: onmaestro.OnAwsMaestro,
    moves: Sequence[tuple[str, str]] = (),
) -> bundling.Bundle:
    """The ssh bundle, plus on_maestro.json, without `profile:` (the maestro's credentials
    are its instance profile's; a laptop's profile name means nothing there), its
    known_hosts re-keyed to the workers' private addresses (`moves`: private_names)."""
    planned = bundling.plan_bundle(config)
    data = {k: v for k, v in planned.config.items() if k != "profile"}
    folder = control.key_dir(config) / "bundle"
    path = onmaestro.write(folder, side)
    files = {**planned.files, onmaestro.FILE: path}
    if moves:
        known = config.state_dir / "known_hosts"
        files[bundling.KNOWN_HOSTS] = rekeyed_known_hosts(known, moves, folder / "known_hosts")
    return bundling.Bundle(config=data, files=files)


@contextlib.contextmanager
def _ready(config: Config, say: Say) -> Iterator[tuple[control.Endpoint, Transport, Prepared]]:
    """AwsProvider.up() (workers and maestro; a stopped maestro is started), then the maestro
    prepared: cloudsend shipped, the run key on every worker, the bundle sent with a fresh
    on_maestro.json. Yields the maestro's endpoint, an open transport to it and what was done."""
    provider = _provider(config)
    hosts = provider.up()  # the workers (woken when stopped) and the maestro; host keys pinned
    try:
        if provider.unreachable:
            raise TransportError(
                "workers not reachable from here: "
                + "; ".join(f"{n}: {why}" for n, why in provider.unreachable.items()),
                hint="check ssh_cidrs, then `cloudsend run` again",
            )
        outputs = provider.last_outputs
        maestro = look(provider, outputs)
        if maestro.stopped:  # auto_stop of an earlier run
            say(f"starting the maestro {maestro.id}")
            maestro = wake(provider, outputs, maestro)
        if not maestro.private_ip:
            raise ProvisionError(
                f"the maestro {maestro.id} has no private address: the run key cannot be "
                "restricted to it",
                hint="`cloudsend down` and `cloudsend run` again",
            )
        point = endpoint_of(provider, outputs, maestro)
        side = on_maestro(provider, outputs, maestro)
        to_maestro = point.transport(config)
        try:
            _answering(to_maestro)
            prepared = remote.prepare(
                config,
                to_maestro,
                [h.transport for h in hosts],
                key_dir=control.key_dir(config),
                wheel_cache=control.wheel_cache(),
                sources=[maestro.private_ip],
                root=point.root,
                bundle=plan_bundle(config, side, private_names(
                    [(h.name, str(h.info.get("address"))) for h in hosts],
                    outputs,
                )),
                extras=extras(side.pulumi_here),
            )
            setup = maestro_extra_setup(config, pulumi_here=side.pulumi_here)
            if setup:  # the Pulumi CLI and its aws plugin (once: the script checks)
                say("installing the Pulumi CLI on the maestro")
                to_maestro.run(
                    "bash -s", stdin=setup, timeout=1800,
                    what="install the Pulumi CLI on the maestro",
                )
            yield point, to_maestro, prepared
        finally:
            to_maestro.close()
    finally:
        for h in hosts:
            h.transport.close()


def start(config: Config, say: Say) -> control.Started:
    """`cloudsend run` (aws, maestro: remote): see the module doc."""
    begin = time.monotonic()
    with _ready(config, say) as (point, to_maestro, prepared):
        return control.launch(config, point, to_maestro, prepared, begin)


def up(config: Config, say: Say) -> Prepared:
    """`cloudsend up` (aws, maestro: remote): the stack made whole (an interrupted worker
    re-created) and the maestro told (fresh on_maestro.json, the run key on the new worker);
    no run is started. What a file:// stack's maestro waits for to use a re-created worker."""
    with _ready(config, say) as (_point, _to_maestro, prepared):
        return prepared


def fetch(config: Config, say: Say) -> control.Fetched:
    """`cloudsend fetch`: a stopped maestro is started for it and stopped again after."""
    provider = _provider(config)
    outputs = stack_outputs(provider)
    maestro = look(provider, outputs)
    was_stopped = maestro.stopped
    if was_stopped:
        say(f"starting the maestro {maestro.id} to fetch")
        maestro = wake(provider, outputs, maestro)
    try:
        point = endpoint_of(provider, outputs, maestro)
        with point.transport(config) as to_maestro:
            if was_stopped:
                _answering(to_maestro)
            return control.fetch(config, to_maestro, where=point)
    finally:
        if was_stopped:
            say("stopping it again")
            sleep(provider, maestro)


def lost_by_down(todo: dict[str, list[str]], unfetched: Sequence[str]) -> list[str]:
    """What destroying the maestro (and the workers) would lose: the job folders it holds with
    files this machine lacks (plan_fetch's; one with nothing to copy is home already), and the
    finished jobs whose results it has not fetched from their worker yet."""
    here = [folder for folder, files in sorted(todo.items()) if files]
    return here + [f"{job} (still on its worker)" for job in sorted(unfetched)]


def down(config: Config, keep: bool, force: bool, say: Say) -> str:
    """`cloudsend down` (aws, maestro: remote): see the module doc."""
    provider = _provider(config)
    provider.check_down(keep)
    outputs = stack_outputs(provider)
    if isinstance(outputs.get("maestro"), dict):
        _stop_the_run(config, provider, outputs, force, say)
    provider.down([], keep=keep)  # pulumi destroy of workers and maestro, then the leak check
    return "down"


def _stop_the_run(
    config: Config, provider: AwsProvider, outputs: dict[str, Any], force: bool, say: Say
) -> None:
    """Before the destroy: refuse while results would be lost (unless force), then ask the
    maestro to cancel its run (the destroy ends it anyway: a failure is only said). A maestro
    started here to check is stopped again when down refuses."""
    maestro = look(provider, outputs)
    woken = False
    if maestro.stopped and not force:
        say(f"starting the maestro {maestro.id} to check that every result is home")
        maestro = wake(provider, outputs, maestro)
        woken = True
    if maestro.state != "running":
        say(f"the maestro {maestro.id} is {maestro.state}: destroying it with the stack")
        return
    try:
        _check_and_cancel(config, provider, outputs, maestro, force, woken, say)
    except BaseException:
        if woken:
            say("stopping it again")
            sleep(provider, maestro)
        raise


def _check_and_cancel(
    config: Config,
    provider: AwsProvider,
    outputs: dict[str, Any],
    maestro: Maestro,
    force: bool,
    woken: bool,
    say: Say,
) -> None:
    point = endpoint_of(provider, outputs, maestro)
    try:
        with point.transport(config) as to_maestro:
            if woken:
                _answering(to_maestro)
            if not force:
                held = control.holding(config, point, to_maestro)
                lost = lost_by_down(held.todo, held.unfinished)
                if lost:
                    raise StateError(
                        f"{len(lost)} job(s) have results not home yet (e.g. {lost[0]}); "
                        "down destroys the maestro and would lose them",
                        hint="run `cloudsend fetch` first, or `cloudsend down --force`",
                    )
            try:
                control.forward(
                    config, ["cancel", "--all", "cloudsend.yaml"], to_maestro, where=point
                )
                say(f"the maestro {maestro.id} cancelled its run")
            except CloudsendError as exc:
                say(f"the maestro could not cancel its run ({exc.message.splitlines()[0]}): "
                    "the destroy ends it")
    except TransportError as exc:
        if not force:
            raise TransportError(
                f"cannot ask the maestro {maestro.id} whether every result is home "
                f"({exc.message.splitlines()[0]})",
                hint="try again, or `cloudsend down --force` to destroy it with its results",
            ) from exc
        say(f"the maestro {maestro.id} does not answer: destroying it with its run")
