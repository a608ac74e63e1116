"""`maestro: remote` on provider ssh, end to end on real sshd hosts (all loopback): one host
as maestro, two as workers. `run` returns once the run is detached on the maestro; the
laptop's state dir is then deleted (as if the laptop were another machine); `status --json`
from the laptop follows the maestro's run to the end; `fetch` brings every result home once
(a second fetch brings nothing); `down` removes the run key from every worker."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_maestro_ship import USER_LINES
from tests.test_maestro_ship import worker_home as _worker_home

FIGURES: list[str] = []


def _cli(folder: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloudsend", *args],
        cwd=folder, capture_output=True, text=True, timeout=timeout,
    )




def _status(folder: Path) -> dict[str, Any]:
    proc = _cli(folder, "status", "--json", "cloudsend.yaml", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout[proc.stdout.index("{"):])
    return doc


@pytest.mark.slow
def test_remote_maestro_run_status_fetch_down(sshd_factory: Any, tmp_path: Path) -> None:
    begin = time.monotonic()
    maestro = sshd_factory(1)[0]
    workers = [sshd_factory(1, user=f"csmaestro{i}")[0] for i in range(2)]
    keys_files = [_worker_home(h) for h in workers]
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    (laptop / "job.py").write_text(
        "import sys, time\ntime.sleep(1)\nopen('out.txt', 'w').write('job ' + sys.argv[1])\n"
        "print('hello', sys.argv[1])\n"
    )
    config = {
        "project": "demo",
        "provider": "ssh",
        "maestro": "remote",
        "maestro_host": {
            "address": "127.0.0.1", "port": maestro.port, "key": str(maestro.key),
            "root": str(maestro.root / "m"),
        },
        "hosts": [
            {"address": "127.0.0.1", "port": h.port, "user": h.user, "key": str(h.key)}
            for h in workers
        ],
        "jobs": [
            {"run_script": f"job.py {i}", "cpus_req": 1, "output_files": ["out.txt"]}
            for i in range(4)
        ],
    }
    (laptop / "cloudsend.yaml").write_text(yaml.safe_dump(config))
    os.environ.setdefault("XDG_CACHE_HOME", str(tmp_path / "cache"))

    t0 = time.monotonic()
    first = _cli(laptop, "run", "--json", "cloudsend.yaml")
    first_s = time.monotonic() - t0
    assert first.returncode == 0, first.stdout + first.stderr
    started = json.loads(first.stdout[first.stdout.index("{"):])
    assert started["run"] == 1, first.stdout
    for path in keys_files:  # the run key is on each worker, the user's lines kept
        text = path.read_text()
        assert text.startswith(USER_LINES) and text.count("cloudsend-run:demo:") == 1

    shutil.rmtree(laptop / ".cloudsend")  # the laptop forgets everything

    follow = _cli(laptop, "attach", "cloudsend.yaml", timeout=300)  # follows to the end
    assert follow.returncode == 0, follow.stdout + follow.stderr
    assert "DONE 4 · sent" in follow.stdout, follow.stdout  # the run's summary, as local's
    log = _cli(laptop, "logs", "0", "cloudsend.yaml", timeout=120)  # asked of the maestro
    assert log.returncode == 0 and log.stdout.strip() == "hello 0", log.stdout + log.stderr
    deadline = time.monotonic() + 300
    doc = _status(laptop)
    while not (doc["jobs"] and all(j["state"] == "DONE" and j["fetched"] for j in doc["jobs"])):
        assert time.monotonic() < deadline, doc
        time.sleep(2)
        doc = _status(laptop)
    assert len(doc["jobs"]) == 4
    assert {j["host"] for j in doc["jobs"]} <= {f"127.0.0.1:{h.port}" for h in workers}

    t0 = time.monotonic()
    again = _cli(laptop, "run", "--json", "cloudsend.yaml")  # a re-run: nothing to send
    again_s = time.monotonic() - t0
    assert again.returncode == 0, again.stdout + again.stderr
    resent = json.loads(again.stdout[again.stdout.index("{"):])
    assert resent["bytes_sent"] < 2000, resent  # the config only (its known_hosts is re-pinned)

    there = maestro.root / "m" / "runs" / "demo" / "results" / "demo"
    files = sorted(p.relative_to(there) for p in there.rglob("*") if p.is_file())
    assert len([f for f in files if f.name == "out.txt"]) == 4, files
    got = _cli(laptop, "fetch", "cloudsend.yaml")
    assert got.returncode == 0, got.stdout + got.stderr
    assert f"fetched 4 job(s), {len(files)} file(s)" in got.stdout, got.stdout
    home = laptop / "results" / "demo"
    assert sorted(p.relative_to(home) for p in home.rglob("*") if p.is_file()) == files
    for rel in files:  # byte for byte what the maestro holds
        assert (home / rel).read_bytes() == (there / rel).read_bytes()
    outs = sorted((laptop / "results" / "demo").rglob("out.txt"))
    assert sorted(p.read_text() for p in outs) == [f"job {i}" for i in range(4)]
    second = _cli(laptop, "fetch", "cloudsend.yaml")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "fetched 0 job(s), 0 file(s), 0 bytes" in second.stdout, second.stdout
    # resumable: a job's marker lost with one file gone -> only that file comes again
    shutil.rmtree(laptop / ".cloudsend" / "maestro" / "fetched")
    outs[0].unlink()
    third = _cli(laptop, "fetch", "cloudsend.yaml")
    assert "fetched 4 job(s), 1 file(s)" in third.stdout, third.stdout
    assert len(sorted((laptop / "results" / "demo").rglob("out.txt"))) == 4

    down = _cli(laptop, "down", "cloudsend.yaml", "--yes")
    assert down.returncode == 0, down.stdout + down.stderr
    for path in keys_files:
        assert path.read_text() == USER_LINES
    total = time.monotonic() - begin
    # the same config with maestro: local (watched here, in the foreground), for the figures
    local = dict(config, maestro="local")
    del local["maestro_host"]
    (laptop / "cloudsend.yaml").write_text(yaml.safe_dump(local))
    shutil.rmtree(laptop / "results")
    t0 = time.monotonic()
    here = _cli(laptop, "run", "cloudsend.yaml", "--reset")
    local_s = time.monotonic() - t0
    assert here.returncode == 0, here.stdout + here.stderr
    assert len(sorted((laptop / "results" / "demo").rglob("out.txt"))) == 4
    FIGURES.append(
        f"remote maestro: run returned in {first_s:.1f} s first ({started['bytes_sent']} bytes "
        f"sent), {again_s:.1f} s re-run ({resent['bytes_sent']} bytes); end to end {total:.1f} s; "
        f"the same run with maestro: local {local_s:.1f} s"
    )
    print("\n" + FIGURES[-1])


# -- the decisions, as tables ---------------------------------------------------------------

LISTING = {
    "run-1/a": {"out.txt": ["s1", 3], "stdout": ["s2", 0]},
    "run-1/b": {"out.txt": ["s3", 3]},
    "run-1/c": {"out.txt": ["s4", 3]},
    "run-1/../x": {"evil": ["s5", 1]},
    "run-1/d": {"../../evil": ["s6", 1], "ok": ["s7", 1]},
}


@pytest.mark.parametrize(
    ("complete", "marked", "have", "expected"),
    [
        # nothing here yet: every complete job, every file
        ({"a", "b"}, set(), {}, {"run-1/a": ["out.txt", "stdout"], "run-1/b": ["out.txt"]}),
        # c is not complete on the maestro (not fetched there yet): left for later
        ({"a"}, set(), {}, {"run-1/a": ["out.txt", "stdout"]}),
        # marked done here: never again
        ({"a", "b"}, {"run-1/a"}, {}, {"run-1/b": ["out.txt"]}),
        # a cut fetch: the file already here with the same sha is not copied again
        ({"a"}, set(), {"run-1/a/out.txt": "s1"}, {"run-1/a": ["stdout"]}),
        # here with other content: copied again
        (
            {"a"}, set(), {"run-1/a/out.txt": "old", "run-1/a/stdout": "s2"},
            {"run-1/a": ["out.txt"]},
        ),
        # all here, not marked: the folder appears with nothing to copy (it gets its marker)
        ({"b"}, set(), {"run-1/b/out.txt": "s3"}, {"run-1/b": []}),
        # names that would leave the results folder are left out
        ({"x", "d", ".."}, set(), {}, {"run-1/d": ["ok"]}),
    ],
)
def test_plan_fetch(
    complete: set[str], marked: set[str], have: dict[str, str], expected: dict[str, list[str]]
) -> None:
    from cloudsend.pipeline.maestro_control import plan_fetch

    assert plan_fetch(LISTING, complete, marked, have.get) == expected


@pytest.mark.parametrize(
    ("doc", "final"),
    [
        ({"jobs": []}, False),
        ({"jobs": [{"state": "DONE", "fetched": True}]}, True),
        ({"jobs": [{"state": "DONE", "fetched": False}]}, False),  # not on the maestro's disk
        ({"jobs": [{"state": "RUNNING", "fetched": False}, {"state": "DONE", "fetched": True}]},
         False),
        ({"jobs": [{"state": "ABORTED", "fetched": True}, {"state": "DONE", "fetched": True}]},
         True),
    ],
)
def test_all_final(doc: dict[str, Any], final: bool) -> None:
    from cloudsend.pipeline.maestro_control import all_final

    assert all_final(doc) is final
