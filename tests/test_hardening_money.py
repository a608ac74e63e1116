"""Issue 10, "Money": eco_life caps spending, the estimate counts public IPv4 and EBS, and the
offline preview warns about what it cannot price or what breaks the budget.

eco_life: the decisions are tables (scheduling.reactions, InstanceInfo.kind); the EC2 side runs
against a real moto server (the instance ends itself as AWS reports it: terminated, state
reason Client.InstanceInitiatedShutdown, launched eco_life ago), and the pipeline runs real
local hosts paired with moto instances, as tests/test_instance_monitor_pipeline.py does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from cloudsend.scheduling import reactions as r
from tests.conftest import Project
from tests.test_instance_monitor_pipeline import TAGS, MotoPairedLocal, paired_client

SELF = "Client.InstanceInitiatedShutdown"
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Rec:
    job_id: str
    state: str = "RUNNING"
    host: str | None = "h1"
    attempt: int = 1
    fetched: bool = False
    reason: str | None = None


def kinds(actions: list[r.Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


# ---- item 8: the decision, as tables ----------------------------------------------------------


def _info(
    state: str, reason: str = "", *, life: int | None = 60, after: float = 61, spot: bool = True
) -> Any:
    from cloudsend.providers.aws.monitor import InstanceInfo

    return InstanceInfo(
        id="i-1",
        name="h1",
        state=state,
        public_ip=None,
        private_ip=None,
        region="us-east-1",
        state_reason=reason,
        spot=spot,
        launch_time=T0,
        eco_life_minutes=life,
        observed=T0 + timedelta(minutes=after),
    )


@pytest.mark.parametrize(
    ("state", "reason", "life", "after", "kind"),
    [
        ("terminated", SELF, 60, 61, "expired"),  # shut itself down at its eco_life
        ("shutting-down", SELF, 60, 60.5, "expired"),
        ("terminated", SELF, 60, 57, "expired"),  # clocks differ by a few minutes
        ("terminated", SELF, 60, 20, "terminated"),  # a job's own `shutdown`, long before
        ("terminated", SELF, None, 600, "terminated"),  # no eco_life tag: as before
        ("terminated", "", 60, 61, "expired"),  # reason not reported yet, but past its end
        ("terminated", "Server.SpotInstanceTermination", 60, 30, "spot_interrupted"),
        ("terminated", "Client.UserInitiatedShutdown", 60, 30, "terminated"),
        ("running", "", 60, 61, "running"),  # its shutdown is the machine's job, not ours
        ("stopped", "", 60, 61, "stopped"),
    ],
)
def test_which_ended_instance_ran_out_its_eco_life(
    state: str, reason: str, life: int | None, after: float, kind: str
) -> None:
    assert _info(state, reason, life=life, after=after).kind == kind


def test_an_expired_instance_is_not_replaced() -> None:
    from cloudsend.providers.aws.monitor import InstanceEvent, plan_reaction

    events = [
        InstanceEvent("expired", "i-1", "h1", "terminated", SELF),
        InstanceEvent(
            "spot_interrupted", "i-2", "h2", "terminated", "Server.SpotInstanceTermination"
        ),
    ]
    reaction = plan_reaction(events)
    assert reaction.expired == ["h1"]
    assert reaction.replace == ["h2"] and reaction.lost_hosts == ["h2"]
    assert reaction.hosts().expired == ["h1"]


@pytest.mark.parametrize(
    ("expired", "stopped", "lost", "expected"),
    [
        (("h1",), (), (), ["Notice", "HostExpired"]),
        (("h1",), ("h1",), (), []),  # auto_stop ended it on purpose
        (("h1",), (), ("h1",), []),  # already handled as lost
        (("zz",), (), (), []),  # not one of the run's hosts
    ],
)
def test_machine_events_for_an_expired_host(
    expired: tuple[str, ...],
    stopped: tuple[str, ...],
    lost: tuple[str, ...],
    expected: list[str],
) -> None:
    events = r.MachineEvents(expired=expired, replace=expired, known=frozenset({"h1", "h2"}))
    actions = r.on_machine_events(events, set(stopped), set(lost))
    assert kinds(actions) == expected
    assert not any(isinstance(a, r.Replace) for a in actions)


@pytest.mark.parametrize(
    ("jobs", "targets", "expected", "submitted", "out_of_time"),
    [
        # its unfinished jobs go to the hosts with time left
        (
            [Rec("a"), Rec("b", "QUEUE", attempt=2)],
            ["h2"],
            ["MarkLost", "Forget", "KeepWatching", "Notice", "Submit"],
            {"a": 2, "b": 3},
            {},
        ),
        # nowhere to go: the run's time budget ran out, said, not waited for
        (
            [Rec("a"), Rec("b", "QUEUE")],
            [],
            ["MarkLost", "Forget", "KeepWatching", "Notice", "OutOfTime"],
            {},
            {"a": 1, "b": 1},
        ),
        # finished and home: nothing to do; failed there: its logs are out of reach
        (
            [Rec("a", "DONE", fetched=True), Rec("c", "ABORTED", reason="exit code 1")],
            [],
            ["MarkLost", "CloseUnfetchable", "KeepWatching"],
            {},
            {},
        ),
        # killed by the machine's shutdown before AWS said why: runs again elsewhere
        (
            [Rec("a", "ABORTED", reason="killed by signal 15")],
            ["h2"],
            ["MarkLost", "Forget", "KeepWatching", "Notice", "Submit"],
            {"a": 2},
            {},
        ),
        ([Rec("a", host="h2")], [], ["MarkLost", "KeepWatching"], {}, {}),  # another host's
    ],
)
def test_what_an_expired_host_leaves(
    jobs: list[Rec],
    targets: list[str],
    expected: list[str],
    submitted: dict[str, int],
    out_of_time: dict[str, int],
) -> None:
    actions = r.on_host_expired("h1", jobs, targets)
    assert kinds(actions) == expected
    assert not any(isinstance(a, r.KeepWaiting) for a in actions)  # it never comes back
    subs = [a for a in actions if isinstance(a, r.Submit)]
    assert (dict(subs[0].attempts) if subs else {}) == submitted
    if subs:
        assert subs[0].targets == tuple(targets)
    ends = [a for a in actions if isinstance(a, r.OutOfTime)]
    assert (dict(ends[0].attempts) if ends else {}) == out_of_time
    if ends:
        assert r.out_of_time(ends[0].reason) and "h1" in ends[0].reason


# ---- item 8: EC2 through moto ------------------------------------------------------------------


def _launch(moto_aws: Any, names: list[str], minutes: int = 60) -> list[str]:
    """Spot instances as the program declares them with eco_life: the tag gives minutes."""
    from cloudsend.providers.aws.spec import ECO_LIFE_TAG

    return moto_aws.run_instances(
        len(names), {**TAGS, ECO_LIFE_TAG: str(minutes)}, spot=True, names=names
    )


def _end_of_eco_life(moto_aws: Any, instance_id: str, minutes: int = 60) -> None:
    """What AWS shows once the instance's `shutdown` ran at the end of its eco_life: launched
    that long ago, terminated (shutdown behaviour terminate), reason InstanceInitiatedShutdown.
    moto cannot age an instance: its backend is edited, as spot_interrupt does."""
    from moto.ec2.models.instances import StateReason

    moto_aws.terminate(instance_id)
    instance = moto_aws.instance(instance_id)
    instance.launch_time = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(
        minutes=minutes, seconds=30
    )
    instance.state_reason = StateReason(f"{SELF}: Instance initiated shutdown", SELF)


def test_the_monitor_reports_an_eco_life_end_as_expired(moto_aws: Any) -> None:
    from cloudsend.providers.aws.machines import AwsMachines
    from cloudsend.providers.aws.monitor import InstanceMonitor

    ids = _launch(moto_aws, ["mon-0-0", "mon-0-1", "mon-0-2"])
    monitor = InstanceMonitor(moto_aws.session(), TAGS, ["us-east-1"])
    machines = AwsMachines(lambda: monitor, moto_aws.session, lambda names: [])
    assert not machines.poll()  # the baseline
    info = monitor.instances()["mon-0-0"]
    assert info.eco_life_minutes == 60 and info.launch_time is not None
    _end_of_eco_life(moto_aws, ids[0])
    moto_aws.terminate(ids[1])  # ended by hand, not by its eco_life: replaced as before
    reaction = machines.poll()
    assert reaction.expired == ["mon-0-0"]
    assert reaction.replace == ["mon-0-1"]
    assert "mon-0-0" not in reaction.lost_hosts


def test_the_program_tags_spot_instances_with_their_eco_life() -> None:
    from cloudsend.providers.aws import offline
    from cloudsend.providers.aws.spec import ECO_LIFE_TAG
    from tests.test_aws_program import make_spec

    spec = make_spec({"instances": [{"eco": True, "eco_life": "90m"}, {"eco": False}]})
    found = {
        res["name"]: res["inputs"]["tags"]
        for res in offline.declared_resources(spec)
        if res["type"] == "aws:ec2/instance:Instance"
    }
    spot, on_demand = sorted(found)
    assert found[spot][ECO_LIFE_TAG] == "90"
    assert ECO_LIFE_TAG not in found[on_demand]


def test_a_replacement_up_leaves_expired_hosts_out(
    moto_aws: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replacing an interrupted host runs `up` for the whole stack: a host that ran out its
    eco_life must not come back with it (a new instance, a new eco_life, nobody using it)."""
    from cloudsend.config import load_config
    from cloudsend.providers.aws import offline
    from cloudsend.providers.aws.provider import AwsProvider
    from cloudsend.providers.aws.spec import ECO_LIFE_TAG

    monkeypatch.setenv("HOME", str(tmp_path))
    config = load_config(
        {
            "project": "retire",
            "provider": "aws",
            "region": "us-east-1",
            "instances": [
                {
                    "type": "t3.micro",
                    "img_id": "ami-12345678",
                    "eco": True,
                    "eco_life": "1h",
                    "number": 3,
                }
            ],
            "jobs": [{"run_command": "true"}],
        }
    )
    provider = AwsProvider(config)
    spec = provider.plan(offline=True)
    names = [i.name for i in spec.instances]
    ids = moto_aws.run_instances(3, {**spec.tags, ECO_LIFE_TAG: "60"}, spot=True, names=names)
    _end_of_eco_life(moto_aws, ids[0])
    moto_aws.spot_interrupt(ids[1])
    assert provider.retire_expired({names[1]}) == {names[0]}
    declared = [
        res["name"]
        for res in offline.declared_resources(provider.active(spec))
        if res["type"] == "aws:ec2/instance:Instance"
    ]
    assert sorted(declared) == [names[1], names[2]]


