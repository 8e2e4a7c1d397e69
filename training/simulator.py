"""``turnout simulate``: logged traffic from the simulated world under a uniform-random logging policy.

Each request is answered by a model drawn uniformly from the router's allowed models for its true
category, so every logged propensity is exactly ``1/K`` and off-policy estimators are unbiased. The
``features`` column is computed with a one-hot category (the logger had no classifier); trainers
recompute features with the classifier they fit, exactly as serving will.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from router.features import FEATURE_VERSION, featurize
from router.log_schema import LogRecord, write_shard
from training.world import SimRequest, World, input_tokens_of, outcome

SHARD_ROWS = 20_000


def simulate_records(world: World, requests: list[SimRequest], seed: int) -> Iterator[LogRecord]:
    rng = np.random.default_rng(seed + 1)
    taxonomy = world.router.taxonomy
    for r in requests:
        p = r.prompt
        onehot = np.eye(len(taxonomy), dtype=np.float32)[taxonomy.index(p.category)]
        candidates = world.router.allowed_models(p.category)
        k = len(candidates)
        model = candidates[int(rng.integers(k))]
        tokens = input_tokens_of(p.text)
        o = outcome(world, model, p.category, p.difficulty, tokens, rng)
        yield LogRecord(
            request_id=f"sim-{seed}-{r.index}", timestamp_s=r.timestamp_s, tenant="default", arm="simulator",
            bundle_version="simulator", feature_version=FEATURE_VERSION, prompt=p.text, n_turns=1,
            input_tokens=tokens, features=featurize(p.text, onehot).tolist(), category=p.category,
            category_probs=onehot.tolist(), confidence=1.0, fallback=False, cache_tier="skip", cache_hit=False,
            model=model, candidates=candidates, action_probs=[1.0 / k] * k, propensity=1.0 / k, policy="uniform",
            replica=f"{model}#sim", ttft_ms=o.ttft_ms, latency_ms=o.latency_ms, output_tokens=o.output_tokens,
            cost_usd=o.cost_usd, quality=o.quality, label_category=p.category,
        )


def replay_request(r: SimRequest) -> dict[str, object]:
    """An OpenAI chat body for ``turnout replay``; ``metadata`` carries the simulated truth so the
    simulated backend can score the answer (a real upstream ignores it)."""
    return {
        "messages": [{"role": "user", "content": r.prompt.text}],
        "user": r.user_id,
        "metadata": {"sim_category": r.prompt.category, "sim_difficulty": f"{r.prompt.difficulty:.4f}"},
    }


def write_simulation(world: World, n_requests: int, out_dir: str | Path, seed: int | None = None,
                     progress: bool = False) -> dict[str, object]:
    """Write ``part-*.parquet`` logs and ``requests.jsonl`` (the same requests, for replay)."""
    from training.world import generate_requests

    seed = world.config.seed if seed is None else seed
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("part-*.parquet"):
        old.unlink()
    requests = generate_requests(world, n_requests, seed)
    shards, batch = [], []
    for rec in _maybe_progress(simulate_records(world, requests, seed), n_requests, progress):
        batch.append(rec)
        if len(batch) >= SHARD_ROWS:
            shards.append(write_shard(batch, out))
            batch = []
    if batch:
        shards.append(write_shard(batch, out))
    with (out / "requests.jsonl").open("w", encoding="utf-8") as f:
        for r in requests:
            f.write(json.dumps(replay_request(r)) + "\n")
    return {"requests": n_requests, "shards": len(shards), "out": str(out), "seed": seed}


def _maybe_progress(it: Iterator[LogRecord], total: int, on: bool) -> Iterator[LogRecord]:
    if not on:
        yield from it
        return
    from rich.progress import track

    yield from track(it, total=total, description="simulating")
