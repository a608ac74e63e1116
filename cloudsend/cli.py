"""The `cloudsend` command. Imports stay inside commands so `--help` is instant."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cloudsend import phases
from cloudsend.core import JobState
from cloudsend.errors import EXIT_CODES_HELP, BudgetError, CloudsendError, ConfigError, JobError
from cloudsend.textsafe import clean

if TYPE_CHECKING:
    from cloudsend.api import SyncClient
    from cloudsend.config.models import Config
    from cloudsend.pipeline.daemon import Ownership, WatcherFiles, WatcherRecord
    from cloudsend.pipeline.reporting import RunSummary

CONFIG_NAME = "cloudsend.yaml"  # what CONFIG means when it is left out or a directory
CONFIG_ARG = click.argument(
    "config",
    required=False,
    default=CONFIG_NAME,
    type=click.Path(path_type=Path),
)
JSON_OPT = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=False)


# `debug:` in the config (0-3) raises verbosity like --debug does; main() reads it on error.
_VERBOSITY = {"debug": 0}


def _load(config: Path) -> Config:
    """Load the config and apply its `debug` level: 1 tracebacks on error and info logs,
    2 also debug logs (connections, retries, every agent call) and bootstrap output
    streamed live, 3 also paramiko's own logs."""
    import logging

    from cloudsend.config import load_config

    if config.is_dir():  # a project folder: its cloudsend.yaml
        config = config / CONFIG_NAME
    cfg = load_config(config)
    level = cfg.debug
    _VERBOSITY["debug"] = level
    if level >= 2:
        cfg.print_deploy = True
    if level:
        logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
        logging.getLogger("cloudsend").setLevel(logging.INFO if level == 1 else logging.DEBUG)
        if level >= 3:
            logging.getLogger("paramiko").setLevel(logging.DEBUG)
    return cfg


def _client(
    config: Path | Config, quiet: bool = False, poll_wait: float = 2.0
) -> tuple[SyncClient, Any]:
    from cloudsend.api import SyncClient
    from cloudsend.ui import RichReporter

    if isinstance(config, Path):
        config = _load(config)
    reporter = RichReporter(_console(), quiet=quiet)
    return SyncClient(config, reporter, poll_wait=poll_wait), reporter


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="\b\n" + EXIT_CODES_HELP,  # \b: click keeps the lines as written
)
@click.version_option(package_name="cloudsend")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def cli(debug: bool) -> None:
    """Run your scripts on machines described in one config file.

    CONFIG defaults to ./cloudsend.yaml (YAML, or a Python file defining `config = {...}`);
    a directory means the cloudsend.yaml in it.
    The default provider, `local`, runs everything on this machine.
    """


