"""training.engine: the replica step machine against hand-computed cases."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from training.engine import EngineConfig, RealtimeEngine, ReplicaEngine, SimulatedReplicaSpec

BASE, TOK, SEQ, CTX = 0.01, 1e-4, 1e-3, 1e-6


def cfg(**kw: float) -> EngineConfig:
    params = {"max_batch_tokens": 2048, "max_num_seqs": 8, "kv_capacity_tokens": 100_000, "block_tokens": 512,
              "prefix_cache_blocks": 64, "step_base_s": BASE, "decode_s_per_seq": SEQ,
              "decode_s_per_ctx_token": CTX, "prefill_s_per_token": TOK}
    return EngineConfig(**{**params, **kw})  # type: ignore[arg-type]


def run(engine: ReplicaEngine, arrivals: list[tuple[float, int, int, tuple[int, ...]]]) -> None:
    """Submit (time, input, output, hashes) in order, running events in between, then drain."""
    for rid, (t, n_in, n_out, hashes) in enumerate(arrivals):
        engine.run_until(t)
        engine.submit(t, rid, n_in, n_out, hashes)
    engine.run_until(1e9)


def test_one_short_prompt_one_token() -> None:
    e = ReplicaEngine(cfg())
    run(e, [(0.0, 1000, 1, ())])
    assert e.first[0] == pytest.approx(BASE + 1000 * TOK)  # one step: prefill 1000 tokens
    assert e.done[0] == e.first[0]
    assert e.kv_used == 0 and e.n_admitted == 0 and not e.busy


def test_long_prompt_is_chunked_by_the_token_budget() -> None:
    e = ReplicaEngine(cfg())
    run(e, [(0.0, 5000, 1, ())])
    # chunks of 2048, 2048, 904 tokens: three steps
    assert e.first[0] == pytest.approx(3 * BASE + 5000 * TOK)


def test_decode_steps_grow_with_batch_and_context() -> None:
    e = ReplicaEngine(cfg())
    run(e, [(0.0, 100, 5, ())])
    t1 = BASE + 100 * TOK
    assert e.first[0] == pytest.approx(t1)
    # 4 more tokens, each a step with one decoding sequence of context 100
    assert e.done[0] == pytest.approx(t1 + 4 * (BASE + SEQ + 100 * CTX))


def test_two_simultaneous_prompts_share_one_prefill_step() -> None:
    e = ReplicaEngine(cfg())
    run(e, [(0.0, 300, 1, ()), (0.0, 500, 1, ())])
    assert e.first[0] == e.first[1] == pytest.approx(BASE + 800 * TOK)


def test_fcfs_prefill_and_decode_piggyback() -> None:
    e = ReplicaEngine(cfg())
    run(e, [(0.0, 3000, 3, ()), (0.0, 1000, 1, ())])
    # step 1: 2048 of A's tokens; step 2: A's last 952 + all 1000 of B's (1952 <= 2048)
    t2 = 2 * BASE + 4000 * TOK
    assert e.first[0] == pytest.approx(t2) and e.first[1] == pytest.approx(t2)
    # A then decodes 2 more tokens alone
    assert e.done[0] == pytest.approx(t2 + 2 * (BASE + SEQ + 3000 * CTX))


def test_arrival_joins_at_the_next_step_boundary() -> None:
    e = ReplicaEngine(cfg(decode_s_per_ctx_token=0.0))
    # A: 100-token prompt (step 0.02), then decode steps of BASE + SEQ = 0.011 s
    run(e, [(0.0, 100, 10, ()), (0.025, 200, 1, ())])
    t_a1 = BASE + 100 * TOK  # 0.02
    step = BASE + SEQ  # 0.011
    boundary = t_a1 + step  # the step in progress at 0.025 ends at 0.031
    # B's prefill runs in the next step, next to A's decode
    assert e.first[1] == pytest.approx(boundary + BASE + SEQ + 200 * TOK)
    # A: 9 decode steps, one of which carried B's prefill
    assert e.done[0] == pytest.approx(t_a1 + 8 * step + (BASE + SEQ + 200 * TOK))


def test_kv_capacity_forces_queueing() -> None:
    e = ReplicaEngine(cfg(kv_capacity_tokens=1000, decode_s_per_ctx_token=0.0))
    run(e, [(0.0, 500, 100, ()), (0.0, 500, 100, ())])  # each reserves 600 of 1000 KV tokens
    t_a1 = BASE + 500 * TOK
    done_a = t_a1 + 99 * (BASE + SEQ)
    assert e.done[0] == pytest.approx(done_a)
    assert e.first[1] == pytest.approx(done_a + BASE + 500 * TOK)  # B admitted only when A released its KV


def test_batch_size_limit_forces_queueing() -> None:
    e = ReplicaEngine(cfg(max_num_seqs=1, max_batch_tokens=2048, decode_s_per_ctx_token=0.0))
    run(e, [(0.0, 100, 3, ()), (0.0, 100, 1, ())])
    done_a = BASE + 100 * TOK + 2 * (BASE + SEQ)
    assert e.first[1] == pytest.approx(done_a + BASE + 100 * TOK)


def test_a_request_larger_than_the_kv_cache_still_runs_alone() -> None:
    e = ReplicaEngine(cfg(kv_capacity_tokens=500))
    run(e, [(0.0, 800, 1, ())])
    assert e.first[0] == pytest.approx(BASE + 800 * TOK)


def test_prefix_cache_hits_skip_cached_blocks() -> None:
    e = ReplicaEngine(cfg())
    run(e, [(0.0, 1536, 1, (1, 2, 3)), (10.0, 1536, 1, (1, 2, 9)), (20.0, 1536, 1, (1, 2, 3))])
    assert e.first[0] == pytest.approx(BASE + 1536 * TOK)
    assert e.first[1] - 10.0 == pytest.approx(BASE + 512 * TOK)  # blocks 1, 2 cached: 1024 tokens hit
    assert e.first[2] - 20.0 == pytest.approx(BASE + 1 * TOK)  # all cached; the last token is recomputed
    assert e.n_hit_tokens == 1024 + 1535


def test_prefix_hits_need_a_chained_prefix() -> None:
    e = ReplicaEngine(cfg())
    run(e, [(0.0, 1536, 1, (1, 2, 3)), (10.0, 1536, 1, (7, 2, 3))])
    assert e.first[1] - 10.0 == pytest.approx(BASE + 1536 * TOK)  # first block differs: no hit


def test_lru_evicts_a_prompts_tail_before_its_head() -> None:
    e = ReplicaEngine(cfg(prefix_cache_blocks=2))
    run(e, [(0.0, 1536, 1, (1, 2, 3))])
    assert list(e.cache) == [2, 1]  # block 3 (the tail) went first; 1 is the most recent
    run(e, [(10.0, 1024, 1, (4, 5))])
    assert set(e.cache) == {4, 5}


def test_hit_blocks_evicted_during_the_prefill_are_cached_again() -> None:
    e = ReplicaEngine(cfg(prefix_cache_blocks=2))
    # A caches (1, 2). At t=10, C (new blocks 7, 8) and B (hits 1, 2) prefill in the same step; C finishes
    # first (FCFS) and evicts 1 and 2 before B's blocks are refreshed: B puts them back as most recent.
    run(e, [(0.0, 1024, 1, (1, 2)), (10.0, 1024, 1, (7, 8)), (10.0, 1536, 1, (1, 2, 3))])
    assert e.first[2] - 10.0 == pytest.approx(BASE + (1024 + 512) * TOK)  # B hit 1,024 tokens; one shared step
    assert list(e.cache) == [2, 1]


def test_a_dead_run_takes_its_blocks_lru_capacity_anonymously() -> None:
    e = ReplicaEngine(cfg(prefix_cache_blocks=3))
    run_dead = [(0.0, 2048, 1, (1, 2, 3, 4))]
    e.submit(0.0, 0, 2048, 1, (1, 2, 3, 4), None, 2)  # blocks 3, 4: no later request holds them
    e.run_until(1e9)
    # as without the hint ([3, 2, 1] after evicting 4), but 3 and 4 are one run, of which 1 block is left
    assert e.cache_blocks == 3 and [h for h in e.cache if isinstance(h, int)] == [2, 1]
    assert e.summary_list() == [1, 2]
    plain = ReplicaEngine(cfg(prefix_cache_blocks=3))
    run(plain, run_dead)
    assert list(plain.cache) == [3, 2, 1] and plain.first[0] == e.first[0]
    e.submit(5.0, 1, 1536, 1, (1, 2, 9))
    e.run_until(1e9)
    assert e.first[1] - 5.0 == pytest.approx(BASE + 512 * TOK)  # 2 blocks hit
    assert list(e.cache) == [9, 2, 1] and e.cache_blocks == 3  # the rest of the run went first


def test_hits_are_marked_at_admission_when_a_prefill_ahead_can_evict() -> None:
    e = ReplicaEngine(cfg(prefix_cache_blocks=4))
    # cache (7, 8) then (5,): LRU order 8 7 5. B hits 7, 8 while A prefills ahead of it; A's blocks then
    # evict the least recently used block: 5 (7, 8 were marked at B's admission), so E finds no 5.
    run(e, [(0.0, 1024, 1, (7, 8)), (0.5, 512, 1, (5,))])
    step = BASE + 2048 * TOK
    for rid, (t, n_in, hashes) in enumerate([(1.0, 3000, (1, 2)), (1.0, 3000, (7, 8, 9)), (1.0 + 1.5 * step, 1024,
                                                                                            (5, 6))], start=2):
        e.run_until(t)
        e.submit(t, rid, n_in, 1, hashes)
    e.run_until(1e9)
    assert e.n_hit_tokens == 1024  # B's two blocks; none for E


def test_prefix_cache_off() -> None:
    e = ReplicaEngine(cfg(prefix_cache_blocks=0))
    run(e, [(0.0, 1536, 1, (1, 2, 3)), (10.0, 1536, 1, (1, 2, 3))])
    assert e.first[1] - 10.0 == pytest.approx(BASE + 1536 * TOK)
    assert not e.cache


def test_slowdown_multiplies_every_step() -> None:
    e = ReplicaEngine(cfg(slowdown=3.0))
    run(e, [(0.0, 100, 2, ())])
    assert e.first[0] == pytest.approx(3 * (BASE + 100 * TOK))
    assert e.done[0] == pytest.approx(3 * (BASE + 100 * TOK) + 3 * (BASE + SEQ + 100 * CTX))


def test_stats_report_queue_tokens_and_kv() -> None:
    e = ReplicaEngine(cfg(kv_capacity_tokens=1000))
    e.submit(0.0, 0, 500, 100, ())
    e.submit(0.0, 1, 300, 200, (5, 6))
    s = e.stats(0.0)
    assert (s["num_ongoing"], s["num_waiting"]) == (1, 1)  # the second does not fit next to the first
    assert s["running_tokens"] == 600 and s["kv_used_frac"] == pytest.approx(0.6)
    assert s["waiting_tokens"] == 500 + 300  # A's prefill + B's (nothing cached)
    assert s["step_ms"] == pytest.approx(1000 * (BASE + 500 * TOK))
    assert s["kv_capacity_tokens"] == 1000
    idle = ReplicaEngine(cfg()).stats(0.0)
    assert idle["step_ms"] == pytest.approx(1000 * (BASE + TOK)) and idle["num_ongoing"] == 0


def test_stats_sync_to_the_last_whole_step() -> None:
    e = ReplicaEngine(cfg())
    e.submit(0.0, 0, 10_000, 1, ())  # 5 chunks of ~2048 tokens
    step = BASE + 2048 * TOK
    assert e.stats(2.5 * step)["waiting_tokens"] == 10_000 - 2 * 2048


def test_summary_list_holds_checkpoint_blocks_most_recent_first() -> None:
    e = ReplicaEngine(cfg())
    run(e, [(0.0, 5 * 512, 1, (10, 11, 12, 13, 14))])
    # checkpoint positions 0, 1, 2, 3 (prefix lengths 1-4) are kept; position 4 (length 5) is not
    assert e.summary_list() == [10, 11, 12, 13]


def test_config_is_validated() -> None:
    with pytest.raises(ValidationError, match=r"max_batch_tokens \(64\) must exceed max_num_seqs \(64\)"):
        EngineConfig(max_batch_tokens=64, max_num_seqs=64)
    with pytest.raises(ValidationError, match="greater than 0"):
        EngineConfig(prefill_s_per_token=0)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        EngineConfig(speed=2)  # type: ignore[call-arg]


def test_realtime_engine_reports_engine_time() -> None:
    async def main() -> tuple[float, float]:
        rt = RealtimeEngine(cfg(), time_scale=0.001)  # 1 engine second = 1 ms of wall time
        return await rt.generate(1000, 3)

    ttft, e2e = asyncio.run(main())
    # times are the engine's own arithmetic, however late the driver wakes
    assert ttft == pytest.approx(BASE + 1000 * TOK)
    assert e2e == pytest.approx(ttft + 2 * (BASE + SEQ + 1000 * CTX))


def test_realtime_engine_queues_concurrent_requests() -> None:
    async def main() -> list[tuple[float, float]]:
        # 20 ms of wall time per engine second: a loaded box's scheduling jitter (~1 ms) cannot spread
        # the three submissions far enough apart (in engine time) to stop them from queueing
        rt = RealtimeEngine(cfg(max_num_seqs=1), time_scale=0.02)
        return list(await asyncio.gather(*(rt.generate(1000, 2) for _ in range(3))))

    results = asyncio.run(main())
    alone = BASE + 1000 * TOK
    assert min(t for t, _ in results) == pytest.approx(alone, rel=0.05)
    assert max(t for t, _ in results) > 2 * alone  # one at a time: the last waited for two others
    assert all(e2e > ttft for ttft, e2e in results)


def test_simulated_replica_spec_slows_the_ranks_it_names() -> None:
    spec = SimulatedReplicaSpec.model_validate({"config": {"step_base_s": 0.02}, "time_scale": 0.1,
                                                "slowdown_by_rank": [4.0, 1.0]})
    assert spec.realtime_engine(0).engine.cfg.slowdown == 4.0
    assert spec.realtime_engine(3).engine.cfg.slowdown == 1.0
    assert spec.realtime_engine(3).time_scale == 0.1
