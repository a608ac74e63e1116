"""AWS credentials never leave the user's machine: nothing from ~/.aws or AWS_* variables is
uploaded, put on a remote command line, or visible to jobs, over a real SSH transport.
Every transport call (run, its stdin, put) of a whole run is recorded and searched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Project

MARKERS = ("AKIAMARKER7Q2Z9XK4WD", "s3cr3t-marker-wJalrXUtnFEMI", "profile-marker-9f3b")


def test_no_credential_crosses_any_transport_call(
    sshd_factory: Any, project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloudsend.api import SyncClient
    from cloudsend.transport.ssh import SshTransport

    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "credentials").write_text(
        f"[default]\naws_access_key_id = {MARKERS[0]}\naws_secret_access_key = {MARKERS[1]}\n"
    )
    (home / ".aws" / "config").write_text(f"[profile {MARKERS[2]}]\nregion = us-east-1\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", MARKERS[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", MARKERS[1])
    monkeypatch.setenv("AWS_PROFILE", MARKERS[2])

    seen: list[str] = []
    real_run, real_put = SshTransport.run, SshTransport.put

    def run(self: Any, command: str, *, stdin: str | None = None, **kw: Any) -> Any:
        seen.append(command)
        seen.append(stdin or "")
        return real_run(self, command, stdin=stdin, **kw)

    def put(self: Any, local: Path, remote: str) -> None:
        seen.append(remote)
        seen.append(Path(local).read_bytes().decode("utf-8", "replace"))
        real_put(self, local, remote)

    monkeypatch.setattr(SshTransport, "run", run)
    monkeypatch.setattr(SshTransport, "put", put)

    host = sshd_factory(1, user="ubuntu")[0]
    project.write("data.txt", "input\n")
    cfg = project.config(
        f"""
        provider: ssh
        hosts:
          - {{address: 127.0.0.1, port: {host.port}, user: ubuntu, key: {host.key},
              root: {host.root}}}
        environments:
          - name: e
            command: echo ready
        jobs:
          - env_name: e
            run_command: env > env.txt; cat data.txt >> env.txt
            upload_files: data.txt
            output_file: env.txt
        """
    )
    client = SyncClient(cfg, poll_wait=0.5)
    try:
        client.start()
        client.deploy()
        client.run()
        views = client.wait(timeout=120)
        results = client.session.results_dir
    finally:
        client.down(force=True)
        client.close()
    assert [v.state for v in views] == ["DONE"]
    assert len(seen) > 10  # the recording really saw the run's traffic
    env_txt = next(results.glob("*/env.txt")).read_text()
    assert "input" in env_txt  # the job ran and its output came back
    for marker in MARKERS:
        assert not any(marker in text for text in seen), f"{marker[:8]}... crossed a transport"
        assert marker not in env_txt, "a job saw the local AWS credentials"
    assert "AWS_" not in env_txt
