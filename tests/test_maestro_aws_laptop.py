"""`maestro: remote` on provider aws, from the laptop's side (issue 11 part 3): `run` creates the
stack (workers and maestro) and prepares the maestro, `fetch` on a stopped maestro starts it,
fetches each result once and stops it again, `status` on a stopped maestro says so, `down`
refuses while results would be lost, cancels the maestro's run and destroys the stack.

No AWS account and no Pulumi CLI here, so: the Pulumi engine is tests/test_aws_provider_hosts.py's
EngineStub returning the stack's outputs; boto3 talks to a real moto server, where the maestro
and the workers exist as instances (start/stop are real there); the machines cloudsend SSHes
into are real sshd daemons on loopback (the outputs carry their `port`, as a test stack may).

One narrow seam: moto's public IPs are fake internet addresses that must never be connected
to, so where the laptop turns a live EC2 instance into an SSH address
(providers.aws.monitor.reachable_address, read after every start) the test maps moto's instance
ids onto the loopback sshd hosts. The outputs' own public IPs are TEST-NET-1 addresses
(192.0.2.0/24, never routed): code that used them instead of EC2's live answer would fail.

The maestro logs in as a test user whose home holds cloudsend's venv (shipped with the
`aws-maestro` extra, boto3 only, once per module, ~20 s; removed at the end); its sshd sets
AWS_EC2_METADATA_DISABLED (it is not an EC2 instance). In the end-to-end test its ~/.aws stands
in for the instance profile (_maestro_reaches_moto).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Project
from tests.test_aws_provider_hosts import EngineStub
from tests.test_maestro_ship import USER_LINES
from tests.test_maestro_ship import worker_home as _worker_home

MAESTRO_USER = "csawsmaestro"
WORKER_USERS = ("csawsw0", "csawsw1")
NOWHERE = "192.0.2.{}"  # TEST-NET-1: the outputs' public IPs, never to be used

CONFIG = """
project: awsl
provider: aws
region: us-east-1
maestro: remote
ssh_cidrs: [198.51.100.7/32]
instances:
  - {type: t3.micro, number: 2, img_id: ami-12345678}
jobs:
  - run_command: echo hi > out.txt
    output_file: out.txt
    repeat: 2