# ---- item 8: the pipeline, real local hosts paired with moto instances ---------------------------


class Recording(MotoPairedLocal):
    """MotoPairedLocal that remembers what the run asked to replace."""

    replaced: list[list[str]]

    def replace(self, names: list[str]) -> list[Any]:
        self.replaced.append(list(names))
        return []


def _client(project: Project, moto_aws: Any, *, hosts: int, jobs: int, sleep: float) -> Any:
    client = paired_client(project, moto_aws, jobs, sleep, hosts=hosts, provider=Recording)
    client.session.provider.replaced = []
    return client


def _expire_host(project: Project, client: Any, moto_aws: Any, name: str, instance: str) -> None:
    """The instance's eco_life ends: its shutdown kills the agent and its jobs, the disk goes,
    then EC2 reports it terminated by its own shutdown."""
    import shutil

    root = project.state_dir() / "hosts" / name
    store, run_id = client.session.store, client.session.current_run()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(
        rec.host == name and rec.state == "RUNNING" for rec in store.jobs(run_id)
    ):
        time.sleep(0.05)
    subprocess.run(
        [sys.executable, str(root / "agent.py"), "--root", str(root), "stop", "--kill-jobs"],
        capture_output=True,
        timeout=30,
    )
    shutil.rmtree(root, ignore_errors=True)
    _end_of_eco_life(moto_aws, instance)


