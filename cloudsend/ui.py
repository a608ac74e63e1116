"""Terminal rendering for the CLI (rich): live progress, summary and status tables."""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict
from typing import Any

from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from cloudsend.core import JobState
from cloudsend.pipeline.reporting import EnvActivity, JobView, RunSummary, stale_jobs
from cloudsend.providers.base import (
    Cost,
    Preview,
    ResourceChange,
    changes_to_json,
    ordered_changes,
    summary_counts,
)
from cloudsend.textsafe import clean

STATE_STYLE = {
    JobState.DONE: "green",
    JobState.ABORTED: "red",
    JobState.CANCELLED: "blue",
    JobState.RUNNING: "cyan",
    JobState.QUEUE: "yellow",
    JobState.WAIT: "magenta",
    JobState.IDLE: "yellow",
    JobState.UNKNOWN: "dim",
}
# the progress line's order: how far a job has got
_PROGRESS = (
    JobState.WAIT,
    JobState.QUEUE,
    JobState.RUNNING,
    JobState.DONE,
    JobState.ABORTED,
    JobState.CANCELLED,
    JobState.UNKNOWN,
)


def duration(seconds: float | None) -> str:
    """5s, 2m05s, 1h02m ("" when unknown)."""
    if seconds is None:
        return ""
    total = int(seconds)
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    return f"{total // 3600}h{total % 3600 // 60:02d}m"


def progress_line(
    jobs: list[JobView], activity: Sequence[EnvActivity] = (), now: float | None = None
) -> Text:
    """The live line: job counts, then what is being built where and for how long."""
    text = _counts_line(jobs)
    now = time.time() if now is None else now
    for build in activity:
        if build.started is None:
            doing = f"env {build.env} waits its turn on host {build.host}"
        else:
            took = duration(max(0.0, now - build.started))
            doing = f"building env {build.env} on host {build.host} ({took})"
        text.append("  · ", style="dim")
        text.append(clean(doing, 200), style="magenta")
    return text


def _counts_line(jobs: list[JobView]) -> Text:
    counts: dict[JobState, int] = {}
    for j in jobs:
        counts[j.state] = counts.get(j.state, 0) + 1
    fetched = sum(1 for j in jobs if j.fetched)
    text = Text()
    for state in _PROGRESS:
        if counts.get(state):
            text.append(f"{state} {counts[state]}  ", style=STATE_STYLE[state])
    text.append(f"fetched {fetched}/{len(jobs)}", style="bold")
    return text