"""


@pytest.fixture(scope="module")
def maestro_home() -> Iterator[Path]:
    """The maestro user's home; cloudsend's folder in it is removed when the module ends."""
    yield Path("/home") / MAESTRO_USER
    with_user = Path("/home") / MAESTRO_USER / ".cloudsend"
    shutil.rmtree(with_user, ignore_errors=True)


@pytest.fixture(scope="module")
def wheel_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("xdg-cache")


def _no_instance_metadata(host: Any) -> None:
    write = host._write_config

    def more() -> None:
        write()
        with host.config_path.open("a") as fh:
            fh.write("SetEnv AWS_EC2_METADATA_DISABLED=true\n")

    host._write_config = more
    host.restart()




@dataclass
class Stack:
    config: Any
    provider: Any
    stub: EngineStub
    maestro_id: str
    maestro_private_ip: str
    worker_ids: list[str]
    worker_keys: list[Path]  # each worker's ~/.ssh/authorized_keys
    run_dir: Path  # the run's folder on the maestro
    asked: list[tuple[str, str]] = field(default_factory=list)  # seam calls: (id, state)
    commands: list[str] = field(default_factory=list)  # what ran on the maestro


@pytest.fixture
def stack(
    sshd_factory: Any,
    moto_aws: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    project: Project,
    maestro_home: Path,
    wheel_cache: Path,
) -> Stack:
    from cloudsend.config import load_config
    from cloudsend.pipeline import maestro_control as control
    from cloudsend.providers.aws import monitor
    from cloudsend.providers.aws.keys import stack_key
    from cloudsend.providers.aws.provider import AwsProvider

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the laptop's stack key lives there
    monkeypatch.setenv("XDG_CACHE_HOME", str(wheel_cache))  # cloudsend's wheel, built once
    config = load_config(project.config(CONFIG))
    provider = AwsProvider(config)
    spec = provider.plan(offline=True)
    assert spec.maestro is not None
    maestro = sshd_factory(1, user=MAESTRO_USER)[0]
    _no_instance_metadata(maestro)
    workers = [sshd_factory(1, user=user)[0] for user in WORKER_USERS]
    worker_keys = [_worker_home(h) for h in workers]
    key = stack_key(provider.project, provider.stack)
    for host in [maestro, *workers]:  # EC2 installs the stack's key at boot
        text = host.authorized_keys.read_text()
        host.authorized_keys.write_text(text + key.public_openssh + "\n")

    names = [i.name for i in spec.instances]
    worker_ids = moto_aws.run_instances(len(names), dict(spec.tags), names=names)
    maestro_id = moto_aws.run_instances(
        1, {**spec.tags, "cloudsend:role": "maestro"}, names=[spec.maestro.name]
    )[0]
    private = {i: moto_aws.instance(i).private_ip_address for i in [*worker_ids, maestro_id]}
    outputs = {
        "instances": {
            name: {
                "id": ident, "public_ip": NOWHERE.format(10 + n), "private_ip": private[ident],
                "region": "us-east-1", "user": host.user, "port": host.port,
            }
            for n, (name, ident, host) in enumerate(zip(names, worker_ids, workers, strict=True))
        },
        "maestro": {
            "id": maestro_id, "public_ip": NOWHERE.format(99), "private_ip": private[maestro_id],
            "region": "us-east-1", "user": MAESTRO_USER, "port": maestro.port,
            "type": spec.maestro.type,
        },
    }

    def destroyed() -> None:  # as pulumi destroy would
        for ident in [*worker_ids, maestro_id]:
            moto_aws.terminate(ident)

    stub = EngineStub(outputs, on_destroy=destroyed)
    monkeypatch.setattr(AwsProvider, "engine", lambda self, spec: stub)
    made = Stack(
        config, provider, stub, maestro_id, private[maestro_id], worker_ids, worker_keys,
        maestro_home / ".cloudsend" / "maestro" / "runs" / "awsl",
    )
    shutil.rmtree(made.run_dir, ignore_errors=True)  # an earlier test's run (the venv stays)
    loopback = {ident: "127.0.0.1" for ident in [*worker_ids, maestro_id]}

    def reachable(info: Any) -> str:  # the seam (see the module doc)
        made.asked.append((info.id, info.state))
        return loopback[info.id]

    monkeypatch.setattr(monitor, "reachable_address", reachable)
    real = control.Endpoint.transport

    def recording(self: Any, config: Any) -> Any:
        transport = real(self, config)
        run = transport.run

        def run_and_record(command: str, *args: Any, **kwargs: Any) -> Any:
            made.commands.append(command)
            return run(command, *args, **kwargs)

        transport.run = run_and_record  # type: ignore[method-assign]
        return transport

    monkeypatch.setattr(control.Endpoint, "transport", recording)
    return made


def _ship_and_place(stack: Stack, jobs_done: int) -> list[str]:
    """What a finished run leaves on the maestro, made here: cloudsend shipped, the bundle
    sent, and a store whose first `jobs_done` jobs are DONE and fetched there with their
    results in the run's results folder. Returns the job ids."""
    from cloudsend.config import load_config
    from cloudsend.config.layout import open_project
    from cloudsend.maestro import bundle as bundling
    from cloudsend.maestro import ship as shipping
    from cloudsend.pipeline import maestro_aws
    from cloudsend.pipeline import maestro_control as control
    from cloudsend.pipeline.files import FileIndex
    from cloudsend.pipeline.plan import build_plan
    from cloudsend.pipeline.session import config_hash
    from cloudsend.state import NewJob, Store

    provider, outputs = stack.provider, stack.stub.outputs()
    machine = maestro_aws.look(provider, outputs)
    point = maestro_aws.endpoint_of(provider, outputs, machine)
    with point.transport(stack.config) as to_maestro:
        shipped = shipping.ship(
            to_maestro, shipping.build_wheel(control.wheel_cache()), point.root,
            maestro_aws.EXTRAS,
        )
        side = maestro_aws.on_maestro(provider, outputs, machine)
        bundle = maestro_aws.plan_bundle(stack.config, side)
        bundling.send_bundle(to_maestro, bundle, str(stack.run_dir))
        to_maestro.run(f"ln -sfn {shipped.venv} {stack.run_dir}/.cloudsend/venv")
    there = load_config(stack.run_dir / "cloudsend.yaml")  # as the maestro loads it
    plan = build_plan(there, FileIndex())
    paths = open_project(there)
    jobs = [p.job_id for p in plan.jobs]
    with Store(paths.state_db) as store:
        run = store.open_run(config_hash(there))
        store.add_jobs(run.id, [
            NewJob(p.job_id, p.unit.index, p.unit.rep, None, p.unit.cpus, p.job_id)
            for p in plan.jobs
        ])
        for job in jobs[:jobs_done]:
            store.record_submission(run.id, job, "awsl-0-0", 1)
            store.update_states(run.id, [(job, "RUNNING", None, None)])
            store.update_states(run.id, [(job, "DONE", 0, None)])
            folder = paths.results_dir(run.id) / job
            folder.mkdir(parents=True)
            (folder / "out.txt").write_text(f"hi from {job}\n")
            store.record_fetch(run.id, job, 1, [("out.txt", len(f"hi from {job}\n"))])
    account = pwd.getpwnam(MAESTRO_USER)
    for path in [stack.run_dir, *stack.run_dir.rglob("*")]:
        os.lchown(path, account.pw_uid, account.pw_gid)
    return jobs


