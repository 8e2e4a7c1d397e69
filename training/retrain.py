"""``turnout retrain``: serving logs -> candidate bundle -> OPE gate -> promote or hold.

The nightly job. Steps, each recorded in the result:

1. read the decision logs (schema-validated shard by shard) and join late feedback;
2. data guards: schema, propensity range, missing feedback rate, exploration present, category drift
   against the mix the current bundle was trained on -- a failed guard stops here with ``hold``;
3. split by time: the oldest ``1 - holdout_frac`` of the rounds train, the newest are held out;
4. refit the classifier (when rows carry ``label_category``), the policy, the cache policy (opt-in,
   ``refit_cache``; else carried over) and the replica TTFT model (when ``replica_stats`` are logged);
5. off-policy evaluation of candidate and current policy on the held-out rounds (DR, IPS, SNIPS, DM;
   paired bootstrap CI of the DR difference) and the effective-sample-size guard;
6. decision: ``promote`` iff every guard passed and the CI of the DR difference (candidate - current)
   of the router's utility (quality - cost and latency penalties, with the current bundle's preference
   and reference scales) lies above ``min_improvement``; a markdown report with plots.

``backend`` decides where the heavy parts run: ``LocalBackend`` (this process) or
``training.retrain_ray.RayBackend`` (Ray Data, Ray Train LightGBM, Ray tasks). Both run the same code
for everything else, so their outputs agree (tests/serving/test_retrain_ray.py).

Scale rules (documented so a reviewer can audit them): the policy trees are fitted on at most
``max_fit_rows`` training rounds drawn uniformly at random (seeded); OPE uses at most ``max_ope_rows``
held-out rounds (the newest); features are computed once per distinct prompt.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from router.bundle import Bundle, load_bundle, write_bundle
from router.classifier import CategoryClassifier
from router.errors import ConfigError, LogSchemaError
from router.log_schema import NOT_DRAWN_POLICIES
from training.bundle_builder import bandit_rows, fit_classifier, labelled_from_logs, logged_bandit
from training.policy import FittedPolicy, PolicyTrainer, default_trainers, fit_policy
from training.retrain_ope import (
    bundle_target,
    calibration,
    candidate_mask,
    chunk_plan,
    context_features,
    effective_sample_size,
    logged_rewards,
    METRICS,
    ope_batch_from_target,
    per_category,
    Scales,
    summarize,
    term_matrix,
)

Step = Callable[[str], None]

EXIT_PROMOTE = 0
EXIT_HOLD = 3
GATE_METRIC = "utility"

# Columns the job keeps after validation (features/category_probs/action_probs are recomputed or unused).
KEEP_COLUMNS = ("request_id", "timestamp_s", "prompt", "n_turns", "input_tokens", "category", "cache_hit", "model",
                "candidates", "propensity", "policy", "replica_stats", "ttft_ms", "latency_ms", "cost_usd", "error",
                "quality", "label_category")


@dataclass(frozen=True)
class RetrainSettings:
    """Thresholds of the guards and the gate. Defaults are the nightly job's."""

    holdout_frac: float = 0.3
    n_bootstrap: int = 200
    alpha: float = 0.05
    min_improvement: float = 0.0  # promote iff the CI low of (candidate - current) DR utility exceeds this
    min_ess: float = 100.0  # effective sample size of each policy's importance weights on the held-out rows
    min_propensity: float = 0.01  # logged propensities below this make IPS weights > 100: data is refused
    max_low_propensity_frac: float = 0.01
    max_missing_feedback: float = 0.5  # share of model-decided rounds without quality
    min_explored_rows: int = 50  # rounds with propensity < 1 (the logger randomised)
    max_category_drift: float = 0.25  # total-variation distance of the category mix vs the reference
    max_fit_rows: int = 50_000  # policy trees: uniform sample of training rounds (fit time is linear in rows)
    max_ope_rows: int = 1_000_000
    min_replica_rows: int = 200
    refit_classifier: bool = True  # when rows carry label_category; False keeps the current classifier
    refit_cache: bool = False  # training.cache_train.train_cache on the logs (slow: encodes every prompt)
    max_classifier_rows: int = 20_000  # distinct labelled prompts (uniform sample) for the classifier refit
    seed: int = 0
    bundle_version: str | None = None