class RichReporter:
    """Draws the pipeline's progress; quiet when `quiet` (for --json)."""

    def __init__(self, console: Console, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self._live: Live | None = None

    def phase(self, name: str, detail: str = "") -> None:
        if not self.quiet:
            self._stop_live()
            line = Text.assemble((name, "bold"), " ", clean(detail))
            line.rstrip()
            self.console.print(line)

    def notice(self, message: str) -> None:
        if not self.quiet:
            self.console.print(Text.assemble(("note:", "dim"), " ", clean(message)))

    def log(self, host: str, text: str) -> None:
        if not self.quiet:
            for line in text.splitlines():
                shown = Text.assemble((f"{clean(host, 80)}|", "dim"), " ", clean(line))
                self.console.print(shown, highlight=False)

    def progress(self, jobs: list[JobView], activity: Sequence[EnvActivity] = ()) -> None:
        if self.quiet:
            return
        line = progress_line(jobs, activity)
        if self._live is None:
            self._live = Live(line, console=self.console, transient=True, refresh_per_second=4)
            self._live.start()
        else:
            self._live.update(line)

    def _stop_live(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def close(self) -> None:
        self._stop_live()


def follow_end_note(job_id: str, state: JobState, *, started: object) -> str | None:
    """What `logs -f` says when the job it follows ends without a log to show for it: a
    job cancelled before it started (`started` from its agent: None if it never ran)."""
    if state != JobState.CANCELLED:
        return None
    if started is None:
        return f"{clean(job_id, 200)}: cancelled while queued (it never started)"
    return f"{clean(job_id, 200)}: cancelled"


def status_doc(
    jobs: list[JobView], hosts: list[Any], answered: set[str], error: str | None = None
) -> dict[str, Any]:
    """`cloudsend status --json`: every job and host, with "stale" where the state shown is
    the last known one (its host did not answer: `error` says why when none could be asked).
    `hosts`: state.HostRecord rows."""
    stale = stale_jobs(jobs, answered)
    return {
        "stale": bool(stale) or any(h.name not in answered and h.health != "down" for h in hosts),
        "error": error,
        "jobs": [{**asdict(j), "stale": j.job_id in stale} for j in jobs],
        "hosts": [
            {
                "name": h.name,
                "health": h.health,
                "detail": h.detail,
                "stale": h.name not in answered and h.health != "down",
                "updated": h.updated,
            }
            for h in hosts
        ],
    }


def jobs_table(
    jobs: list[JobView], title: str | None = None, stale: Collection[str] = frozenset()
) -> Table:
    """The jobs' table; a state in `stale` is the last known one (shown dim, with a '?')."""
    # no vertical rules and one space of padding: at 80 columns the reason keeps ~15 characters
    table = Table(title=title, show_lines=False, box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0))
    # a job id stays on one line (copied into `logs`/`cancel`); the other columns give way
    longest = max((len(j.job_id) for j in jobs), default=3)
    table.add_column("job", no_wrap=True, min_width=longest)
    table.add_column("state", no_wrap=True, min_width=7)
    table.add_column("host", overflow="fold", min_width=5)
    for col in ("try", "exit", "time", "fetched"):  # try: the attempt; time: its elapsed
        table.add_column(col, no_wrap=True, min_width=len(col))
    table.add_column("reason", overflow="fold")
    for j in jobs:
        # the reason holds the tail of the job's stderr: plain Text, never markup
        reason = clean(j.reason, 400).splitlines()[0] if j.reason else ""
        table.add_row(
            Text(j.job_id),
            Text(f"{j.state.value}?", style="dim")
            if j.job_id in stale
            else Text(j.state.value, style=STATE_STYLE.get(j.state, "")),
            Text(clean(j.host or "-", 200)),
            str(j.attempt),
            "" if j.exit_code is None else str(j.exit_code),
            duration(j.elapsed),
            "yes" if j.fetched else "no",
            Text(reason[:80]),
        )
    return table


def summary_doc(summary: RunSummary) -> dict[str, Any]:
    return {
        "run": summary.run_id,
        "results_dir": str(summary.results_dir),
        "ok": summary.ok,
        "counts": summary.counts(),
        "files_sent": summary.files_sent,
        "bytes_sent": summary.bytes_sent,
        "envs_submitted": summary.envs_submitted,
        "env_failures": summary.env_failures,
        "elapsed_s": round(summary.elapsed, 3),
        "out_of_time": summary.out_of_time,  # ABORTED: the time budget (eco_life) ran out
        "jobs": [asdict(j) for j in summary.jobs],
    }


def print_summary(console: Console, summary: RunSummary) -> None:
    console.print(jobs_table(summary.jobs, title=f"run {summary.run_id}"))
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary.counts().items()))
    console.print(
        f"{counts} · sent {summary.files_sent} file(s), {summary.bytes_sent} bytes · "
        f"{summary.elapsed:.1f} s"
    )
    for env_id, tail in summary.env_failures.items():
        head = Text.assemble((f"environment {env_id} failed", "red"), ":\n", clean(tail, 20_000))
        console.print(head, highlight=False)
    if summary.out_of_time:
        late = f"{len(summary.out_of_time)} job(s) not finished: the time budget (eco_life) ran out"
        console.print(Text(late, style="yellow"))
    console.print(Text(f"results: {summary.results_dir}"))


def print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, default=str))


def resources_table(resources: list[dict[str, Any]]) -> Table:
    """What the Pulumi program declares (offline preview)."""
    table = Table(title=f"{len(resources)} resource(s) to create")
    for col in ("type", "name", "main inputs"):
        table.add_column(col, overflow="fold")
    keys = (
        "instanceType",
        "ami",
        "cidrBlock",
        "ingress",
        "instanceMarketOptions",
        "rootBlockDevice",
        "publicKey",
    )
    for res in resources:
        inputs = res.get("inputs") or {}
        shown = {k: inputs[k] for k in keys if k in inputs}
        text = json.dumps(shown, default=str)
        table.add_row(
            str(res.get("type")),
            str(res.get("name")),
            text if len(text) < 160 else text[:157] + "...",
        )
    return table


