"""Single-request latency of the router's hot path, with the native scikit-learn classifier as baseline.

Simulates logged traffic from ``configs/world.yaml``, builds a bundle in a temporary directory, then
times one call at a time on one thread, after a warm-up:

* ``clf_onnx``     ``router.classifier.predict_proba([text])``: for the ``tfidf_sparse_linear`` kind that
                   training writes now, ``router.tfidf`` (TF-IDF vector in numpy) + the linear head of
                   ``classifier.onnx`` (evaluated with numpy from the graph's own weights, router.linear_head,
                   when the graph is the known sparse head; else onnxruntime) + temperature; for older
                   bundles the skl2onnx string graph. Its parts:
* ``clf_tfidf``    ``TfidfVocabulary.transform`` alone (n-gram keys, cuckoo-hash lookup, counts, idf, L2);
* ``clf_head``     the head as serving runs it (numpy logits + softmax) on the precomputed TF-IDF vector;
* ``clf_head_onnxruntime``  the same head as one onnxruntime ``session.run`` (what serving ran before; the
                   parity block reports the two heads' max |Δp| and whether calibrated probabilities agree);
* ``ood``          the OOD score's inputs: ``CharLanguageModel.mean_nll`` + ``oov_rate`` on the prepared text;
* ``clf_native``   the same pipeline in scikit-learn (``CategoryTrainer`` refit on the rows the bundle's
                   classifier was refitted on, same seed; the baseline the ONNX export is meant to beat);
* ``featurize``    ``router.features.featurize`` alone (a Python loop over the prompt's characters);
* ``policy_onnx``  ``router.scorer.predict`` on one feature vector: the three heads (quality, cost,
                   latency) of ``policy.onnx`` for every catalogue model (for the GBDT variants one
                   ONNX run over K rows of [context, one-hot model]; the variant is the one the
                   bundle's held-out DR chose, recorded in ``bundle_metrics.policy.chosen``), through
                   the per-thread I/O-bound call (``router.policy._BoundRun``);
* ``policy_onnx_session_run``  the same heads through ``session.run`` with a fresh input and output
                   arrays per call (what ``predict`` did before the bound call: its in-run baseline);
* ``decide``       the full ``Router.decide`` (cache tier ``skip`` for every category);
* ``choose``       ``router.policy.choose`` (epsilon-greedy draw over the predicted category's allowed
                   models): a piece of decide's own overhead, timed so that ``decide`` minus its ONNX
                   and featurize parts is accounted for. (decide's NaN guards are now one
                   ``np.isfinite(x.sum())`` per model output, ~1 µs each, so they are no longer timed.)

Then **throughput** (issue 7 target: >= 5,000 decisions/s on one core without the sentence encoder):
``Router.decide`` one request at a time vs ``Router.decide_batch`` in micro-batches of 8/32/128 (same
decisions, see tests/unit/test_router_speed.py), ``decide (policy session.run)`` (a second router whose
policy runs through ``session.run`` instead of the bound call: the in-run baseline of that change) and
``decide (onnxruntime head)`` (a third router whose classifier runs its head with onnxruntime, the
pre-numpy path, as the in-run baseline of that
change), over all mixed prompts, in rounds that rotate the order of the variants; decisions per
CPU-second of this single-threaded process (= one core) and per wall second, with the 1-minute load
average alongside (the box is shared).

The operations are **interleaved call by call** (rotating order) so that the noise of this shared
2-core box hits every operation alike; speed claims are the ratios, measured in the same run.
Prompts come from ``training.prompts.generate_prompt`` via ``generate_requests`` (a seed distinct
from the training logs). The generator never writes prompts over ~900 characters, so the ``long``
bucket (> 2000 chars) concatenates same-category prompts, like a pasted document, up to 2-8k chars.

    python benchmarks/router_latency.py [--quick]   ->  benchmarks/results/router_latency[_quick].json
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CONFIGS, console, environment, table, write_json  # noqa: E402

from router.cache import CachePolicy, CategoryCachePolicy, ResponseCache  # noqa: E402
from router.decision import Router  # noqa: E402
from router.features import featurize  # noqa: E402
from router.linear_head import softmax_row  # noqa: E402
from router.policy import choose, utilities  # noqa: E402
from router.log_schema import read_logs  # noqa: E402
from router.request import Message, Request  # noqa: E402
from training.bundle_builder import build_bundle, labelled_from_logs  # noqa: E402
from training.classifier import CategoryTrainer, stratified_split  # noqa: E402
from training.prompts import generate_prompt  # noqa: E402
from training.simulator import write_simulation  # noqa: E402
from training.world import World, generate_requests, load_world  # noqa: E402

SHORT_MAX, LONG_MIN = 200, 2000
N_BLOCKS = 10


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller simulation and fewer calls (< 30 s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--world", default=str(CONFIGS / "world.yaml"))
    args = ap.parse_args(argv)
    n_logs = 800 if args.quick else 4000
    n_mix = 300 if args.quick else 3000
    n_bucket = 100 if args.quick else 1000
    n_warm = 40 if args.quick else 200
    t_start = time.perf_counter()

    world = load_world(args.world)
    with tempfile.TemporaryDirectory(prefix="turnout-bench-") as tmp:
        logs, out = Path(tmp) / "logs", Path(tmp) / "bundle"
        with console.status(f"simulating {n_logs} requests and building a bundle"):
            write_simulation(world, n_logs, logs, seed=args.seed)
            bundle = build_bundle(logs, world.router, out, seed=args.seed, bundle_version="bench-latency")
            data = labelled_from_logs(read_logs(logs))
            # the rows the bundle's shipped classifier was refitted on (fit_category_model: train + test)
            train, _, test = stratified_split(data.labels, (0.7, 0.15, 0.15), args.seed)
            rows = np.concatenate([train, test])
            native = CategoryTrainer(world.router.taxonomy, seed=args.seed).fit(
                [data.texts[i] for i in rows], [data.labels[i] for i in rows])
        # every category's tier is "skip": decide() measures routing, not caching
        skip = CachePolicy(categories={c: CategoryCachePolicy(tier="skip") for c in world.router.taxonomy})
        router = Router(bundle, cache=ResponseCache(skip))

        mix, buckets = _prompts(world, args.seed, n_mix, n_bucket)
        for prompts in (mix, *buckets.values()):
            _prepare(router, prompts)
        parity = _parity(router, native, mix[:500])
        parity.update(_head_parity(router, mix[:500]))
        rng = np.random.default_rng(args.seed)
        ops = _ops(router, native, rng)

        with console.status(f"timing {len(ops)} operations x {n_mix} interleaved calls (mixed prompts)"):
            mix_ns = _interleaved(ops, mix, n_mix, n_warm)
        with console.status("throughput: decide vs decide_batch, interleaved rounds"):
            reference = Router(bundle, cache=ResponseCache(skip))
            reference.classifier.head = None  # the onnxruntime head: the in-run baseline of router.linear_head
            unbound = Router(bundle, cache=ResponseCache(skip))
            unbound.scorer._local.run = False  # this thread's policy calls go through session.run
            throughput = _throughput(router, mix, np.random.default_rng(args.seed + 7), n_rounds=3 if args.quick else 5,
                                     reference=reference, unbound=unbound)
        bucket_ops = {k: ops[k] for k in ("clf_onnx", "clf_native", "featurize", "decide")}
        bucket_ns: dict[str, dict[str, np.ndarray]] = {}
        for name, prompts in buckets.items():
            with console.status(f"timing bucket {name!r}: {len(bucket_ops)} operations x {n_bucket} calls"):
                bucket_ns[name] = _interleaved(bucket_ops, prompts, n_bucket, n_warm // 2)

    result = _report(mix_ns, bucket_ns, mix, buckets, parity)
    result["throughput"] = _report_throughput(throughput)
    result.update(
        benchmark="router_latency",
        quick=args.quick,
        seed=args.seed,
        settings={"simulated_requests": n_logs, "calls_mixed": n_mix, "calls_per_bucket": n_bucket,
                  "warmup_calls": n_warm, "threads": 1, "interleaved": True, "cache": "tier skip for every category",
                  "exploration": world.router.exploration.model_dump(),
                  "policy": {"kind": bundle.manifest.policy.kind, "variant": bundle.manifest.policy.variant,
                             "layout": bundle.manifest.policy.layout, "models": list(bundle.manifest.policy.models),
                             "n_context": bundle.manifest.policy.n_context},
                  "buckets_chars": {"short": f"< {SHORT_MAX}", "medium": f"{SHORT_MAX}..{LONG_MIN}",
                                    "long": f"> {LONG_MIN} (concatenated same-category prompts, 2k-8k)"}},
        bundle_metrics=bundle.manifest.metrics,
        environment=environment(),
        wall_s=round(time.perf_counter() - t_start, 1),
    )
    path = write_json("router_latency", result, quick=args.quick)
    console.print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path} "
                  f"in {result['wall_s']} s")
    return 0


# ------------------------------------------------------------------------------------------------
# inputs


class Prompt:
    """One timed input, with everything each operation needs precomputed outside the timer."""

    __slots__ = ("text", "probs", "features", "request", "candidates", "utility", "prepared", "tfidf")

    def __init__(self, text: str) -> None:
        self.text = text
        self.request = Request(messages=(Message("user", text),))
        self.probs: np.ndarray | None = None
        self.features: np.ndarray | None = None
        self.candidates: list[str] = []
        self.utility: np.ndarray | None = None
        self.prepared = ""
        self.tfidf: dict[str, np.ndarray] = {}


def _prompts(world: World, seed: int, n_mix: int, n_bucket: int) -> tuple[list[Prompt], dict[str, list[Prompt]]]:
    reqs = generate_requests(world, max(n_mix, 4 * n_bucket), seed=seed + 1000)
    texts = [r.prompt.text for r in reqs]
    mix = [Prompt(t) for t in texts[:n_mix]]
    short = [Prompt(t) for t in texts if len(t) < SHORT_MAX][:n_bucket]
    medium = [Prompt(t) for t in texts if SHORT_MAX <= len(t) <= LONG_MIN][:n_bucket]
    rng = np.random.default_rng(seed + 2000)
    cats = world.router.taxonomy
    long = []
    for _ in range(min(n_bucket, 300)):  # 300 distinct long prompts, cycled
        cat, target = cats[int(rng.integers(len(cats)))], int(rng.integers(LONG_MIN, 8000))
        parts: list[str] = []
        while sum(map(len, parts)) + 2 * len(parts) <= target:
            parts.append(generate_prompt(cat, rng).text)
        long.append(Prompt("\n\n".join(parts)))
    return mix, {"short": short, "medium": medium, "long": long}


def _prepare(router: Router, prompts: Sequence[Prompt]) -> None:
    """Precompute the inputs of each timed part: probs, features, and the utilities ``choose`` sees in
    decide (allowed models of the predicted category, the configured preference, fixed reference scales)."""
    from router.ood import prepare_text

    cfg, info, clf = router.config, router.scorer.info, router.classifier
    for p in prompts:
        if p.probs is None:
            p.prepared = prepare_text(p.text, clf.max_chars)
            if clf.vocabulary is not None:
                idx, val = clf.vocabulary.transform(p.prepared)
                p.tfidf = {"indices": idx, "values": val} if idx.size else clf._empty_row
            p.probs = router.classifier.predict_proba([p.text])[0]
            p.features = featurize(p.text, p.probs, p.request.n_turns)
            category = cfg.taxonomy[int(np.argmax(p.probs))]
            p.candidates = [m for m in cfg.allowed_models(category) if m in info.models]
            heads = router.scorer.predict(p.features).take([info.models.index(m) for m in p.candidates])
            p.utility = utilities(heads, cfg.preference, info.ref_cost_usd, info.ref_latency_ms)


def _parity(router: Router, native: CategoryTrainer, prompts: Sequence[Prompt]) -> dict[str, float]:
    """Uncalibrated ONNX vs native probabilities on the same prepared texts (the bundle's temperature
    scaling is applied after the graph, so calibrated probabilities differ by design)."""
    from router.ood import prepare_text

    texts = [p.text for p in prompts]
    a = router.classifier.raw_proba([prepare_text(t, router.classifier.max_chars) for t in texts])
    b = native.predict_proba(texts)
    return {"n": len(texts), "max_abs_prob_diff": float(np.max(np.abs(a - b))),
            "argmax_agreement": float(np.mean(a.argmax(1) == b.argmax(1)))}


def _head_parity(router: Router, prompts: Sequence[Prompt]) -> dict[str, Any]:
    """The numpy head (router.linear_head) vs the same graph in onnxruntime: raw probabilities and the
    calibrated float32 probabilities decisions read."""
    from router.classifier import CategoryClassifier

    clf = router.classifier
    if clf.head is None:
        return {"numpy_head": False}
    ort = CategoryClassifier(clf.session, clf.taxonomy, clf.info, clf.lm, None, clf.vocabulary)
    prepared = [p.prepared for p in prompts]
    a, b = np.array(clf._raw_rows(prepared)), np.array(ort._raw_rows(prepared))
    texts = [p.text for p in prompts]
    ca, cb = clf.predict_proba(texts), ort.predict_proba(texts)
    return {"numpy_head": True, "numpy_vs_onnxruntime_head_max_abs_raw_prob_diff": float(np.max(np.abs(a - b))),
            "numpy_vs_onnxruntime_head_calibrated_rows_identical": int((ca == cb).all(axis=1).sum())}


def _ops(router: Router, native: CategoryTrainer, rng: np.random.Generator) -> dict[str, Callable[[Prompt], Any]]:
    pipe = native._fitted()  # the bare sklearn Pipeline: no wrapper overhead in the baseline
    clf = router.classifier
    exploration = router.config.exploration
    ops = {
        "clf_onnx": lambda p: router.classifier.predict_proba([p.text]),
        **({"clf_tfidf": lambda p: clf.vocabulary.transform(p.prepared)}  # type: ignore[union-attr]
           if clf.vocabulary is not None else {}),
        **({"clf_head": lambda p: softmax_row(clf.head.logits_row(  # type: ignore[union-attr]
            p.tfidf["indices"], p.tfidf["values"]))} if clf.head is not None else {}),
        **({"clf_head_onnxruntime": lambda p: clf.session.run(["probabilities"], p.tfidf)}
           if clf.vocabulary is not None else {}),
        "ood": lambda p: (clf.lm.mean_nll(p.prepared), clf.lm.oov_rate(p.prepared)) if clf.lm is not None else None,
        "clf_native": lambda p: pipe.predict_proba([p.text]),
        "featurize": lambda p: featurize(p.text, p.probs, 1),
        "policy_onnx": lambda p: router.scorer.predict(p.features),
        "decide": lambda p: router.decide(p.request, now_s=0.0, rng=rng),
        # a piece of decide's own overhead (not ONNX, not featurize), to explain decide - parts:
        "choose": lambda p: choose(p.candidates, p.utility, exploration, rng),
        "policy_onnx_session_run": lambda p: _policy_session_run(router, p.features),
    }
    # Calls rotate through this order, and an op soon after another on the same ONNX session finds its
    # caches warm: the three policy users (decide, policy_onnx, policy_onnx_session_run) are spread over
    # the cycle so that each of the two compared parts comes 4 ops after the previous policy call.
    order = ["clf_onnx", "clf_tfidf", "policy_onnx", "clf_head", "clf_head_onnxruntime", "ood",
             "policy_onnx_session_run", "clf_native", "featurize", "decide", "choose"]
    return {k: ops[k] for k in order if k in ops}


# ------------------------------------------------------------------------------------------------
# timing


def _policy_session_run(router: Router, features: np.ndarray) -> Any:
    """``PolicyScorer.predict`` as it ran before the bound call: a fresh input copy, ``session.run``
    (input and output conversion per call), then the same float32 ``exp``."""
    sc = router.scorer
    if sc.info.layout != "model_feature":  # per-arm graphs never took the bound call
        return sc.predict(features)
    rows = sc._template.copy()
    rows[:, :sc.info.n_context] = features
    q, c, l = sc.session.run(sc._heads, {"features": rows})
    return q.reshape(-1), np.exp(c.reshape(-1)), np.exp(l.reshape(-1))


def _interleaved(ops: dict[str, Callable[[Prompt], Any]], prompts: list[Prompt], n: int, warm: int) -> dict[str, np.ndarray]:
    """Call i runs every op once on prompt i (cycled), in an order rotated by i; returns ns per call."""
    names = list(ops)
    fns = [ops[k] for k in names]
    k = len(fns)
    for i in range(warm):
        p = prompts[i % len(prompts)]
        for f in fns:
            f(p)
    out = np.empty((k, n), dtype=np.int64)
    clock = time.perf_counter_ns
    gc.collect()
    for i in range(n):
        p = prompts[i % len(prompts)]
        for j in range(k):
            o = (i + j) % k
            t0 = clock()
            fns[o](p)
            out[o, i] = clock() - t0
    return {name: out[j] for j, name in enumerate(names)}


BATCH_SIZES = (8, 32, 128)
TARGET_DECISIONS_PER_S = 5000


def _throughput(router: Router, prompts: list[Prompt], rng: np.random.Generator, n_rounds: int,
                reference: Router | None = None, unbound: Router | None = None) -> dict[str, Any]:
    """Decisions per second on one thread over all ``prompts``: ``decide`` one at a time, and
    ``decide_batch`` in micro-batches of each size in ``BATCH_SIZES``. Rounds rotate the order of the
    variants so background load hits each alike; both wall time and this process's CPU time are kept
    (CPU time = decisions per core-second, the less noisy number on a shared machine)."""
    reqs = [p.request for p in prompts]
    variants: dict[str, Callable[[], None]] = {"decide": lambda: [router.decide(r, now_s=0.0, rng=rng) for r in reqs]}
    if unbound is not None:
        variants["decide (policy session.run)"] = lambda: [unbound.decide(r, now_s=0.0, rng=rng) for r in reqs]
    if reference is not None:
        variants["decide (onnxruntime head)"] = lambda: [reference.decide(r, now_s=0.0, rng=rng) for r in reqs]
    if hasattr(router, "decide_batch"):
        for b in BATCH_SIZES:
            variants[f"decide_batch({b})"] = (lambda b=b: [router.decide_batch(reqs[i:i + b], now_s=0.0, rng=rng)
                                                          for i in range(0, len(reqs), b)])
    names = list(variants)
    for name in names:  # warm-up
        variants[name]()
    wall = {k: [] for k in names}
    cpu = {k: [] for k in names}
    load = [os.getloadavg()[0]]
    for r in range(n_rounds):
        for j in range(len(names)):
            name = names[(r + j) % len(names)]
            gc.collect()
            t_cpu, t_wall = time.process_time(), time.perf_counter()
            variants[name]()
            cpu[name].append(time.process_time() - t_cpu)
            wall[name].append(time.perf_counter() - t_wall)
        load.append(os.getloadavg()[0])
    return {"n_requests": len(reqs), "n_rounds": n_rounds, "wall_s": wall, "cpu_s": cpu, "loadavg_1m": load,
            "decide_batch_available": hasattr(router, "decide_batch")}


def _report_throughput(t: dict[str, Any]) -> dict[str, Any]:
    n = t["n_requests"]
    out: dict[str, Any] = {"n_requests": n, "n_rounds": t["n_rounds"], "loadavg_1m": t["loadavg_1m"],
                           "target_decisions_per_s": TARGET_DECISIONS_PER_S, "variants": {}}
    base = float(np.median(t["cpu_s"]["decide"]))
    rows = []
    for name in t["wall_s"]:
        w, c = np.array(t["wall_s"][name]), np.array(t["cpu_s"][name])
        v = {"per_s_wall_median": n / float(np.median(w)), "per_s_wall_best": n / float(w.min()),
             "per_s_cpu_median": n / float(np.median(c)), "per_s_cpu_best": n / float(c.min()),
             "us_per_decision_cpu_median": float(np.median(c)) / n * 1e6,
             "speedup_vs_decide_cpu": base / float(np.median(c))}
        v["target_met_cpu_median"] = v["per_s_cpu_median"] >= TARGET_DECISIONS_PER_S
        out["variants"][name] = v
        rows.append([name, v["per_s_cpu_median"], v["per_s_cpu_best"], v["per_s_wall_median"], v["us_per_decision_cpu_median"],
                     v["speedup_vs_decide_cpu"], str(v["target_met_cpu_median"])])
    table(f"Router throughput on one thread, no Ray, TF-IDF classifier (no sentence encoder): {n:,} mixed prompts, "
          f"{t['n_rounds']} interleaved rounds",
          ["variant", "decisions/s (CPU, median)", "best round", "decisions/s (wall, median)", "µs/decision (CPU)",
           "x decide", f">= {TARGET_DECISIONS_PER_S:,}/s"], rows,
          caption=f"1-min load average during the rounds: {', '.join(f'{x:.1f}' for x in t['loadavg_1m'])} "
                  f"(2 CPUs shared; CPU time counts this process only)")
    return out


def _stats(ns: np.ndarray) -> dict[str, float]:
    us = ns / 1000.0
    return {"n": int(us.size), "p50_us": float(np.percentile(us, 50)), "p90_us": float(np.percentile(us, 90)),
            "p99_us": float(np.percentile(us, 99)), "mean_us": float(us.mean()), "min_us": float(us.min())}


def _ratio(num: np.ndarray, den: np.ndarray) -> dict[str, Any]:
    """Ratios of p50/p99/mean, plus the spread of per-block median ratios (noise indicator)."""
    blocks = [float(np.median(a) / np.median(b)) for a, b in zip(np.array_split(num, N_BLOCKS), np.array_split(den, N_BLOCKS))]
    return {"p50": float(np.percentile(num, 50) / np.percentile(den, 50)),
            "p99": float(np.percentile(num, 99) / np.percentile(den, 99)),
            "mean": float(num.mean() / den.mean()),
            "block_p50_min": min(blocks), "block_p50_max": max(blocks)}


# ------------------------------------------------------------------------------------------------
# report


def _report(mix_ns: dict[str, np.ndarray], bucket_ns: dict[str, dict[str, np.ndarray]], mix: list[Prompt],
            buckets: dict[str, list[Prompt]], parity: dict[str, float]) -> dict[str, Any]:
    chars = np.array([len(p.text) for p in mix])
    stats = {k: _stats(v) for k, v in mix_ns.items()}
    table(f"Single-request latency, mixed generated prompts (n={len(mix_ns['decide'])} interleaved calls each; "
          f"prompt chars p50={np.median(chars):.0f}, max={chars.max()})",
          ["operation", "p50 µs", "p90 µs", "p99 µs", "mean µs", "min µs"],
          [[k, s["p50_us"], s["p90_us"], s["p99_us"], s["mean_us"], s["min_us"]] for k, s in stats.items()])

    ratios = {"clf_native/clf_onnx": _ratio(mix_ns["clf_native"], mix_ns["clf_onnx"])}
    parts = mix_ns["clf_onnx"] + mix_ns["featurize"] + mix_ns["policy_onnx"]
    ratios["decide/(clf_onnx+featurize+policy_onnx)"] = _ratio(mix_ns["decide"], parts)
    ratios["featurize/decide"] = _ratio(mix_ns["featurize"], mix_ns["decide"])
    ratios["clf_onnx/decide"] = _ratio(mix_ns["clf_onnx"], mix_ns["decide"])
    ratios["policy_onnx/decide"] = _ratio(mix_ns["policy_onnx"], mix_ns["decide"])
    ratios["policy_onnx_session_run/policy_onnx"] = _ratio(mix_ns["policy_onnx_session_run"], mix_ns["policy_onnx"])
    ratios["choose/decide"] = _ratio(mix_ns["choose"], mix_ns["decide"])
    ratios["decide/(all 4 parts above)"] = _ratio(mix_ns["decide"], parts + mix_ns["choose"])
    table("Ratios measured in the same run (> 1: numerator slower)",
          ["ratio", "p50", "p99", "mean", f"p50 over {N_BLOCKS} blocks"],
          [[k, r["p50"], r["p99"], r["mean"], f"{r['block_p50_min']:.2f}..{r['block_p50_max']:.2f}"]
           for k, r in ratios.items()],
          caption=f"ONNX vs native parity on {parity['n']} prompts: argmax agreement "
                  f"{parity['argmax_agreement']:.4f}, max |Δp| {parity['max_abs_prob_diff']:.2e}"
                  + (f"; numpy head vs onnxruntime head: max |Δp| "
                     f"{parity['numpy_vs_onnxruntime_head_max_abs_raw_prob_diff']:.2e}, calibrated rows identical "
                     f"{parity['numpy_vs_onnxruntime_head_calibrated_rows_identical']}/{parity['n']}"
                     if parity.get("numpy_head") else ""))

    by_bucket: dict[str, Any] = {}
    rows, shares = [], []
    for name, d in bucket_ns.items():
        c = np.array([len(p.text) for p in buckets[name]])
        s = {k: _stats(v) for k, v in d.items()}
        feat_per_kchar = float(np.median(d["featurize"] / 1000.0 / (np.resize(c, d["featurize"].size) / 1000.0)))
        by_bucket[name] = {
            "n_calls": int(d["decide"].size), "n_distinct_prompts": len(buckets[name]),
            "chars_mean": float(c.mean()), "chars_min": int(c.min()), "chars_max": int(c.max()),
            "stats": s,
            "featurize_share_of_decide_mean": float(d["featurize"].mean() / d["decide"].mean()),
            "clf_onnx_share_of_decide_mean": float(d["clf_onnx"].mean() / d["decide"].mean()),
            "featurize_us_per_1k_chars_p50": feat_per_kchar,
            "clf_native/clf_onnx": _ratio(d["clf_native"], d["clf_onnx"]),
        }
        b = by_bucket[name]
        rows.append([name, b["n_calls"], b["chars_mean"], s["decide"]["p50_us"], s["decide"]["p99_us"],
                     s["decide"]["mean_us"], s["featurize"]["p50_us"], s["featurize"]["p99_us"], s["clf_onnx"]["p50_us"],
                     s["clf_native"]["p50_us"]])
        shares.append([name, b["featurize_share_of_decide_mean"], b["clf_onnx_share_of_decide_mean"],
                       feat_per_kchar, b["clf_native/clf_onnx"]["p50"], b["clf_native/clf_onnx"]["mean"]])
    table("Router.decide latency by prompt length (short < 200 chars, medium 200-2000, long > 2000)",
          ["bucket", "calls", "mean chars", "decide p50 µs", "decide p99 µs", "decide mean µs", "featurize p50 µs",
           "featurize p99 µs", "clf_onnx p50 µs", "clf_native p50 µs"], rows)
    table("Where the time goes, by prompt length (shares of mean decide time; ratios in the same run)",
          ["bucket", "featurize / decide", "clf_onnx / decide", "featurize µs per 1k chars (p50)",
           "native/onnx p50", "native/onnx mean"], shares)
    return {"mixed": {"chars_p50": float(np.median(chars)), "chars_max": int(chars.max()), "stats": stats},
            "ratios": ratios, "parity": parity, "by_length": by_bucket}


if __name__ == "__main__":
    raise SystemExit(main())
