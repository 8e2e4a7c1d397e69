"""Issue 8's scale target: ``turnout retrain`` on 100k, 1M and 10M logged records, local vs ``--ray``.

Records are generated with vectorised numpy (the per-request simulator would take hours for 10M) but
go through the real log schema: a pool of prompts from ``training.world.generate_requests`` (distinct
prompts, true categories and difficulties), uniform-random logging over each category's allowed
models (exact propensities 1/K), quality = ``training.world.quality_mean`` + the world's noise, output
tokens, latency and cost from the world's model table -- the same formulas as
``training.world.outcome``. Shards of 50k rows are written with ``router.log_schema.write_shard`` and
read back by the job with full ``validate_table`` checks.

Each run is a fresh subprocess (peak RSS is the process's ``ru_maxrss``; for ``--ray`` the Ray worker
processes' RSS is sampled too). The job keeps the current classifier (``refit_classifier=False``: the
classifier refit is a fixed ~30-60 s on <= 20k distinct prompts and is timed once separately) and uses
its documented scale rules: trees on <= 50k rounds (uniform sample), OPE on <= 1M newest held-out rounds.

Usage: python benchmarks/retrain.py [--sizes 100000,1000000,10000000] [--modes local,ray] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CONFIGS, console, environment, table, write_json  # noqa: E402

SHARD_ROWS = 50_000
POOL = 20_000


def generate_logs(n: int, out: Path, seed: int = 0) -> dict[str, Any]:
    """Write ``n`` logged records under ``out`` (vectorised; see the module docstring)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from router.features import FEATURE_VERSION
    from router.log_schema import SCHEMA, write_shard
    from training.world import generate_requests, load_world

    world = load_world(CONFIGS / "world.yaml")
    cfg, wc = world.router, world.config
    rng = np.random.default_rng(seed)
    reqs = generate_requests(world, POOL, seed)
    taxonomy = list(cfg.taxonomy)
    models = list(cfg.model_names)
    cats = [r.prompt.category for r in reqs]
    diff = np.array([r.prompt.difficulty for r in reqs])
    texts = [r.prompt.text for r in reqs]
    cands = [list(cfg.allowed_models(c)) for c in cats]
    onehot = [np.eye(len(taxonomy), dtype=np.float32)[taxonomy.index(c)].tolist() for c in cats]
    pool = pa.table({"prompt": texts, "category": cats, "candidates": cands, "features": onehot,
                     "category_probs": onehot, "action_probs": [[1.0 / len(c)] * len(c) for c in cands]})
    in_tok = np.array([max(1, len(t) // 4) for t in texts])
    qmean = np.array([[np.clip(wc.models[m].skill[c] - wc.models[m].difficulty_slope * (d - 0.5), 0, 1)
                       for m in models] for c, d in zip(cats, diff)])
    out_med = np.array([[wc.categories[c].output_tokens_median * wc.models[m].verbosity * (0.6 + 0.8 * d)
                         for m in models] for c, d in zip(cats, diff)])
    ttft0 = np.array([wc.models[m].ttft_ms for m in models])
    tps = np.array([wc.models[m].tokens_per_s for m in models])
    p_in = np.array([cfg.model(m).price_in_per_1k for m in models])
    p_out = np.array([cfg.model(m).price_out_per_1k for m in models])
    n_cand = np.array([len(c) for c in cands])
    cand_idx = [[models.index(m) for m in c] for c in cands]
    max_k = max(n_cand)
    cand_mat = np.array([c + [c[0]] * (max_k - len(c)) for c in cand_idx])

    out.mkdir(parents=True, exist_ok=True)
    t = 0.0
    written = 0
    for start in range(0, n, SHARD_ROWS):
        m = min(SHARD_ROWS, n - start)
        u = rng.integers(0, POOL, m)
        pick = (rng.random(m) * n_cand[u]).astype(np.int64)
        a = cand_mat[u, pick]
        q = np.clip(qmean[u, a] + rng.normal(0, wc.quality_noise, m), 0, 1)
        out_tok = np.maximum(1, rng.lognormal(np.log(out_med[u, a]), 0.5).astype(np.int64))
        ttft = ttft0[a] * (1 + in_tok[u] / 4000.0)
        latency = ttft + 1000.0 * out_tok / tps[a]
        cost = (p_in[a] * in_tok[u] + p_out[a] * out_tok) / 1000.0
        ts = t + np.cumsum(rng.exponential(1.0 / wc.arrival_rate_per_s, m))
        t = float(ts[-1])
        base = pool.take(pa.array(u))
        ids = pc.binary_join_element_wise("bench-", pc.cast(pa.array(np.arange(start, start + m)), pa.string()), "")
        model_arr = pa.array(np.array(models, dtype=object)[a].tolist(), pa.string())
        cols = {
            "request_id": ids, "timestamp_s": pa.array(ts), "tenant": pa.array(["default"] * m),
            "arm": pa.array(["logging"] * m), "bundle_version": pa.array(["uniform"] * m),
            "feature_version": pa.array([FEATURE_VERSION] * m), "prompt": base.column("prompt"),
            "n_turns": pa.array(np.ones(m, np.int32)), "input_tokens": pa.array(in_tok[u].astype(np.int32)),
            "features": base.column("features"), "category": base.column("category"),
            "category_probs": base.column("category_probs"), "confidence": pa.array(np.ones(m, np.float32)),
            "fallback": pa.array(np.zeros(m, bool)), "cache_tier": pa.array(["skip"] * m),
            "cache_hit": pa.array(np.zeros(m, bool)), "model": model_arr, "candidates": base.column("candidates"),
            "action_probs": base.column("action_probs"), "propensity": pa.array((1.0 / n_cand[u]).astype(np.float32)),
            "policy": pa.array(["uniform"] * m), "replica": pa.nulls(m, pa.string()),
            "replica_stats": pa.nulls(m, pa.string()), "ttft_ms": pa.array(ttft.astype(np.float32)),
            "latency_ms": pa.array(latency.astype(np.float32)), "output_tokens": pa.array(out_tok.astype(np.int32)),
            "cost_usd": pa.array(cost.astype(np.float32)), "error": pa.nulls(m, pa.string()),
            "quality": pa.array(q.astype(np.float32)), "label_category": base.column("category"),
        }
        for f in SCHEMA:  # fields added to the schema later (e.g. assignment_unit): null, as old shards read
            cols.setdefault(f.name, pa.nulls(m, f.type))
        write_shard(pa.table(cols).cast(SCHEMA), out)
        written += m
    return {"records": written, "shards": -(-n // SHARD_ROWS), "distinct_prompts": POOL}


def current_bundle(work: Path) -> Path:
    """v1: a bundle trained on 2,000 simulated requests (classifier + policy), built once."""
    path = work / "v1"
    if not (path / "manifest.json").exists():
        from training.bundle_builder import build_bundle
        from training.simulator import write_simulation
        from training.world import load_world

        world = load_world(CONFIGS / "world.yaml")
        write_simulation(world, 2000, work / "v1-logs", seed=3)
        build_bundle(work / "v1-logs", world.router, path, bundle_version="bench-v1")
    return path


def descendants_rss_mb(root: int) -> float:
    """Summed RSS of every descendant process of ``root`` (Ray's raylet, workers, object store), from /proc."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    kids, frontier = set(), {root}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier and p not in kids}
        kids |= frontier
    total = 0
    for p in kids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def _child(logs: str, current: str, out: str, mode: str) -> None:
    """One measured run (in its own process): prints a JSON line with time, peak RSS and outcome."""
    import resource

    from training.retrain import RetrainSettings, retrain

    backend = None
    ray_rss: list[float] = []
    stop = threading.Event()
    if mode == "ray":
        import ray

        from training.retrain_ray import RayBackend

        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=3 * 1024**3, logging_level="ERROR",
                 log_to_driver=False)
        backend = RayBackend(cpus_per_worker=1.0, cpus_per_task=0.5)

        def sample() -> None:
            while not stop.is_set():
                ray_rss.append(descendants_rss_mb(os.getpid()))
                stop.wait(0.5)

        threading.Thread(target=sample, daemon=True).start()
    t0 = time.perf_counter()
    o = retrain(logs, current, out, settings=RetrainSettings(refit_classifier=False), backend=backend)
    wall = time.perf_counter() - t0
    stop.set()
    print(json.dumps({"wall_s": wall, "loadavg_1m_end": os.getloadavg()[0], "cpu_count": os.cpu_count(), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "ray_children_peak_rss_mb": max(ray_rss) if ray_rss else None,
                      "decision": o.decision, "difference": o.difference, "timings_s": o.details["timings_s"],
                      "n": o.details.get("n")}))


def measure(logs: Path, current: Path, mode: str, work: Path) -> dict[str, Any]:
    out = work / f"out-{logs.name}-{mode}"
    proc = subprocess.run([sys.executable, __file__, "--child", str(logs), str(current), str(out), mode],
                          capture_output=True, text=True, cwd=str(Path(__file__).resolve().parents[1]))
    last = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not last:
        return {"error": (proc.stderr or proc.stdout)[-2000:], "returncode": proc.returncode}
    return json.loads(last[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,1000000,10000000")
    ap.add_argument("--modes", default="local,ray")
    ap.add_argument("--quick", action="store_true", help="100k only")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--ray-max", type=int, default=1_000_000, help="skip --ray above this many records")
    ap.add_argument("--append", action="store_true", help="merge into the existing results JSON (same sizes/modes replaced)")
    ap.add_argument("--child", nargs=4, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        _child(*a.child)
        return
    sizes = [100_000] if a.quick else [int(s) for s in a.sizes.split(",")]
    modes = a.modes.split(",")
    work = Path(a.workdir or tempfile.mkdtemp(prefix="turnout-retrain-bench-"))
    console.print(f"workdir {work}")
    current = current_bundle(work)
    rows, results = [], []
    for n in sizes:
        logs = work / f"logs-{n}"
        if not logs.exists():
            t = time.perf_counter()
            gen = generate_logs(n, logs)
            gen["generate_s"] = time.perf_counter() - t
            (work / f"gen-{n}.json").write_text(json.dumps(gen))
        gen = json.loads((work / f"gen-{n}.json").read_text())
        for mode in modes:
            if mode == "ray" and n > a.ray_max:
                continue
            console.print(f"retrain {n:,} records, {mode} ...")
            r = {"records": n, "mode": mode, "generate_s": gen["generate_s"], **measure(logs, current, mode, work)}
            results.append(r)
            console.print(r)
            rows.append([f"{n:,}", mode, r.get("wall_s"), r.get("peak_rss_mb"), r.get("ray_children_peak_rss_mb"),
                         r.get("decision", r.get("error", "")[:60]),
                         *(r.get("timings_s", {}).get(k) for k in ("read", "policy", "ope"))])
    if a.append:
        from _common import result_path

        prev = result_path("retrain", "json", a.quick)
        if prev.exists():
            done = {(r["records"], r["mode"]) for r in results}
            old = [r for r in json.loads(prev.read_text())["results"] if (r["records"], r["mode"]) not in done]
            results = sorted(old + results, key=lambda r: (r["records"], r["mode"]))
            rows = [[f"{r['records']:,}", r["mode"], r.get("wall_s"), r.get("peak_rss_mb"),
                     r.get("ray_children_peak_rss_mb"), r.get("decision", str(r.get("error", ""))[:60]),
                     *(r.get("timings_s", {}).get(k) for k in ("read", "policy", "ope"))] for r in results]
    local = {r["records"]: r.get("wall_s") for r in results if r["mode"] == "local"}
    for r in results:
        if r["mode"] == "ray" and local.get(r["records"]) and r.get("wall_s"):
            r["ray_over_local"] = r["wall_s"] / local[r["records"]]
    table("turnout retrain: time and peak memory", ["records", "mode", "wall s", "peak RSS MB (driver)",
                                                  "Ray workers RSS MB", "decision", "read s", "policy s", "ope s"], rows,
          caption="local target: 1M < 120 s; 10M without OOM. Trees on <= 50k rounds, OPE on <= 1M newest held-out.")
    write_json("retrain", {"environment": environment(), "results": results,
                           "targets": {"local_1M_s": 120, "10M": "no OOM"},
                           "rules": {"max_fit_rows": 50_000, "max_ope_rows": 1_000_000, "refit_classifier": False,
                                     "distinct_prompts": POOL, "shard_rows": SHARD_ROWS}}, quick=a.quick)


if __name__ == "__main__":
    main()