class Backend(Protocol):
    name: str

    def read_table(self, logs: str, step: Step) -> pa.Table: ...
    def policy_trainers(self, models: Sequence[str], seed: int) -> list[PolicyTrainer]: ...
    # optional: def prefit(self, data: LoggedBandit, seed: int) -> None  (train every tree fit in one go)
    def bootstrap(self, terms: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray: ...


# ---------------------------------------------------------------------------------------------- reading

def list_shards(logs: str) -> tuple[list[str], list[str], Any]:
    """(log shards, feedback shards, filesystem) under a local directory or an object-store URI."""
    import pyarrow.fs as pafs

    if "://" in logs:
        fs, root = pafs.FileSystem.from_uri(logs)
    else:
        fs, root = pafs.LocalFileSystem(), str(Path(logs).resolve())
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"logs not found: {logs}")
    if info.type == pafs.FileType.File:
        return [root], [], fs
    files = sorted(f.path for f in fs.get_file_info(pafs.FileSelector(root, recursive=True))
                   if f.type == pafs.FileType.File and f.path.endswith(".parquet"))
    feedback = [f for f in files if f.rsplit("/", 1)[-1].startswith("feedback-")]
    return [f for f in files if f not in set(feedback)], feedback, fs


def validated_columns(table: pa.Table, source: str) -> pa.Table:
    """``router.log_schema.validate_table`` on one shard, then only the columns the job uses."""
    from router.log_schema import validate_table

    return validate_table(table, source=source).select(list(KEEP_COLUMNS))


def read_feedback_any(files: Sequence[str], fs: Any) -> pa.Table:
    import pyarrow.parquet as pq

    from router.log_schema import FEEDBACK_SCHEMA, validate_feedback

    tables = [validate_feedback(pq.read_table(f, filesystem=fs), source=f) for f in files]
    return pa.concat_tables(tables) if tables else FEEDBACK_SCHEMA.empty_table()