# -- run ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _maestro_reaches_moto(moto_url: str) -> Iterator[None]:
    """The maestro user's ~/.aws: moto's dummy keys and `endpoint_url` in the profile. It
    stands in for the instance profile real EC2 gives the maestro (and for EC2's endpoint):
    cloudsend there passes no credentials and no endpoint of its own (boto3's default chain,
    botocore reading endpoint_url from the config file)."""
    account = pwd.getpwnam(MAESTRO_USER)
    aws = Path(account.pw_dir) / ".aws"
    aws.mkdir(mode=0o700, exist_ok=True)
    (aws / "credentials").write_text(
        "[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n"
    )
    (aws / "config").write_text(
        f"[default]\nregion = us-east-1\nendpoint_url = {moto_url}\n"
    )
    for path in (aws, aws / "credentials", aws / "config"):
        os.chown(path, account.pw_uid, account.pw_gid)
    try:
        yield
    finally:
        shutil.rmtree(aws, ignore_errors=True)


def _inside_the_vpc(stack: Stack, moto_aws: Any) -> None:
    """Every private address is 127.0.0.1 (the loopback sshd hosts, reached by the maestro
    at the outputs' private_ip and port), in the outputs and in moto's EC2 alike."""
    for entry in [*stack.stub.outputs()["instances"].values(), stack.stub.outputs()["maestro"]]:
        entry["private_ip"] = "127.0.0.1"
    for ident in [stack.maestro_id, *stack.worker_ids]:
        moto_aws.instance(ident).nics[0].private_ip_address = "127.0.0.1"
    stack.maestro_private_ip = "127.0.0.1"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_run_on_an_aws_maestro_end_to_end(
    stack: Stack, moto_aws: Any, project: Project
) -> None:
    """`run` creates the stack, prepares the maestro and starts the run there; the maestro's
    own cloudsend (boto3 through its stand-in instance profile, see _maestro_reaches_moto)
    runs every job on the workers it reaches by private IP with the run key, then auto_stop
    stops the workers and the maestro itself; the laptop's `fetch` starts the maestro, brings
    every result home once and stops it again; `down` destroys the stack."""
    from cloudsend import onmaestro
    from cloudsend.config import load_config
    from cloudsend.config.layout import project_paths
    from cloudsend.pipeline import maestro_control as control
    from tests.waiting import wait_until

    config = load_config(project.config(CONFIG + "auto_stop: true\n"))
    _inside_the_vpc(stack, moto_aws)
    moto_aws.stop(stack.maestro_id)  # auto_stop of an earlier run: `run` starts it again
    with _maestro_reaches_moto(moto_aws.url):
        said: list[str] = []
        started = control.start(config, say=said.append)
        assert started.run_id == 1
        assert said == [f"starting the maestro {stack.maestro_id}"]
        assert "up" in stack.stub.calls
        # the started command: the maestro's own cloudsend, detached, on the bundled config
        run_dir = str(stack.run_dir).replace(str(Path("/home") / MAESTRO_USER), "~", 1)
        assert stack.commands[-1] == (
            f"cd \"$HOME\"/{run_dir[2:]} && .cloudsend/venv/bin/cloudsend run --detach --yes "
            "--json cloudsend.yaml"
        )
        there = load_config(stack.run_dir / "cloudsend.yaml")  # the config as the maestro has it
        assert there.provider == "aws" and there.maestro == "local" and there.aws.profile is None
        side = onmaestro.read(stack.run_dir)  # the contract (nothing secret in it)
        assert side is not None and side.outputs == stack.stub.outputs()
        assert (side.instance_id, side.stack, side.pulumi_here) == (
            stack.maestro_id, stack.provider.stack, False
        )
        # the run key (0600) is on each worker for the address the maestro comes from only
        private = stack.run_dir / onmaestro.RUN_KEY
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
        for path in stack.worker_keys:
            text = path.read_text()
            assert text.startswith(USER_LINES), text
            ours = [t for t in text.splitlines() if "cloudsend-run" in t]
            assert len(ours) == 1 and ours[0].startswith('from="127.0.0.1",'), text
        # a file:// stack's maestro gets boto3, not pulumi (nothing re-creates workers there)
        venv = stack.run_dir / ".cloudsend" / "venv" / "bin" / "python"
        check = subprocess.run(
            ["sudo", "-u", MAESTRO_USER, str(venv), "-c",
             "import boto3, cloudsend, importlib.util as u; print(u.find_spec('pulumi'))"],
            capture_output=True, text=True, timeout=120,
        )
        assert check.stdout.strip() == "None", check.stdout + check.stderr

        # followed from the laptop through the maestro's own cloudsend, until auto_stop
        seen: list[dict[str, Any]] = []

        def stopped_itself() -> bool:
            if moto_aws.state(stack.maestro_id) == "stopped":
                return True
            try:
                seen.append(control.status(config))
            except Exception as exc:  # noqa: BLE001 (it may stop between the look and the call)
                seen.append({"error": str(exc)})
            return moto_aws.state(stack.maestro_id) == "stopped"

        wait_until(stopped_itself, 150, lambda: f"auto_stop on the maestro; seen {seen[-3:]}",
                   every=2)
    assert {moto_aws.state(i) for i in stack.worker_ids} == {"stopped"}  # before the maestro
    # the maestro reached every worker checking the host key the laptop pinned (bundled under
    # the private address): its own first contact pinned nothing more
    sent = control.key_dir(config) / "bundle" / "known_hosts"
    there_known = stack.run_dir / ".cloudsend" / "known_hosts"
    assert len(sent.read_text().splitlines()) == 3  # the maestro's and the two workers' keys
    assert there_known.read_text() == sent.read_text()

    # fetch: the stopped maestro started, every result home once, stopped again
    said = []
    got = control.fetch(config, say=said.append)
    assert said == [f"starting the maestro {stack.maestro_id} to fetch", "stopping it again"]
    assert moto_aws.state(stack.maestro_id) == "stopped"
    assert len(got.jobs) == 2, got
    home = project_paths(config).results_root
    outs = sorted(home.glob("run-1/*/out.txt"))
    assert len(outs) == 2 and {p.read_text() for p in outs} == {"hi\n"}
    # a second fetch brings nothing (it starts the maestro to ask, and stops it again)
    said = []
    again = control.fetch(config, say=said.append)
    assert (again.jobs, again.files) == ([], 0)
    assert said == [f"starting the maestro {stack.maestro_id} to fetch", "stopping it again"]
    assert moto_aws.state(stack.maestro_id) == "stopped"
    # the run's last state, as the maestro's cloudsend keeps it: every job DONE and fetched
    moto_aws.client("ec2").start_instances(InstanceIds=[stack.maestro_id])
    doc = control.status(config)
    assert [j["state"] for j in doc["jobs"]] == ["DONE", "DONE"], doc
    assert all(j.get("fetched") for j in doc["jobs"]), doc
    # down: everything is home, so it destroys the stack
    control.down(config, say=said.append)
    assert stack.stub.destroyed
    assert {moto_aws.state(i) for i in [stack.maestro_id, *stack.worker_ids]} == {"terminated"}