@cli.command()
@CONFIG_ARG
@click.option(
    "--reset",
    is_flag=True,
    help="Kill the project's processes on the hosts and redeploy from scratch (new run).",
)
@click.option(
    "--retry-cancelled",
    is_flag=True,
    help="Run the jobs cancelled earlier again (they are not re-run otherwise).",
)
@click.option("--yes", "-y", is_flag=True, help="aws: do not ask before creating resources.")
@click.option(
    "--detach",
    is_flag=True,
    help="Watch the run from a background process and return at once (`cloudsend attach` "
    "follows it; it survives this terminal closing).",
)
@JSON_OPT
def run(
    config: Path, reset: bool, retry_cancelled: bool, yes: bool, detach: bool, as_json: bool
) -> None:
    """Set up hosts and environments, run every job, watch them, fetch results.

    Interrupted? Run it again: DONE jobs are never re-run, files never re-sent, environments
    never rebuilt unless they changed. With --detach the watching goes on in the background.
    """
    from cloudsend.pipeline import daemon
    from cloudsend.ui import print_json, print_summary, summary_doc

    phases.since_born("start-up: cloudsend's imports (cli, click)")
    with phases.span("config load (pydantic imports + validation)"):
        cfg = _load(config)
    _confirm_plan(cfg, yes)  # `run` creates machines too: same review as `up`
    if cfg.maestro == "remote":  # ssh (the gate refuses the rest): the watcher runs there
        _remote_run(cfg, as_json)
        return
    files = _watcher_files(cfg)
    record = files.read()
    action = daemon.decide(
        "run-detach" if detach else "run",
        files.lock_held(),
        record is not None,
        record is not None and record.is_ended,
    )
    if action == daemon.Action.ATTACH:  # one watcher per run: never a rival
        if detach:
            _detached_note(files, files.read(), "already watched by", as_json)
            return
        click.echo("a watcher already runs this project's run: attaching", err=True)
        _attach(cfg, files, as_json)
        return
    resume = action == daemon.Action.RESTART and not reset  # the dead watcher's run goes on
    if action == daemon.Action.RESTART and record is not None:
        click.echo(f"the last watcher (pid {record.pid}) died mid-run: resuming", err=True)
    if detach:
        since = time.time()
        argv = _serve_argv(cfg, reset=reset, retry_cancelled=retry_cancelled, resume=resume)
        daemon.spawn(files, lambda: _serve(cfg, files, reset, retry_cancelled, resume), argv)
        _detached_note(files, daemon.wait_for_run(files, since), "detached: watched by", as_json)
        return
    owner = daemon.Ownership(files, detached=False)
    with phases.span("imports: pipeline, transport, rich"):
        client, reporter = _client(cfg, quiet=as_json)
    try:
        with phases.span("up: hosts, run opened, earlier run cancelled"):
            client.start(reset=reset, resume=resume)
        owner.opened(client.session.current_run())
        with phases.span("deploy: agent check, file listing"):
            client.deploy()
        with phases.span("status check + plan + submit"):
            submitted = client.run(retry_cancelled=retry_cancelled)
        unfinished = sum(v.state != JobState.DONE for v in client.session.views())
        with phases.span("watch: long polls, fetches, store"):
            client.wait()
        with phases.span("end: fetch_results, finalize, summary"):
            client.fetch_results()
            client.finalize()
            summary = client.summary()
            _record_end(owner, summary)
            client.session.end_of_run()  # recorded first: on a maestro this stops it last
    finally:
        with phases.span("end: close"):
            reporter.close()
            client.close()
            owner.release()
    if as_json:
        with phases.span("report printed"):
            print_json(summary_doc(summary))
    else:
        print_summary(_console(), summary)
        _nothing_ran(summary, submitted, unfinished, config)
        cancelled = summary.counts().get(JobState.CANCELLED, 0)
        if cancelled:
            click.echo(
                f"{cancelled} job(s) CANCELLED: not run again unless you pass --retry-cancelled"
            )
    raise_for(summary)


def _watcher_files(cfg: Config) -> WatcherFiles:
    from cloudsend.config.layout import open_project
    from cloudsend.pipeline.daemon import WatcherFiles

    return WatcherFiles.of(open_project(cfg))


def _record_end(owner: Ownership, summary: RunSummary) -> None:
    """What the run ended with, for `attach` and `status` in other terminals."""
    from cloudsend.ui import summary_doc

    error: CloudsendError | None = None
    try:
        raise_for(summary)
    except CloudsendError as exc:
        error = exc
    code, message = (0, "") if error is None else (error.exit_code, f"{error.kind}: {error}")
    owner.ended(code, message, summary_doc(summary))


def _serve(
    cfg: Config, files: WatcherFiles, reset: bool, retry_cancelled: bool, resume: bool = False
) -> int:
    """The detached watcher (in the daemon spawned by run --detach or attach): the same
    pipeline as `run`, its progress in watcher.log, its end in watcher.json."""
    from cloudsend.api import SyncClient
    from cloudsend.errors import StateError
    from cloudsend.pipeline import daemon

    try:
        owner = daemon.Ownership(files, detached=True)
    except StateError:  # a rival started first: it watches, this one is not needed
        return 0
    reporter = daemon.LogReporter()
    reporter.phase("watcher", f"pid {os.getpid()}, config {cfg.source}")
    client: SyncClient | None = None
    try:
        client = SyncClient(cfg, reporter)
        client.start(reset=reset, resume=resume)
        owner.opened(client.session.current_run())
        client.deploy()
        client.run(retry_cancelled=retry_cancelled)
        client.wait()
        client.fetch_results()
        client.finalize()
        summary = client.summary()
        _record_end(owner, summary)
        reporter.phase("ended", f"exit {owner.record.exit_code} {owner.record.message}")
        client.session.end_of_run()  # recorded first: on a maestro this stops it last
        return owner.record.exit_code or 0
    except CloudsendError as exc:  # the run ended with an error: attach shows it
        reporter.phase("ended", f"{exc.kind}: {exc}")
        owner.ended(exc.exit_code, f"{exc.kind}: {exc}", {})
        return exc.exit_code
    finally:
        if client is not None:
            client.close()
        owner.release()


