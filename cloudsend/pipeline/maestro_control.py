"""The laptop's side of `maestro: remote` on provider ssh: start the run on the maestro, ask
it how the run goes, bring its results home, take it down. On provider aws the same talk goes
to the stack's maestro instance (its `Endpoint` from the stack's outputs and EC2); what differs
there (creating it, starting a stopped one to fetch, destroying it) is pipeline.maestro_aws.

The maestro runs the bundled config (`maestro: local` there) with its own detached watcher,
which deploys to the workers with the run key. Everything the laptop needs is derived from
the config (the maestro's address, its root), so a laptop whose `.cloudsend/` was deleted, or
another checkout of the same config, talks to the same run. The maestro's results folder is
the source of truth for results: `fetch` copies each job's folder once it is complete there
(the maestro fetched it), file by file, skipping files the laptop already holds with the same
sha256, then marks the job done on the laptop; an interrupted fetch resumes from there.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shlex
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from cloudsend.config.layout import project_paths
from cloudsend.config.models import Config, MaestroHostConfig
from cloudsend.digest import sha256_file
from cloudsend.errors import CloudsendError, ConfigError, TransportError
from cloudsend.maestro import remote
from cloudsend.maestro import ship as shipping
from cloudsend.pipeline import attach_events as events
from cloudsend.pipeline.maestro_link import (
    MaestroAnswered,
    MaestroTransport,
    MaestroUnreachable,
    probed,
    revive,
    split_probe,
)
from cloudsend.pipeline.reporting import JobView, Reporter
from cloudsend.providers.base import Host, HostsNotCleaned
from cloudsend.transport.base import StreamingTransport, Transport

if TYPE_CHECKING:  # fabric is imported lazily
    from cloudsend.transport.ssh import SshTransport

VENV_LINK = ".cloudsend/venv"  # in the run dir: the venv the run was started with
FINAL = ("DONE", "ABORTED", "CANCELLED")


@dataclass(frozen=True)
class Started:
    run_id: int | None  # the maestro's run number
    output: str  # what the maestro's `run --detach --json` said
    prepared: remote.Prepared
    seconds: float


@dataclass(frozen=True)
class Fetched:
    jobs: list[str] = field(default_factory=list)  # jobs brought home by this call
    files: int = 0
    bytes: int = 0
    where: Path | None = None


@dataclass(frozen=True)
class Endpoint:
    """The maestro as this machine reaches it: on ssh from `maestro_host`, on aws from the
    stack's outputs and EC2 (pipeline.maestro_aws: its address changes when it is started
    again, and it is reached with the stack's key). `root` is cloudsend's folder there
    (absolute, or ~/...); `instance` the maestro's machine id on aws ("" on ssh)."""

    name: str  # in messages: "maestro <address>" or "maestro <instance id>"
    address: str
    port: int
    user: str | None
    key: Path | None
    root: str = shipping.DEFAULT_ROOT
    instance: str = ""
    user_known_hosts: bool = False  # also trust the user's own known_hosts (maestro_host)
    origin: str = "maestro_host"  # where its address came from, in messages

    def run_dir(self, project: str) -> str:
        return f"{self.root}/runs/{project}"

    def transport(self, config: Config) -> MaestroTransport:
        """A transport whose failures say their kind: not reached, or answered an error."""
        inner = self.ssh(config)
        t = inner.target
        return MaestroTransport(inner, f"{t.user}@{t.address}:{t.port}", t.label, self.origin)

    def ssh(self, config: Config) -> SshTransport:
        from cloudsend.transport.ssh import SshTarget, SshTransport

        return SshTransport(
            SshTarget(
                name=self.name,
                address=self.address,
                port=self.port,
                user=self.user,
                key=self.key,
                known_hosts=config.state_dir / "known_hosts",
                host_key_policy=config.ssh.host_key_policy,
                user_known_hosts=self.user_known_hosts,
            )
        )


