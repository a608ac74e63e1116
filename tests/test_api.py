"""The Python API keeps the original tool's lifecycle (async) and a blocking twin."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from cloudsend.core import CloudSendProcessState as S
from cloudsend.provider import get_client, get_sync_client


def _config(tmp_path: Path) -> dict[str, object]:
    (tmp_path / "inc.py").write_text(
        "import sys\nn = int(sys.argv[1])\nopen('n.txt', 'w').write(str(n + 1))\n"
    )
    return {
        "project": "api",
        "jobs": [
            {"run_script": "inc.py 41", "output_file": "n.txt"},
            {"run_command": "exit 4"},
        ],
    }


def test_async_lifecycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a dict config resolves paths against the working dir
    client = get_client(_config(tmp_path), poll_wait=0.5)

    async def lifecycle() -> dict[str, S]:
        await client.start()
        await client.deploy()
        await client.run()
        await client.wait(S.DONE | S.ABORTED)
        states = await client.get_jobs_states()
        await client.fetch_results(tmp_path / "out")
        await client.finalize()
        return states

    try:
        states = asyncio.run(lifecycle())
    finally:
        client.close()
    assert sorted(states.values()) == [S.DONE, S.ABORTED]
    assert all(s & (S.DONE | S.ABORTED) for s in states.values())
    out = sorted((tmp_path / "out").glob("*/n.txt"))
    assert [p.read_text() for p in out] == ["42"]


def test_sync_client_summaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    client = get_sync_client(_config(tmp_path), poll_wait=0.5)
    try:
        client.start()
        client.deploy()
        assert client.run() == 2
        views = client.wait()
        assert {v.state for v in views} == {"DONE", "ABORTED"}
        buf = io.StringIO()
        client.print_jobs_summary(buf)
        client.print_aborted_logs(buf)
        text = buf.getvalue()
        assert "ABORTED: 1" in text and "DONE: 1" in text
        assert "exit 4" in text
        # nothing left to submit: the DONE job is never re-run, the ABORTED one only on request
        assert client.session.run(retry_aborted=False) == 0
    finally:
        client.down()
        client.close()