def _watcher_line(files: WatcherFiles) -> dict[str, Any]:
    """`status`'s word on the watcher: "running", "ended", "not running" (a detached one
    died before its run ended) or "none" (never detached), with a note for people."""
    record = files.read()
    if files.lock_held():
        pid = files.live_pid()
        return {"state": "running", "pid": pid, "note": f"watcher: running (pid {pid})"}
    if record is None:
        return {"state": "none", "pid": None, "note": ""}
    if record.is_ended:
        return {"state": "ended", "pid": None, "exit_code": record.exit_code, "note": ""}
    note = "watcher not running — `cloudsend attach` restarts it" if record.detached else ""
    return {"state": "not running", "pid": None, "note": note}


def _serve_argv(cfg: Config, **flags: bool) -> list[str]:
    """`cloudsend _watch ...`: the daemon in a fresh interpreter (daemon.spawn)."""
    if cfg.source is None:
        return []
    on = [f"--{name.replace('_', '-')}" for name, value in flags.items() if value]
    return ["_watch", str(cfg.source), *on]


@cli.command("_watch", hidden=True)
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--reset", is_flag=True)
@click.option("--retry-cancelled", is_flag=True)
@click.option("--resume", is_flag=True)
def watch_daemon(config: Path, reset: bool, retry_cancelled: bool, resume: bool) -> None:
    """The detached watcher itself, already daemonized by daemon.spawn (not for users)."""
    cfg = _load(config)
    sys.exit(_serve(cfg, _watcher_files(cfg), reset, retry_cancelled, resume))


def _detached_note(
    files: WatcherFiles, record: WatcherRecord | None, how: str, as_json: bool
) -> None:
    if record is None:
        raise CloudsendError(
            "the detached watcher did not start",
            hint=f"its log says why: {files.log}",
        )
    if as_json:
        from cloudsend.ui import print_json

        print_json(
            {"run": record.run_id, "pid": record.pid, "log": str(files.log),
             "ended": record.is_ended, "exit_code": record.exit_code}
        )
        return
    opening = "the run (it opens once the hosts are up)"
    run = f"run {record.run_id}" if record.run_id is not None else opening
    if record.is_ended:
        click.echo(f"{run} ended (exit {record.exit_code}): `cloudsend attach` shows it")
        if record.exit_code:  # already failed (no host could start...): say why, as run does
            click.echo(clean(record.message, 20_000), err=True)
            sys.exit(record.exit_code)
        return
    click.echo(f"{run} {how} pid {record.pid} (log {files.log})")
    click.echo("follow it: cloudsend attach · status: cloudsend status")


def _attach(cfg: Config, files: WatcherFiles, as_json: bool, events: bool = False) -> None:
    """Follow the project's watcher until the run ends, restarting it when it died; Ctrl-C
    leaves it running. Ends with the run's summary and exit code. `events`: the progress
    and the end as JSON lines (pipeline.attach_events), for a laptop attached over SSH."""
    from cloudsend.pipeline import daemon
    from cloudsend.pipeline.attach_events import EventReporter
    from cloudsend.ui import print_json, print_summary, summary_doc

    client, reporter = _client(cfg, quiet=as_json or events)
    emitter = EventReporter() if events else None
    if emitter is not None:
        reporter = emitter
    session = client.session
    run_id: int | None = None
    try:
        while True:
            record = files.read()
            held = files.lock_held()
            ended = record is not None and record.is_ended
            action = daemon.decide("attach", held, record is not None, ended)
            if action == daemon.Action.NOTHING:
                raise CloudsendError(
                    "no detached run to attach to",
                    hint="start one with `cloudsend run --detach`",
                )
            if action == daemon.Action.OUTCOME:
                break
            if action == daemon.Action.RESTART:
                reporter.close()  # no drawing thread across the fork
                since = time.time()
                argv = _serve_argv(cfg, resume=True)
                daemon.spawn(files, lambda: _serve(cfg, files, False, False, resume=True), argv)
                started = daemon.wait_for_run(files, since)
                if started is None:
                    raise CloudsendError(
                        "the watcher could not be restarted", hint=f"see {files.log}"
                    )
                reporter.notice(f"the watcher had stopped: restarted (pid {started.pid})")
                continue
            if record is not None and record.run_id is not None:
                run_id = session.run_id = record.run_id
                if emitter is not None:
                    emitter.run = run_id
                reporter.progress(session.views())
            time.sleep(0.5)
        reporter.close()
        assert record is not None
        if record.run_id is None:  # it ended before opening a run (the hosts could not start)
            if emitter is not None:
                emitter.end(record.exit_code or 1, record.message, {})
            click.echo(clean(record.message or "the watcher ended before the run began"), err=True)
            sys.exit(record.exit_code or 1)
        session.run_id = record.run_id
        summary = session.summary()
        done = record.summary  # the watcher's own counters (this process sent nothing)
        summary.files_sent = int(done.get("files_sent", 0))
        summary.bytes_sent = int(done.get("bytes_sent", 0))
        summary.envs_submitted = int(done.get("envs_submitted", 0))
        summary.elapsed = float(done.get("elapsed_s", 0.0))
        summary.env_failures = dict(done.get("env_failures", {}))
        if emitter is not None:
            emitter.run = record.run_id
            emitter.end(record.exit_code or 0, record.message, summary_doc(summary))
        elif as_json:
            print_json(record.summary or {"run": record.run_id, "exit_code": record.exit_code})
        else:
            print_summary(_console(), summary)
    except KeyboardInterrupt:
        reporter.close()
        what = f"run {run_id}" if run_id is not None else "the run"
        click.echo(f"\ndetached: {what} goes on (`cloudsend attach` follows it again)", err=True)
        sys.exit(130)
    finally:
        reporter.close()
        client.close()
    if record.exit_code:
        click.echo(clean(record.message, 20_000), err=True)
        sys.exit(record.exit_code)