def _entry(config: Config) -> MaestroHostConfig:
    entry = config.ssh.maestro_host
    if config.maestro != "remote" or config.provider != "ssh" or entry is None:
        raise ConfigError(
            "this command's remote form needs maestro: remote (provider ssh with maestro_host, "
            "or provider aws)",
            hint="set maestro: remote and maestro_host, or use maestro: local",
        )
    return entry


def endpoint(config: Config) -> Endpoint:
    """Where the maestro is now (aws: asks the stack and EC2; a stopped maestro is refused
    there with what to do)."""
    if config.provider == "aws" and config.maestro == "remote":
        from cloudsend.pipeline import maestro_aws

        return maestro_aws.endpoint(config)
    entry = _entry(config)
    return Endpoint(
        name=f"maestro {entry.address}",
        address=entry.address,
        port=entry.port,
        user=entry.user,
        key=entry.key,
        root=entry.root or shipping.DEFAULT_ROOT,
        user_known_hosts=True,
    )


def run_dir(config: Config) -> str:
    return endpoint(config).run_dir(config.project_name)


def key_dir(config: Config) -> Path:
    return config.state_dir / "maestro"


def wheel_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cloudsend" / "wheels"


def _sftp_path(path: str) -> str:
    """A maestro path for SFTP, which starts in the login's home: ~/x is x there."""
    return path[2:] if path.startswith("~/") else path


def _cloudsend(point: Endpoint, config: Config, *args: str) -> str:
    """The shell command that runs the maestro's cloudsend on the run's bundled config."""
    folder = shipping.shell_path(point.run_dir(config.project_name))
    argv = " ".join(shlex.quote(a) for a in args)
    return f"cd {folder} && {VENV_LINK}/bin/cloudsend {argv}"


def _probed(point: Endpoint, config: Config, command: str) -> str:
    project = config.project_name
    return probed(f"{point.run_dir(project)}/.cloudsend/projects/{project}", command)


def restart_watcher(point: Endpoint, config: Config, maestro: Transport) -> int | None:
    """Restart the maestro's watcher with the maestro's own `run --detach` (daemon.decide
    there: a dead watcher's run resumes from its store, a live one is attached to, never a
    rival). Returns the new watcher's pid."""
    res = maestro.run(
        _cloudsend(point, config, "run", "--detach", "--yes", "--json", "cloudsend.yaml"),
        timeout=120,
        check=False,
        what="restart the watcher on the maestro",
    )
    if not res.ok:
        raise MaestroAnswered(res.tail(5), exit_code=res.exit_code)
    try:
        pid = _json_tail(res.stdout).get("pid")
    except (ValueError, CloudsendError):
        return None
    return pid if isinstance(pid, int) else None


def start(
    config: Config, transport: Transport | None = None, say: Callable[[str], None] | None = None
) -> Started:
    """Prepare the maestro (ship, run key, bundle) and start the run detached there (aws:
    pipeline.maestro_aws, which creates the maestro with the workers first)."""
    if config.provider == "aws":
        from cloudsend.pipeline import maestro_aws

        return maestro_aws.start(config, say or (lambda _line: None))
    from cloudsend.providers.ssh import SshProvider

    begin = time.monotonic()
    point = endpoint(config)
    provider = SshProvider(config)
    hosts = provider.up()  # pins the workers' host keys (sent in the bundle)
    own = transport is None
    maestro = transport or point.transport(config)
    try:
        if provider.unreachable:
            raise TransportError(
                "workers not reachable from here: "
                + "; ".join(f"{n}: {why}" for n, why in provider.unreachable.items()),
                hint="check the hosts: list and that each worker answers ssh",
            )
        prepared = remote.prepare(
            config,
            maestro,
            [h.transport for h in hosts],
            key_dir=key_dir(config),
            wheel_cache=wheel_cache(),
        )
        return launch(config, point, maestro, prepared, begin)
    finally:
        for h in hosts:
            h.transport.close()
        if own:
            maestro.close()


