"""The `cloudsend` command. Imports stay inside commands so `--help` is instant."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cloudsend.core import JobState
from cloudsend.errors import EXIT_CODES_HELP, CloudsendError, ConfigError, JobError
from cloudsend.textsafe import clean

if TYPE_CHECKING:
    from cloudsend.api import SyncClient
    from cloudsend.config.models import Config

CONFIG_ARG = click.argument(
    "config",
    required=False,
    default="cloudsend.yaml",
    type=click.Path(dir_okay=False, path_type=Path),
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

    CONFIG defaults to ./cloudsend.yaml (YAML, or a Python file defining `config = {...}`).
    The default provider, `local`, runs everything on this machine.
    """


@cli.command()
@CONFIG_ARG
@click.option(
    "--reset",
    is_flag=True,
    help="Kill the project's processes on the hosts and redeploy from scratch (new run).",
)
@click.option("--yes", "-y", is_flag=True, help="aws: do not ask before creating resources.")
@JSON_OPT
def run(config: Path, reset: bool, yes: bool, as_json: bool) -> None:
    """Set up hosts and environments, run every job, watch them, fetch results.

    Interrupted? Run it again: DONE jobs are never re-run, files never re-sent, environments
    never rebuilt unless they changed.
    """
    from cloudsend.ui import print_json, print_summary, summary_doc

    cfg = _load(config)
    _confirm_plan(cfg, yes)  # `run` creates machines too: same review as `up`
    client, reporter = _client(cfg, quiet=as_json)
    try:
        client.start(reset=reset)
        client.deploy()
        submitted = client.run()
        unfinished = sum(v.state != JobState.DONE for v in client.session.views())
        client.wait()
        client.fetch_results()
        client.finalize()
        summary = client.summary()
    finally:
        reporter.close()
        client.close()
    if as_json:
        print_json(summary_doc(summary))
    else:
        print_summary(_console(), summary)
        _nothing_ran(summary, submitted, unfinished, config)
    if summary.env_failures:
        from cloudsend.errors import BootstrapError

        raise BootstrapError(
            f"{len(summary.env_failures)} environment(s) failed to build",
            hint="see the log tails above; fix the environment and run again",
        )
    if not summary.ok:
        raise JobError(
            f"{summary.counts().get(JobState.ABORTED, 0)} job(s) ABORTED",
            hint="`cloudsend logs JOB --stderr` shows why; `cloudsend run` retries them",
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
    _confirm_plan(cfg, yes)
    client, reporter = _client(cfg)
    try:
        client.start(reset=reset)
        client.deploy()
    finally:
        reporter.close()
        client.close()
    click.echo(f"hosts ready: {', '.join(h.name for h in client.session.hosts)}")


@cli.command()
@CONFIG_ARG
@JSON_OPT
def status(config: Path, as_json: bool) -> None:
    """Show every job's state, host and whether its results are fetched."""
    from dataclasses import asdict

    from cloudsend.ui import jobs_table, print_json

    client, _ = _client(config, quiet=True)
    try:
        client.wakeup()
        views = client.session.views()
        hosts = client.session.store.hosts(client.session.current_run())
    finally:
        client.close()
    if as_json:
        print_json(
            {
                "jobs": [asdict(v) for v in views],
                "hosts": [{"name": h.name, "health": h.health, "detail": h.detail} for h in hosts],
            }
        )
        return
    from rich.text import Text

    console = _console()
    console.print(jobs_table(views))
    for h in hosts:
        console.print(Text(clean(f"host {h.name}: {h.health} {h.detail}".rstrip())))


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
    """Print the last lines of JOB's stdout (or --stderr), streamed as written."""
    import time

    from cloudsend.pipeline.logs import write_log

    out = click.get_binary_stream("stdout")
    last = b"\n"

    def write(data: bytes) -> None:
        nonlocal last
        out.write(data)
        last = data[-1:]

    client, _ = _client(config, quiet=True)
    try:
        client.wakeup()
        session = client.session
        offset = write_log(session, job, write, stream, lines)
        out.flush()
        while follow:
            view = next(v for v in session.views() if v.job_id == job)
            if view.state.is_final:
                break
            time.sleep(1)
            session.reconcile()
            offset = write_log(session, job, write, stream, offset=offset)
            out.flush()
        if last != b"\n" and out.isatty():  # a terminal's prompt starts on a line of its own
            out.write(b"\n")
        out.flush()
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
    client, _ = _client(config, quiet=True)
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
    "config",
    default="cloudsend.yaml",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
)
@click.option("--all", "all_jobs", is_flag=True, help="Cancel every unfinished job.")
def cancel(jobs: tuple[str, ...], config: Path, all_jobs: bool) -> None:
    """Cancel JOBS (ids from `cloudsend status`), or --all."""
    if not jobs and not all_jobs:
        raise click.UsageError("name the jobs to cancel, or pass --all")
    client, _ = _client(config, quiet=True)
    try:
        client.wakeup()
        from cloudsend.pipeline import operations

        done = operations.cancel(client.session, None if all_jobs else list(jobs))
    finally:
        client.close()
    click.echo(f"cancelled {len(done)} job(s)")


@cli.command()
@CONFIG_ARG
@click.option("--keep", is_flag=True, help="Keep the hosts' files (stop processes only).")
@click.option("--force", is_flag=True, help="Even if some finished jobs' results are not fetched.")
def down(config: Path, keep: bool, force: bool) -> None:
    """Stop everything the project runs on its hosts and tear the hosts down.

    provider aws: `pulumi destroy`, then a check that nothing tagged with the stack is left
    (exit 3 listing any leftover). Refuses while results are not all fetched, unless --force.
    """
    client, reporter = _client(config)
    try:
        client.down(keep=keep, force=force)
    finally:
        reporter.close()
        client.close()
    click.echo("down")


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
def validate(config: Path) -> None:
    """Check CONFIG and report every problem at once."""
    from cloudsend.providers import check_config

    cfg = _load(config)
    try:
        notices = check_config(cfg)
    except ConfigError as exc:  # name the file, as the loader's messages do
        raise ConfigError(f"{config}: {exc.message}", hint=exc.hint) from None
    for notice in notices:
        click.echo(f"note: {notice}")
    jobs = sum(j.repeat for j in cfg.jobs)
    click.echo(f"{config}: ok ({len(cfg.environments)} environment(s), {jobs} job run(s))")


@cli.command()
def schema() -> None:
    """Print the config's JSON Schema (for editors)."""
    import json

    from cloudsend.config import config_json_schema

    click.echo(json.dumps(config_json_schema(), indent=2))


def _confirm_plan(cfg: Config, yes: bool) -> None:
    """Show what `up` creates and what it costs, and ask (a provider with nothing to create,
    local or ssh, or an up-to-date stack: nothing to ask)."""
    from cloudsend.providers import get_provider
    from cloudsend.ui import print_preview

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
            f"error: {type(exc).__name__}: {exc}\n  hint: run with --debug for the "
            "traceback and report it",
            err=True,
        )
        sys.exit(1)