@cli.command()
@CONFIG_ARG
@JSON_OPT
@click.option("--events", is_flag=True, hidden=True, help="Progress as JSON lines (a maestro).")
def attach(config: Path, as_json: bool, events: bool) -> None:
    """Follow a detached run (`run --detach`) until it ends; Ctrl-C leaves it running.

    A watcher that died (killed, machine rebooted) is restarted and resumes the run: nothing
    done is redone. Ends with the run's summary and exit code."""
    cfg = _load(config)
    if cfg.maestro == "remote":
        _remote_attach(cfg, as_json)
        return
    _attach(cfg, _watcher_files(cfg), as_json, events=events)


def _remote_attach(cfg: Config, as_json: bool) -> None:
    """attach with maestro: remote: the maestro's live events drawn here as the local attach
    draws its own; the same summary, exit code and Ctrl-C message."""
    from cloudsend.pipeline import maestro_control as control
    from cloudsend.pipeline.attach_events import job_view
    from cloudsend.pipeline.reporting import RunSummary
    from cloudsend.ui import RichReporter, print_json, print_summary

    point = control.endpoint(cfg)
    reporter = RichReporter(_console(), quiet=as_json)
    seen = control.Attached(control.address(point))
    try:
        control.attach(
            cfg, reporter, seen, where=point,
            say=lambda line: click.echo(clean(line), err=True),
        )
    except KeyboardInterrupt:
        reporter.close()
        what = f"run {seen.run_id}" if seen.run_id is not None else "the run"
        click.echo(f"\ndetached: {what} goes on (`cloudsend attach` follows it again)", err=True)
        sys.exit(130)
    finally:
        reporter.close()
    end = seen.end
    assert end is not None  # control.attach raises otherwise
    if end.run is None:  # it ended before opening a run (the hosts could not start)
        click.echo(clean(end.message or "the watcher ended before the run began"), err=True)
        sys.exit(end.exit_code or 1)
    doc = end.summary
    if as_json:
        print_json(doc or {"run": end.run, "exit_code": end.exit_code})
    else:
        where = f"{seen.address}:{doc.get('results_dir', '')}"
        summary = RunSummary(
            run_id=end.run,
            results_dir=Path(where),
            jobs=[job_view(j) for j in doc.get("jobs") or []],
            files_sent=int(doc.get("files_sent", 0)),
            bytes_sent=int(doc.get("bytes_sent", 0)),
            envs_submitted=int(doc.get("envs_submitted", 0)),
            elapsed=float(doc.get("elapsed_s", 0.0)),
            env_failures=dict(doc.get("env_failures") or {}),
        )
        print_summary(_console(), summary)
        click.echo("on the maestro: `cloudsend fetch` brings them home")
    if end.exit_code:
        click.echo(clean(end.message, 20_000), err=True)
        sys.exit(end.exit_code)


def raise_for(summary: RunSummary) -> None:
    """The run's outcome as an exit code (EXIT_CODES_HELP): failed environments (5), jobs out
    of time (9), other ABORTED jobs (6); returns when every job is DONE (or CANCELLED)."""
    if summary.env_failures:
        from cloudsend.errors import BootstrapError

        raise BootstrapError(
            f"{len(summary.env_failures)} environment(s) failed to build",
            hint="see the log tails above; fix the environment and run again",
        )
    if summary.out_of_time:
        raise BudgetError(
            f"{len(summary.out_of_time)} job(s) not finished: the time budget ran out (every "
            "host that could take them reached its eco_life)",
            hint="raise eco_life or add on-demand instances; `cloudsend run` again starts new "
            "machines for them (with a new eco_life)",
        )
    if not summary.ok:
        failed = [j for j in summary.jobs if j.state == JobState.ABORTED]
        outputs = sum(1 for j in failed if (j.reason or "").startswith("output "))
        raise JobError(
            f"{len(failed)} job(s) ABORTED"
            + (f" ({outputs} did not write a declared output)" if outputs else ""),
            hint="the table's reason and `cloudsend logs JOB --stderr` show why; "
            "`cloudsend run` retries them",
        )