def launch(
    config: Config, point: Endpoint, maestro: Transport, prepared: remote.Prepared, begin: float
) -> Started:
    """The prepared maestro starts the run detached (its cloudsend, on the bundled config)."""
    link = f"{prepared.run_dir}/{VENV_LINK}"
    maestro.run(
        f"ln -sfn {shlex.quote(prepared.venv)} {shlex.quote(link)}",
        what="link the run to cloudsend's venv on the maestro",
    )
    res = maestro.run(
        _cloudsend(point, config, "run", "--detach", "--yes", "--json", "cloudsend.yaml"),
        timeout=120,
        what="start the run on the maestro",
    )
    return Started(_run_number(res.stdout), res.stdout, prepared, time.monotonic() - begin)


@contextlib.contextmanager
def _talk(
    config: Config, transport: Transport | None, where: Endpoint | None
) -> Iterator[tuple[Endpoint, Transport]]:
    """The maestro's endpoint and a transport to it (closed after unless given)."""
    point = where or endpoint(config)
    if transport is not None:
        yield point, transport
        return
    maestro = point.transport(config)
    try:
        yield point, maestro
    finally:
        maestro.close()


def _run_number(text: str) -> int | None:
    try:
        value = _json_tail(text).get("run")
    except (ValueError, TransportError):
        return None
    return value if isinstance(value, int) else None


def _json_tail(text: str) -> dict[str, Any]:
    """The JSON document at the end of the maestro's output (notes may precede it)."""
    start = text.find("{")
    if start < 0:
        raise MaestroAnswered(
            f"the maestro did not answer with JSON: {text[-300:]!r}", exit_code=1
        )
    doc = json.loads(text[start:])
    if not isinstance(doc, dict):
        raise MaestroAnswered("the maestro's status is not a JSON object", exit_code=1)
    return doc


def status_text(
    config: Config,
    as_json: bool,
    transport: Transport | None = None,
    *,
    where: Endpoint | None = None,
    command: str = "status",
    say: Callable[[str], None] | None = None,
) -> str:
    """The maestro's own `cloudsend status [--json]` output. A watcher that died mid-run there
    is restarted first (see `revive`); `say` hears it (default: a note atop the text form)."""
    args = ["status", "--json", "cloudsend.yaml"] if as_json else ["status", "cloudsend.yaml"]
    note = ""
    with _talk(config, transport, where) as (point, maestro):
        res = maestro.run(
            _probed(point, config, _cloudsend(point, config, *args)),
            check=False,
            what="ask the maestro",
        )
        probe, out = split_probe(res.stdout)
        if revive(command, probe):
            try:
                pid = restart_watcher(point, config, maestro)
                note = f"note: the maestro's watcher had stopped mid-run: restarted (pid {pid})"
            except MaestroAnswered as exc:  # the status still shows; the note says why
                why = [ln for ln in exc.message.splitlines() if not ln.strip().startswith("hint:")]
                note = ("note: the maestro's watcher had stopped mid-run and could not be "
                        f"restarted: {(why or [''])[-1].strip()[:300]}")
            if say is not None:
                say(note)
            res = maestro.run(
                _cloudsend(point, config, *args), check=False, what="ask the maestro"
            )
            out = res.stdout
    if res.exit_code != 0 and not out.strip():
        raise MaestroAnswered(
            f"the maestro's status failed (exit {res.exit_code}): {res.stderr.strip()[-500:]}",
            exit_code=res.exit_code,
            hint="`cloudsend run CONFIG` starts the run on the maestro",
        )
    if note and say is None and not as_json:
        return f"{note}\n{out}"
    return out


def forward(
    config: Config,
    argv: list[str],
    transport: Transport | None = None,
    *,
    where: Endpoint | None = None,
) -> str:
    """Run `cloudsend ARGV` on the maestro (its stdout; its error as ours when it fails)."""
    with _talk(config, transport, where) as (point, maestro):
        res = maestro.run(
            _cloudsend(point, config, *argv), check=False, what=f"cloudsend {argv[0]}"
        )
    if res.exit_code != 0:
        said = (res.stderr or res.stdout).strip()[-2000:]
        raise MaestroAnswered(  # its own message (and hint) as it gave it
            said,
            exit_code=res.exit_code,
            hint=None if "hint:" in said else "`cloudsend status CONFIG` shows the maestro's run",
        )
    return res.stdout