class LocalBackend:
    """Everything in this process; shards are read and validated one at a time (bounded memory)."""

    name = "local"

    def read_table(self, logs: str, step: Step) -> pa.Table:
        import pyarrow.parquet as pq

        files, _, fs = list_shards(logs)
        if not files:
            raise LogSchemaError(f"no Parquet log shards (*.parquet) found under {logs}")
        step(f"reading {len(files)} log shard(s) from {logs}")
        parts = []
        for f in files:
            try:
                t = pq.read_table(f, filesystem=fs)
            except (pa.ArrowInvalid, OSError) as e:
                raise LogSchemaError(f"{f}: not a readable Parquet file: {e}") from e
            parts.append(validated_columns(t, f))
        return pa.concat_tables(parts)

    def policy_trainers(self, models: Sequence[str], seed: int) -> list[PolicyTrainer]:
        return default_trainers(models, seed)

    def bootstrap(self, terms: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray:
        from training.retrain_ope import run_bootstrap_local

        return run_bootstrap_local(terms, n_bootstrap, seed)


def load_logs(logs: str, backend: Backend, step: Step) -> pa.Table:
    """Validated logs joined with late feedback, sorted by (timestamp_s, request_id)."""
    from router.log_schema import join_feedback

    table = backend.read_table(logs, step)
    _, feedback_files, fs = list_shards(logs)
    if feedback_files:
        step(f"joining {len(feedback_files)} feedback shard(s)")
        table = join_feedback(table, read_feedback_any(feedback_files, fs))
    order = pc.sort_indices(table, sort_keys=[("timestamp_s", "ascending"), ("request_id", "ascending")])
    return table.take(order)


# ---------------------------------------------------------------------------------------------- guards

@dataclass
class Guard:
    ok: bool
    detail: str
    value: float | None = None
    threshold: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def category_mix(categories: Sequence[str] | pa.ChunkedArray) -> dict[str, float]:
    arr = categories if isinstance(categories, (pa.ChunkedArray, pa.Array)) else pa.array(list(categories))
    counts = pc.value_counts(arr).to_pylist()
    total = sum(c["counts"] for c in counts) or 1
    return {c["values"]: c["counts"] / total for c in sorted(counts, key=lambda c: c["values"])}


def total_variation(p: dict[str, float], q: dict[str, float]) -> float:
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def decided_rows(table: pa.Table) -> pa.Table:
    """Rounds a policy decided and a model answered: feedback is expected for each."""
    keep = pc.and_(pc.invert(table.column("cache_hit")), pc.is_null(table.column("error")))
    keep = pc.and_(keep, pc.invert(pc.is_in(table.column("policy"), pa.array(NOT_DRAWN_POLICIES))))
    return table.filter(keep)


def data_guards(table: pa.Table, current: Bundle, s: RetrainSettings) -> dict[str, Guard]:
    """Guards that need only the logs (before any fitting). ``schema`` is added by the caller."""
    guards: dict[str, Guard] = {}
    decided = decided_rows(table)
    n_dec = decided.num_rows
    missing = decided.column("quality").null_count / n_dec if n_dec else 1.0
    guards["missing_feedback"] = Guard(
        missing <= s.max_missing_feedback,
        f"{missing:.1%} of {n_dec} model-decided rounds have no quality (max {s.max_missing_feedback:.0%})",
        missing, s.max_missing_feedback)
    rows = bandit_rows(table)
    prop = rows.column("propensity").to_numpy() if rows.num_rows else np.array([1.0])
    low = float(np.mean(prop < s.min_propensity))
    guards["propensity_range"] = Guard(
        low <= s.max_low_propensity_frac and bool(np.all((prop > 0) & (prop <= 1 + 1e-6))),
        f"propensities in [{prop.min():.4g}, {prop.max():.4g}]; {low:.2%} below {s.min_propensity} "
        f"(max {s.max_low_propensity_frac:.0%})", low, s.max_low_propensity_frac)
    explored = int(np.sum(prop < 1.0 - 1e-6)) if rows.num_rows else 0
    guards["exploration"] = Guard(
        explored >= s.min_explored_rows,
        f"{explored} of {rows.num_rows} rounds were randomised by the logger (propensity < 1; need "
        f">= {s.min_explored_rows}); without exploration no policy but the logger's can be evaluated",
        float(explored), float(s.min_explored_rows))
    mix = category_mix(table.column("category"))
    ref = (current.manifest.metrics.get("retrain") or {}).get("category_mix")
    source = "current bundle's training logs"
    if not ref:
        cut = int(table.num_rows * (1 - s.holdout_frac))
        ref, mix = category_mix(table.column("category").slice(0, cut)), category_mix(table.column("category").slice(cut))
        source = "older (training) part of these logs"
    tv = total_variation(mix, ref)
    guards["category_drift"] = Guard(
        tv <= s.max_category_drift,
        f"category mix differs from the {source} by total variation {tv:.3f} (max {s.max_category_drift})",
        tv, s.max_category_drift)
    return guards


# ---------------------------------------------------------------------------------------------- fitting

def time_split(rows: pa.Table, holdout_frac: float) -> tuple[pa.Table, pa.Table]:
    cut = int(round(rows.num_rows * (1 - holdout_frac)))
    return rows.slice(0, cut), rows.slice(cut)


def subsample(table: pa.Table, max_rows: int, seed: int) -> pa.Table:
    """Uniform random ``max_rows`` rows (sorted, so time order is kept) when the table is larger."""
    if table.num_rows <= max_rows:
        return table
    idx = np.sort(np.random.default_rng(seed).choice(table.num_rows, size=max_rows, replace=False))
    return table.take(pa.array(idx))


def refit_classifier(train: pa.Table, current: Bundle, s: RetrainSettings) -> tuple[CategoryClassifier, Any | None, str]:
    """Refit when enough rows carry ``label_category`` (>= 50, >= 2 classes); else keep the current one."""
    if not s.refit_classifier:
        return (CategoryClassifier.from_files(current.path, current.manifest.classifier), None,
                "kept (refit disabled)")
    labelled = train.filter(pc.is_valid(train.column("label_category")))
    cfg = current.manifest.router
    if labelled.num_rows >= 50 and len(set(labelled.column("label_category").to_pylist())) >= 2:
        data = labelled_from_logs(subsample(labelled, s.max_classifier_rows, s.seed))
        fitted = fit_classifier(data, cfg, s.seed)
        return fitted.load(), fitted, f"refitted on {labelled.num_rows} labelled rounds"
    return (CategoryClassifier.from_files(current.path, current.manifest.classifier), None,
            f"kept (only {labelled.num_rows} rounds carry label_category)")


def replica_telemetry(table: pa.Table) -> Any | None:
    """Telemetry (``training.replica_sim.Telemetry``) from logged replica snapshots with a TTFT."""
    from router.replica import ReplicaRequest, has_stats, prompt_block_hashes, replica_features
    from training.replica_sim import Telemetry

    t = table.filter(pc.and_(pc.is_valid(table.column("replica_stats")), pc.is_valid(table.column("ttft_ms"))))
    xs, ys, names = [], [], []
    for stats_json, ttft, prompt, n_in, replica in zip(
            t.column("replica_stats").to_pylist(), t.column("ttft_ms").to_pylist(), t.column("prompt").to_pylist(),
            t.column("input_tokens").to_pylist(), t.column("model").to_pylist()):
        try:
            stats = json.loads(stats_json)
        except json.JSONDecodeError:
            continue
        if not has_stats(stats) or not math.isfinite(ttft):
            continue
        xs.append(replica_features(stats, ReplicaRequest(int(n_in), prompt_block_hashes(prompt))))
        ys.append(ttft / 1000.0)
        names.append(f"logs/{replica}")
    if not xs:
        return None
    return Telemetry(np.stack(xs), np.asarray(ys), np.zeros(len(ys), dtype=np.int64), names)


def refit_replica_model(table: pa.Table, s: RetrainSettings) -> tuple[dict[str, bytes], str]:
    from router.replica import REPLICA_MANIFEST_FILE, REPLICA_MODEL_FILE
    from training.replica_model import train_replica_model

    tel = replica_telemetry(table)
    if tel is None or tel.n < s.min_replica_rows:
        return {}, f"not refitted ({0 if tel is None else tel.n} logged replica snapshots with a TTFT; need {s.min_replica_rows})"
    with tempfile.TemporaryDirectory() as d:
        training = train_replica_model(tel, Path(d), seed=s.seed, info={"source": "turnout retrain"})
        files = {n: (Path(d) / n).read_bytes() for n in (REPLICA_MODEL_FILE, REPLICA_MANIFEST_FILE)}
    return files, f"refitted on {tel.n} logged dispatches (held-out r2 {training['holdout'].get('r2_log', float('nan')):.3f})"


def refit_cache_policy(logs: str, current: Bundle, s: RetrainSettings, step: Step) -> tuple[dict[str, bytes], str]:
    """The cache policy files: refitted by ``training.cache_train.train_cache`` (helper of ``turnout
    train cache``) when ``s.refit_cache``, else the current bundle's unchanged. Off by default: it
    embeds every logged prompt with the sentence encoder (~5 ms each), which does not scale to
    millions of rows; run it on a sample of logs when the cache rules need refreshing."""
    if not s.refit_cache:
        return {}, "carried over (refit_cache off; `turnout retrain --refit-cache` refits it)"
    from router.cache import CachePolicy
    from training.cache_train import train_cache

    with tempfile.TemporaryDirectory() as d:
        policy = train_cache(logs, current.manifest.router, Path(d), seed=s.seed, step=step)
        names = ["cache_policy.json"] + ([policy.verifier.file] if policy.verifier else [])
        if policy.encoder is not None:
            names += [policy.encoder.model_file, policy.encoder.tokenizer_file]
        files = {n: (Path(d) / n).read_bytes() for n in names}
    CachePolicy.model_validate_json(files["cache_policy.json"])
    return files, f"refitted ({len(policy.categories)} category rules)"


# ---------------------------------------------------------------------------------------------- the job

@dataclass
class Outcome:
    """The job's result (``as_dict`` is the ``--json`` output)."""

    decision: str
    reason: str
    guards: dict[str, Guard]
    current: dict[str, Any] = field(default_factory=dict)
    candidate: dict[str, Any] = field(default_factory=dict)
    difference: dict[str, float] = field(default_factory=dict)
    bundle: str | None = None
    report: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return EXIT_PROMOTE if self.decision == "promote" else EXIT_HOLD

    def as_dict(self) -> dict[str, Any]:
        return {"decision": self.decision, "reason": self.reason, "exit_code": self.exit_code,
                "current": self.current, "candidate": self.candidate, "difference": self.difference,
                "guards": {k: g.as_dict() for k, g in self.guards.items()}, "bundle": self.bundle,
                "report": self.report, **self.details}


def _hold_on_guards(guards: dict[str, Guard], **kw: Any) -> Outcome | None:
    failed = [k for k, g in guards.items() if not g.ok]
    if not failed:
        return None
    reason = "; ".join(f"guard {k} failed: {guards[k].detail}" for k in failed)
    return Outcome("hold", reason, guards, **kw)


def retrain(logs: str | Path, current: str | Path | Bundle, out: str | Path, *, settings: RetrainSettings | None = None,
            backend: Backend | None = None, step: Step = lambda _: None) -> Outcome:
    """Run the whole job; writes ``out/bundle`` and ``out/report.md`` (+ PNGs) and returns the outcome."""
    s = settings or RetrainSettings()
    backend = backend or LocalBackend()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cur = current if isinstance(current, Bundle) else load_bundle(current)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    details: dict[str, Any] = {"backend": backend.name, "timings_s": timings, "settings": asdict(s)}

    local = Path(logs) if "://" not in str(logs) else None
    if local is not None and not (local.is_file() or (local.is_dir() and any(local.rglob("*.parquet")))):
        # nothing to read is the caller's mistake (exit 2), not a "hold" a nightly job would shrug off
        raise ConfigError(f"--logs {logs}: no Parquet shards (*.parquet) found")
    try:
        table = load_logs(str(logs), backend, step)
        guards = {"schema": Guard(True, f"{table.num_rows} records valid")}
    except LogSchemaError as e:
        guards = {"schema": Guard(False, str(e))}
        return _finish(Outcome("hold", f"guard schema failed: {e}", guards, details=details), out, None, step)
    timings["read"] = time.perf_counter() - t0
    details["n_records"] = table.num_rows
    guards.update(data_guards(table, cur, s))
    held = _hold_on_guards(guards, details=details)
    if held:
        return _finish(held, out, None, step)

    cfg = cur.manifest.router
    models = cur.manifest.policy.models
    rows = bandit_rows(table)
    train, hold = time_split(rows, s.holdout_frac)
    if hold.num_rows > s.max_ope_rows:
        hold = hold.slice(hold.num_rows - s.max_ope_rows)
    fit_rows = subsample(train, s.max_fit_rows, s.seed)
    details["n"] = {"records": table.num_rows, "bandit_rounds": rows.num_rows, "train": train.num_rows,
                    "fit": fit_rows.num_rows, "holdout": hold.num_rows}

    t = time.perf_counter()
    step(f"classifier: {fit_rows.num_rows} training rounds")
    classifier, fitted_clf, clf_note = refit_classifier(fit_rows, cur, s)
    timings["classifier"] = time.perf_counter() - t

    t = time.perf_counter()
    step(f"policy: featurizing {fit_rows.num_rows} rounds and fitting gbdt-dm, gbdt-ips, linucb ({backend.name})")
    feats = context_features(fit_rows, classifier)
    data = logged_bandit(fit_rows, feats, models)
    prefit = getattr(backend, "prefit", None)
    if prefit is not None:
        prefit(data, s.seed)
    policy: FittedPolicy = fit_policy(data, cfg.preference, seed=s.seed, trainers=backend.policy_trainers(models, s.seed),
                                      online=cur.manifest.policy.online)  # the operator's online-correction limits carry over
    timings["policy"] = time.perf_counter() - t

    t = time.perf_counter()
    cache_files, cache_note = refit_cache_policy(str(logs), cur, s, step)
    step("replica model from logged replica_stats")
    replica_files, replica_note = refit_replica_model(train, s)
    timings["cache_and_replicas"] = time.perf_counter() - t

    files = {n: cur.file(n).read_bytes() for n in cur.manifest.files}
    if fitted_clf is not None:
        for n in cur.manifest.classifier.files:
            files.pop(n, None)
        files.update(fitted_clf.files)
    files.update(policy.files)
    files.update(cache_files)
    files.update(replica_files)
    metrics = {**cur.manifest.metrics, "policy": policy.metrics,
               # the mix of every record in the training time window (not only bandit rounds): the next
               # run's drift guard compares it with the mix of every record it reads
               "retrain": {"parent": cur.version,
                           "category_mix": category_mix(time_split(table, s.holdout_frac)[0].column("category")),
                           "n_train": train.num_rows, "backend": backend.name}}
    if fitted_clf is not None:
        metrics["classifier"] = fitted_clf.metrics
    step("writing the candidate bundle")
    cand = write_bundle(out / "bundle", files, router=cfg,
                        classifier=fitted_clf.info if fitted_clf is not None else cur.manifest.classifier,
                        policy=policy.info, metrics=metrics, bundle_version=s.bundle_version)
    details["steps"] = {"classifier": clf_note, "policy": f"{policy.metrics['chosen']} on {data.n} rounds",
                        "cache_policy": cache_note, "replica_model": replica_note}

    t = time.perf_counter()
    step(f"off-policy evaluation on {hold.num_rows} held-out rounds ({s.n_bootstrap} bootstrap resamples)")
    comparison = compare(cur, cand, hold, cur_classifier=classifier if fitted_clf is None else None,
                         cand_classifier=classifier, backend=backend, s=s)
    timings["ope"] = time.perf_counter() - t
    guards["min_ess"] = ess_guard(comparison, s)
    timings["total"] = time.perf_counter() - t0
    return _finish(decide(guards, comparison, s, **outcome_fields(cur, cand, comparison, details)), out, comparison, step)


def compare(current: Bundle, candidate: Bundle, hold: pa.Table, *, cur_classifier: CategoryClassifier | None,
            cand_classifier: CategoryClassifier, backend: Backend, s: RetrainSettings) -> dict[str, Any]:
    """Both policies on the same held-out rounds, per metric (``retrain_ope.METRICS``): IPS, SNIPS, DM
    and DR with CIs and the paired CI of the DR difference; ESS; per-category utility; calibration of
    each quality head on the logged action."""
    models = current.manifest.policy.models
    if tuple(candidate.manifest.policy.models) != tuple(models):
        raise ValueError("candidate and current bundles have different model catalogues; OPE needs the same actions")
    cur_clf = cur_classifier or CategoryClassifier.from_files(current.path, current.manifest.classifier)
    scales = Scales.of(current)
    mask, action = candidate_mask(hold, models)
    rewards = logged_rewards(hold, scales)
    prop = hold.column("propensity").to_numpy().astype(np.float64)
    f_cur = context_features(hold, cur_clf)
    f_cand = f_cur if cand_classifier is cur_clf else context_features(hold, cand_classifier)
    t_cur, t_cand = bundle_target(current, f_cur, mask, scales), bundle_target(candidate, f_cand, mask, scales)
    batches = {m: (ope_batch_from_target(t_cur, action, rewards[m], prop, m),
                   ope_batch_from_target(t_cand, action, rewards[m], prop, m)) for m in METRICS}
    terms, names = term_matrix(batches)
    reps = backend.bootstrap(terms, s.n_bootstrap, s.seed)
    metrics = summarize(terms, reps, names, s.alpha)
    b_cur, b_cand = batches["quality"]
    return {"metrics": metrics, "gate_metric": GATE_METRIC,
            "ess": {"current": effective_sample_size(b_cur), "candidate": effective_sample_size(b_cand)},
            "per_category": per_category(hold.column("category").to_pylist(), terms, names, GATE_METRIC),
            "calibration": {"current": calibration(b_cur.q_logged, b_cur.reward),
                            "candidate": calibration(b_cand.q_logged, b_cand.reward)},
            "logged_value": {m: float(r.mean()) if r.size else float("nan") for m, r in rewards.items()},
            "scales": {"preference": scales.preference.model_dump(), "ref_cost_usd": scales.ref_cost_usd,
                       "ref_latency_ms": scales.ref_latency_ms},
            "n_rounds": int(hold.num_rows), "n_bootstrap_chunks": len(chunk_plan(s.n_bootstrap))}


def decide(guards: dict[str, Guard], comparison: dict[str, Any], s: RetrainSettings, **kw: Any) -> Outcome:
    """The gate: hold on any failed guard; promote iff the CI of the DR utility difference lies above
    ``min_improvement``; hold otherwise."""
    held = _hold_on_guards(guards, **kw)
    if held:
        return held
    g = comparison["metrics"][GATE_METRIC]
    d = g["difference"]
    pct = int(round(100 * (1 - s.alpha)))
    text = (f"DR {GATE_METRIC} {g['candidate']['dr']['estimate']:.4f} vs current {g['current']['dr']['estimate']:.4f}, "
            f"difference {d['estimate']:+.4f} ({pct}% CI [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}])")
    if d["ci_low"] > s.min_improvement:
        return Outcome("promote", f"candidate is better: {text} lies above {s.min_improvement}", guards, **kw)
    return Outcome("hold", f"no significant improvement: {text} does not lie above {s.min_improvement}", guards, **kw)


def ess_guard(comparison: dict[str, Any], s: RetrainSettings) -> Guard:
    ess = comparison["ess"]
    return Guard(min(ess.values()) >= s.min_ess,
                 f"effective sample size of the importance weights: current {ess['current']:.0f}, candidate "
                 f"{ess['candidate']:.0f} (min {s.min_ess:.0f})", min(ess.values()), s.min_ess)


def outcome_fields(cur: Bundle, cand: Bundle, comparison: dict[str, Any], details: dict[str, Any]) -> dict[str, Any]:
    g = comparison["metrics"][GATE_METRIC]
    details = {**details, "metric": GATE_METRIC, "ope": {k: v for k, v in comparison.items()}}
    return {"current": {"bundle_version": cur.version, **g["current"], "ess": comparison["ess"]["current"]},
            "candidate": {"bundle_version": cand.version, **g["candidate"], "ess": comparison["ess"]["candidate"]},
            "difference": g["difference"], "bundle": str(cand.path), "details": details}


def _finish(outcome: Outcome, out: Path, comparison: dict[str, Any] | None, step: Step) -> Outcome:
    from training.retrain_report import write_report

    step(f"decision: {outcome.decision.upper()} -- {outcome.reason}")
    outcome.report = str(write_report(outcome, comparison, out))
    (out / "retrain.json").write_text(json.dumps(outcome.as_dict(), indent=2, default=str) + "\n", encoding="utf-8")
    return outcome
