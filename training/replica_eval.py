"""``turnout eval replicas``: replica policies compared on a trace by simulation, plus the learned scorer's
training data (built-in synthetic traces and the public traces in ../shared/data).

The learned scorer is never trained on the trace it is evaluated on: without a model directory,
``eval_replicas`` first simulates telemetry on *other* traces -- every built-in synthetic trace and
every public trace whose requests do not overlap the evaluated one (``overlap``: share of the evaluated
requests whose (input, output, leading prefix hashes) also occur in the candidate) -- trains on it and
names them in the report's ``trained_on``.

Built-in synthetic traces (``SYNTHETIC``; arrival rates are nominal: evaluation rescales time to a load):

* ``poisson`` -- Poisson arrivals, lognormal prompts (median 2,000 tokens) and outputs (median 250), no prefixes.
* ``bursty`` -- ServeGen-shaped: Gamma inter-arrivals with CV 4 under a slowly varying rate, chat-API
  lengths (``training.adapters.SERVEGEN_*_TOKENS``), no prefixes.
* ``conversation`` -- multi-turn sessions: a shared system prompt (4 variants), each turn's prompt is the
  previous prompt + answer + a new user message, Mooncake-style 512-token chained block hashes.
* ``rag`` -- a system prompt, then retrieved documents from a Zipf-popular pool, then a question; prompts
  share a prefix when they start with the same document.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from router.replica import POLICIES, REPLICA_MODEL_FILE, ReplicaScorer, make_policy
from training.engine import EngineConfig
from training.replica_sim import SLO, Telemetry, Trace, replica_capacity_rps, scale_to_load, simulate

BLOCK = 512
SYNTHETIC: tuple[str, ...] = ("poisson", "bursty", "conversation", "rag")
TRAIN_LOADS: tuple[float, ...] = (0.5, 0.65, 0.8, 0.95)  # the loads policies are compared at (not overload)
TRAIN_POLICIES: tuple[str, ...] = ("round_robin", "pow2", "least_loaded", "prefix_affinity")


# ---------------------------------------------------------------------------------------------- synthetic


def _lognormal(rng: np.random.Generator, median: float, sigma: float, lo: int, hi: int, n: int) -> np.ndarray:
    return np.clip(np.rint(rng.lognormal(math.log(median), sigma, size=n)), lo, hi).astype(np.int64)


def _chain(content_ids: Sequence[tuple[Any, ...]]) -> tuple[int, ...]:
    """Chained 63-bit block hashes of a sequence of block content ids (equal hash = equal prefix)."""
    out, prev = [], b""
    for cid in content_ids:
        prev = hashlib.blake2b(prev + repr(cid).encode(), digest_size=8).digest()
        out.append(int.from_bytes(prev, "big") >> 1)
    return tuple(out)


def _blocks(n_tokens: int, segments: Sequence[tuple[Any, int]], tag: Any) -> list[tuple[Any, ...]]:
    """Content ids of the ``ceil(n_tokens / 512)`` blocks of a prompt made of ``segments`` (id, tokens).

    A block entirely inside one segment is named by (segment id, offset); a block straddling segments
    or the prompt's partial last block by ``tag`` (so it only matches the very same prompt).
    """
    bounds, start = [], 0
    for seg_id, n in segments:
        bounds.append((start, start + n, seg_id))
        start += n
    ids: list[tuple[Any, ...]] = []
    for b in range(-(-n_tokens // BLOCK)):
        lo, hi = b * BLOCK, min((b + 1) * BLOCK, n_tokens)
        seg = next((s for s in bounds if s[0] <= lo and hi <= s[1]), None)
        ids.append((seg[2], lo - seg[0]) if seg is not None and hi - lo == BLOCK else (tag, b))
    return ids


def _poisson(n: int, seed: int) -> Trace:
    rng = np.random.default_rng([seed, 1])
    t = np.cumsum(rng.exponential(1.0, size=n))
    return Trace("poisson", t - t[0], _lognormal(rng, 2000, 1.0, 16, 32_768, n),
                 _lognormal(rng, 250, 0.8, 1, 4096, n), ((),) * n)


def _bursty(n: int, seed: int) -> Trace:
    rng = np.random.default_rng([seed, 2])
    cv = 4.0
    shape = 1.0 / cv**2
    gaps = rng.gamma(shape, 1.0 / shape, size=n)
    # slow rate modulation (x0.4 .. x1.6 over ~2,000 requests) on top of the bursty renewal process
    t = np.cumsum(gaps / (1.0 + 0.6 * np.sin(np.arange(n) * 2 * math.pi / 2000.0)))
    return Trace("bursty", t - t[0], _lognormal(rng, 800, 1.0, 1, 32_768, n), _lognormal(rng, 200, 0.8, 1, 8192, n),
                 ((),) * n)


def _conversation(n: int, seed: int) -> Trace:
    rng = np.random.default_rng([seed, 3])
    sys_tokens = [1024, 1536, 2048, 3072]
    rows: list[tuple[float, int, int, tuple[int, ...]]] = []
    t_session, session = 0.0, 0
    while len(rows) < n:
        t_session += rng.exponential(1.0 / 0.8)
        variant = int(rng.integers(len(sys_tokens)))
        segments: list[tuple[Any, int]] = [(("sys", variant), sys_tokens[variant])]
        t = t_session
        for turn in range(int(rng.geometric(1 / 4.0))):
            segments.append(((session, turn, "user"), int(_lognormal(rng, 600 if turn == 0 else 250, 1.0, 8, 16_000, 1)[0])))
            n_in = sum(n for _, n in segments)
            n_out = int(_lognormal(rng, 300, 0.8, 1, 2048, 1)[0])
            rows.append((t, n_in, n_out, _chain(_blocks(n_in, segments, (session, turn)))))
            segments.append(((session, turn, "answer"), n_out))
            t += rng.exponential(60.0)
        session += 1
    rows.sort(key=lambda r: r[0])
    rows = rows[:n]
    t = np.array([r[0] for r in rows])
    return Trace("conversation", t - t[0], np.array([r[1] for r in rows]), np.array([r[2] for r in rows]),
                 tuple(r[3] for r in rows))


def _rag(n: int, seed: int) -> Trace:
    rng = np.random.default_rng([seed, 4])
    n_docs = 2000
    doc_tokens = _lognormal(rng, 1500, 0.5, 256, 6000, n_docs)
    popularity = 1.0 / np.arange(1, n_docs + 1) ** 1.1
    popularity /= popularity.sum()
    t = np.cumsum(rng.exponential(1.0, size=n))
    n_in, hashes = np.zeros(n, dtype=np.int64), []
    for i in range(n):
        variant = int(rng.integers(3))
        docs = rng.choice(n_docs, size=3, replace=False, p=popularity)
        segments: list[tuple[Any, int]] = [(("sys", variant), 1024)]
        segments += [(("doc", int(d)), int(doc_tokens[d])) for d in docs]
        segments.append(((i, "question"), int(_lognormal(rng, 80, 0.6, 4, 1000, 1)[0])))
        n_in[i] = sum(k for _, k in segments)
        hashes.append(_chain(_blocks(int(n_in[i]), segments, (i,))))
    return Trace("rag", t - t[0], n_in, _lognormal(rng, 200, 0.7, 1, 2048, n), tuple(hashes))


_GENERATORS: dict[str, Callable[[int, int], Trace]] = {"poisson": _poisson, "bursty": _bursty,
                                                      "conversation": _conversation, "rag": _rag}


def synthetic_trace(kind: str, n: int = 6000, seed: int = 0) -> Trace:
    """A built-in synthetic trace (``SYNTHETIC``), deterministic in ``seed``.

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind not in _GENERATORS:
        raise ValueError(f"unknown synthetic trace {kind!r}; choose from {', '.join(SYNTHETIC)}")
    return _GENERATORS[kind](n, seed)