def status(
    config: Config,
    transport: Transport | None = None,
    *,
    where: Endpoint | None = None,
    command: str = "status",
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    return _json_tail(
        status_text(config, True, transport, where=where, command=command, say=say)
    )


def all_final(doc: dict[str, Any]) -> bool:
    jobs = doc.get("jobs") or []
    return bool(jobs) and all(j.get("state") in FINAL and j.get("fetched") for j in jobs)


@dataclass
class Attached:
    """What `attach` saw of the maestro's run (kept up to date as events come, so a caller
    interrupted meanwhile knows the run it was following)."""

    address: str  # the maestro, user@address:port
    run_id: int | None = None
    jobs: list[JobView] = field(default_factory=list)
    end: events.End | None = None  # how the run ended, once it did


def address(point: Endpoint) -> str:
    """The maestro as `user@address:port` (where status and attach say their answer is from)."""
    return f"{point.user or getpass.getuser()}@{point.address}:{point.port}"


@contextlib.contextmanager
def _streaming(
    config: Config, transport: StreamingTransport | None, where: Endpoint | None
) -> Iterator[tuple[Endpoint, StreamingTransport]]:
    """As _talk, with a transport that can stream a command's output."""
    with _talk(config, transport, where) as (point, maestro):
        # the maestro's transport is ssh, which streams (the Protocol says what that means)
        assert isinstance(maestro, StreamingTransport)
        yield point, maestro


def _lost(where: str, doing: str, exc: TransportError, hint: str) -> MaestroUnreachable:
    """The link broke once the maestro had answered: one message saying so."""
    detail = exc.message.split(": ", 1)[-1] if isinstance(exc, MaestroUnreachable) else exc.message
    return MaestroUnreachable(
        f"lost the connection to the maestro {where} {doing}: {detail}", hint=hint
    )


def attach(
    config: Config,
    reporter: Reporter,
    seen: Attached | None = None,
    transport: StreamingTransport | None = None,
    *,
    where: Endpoint | None = None,
    say: Callable[[str], None] | None = None,
) -> Attached:
    """Follow the maestro's run live until it ends: the maestro's own `attach --events` over
    one SSH channel, each event handed to `reporter` as it arrives (the live line, notes);
    returns with `end` set. A watcher that died there is restarted first (see `revive`; `say`
    hears it). A maestro not reached is MaestroUnreachable; a connection lost once attached
    is one too (the run goes on there); Ctrl-C closes the channel, which ends the maestro's
    attach, not its run."""
    reader = events.LineReader()
    said = bytearray()
    with _streaming(config, transport, where) as (point, maestro):
        seen = seen or Attached(address(point))
        res = maestro.run(_probed(point, config, "true"), check=False, what="ask the maestro")
        probe, _ = split_probe(res.stdout)
        if revive("attach", probe):
            pid = restart_watcher(point, config, maestro)
            (say or reporter.notice)(
                f"note: the maestro's watcher had stopped mid-run: restarted (pid {pid})"
            )

        def out(data: bytes) -> None:
            assert seen is not None
            for event in reader.feed(data):
                if isinstance(event, events.Progress):
                    seen.run_id = event.run if event.run is not None else seen.run_id
                    seen.jobs = event.jobs
                    reporter.progress(event.jobs, event.activity)
                elif isinstance(event, events.Notice):
                    reporter.notice(event.message)
                elif isinstance(event, events.Phase):
                    reporter.phase(event.name, event.detail)
                elif isinstance(event, events.Log):
                    reporter.log(event.host, event.text)
                elif isinstance(event, events.End):
                    seen.end = event
                    seen.run_id = event.run if event.run is not None else seen.run_id

        def err(data: bytes) -> None:
            said.extend(data)
            del said[:-4000]

        command = _cloudsend(point, config, "attach", "--events", "cloudsend.yaml")
        running: list[bool] = []
        try:
            code = maestro.stream(
                command, out, err, what="attach to the run on the maestro",
                started=lambda: running.append(True),
            )
        except TransportError as exc:
            if not running:
                raise  # never reached: as every call says it
            raise _lost(
                seen.address, "while attached", exc,
                "the run goes on there (nothing is lost); `cloudsend attach` follows it "
                "again once the maestro answers",
            ) from None
    if seen.end is None:
        why = bytes(said).decode("utf-8", "replace").strip()[-2000:]
        raise MaestroAnswered(
            f"{seen.address}: {why or f'attach ended (exit {code}) before the run did'}",
            exit_code=code,
            hint=None if "hint:" in why else
            "`cloudsend run CONFIG` starts a run there; `cloudsend status CONFIG` shows it",
        )
    return seen


def follow_log(
    config: Config,
    argv: list[str],
    out: Callable[[bytes], object],
    err: Callable[[bytes], object],
    transport: StreamingTransport | None = None,
    *,
    where: Endpoint | None = None,
) -> int:
    """`cloudsend logs ... -f` (argv) run on the maestro, its output handed to out/err as it
    is written there, until the job ends; its exit code. A maestro not reached is
    MaestroUnreachable, as for every call; a link lost while following says so."""
    running: list[bool] = []
    with _streaming(config, transport, where) as (point, maestro):
        command = _cloudsend(point, config, *argv)
        try:
            return maestro.stream(
                command, out, err, what="follow the job's log on the maestro",
                started=lambda: running.append(True),
            )
        except TransportError as exc:
            if not running:
                raise  # never reached: as every call says it
            raise _lost(
                address(point), "while following the log", exc,
                "the job goes on (nothing is lost); `cloudsend logs -f` follows it again once "
                "the maestro answers",
            ) from None


class MaestroInfo(TypedDict):
    """`status --json`'s "maestro": where the answer comes from (the same key with
    maestro: local, so scripts read both the same way)."""

    mode: str  # "local" | "remote"
    address: str | None  # user@address:port of a remote maestro
    run_dir: str | None  # the run's folder there
    reachable: bool


LOCAL_MAESTRO = MaestroInfo(mode="local", address=None, run_dir=None, reachable=True)


def status_report(
    config: Config,
    as_json: bool,
    transport: Transport | None = None,
    *,
    where: Endpoint | None = None,
) -> str:
    """What the laptop's `status` prints for a remote run: the maestro's own table under a
    line naming the maestro (a watcher-restart note first), or its `status --json` document
    with "maestro" (MaestroInfo)."""
    point = where or endpoint(config)
    notes: list[str] = []
    text = status_text(config, as_json, transport, where=point, say=notes.append)
    info = MaestroInfo(
        mode="remote",
        address=address(point),
        run_dir=point.run_dir(config.project_name),
        reachable=True,
    )
    if as_json:
        return json.dumps({**_json_tail(text), "maestro": info}, indent=2, default=str)
    return "\n".join([*notes, f"maestro {info['address']} ({info['run_dir']}):", text.rstrip()])


_LIST = (
    "import hashlib, json, os, sys\n"
    "root = sys.argv[1]; out = {}\n"
    "if os.path.isdir(root):\n"
    "    for run in sorted(os.listdir(root)):\n"
    "        if not run.startswith('run-') or not os.path.isdir(os.path.join(root, run)):\n"
    "            continue\n"
    "        for job in sorted(os.listdir(os.path.join(root, run))):\n"
    "            top = os.path.join(root, run, job); files = {}\n"
    "            for d, _, names in os.walk(top):\n"
    "                for n in names:\n"
    "                    p = os.path.join(d, n)\n"
    "                    if os.path.islink(p) or not os.path.isfile(p):\n"
    "                        continue\n"
    "                    h = hashlib.sha256()\n"
    "                    with open(p, 'rb') as fh:\n"
    "                        for b in iter(lambda: fh.read(1 << 20), b''):\n"
    "                            h.update(b)\n"
    "                    files[os.path.relpath(p, top)] = [h.hexdigest(), os.path.getsize(p)]\n"
    "            out[run + '/' + job] = files\n"
    "print('__cloudsend_results__' + json.dumps(out))\n"
)



def _safe(rel: str) -> bool:
    parts = PurePosixPath(rel).parts
    return bool(parts) and not PurePosixPath(rel).is_absolute() and ".." not in parts


Listing = dict[str, dict[str, list[Any]]]  # "run-N/<job>" -> {file: [sha256, size]}


def plan_fetch(
    listing: Listing,
    complete: Collection[str],
    marked: Collection[str],
    have: Callable[[str], str | None],
) -> dict[str, list[str]]:
    """What `fetch` copies: for each job folder the maestro holds complete (`complete`: job
    ids the maestro fetched) and the laptop has not marked done, the files whose sha256 here
    (`have("run-N/job/file")`, None when absent) differs from the maestro's. A folder with
    nothing to copy still appears (it gets its marker). Unsafe names are left out."""
    todo: dict[str, list[str]] = {}
    for folder, files in sorted(listing.items()):
        if not _safe(folder) or len(PurePosixPath(folder).parts) != 2:
            continue
        if PurePosixPath(folder).parts[1] not in complete or folder in marked:
            continue
        todo[folder] = [
            rel for rel, (sha, _size) in sorted(files.items())
            if _safe(rel) and have(f"{folder}/{rel}") != sha
        ]
    return todo


@dataclass(frozen=True)
class Holding:
    """What the maestro holds of the run's results, against what this machine has."""

    rel_root: str  # the results folder, relative to the run dir (as on this machine)
    home: Path  # this machine's results/<project>/
    marks: Path  # this machine's markers of the job folders fetched from this maestro
    listing: Listing
    todo: dict[str, list[str]]  # plan_fetch: job folders to bring home (their files)
    unfinished: list[str]  # final jobs the maestro has not fetched from their worker yet


def holding(
    config: Config, point: Endpoint, maestro: Transport, command: str = "fetch"
) -> Holding:
    """Ask the maestro (its status, its results folder) what `fetch` would bring home
    (`command` "fetch" restarts a watcher that died there; "down" does not)."""
    paths = project_paths(config)
    rel_root = "results/" + paths.results_root.name
    if paths.results_root.parent.parent == config.base_dir:
        rel_root = paths.results_root.relative_to(config.base_dir).as_posix()
    marks = key_dir(config) / "fetched"
    if point.instance:  # a maestro made again (aws) numbers its runs from 1 again
        marks = marks / point.instance
    home = paths.results_root

    def have(rel: str) -> str | None:
        local = home / rel
        return sha256_file(local) if local.is_file() else None

    jobs = status(config, maestro, where=point, command=command).get("jobs") or []
    complete = {str(j["job_id"]) for j in jobs if j.get("state") in FINAL and j.get("fetched")}
    unfinished = [
        str(j["job_id"]) for j in jobs
        if j.get("state") in FINAL and j.get("state") != "CANCELLED" and not j.get("fetched")
    ]
    results = shipping.shell_path(point.run_dir(config.project_name) + "/" + rel_root)
    res = maestro.run(
        f"python3 -c {shlex.quote(_LIST)} {results}", what="list the results on the maestro"
    )
    listing: Listing = json.loads(res.stdout.split("__cloudsend_results__")[-1])
    marked = {f for f in listing if _safe(f) and (marks / f).exists()}
    todo = plan_fetch(listing, complete, marked, have)
    return Holding(rel_root, home, marks, listing, todo, unfinished)


def fetch(
    config: Config,
    transport: Transport | None = None,
    *,
    where: Endpoint | None = None,
    say: Callable[[str], None] | None = None,
) -> Fetched:
    """Bring home every job the maestro holds complete and the laptop does not (see the module
    doc): results land in the laptop's results/<project>/run-N/<job>/, as with maestro: local.
    aws: pipeline.maestro_aws.fetch (a stopped maestro is started for it, then stopped)."""
    if config.provider == "aws" and transport is None and where is None:
        from cloudsend.pipeline import maestro_aws

        return maestro_aws.fetch(config, say or (lambda _line: None))
    with _talk(config, transport, where) as (point, maestro):
        held = holding(config, point, maestro)
        home, there = held.home, point.run_dir(config.project_name) + "/" + held.rel_root
        got = Fetched(where=home)
        for folder, files in held.todo.items():
            for rel in files:
                sha, size = held.listing[folder][rel]
                local = home / folder / rel
                local.parent.mkdir(parents=True, exist_ok=True)
                tmp = local.with_name(f".{local.name}.part")
                maestro.get(_sftp_path(f"{there}/{folder}/{rel}"), tmp)
                if sha256_file(tmp) != sha:
                    tmp.unlink()
                    raise TransportError(f"{folder}/{rel} changed on the maestro while fetched")
                os.replace(tmp, local)
                got = Fetched(got.jobs, got.files + 1, got.bytes + int(size), got.where)
            (home / folder).mkdir(parents=True, exist_ok=True)
            mark = held.marks / folder
            mark.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            mark.write_text("fetched\n")
            got.jobs.append(folder)
    return got


DownStep = Literal["keys", "keys, then report", "stop"]


def after_maestro_down(exit_code: int, said: str) -> DownStep:
    """What the laptop's `down` does once the maestro's own `down` answered: remove the run
    key from the workers ("keys": it went down, or nothing ever ran there), also when some
    workers were not cleaned (unreachable: "keys, then report" them), but not when the
    maestro refused (results not fetched, jobs left unconfirmed: the run goes on, "stop")."""
    if exit_code == 0 or "No such file" in said:
        return "keys"
    if exit_code == HostsNotCleaned.exit_code and "down did not clean" in said:
        return "keys, then report"
    return "stop"


def down(
    config: Config,
    keep: bool = False,
    force: bool = False,
    say: Callable[[str], None] | None = None,
) -> str:
    """Stop the run on the maestro (its `down` cancels and cleans the workers), then remove the
    project's run keys from every worker (with the user's key, from here). aws:
    pipeline.maestro_aws.down (the maestro is destroyed with the stack)."""
    if config.provider == "aws":
        from cloudsend.pipeline import maestro_aws

        return maestro_aws.down(config, keep=keep, force=force, say=say or (lambda _l: None))
    from cloudsend.providers.ssh import SshProvider

    with _talk(config, None, None) as (point, maestro):
        args = ["down", "--yes", "cloudsend.yaml"]
        if keep:
            args.insert(1, "--keep")
        if force:
            args.insert(1, "--force")
        res = maestro.run(_cloudsend(point, config, *args), check=False, what="take the run down")
    said = (res.stderr or res.stdout).strip()
    step = after_maestro_down(res.exit_code, res.stderr)
    if step == "stop":
        raise MaestroAnswered(
            f"the maestro's down failed (exit {res.exit_code}): {said[-500:]}",
            exit_code=res.exit_code,
            hint="`cloudsend fetch` first, or `down --force` to drop unfetched results",
        )
    provider = SshProvider(config)
    hosts = provider.up()
    failed: dict[str, str] = {}
    try:
        if step == "keys, then report":  # what the maestro could not stop, stopped from here
            _stop_agents(hosts)
        provider.down(hosts, keep=keep)
    except HostsNotCleaned as exc:
        failed.update(exc.hosts)
    finally:
        for h in hosts:
            h.transport.close()
    for name, why in provider.unreachable.items():
        failed[name] = f"the run key stays in its authorized_keys: {why.splitlines()[0][:200]}"
    if failed:
        raise HostsNotCleaned(failed)
    return res.stdout


def _stop_agents(hosts: list[Host]) -> None:
    """Stop the project's agent (and its jobs) on each host, with the user's key: after a
    maestro's down that left some workers (the maestro reaches them with the run key only,
    which a first down may have removed already). No agent there is fine."""
    from cloudsend.pipeline.agent_client import AgentClient

    for host in hosts:
        with contextlib.suppress(CloudsendError):
            AgentClient(host).stop(kill_jobs=True)