def cost_table(cost: Cost) -> Table:
    """The hourly cost estimate of the instances (aws: costs.CostEstimate)."""
    doc = cost.to_dict()
    table = Table(title=f"cost estimate (prices as of {doc.get('as_of')})")
    for col in ("instance", "type", "region", "market", "$/hour", "source"):
        table.add_column(col)
    for line in doc.get("instances", []):
        hourly = line.get("hourly")
        table.add_row(
            line["name"],
            line["type"],
            line["region"],
            line["market"],
            Text("?", style="yellow") if hourly is None else f"{hourly:.4f}",
            Text(line["source"], style="yellow" if hourly is None else ""),
        )
    if doc.get("charges"):
        table.add_section()
    for charge in doc.get("charges", []):  # public IPv4, EBS: billed beside the instances
        table.add_row(
            charge["name"],
            charge["detail"],
            charge["region"],
            "-",
            f"{charge['hourly']:.4f}",
            charge["source"],
        )
    caption = f"total ${doc['total_per_hour']:.4f}/hour"
    if doc.get("total_for_eco_life") is not None:
        caption += f", ${doc['total_for_eco_life']:.2f} over eco_life"
        if doc.get("total_for_eco_life_covers"):
            caption += f" ({doc['total_for_eco_life_covers']})"
    unpriced = [line for line in doc.get("instances", []) if line.get("hourly") is None]
    if unpriced:  # the total is a lower bound: say so where the total is read
        caption += f"; incomplete: {len(unpriced)} instance(s) without a price (?) not counted"
        table.caption_style = "yellow"
    table.caption = caption
    return table


_STYLE = {"create": "green", "update": "yellow", "replace": "magenta", "delete": "red"}
_SYMBOL = {"create": "+", "update": "~", "replace": "+-", "delete": "-", "same": " "}


def _describe_properties(change: ResourceChange) -> str:
    parts = []
    for prop in change.changed_properties:
        kind = change.detailed_diff.get(prop, "")
        forces = prop in change.replace_keys or kind.endswith("-replace")
        parts.append(f"{prop} (forces replacement)" if forces else prop)
    # Replacement keys the engine named but that are not among the diffs still matter.
    parts += [
        f"{key} (forces replacement)"
        for key in change.replace_keys
        if key not in change.changed_properties
    ]
    return ", ".join(parts)


def changes_table(
    changes: Iterable[ResourceChange], *, show_same: bool = False, title: str | None = None
) -> Table:
    """One row per resource, grouped by op, with the properties that change.

    Unchanged resources are hidden unless show_same; the caption always counts them, so a
    no-op preview still says what it looked at.
    """
    changes = list(changes)
    table = Table(title=title, show_lines=False, header_style="bold")
    table.add_column("op")
    table.add_column("type")
    table.add_column("name")
    table.add_column("changed properties", overflow="fold")
    previous_op: str | None = None
    for change in ordered_changes(changes):
        if change.op == "same" and not show_same:
            continue
        if previous_op is not None and change.op != previous_op:
            table.add_section()
        previous_op = change.op
        style = _STYLE.get(change.op, "")
        symbol = _SYMBOL.get(change.op, "?")
        table.add_row(
            f"{symbol} {change.op}",
            change.type,
            change.name,
            _describe_properties(change),
            style=style or None,
        )
    counts = summary_counts(changes)
    table.caption = ", ".join(f"{n} {op}" for op, n in counts.items()) if counts else "no resources"
    return table


def preview_doc(preview: Preview) -> dict[str, Any]:
    """`cloudsend preview --json`: the fields depend on what there is (no cloud, offline,
    the engine's plan)."""
    if preview.cost is None:
        return {
            "provider": preview.provider,
            "resources": [],
            "hosts": preview.hosts,
            "cost": {"total_per_hour": 0.0},
        }
    if preview.resources is not None:
        return {
            "resources": preview.resources,
            "cost": preview.cost.to_dict(),
            "warnings": preview.warnings,
        }
    return {
        "changes": changes_to_json(preview.changes),
        "cost": preview.cost.to_dict(),
        "warnings": preview.warnings,
    }


def print_preview(console: Console, preview: Preview) -> None:
    from rich.markup import escape

    if preview.cost is None:
        console.print(
            f"provider {preview.provider}: no cloud resources, {preview.hosts} host(s), "
            "nothing billed by cloudsend"
        )
        return
    if preview.resources is not None:
        console.print(resources_table(preview.resources))
    else:
        console.print(changes_table(preview.changes))
    console.print(cost_table(preview.cost))
    for warning in preview.warnings:  # e.g. a max_bid below the spot price: decide knowing it
        console.print(f"[yellow]warning:[/yellow] {escape(clean(warning))}")