def _nothing_ran(summary: Any, submitted: int, unfinished: int, config: Path) -> None:
    from rich.text import Text

    from cloudsend.pipeline.reporting import nothing_ran_note

    rerun = "cloudsend run --reset" + ("" if str(config) == "cloudsend.yaml" else f" {config}")
    note = nothing_ran_note(summary, submitted, rerun, unfinished)
    if note is not None:
        _console().print(Text(clean(note)))


@cli.command()
@CONFIG_ARG
@click.option(
    "--offline",
    is_flag=True,
    help="aws: no CLI, no credentials: the resources the program declares "
    "(Pulumi mock runtime) and the cost from the bundled price table.",
)
@JSON_OPT
def preview(config: Path, offline: bool, as_json: bool) -> None:
    """Show what `up` would create or change, and what it costs per hour.

    provider aws: the resource changes (create / update / replace / delete, with the
    properties that change) and the hourly cost of the instances (live spot and on-demand
    prices, else a bundled dated table), total per hour and for eco_life.
    """
    from cloudsend.providers import get_provider
    from cloudsend.ui import preview_doc, print_json, print_preview

    plan = get_provider(_load(config)).preview(offline=offline)
    if as_json:
        print_json(preview_doc(plan))
    else:
        print_preview(_console(), plan)


@cli.command()
@CONFIG_ARG
@click.option("--reset", is_flag=True, help="Kill the project's processes and redeploy.")
@click.option("--yes", "-y", is_flag=True, help="aws: do not ask before creating resources.")
def up(config: Path, reset: bool, yes: bool) -> None:
    """Create or find the hosts and start their agents (no job runs; `run` then builds
    each environment on the hosts its jobs go to).

    provider aws: shows the preview and the hourly cost, refuses a plan over
    max_cost_per_hour, and asks for confirmation unless --yes.
    """

    cfg = _load(config)
    if cfg.maestro == "remote" and cfg.provider != "aws":  # before any preview
        from cloudsend.pipeline.session import refuse_watching_here

        refuse_watching_here(cfg)
    _confirm_plan(cfg, yes)
    if cfg.maestro == "remote":  # aws: the stack made whole, the maestro told; no run started
        from cloudsend.pipeline import maestro_aws

        done = maestro_aws.up(cfg, say=lambda line: click.echo(clean(line), err=True))
        click.echo(f"hosts ready; the maestro has the stack's outputs in {done.run_dir}")
        return
    client, reporter = _client(cfg)
    try:
        client.start(reset=reset)
        client.deploy()
    finally:
        reporter.close()
        client.close()
    click.echo(f"hosts ready: {clean(', '.join(h.name for h in client.session.hosts))}")


@cli.command()
@CONFIG_ARG
@JSON_OPT
def status(config: Path, as_json: bool) -> None:
    """Show every job's state, host and whether its results are fetched.

    A host that does not answer does not hide the rest: the last known states are shown,
    marked stale ('?' in the table, "stale": true in --json)."""
    from cloudsend.pipeline.reporting import stale_jobs
    from cloudsend.ui import jobs_table, print_json, status_doc

    cfg = _load(config)
    if cfg.maestro == "remote":  # the maestro's own answer, saying where it comes from
        from cloudsend.pipeline import maestro_control as control

        click.echo(control.status_report(cfg, as_json).rstrip())
        return
    client, _ = _client(cfg, quiet=True)
    session = client.session
    error: str | None = None
    answered: set[str] = set()
    try:
        try:
            session.attach()
            answered = set(session.reconcile())
        except CloudsendError as exc:
            if session.run_id is None:  # no run recorded: nothing to show
                raise
            error = exc.message.splitlines()[0][:300]
        views = session.views()
        hosts = session.store.hosts(session.current_run())
        watcher = _watcher_line(_watcher_files(client.config))
    finally:
        client.close()
    if as_json:
        from cloudsend.pipeline.maestro_control import LOCAL_MAESTRO

        doc = status_doc(views, hosts, answered, error)
        print_json({**doc, "watcher": watcher, "maestro": LOCAL_MAESTRO})
        return
    from rich.text import Text

    console = _console()
    stale = stale_jobs(views, answered)
    console.print(jobs_table(views, stale=stale))
    for h in hosts:
        mark = " (last known)" if h.name not in answered and h.health != "down" else ""
        console.print(Text(clean(f"host {h.name}: {h.health}{mark} {h.detail}".rstrip())))
    if watcher["note"]:
        console.print(Text(watcher["note"]), highlight=False)
    if stale or error:
        why = f" ({clean(error, 300)})" if error else ""
        console.print(
            Text(f"?: last known state: its host did not answer{why}", style="yellow"),
            highlight=False,
        )


