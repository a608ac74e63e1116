"""The instance monitor wired into the pipeline, against a real moto server.

Local hosts stand for the instances: no EC2 machine can be reached from here (moto's IPs are
not real machines), so each local host is paired with a moto instance of the same Name. The
instance states, the boto3 monitor, the re-queue path and auto_stop are the real ones."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from cloudsend.config.models import Config
from cloudsend.providers.local import LocalProvider
from tests.conftest import Project
from tests.waiting import wait_until

TAGS = {"cloudsend:project": "mon", "cloudsend:stack": "mon"}


class MotoPairedLocal(LocalProvider):
    """Local hosts whose "machines" are moto instances named like them."""

    def __init__(self, config: Config, session: Any) -> None:
        from cloudsend.providers.aws.monitor import InstanceMonitor

        super().__init__(config)
        self.session = session
        self.monitor = InstanceMonitor(session, TAGS, ["us-east-1"])

    def up(self) -> list[Any]:
        hosts = super().up()
        infos = self.monitor.instances()
        for host in hosts:  # as AwsProvider's hosts carry them
            if host.name in infos:
                host.info["instance_id"] = infos[host.name].id
        return hosts

    @property
    def machines(self) -> Any:  # what AwsProvider.machines is, over this moto monitor
        from cloudsend.providers.aws.machines import AwsMachines

        return AwsMachines(lambda: self.monitor, lambda: self.session, self.replace)

    def replace(self, names: list[str]) -> list[Any]:
        return []  # re-creating needs `pulumi up`, which cannot run here


def paired_client(
    project: Project,
    moto_aws: Any,
    jobs: int,
    sleep: float,
    hosts: int = 3,
    provider: type[MotoPairedLocal] = MotoPairedLocal,
) -> Any:
    """A client over `hosts` local hosts paired with moto instances (`provider` builds them)."""
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
    client.session.provider = provider(client.config, moto_aws.session())
    client.session.instance_poll = 0.5
    client.notices = notices
    return client


def test_spot_interruption_requeues_jobs_and_auto_stop_stops_machines(
    project: Project, moto_aws: Any
) -> None:
    names = ["local-0-0", "local-0-1", "local-0-2"]
    ids = dict(zip(names, moto_aws.run_instances(3, TAGS, spot=True, names=names), strict=True))
    client = paired_client(project, moto_aws, jobs=9, sleep=2)
    victim = project.path / ".cloudsend/projects/mon/hosts/local-0-1"
    home_before_loss: set[str] = set()  # finished on local-0-1 and fetched before it died

    def interrupt() -> None:
        store, run_id = client.session.store, client.session.current_run()
        wait_until(
            lambda: any(r.host == "local-0-1" and r.state == "RUNNING" for r in store.jobs(run_id)),
            30,
            "a job running on local-0-1",
        )
        # the machine is gone: its processes and disk with it, and AWS says why
        agent = victim / "agent.py"
        subprocess.run([sys.executable, str(agent), "--root", str(victim), "stop",
                        "--kill-jobs"], capture_output=True, timeout=30)
        # the shutdown's kills reach cloudsend before AWS reports the interruption (the
        # order a loaded machine produced in CI): those jobs must still run again elsewhere
        wait_until(
            lambda: any(r.host == "local-0-1" and r.state == "ABORTED" for r in store.jobs(run_id)),
            10,
            "the kills to be recorded",
            check=False,  # if AWS's report comes first, that order is tested too
        )
        home_before_loss.update(
            r.job_id for r in store.jobs(run_id) if r.host == "local-0-1" and r.fetched
        )
        shutil.rmtree(victim, ignore_errors=True)
        moto_aws.spot_interrupt(ids["local-0-1"])

    fault = threading.Thread(target=interrupt)
    try:
        client.start()
        client.deploy()
        client.run()
        fault.start()
        views = client.wait(timeout=120)
        fault.join()
    finally:
        client.close()
    assert [v.state for v in views] == ["DONE"] * 9, (views, client.notices)
    assert all(v.fetched for v in views), views
    # on a loaded machine a job can finish and come home from local-0-1 before the loss; any
    # other job that was there ran again elsewhere
    assert all(v.host != "local-0-1" or v.job_id in home_before_loss for v in views), (
        views, home_before_loss)
    assert any(v.host != "local-0-1" for v in views)
    assert any("local-0-1 is gone" in n for n in client.notices), client.notices
    assert any("re-queuing" in n for n in client.notices), client.notices
    outs = list(Path(client.session.results_dir).glob("*/out.txt"))
    assert sorted(p.read_text().strip() for p in outs) == sorted(v.job_id for v in views)
    # auto_stop: the surviving machines were ended once their work was home; they are one-time
    # spot instances, which EC2 cannot stop: terminated
    assert moto_aws.state(ids["local-0-0"]) == "terminated"
    assert moto_aws.state(ids["local-0-2"]) == "terminated", client.notices
    assert any("auto_stop: terminated spot" in n for n in client.notices), client.notices
    # ended on purpose: not a lost host, nothing to replace
    assert not any(("local-0-0 is gone" in n or "local-0-2 is gone" in n) for n in client.notices)


def test_a_stopped_instance_is_started_again(project: Project, moto_aws: Any) -> None:
    names = ["local-0-0", "local-0-1", "local-0-2"]
    ids = dict(zip(names, moto_aws.run_instances(3, TAGS, names=names), strict=True))
    client = paired_client(project, moto_aws, jobs=3, sleep=3)
    try:
        client.start()
        client.deploy()
        client.run()
        moto_aws.stop(ids["local-0-2"])
        views = client.wait(timeout=120)
    finally:
        client.close()
    assert [v.state for v in views] == ["DONE"] * 3
    assert any("starting 1 stopped instance" in n for n in client.notices), client.notices


def test_handed_back_jobs_skip_stopped_hosts_and_wake_them_when_alone(
    project: Project, moto_aws: Any
) -> None:
    """Jobs re-queued from a lost host never go to a host auto_stop stopped (its machine is
    off); when stopped hosts are all that is left, they are started again and take them."""
    from cloudsend.core import FINAL_STATES
    from cloudsend.pipeline.monitor import RunMonitor

    names = ["local-0-0", "local-0-1", "local-0-2"]
    ids = dict(zip(names, moto_aws.run_instances(3, TAGS, names=names), strict=True))
    client = paired_client(project, moto_aws, jobs=3, sleep=0)
    monitor: Any = None
    try:
        client.start()
        client.deploy()
        client.run()
        client.wait(timeout=120)
        session = client.session
        sent: list[list[str]] = []
        submit = session.submit_jobs

        def recording(attempts: dict[str, int], hosts: list[Any]) -> Any:
            sent.append(sorted(h.name for h in hosts))
            return submit(attempts, hosts)

        session.submit_jobs = recording  # type: ignore[method-assign]
        monitor = RunMonitor(session, FINAL_STATES)
        job = session.views()[0]
        moto_aws.stop(ids["local-0-0"])
        monitor.stopped = {"local-0-0"}  # as auto_stop leaves it
        session.state.lost.add("local-0-1")
        assert monitor._submit({job.job_id: job.attempt + 1})
        assert sent[-1] == ["local-0-2"]
        moto_aws.stop(ids["local-0-2"])
        monitor.stopped.add("local-0-2")
        assert monitor._submit({job.job_id: job.attempt + 2})
        assert sent[-1] == ["local-0-0", "local-0-2"]
        assert monitor.stopped == set()
        assert moto_aws.state(ids["local-0-0"]) in ("pending", "running")
        assert moto_aws.state(ids["local-0-2"]) in ("pending", "running")
        assert any("starting local-0-0, local-0-2 again" in n for n in client.notices)
    finally:
        if monitor is not None:
            monitor.stop.set()
            for watcher in monitor.watchers.values():
                watcher.join(timeout=30)
        client.close()