# ---------------------------------------------------------------------------------------------- public


def public_traces(shared_data: Path, work_dir: Path, max_requests: int = 12_000) -> dict[str, Trace]:
    """The public traces under ``shared_data`` converted with ``training.adapters`` (missing ones skipped)."""
    from training import adapters

    jobs: list[tuple[str, Callable[..., Any], Path, dict[str, Any]]] = [
        ("mooncake_conversation", adapters.convert_mooncake, shared_data / "mooncake_traces/conversation_trace.jsonl", {}),
        ("mooncake_synthetic", adapters.convert_mooncake, shared_data / "mooncake_traces/synthetic_trace.jsonl", {}),
        ("ragpulse", adapters.convert_ragpulse, shared_data / "ragpulse", {}),
        ("servegen_m_large", adapters.convert_servegen, shared_data / "servegen",
         {"model": "language_m-large", "start_s": 43_200.0, "duration_s": 1200.0, "max_requests": max_requests}),
    ]
    out: dict[str, Trace] = {}
    for name, convert, src, options in jobs:
        if not src.exists():
            continue
        dst = work_dir / f"{name}.jsonl"
        if not dst.exists():
            convert(src, dst, **options)
        trace = Trace.read(dst, name)
        out[name] = trace.head(max_requests) if trace.n > max_requests else trace
    return out


