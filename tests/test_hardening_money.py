"""Issue 10, "Money": eco_life caps spending, the estimate counts public IPv4 and EBS, and the
offline preview warns about what it cannot price or what breaks the budget.

eco_life: the decisions are tables (scheduling.reactions, InstanceInfo.kind); the EC2 side runs
against a real moto server (the instance ends itself as AWS reports it: terminated, state
reason Client.InstanceInitiatedShutdown, launched eco_life ago), and the pipeline runs real
local hosts paired with moto instances, as tests/test_instance_monitor_pipeline.py does.
"""

from __future__ import annotations

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
from tests.test_instance_monitor_pipeline import TAGS, MotoPairedLocal

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


# ---- item 8: the pipeline, real local hosts paired with moto instances ---------------------------


class Recording(MotoPairedLocal):
    """MotoPairedLocal that remembers what the run asked to replace."""

    replaced: list[list[str]]

    def replace(self, names: list[str]) -> list[Any]:
        self.replaced.append(list(names))
        return []


def _client(project: Project, moto_aws: Any, *, hosts: int, jobs: int, sleep: float) -> Any:
    from cloudsend.api import SyncClient
    from cloudsend.pipeline.reporting import NullReporter

    cfg = project.config(
        f"""
        project: mon
        host_lost_after: 600
        instances:
          - cpus: 2
            number: {hosts}
        jobs:
          - run_command: sleep {sleep}; echo "$CLOUDSEND_JOB_ID" > out.txt
            output_file: out.txt
            repeat: {jobs}
        """
    )
    notices: list[str] = []

    class Recorder(NullReporter):
        def notice(self, message: str) -> None:
            notices.append(message)

    client = SyncClient(cfg, Recorder(), poll_wait=0.5)
    provider = Recording(client.config, moto_aws.session())
    provider.replaced = []
    client.session.provider = provider
    client.session.instance_poll = 0.5
    client.notices = notices
    return client


def _expire_host(project: Project, client: Any, moto_aws: Any, name: str, instance: str) -> None:
    """The instance's eco_life ends: its shutdown kills the agent and its jobs, the disk goes,
    then EC2 reports it terminated by its own shutdown."""
    import shutil

    root = project.path / ".cloudsend" / "hosts" / name
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
    from cloudsend.cli import raise_for
    from cloudsend.errors import EXIT_CODES_HELP, BudgetError
    from cloudsend.ui import summary_doc

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
    with pytest.raises(BudgetError) as caught:
        raise_for(summary)
    assert caught.value.exit_code == 9
    assert "  9  time budget ran out" in EXIT_CODES_HELP
