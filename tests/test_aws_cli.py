"""provider aws through the CLI: offline preview (no CLI, no credentials), the budget guard and
the missing-pulumi message against a real moto server, and down refusing to lose results."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Project

AWS_CONFIG = """
project: awsdemo
provider: aws
region: us-east-1
{extra}
instances:
  - type: t3.medium
    number: 2
    img_id: ami-12345678
  - type: c5.xlarge
    eco: true
    max_bid: 0.1
    eco_life: 6h
    disk_size: 50
    img_id: ami-12345678
jobs:
  - run_command: echo hi
"""


@pytest.fixture
def no_pulumi_env(tmp_path: Path) -> dict[str, str]:
    """A HOME of its own (keys, pulumi state) and a PATH without any pulumi CLI."""
    home = tmp_path / "home"
    home.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python_dir = str(Path(os.__file__).parents[2] / "bin")
    return {"HOME": str(home), "PATH": f"{bin_dir}:{python_dir}:/usr/bin:/bin"}


def test_offline_preview_json_needs_no_cli_and_no_credentials(
    project: Project, no_pulumi_env: dict[str, str]
) -> None:
    project.config(AWS_CONFIG.format(extra=""))
    env = {
        **no_pulumi_env,
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    }
    proc = project.cli("preview", "--offline", "--json", env=env, check=True)
    doc = json.loads(proc.stdout)
    types = [r["type"] for r in doc["resources"]]
    assert types.count("aws:ec2/instance:Instance") == 3
    assert "aws:ec2/keyPair:KeyPair" in types
    groups = [r for r in doc["resources"] if r["type"] == "aws:ec2/securityGroup:SecurityGroup"]
    ingress = json.dumps([g["inputs"].get("ingress") for g in groups])
    assert "0.0.0.0/0" not in ingress
    cost = doc["cost"]
    assert cost["total_per_hour"] == pytest.approx(
        sum(i["hourly"] for i in cost["instances"]) + sum(c["hourly"] for c in cost["charges"])
    )
    spot = [i for i in cost["instances"] if i["market"] == "spot"]
    assert len(spot) == 1 and spot[0]["hourly"] <= 0.1
    # nothing is deployed: no key is made (`up` makes the per-stack key)
    assert not (Path(no_pulumi_env["HOME"]) / ".cloudsend" / "keys").exists()


def test_up_refuses_a_plan_over_budget(
    project: Project, moto_aws: Any, no_pulumi_env: dict[str, str]
) -> None:
    project.config(AWS_CONFIG.format(extra="max_cost_per_hour: 0.01\nssh_cidrs: [198.51.100.7/32]"))
    proc = project.cli("up", "--yes", env={**no_pulumi_env, **_aws_env()})
    assert proc.returncode == 2, proc.stderr
    assert "exceeds max_cost_per_hour" in proc.stderr
    # `run` creates machines too: the same guard applies before anything is created
    again = project.cli("run", "--yes", env={**no_pulumi_env, **_aws_env()})
    assert again.returncode == 2 and "exceeds max_cost_per_hour" in again.stderr
    assert "awsdemo-1-0" in proc.stderr or "awsdemo-0-0" in proc.stderr  # names the costliest
    assert "Traceback" not in proc.stderr


def test_up_without_pulumi_cli_says_how_to_install_it(
    project: Project, moto_aws: Any, no_pulumi_env: dict[str, str]
) -> None:
    project.config(AWS_CONFIG.format(extra="ssh_cidrs: [198.51.100.7/32]"))
    proc = project.cli("up", "--yes", env={**no_pulumi_env, **_aws_env()})
    assert proc.returncode == 3, proc.stderr
    assert "pulumi" in proc.stderr.lower() and "install" in proc.stderr.lower()
    assert "preview --offline" in proc.stderr
    assert "Traceback" not in proc.stderr and "FileNotFoundError" not in proc.stderr


def _aws_env() -> dict[str, str]:
    keys = (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "CLOUDSEND_AWS_ENDPOINT_URL",
        "AWS_EC2_METADATA_DISABLED",
        "NO_PROXY",
    )
    return {k: os.environ[k] for k in keys if k in os.environ}


def test_down_refuses_while_results_are_not_fetched(project: Project) -> None:
    project.config("jobs:\n  - run_command: echo hi > o.txt\n    output_file: o.txt\n")
    project.cli("run", check=True)
    db = project.state_dir() / "state.db"
    with sqlite3.connect(db) as conn:  # as if cloudsend died before fetching
        conn.execute("UPDATE jobs SET fetched = 0")
    proc = project.cli("down")
    assert proc.returncode == 7
    assert "not fetched" in proc.stderr and "--force" in proc.stderr
    assert (project.state_dir() / "hosts").exists()
    project.cli("fetch", check=True)
    project.cli("down", check=True)
    assert not (project.state_dir() / "hosts").exists()


# Runs the real CLI in a subprocess whose Pulumi engine is a stub (the pulumi CLI cannot be
# installed here): its preview plans one instance to create, and any operation that would
# create or touch resources leaves a marker file, so "nothing was created" is checked.
_STUB_ENGINE_CLI = """
import sys
from pathlib import Path

from cloudsend.providers.aws.diff import ResourceChange
from cloudsend.providers.aws.provider import AwsProvider

marker = Path(sys.argv[1])


class Stub:
    def preview(self, refresh=False):
        return [ResourceChange("create", "aws:ec2/instance:Instance", "awsdemo-0-0", "urn:x")]

    def _touch(self, what):
        marker.write_text(what)
        return {}

    def up(self, on_change=None):
        return self._touch("up")

    def refresh(self):
        return self._touch("refresh")

    def destroy(self, on_change=None):
        return self._touch("destroy")

    def outputs(self):
        return {}


AwsProvider.engine = lambda self, spec: Stub()
from cloudsend.cli import main

main(sys.argv[2:])
"""


@pytest.mark.parametrize("answer", ["n\n", ""])  # "n", and end of input at the prompt
@pytest.mark.parametrize("command", ["up", "run"])
def test_declining_the_confirmation_creates_nothing(
    project: Project,
    moto_aws: Any,
    no_pulumi_env: dict[str, str],
    tmp_path: Path,
    command: str,
    answer: str,
) -> None:
    import subprocess
    import sys

    project.config(
        """
        project: awsdemo
        provider: aws
        region: us-east-1
        ssh_cidrs: [198.51.100.7/32]
        instances:
          - {type: c5.xlarge, eco: true, img_id: ami-12345678}
        jobs:
          - run_command: echo hi
        """
    )
    marker = tmp_path / "engine-touched"
    proc = subprocess.run(
        [sys.executable, "-c", _STUB_ENGINE_CLI, str(marker), command],
        cwd=project.path,
        input=answer,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **no_pulumi_env, **_aws_env()},
    )
    assert proc.returncode == 1, proc.stderr
    assert "nothing was created" in proc.stderr and "--yes" in proc.stderr
    assert "interrupted" not in proc.stderr and "Traceback" not in proc.stderr
    # the plan, its cost and the cost warnings were shown before the question
    prompt = proc.stdout.index("create these resources?")
    assert proc.stdout.index("awsdemo-0-0") < prompt
    # (moto has no pricing API: the live-price warning is the one every run here gets)
    assert proc.stdout.index("warning: live on-demand prices unavailable") < prompt
    assert not marker.exists()  # no up, refresh or destroy
    assert moto_aws.client("ec2").describe_instances()["Reservations"] == []
    assert not list(project.path.glob(".cloudsend/**/state.db"))
