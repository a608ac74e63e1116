"""Dispatch benchmark: 200 short jobs (`echo ok > out.txt`) over 4 real sshd hosts on loopback.

Measures, in the same run:
- cloudsend: wall time of `cloudsend run` from start to all 200 outputs fetched, with the
  environment already deployed (a first run deploys agent and environment);
- the limit: per host, one OpenSSH ControlMaster session that runs the host's 50 commands
  4 at a time, and one that streams the outputs back with tar; the 4 hosts in parallel;
- one agent status call with 1000 jobs queued on 4 hosts (250 each), through cloudsend's
  SSH transport.
Prints figures (target: cloudsend <= 3x the limit). Run as root: `python benchmarks/dispatch.py`.

The hosts log in as `ubuntu` (BENCH_USER to change), as cloud images do. On this machine root's
~/.bashrc runs `pyenv init`, which sshd makes every remote command pay (~170 ms of CPU each);
with 4 hosts on 2 cores that burns the CPU the jobs need, so BENCH_USER=root measures that
.bashrc more than cloudsend.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.sshd_harness import SshdHost, ensure_user, release_users, stop_agents  # noqa: E402

HOSTS, JOBS, SLOTS = 4, 200, 4
USER = os.environ.get("BENCH_USER", "ubuntu")  # as on cloud images; see the note below
ROUNDS = 3


def make_hosts(base: Path) -> tuple[list[SshdHost], Path]:
    if USER != "root":
        ensure_user(USER)  # made (and removed at the end) as the test harness does
    key = base / "client_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    hosts = [SshdHost(f"b{i}", base, key, user=USER) for i in range(HOSTS)]
    for h in hosts:
        h.start()
    return hosts, key


def write_config(proj: Path, hosts: list[SshdHost], repeat: int, command: str) -> None:
    lines = ["project: bench", "provider: ssh", "hosts:"]
    for h in hosts:
        lines.append(
            f"  - {{address: 127.0.0.1, port: {h.port}, user: {USER}, key: {h.key}, "
            f"cpus: {SLOTS}, root: {h.root}}}"
        )
    lines += [
        "environments:",
        "  - name: shell",
        "    command: 'true'",
        "jobs:",
        "  - env_name: shell",
        f"    run_command: {command}",
        "    output_file: out.txt",
        f"    repeat: {repeat}",
    ]
    (proj / "cloudsend.yaml").write_text("\n".join(lines) + "\n")


def cloudsend_run(proj: Path) -> tuple[float, dict[str, object]]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "cloudsend", "run", "--json"],
        cwd=proj,
        capture_output=True,
        text=True,
        check=True,
    )
    return time.perf_counter() - start, json.loads(proc.stdout)


def limit(hosts: list[SshdHost], base: Path, round_no: int = 0) -> float:
    """The floor: raw OpenSSH, one multiplexed connection per host, 4 commands at a time.
    Each round opens its own master connection, as each `cloudsend run` opens its own."""

    def one(h: SshdHost, out: Path) -> None:
        ctl = base / f"ctl-{h.port}-{round_no}"
        ssh = [
            "ssh",
            "-q",
            "-p",
            str(h.port),
            "-i",
            str(h.key),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ControlMaster=auto",
            "-o",
            f"ControlPath={ctl}",
            "-o",
            "ControlPersist=30",
            f"{USER}@127.0.0.1",
        ]
        work = f"{h.root}/limit"
        script = (
            f"rm -rf {work} && mkdir -p {work} && cd {work} && seq {JOBS // HOSTS} | "
            f"xargs -P {SLOTS} -I{{}} sh -c 'mkdir -p j{{}} && cd j{{}} && echo ok > out.txt'"
        )
        subprocess.run([*ssh, script], check=True)
        out.mkdir(parents=True, exist_ok=True)
        tar = subprocess.Popen([*ssh, f"tar -C {work} -cf - ."], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-C", str(out), "-xf", "-"], stdin=tar.stdout, check=True)
        tar.wait()

    outs = base / f"limit-out-{round_no}"
    start = time.perf_counter()
    threads = [threading.Thread(target=one, args=(h, outs / h.name)) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    got = len(list(outs.glob("*/*/out.txt")))
    assert got == JOBS, got
    return elapsed


def status_with_1000_queued(hosts: list[SshdHost], proj: Path) -> tuple[float, float]:
    from cloudsend.config import load_config
    from cloudsend.pipeline.agent_client import AgentClient
    from cloudsend.providers.ssh import SshProvider

    provider = SshProvider(load_config(proj / "cloudsend.yaml"))
    live = provider.up()
    per_host = 1000 // len(live)
    for i, host in enumerate(live):
        # jobs waiting on an environment never submitted stay queued (WAIT) forever
        jobs = [
            {
                "job_id": f"q{i}-{n}",
                "attempt": 1,
                "env_id": "never-ready",
                "cpus": 1,
                "script": "true",
                "links": {},
                "copy": False,
                "outputs": [],
            }
            for n in range(per_host)
        ]
        AgentClient(host).submit([], jobs)
    clients = [AgentClient(h) for h in live]
    for c in clients:
        c.status()  # warm connections
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        threads = [threading.Thread(target=c.status) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        samples.append(time.perf_counter() - start)
    one = []
    for _ in range(5):
        start = time.perf_counter()
        clients[0].status()
        one.append(time.perf_counter() - start)
    for h in live:
        h.transport.close()
    return min(one), min(samples)


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="cloudsend-bench-"))
    base.chmod(0o755)
    hosts, _ = make_hosts(base)
    try:
        proj = base / "proj"
        proj.mkdir()
        write_config(proj, hosts, repeat=HOSTS, command="'echo warm > out.txt'")
        warm, _ = cloudsend_run(proj)  # deploys agent + environment on every host
        runs, floors = [], []
        for i in range(ROUNDS):  # fresh job ids each round (the command differs)
            write_config(proj, hosts, repeat=JOBS, command=f"'echo ok{i} > out.txt'")
            ours, doc = cloudsend_run(proj)
            assert doc["counts"] == {"DONE": JOBS}, doc["counts"]
            results = Path(str(doc["results_dir"]))
            outs = [results / str(j["job_id"]) / "out.txt" for j in doc["jobs"]]  # type: ignore[attr-defined]
            assert all(p.read_text() == f"ok{i}\n" for p in outs)
            runs.append(ours)
            floors.append(limit(hosts, base, i))
        ours, floor = statistics.median(runs), statistics.median(floors)
        print(f"hosts: {HOSTS} sshd on loopback (user {USER}), {SLOTS} slots each; jobs: {JOBS}")
        print(f"warm-up run (deploy agent + env, {HOSTS} jobs): {warm:6.2f} s")
        print(
            f"cloudsend run, {JOBS} jobs to all outputs fetched: {ours:6.2f} s "
            f"(median of {ROUNDS}: {', '.join(f'{r:.2f}' for r in runs)})"
        )
        print(
            f"limit (OpenSSH ControlMaster + xargs -P{SLOTS} + tar): {floor:6.2f} s "
            f"(median of {ROUNDS}: {', '.join(f'{r:.2f}' for r in floors)})"
        )
        print(f"ratio: {ours / floor:5.2f}x   (target <= 3x)")
        one, four = status_with_1000_queued(hosts, proj)
        print(
            f"status with 1000 jobs queued: one host (250 jobs) {one * 1000:6.1f} ms, "
            f"all 4 hosts in parallel {four * 1000:6.1f} ms"
        )
    finally:
        for h in hosts:
            h.kill()
            stop_agents(h.root)
        shutil.rmtree(base, ignore_errors=True)
        for warning in release_users():
            print(f"warning: {warning}", file=sys.stderr)


if __name__ == "__main__":
    main()