def test_an_expired_host_is_not_replaced_and_its_jobs_go_elsewhere(
    project: Project, moto_aws: Any
) -> None:
    names = ["local-0-0", "local-0-1", "local-0-2"]
    ids = dict(zip(names, _launch(moto_aws, names), strict=True))
    client = _client(project, moto_aws, hosts=3, jobs=6, sleep=4)
    fault = threading.Thread(
        target=_expire_host, args=(project, client, moto_aws, "local-0-1", ids["local-0-1"])
    )
    try:
        client.start()
        client.deploy()
        client.run()
        fault.start()
        views = client.wait(timeout=120)
        fault.join()
    finally:
        client.close()
    provider = client.session.provider
    assert provider.replaced == [], (provider.replaced, client.notices)
    assert [v.state for v in views] == ["DONE"] * 6, (views, client.notices)
    assert all(v.fetched and v.host != "local-0-1" for v in views)
    assert any("local-0-1 reached the end of its eco_life" in n for n in client.notices)
    outs = list(Path(client.session.results_dir).glob("*/out.txt"))
    assert sorted(p.read_text().strip() for p in outs) == sorted(v.job_id for v in views)


def test_when_every_host_expired_the_run_says_its_time_budget_ran_out(
    project: Project, moto_aws: Any
) -> None:
    from rich.console import Console

    from cloudsend.cli import raise_for
    from cloudsend.errors import EXIT_CODES_HELP, BudgetError
    from cloudsend.ui import print_summary, summary_doc

    ids = _launch(moto_aws, ["local"])  # the local provider's name for a lone host
    client = _client(project, moto_aws, hosts=1, jobs=3, sleep=60)
    fault = threading.Thread(target=_expire_host, args=(project, client, moto_aws, "local", ids[0]))
    try:
        client.start()
        client.deploy()
        client.run()
        started = time.monotonic()
        fault.start()
        views = client.wait(timeout=90)
        fault.join()
        summary = client.summary()
    finally:
        client.close()
    # the jobs sleep 60 s: the run did not wait for a host that cannot come back
    assert time.monotonic() - started < 40, (views, client.notices)
    assert client.session.provider.replaced == [], client.notices
    assert [v.state for v in views] == ["ABORTED"] * 3, (views, client.notices)
    assert all(v.fetched and v.reason and "time budget ran out" in v.reason for v in views)
    assert sorted(summary.out_of_time) == sorted(v.job_id for v in views)
    assert summary_doc(summary)["out_of_time"] == summary.out_of_time  # --json
    console = Console(width=200, record=True)
    print_summary(console, summary)
    shown = console.export_text()
    assert "3 job(s) not finished: the time budget (eco_life) ran out" in shown
    assert shown.count("time budget ran out: eco_life of local ended") == 3  # the table
    with pytest.raises(BudgetError) as caught:
        raise_for(summary)
    assert caught.value.exit_code == 9
    assert "  9  time budget ran out" in EXIT_CODES_HELP