@cli.command()
@click.argument("job")
@CONFIG_ARG
@click.option("--stderr", "stream", flag_value="stderr", help="Show stderr instead of stdout.")
@click.option("--stdout", "stream", flag_value="stdout", default=True, hidden=True)
@click.option(
    "-n", "--lines", default=50, show_default=True, help="How many last lines; 0: the whole log."
)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the job ends.")
def logs(job: str, config: Path, stream: str, lines: int, follow: bool) -> None:
    """Print the last lines of JOB's stdout (or --stderr), streamed as written.

    JOB: a job id or a unique prefix of it, the job's index in jobs[] (3, or 3.1 for
    repetition 1) or its name (the script's stem or the command's first word)."""
    import time

    from cloudsend.pipeline import operations
    from cloudsend.pipeline.logs import write_log
    from cloudsend.textsafe import TerminalFilter

    out = click.get_binary_stream("stdout")
    last = b"\n"
    # to a terminal, what the job wrote must not retitle, clear or recolour it; to a pipe or
    # a file the bytes go exactly as written
    shown = TerminalFilter() if out.isatty() else None

    def write(data: bytes) -> None:
        nonlocal last
        if shown is not None:
            data = shown.feed(data)
        if data:
            out.write(data)
            last = data[-1:]

    def finish() -> None:
        nonlocal last
        tail = shown.feed(b"", final=True) if shown is not None else b""
        if tail:
            out.write(tail)
            last = tail[-1:]
        if last != b"\n" and out.isatty():  # a terminal's prompt starts on a line of its own
            out.write(b"\n")
        out.flush()

    cfg = _load(config)
    if cfg.maestro == "remote":  # the maestro's answer; with -f streamed as it is written
        from cloudsend.pipeline import maestro_control as control

        argv = ["logs", job, "cloudsend.yaml", f"--{stream}", "-n", str(lines)]
        if not follow:
            click.echo(control.forward(cfg, argv), nl=False)
            return
        err = click.get_binary_stream("stderr")

        def written(data: bytes) -> None:
            write(data)
            out.flush()

        try:
            code = control.follow_log(cfg, [*argv, "-f"], written, err.write)
            finish()
        except BrokenPipeError:  # the reader left (`| head`), as below
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
            return
        if code:
            sys.exit(code)
        return
    client, _ = _client(cfg, quiet=True)
    try:
        client.wakeup()
        session = client.session
        job = operations.resolve(session, [job])[0]
        offset = write_log(session, job, write, stream, lines)
        out.flush()
        statuses: dict[str, Any] = {}
        asked = time.monotonic()
        while follow:
            view = next(v for v in session.views() if v.job_id == job)
            if view.state.is_final:
                break
            time.sleep(0.25)  # the log is read 4 times a second, the job's state once
            if time.monotonic() - asked >= 1:
                statuses = session.reconcile()
                asked = time.monotonic()
            offset = write_log(session, job, write, stream, offset=offset)  # after reconcile:
            out.flush()  # a job seen ended has its last lines written before the loop ends
        finish()
        if follow:
            from cloudsend.ui import follow_end_note

            view = next(v for v in session.views() if v.job_id == job)
            if view.state == JobState.CANCELLED and not statuses:
                statuses = session.reconcile()  # was it running? its agent knows
            doc = statuses.get(view.host or "", {}).get("jobs", {}).get(job, {})
            note = follow_end_note(job, view.state, started=doc.get("started"))
            if note:
                click.echo(note, err=True)
    except BrokenPipeError:
        # the reader left (`| head`): not an error; stdout goes to /dev/null so that the exit
        # flush does not complain again
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
    finally:
        client.close()