def _signature(trace: Trace, i: int, hashes: bool = True) -> tuple[int, int, tuple[int, ...]]:
    return int(trace.input_tokens[i]), int(trace.output_tokens[i]), trace.prefix_hashes[i][:4] if hashes else ()


def overlap(evaluated: Trace, candidate: Trace) -> float:
    """Share of ``evaluated``'s requests whose (input, output, first 4 prefix hashes) occur in ``candidate``;
    without prefix hashes on either side (e.g. a public trace re-exported as CSV), (input, output) alone."""
    hashes = evaluated.has_prefixes and candidate.has_prefixes
    seen = {_signature(candidate, i, hashes) for i in range(candidate.n)}
    return sum(_signature(evaluated, i, hashes) in seen for i in range(evaluated.n)) / max(evaluated.n, 1)


def training_traces(evaluated: Trace | Sequence[Trace] | None, *, shared_data: Path | None, work_dir: Path,
                    n_synthetic: int = 6000, seed: int = 0,
                    max_overlap: float = 0.05) -> tuple[dict[str, Trace], dict[str, str]]:
    """Traces the scorer may learn from when ``evaluated`` are the test traces; and why others were excluded.

    A candidate is excluded if it comes from the same built-in generator as an evaluated trace, or if
    more than ``max_overlap`` of an evaluated trace's requests occur in it (``overlap``).
    """
    tests = [] if evaluated is None else [evaluated] if isinstance(evaluated, Trace) else list(evaluated)
    candidates = {f"synthetic_{k}": synthetic_trace(k, n_synthetic, seed=seed + 1000) for k in SYNTHETIC}
    if shared_data is not None and shared_data.is_dir():
        candidates.update(public_traces(shared_data, work_dir))
    kept: dict[str, Trace] = {}
    excluded: dict[str, str] = {}
    for name, trace in candidates.items():
        reasons = [f"same generator as the evaluated trace {t.name!r}" for t in tests if name == f"synthetic_{t.name}"]
        for t in tests:
            share = overlap(t, trace)
            if share > max_overlap:
                reasons.append(f"{share:.0%} of the evaluated trace {t.name!r} occurs in it")
        if reasons:
            excluded[name] = "; ".join(reasons)
        else:
            kept[name] = trace
    return kept, excluded


# ---------------------------------------------------------------------------------------------- telemetry


def collect_telemetry(traces: dict[str, Trace], *, loads: Sequence[float] = TRAIN_LOADS,
                      policies: Sequence[str] = TRAIN_POLICIES, replica_counts: Sequence[int] = (2, 4, 8),
                      engine: EngineConfig | None = None, max_requests: int = 6000, seed: int = 0,
                      scorer: ReplicaScorer | None = None) -> Telemetry:
    """Simulate every (trace, load, logging policy) and log the dispatch telemetry.

    Replica counts rotate across runs; every other run has one replica slowed down (x1.25-x8,
    log-uniform), so ``step_ms`` carries information. With ``scorer``, ``learned`` runs are added
    (on-policy data).
    """
    engine = engine or EngineConfig()
    rng = np.random.default_rng(seed)
    parts = []
    run = 0
    for name, full in traces.items():
        trace = full.head(max_requests) if full.n > max_requests else full
        if trace.n < 2 or trace.duration_s <= 0:
            continue
        cap = replica_capacity_rps(trace, engine)
        for load in loads:
            for policy in [*policies, *(["learned"] if scorer is not None else [])]:
                n_rep = replica_counts[run % len(replica_counts)]
                cfgs: list[EngineConfig] = [engine] * n_rep
                if run % 2 == 1:
                    slow = float(np.exp(rng.uniform(np.log(1.25), np.log(8.0))))
                    cfgs[int(rng.integers(n_rep))] = engine.model_copy(update={"slowdown": slow})
                run += 1
                scaled = scale_to_load(trace, load, n_rep, capacity_rps=cap)
                res = simulate(scaled.trace, n_rep, make_policy(policy, seed=int(rng.integers(2**31)), scorer=scorer),
                               engine=cfgs, telemetry=True, source=f"{name}/{policy}/load={load}/n={n_rep}")
                assert res.telemetry is not None
                parts.append(res.telemetry)
    if not parts:
        raise ValueError(f"no trace to simulate: {sorted(traces)} each need >= 2 requests with distinct timestamps")
    return Telemetry.concat(parts)