@pytest.mark.slow
def test_up_makes_the_stack_whole_and_tells_the_maestro_without_starting_a_run(
    stack: Stack, moto_aws: Any
) -> None:
    """What a file:// stack's maestro waits for after a spot worker was lost: the laptop's
    `up` (pulumi up from here) and a fresh on_maestro.json, the run key on every worker."""
    from cloudsend import onmaestro
    from cloudsend.pipeline import maestro_aws

    said: list[str] = []
    prepared = maestro_aws.up(stack.config, say=said.append)
    assert said == [] and "up" in stack.stub.calls
    assert not any("run --detach" in c for c in stack.commands), stack.commands
    assert prepared.run_dir == str(stack.run_dir)
    side = onmaestro.read(stack.run_dir)
    assert side is not None and side.outputs == stack.stub.outputs()
    assert len(prepared.keys_added) == 2  # the run key went onto both workers
    again = maestro_aws.up(stack.config, say=said.append)
    assert again.keys_added == () and again.sent.files == 0  # nothing new to tell it


# -- fetch and status on a stopped maestro ----------------------------------------------------


@pytest.mark.slow
def test_fetch_starts_a_stopped_maestro_fetches_once_and_stops_it_again(
    stack: Stack, moto_aws: Any
) -> None:
    from cloudsend.config.layout import project_paths
    from cloudsend.pipeline import maestro_aws
    from cloudsend.pipeline import maestro_control as control

    jobs = _ship_and_place(stack, jobs_done=2)
    moto_aws.stop(stack.maestro_id)  # auto_stop: every result is on its disk
    # status cannot read a stopped maestro: it says so, and starts nothing
    with pytest.raises(maestro_aws.MaestroStopped) as stopped:
        control.status_text(stack.config, True)
    assert f"the maestro {stack.maestro_id} is stopped" in stopped.value.message
    assert "`cloudsend fetch CONFIG` starts it" in (stopped.value.hint or "")
    assert moto_aws.state(stack.maestro_id) == "stopped"

    said: list[str] = []
    stack.asked.clear()
    got = control.fetch(stack.config, say=said.append)
    assert said == [f"starting the maestro {stack.maestro_id} to fetch", "stopping it again"]
    assert moto_aws.state(stack.maestro_id) == "stopped"
    assert (stack.maestro_id, "running") in stack.asked  # its new address, read after the start
    assert sorted(got.jobs) == sorted(f"run-1/{j}" for j in jobs)
    home = project_paths(stack.config).results_root
    for job in jobs:
        assert (home / "run-1" / job / "out.txt").read_text() == f"hi from {job}\n"
    # exactly once: a second fetch brings nothing (and stops the maestro it started again)
    said.clear()
    again = control.fetch(stack.config, say=said.append)
    assert (again.jobs, again.files) == ([], 0)
    assert said == [f"starting the maestro {stack.maestro_id} to fetch", "stopping it again"]
    assert moto_aws.state(stack.maestro_id) == "stopped"
    # a maestro that runs is left running
    moto_aws.client("ec2").start_instances(InstanceIds=[stack.maestro_id])
    said.clear()
    control.fetch(stack.config, say=said.append)
    assert said == [] and moto_aws.state(stack.maestro_id) == "running"
    doc = control.status(stack.config)  # and status asks the maestro's own cloudsend
    assert sorted(j["job_id"] for j in doc["jobs"]) == sorted(jobs)