@cli.command()
@CONFIG_ARG
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also copy the run's results here.",
)
def fetch(config: Path, out: Path | None) -> None:
    """Fetch the outputs of every finished job that are not home yet."""
    cfg = _load(config)
    if cfg.maestro == "remote":
        from cloudsend.pipeline import maestro_control as control

        got = control.fetch(cfg, say=lambda line: click.echo(clean(line), err=True))
        click.echo(f"fetched {len(got.jobs)} job(s), {got.files} file(s), {got.bytes} bytes "
                   "from the maestro")
        click.echo(f"results: {got.where}")
        return
    client, _ = _client(cfg, quiet=True)
    try:
        client.wakeup()
        where = client.fetch_results(out)
    finally:
        client.close()
    click.echo(f"results: {where}")


@cli.command()
@click.argument("jobs", nargs=-1)
@click.option(
    "--config",
    "config_opt",
    hidden=True,  # deprecated: CONFIG is positional, as for every other command
    type=click.Path(path_type=Path),
)
@click.option("--all", "all_jobs", is_flag=True, help="Cancel every unfinished job.")
def cancel(jobs: tuple[str, ...], config_opt: Path | None, all_jobs: bool) -> None:
    """Cancel JOBS, or --all: `cloudsend cancel JOB... [CONFIG]`.

    A JOB is named as for `logs` (id, unique prefix, index, name); a last argument that is a
    file, a directory or ends in .yaml/.yml/.py is the CONFIG."""
    jobs, config = _split_config(jobs, config_opt)
    if not jobs and not all_jobs:
        raise click.UsageError("name the jobs to cancel, or pass --all")
    cfg = _load(config)
    if cfg.maestro == "remote":
        from cloudsend.pipeline import maestro_control as control

        argv = ["cancel", *jobs, "cloudsend.yaml"] + (["--all"] if all_jobs else [])
        click.echo(control.forward(cfg, argv), nl=False)
        return
    client, _ = _client(cfg, quiet=True)
    try:
        client.wakeup()
        from cloudsend.pipeline import operations

        done = operations.cancel(client.session, None if all_jobs else list(jobs))
    finally:
        client.close()
    click.echo(f"cancelled {len(done)} job(s)")


def _split_config(args: tuple[str, ...], given: Path | None) -> tuple[tuple[str, ...], Path]:
    """(job references, CONFIG) of `cancel JOB... [CONFIG]` (or the deprecated --config)."""
    if given is not None:
        click.echo("note: cancel --config is deprecated: give CONFIG after the jobs", err=True)
        return args, given
    if args:
        last = Path(args[-1])
        if last.suffix in (".yaml", ".yml", ".py") or last.exists():
            return args[:-1], last
    return args, Path(CONFIG_NAME)


@cli.command()
@CONFIG_ARG
@click.option(
    "--keep",
    is_flag=True,
    help="Keep the hosts' files (stop processes only); aws: stop the instances, keep their "
    "disks and the stack (not with eco: spot instances cannot be stopped).",
)
@click.option("--force", is_flag=True, help="Even if some finished jobs' results are not fetched.")
@click.option("--yes", "-y", is_flag=True, help="Cancel unfinished jobs without asking.")
def down(config: Path, keep: bool, force: bool, yes: bool) -> None:
    """Stop everything the project runs on its hosts and tear the hosts down.

    Jobs still queued or running are cancelled (CANCELLED): down asks first, and refuses
    without --yes when it cannot ask (no terminal).

    provider aws: `pulumi destroy`, then a check that nothing tagged with the stack is left
    (exit 3 listing any leftover). Refuses while results are not all fetched, unless --force.
    """
    cfg = _load(config)
    if cfg.maestro == "remote":
        from cloudsend.pipeline import maestro_control as control

        say = lambda line: click.echo(clean(line), err=True)  # noqa: E731
        control.down(cfg, keep=keep, force=force, say=say)
        click.echo("down")
        return
    client, reporter = _client(cfg)
    try:
        unfinished = client.session.unfinished_jobs()
        _confirm_cancel([v.job_id for v in unfinished], yes)
        report = client.down(keep=keep, force=force)
    finally:
        reporter.close()
        client.close()
    if report.cancelled:
        shown = ", ".join(report.cancelled[:10]) + (" ..." if len(report.cancelled) > 10 else "")
        click.echo(clean(f"cancelled {len(report.cancelled)} unfinished job(s): {shown}"))
    click.echo("down")


def confirm_mode(unfinished: int, yes: bool, interactive: bool) -> str:
    """How `down` treats unfinished jobs: "go" (none, or --yes), "ask" (on a terminal) or
    "refuse" (no terminal to ask on, and no --yes)."""
    if not unfinished or yes:
        return "go"
    return "ask" if interactive else "refuse"


