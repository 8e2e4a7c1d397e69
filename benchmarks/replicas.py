"""Replica policies on real and synthetic traces (issue 6): TTFT / e2e percentiles, SLO attainment and
load balance by simulation, the learned scorer's decision cost in the Serve ``RequestRouter``, and the
simulator's speed.

1. Traces (DESIGN.md trace format, via ``training.adapters``):

   * ``mooncake_conversation`` -- ../shared/data/mooncake_traces/conversation_trace.jsonl
     (``convert_mooncake``; 12,031 requests, 512-token prefix block hashes);
   * ``poisson`` -- the built-in synthetic Poisson trace without prefixes (seed 0, 12,000 requests);
   * ``servegen_m_large`` -- ServeGen-shaped bursts: ``convert_servegen`` of language_m-large, 20 min
     from 12:00 of day 1, first 12,000 arrivals (lengths sampled: the dataset has none), no prefixes.

2. One scorer (``training.replica_eval.train_scorer_excluding``) trained on telemetry from every
   other trace -- built-in synthetic bursty / conversation / rag and public mooncake_synthetic and
   ragpulse -- and never on the three evaluated traces (the excluded list is in the JSON).
3. For each trace, load in (0.5, 0.8, 0.95) (``load = offered rate / (replicas x one replica's
   saturated capacity on that trace, prefix cache off)``, see ``training.replica_sim``) and policy
   (round_robin, pow2, least_loaded, prefix_affinity, learned): a simulation on 4 replicas of the
   default ``training.engine.EngineConfig``.
4. Targets (issue 6) checked and reported, met or not: Mooncake at load 0.8, learned TTFT p99 <= 0.5x
   pow2 and <= 0.8x prefix_affinity (with the floor: each request's TTFT alone on an idle replica with
   an unbounded prefix cache -- no policy's p99 can go much below its p99); on traces without prefixes learned is never worse than pow2 by
   more than 5% on any reported percentile (TTFT and e2e p50/p90/p99) at any load; scorer decision
   p99 <= 0.1 ms for 16 replicas; simulator >= 50,000 requests per wall second.
5. Decision cost: ``serving.replica_router.LearnedReplicaRouter`` driven without a cluster (16 fake
   replicas with engine stats and 300-hash prefix summaries, an 8,400-character prompt). ``rank`` (the
   decision: cached stats -> features -> ONNX -> ranking) and ``choose_replicas`` (+ Ray's
   availability filter and prompt hashing, a new request every call) are timed separately; best of 3
   repeats (the repeat with the lowest ``rank`` p99; every repeat's p99 is in the JSON), with the
   garbage collector off while timing (a collection is set off by the whole process's allocations,
   here mostly the interleaved ``choose_replicas``); one more repeat with it on is reported as
   ``rank_us_gc_enabled``. Simulator speed: best, median and worst of 7 runs after a warm-up, also per
   CPU second of this thread (robust to other processes on a shared box), and the best run charged with
   the once-per-trace ``block_reuse`` pass over the prefix blocks (timed apart; later runs reuse it).

    python benchmarks/replicas.py [--quick]
    ->  benchmarks/results/replicas.json, benchmarks/results/replicas.png
        (--quick: replicas_quick.json / .png, git-ignored)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, console, environment, result_path, table, write_json  # noqa: E402

from router.replica import POLICIES, ReplicaScorer, make_policy, request_from_body  # noqa: E402
from training.adapters import convert_mooncake, convert_servegen  # noqa: E402
from training.engine import EngineConfig  # noqa: E402
from training.replica_eval import eval_replicas, synthetic_trace, train_scorer_excluding  # noqa: E402
from training.replica_sim import Trace, block_reuse, scale_to_load, simulate  # noqa: E402

SHARED = Path(os.environ.get("TURNOUT_SHARED_DATA", REPO.parent / "shared" / "data"))
LOADS = (0.5, 0.8, 0.95)
N_REPLICAS = 4
PERCENTILES = ("ttft_p50", "ttft_p90", "ttft_p99", "e2e_p50", "e2e_p90", "e2e_p99")


def load_traces(tmp: Path, n: int) -> dict[str, Trace]:
    convert_mooncake(SHARED / "mooncake_traces" / "conversation_trace.jsonl", tmp / "mooncake.jsonl")
    convert_servegen(SHARED / "servegen", tmp / "servegen.jsonl", model="language_m-large", start_s=43_200.0,
                     duration_s=1200.0, max_requests=12_000)
    traces = {"mooncake_conversation": Trace.read(tmp / "mooncake.jsonl", "mooncake_conversation"),
              "poisson": synthetic_trace("poisson", 12_000, seed=0),
              "servegen_m_large": Trace.read(tmp / "servegen.jsonl", "servegen_m_large")}
    return {k: t.head(n) if t.n > n else t for k, t in traces.items()}


def policy_tables(traces: dict[str, Trace], scorer: ReplicaScorer, loads: Sequence[float]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, trace in traces.items():
        out[name] = {}
        rows = []
        for load in loads:
            with console.status(f"{name}: load {load}"):
                rep = eval_replicas(trace, N_REPLICAS, load, POLICIES, scorer=scorer)
            out[name][str(load)] = rep
            for p, m in rep["policies"].items():
                rows.append([f"{load} {p}", *(m[k] for k in PERCENTILES), m["slo_attainment"], m["prefix_hit_frac"],
                             m["throughput"], m["max_over_mean_utilization"]])
        table(f"{name}: {N_REPLICAS} replicas ({trace.n} requests{', prefix hashes' if trace.has_prefixes else ''})",
              ["load policy", *PERCENTILES, "SLO", "hit", "req/s", "util max/mean"], rows,
              caption="seconds of engine time; SLO = TTFT <= 1 s + 0.1 ms/prompt token and TPOT <= 0.1 s")
    return out


def ttft_floor(trace: Trace, engine: EngineConfig | None = None) -> dict[str, Any]:
    """TTFT percentiles if every request ran alone on an idle replica: no queueing, no batching.

    ``cold``: no prefix cache. ``unbounded_cache``: one infinite prefix cache that has seen every earlier
    request (no routing policy can hit more). A policy's p99 cannot go below the second by much.
    """
    cfg = engine or EngineConfig()

    def alone(tokens: np.ndarray) -> np.ndarray:
        return np.ceil(tokens / cfg.max_batch_tokens) * cfg.step_base_s + tokens * cfg.prefill_s_per_token

    seen: set[int] = set()
    uncached = np.empty(trace.n)
    for i, (n_in, hashes) in enumerate(zip(trace.input_tokens.tolist(), trace.prefix_hashes)):
        k = 0
        for h in hashes:
            if h not in seen:
                break
            k += 1
        uncached[i] = n_in - min(k * cfg.block_tokens, n_in - 1) if k else n_in
        seen.update(hashes)
    out = {}
    for name, tokens in (("cold", trace.input_tokens.astype(float)), ("unbounded_cache", uncached)):
        p50, p90, p99 = np.percentile(alone(tokens), [50, 90, 99])
        out[name] = {"ttft_p50": float(p50), "ttft_p90": float(p90), "ttft_p99": float(p99)}
    return out


def check_targets(results: dict[str, Any], decision: dict[str, Any], speed: dict[str, Any],
                  floors: dict[str, Any]) -> dict[str, Any]:
    targets: dict[str, Any] = {}
    mc = results.get("mooncake_conversation", {}).get("0.8")
    if mc:
        pol = mc["policies"]
        r_pow2 = pol["learned"]["ttft_p99"] / pol["pow2"]["ttft_p99"]
        r_pa = pol["learned"]["ttft_p99"] / pol["prefix_affinity"]["ttft_p99"]
        floor = floors["mooncake_conversation"]["unbounded_cache"]["ttft_p99"]
        targets["mooncake_load0.8_p99_learned_over_pow2"] = {
            "value": r_pow2, "target": "<= 0.5", "met": r_pow2 <= 0.5,
            "learned_p99_s": pol["learned"]["ttft_p99"], "pow2_p99_s": pol["pow2"]["ttft_p99"],
            "isolated_p99_floor_s": floor, "best_possible_ratio": floor / pol["pow2"]["ttft_p99"],
            "note": "best_possible_ratio: every request alone on an idle replica with an unbounded prefix cache"}
        targets["mooncake_load0.8_p99_learned_over_prefix_affinity"] = {"value": r_pa, "target": "<= 0.8",
                                                                        "met": r_pa <= 0.8}
        for load, rep in results["mooncake_conversation"].items():
            pol = rep["policies"]
            targets[f"mooncake_load{load}_p99_ratios(info)"] = {
                "learned/pow2": pol["learned"]["ttft_p99"] / pol["pow2"]["ttft_p99"],
                "learned/prefix_affinity": pol["learned"]["ttft_p99"] / pol["prefix_affinity"]["ttft_p99"]}
    for name in ("poisson", "servegen_m_large"):
        worst = {}
        for load, rep in results.get(name, {}).items():
            pol = rep["policies"]
            worst[load] = max((pol["learned"][k] / pol["pow2"][k], k) for k in PERCENTILES)
        if worst:
            value = max(v for v, _ in worst.values())
            targets[f"{name}_worst_learned_over_pow2"] = {
                "value": value, "target": "<= 1.05", "met": value <= 1.05,
                "per_load": {load: {"ratio": v, "percentile": k} for load, (v, k) in worst.items()}}
    p99 = decision["rank_us"]["p99"]
    targets["decision_p99_us_16_replicas"] = {"value": p99, "target": "<= 100", "met": p99 <= 100,
                                              "thread_cpu_p99_us": decision["rank_thread_cpu_us"]["p99"],
                                              "choose_replicas_p99_us": decision["choose_replicas_us"]["p99"],
                                              "load_average_1m": decision["load_average_1m"]}
    slowest = min(v["requests_per_wall_s"] for k, v in speed.items() if not k.startswith("learned"))
    slowest_cpu = min(v["requests_per_cpu_s"] for k, v in speed.items() if not k.startswith("learned"))
    targets["simulator_requests_per_wall_s"] = {"value": slowest, "target": ">= 50000", "met": slowest >= 50_000,
                                                "requests_per_cpu_s": slowest_cpu,
                                                "note": "slowest heuristic-policy run; learned listed separately"}
    return targets


def sim_speed(traces: dict[str, Trace], scorer: ReplicaScorer, quick: bool, repeats: int = 7) -> dict[str, Any]:
    """Requests simulated per wall second: best, median and worst of ``repeats`` runs of each case.

    ``block_reuse_s``: the once-per-trace pass over its prefix blocks (``training.replica_sim.block_reuse``)
    that the first ``simulate`` of a trace pays inside its timed replay and later runs reuse; it is timed
    apart on a fresh copy of the hashes, and ``requests_per_wall_s_with_block_reuse`` charges it to the
    best run (a trace replayed once, from scratch).
    """
    runs: dict[str, Any] = {}
    big = synthetic_trace("poisson", 20_000 if quick else 100_000, seed=5)
    cases = [*((f"{n}/pow2", t, "pow2") for n, t in traces.items()),
             (f"poisson_{big.n}/pow2", big, "pow2"), (f"poisson_{big.n}/round_robin", big, "round_robin"),
             ("learned/mooncake_conversation", traces["mooncake_conversation"], "learned")]
    for name, trace, policy in cases:
        scaled = scale_to_load(trace, 0.8, N_REPLICAS).trace
        reuse_s = 0.0
        if trace.has_prefixes:
            fresh_copy = tuple(list(trace.prefix_hashes))  # another object: not the cached result
            t0 = time.perf_counter()
            block_reuse(fresh_copy)
            reuse_s = time.perf_counter() - t0
        simulate(scaled, N_REPLICAS, make_policy(policy, seed=0, scorer=scorer))  # warm-up (caches block_reuse)
        walls, cpus = [], []
        for _ in range(repeats if policy != "learned" else 3):
            c0 = time.thread_time()
            res = simulate(scaled, N_REPLICAS, make_policy(policy, seed=0, scorer=scorer))
            cpus.append(time.thread_time() - c0)
            walls.append(res.wall_s)
        best_wall = min(walls)
        runs[name] = {"requests": trace.n, "requests_per_wall_s": trace.n / best_wall,
                      "requests_per_cpu_s": trace.n / max(min(cpus), 1e-9), "prefix_hashes": trace.has_prefixes,
                      "repeats": len(walls), "requests_per_wall_s_median": trace.n / float(np.median(walls)),
                      "requests_per_wall_s_worst": trace.n / max(walls), "wall_s_by_repeat": walls,
                      "block_reuse_s": reuse_s, "requests_per_wall_s_with_block_reuse": trace.n / (best_wall + reuse_s)}
    table(f"simulator speed (load 0.8, 4 replicas; 1m load average {os.getloadavg()[0]:.2f})",
          ["run", "requests", "req / wall s best", "median", "worst", "req / CPU s best", "block_reuse ms",
           "best incl. block_reuse"],
          [[k, v["requests"], v["requests_per_wall_s"], v["requests_per_wall_s_median"], v["requests_per_wall_s_worst"],
            v["requests_per_cpu_s"], 1000 * v["block_reuse_s"], v["requests_per_wall_s_with_block_reuse"]]
           for k, v in runs.items()],
          caption=f"best / median / worst of {repeats} runs (learned: 3) after a warm-up run; CPU s: this thread's CPU "
                  "time (excludes time other processes held the core); block_reuse: the once-per-trace pass over "
                  "its prefix blocks, timed apart")
    return runs


# ---------------------------------------------------------------------------------------------- decision cost


def decision_cost(model_dir: Path, n_calls: int, n_replicas: int = 16, repeats: int = 3) -> dict[str, Any]:
    from ray.serve._private.common import DeploymentHandleSource, DeploymentID, ReplicaID, RequestMetadata
    from ray.serve.request_router import PendingRequest, RunningReplica

    from serving.replica_router import LearnedReplicaRouter

    class Replica(RunningReplica):
        def __init__(self, name: str, stats: dict[str, Any]) -> None:  # no actor
            self._rid = ReplicaID(unique_id=name, deployment_id=DeploymentID(name="LLM", app_name="bench"))
            self._stats = stats

        replica_id = property(lambda self: self._rid)
        routing_stats = property(lambda self: self._stats)
        max_ongoing_requests = property(lambda self: 256)
        node_id = property(lambda self: "node")
        availability_zone = property(lambda self: None)
        multiplexed_model_ids = property(lambda self: set())

        async def get_queue_len(self, *, deadline_s: float) -> int:
            return 0

    rng = np.random.default_rng(0)

    def stats() -> dict[str, Any]:
        ongoing = int(rng.integers(0, 40))
        return {"num_ongoing": ongoing, "num_waiting": int(rng.integers(0, 6)), "running_tokens": ongoing * 9000,
                "waiting_tokens": int(rng.integers(0, 60_000)), "kv_used_frac": min(ongoing * 9000 / 400_000, 1.0),
                "kv_capacity_tokens": 400_000, "step_ms": float(rng.uniform(10, 150)), "ts": time.time() + 3600,
                "queued_kv_tokens": int(rng.integers(0, 80_000)),
                "prefix_summary": [int(h) for h in rng.integers(0, 2**62, 300)]}

    text = "hello world, " * 646  # 8,398 characters: 4 full blocks to hash
    body = {"messages": [{"role": "user", "content": text}]}

    async def run() -> tuple[list[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        router = LearnedReplicaRouter(deployment_id=DeploymentID(name="LLM", app_name="bench"),
                                      handle_source=DeploymentHandleSource.REPLICA, use_replica_queue_len_cache=True)
        router.initialize_state(scorer_path=str(model_dir), seed=0)
        router.update_replicas([Replica(f"r{i}", stats()) for i in range(n_replicas)])
        cands = list(router.curr_replicas.values())
        req = request_from_body(body)
        rounds = []
        for rep in range(repeats + 1):  # the last repeat runs with the garbage collector on (info)
            rank_ns, choose_ns, rank_cpu_ns = [], [], []
            gc.collect()
            if rep < repeats:
                gc.disable()
            for i in range(n_calls):
                pr = PendingRequest(args=[body, "chat"], kwargs={},
                                    metadata=RequestMetadata(request_id=str(i), internal_request_id=str(i)))
                c0 = time.thread_time_ns()
                t0 = time.perf_counter_ns()
                router.rank(cands, req)
                t1 = time.perf_counter_ns()
                c1 = time.thread_time_ns()
                await router.choose_replicas(cands, pr)
                t2 = time.perf_counter_ns()
                rank_ns.append(t1 - t0)
                choose_ns.append(t2 - t1)
                rank_cpu_ns.append(c1 - c0)
            gc.enable()
            skip = n_calls // 10  # warm-up
            rounds.append({"rank": np.array(rank_ns[skip:]), "choose": np.array(choose_ns[skip:]),
                           "rank_cpu": np.array(rank_cpu_ns[skip:])})
        gc_on = rounds.pop()
        # the serving steady state: stats snapshots 0.5 s old and 8 requests per replica sent since then,
        # so every decision also adds the router's own recent sends to each replica's state
        for replica in cands:
            replica._stats = {**replica._stats, "ts": time.time() - 0.5}
        for i, replica in enumerate(cands * 8):
            pr = PendingRequest(args=[body, "chat"], kwargs={},
                                metadata=RequestMetadata(request_id=f"s{i}", internal_request_id=f"s{i}"))
            router.on_request_routed(pr, replica.replica_id, None)
        inflight_ns = []
        for i in range(n_calls):
            t0 = time.perf_counter_ns()
            router.rank(cands, req)
            inflight_ns.append(time.perf_counter_ns() - t0)
        rounds[0]["inflight"] = np.array(inflight_ns[n_calls // 10:])
        if router.n_fallbacks or router.scorer_error is not None:
            raise RuntimeError(f"the router fell back to pow-2 ({router.n_fallbacks}, {router.scorer_error})")
        return rounds, gc_on

    def summary(ns: np.ndarray) -> dict[str, float]:
        us = ns / 1e3
        return {"p50": float(np.percentile(us, 50)), "p90": float(np.percentile(us, 90)),
                "p99": float(np.percentile(us, 99)), "mean": float(us.mean())}

    rounds, gc_on = asyncio.run(run())
    # best of `repeats` (as timeit does): on a shared box another process's burst inflates one round's tail
    best = min(rounds, key=lambda r: float(np.percentile(r["rank"], 99)))
    out: dict[str, Any] = {"replicas": n_replicas, "calls": n_calls, "repeats": repeats, "prompt_chars": len(text),
                           "load_average_1m": os.getloadavg()[0],
                           "reported": "the repeat with the lowest rank_us p99; every repeat's p99 in rank_us_p99_by_repeat",
                           "rank_us_p99_by_repeat": [summary(r["rank"])["p99"] for r in rounds],
                           "gc": "disabled during the timed repeats (a collection is triggered by the whole process's "
                                 "allocations, here mostly the interleaved choose_replicas calls, not by the "
                                 "decision); "
                                 "one more repeat with it enabled: rank_us_gc_enabled / choose_replicas_us_gc_enabled",
                           "rank_us_gc_enabled": summary(gc_on["rank"]),
                           "choose_replicas_us_gc_enabled": summary(gc_on["choose"])}
    for key, label in (("rank", "rank_us"), ("rank_cpu", "rank_thread_cpu_us"), ("choose", "choose_replicas_us")):
        out[label] = summary(best[key])
    out["rank_with_inflight_sends_us"] = summary(rounds[0]["inflight"])  # one repeat (info)
    table(f"LearnedReplicaRouter decision cost, {n_replicas} replicas, best of {repeats} (us; 1m load average "
          f"{out['load_average_1m']:.2f} on {os.cpu_count()} cores)", ["part", "p50", "p90", "p99", "mean"],
          [[label, *(out[label][k] for k in ("p50", "p90", "p99", "mean"))]
           for label in ("rank_us", "rank_thread_cpu_us", "choose_replicas_us", "rank_with_inflight_sends_us",
                         "rank_us_gc_enabled", "choose_replicas_us_gc_enabled")],
          caption="rank = the decision (features + ONNX + ranking) on cached stats, wall clock; thread_cpu = the "
                  "same calls in CPU time of this thread (excludes time other processes held the core); "
                  "choose_replicas adds Ray's availability filter and hashing a new 8.4k-char prompt; "
                  "with_inflight_sends: stats 0.5 s old and 8 sends per replica since (one repeat); gc off while "
                  "timing except the *_gc_enabled repeat")
    return out


# ---------------------------------------------------------------------------------------------- plot


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.2), squeeze=False)
    colors = dict(zip(POLICIES, ("#999999", "#1f77b4", "#2ca02c", "#ff7f0e", "#d62728")))
    for ax, name in zip(axes[0], names):
        loads = sorted(results[name], key=float)
        for p in POLICIES:
            for key, style in (("ttft_p99", "-"), ("ttft_p50", ":")):
                ys = [results[name][ld]["policies"][p][key] for ld in loads]
                ax.plot([float(x) for x in loads], ys, style, marker="o", color=colors[p],
                        label=p if key == "ttft_p99" else None)
        ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("load (offered / capacity)")
        ax.set_ylabel("TTFT s (solid p99, dotted p50)")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"TTFT percentiles vs load, {N_REPLICAS} replicas (simulated engine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3,000 requests per trace, lighter training (< 1 min)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    n = 3000 if args.quick else 12_000
    with tempfile.TemporaryDirectory(prefix="turnout-bench-replicas-") as tmp:
        tmp_path = Path(tmp)
        with console.status("converting traces"):
            traces = load_traces(tmp_path, n)
        with console.status("training the scorer on telemetry from the other traces"):
            t0 = time.perf_counter()
            info = train_scorer_excluding(list(traces.values()), tmp_path / "model", shared_data=SHARED,
                                          seed=args.seed, max_requests=2000 if args.quick else 6000)
            train_s = time.perf_counter() - t0
        console.print(f"scorer trained in {train_s:.0f} s on {info['trained_on']}; excluded {list(info['excluded'])}")
        scorer = ReplicaScorer(tmp_path / "model")
        results = policy_tables(traces, scorer, LOADS)
        decision = decision_cost(tmp_path / "model", 2000 if args.quick else 20_000)
        speed = sim_speed(traces, scorer, args.quick)
    floors = {k: ttft_floor(t) for k, t in traces.items()}
    targets = check_targets(results, decision, speed, floors)
    table("TTFT if every request ran alone on an idle replica (s)", ["trace", "floor", "p50", "p90", "p99"],
          [[k, f, *(v[f][p] for p in ("ttft_p50", "ttft_p90", "ttft_p99"))] for k, v in floors.items() for f in v])
    table("targets (issue 6)", ["target", "value", "wanted", "met"],
          [[k, v["value"], v["target"], "yes" if v["met"] else "NO"] for k, v in targets.items() if "met" in v])
    png = result_path("replicas", "png", args.quick)
    plot(results, png)
    payload = {"benchmark": "replicas", "quick": args.quick, "seed": args.seed, "replicas": N_REPLICAS,
               "loads": list(LOADS), "policies": list(POLICIES), "targets": targets, "results": results,
               "ttft_floor": floors,
               "scorer": {**info, "train_wall_s": round(train_s, 1)}, "decision_cost": decision, "simulator_speed": speed,
               "traces": {k: {"requests": t.n, "duration_s": t.duration_s, "prefix_hashes": t.has_prefixes}
                          for k, t in traces.items()},
               "environment": environment(), "wall_s": round(time.perf_counter() - t_start, 1)}
    path = write_json("replicas", payload, quick=args.quick)
    console.print(f"wrote {path} and {png} in {payload['wall_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
