"""training.replica_sim: the discrete-event simulator, load scaling, metrics and telemetry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from router.replica import REPLICA_FEATURE_NAMES, PowerOfTwo, ReplicaRequest, make_policy, replica_features
from training.engine import EngineConfig, ReplicaEngine
from training.formats import TraceRow, write_jsonl
from training.replica_sim import (SLO, Telemetry, Trace, replica_capacity_rps, scale_to_load, simulate)

CFG = EngineConfig(max_batch_tokens=2048, max_num_seqs=8, kv_capacity_tokens=100_000, step_base_s=0.01,
                   decode_s_per_seq=1e-3, decode_s_per_ctx_token=0.0, prefill_s_per_token=1e-4)


def trace(rows: list[tuple[float, int, int]], hashes: list[tuple[int, ...]] | None = None) -> Trace:
    n = len(rows)
    return Trace("t", np.array([r[0] for r in rows], dtype=float), np.array([r[1] for r in rows]),
                 np.array([r[2] for r in rows]), tuple(hashes or [()] * n))


def poisson(n: int, rate: float, seed: int = 0) -> Trace:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1 / rate, n))
    return Trace("poisson", t - t[0], rng.integers(50, 3000, n), rng.integers(1, 300, n), ((),) * n)


def test_trace_from_rows_read_and_reshape(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    write_jsonl(path, [TraceRow(5.0, 100, 10, (1, 2)), TraceRow(7.0, 200, 20), TraceRow(9.0, 300, 30, (1,))])
    t = Trace.read(path)
    assert t.name == "t" and t.n == 3 and t.has_prefixes
    assert t.arrival_s.tolist() == [0.0, 2.0, 4.0]  # relative to the first request
    assert t.prefix_hashes == ((1, 2), (), (1,))
    assert t.rate_rps == pytest.approx(0.5)
    assert t.scaled(0.5).arrival_s.tolist() == [0.0, 1.0, 2.0]
    assert t.head(2).n == 2 and not t.without_prefixes().has_prefixes
    assert "n=3" in repr(t)
    with pytest.raises(ValueError, match="has no requests"):
        Trace.from_rows([], "empty")


def test_a_mooncake_file_as_published_reads_as_a_trace(tmp_path: Path) -> None:
    import json

    raw = [{"timestamp": 1500, "input_length": 1024, "output_length": 7, "hash_ids": [0, 1]},
           {"timestamp": 500, "input_length": 600, "output_length": 3, "hash_ids": [0, 2]}]
    path = tmp_path / "toolagent_trace.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in raw), encoding="utf-8")
    tr = Trace.read(path)
    assert tr.arrival_s.tolist() == [0.0, 1.0]  # ms -> s, sorted, from the first request
    assert tr.input_tokens.tolist() == [600, 1024] and tr.output_tokens.tolist() == [3, 7]
    assert [list(h) for h in tr.prefix_hashes] == [[0, 2], [0, 1]]


def test_one_replica_matches_the_engine_by_hand() -> None:
    res = simulate(trace([(0.0, 1000, 1), (5.0, 500, 3)]), 1, make_policy("round_robin", seed=0), engine=CFG)
    assert res.ttft_s[0] == pytest.approx(0.01 + 1000 * 1e-4)
    assert res.ttft_s[1] == pytest.approx(0.01 + 500 * 1e-4)
    assert res.e2e_s[1] == pytest.approx(res.ttft_s[1] + 2 * (0.01 + 1e-3))


def test_every_request_finishes_and_metrics_are_consistent() -> None:
    scaled = scale_to_load(poisson(3000, rate=1.0), 0.5, 3, CFG)
    res = simulate(scaled.trace, 3, make_policy("pow2", seed=1), engine=CFG)
    assert np.all(np.isfinite(res.ttft_s)) and np.all(res.ttft_s > 0) and np.all(res.e2e_s >= res.ttft_s)
    m = res.metrics(SLO(ttft_base_s=1.0, ttft_per_token_s=1e-3, tpot_s=1.0))
    assert m["ttft_p50"] <= m["ttft_p90"] <= m["ttft_p99"] and m["e2e_p50"] <= m["e2e_p99"]
    assert sum(m["requests_per_replica"]) == 3000 and m["max_over_mean_requests"] < 1.2
    assert m["throughput"] == pytest.approx(scaled.offered_rps, rel=0.1)
    assert 0.9 <= m["slo_attainment"] <= 1.0 and m["prefix_hit_frac"] == 0.0
    assert set(m) >= {"ttft_p50", "ttft_p99", "e2e_p50", "e2e_p99", "throughput", "slo_attainment",
                      "utilization_per_replica", "sim_requests_per_wall_s"}


def test_simulation_is_deterministic_in_the_policy_seed() -> None:
    tr = poisson(500, rate=30.0)
    a = simulate(tr, 4, make_policy("pow2", seed=3), engine=CFG)
    b = simulate(tr, 4, make_policy("pow2", seed=3), engine=CFG)
    assert np.array_equal(a.replica, b.replica) and np.array_equal(a.ttft_s, b.ttft_s)


def test_round_robin_cycles() -> None:
    res = simulate(poisson(9, rate=1.0), 3, make_policy("round_robin", seed=0), engine=CFG)
    first = int(res.replica[0])
    assert res.replica.tolist() == [(first + i) % 3 for i in range(9)]


def test_prefix_affinity_reuses_the_cache_a_spread_policy_misses() -> None:
    # nine conversations, each sent 6 times with a growing shared prefix
    rows, hashes = [], []
    for turn in range(6):
        for conv in range(9):
            rows.append((turn * 10.0 + conv * 0.5, 512 * (turn + 2), 5))
            hashes.append(tuple(conv * 1000 + b for b in range(turn + 2)))
    tr = trace(rows, hashes)
    spread = simulate(tr, 4, make_policy("round_robin", seed=0), engine=CFG).metrics()["prefix_hit_frac"]
    affine = simulate(tr, 4, make_policy("prefix_affinity", seed=0), engine=CFG).metrics()["prefix_hit_frac"]
    assert affine > 0.5 and spread < 0.3


def test_telemetry_logs_the_chosen_replicas_features_and_ttft() -> None:
    tr = trace([(0.0, 1000, 1), (0.0, 400, 1)])
    res = simulate(tr, 2, make_policy("least_loaded", seed=0), engine=CFG, telemetry=True, source="x")
    tel = res.telemetry
    assert tel is not None and tel.x.shape == (2, len(REPLICA_FEATURE_NAMES))
    idle = ReplicaEngine(CFG).stats(0.0)
    assert np.array_equal(tel.x[0], replica_features(idle, ReplicaRequest(1000)))  # both idle at first
    assert res.replica[0] != res.replica[1]  # least loaded spreads them
    assert np.array_equal(tel.ttft_s, res.ttft_s) and tel.source == ["x", "x"]


def test_telemetry_round_trips_through_parquet(tmp_path: Path) -> None:
    res = simulate(poisson(50, 5.0), 2, make_policy("pow2", seed=0), engine=CFG, telemetry=True)
    assert res.telemetry is not None
    res.telemetry.write(tmp_path / "logs" / "a.parquet")
    res.telemetry.write(tmp_path / "logs" / "b.parquet")
    back = Telemetry.read(tmp_path / "logs")
    assert back.n == 100 and np.allclose(back.x[:50], res.telemetry.x) and back.source[0] == "poisson/pow2"
    with pytest.raises(FileNotFoundError, match="no replica telemetry"):
        Telemetry.read(tmp_path / "nothing")


def test_capacity_of_a_saturated_replica() -> None:
    tr = trace([(float(i), 1000, 1) for i in range(200)])
    cap = replica_capacity_rps(tr, CFG)
    # saturated: every step is a full 2048-token prefill chunk, i.e. 2.048 requests per step
    assert cap == pytest.approx(2.048 / (0.01 + 2048 * 1e-4), rel=0.03)


def test_scale_to_load_hits_the_offered_rate() -> None:
    tr = poisson(2000, rate=1.0)
    s = scale_to_load(tr, 0.8, 4, CFG)
    assert s.offered_rps == pytest.approx(0.8 * 4 * s.capacity_rps)
    assert s.trace.rate_rps == pytest.approx(s.offered_rps)
    res = simulate(s.trace, 4, make_policy("least_loaded", seed=0), engine=CFG)
    util = res.metrics()["utilization_per_replica"]
    assert 0.6 < float(np.mean(util)) < 1.0  # busy about the offered load
    with pytest.raises(ValueError, match="load must be a finite number > 0"):
        scale_to_load(tr, 0.0, 4, CFG)


def test_idle_gaps_are_cut_before_scaling_to_a_load() -> None:
    busy = poisson(400, rate=1.0)
    gap = float(busy.arrival_s[-1]) + 86_400.0  # the same traffic again after a silent day
    both = trace([(float(t), 1000, 50) for t in busy.arrival_s] + [(gap + float(t), 1000, 50) for t in busy.arrival_s])
    cut, n_cut = both.without_gaps(60.0)
    assert n_cut == 1 and cut.duration_s == pytest.approx(2 * busy.duration_s + 60.0)
    assert np.all(np.diff(cut.arrival_s) <= 60.0 + 1e-9) and cut.n == both.n
    # scaled to 0.8 over the whole span, the busy halves are overloaded; without the gap they are not
    p99 = {name: simulate(scale_to_load(t, 0.8, 2, CFG).trace, 2, make_policy("least_loaded", seed=0),
                          engine=CFG).metrics()["ttft_p99"] for name, t in (("span", both), ("cut", cut))}
    assert p99["span"] > 10 * p99["cut"], p99  # scaled over the silent day, the busy halves are ~100x overloaded
    assert both.without_gaps(1e9) == (both, 0)
    with pytest.raises(ValueError, match="max_gap_s must be a finite number > 0"):
        both.without_gaps(0.0)


def test_bad_replica_counts() -> None:
    with pytest.raises(ValueError, match="n_replicas must be >= 1"):
        simulate(poisson(5, 1.0), 0, make_policy("pow2"))
    with pytest.raises(ValueError, match="got 2 engine configs for 3 replicas"):
        simulate(poisson(5, 1.0), 3, make_policy("pow2"), engine=[CFG, CFG])


def test_a_slow_replica_gets_less_work_from_least_loaded() -> None:
    tr = poisson(2000, rate=15.0)
    slow = CFG.model_copy(update={"slowdown": 4.0})
    res = simulate(tr, 2, make_policy("least_loaded", seed=0), engine=[slow, CFG])
    counts = res.metrics()["requests_per_replica"]
    assert counts[0] < counts[1]


def test_csv_traces_azure_style(tmp_path: Path) -> None:
    from training.formats import DataFormatError

    path = tmp_path / "azure.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                    "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.9951690,396,109\n"
                    "2023-11-16 18:15:45.6805900,100,1\n")
    t = Trace.read(path)
    assert t.n == 3 and t.input_tokens.tolist() == [100, 374, 396] and t.output_tokens.tolist() == [1, 44, 109]
    assert t.arrival_s.tolist() == pytest.approx([0.0, 1.0, 5.314579]) and not t.has_prefixes
    (tmp_path / "s.csv").write_text("time,input_tokens,output_tokens\n0.5,10,2\n1.5,20,3\n")
    assert Trace.read(tmp_path / "s.csv").arrival_s.tolist() == [0.0, 1.0]
    (tmp_path / "bad.csv").write_text("time,prompt,output_tokens\n0.5,10,2\n")
    with pytest.raises(DataFormatError, match="no input column; expected one of context_tokens"):
        Trace.read(tmp_path / "bad.csv")
    (tmp_path / "bad2.csv").write_text("time,input_tokens,output_tokens\nsoon,10,2\n")
    with pytest.raises(DataFormatError, match=r"bad2.csv:2: cannot parse"):
        Trace.read(tmp_path / "bad2.csv")


def test_pow2_inlined_in_the_simulator_draws_as_the_policy_does() -> None:
    class Pow2ViaPolicy(PowerOfTwo):  # not exactly PowerOfTwo: simulate calls choose_loads, not its inlined copy
        pass

    tr = scale_to_load(poisson(400, 5.0, seed=4), 0.9, 3, CFG).trace
    for n_replicas in (1, 2, 3):
        a = simulate(tr, n_replicas, PowerOfTwo(seed=5), engine=CFG)
        b = simulate(tr, n_replicas, Pow2ViaPolicy(seed=5), engine=CFG)
        assert a.replica.tolist() == b.replica.tolist() and a.ttft_s.tolist() == b.ttft_s.tolist()
    assert len(set(a.replica.tolist())) == 3


def test_skipping_the_waiting_estimate_changes_no_outcome() -> None:
    hashes = [tuple(range(k % 5, k % 5 + 3)) for k in range(120)]
    tr = scale_to_load(trace([(0.1 * k, 1536 + 7 * k, 1 + k % 9) for k in range(120)], hashes), 0.9, 2, CFG).trace
    quiet = simulate(tr, 2, make_policy("least_loaded", seed=2), engine=CFG)  # reads no stats: no estimate
    logged = simulate(tr, 2, make_policy("least_loaded", seed=2), engine=CFG, telemetry=True)
    assert quiet.ttft_s.tolist() == logged.ttft_s.tolist() and quiet.replica.tolist() == logged.replica.tolist()
    assert quiet.hit_tokens == logged.hit_tokens > 0
    with pytest.raises(RuntimeError, match="estimate_waiting=False"):
        ReplicaEngine(CFG, estimate_waiting=False).stats(0.0)