# ---- item 9: public IPv4 and EBS in the estimate and the guard -------------------------------


def _spec(instances: list[dict[str, Any]], region: str = "us-east-1") -> Any:
    from tests.test_aws_costs import make_spec

    return make_spec(instances, region)


def test_the_estimate_counts_public_ipv4_and_ebs_as_lines_of_their_own() -> None:
    from cloudsend.providers.aws.costs import estimate
    from tests.test_aws_costs import table_price

    spec = _spec(
        [
            {"type": "m5.large", "number": 2, "disk_size": 50},  # gp3 by default
            {"type": "m5.large", "disk_type": "gp2"},  # 20 GB by default
            {"type": "m5.large", "disk_type": "io2", "disk_size": 100},
        ]
    )
    result = estimate(spec)
    lines = {(c.name, c.detail): c for c in result.charges}
    assert set(lines) == {
        ("public IPv4", "4 address(es)"),
        ("EBS gp3", "100 GB"),
        ("EBS gp2", "20 GB"),
        ("EBS io2", "100 GB"),
    }
    assert lines["public IPv4", "4 address(es)"].hourly == pytest.approx(4 * 0.005)
    assert lines["EBS gp3", "100 GB"].hourly == pytest.approx(100 * 0.08 / 730)
    assert lines["EBS gp2", "20 GB"].hourly == pytest.approx(20 * 0.10 / 730)
    assert lines["EBS io2", "100 GB"].hourly == pytest.approx(100 * 0.125 / 730)
    instances = 4 * table_price("us-east-1", "m5.large", "on_demand")
    extra = 4 * 0.005 + (100 * 0.08 + 20 * 0.10 + 100 * 0.125) / 730
    assert result.total_per_hour == pytest.approx(instances + extra)
    assert {c.source for c in result.charges} == {"rate"}
    doc = result.to_dict()
    assert {c["name"] for c in doc["charges"]} == {"public IPv4", "EBS gp3", "EBS gp2", "EBS io2"}