def train_scorer_excluding(evaluated: Trace | Sequence[Trace] | None, model_dir: Path, *,
                           shared_data: Path | None, engine: EngineConfig | None = None, seed: int = 0,
                           rounds: int = 1, max_requests: int = 6000,
                           telemetry_dir: Path | None = None) -> dict[str, Any]:
    """Train ``model_dir/replicas.onnx`` on telemetry from traces other than ``evaluated``.

    Round 1 logs the heuristic policies; each further round adds the current scorer's own decisions
    (on-policy data: the argmin visits replica states the heuristics rarely produce). The telemetry is
    also written to ``telemetry_dir`` when given (``turnout train replicas --logs`` reads it).
    """
    from training.replica_model import train_replica_model

    with tempfile.TemporaryDirectory(prefix="turnout-traces-") as tmp:
        traces, excluded = training_traces(evaluated, shared_data=shared_data, work_dir=Path(tmp), seed=seed)
    tel = collect_telemetry(traces, engine=engine, seed=seed, max_requests=max_requests)
    if telemetry_dir is not None:
        tel.write(telemetry_dir / "round-1.parquet")
    info = {"trained_on": sorted(traces), "excluded": excluded}
    training = train_replica_model(tel, model_dir, seed=seed, info=info)
    for r in range(1, rounds):
        scorer = ReplicaScorer(model_dir)
        extra = collect_telemetry(traces, engine=engine, seed=seed + r, policies=(), scorer=scorer,
                                  max_requests=max_requests)
        tel = Telemetry.concat([tel, extra])
        training = train_replica_model(tel, model_dir, seed=seed, info={**info, "rounds": r + 1})
    return {**info, "training": training}


# ---------------------------------------------------------------------------------------------- eval


def eval_replicas(trace: Trace, n_replicas: int, load: float, policies: Sequence[str], *,
                  scorer: ReplicaScorer | None = None, engine: EngineConfig | None = None, slo: SLO = SLO(),
                  seed: int = 0, capacity_rps: float | None = None) -> dict[str, Any]:
    """Simulate each policy on ``trace`` rescaled to ``load``; ``{"policies": {name: metrics}, ...}``."""
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown replica policies {unknown}; choose from {', '.join(POLICIES)}")
    scaled = scale_to_load(trace, load, n_replicas, engine, capacity_rps=capacity_rps)
    out: dict[str, Any] = {}
    for name in policies:
        policy = make_policy(name, seed=seed, scorer=scorer)
        res = simulate(scaled.trace, n_replicas, policy, engine=engine)
        out[name] = res.metrics(slo)
        if name == "learned":
            out[name]["n_fallbacks"] = int(getattr(policy, "n_fallbacks", 0))
    return {"policies": out, "trace": trace.name, "n_requests": trace.n, "has_prefixes": trace.has_prefixes,
            "replicas": n_replicas, "load": load, "capacity_rps_per_replica": scaled.capacity_rps,
            "offered_rps": scaled.offered_rps, "time_factor": scaled.time_factor,
            "engine": (engine or EngineConfig()).model_dump(), "slo": {"ttft_base_s": slo.ttft_base_s,
                                                                         "ttft_per_token_s": slo.ttft_per_token_s,
                                                                         "tpot_s": slo.tpot_s}}