def _confirm_cancel(job_ids: list[str], yes: bool) -> None:
    mode = confirm_mode(len(job_ids), yes, click.get_text_stream("stdin").isatty())
    if mode == "go":
        return
    shown = ", ".join(job_ids[:10]) + (" ..." if len(job_ids) > 10 else "")
    what = clean(f"{len(job_ids)} job(s) not finished: {shown}")
    if mode == "ask":
        click.echo(what)
        try:
            confirmed = click.confirm("cancel them and take the hosts down?", default=False)
        except click.Abort:  # Ctrl-C or end of input at the prompt: a no
            confirmed = False
        if confirmed:
            return
        raise CloudsendError(
            "not confirmed: nothing was cancelled or taken down",
            hint="wait for them (`cloudsend status`), or answer y, or pass --yes",
        )
    raise CloudsendError(
        f"down would cancel {what}",
        hint="pass --yes to cancel them, or wait for them (`cloudsend status`)",
    )


@cli.command()
@click.argument("config", type=click.Path(path_type=Path))
def validate(config: Path) -> None:
    """Check CONFIG and report every problem at once."""
    from cloudsend.providers import check_config

    if config.is_dir():
        config = config / CONFIG_NAME
    cfg = _load(config)
    try:
        notices = check_config(cfg)
    except ConfigError as exc:  # name the file, as the loader's messages do
        raise ConfigError(f"{config}: {exc.message}", hint=exc.hint) from None
    for notice in notices:
        click.echo(f"note: {clean(notice)}")
    jobs = sum(j.repeat for j in cfg.jobs)
    click.echo(f"{config}: ok ({len(cfg.environments)} environment(s), {jobs} job run(s))")


@cli.command()
def schema() -> None:
    """Print the config's JSON Schema (for editors)."""
    import json

    from cloudsend.config import config_json_schema

    click.echo(json.dumps(config_json_schema(), indent=2))


def _remote_run(cfg: Config, as_json: bool) -> None:
    """maestro: remote (ssh): cloudsend, the run key and the bundle sent, the run detached on
    the maestro (cloudsend.pipeline.maestro_control)."""
    from cloudsend.pipeline import maestro_control as control

    started = control.start(cfg, say=lambda line: click.echo(clean(line), err=True))
    p = started.prepared
    sent = p.ship.uploaded + p.sent.bytes
    if as_json:
        from cloudsend.ui import print_json

        print_json({"run": started.run_id, "maestro": p.run_dir, "bytes_sent": sent,
                    "seconds": round(started.seconds, 2)})
        return
    click.echo(f"run {started.run_id} started on the maestro in {p.run_dir} "
               f"({sent} bytes sent, {started.seconds:.1f} s)")
    click.echo("follow it: cloudsend attach · status: cloudsend status · results: cloudsend fetch")


def _confirm_plan(cfg: Config, yes: bool) -> None:
    """Show what `up` creates and what it costs, and ask (a provider with nothing to create,
    local or ssh, or an up-to-date stack: nothing to ask)."""
    from cloudsend.pipeline.session import refuse_remote_maestro
    from cloudsend.providers import get_provider
    from cloudsend.ui import print_preview

    refuse_remote_maestro(cfg)  # before any preview or question: nothing would run there
    plan = get_provider(cfg).preview(enforce_budget=True)
    if plan.up_to_date:
        return  # nothing to create, nothing to ask
    print_preview(_console(), plan)
    if yes:
        return
    try:
        confirmed = click.confirm("create these resources?", default=False)
    except click.Abort:  # Ctrl-C or end of input at the prompt: a no, not an interrupted run
        confirmed = False
    if not confirmed:
        raise CloudsendError(
            "not confirmed: nothing was created",
            hint="run the command again and answer y, or pass --yes",
        )


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    flag = "--debug" in args or bool(os.environ.get("CLOUDSEND_DEBUG"))
    try:
        cli.main(args=args, prog_name="cloudsend", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted: jobs keep running on the hosts; run again to resume", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted: jobs keep running on the hosts; run again to resume", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except CloudsendError as exc:
        if flag or _VERBOSITY["debug"]:
            raise
        click.echo(f"{exc.kind}: {clean(str(exc), 20_000)}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # never a bare traceback for users; --debug shows it
        if flag or _VERBOSITY["debug"]:
            raise
        click.echo(
            f"error: {type(exc).__name__}: {clean(exc, 20_000)}\n  hint: run with --debug for "
            "the traceback and report it",
            err=True,
        )
        sys.exit(1)