@pytest.mark.parametrize(
    ("volume", "per_gb_month"),
    [("gp3", 0.08), ("gp2", 0.10), ("io1", 0.125), ("io2", 0.125), ("standard", 0.05)],
)
def test_ebs_rates_by_volume_type(volume: str, per_gb_month: float) -> None:
    from cloudsend.providers.aws.costs import EBS_GB_MONTH, HOURS_PER_MONTH, estimate

    assert EBS_GB_MONTH["st1"] == 0.045 and EBS_GB_MONTH["sc1"] == 0.015  # not boot volumes
    result = estimate(_spec([{"type": "t3.micro", "disk_type": volume, "disk_size": 730}]))
    (ebs,) = [c for c in result.charges if c.name.startswith("EBS")]
    assert HOURS_PER_MONTH == 730
    assert ebs.hourly == pytest.approx(per_gb_month)  # 730 GB for 730 h: the monthly rate


def test_other_regions_are_approximated_by_the_us_east_1_ebs_rate() -> None:
    from cloudsend.providers.aws.costs import estimate

    result = estimate(_spec([{"type": "t3.micro"}], region="eu-west-1"))
    sources = {c.name: c.source for c in result.charges}
    assert sources == {"public IPv4": "rate", "EBS gp3": "us-east-1 rate"}


def test_the_eco_life_total_counts_each_instance_charges_for_its_hours() -> None:
    from cloudsend.providers.aws.costs import estimate

    spec = _spec(
        [
            {"type": "m5.large", "eco": True, "eco_life": "2h"},  # 20 GB gp3, ends at 2 h
            {"type": "m5.large", "eco": True, "eco_life": "6h"},
        ]
    )
    result = estimate(spec)
    per_instance = 0.005 + 20 * 0.08 / 730
    totals = {c.name: c.total_for_eco_life for c in result.charges}
    assert sum(v or 0.0 for v in totals.values()) == pytest.approx(per_instance * (2 + 6))
    assert result.total_for_eco_life == pytest.approx(
        sum(line.total_for_eco_life or 0.0 for line in result.lines) + per_instance * 8
    )


def test_the_budget_guard_counts_ipv4_and_ebs() -> None:
    from cloudsend.providers.aws.costs import estimate
    from tests.test_aws_costs import table_price

    result = estimate(_spec([{"type": "t3.micro"}]))
    instance = table_price("us-east-1", "t3.micro", "on_demand")  # 0.0104
    limit = instance + 0.001  # the instance alone fits; with its address and disk it does not
    message = result.over_budget(limit)
    assert message is not None and "exceeds max_cost_per_hour" in message
    assert "public IPv4 and EBS" in message