# -- down -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_down_refuses_to_lose_results_then_cancels_and_destroys_the_stack(
    stack: Stack, moto_aws: Any
) -> None:
    from cloudsend.errors import StateError
    from cloudsend.pipeline import maestro_control as control

    jobs = _ship_and_place(stack, jobs_done=1)  # one DONE on the maestro, one never run
    moto_aws.stop(stack.maestro_id)  # stopped: down starts it to check what is home
    said: list[str] = []
    with pytest.raises(StateError) as refused:
        control.down(stack.config, say=said.append)
    assert f"run-1/{jobs[0]}" in refused.value.message and "--force" in (refused.value.hint or "")
    assert not stack.stub.destroyed
    checking = f"starting the maestro {stack.maestro_id} to check that every result is home"
    assert said == [checking, "stopping it again"]  # refused: left as it was found
    assert moto_aws.state(stack.maestro_id) == "stopped"
    control.fetch(stack.config)
    said.clear()
    stack.commands.clear()
    control.down(stack.config, say=said.append)
    assert said[0] == checking
    assert any("cloudsend cancel --all cloudsend.yaml" in c for c in stack.commands), stack.commands
    assert stack.stub.destroyed  # then the laptop's own destroy of the whole stack
    assert {moto_aws.state(i) for i in [stack.maestro_id, *stack.worker_ids]} == {"terminated"}


