"""The `aws` provider: the config becomes a Pulumi stack; its instances become SSH hosts.

plan()     the StackSpec: key pair, SSH CIDRs, AMIs, regions (boto3 for the live parts)
preview()  resource changes (Pulumi engine) and the hourly cost
offline()  declared resources under Pulumi's mock runtime, and the cost: no CLI, no account
up()       pulumi up, then one SSH host per instance (Fabric, the stack's key)
down()     pulumi destroy, then a boto3 check that nothing tagged with the stack remains

On the stack's maestro (a run dir holding .cloudsend/on_maestro.json: maestro_side.py) the
laptop made the stack: up() runs no Pulumi, the hosts come from the contract's outputs (private
IPs, the run key), boto3 uses the instance profile, and a lost worker is re-created here only
when Pulumi runs here (a shared state backend).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from cloudsend.config.models import Config
from cloudsend.errors import CloudsendError, ConfigError, ProvisionError
from cloudsend.providers.base import Host, Preview

if TYPE_CHECKING:
    from cloudsend.providers.aws.machines import AwsMachines
    from cloudsend.providers.aws.monitor import InstanceMonitor
    from cloudsend.providers.aws.recreation import RecreationPlan

P = ParamSpec("P")
R = TypeVar("R")


def _credentials(method: Callable[P, R]) -> Callable[P, R]:
    """A failure caused by the AWS credentials (none, partial, expired, an unknown profile)
    surfaces as the one credentials message, whichever lookup met it first."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from cloudsend.providers.aws.session import credentials_errors

        provider = args[0]
        assert isinstance(provider, AwsProvider)
        with credentials_errors(provider.profile):
            return method(*args, **kwargs)

    return wrapper


# Stands for the caller's public IP in an offline preview (a documentation-only address).
OFFLINE_CIDR = "203.0.113.10/32"
OFFLINE_CIDR_NOTE = (
    f"ssh ingress {OFFLINE_CIDR} is a placeholder for your public IP: `up` allows your "
    "address /32 (or ssh_cidrs)"
)
# Stands for the stack's key in an offline preview: the real one is made by `up`.
OFFLINE_PUBLIC_KEY = "ssh-ed25519 PLACEHOLDER-made-by-cloudsend-up"
SSH_READY_TIMEOUT = 300.0  # a new instance takes a minute or two before sshd answers


def plan_notes(spec: Any, *, shared: bool) -> list[str]:
    """What `preview` says about the maestro (what it may do) and a shared stack's SSH ranges."""
    notes: list[str] = []
    maestro = spec.maestro
    if maestro is not None:
        from cloudsend.providers.aws.program import MAESTRO_POWER_ACTIONS, MAESTRO_READ_ACTIONS

        tags = ", ".join(f"{k}={v}" for k, v in sorted(spec.tags.items()))
        notes.append(
            f"maestro {maestro.name}: {maestro.type} on-demand in {maestro.region}, SSH from "
            f"{', '.join(spec.ssh_cidrs)}; the workers admit its security group. Its role may "
            f"only {', '.join(MAESTRO_READ_ACTIONS)} and "
            f"{', '.join(MAESTRO_POWER_ACTIONS)} on instances tagged {tags}"
        )
        notes.extend(recreation_notes(spec))
    if shared:
        notes.append(
            f"shared stack: SSH allowed from {', '.join(spec.ssh_cidrs)} (each caller's address "
            "is kept; set ssh_cidrs to choose the list); the stack key is kept in the stack "
            "as a secret, so every teammate installs the same one"
        )
    return notes