def test_up_refuses_a_plan_only_ipv4_and_ebs_push_over_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guard `up` and `run` apply (offline: the same estimate, no account needed)."""
    monkeypatch.setenv("HOME", str(tmp_path))  # the stack key is made under ~/.cloudsend
    from cloudsend.config import load_config
    from cloudsend.errors import ConfigError
    from cloudsend.providers.aws.provider import AwsProvider

    config = load_config(
        {
            "project": "budget",
            "provider": "aws",
            "region": "us-east-1",
            "max_cost_per_hour": 0.012,  # t3.micro is 0.0104/h on its own
            "instances": [{"type": "t3.micro", "img_id": "ami-12345678"}],
            "jobs": [{"run_command": "true"}],
        }
    )
    provider = AwsProvider(config)
    with pytest.raises(ConfigError, match="public IPv4 and EBS"):
        provider.preview(offline=True, enforce_budget=True)


def test_the_online_estimate_counts_them_too(
    moto_aws: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`preview` online: live prices (moto's spot prices; its Pricing API fails: the table
    fills in), and the same IPv4 and EBS lines in the total and the guard."""
    from cloudsend.config import load_config
    from cloudsend.providers.aws.provider import AwsProvider

    monkeypatch.setenv("HOME", str(tmp_path))
    config = load_config(
        {
            "project": "online",
            "provider": "aws",
            "region": "us-east-1",
            "instances": [{"type": "t3.micro", "img_id": "ami-12345678", "eco": True}],
            "jobs": [{"run_command": "true"}],
        }
    )
    provider = AwsProvider(config)
    cost, _warnings = provider.cost(provider.plan(offline=True), live=True)
    assert {c.name for c in cost.charges} == {"public IPv4", "EBS gp3"}
    spot = cost.lines[0].hourly
    assert spot is not None
    assert cost.total_per_hour == pytest.approx(spot + 0.005 + 20 * 0.08 / 730)
    # the instance alone would fit such a budget; with its address and disk it does not
    assert "public IPv4 and EBS" in (cost.over_budget(spot + 0.001) or "")


# ---- items 9 and 10: what `preview --offline` prints --------------------------------------------

PREVIEW_CONFIG = """
project: moneyprev
provider: aws
region: us-east-1
max_cost_per_hour: 0.05
instances:
  - type: x9z.huge
    img_id: ami-12345678
  - type: m5.large
    img_id: ami-12345678
    disk_size: 50
jobs:
  - run_command: echo hi
"""


def _offline_env(tmp_path: Path) -> dict[str, str]:
    import os

    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    python_dir = str(Path(os.__file__).parents[2] / "bin")
    return {
        "HOME": str(home),
        "PATH": f"{python_dir}:/usr/bin:/bin",
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    }


def test_offline_preview_says_what_it_cannot_price_and_that_the_budget_is_exceeded(
    project: Project, tmp_path: Path
) -> None:
    project.config(PREVIEW_CONFIG)
    proc = project.cli("preview", "--offline", env=_offline_env(tmp_path), check=True)
    text = " ".join(proc.stdout.split())  # rich wraps at the terminal width
    assert "warning: no on-demand price known for x9z.huge in us-east-1" in text
    assert "incomplete: 1 instance(s) without a price (?) not counted" in text
    assert "warning: estimated $" in text and "exceeds max_cost_per_hour $0.0500" in text
    assert "`up` refuses this plan" in text
    assert "public IPv4" in text and "EBS gp3" in text  # item 9: lines of the table
    doc = json.loads(
        project.cli("preview", "--offline", "--json", env=_offline_env(tmp_path), check=True).stdout
    )
    assert doc["cost"]["complete"] is False
    assert any("exceeds max_cost_per_hour" in w for w in doc["warnings"])
    assert {c["name"] for c in doc["cost"]["charges"]} == {"public IPv4", "EBS gp3"}


def test_offline_preview_warnings_are_in_a_warning_colour(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # the stack key is made under ~/.cloudsend
    import yaml
    from rich.console import Console

    from cloudsend.config import load_config
    from cloudsend.providers.aws.provider import AwsProvider
    from cloudsend.ui import print_preview

    config = load_config(yaml.safe_load(PREVIEW_CONFIG))
    preview = AwsProvider(config).preview(offline=True)
    console = Console(width=300, record=True, force_terminal=True, color_system="standard")
    print_preview(console, preview)
    ansi = console.export_text(styles=True)
    yellow = "\x1b[33m"
    warned = [line for line in ansi.splitlines() if "warning:" in line]
    assert len(warned) >= 2 and all(yellow in line for line in warned), warned
    caption = next(line for line in ansi.splitlines() if "incomplete:" in line)
    assert yellow in caption