@pytest.mark.slow
def test_down_force_destroys_a_stopped_maestro_without_starting_it(
    stack: Stack, moto_aws: Any
) -> None:
    from cloudsend.pipeline import maestro_control as control

    moto_aws.stop(stack.maestro_id)
    said: list[str] = []
    control.down(stack.config, force=True, say=said.append)
    assert said == [f"the maestro {stack.maestro_id} is stopped: destroying it with the stack"]
    assert stack.stub.destroyed and (stack.maestro_id, "running") not in stack.asked


# -- the decisions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("todo", "unfetched", "expected"),
    [
        ({}, [], []),  # everything home
        ({"run-1/a": []}, [], []),  # its files are all here already: only the marker lacks
        ({"run-1/a": ["out.txt"], "run-1/b": []}, [], ["run-1/a"]),
        ({}, ["c"], ["c (still on its worker)"]),  # the maestro had not fetched it yet
        ({"run-1/a": ["x"]}, ["d", "c"], ["run-1/a", "c (still on its worker)",
                                         "d (still on its worker)"]),
    ],
)
def test_lost_by_down(
    todo: dict[str, list[str]], unfetched: list[str], expected: list[str]
) -> None:
    from cloudsend.pipeline.maestro_aws import lost_by_down

    assert lost_by_down(todo, unfetched) == expected


@pytest.mark.parametrize(
    ("pulumi_here", "shipped", "needs"),
    [
        (False, ("aws-maestro",), ("boto3",)),  # file://: boto3 only on the maestro
        (True, ("aws",), None),  # shared backend: pulumi and pulumi-aws too
    ],
)
def test_what_the_maestro_gets_installed(
    tmp_path: Path, pulumi_here: bool, shipped: tuple[str, ...], needs: tuple[str, ...] | None
) -> None:
    import tomllib

    from cloudsend import onmaestro
    from cloudsend.config import load_config
    from cloudsend.pipeline import maestro_aws
    from cloudsend.providers.aws.maestro_side import needs_modules
    from cloudsend.providers.aws.provider import AwsProvider

    everywhere = tuple(AwsProvider.needs_modules)
    assert maestro_aws.extras(pulumi_here) == shipped
    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert extras["project"]["optional-dependencies"]["aws-maestro"] == ["boto3>=1.28"]
    assert needs_modules(tmp_path, everywhere) == everywhere  # the laptop: no contract
    onmaestro.write(tmp_path, onmaestro.OnAwsMaestro("i-1", "us-east-1", "s", {}, pulumi_here))
    assert needs_modules(tmp_path, everywhere) == (needs or everywhere)
    (tmp_path / "cloudsend.yaml").write_text(CONFIG)
    from cloudsend.bootstrap.maestro import maestro_extra_setup

    setup = maestro_extra_setup(load_config(tmp_path / "cloudsend.yaml"), pulumi_here=pulumi_here)
    assert ("pulumi" in setup) == pulumi_here  # the Pulumi CLI step only where Pulumi runs


def test_on_maestro_never_carries_the_stack_key(tmp_path: Path) -> None:
    from cloudsend.config import load_config
    from cloudsend.pipeline import maestro_aws
    from cloudsend.providers.aws.provider import AwsProvider

    (tmp_path / "cloudsend.yaml").write_text(
        CONFIG + "state_backend: s3://team-bucket/state\nsecrets_provider: awskms://alias/x\n"
    )
    provider = AwsProvider(load_config(tmp_path / "cloudsend.yaml"))
    maestro = maestro_aws.Maestro("i-1", "us-east-1", "ubuntu", 22, "10.0.0.5", "running", "x")
    outputs = {"instances": {}, "maestro": {"id": "i-1"}, "stack_key": "-----BEGIN OPENSSH",
               "ssh_cidrs": ["198.51.100.7/32"]}
    side = maestro_aws.on_maestro(provider, outputs, maestro)
    assert side.pulumi_here  # a shared backend: Pulumi runs on the maestro too
    assert "stack_key" not in side.outputs and "BEGIN" not in side.to_json()
    assert side.outputs["ssh_cidrs"] == ["198.51.100.7/32"]


# -- the CLI's error paths ------------------------------------------------------------------