def eval_replicas_cli(trace: Path, replicas: int, load: float, policies: list[str], model_dir: Path | None,
                      out: Path, *, shared_data: Path | None = None, seed: int = 0,
                      max_gap_s: float | None = None) -> dict[str, Any]:
    """``turnout eval replicas``: the report dict, also written to ``out`` as JSON.

    Without ``model_dir`` and with ``learned`` among the policies, a scorer is first trained on other
    traces (``train_scorer_excluding``) into ``<out stem>-replica-model/`` next to the report.
    ``shared_data`` defaults to ``../shared/data`` beside the repository (env ``TURNOUT_SHARED_DATA``).
    ``max_gap_s``: idle gaps longer than this are cut first (``Trace.without_gaps``), so ``load`` is the
    load of the trace's busy periods rather than of its whole span.

    Raises:
        DataFormatError: the trace file is invalid. ValueError: bad replicas/load/policy names.
        ArtifactError: ``model_dir`` holds no valid replica model.
    """
    import json
    import os

    if replicas < 1:
        raise ValueError(f"--replicas must be >= 1; got {replicas}")
    tr = Trace.read(trace)
    gaps_cut = 0
    if max_gap_s is not None:
        tr, gaps_cut = tr.without_gaps(max_gap_s)
    scorer_info: dict[str, Any] = {}
    scorer = None
    if "learned" in policies:
        if model_dir is None:
            root = Path(__file__).resolve().parents[2] / "shared" / "data"
            data = shared_data or Path(os.environ.get("TURNOUT_SHARED_DATA", root))
            model_dir = out.with_name(f"{out.stem}-replica-model")
            t0 = time.perf_counter()
            scorer_info = train_scorer_excluding(tr, model_dir, shared_data=data, seed=seed)
            scorer_info["train_wall_s"] = round(time.perf_counter() - t0, 1)
        scorer = ReplicaScorer(model_dir)
        if not scorer_info:
            scorer_info = {k: scorer.manifest.get(k) for k in ("trained_on", "excluded", "training")}
    report = eval_replicas(tr, replicas, load, policies, scorer=scorer, seed=seed)
    report["trace_path"] = str(trace)
    report["max_gap_s"], report["gaps_cut"] = max_gap_s, gaps_cut
    report["model_dir"] = str(model_dir) if model_dir is not None else None
    report["model_file"] = str(Path(model_dir) / REPLICA_MODEL_FILE) if model_dir is not None else None
    report["trained_on"] = scorer_info.get("trained_on", [])
    report["scorer"] = scorer_info
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def train_quick_scorer(out_dir: Path, *, n_requests: int = 1000, seed: int = 0, n_estimators: int = 30) -> Path:
    """A small scorer from the built-in synthetic traces in a few seconds (tests, demos; not for evaluation)."""
    from training.replica_model import ReplicaTTFTTrainer, train_replica_model

    traces = {f"synthetic_{k}": synthetic_trace(k, n_requests, seed=seed + 2000) for k in SYNTHETIC}
    tel = collect_telemetry(traces, loads=(0.5, 0.9, 1.2), replica_counts=(2, 4), max_requests=n_requests, seed=seed)
    train_replica_model(tel, out_dir, seed=seed, trainer=ReplicaTTFTTrainer(n_estimators=n_estimators, seed=seed),
                        info={"trained_on": sorted(traces), "quick": True})
    return out_dir / REPLICA_MODEL_FILE


def write_replica_telemetry_cli(out: Path, traces: Sequence[Path] = (), *, builtin: bool = True,
                                shared_data: Path | None = None, seed: int = 0) -> dict[str, Any]:
    """Simulate dispatch telemetry into ``out/`` (Parquet) for ``turnout train replicas --logs out``.

    Sources: the built-in synthetic traces (``builtin``), the public traces under ``shared_data`` (if
    given) and each trace file in ``traces``; every one at ``TRAIN_LOADS`` under ``TRAIN_POLICIES``.
    """
    sources: dict[str, Trace] = {}
    if builtin:
        sources.update({f"synthetic_{k}": synthetic_trace(k, 6000, seed=seed + 1000) for k in SYNTHETIC})
    if shared_data is not None:
        with tempfile.TemporaryDirectory(prefix="turnout-traces-") as tmp:
            sources.update(public_traces(shared_data, Path(tmp)))
    for path in traces:
        t = Trace.read(path)
        sources[t.name] = t
    if not sources:
        raise ValueError("no traces to simulate: pass trace files, shared_data or builtin=True")
    tel = collect_telemetry(sources, seed=seed)
    shard = tel.write(Path(out) / "replica-telemetry-0.parquet")
    return {"out": str(shard), "n_rows": tel.n, "traces": sorted(sources)}
