"""A small sshd-using suite that tests/test_hardening_tests.py runs twice at once (not
collected by a plain `pytest`: its name does not start with test_). Environment:
CLOUDSEND_CS_USER (the test login user both share), CLOUDSEND_CS_SYNC (a folder the two
processes and their parent meet in), CLOUDSEND_CS_ROLE ("first" ends first; "second" goes
on using the user after the first suite has ended)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from cloudsend.transport.ssh import SshTransport
from tests.sshd_harness import SshdHost
from tests.waiting import wait_until

USER = os.environ.get("CLOUDSEND_CS_USER", "")
SYNC = Path(os.environ.get("CLOUDSEND_CS_SYNC", "/nonexistent"))
ROLE = os.environ.get("CLOUDSEND_CS_ROLE", "")


def _sudo_login(host: SshdHost, known_hosts: Path) -> None:
    transport = SshTransport(host.target(known_hosts))
    try:
        assert transport.run("id -un").stdout == f"{USER}\n"
        assert transport.run("sudo -n true", check=False).exit_code == 0
    finally:
        transport.close()


def test_both_suites_log_in_as_the_shared_user(
    sshd_factory: Callable[..., list[SshdHost]], tmp_path: Path
) -> None:
    host = sshd_factory(1, user=USER)[0]
    _sudo_login(host, tmp_path / "known_hosts")
    (SYNC / f"{ROLE}.port").write_text(f"{host.port}\n{tmp_path}\n{host.dir}\n")
    other = "second" if ROLE == "first" else "first"
    # both suites hold the user at once before either ends
    wait_until(lambda: (SYNC / f"{other}.port").exists(), 60, f"the {other} suite to log in")


def test_the_user_outlives_the_other_suite(
    sshd_factory: Callable[..., list[SshdHost]], tmp_path: Path
) -> None:
    if ROLE == "first":
        return  # the first suite ends here, releasing its hold on the user
    wait_until(lambda: (SYNC / "first.exited").exists(), 60, "the first suite to end")
    host = sshd_factory(1, user=USER)[0]
    _sudo_login(host, tmp_path / "known_hosts")