_WITH_STUB = """
import sys
from cloudsend.providers.aws.provider import AwsProvider
from tests.test_aws_provider_hosts import EngineStub
AwsProvider.engine = lambda self, spec: EngineStub({})  # no pulumi CLI here: an empty stack
from cloudsend.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("command", ["fetch", "status", "logs"])
def test_a_stack_without_a_maestro_is_one_clear_message(
    tmp_path: Path, moto_aws: Any, command: str
) -> None:
    (tmp_path / "cloudsend.yaml").write_text(CONFIG)
    argv = [command, "cloudsend.yaml"] if command != "logs" else ["logs", "0", "cloudsend.yaml"]
    env = {**os.environ, "HOME": str(tmp_path / "home"),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), *sys.path])}
    proc = subprocess.run(
        [sys.executable, "-c", _WITH_STUB, *argv],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 7, proc.stdout + proc.stderr  # StateError
    assert "has no maestro yet" in proc.stderr and "cloudsend run CONFIG" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""  # nothing half-printed


def test_a_shared_stack_reaches_the_maestro_with_the_stack_key_from_its_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A teammate (another machine, nothing of the first user's) reaches the maestro with the
    stack key the stack keeps as a secret output, installed into their ~/.cloudsend/keys/."""
    from cloudsend.config import load_config
    from cloudsend.pipeline import maestro_aws
    from cloudsend.providers.aws.keys import private_openssh, stack_key
    from cloudsend.providers.aws.provider import AwsProvider

    monkeypatch.setenv("HOME", str(tmp_path / "first"))
    (tmp_path / "cloudsend.yaml").write_text(CONFIG)
    provider = AwsProvider(load_config(tmp_path / "cloudsend.yaml"))
    secret = private_openssh(stack_key(provider.project, provider.stack))
    monkeypatch.setenv("HOME", str(tmp_path / "teammate"))
    maestro = maestro_aws.Maestro("i-1", "us-east-1", "ubuntu", 22, "10.0.0.5", "running", "x")
    point = maestro_aws.endpoint_of(provider, {"stack_key": secret}, maestro)
    assert point.key is not None and str(point.key).startswith(str(tmp_path / "teammate"))
    assert point.key.read_text() == secret and point.instance == "i-1"
    assert (point.address, point.user, point.port) == ("x", "ubuntu", 22)
    stopped = maestro_aws.Maestro("i-1", "us-east-1", "ubuntu", 22, "10.0.0.5", "stopped", None)
    with pytest.raises(maestro_aws.MaestroStopped, match="is stopped"):
        maestro_aws.endpoint_of(provider, {}, stopped)


# -- the workers' host keys, for the address the maestro uses ---------------------------------


def test_the_maestros_first_contact_with_a_worker_checks_the_key_the_laptop_pinned(
    sshd_factory: Any, tmp_path: Path
) -> None:
    """The laptop pins a worker's host key under its public address; the maestro reaches it
    by private IP. The bundled known_hosts carries the key under the private address too, so
    the maestro's first contact is a check (strict passes, nothing pinned), not TOFU."""
    from cloudsend.errors import TransportError
    from cloudsend.pipeline.maestro_aws import private_names, rekeyed_known_hosts
    from cloudsend.transport.known_hosts import KnownHosts, host_key_name
    from cloudsend.transport.ssh import SshTransport

    host = sshd_factory(1)[0]
    first = tmp_path / "first_known_hosts"
    with SshTransport(host.target(first)) as seen:  # what sshd offers (its real key)
        seen.run("true")
    (key,) = KnownHosts(first).lookup(host_key_name("127.0.0.1", host.port))
    laptop = tmp_path / "laptop" / "known_hosts"  # pinned where the laptop reached it
    public = host_key_name(NOWHERE.format(10), host.port)
    KnownHosts(laptop).pin(public, key)
    outputs = {"instances": {"w0": {"private_ip": "127.0.0.1", "port": host.port},
                             "w1": {"public_ip": NOWHERE.format(11)}}}  # no private: no move
    moves = private_names([("w0", NOWHERE.format(10)), ("w1", NOWHERE.format(11))], outputs)
    assert moves == [(public, host_key_name("127.0.0.1", host.port))]
    bundled = rekeyed_known_hosts(laptop, moves, tmp_path / "bundle" / "known_hosts")
    assert KnownHosts(bundled).lookup(public) == [key]  # the laptop's entries are kept
    with SshTransport(host.target(bundled, host_key_policy="strict")) as maestro:
        maestro.run("true")
        assert maestro.first_contact == ""  # checked against the pinned key, nothing pinned
    # the laptop's file as it is would leave the maestro to trust on first use
    with pytest.raises(TransportError):
        SshTransport(host.target(laptop, host_key_policy="strict")).run("true")
