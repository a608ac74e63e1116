"""Scheduling: job expansion and ids, instance explosion, assignment, resume decisions."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudsend.config.models import Config, InstanceConfig, JobConfig
from cloudsend.core import CloudSendProcessState as S
from cloudsend.errors import ConfigError
from cloudsend.scheduling import (
    HostSlots,
    HostView,
    JobSnapshot,
    JobUnit,
    Strategy,
    agent_state_to_process_state,
    assign,
    expand_jobs,
    explode_instances,
    is_final,
    job_slug,
    knapsack_waves,
    max_job_cpus,
    plan_resume,
    waves,
)

ID_RE = re.compile(r"^j(\d{3})-([a-z0-9_-]{1,20})-([0-9a-f]{8})-(\d+)$")


def cfg(jobs: list[Any], envs: list[Any] | None = None, **kw: Any) -> Config:
    data = {"base_dir": Path("/project"), "jobs": jobs, "environments": envs or [], **kw}
    return Config.model_validate(data)


def inst(**kw: Any) -> InstanceConfig:
    return InstanceConfig.model_validate(kw)


def units_of(cpus: list[int]) -> list[JobUnit]:
    return [
        JobUnit(f"j{i:03d}-x-00000000-0", i, 0, JobConfig.model_validate({"cpus_req": c}), None, c)
        for i, c in enumerate(cpus)
    ]


# --- expansion and ids -------------------------------------------------------------------


def test_repeat_expansion_and_id_format() -> None:
    units = expand_jobs(
        cfg([{"run_script": "train.py --lr 1", "repeat": 3}, {"run_command": "ls"}])
    )
    assert [(u.index, u.rep) for u in units] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    for u in units:
        m = ID_RE.match(u.job_id)
        assert m, u.job_id
        assert int(m.group(1)) == u.index and int(m.group(4)) == u.rep
    assert units[0].job_id.startswith("j000-train-")
    assert units[3].job_id.startswith("j001-ls-")
    # reps of one job share index, slug and hash; only the rep differs
    assert len({u.job_id.rsplit("-", 1)[0] for u in units[:3]}) == 1
    assert len({u.job_id for u in units}) == 4


def test_ids_stable_across_invocations_and_change_with_config() -> None:
    jobs = [{"run_script": "a.py", "cpus_req": 2}, {"run_command": "echo hi"}]
    first = [u.job_id for u in expand_jobs(cfg(jobs))]
    assert first == [u.job_id for u in expand_jobs(cfg(jobs))]
    changed = [{"run_script": "a.py", "cpus_req": 3}, {"run_command": "echo hi"}]
    second = [u.job_id for u in expand_jobs(cfg(changed))]
    assert second[0] != first[0]
    assert second[1] == first[1]  # untouched job keeps its id


def test_raising_repeat_keeps_existing_reps() -> None:
    three = [u.job_id for u in expand_jobs(cfg([{"run_command": "x", "repeat": 3}]))]
    five = [u.job_id for u in expand_jobs(cfg([{"run_command": "x", "repeat": 5}]))]
    assert five[:3] == three


def test_ids_independent_of_project_location(tmp_path: Path) -> None:
    def at(base: Path) -> list[str]:
        job = {"run_script": f"{base}/sim.py 1", "input_files": [str(base / "data.csv")]}
        return [u.job_id for u in expand_jobs(cfg([job], base_dir=base))]

    assert at(tmp_path / "alice") == at(tmp_path / "bob")
    assert at(tmp_path / "alice") != [
        u.job_id for u in expand_jobs(cfg([{"run_script": "other.py"}], base_dir=tmp_path))
    ]


@pytest.mark.parametrize(
    ("job", "slug"),
    [
        ({"run_script": "'/abs/path/My Script.PY' arg"}, "my-script"),
        ({"run_script": "'dir with space/run.jl' 3"}, "run"),
        ({"run_command": "/usr/bin/python3 -c 'print(1)'"}, "python3"),
        ({"run_command": "échö hi"}, "ch"),
        ({"run_command": "a" * 40}, "a" * 20),
        ({"run_command": "'unbalanced"}, "unbalanced"),
        ({}, "job"),
        ({"run_command": "!!!"}, "job"),
    ],
)
def test_slug(job: dict[str, Any], slug: str) -> None:
    assert job_slug(JobConfig.model_validate(job)) == slug


def test_env_name_resolution() -> None:
    one = cfg([{"run_command": "x"}, {"run_command": "y", "env_name": "py"}], [{"name": "py"}])
    assert [u.env_name for u in expand_jobs(one)] == ["py", "py"]
    unnamed = cfg([{"run_command": "x"}], [{"command": "true"}])
    assert [u.env_name for u in expand_jobs(unnamed)] == [None]
    two = cfg(
        [{"run_command": "x"}, {"run_command": "y", "env_name": "b"}],
        [{"name": "a"}, {"name": "b"}],
    )
    assert [u.env_name for u in expand_jobs(two)] == [None, "b"]
    assert [u.env_name for u in expand_jobs(cfg([{"run_command": "x"}]))] == [None]


def test_unknown_env_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"jobs\[1\]\.env_name 'nope'"):
        expand_jobs(
            cfg([{"run_command": "x"}, {"run_command": "y", "env_name": "nope"}], [{"name": "a"}])
        )


def test_units_carry_cpus_and_job() -> None:
    units = expand_jobs(cfg([{"run_command": "x", "cpus_req": 4, "repeat": 2}]))
    assert [u.cpus for u in units] == [4, 4]
    assert units[0].job.run_command == "x"
    assert max_job_cpus(units) == 4 and max_job_cpus([]) == 1
    hash(units[0])  # frozen and hashable despite the pydantic model inside


# --- explode -----------------------------------------------------------------------------


def test_explode_instances() -> None:
    insts = [
        inst(cpus=10, explode=True),
        inst(cpus=8, number=2),
        inst(explode=True),
        inst(cpus=5, explode=True),
    ]
    out = explode_instances(insts, max_job_cpus=3)
    assert [(i, x.cpus) for i, x in out] == [
        (0, 3),
        (0, 3),
        (0, 4),
        (1, 8),
        (1, 8),
        (2, None),
        (3, 5),
    ]
    assert all(x.number == 1 for _, x in out)
    assert all(not x.explode for i, x in out if i == 0)  # pieces are plain machines
    assert len({id(x) for _, x in out}) == len(out)  # independent copies
    assert insts[0].cpus == 10 and insts[1].number == 2  # inputs untouched


@given(
    cpus=st.integers(1, 64),
    number=st.integers(1, 4),
    explode=st.booleans(),
    m=st.integers(1, 16),
)
def test_explode_properties(cpus: int, number: int, explode: bool, m: int) -> None:
    out = explode_instances([inst(cpus=cpus, number=number, explode=explode)], m)
    sizes = [x.cpus or 0 for _, x in out]
    assert sum(sizes) == cpus * number  # no CPU lost or invented
    if explode:
        assert all(s >= min(m, cpus) for s in sizes)  # every piece runs the biggest job
    else:
        assert sizes == [cpus] * number


# --- assignment --------------------------------------------------------------------------


def test_knapsack_balances_wave_zero_first() -> None:
    hosts = [HostSlots("a", 4), HostSlots("b", 4)]
    out = assign(units_of([1] * 8), hosts, "multi_knapsack")
    assert {h: len(q) for h, q in out.items()} == {"a": 4, "b": 4}
    out = assign(units_of([1] * 4), hosts, "multi_knapsack")
    assert {h: len(q) for h, q in out.items()} == {"a": 2, "b": 2}


def test_knapsack_packs_by_cpus() -> None:
    hosts = [HostSlots("a", 4), HostSlots("b", 4)]
    units = units_of([3, 2, 2, 1])
    w = knapsack_waves(units, hosts)
    assert all(len(ws) == 1 for ws in w.values())  # 8 cpus of jobs in one wave of 2x4
    assert w == waves(assign(units, hosts, "multi_knapsack"), units, hosts)


def test_big_job_only_on_big_host_and_empty_hosts_listed() -> None:
    hosts = [HostSlots("small", 2), HostSlots("big", 8), HostSlots("idle", 1)]
    strategies: list[Strategy] = ["random", "multi_knapsack"]
    for strategy in strategies:
        out = assign(units_of([6, 6]), hosts, strategy)
        assert out == {
            "small": [],
            "big": [units_of([6, 6])[0].job_id, units_of([6, 6])[1].job_id],
            "idle": [],
        }


def test_too_big_job_is_a_config_error() -> None:
    units = expand_jobs(
        cfg([{"run_command": "x"}, {"run_command": "y", "cpus_req": 16, "repeat": 3}])
    )
    strategies: list[Strategy] = ["random", "multi_knapsack"]
    for strategy in strategies:
        with pytest.raises(ConfigError) as err:
            assign(units, [HostSlots("h0", 4), HostSlots("h1", 8)], strategy)
        msg = str(err.value)
        assert "jobs[1] (cpus_req=16)" in msg and "'h1'" in msg and "8" in msg
        assert msg.count("jobs[1]") == 1  # once, not once per rep


def test_no_hosts_and_no_units() -> None:
    assert assign([], [], "multi_knapsack") == {}
    assert assign([], [HostSlots("a", 1)], "random") == {"a": []}
    with pytest.raises(ConfigError, match="no hosts"):
        assign(units_of([1]), [], "multi_knapsack")
    with pytest.raises(ValueError, match="duplicate"):
        assign(units_of([1]), [HostSlots("a", 1), HostSlots("a", 2)], "random")
    with pytest.raises(ValueError, match="strategy"):
        assign(units_of([1]), [HostSlots("a", 1)], "round_robin")  # type: ignore[arg-type]


def test_random_is_seeded() -> None:
    units, hosts = units_of([1] * 50), [HostSlots(f"h{i}", 2) for i in range(5)]
    a = assign(units, hosts, "random", seed=7)
    assert a == assign(units, hosts, "random", seed=7)
    assert a != assign(units, hosts, "random", seed=8)


def test_large_pack_fills_every_hole() -> None:
    # 3-cpu jobs on 4-cpu hosts leave a hole in every wave: the worst case for the wave scan
    # (its speed is benchmarks/pack.py's). Each hole takes a 1-cpu job: 250 full waves a host.
    units, hosts = units_of([3] * 5000 + [1] * 5000), [HostSlots(f"h{i}", 4) for i in range(20)]
    out = assign(units, hosts, "multi_knapsack")
    assert Counter(j for q in out.values() for j in q) == Counter(u.job_id for u in units)
    cpus = {u.job_id: u.cpus for u in units}
    packed = waves(out, units, hosts)
    assert {name: len(ws) for name, ws in packed.items()} == {h.name: 250 for h in hosts}
    assert all(sorted(cpus[j] for j in wave) == [1, 3] for ws in packed.values() for wave in ws)


host_lists = st.lists(st.integers(1, 16), min_size=1, max_size=6).map(
    lambda cs: [HostSlots(f"h{i}", c) for i, c in enumerate(cs)]
)


@st.composite
def problems(draw: st.DrawFn) -> tuple[list[JobUnit], list[HostSlots]]:
    hosts = draw(host_lists)
    biggest = max(h.cpus for h in hosts)
    cpus = draw(st.lists(st.integers(1, biggest), max_size=40))
    return units_of(cpus), hosts


@settings(max_examples=150, deadline=None)
@given(
    problem=problems(),
    strategy=st.sampled_from(["random", "multi_knapsack"]),
    seed=st.integers(0, 99),
)
def test_every_job_placed_once_on_a_host_it_fits(
    problem: tuple[list[JobUnit], list[HostSlots]], strategy: Any, seed: int
) -> None:
    units, hosts = problem
    out = assign(units, hosts, strategy, seed)
    assert set(out) == {h.name for h in hosts}
    placed = Counter(j for q in out.values() for j in q)
    assert placed == Counter(u.job_id for u in units)
    caps = {h.name: h.cpus for h in hosts}
    by_id = {u.job_id: u for u in units}
    assert all(by_id[j].cpus <= caps[h] for h, q in out.items() for j in q)
    assert out == assign(units, hosts, strategy, seed)  # deterministic


@settings(max_examples=150, deadline=None)
@given(problem=problems())
def test_knapsack_waves_never_overflow_and_fill_earlier_waves_first(
    problem: tuple[list[JobUnit], list[HostSlots]],
) -> None:
    units, hosts = problem
    packed = knapsack_waves(units, hosts)
    cpus = {u.job_id: u.cpus for u in units}
    caps = {h.name: h.cpus for h in hosts}
    free: dict[tuple[str, int], int] = {}
    for name, ws in packed.items():
        for w, wave in enumerate(ws):
            assert wave, "no empty wave between two used ones"
            used = sum(cpus[j] for j in wave)
            assert used <= caps[name]
            free[name, w] = caps[name] - used
    # A job sits in wave w only if no host had room for it in any earlier wave (room only
    # shrinks, so checking the final free space is enough).
    for ws in packed.values():
        for w, wave in enumerate(ws):
            for j in wave:
                for h in hosts:
                    for earlier in range(w):
                        # a host without that wave had all its CPUs free in it
                        assert free.get((h.name, earlier), caps[h.name]) < cpus[j]
    # The flattened assignment splits back into exactly these waves.
    assert waves(assign(units, hosts, "multi_knapsack"), units, hosts) == packed


@settings(max_examples=100, deadline=None)
@given(n_hosts=st.integers(1, 8), cap=st.integers(1, 8), n_jobs=st.integers(0, 80))
def test_knapsack_balance_on_equal_hosts(n_hosts: int, cap: int, n_jobs: int) -> None:
    hosts = [HostSlots(f"h{i}", cap) for i in range(n_hosts)]
    counts = [len(q) for q in assign(units_of([1] * n_jobs), hosts, "multi_knapsack").values()]
    assert max(counts) - min(counts) <= 1


# --- transitions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "state"),
    [
        ("WAIT", S.WAIT),
        ("queue", S.QUEUE),
        ("RUNNING", S.RUNNING),
        ("DONE", S.DONE),
        ("ABORTED", S.ABORTED),
        ("IDLE", S.IDLE),
        ("BUILDING", S.WAIT),
        ("READY", S.UNKNOWN),
        ("ANY", S.UNKNOWN),
        ("", S.UNKNOWN),
    ],
)
def test_agent_state_mapping(name: str, state: S) -> None:
    assert agent_state_to_process_state(name) is state


def test_is_final() -> None:
    assert is_final(S.DONE) and is_final("ABORTED") and is_final("done")
    assert not any(is_final(s) for s in (S.RUNNING, S.QUEUE, S.WAIT, S.UNKNOWN, S.ANY, "junk"))


def test_plan_resume_table() -> None:
    L, M, U = HostView.LISTED, HostView.MISSING, HostView.UNREACHABLE
    snaps = [
        JobSnapshot("fin", S.DONE, 1, True, M),
        JobSnapshot("fetch", S.DONE, 1, False, L),
        JobSnapshot("done-unreachable", S.DONE, 1, False, U),
        JobSnapshot("done-lost", S.DONE, 2, False, M),
        JobSnapshot("aborted", S.ABORTED, 1, False, L),
        JobSnapshot("running", S.RUNNING, 1, False, L),
        JobSnapshot("queued-unreachable", S.QUEUE, 1, False, U),
        JobSnapshot("new", S.UNKNOWN, 0, False, M),
        JobSnapshot("lost", S.RUNNING, 1, False, M),
    ]
    plan = plan_resume(snaps)
    assert plan.finished == {"fin"}
    assert plan.to_fetch == {"fetch"}
    assert plan.wait == {"done-unreachable", "queued-unreachable"}
    assert plan.to_submit == {"done-lost": 3, "new": 1, "lost": 2}
    assert plan.failed == {"aborted"}
    assert plan.watch == {"running"}
    assert not plan.done
    retry = plan_resume(snaps, retry_aborted=True)
    assert retry.to_submit["aborted"] == 2 and not retry.failed
    assert plan_resume([snaps[0], snaps[4]]).done


@given(
    st.lists(
        st.tuples(
            st.sampled_from([S.UNKNOWN, S.WAIT, S.QUEUE, S.IDLE, S.RUNNING, S.DONE, S.ABORTED]),
            st.integers(0, 5),
            st.booleans(),
            st.sampled_from(list(HostView)),
        ),
        max_size=30,
    ),
    st.booleans(),
)
def test_plan_resume_partitions_jobs(
    rows: list[tuple[S, int, bool, HostView]], retry: bool
) -> None:
    snaps = [JobSnapshot(f"j{i}", *row) for i, row in enumerate(rows)]
    plan = plan_resume(snaps, retry_aborted=retry)
    buckets = [
        plan.finished,
        plan.to_fetch,
        set(plan.to_submit),
        plan.watch,
        plan.wait,
        plan.failed,
    ]
    assert sum(len(b) for b in buckets) == len(snaps)
    assert set().union(*buckets) == {s.job_id for s in snaps}
    for s in snaps:
        if s.job_id in plan.to_submit:
            assert plan.to_submit[s.job_id] == s.attempt + 1
        if s.state == S.DONE and s.fetched:
            assert s.job_id in plan.finished  # a fetched DONE job is never re-run
        if s.host == HostView.UNREACHABLE and not is_final(s.state):
            assert s.job_id in plan.wait  # never run twice while its host is silent


def test_host_casualties_are_told_from_job_failures() -> None:
    from cloudsend.scheduling.transitions import killed_with_host

    vanished = "process vanished (host restarted?)"
    for gone in (False, True):
        assert killed_with_host(vanished, host_gone=gone)
        assert not killed_with_host("cancelled", host_gone=gone)
        assert not killed_with_host("exit code 1: Traceback", host_gone=gone)
        assert not killed_with_host(None, host_gone=gone)
    # a signal is the machine's shutdown only when the machine is known to be gone
    assert killed_with_host("killed by signal 15", host_gone=True)
    assert not killed_with_host("killed by signal 9: oom", host_gone=False)
    # likewise stop --kill-jobs: on a live host it is `down` or `run --reset` stopping all
    assert killed_with_host("killed by stop --kill-jobs", host_gone=True)
    assert not killed_with_host("killed by stop --kill-jobs", host_gone=False)