def recreation_notes(spec: Any) -> list[str]:
    """What `preview` says about who re-creates a lost worker of a `maestro: remote` stack, and
    (when the maestro does) the second statement set its role gets for that."""
    maestro, plan = spec.maestro, spec.recreation
    if maestro is None or plan is None:
        return []
    if not plan.on_maestro:
        return [f"maestro {maestro.name}: a lost worker is re-created by `cloudsend up` from the "
                f"laptop, not by the maestro: {plan.reason}"]
    from cloudsend.providers.aws.recreation import (
        RECREATE_EC2_READS,
        SECRETS_ACTIONS,
        STATE_OBJECT_ACTIONS,
    )

    tags = ", ".join(f"{k}={v}" for k, v in sorted(spec.tags.items()))
    types = ", ".join(sorted({i.type for i in spec.instances})) or "none"
    key = plan.key.alias or plan.key.key_id
    return [
        f"maestro {maestro.name}: a lost worker is re-created on the maestro (Pulumi refresh, "
        f"then up, with the state in {plan.state.url}); its role gets a second policy, "
        f"{maestro.name}-recreate: the reads a refresh makes ({len(RECREATE_EC2_READS)} EC2 "
        "Describe calls; IAM reads of this stack's roles and profiles only; ssm:GetParameter "
        "of the Ubuntu AMI parameter), ec2:RunInstances only of instances tagged "
        f"{tags} of type {types} with the workers' instance profile, in the stack's subnets, "
        "security group and key pair, on an encrypted root volume, ec2:CreateTags at launch "
        "(and on volumes with the stack's tags only), iam:PassRole of the workers' role to "
        f"ec2.amazonaws.com only, {', '.join(STATE_OBJECT_ACTIONS)} on {plan.state.object_arn} "
        f"and s3:ListBucket under that prefix, {', '.join(SECRETS_ACTIONS)} with the KMS key "
        f"{key}"
    ]


class AwsProvider:
    name = "aws"
    owns_machines = True
    # what provider aws needs installed (the `aws` extra); get_provider checks it
    needs_modules = ("pulumi", "pulumi_aws", "boto3")

    def __init__(self, config: Config) -> None:
        from cloudsend.providers.aws.spec import project_slug, stack_name

        self.config = config
        # The slug, not the raw name: the Pulumi project, the stack key and the tags must be
        # the names stacks/__main__.py and the program use, or they address other stacks.
        self.project = project_slug(config)
        self.stack = stack_name(config)
        self.unreachable: dict[str, str] = {}
        self._session: Any = None
        self.plan_notices: list[str] = []  # what the last online plan adjusted (cpus)
        self._machines: AwsMachines | None = None
        self._instance_monitor: InstanceMonitor | None = None
        # hosts whose machines ran out their eco_life during this run: `up` (a replacement of
        # other hosts) leaves them out instead of re-creating them with a new eco_life
        self.retired: set[str] = set()
        from cloudsend.providers.aws.maestro_side import MaestroSide
        from cloudsend.providers.aws.recreation import maestro_recreation

        # set when this runs ON the stack's maestro (the laptop's run sent the contract)
        self.side: MaestroSide | None = MaestroSide.find(config.base_dir)
        # maestro: remote: who re-creates a lost worker (pure: the state and secrets settings)
        self.recreation: RecreationPlan | None = None
        if config.maestro == "remote" or self.side is not None:
            self.recreation = maestro_recreation(
                config.aws.state_backend, config.aws.secrets_provider
            )
        if self.side is not None and self.side.pulumi_here and not (
            self.recreation is not None and self.recreation.on_maestro
        ):
            # a contract asking for Pulumi here that its role could not carry out (a passphrase
            # the maestro never gets, a backend it cannot reach): the laptop re-creates
            contract = dataclasses.replace(self.side.contract, pulumi_here=False)
            self.side = MaestroSide(contract, self.side.base_dir)
        self._adopted: dict[str, str] = {}  # maestro: worker → instance id it rejoined under

    @property
    def profile(self) -> str | None:
        """The AWS profile boto3 and Pulumi use: the config's, except on the maestro, where
        credentials come from its instance profile (boto3's default chain)."""
        return None if self.side is not None else self.config.aws.profile

    def _on_maestro_type(self) -> str | None:
        """On the maestro: its type, so the spec declares it even under `maestro: local`."""
        return self.side.maestro_type if self.side is not None else None
        self.last_outputs: dict[str, Any] = {}  # what the last `up` exported (the maestro too)

    @property
    def machines(self) -> AwsMachines:
        """The stack's instances while a run goes on (created on first use: boto3 then)."""
        if self._machines is None:
            from cloudsend.providers.aws.machines import AwsMachines

            self._machines = AwsMachines(
                self._monitor,
                self.session,
                self._replace,
                profile=self.profile,
                stop_self=self._stop_self if self.side is not None else None,
                recorded=self._recorded_ids if self.side and not self.side.pulumi_here else None,
            )
        return self._machines

    def check(self) -> list[str]:
        return []  # the stack's hosts are only known from AWS (`cloudsend preview`)

    # ---- the plan ------------------------------------------------------------------------

    def session(self) -> Any:
        if self._session is None:
            from cloudsend.providers.aws.session import aws_session, check_credentials

            region = self.config.aws.region or (self.side.contract.region if self.side else None)
            session = aws_session(self.profile, region)
            check_credentials(session, self.profile)
            self._session = session
        return self._session

    @_credentials
    def plan(self, *, offline: bool = False) -> Any:
        """The StackSpec. Offline: no network (placeholder CIDR, AMIs from the mock runtime)."""
        from cloudsend.providers.aws.keys import stack_key
        from cloudsend.providers.aws.spec import stack_spec

        region = self.default_region(offline=offline)
        if offline:  # nothing is deployed: no key is made (`up` makes it)
            cidrs = list(self.config.aws.ssh_cidrs) or [OFFLINE_CIDR]
            return stack_spec(
                self.config,
                public_key=OFFLINE_PUBLIC_KEY,
                ssh_cidrs=cidrs,
                default_region=region,
                on_maestro_type=self._on_maestro_type(),
            )
        from cloudsend.providers.aws import ami
        from cloudsend.providers.aws.session import caller_cidr

        shared = self.shared_state()
        private_key: str | None = None
        if self.side is not None and (shared is None or shared.private_key is None):
            # a key made here would replace the key pair and, with it, every instance
            raise ProvisionError(
                "the maestro cannot plan the stack: its key is not in the stack's outputs "
                "(only a shared state backend keeps it there)",
                hint="run `cloudsend up CONFIG` on the laptop",
            )
        if shared is None:
            key = stack_key(self.project, self.stack)
            cidrs = list(self.config.aws.ssh_cidrs) or [caller_cidr()]
        else:
            # a shared backend: one stack key for every teammate (a secret output), and the
            # SSH ranges of every caller so far, not only this one's
            from cloudsend.providers.aws.keys import adopt_key, private_openssh
            from cloudsend.providers.aws.spec import shared_ssh_cidrs

            if shared.private_key is not None:
                key = adopt_key(self.project, self.stack, shared.private_key)
            else:
                key = stack_key(self.project, self.stack)
            private_key = private_openssh(key)
            # the maestro is no caller: its own address must not join the SSH ranges
            asks = not self.config.aws.ssh_cidrs and self.side is None
            caller = caller_cidr() if asks else None
            cidrs = shared_ssh_cidrs(self.config.aws.ssh_cidrs, shared.ssh_cidrs, caller)
        draft = stack_spec(
            self.config,
            public_key=key.public_openssh,
            ssh_cidrs=cidrs,
            default_region=region,
            on_maestro_type=self._on_maestro_type(),
        )
        wanted = {(i.region, i.type) for i in draft.instances if i.ami is None}
        amis = ami.ubuntu_amis(self.session(), wanted) if wanted else None
        maestro = draft.maestro
        if maestro is not None and maestro.ami is None:
            try:  # its own lookup: a bad maestro_type is named as such
                found = ami.ubuntu_amis(self.session(), {(maestro.region, maestro.type)})
            except ProvisionError as exc:
                raise ProvisionError(f"maestro_type: {exc.message}", hint=exc.hint) from None
            amis = {**(amis or {}), **found}
        spec = stack_spec(
            self.config,
            public_key=key.public_openssh,
            ssh_cidrs=cidrs,
            amis=amis,
            default_region=region,
            private_key=private_key,
            on_maestro_type=self._on_maestro_type(),
        )
        if self.side is not None:  # the laptop's profile does not exist here
            spec = dataclasses.replace(spec, profile=None)
        sized = {(i.region, i.type) for i in spec.instances if i.cpus is not None}
        if sized:
            from cloudsend.providers.aws.cpus import fit_cpu_options, vcpu_info

            spec, self.plan_notices = fit_cpu_options(spec, vcpu_info(self.session(), sized))
        # Zones that offer each type (and have a public subnet): EC2's own pick may not.
        from cloudsend.providers.aws.spec import place_in_zones
        from cloudsend.providers.aws.zones import zone_choices

        return place_in_zones(spec, zone_choices(self.session(), spec))

    @property
    def maestro_runs_pulumi(self) -> bool:
        """What the laptop tells a `maestro: remote` (OnAwsMaestro.pulumi_here): True only when
        the maestro's role can run Pulumi for this stack (an s3:// state, awskms:// secrets)."""
        return self.recreation is not None and self.recreation.on_maestro

    @property
    def shared_backend(self) -> bool:
        """True when the stack's state lives where teammates reach it (not file://)."""
        from cloudsend.providers.aws.engine import is_shared_backend

        return is_shared_backend(self.config.aws.state_backend)

    def shared_state(self) -> Any:
        """A shared stack's SharedState (from its outputs; empty before its first `up`), or
        None for a file:// backend, which only this machine reads."""
        if not self.shared_backend:
            return None
        from cloudsend.providers.aws.spec import SharedState

        return SharedState.from_outputs(self._engine(lambda: None).outputs())

    def secrets_notes(self) -> list[str]:
        """Offline preview: what `up` would refuse about a shared backend's secrets."""
        try:
            self._engine(lambda: None).check_secrets()
        except ProvisionError as exc:
            return [f"{exc.message} (`up` refuses this)"]
        return []

    def default_region(self, *, offline: bool = False) -> str:
        """config `region:`, else boto3's chain (AWS_REGION, AWS_DEFAULT_REGION, profile), else
        us-east-1: the same for plan, down, the monitor and the leak check (offline too)."""
        from cloudsend.providers.aws.session import resolve_region

        configured = self.config.aws.region or (self.side.contract.region if self.side else None)
        try:
            return resolve_region(configured, self.profile)
        except ProvisionError:
            if not offline:
                raise
            # a reviewer without the team's profile still gets an offline preview
            return resolve_region(configured, None)

    def cost(self, spec: Any, *, live: bool = True) -> tuple[Any, list[str]]:
        from cloudsend.providers.aws.costs import estimate

        warnings: list[str] = []
        prices = None
        if live:
            from cloudsend.providers.aws.pricing import live_prices

            wanted = {(i.region, i.type) for i in spec.instances}
            if spec.maestro is not None:
                wanted.add((spec.maestro.region, spec.maestro.type))
            prices, warnings = live_prices(self.session(), wanted)
        return estimate(spec, prices), warnings

    def engine(self, spec: Any) -> Any:
        from cloudsend.providers.aws.program import make_program

        return self._engine(make_program(spec), region=spec.region)

    def _engine(self, program: Callable[[], None], region: str | None = None) -> Any:
        from cloudsend.providers.aws.engine import Engine, backend_for_profile

        profile = self.profile
        backend = self.config.aws.state_backend
        return Engine(
            self.project,
            self.stack,
            program,
            backend_url=backend_for_profile(backend, profile) if backend else None,
            secrets_provider=self.config.aws.secrets_provider,
            region=region,
            # the engine and its plugins (an s3:// backend, awskms:// secrets) use the profile too;
            # on the maestro no AWS config names a region: the stack's (a URL's ?region= wins)
            env={"AWS_PROFILE": profile}
            if profile
            else {"AWS_REGION": self.side.contract.region}
            if self.side is not None
            else None,
        )

    def offline(self) -> tuple[list[dict[str, Any]], Any]:
        preview = self.preview(offline=True)
        return preview.resources or [], preview.cost

    @_credentials
    def preview(self, *, offline: bool = False, enforce_budget: bool = False) -> Preview:
        """Changes and cost. With enforce_budget (for `up`), a plan over max_cost_per_hour is
        refused before the engine even runs. Offline: the declared resources instead of the
        changes (no Pulumi CLI, no account) and the bundled prices."""
        if offline:
            from cloudsend.providers.aws.offline import declared_resources

            spec = self.plan(offline=True)
            cost, _ = self.cost(spec, live=False)
            if enforce_budget:
                self.check_budget(cost)
            resources = declared_resources(spec)
            notes = [] if self.config.aws.ssh_cidrs else [OFFLINE_CIDR_NOTE]
            notes += [*plan_notes(spec, shared=False), *self.secrets_notes()]
            notes += [*cost.warnings, *self.budget_warnings(cost)]
            return Preview(
                "aws", len(spec.instances), resources=resources, cost=cost, warnings=notes
            )
        if self.side is not None:  # the laptop's `run` made the stack and showed its plan
            return Preview("aws", len(self.side.outputs.get("instances") or {}))
        spec = self.plan()
        cost, warnings = self.cost(spec)
        if enforce_budget:
            self.check_budget(cost)
        # refreshed, like `up`: an instance that ended outside Pulumi is shown as re-created
        changes = self.engine(spec).preview(refresh=True)
        return Preview(
            "aws",
            len(spec.instances),
            changes=changes,
            cost=cost,
            warnings=[
                *self.plan_notices,
                *plan_notes(spec, shared=self.shared_backend),
                *warnings,
                *cost.warnings,
                *self.budget_warnings(cost),
            ],
        )

    def budget_warnings(self, cost: Any) -> list[str]:
        """What `preview` says about max_cost_per_hour (`up` refuses instead: check_budget)."""
        message = cost.over_budget(self.config.aws.max_cost_per_hour)
        return [f"{message} (`up` refuses this plan)"] if message else []

    def check_budget(self, cost: Any) -> None:
        message = cost.over_budget(self.config.aws.max_cost_per_hour)
        if message:
            raise ConfigError(
                message,
                hint="raise max_cost_per_hour, or use cheaper or fewer "
                "instances (eco: true for spot)",
            )

    # ---- hosts ---------------------------------------------------------------------------

    @_credentials
    def up(self, *, refresh: bool = False) -> list[Host]:
        """pulumi up, refreshing first when asked or when an instance of the stack is gone.
        On the maestro: the hosts of the laptop's up (stopped ones started), no Pulumi."""
        if self.side is not None:
            return self._hosts(self.side.outputs, wake=True)
        return self._engine_up(refresh=refresh)

    @_credentials
    def _engine_up(self, *, refresh: bool = False) -> list[Host]:
        spec = self.active(self.plan())
        # the maestro's role reads no price list: its budget check uses the bundled prices
        cost, _ = self.cost(spec, live=self.side is None)
        self.check_budget(cost)
        engine = self.engine(spec)
        if refresh or self._instances_gone(engine):
            # Pulumi's state still lists an instance that ended outside it (spot interruption,
            # auto_stop of a spot one, by hand): without a refresh `up` sees nothing to create.
            engine.refresh()
        outputs = engine.up()
        self.last_outputs = dict(outputs)
        return self._hosts(outputs, wake=True)

    def _instances_gone(self, engine: Any) -> bool:
        """True when an instance in the last stack outputs is no longer alive in EC2."""
        from cloudsend.providers.aws.monitor import GONE

        recorded = {i.get("id") for i in (engine.outputs().get("instances") or {}).values()}
        if not recorded:
            return False  # a new stack: nothing recorded that could be stale
        alive = {i.id for i in self._monitor().instances().values() if i.kind not in GONE}
        return not recorded <= alive

    @_credentials
    def attach(self) -> list[Host]:
        """The stack's running instances as hosts, creating and starting nothing: `down`
        comes through here and needs no stopped machine started (nor waited for over SSH)."""
        if self.side is not None:
            return self._hosts(self.side.outputs)
        return self._hosts(self.engine(self.plan()).outputs())

    def _live(self, instances: dict[str, Any], wake: bool) -> dict[str, Any] | None:
        """{name: InstanceInfo} of the outputs' instances as EC2 sees them now (None: EC2 did
        not answer); with `wake`, stopped ones (auto_stop) are started first and waited for
        until running. On the maestro by name: its outputs may predate a re-created worker."""
        from cloudsend.providers.aws.power import power_on

        try:
            seen = self._monitor().instances()
        except CloudsendError:
            if wake:
                raise
            return None  # attach: SSH alone still tells who answers
        by_name = self.side is not None
        live = {
            n: i
            for n, i in seen.items()
            if n in instances and (by_name or i.id == instances[n].get("id"))
        }
        if wake and power_on(self.session(), live.values()):
            seen = self._monitor().instances()  # started: new state, new public IP
            live = {n: seen[n] for n in live if n in seen}
        return live

    def _hosts(self, outputs: dict[str, Any], wake: bool = False) -> list[Host]:
        from cloudsend.providers.aws.keys import bundled_key, stack_key
        from cloudsend.providers.aws.monitor import reachable_address
        from cloudsend.transport.ssh import SshTarget, SshTransport

        if self.side is not None:  # the run key the laptop sent (never the stack key)
            key = bundled_key(self.side.key_path)
        else:
            key = stack_key(self.project, self.stack)
        known = self.config.state_dir / "known_hosts"
        instances = outputs.get("instances") or {}
        if not instances:
            raise ProvisionError(
                f"stack {self.stack} has no instances", hint="run `cloudsend up` first"
            )
        answered = self._live(instances, wake)
        live = answered or {}
        hosts: list[Host] = []
        self.unreachable = {}
        for name, inst in sorted(instances.items()):
            info = live.get(name)
            if self.side is not None and answered is not None and info is None:
                # EC2 forgets a terminated instance after an hour: no sshd to wait for
                self.unreachable[name] = f"instance {inst.get('id')} is gone" + self._lost_note(
                    name, "missing"
                )
                continue
            if info is not None and info.state not in ("pending", "running"):
                # no sshd to wait for on a machine that is off
                self.unreachable[name] = f"instance {info.id} is {info.state}" + (
                    " (`cloudsend run` starts it again)"
                    if info.state == "stopped"
                    else self._lost_note(name, info.kind or "terminated")
                )
                continue
            if self.side is not None:
                # inside the VPC: the private IP, the same across stop/start (the outputs'
                # unless the instance is not the one they recorded: a re-created worker)
                recorded = info is None or info.id == inst.get("id")
                address = (inst.get("private_ip") if recorded else None) or (
                    info.private_ip if info else None
                ) or inst.get("private_ip") or inst.get("public_ip")
            else:
                # A stopped-then-started instance has a new public IP; the outputs keep the old.
                address = (reachable_address(info) if info else None) or (
                    inst.get("public_ip") or inst.get("private_ip")
                )
            target = SshTarget(
                name=name,
                address=address,
                port=int(inst.get("port") or 22),  # 22 unless the stack exports another
                user=inst.get("user") or "ubuntu",
                key=key.private_path,
                known_hosts=known,
            )
            transport = SshTransport(target)
            try:
                facts = self._wait_for_ssh(transport)
            except CloudsendError as exc:
                transport.close()
                self.unreachable[name] = exc.message
                continue
            hosts.append(
                Host(
                    name=name,
                    cpus=int(facts["cpus"]),
                    root=f"{facts['home']}/.cloudsend/{self.project}",
                    python=str(facts.get("python") or "python3"),
                    transport=transport,
                    info={
                        "provider": "aws",
                        "instance_id": inst.get("id"),
                        "region": inst.get("region"),
                        "address": address,
                    },
                )
            )
        if not hosts:
            raise ProvisionError(
                "no instance of the stack answers over SSH",
                hint="`cloudsend status` shows each host; check ssh_cidrs",
            )
        return hosts

    def _lost_note(self, name: str, kind: str) -> str:
        """On the maestro: what becomes of a worker whose machine is gone (`status` shows it)."""
        if self.side is None:
            return ""
        from cloudsend.providers.aws.maestro_side import LostWorker, lost_worker, recreation_waits

        decision = lost_worker(
            kind, on_maestro=True, pulumi_here=self.side.pulumi_here, retired=name in self.retired
        )
        if decision is LostWorker.LEAVE_TO_LAPTOP:
            return f": {recreation_waits(name)}"
        if decision is LostWorker.RETIRE:
            return ": not re-created (its eco_life ran out)"
        return ": the maestro re-creates it"

    def _recorded_ids(self) -> dict[str, str]:
        """Maestro: host name → the instance id the run reaches it on (the contract's, or
        the one it rejoined under)."""
        assert self.side is not None
        instances = self.side.outputs.get("instances") or {}
        ids = {n: str(i.get("id")) for n, i in instances.items() if i.get("id")}
        return {**ids, **self._adopted}

    def _rejoin(self, names: list[str]) -> list[Host]:
        """Maestro without Pulumi: the workers the laptop's `up` re-created, as hosts, at the
        address of the contract it sent again (else their private IP)."""
        from cloudsend.providers.aws.maestro_side import MaestroSide

        assert self.side is not None
        self.side = MaestroSide.find(self.config.base_dir) or self.side  # maybe sent again
        instances = self.side.outputs.get("instances") or {}
        infos = self._monitor().instances()
        wanted = {n: instances[n] for n in names if n in instances}
        if not wanted:
            return []
        hosts = self._hosts({"instances": wanted})
        self._adopted.update({h.name: infos[h.name].id for h in hosts if h.name in infos})
        return hosts

    def _stop_self(self) -> str:
        from cloudsend.providers.aws.maestro_side import stop_maestro

        assert self.side is not None
        return stop_maestro(self.session(), self.side)

    @staticmethod
    def _wait_for_ssh(transport: Any) -> dict[str, Any]:
        deadline = time.monotonic() + SSH_READY_TIMEOUT
        while True:
            try:
                return dict(transport.probe())
            except CloudsendError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(5)

    def check_down(self, keep: bool) -> None:
        """`down --keep` stops the instances and keeps the stack: the files stay on their
        disks. One-time spot instances cannot be stopped, only terminated (their disks go
        with them), so a config with eco entries is refused before anything is stopped."""
        if not keep:
            return
        spot = [f"instances[{i}]" for i, e in enumerate(self.config.instances) if e.eco]
        if spot:
            raise ConfigError(
                f"down --keep: spot instances (eco: true in {', '.join(spot)}) cannot be "
                "stopped, only terminated, and that deletes their disks and the files on "
                "them; nothing was stopped",
                hint="`cloudsend fetch` what you need, then `cloudsend down` without --keep; "
                "on-demand instances (eco: false) can be kept stopped with --keep",
            )

    @_credentials
    def down(self, hosts: list[Host], keep: bool = False) -> None:
        """Destroy the stack, then check that nothing tagged with it is left. keep: stop the
        instances instead (disks, files and the stack stay; `cloudsend run` starts them
        again, `cloudsend down` destroys them)."""
        if keep:
            self._stop_for_keep()
            return
        if self.side is not None:
            return  # the laptop's `cloudsend down` destroys the stack, this maestro with it
        from cloudsend.providers.aws.leaks import leftovers

        spec = self.plan(offline=True)  # destroy needs the program, not fresh lookups
        self.engine(spec).destroy()
        tags = dict(spec.tags)
        left = leftovers(self.session(), tags, spec.regions)
        if left:
            listing = "\n".join(f"  {x.kind} {x.id} ({x.region}) {x.detail}".rstrip() for x in left)
            raise ProvisionError(
                f"pulumi destroy finished but {len(left)} resource(s) tagged with stack "
                f"{self.stack} remain:\n{listing}",
                hint="delete them in the AWS console or run `cloudsend down` again",
            )

    def _stop_for_keep(self) -> None:
        from cloudsend.providers.aws.power import power_off

        alive = ("pending", "running")
        infos = [i for i in self._monitor().instances().values() if i.state in alive]
        if self.side is not None:  # the maestro keeps itself up: it answers the laptop
            infos = [i for i in infos if i.id != self.side.contract.instance_id]
        spot = sorted(i.name for i in infos if i.spot)
        if spot:  # the config has none (check_down), the stack still does: never terminate them
            raise ProvisionError(
                f"down --keep: the stack's spot instances ({', '.join(spot)}) cannot be "
                "stopped without losing their disks; nothing was stopped",
                hint="`cloudsend fetch` what you need, then `cloudsend down` without --keep",
            )
        power_off(self.session(), infos)

    # ---- machines while a run goes on (AwsMachines; pipeline.monitor calls these) ----------

    def _monitor(self) -> InstanceMonitor:
        if self._instance_monitor is None:
            from cloudsend.providers.aws.monitor import InstanceMonitor

            spec = self.plan(offline=True)
            self._instance_monitor = InstanceMonitor(self.session(), dict(spec.tags), spec.regions)
        return self._instance_monitor

    def _replace(self, names: list[str]) -> list[Host]:
        """refresh + pulumi up: terminated instances are re-created under the same names,
        except those that ran out their eco_life (retired: eco_life caps what they cost)."""
        wanted = set(names)
        self.retire_expired(wanted)
        if self.side is not None:
            from cloudsend.providers.aws.maestro_side import (
                LostWorker,
                RecreationDeferred,
                lost_worker,
            )

            infos = self._monitor().instances()
            pulumi_here = self.side.pulumi_here
            back = [n for n in sorted(wanted) if n in infos and infos[n].kind == "running"]
            if back and not pulumi_here:  # re-created by the laptop's `cloudsend up`
                return self._rejoin(back)  # any still gone stay the laptop's (status says so)
            left = [
                n
                for n in sorted(wanted)
                if lost_worker(
                    (infos[n].kind or "terminated") if n in infos else "missing",
                    on_maestro=True,
                    pulumi_here=pulumi_here,
                    retired=n in self.retired,
                )
                is LostWorker.LEAVE_TO_LAPTOP
            ]
            if left:
                raise RecreationDeferred(
                    left, why=self.recreation.reason if self.recreation is not None else None
                )
        return [h for h in self._engine_up(refresh=True) if h.name in wanted]

    def active(self, spec: Any) -> Any:
        """`spec` without the retired hosts' instances (what `up` declares)."""
        if not self.retired:
            return spec
        kept = tuple(i for i in spec.instances if i.name not in self.retired)
        return dataclasses.replace(spec, instances=kept)

    def retire_expired(self, keep: set[str]) -> set[str]:
        """Hosts (other than `keep`) whose latest instance ran out its eco_life join
        `retired`, so `up` does not re-create them; returns the retired hosts."""
        infos = self._monitor().instances()
        self.retired |= {n for n, i in infos.items() if i.kind == "expired" and n not in keep}
        return set(self.retired)

    def notices(self) -> list[str]:
        return self.plan_notices + [
            f"host {name} did not answer over SSH: {why.splitlines()[0]}"
            for name, why in self.unreachable.items()
        ]
