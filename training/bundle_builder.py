"""``turnout train bundle``: logged traffic (+ optional labelled prompts) -> a verified bundle.

Order matters: the classifier is fitted first and exported; the policy's features are then computed
by running *the exported ONNX classifier* through ``router.features.featurize`` -- the very code path
serving runs -- so the policy never sees features serving cannot reproduce.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from router.bundle import Bundle, PolicyInfo, write_bundle
from router.cache import CachePolicy
from router.classifier import CategoryClassifier
from router.config import RouterConfig
from router.features import featurize
from router.log_schema import read_logs
from router.onnx_session import make_session
from training.classifier import CategoryTrainer
from training.policy import RewardModelTrainer

Step = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class TrainingSet:
    texts: list[str]
    labels: list[str]


def labelled_from_logs(table: pa.Table) -> TrainingSet:
    prompts, labels = table.column("prompt").to_pylist(), table.column("label_category").to_pylist()
    pairs = {(p, l) for p, l in zip(prompts, labels) if l is not None}
    return TrainingSet([p for p, _ in sorted(pairs)], [l for _, l in sorted(pairs)])


def labelled_from_jsonl(paths: Sequence[Path]) -> TrainingSet:
    from training.formats import read_jsonl

    texts, labels = [], []
    for path in paths:
        for row in read_jsonl(path, "labelled"):
            texts.append(row.text)
            labels.append(row.category)
    return TrainingSet(texts, labels)


def split_holdout(n: int, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.random.default_rng(seed).permutation(n)
    cut = int(n * (1 - frac))
    return idx[:cut], idx[cut:]


def fit_classifier(data: TrainingSet, cfg: RouterConfig, seed: int) -> tuple[bytes, dict[str, float]]:
    train, hold = split_holdout(len(data.texts), 0.2, seed)
    texts, labels = np.array(data.texts, dtype=object), np.array(data.labels, dtype=object)
    probe = CategoryTrainer(cfg.taxonomy, seed=seed).fit(texts[train], labels[train])
    pred = np.argmax(probe.predict_proba(texts[hold]), axis=1)
    truth = np.array([cfg.taxonomy.index(c) for c in labels[hold]])
    final = CategoryTrainer(cfg.taxonomy, seed=seed).fit(texts, labels)
    return final.to_onnx(), {"holdout_accuracy": float(np.mean(pred == truth)), "n_train": len(texts)}


def policy_features(table: pa.Table, classifier: CategoryClassifier, batch: int = 2048) -> np.ndarray:
    prompts, turns = table.column("prompt").to_pylist(), table.column("n_turns").to_pylist()
    probs = np.concatenate([classifier.predict_proba(prompts[i:i + batch]) for i in range(0, len(prompts), batch)])
    return np.stack([featurize(p, pr, t) for p, pr, t in zip(prompts, probs, turns)])


def policy_rows(table: pa.Table) -> pa.Table:
    """Rows a reward model may learn from: a model ran, succeeded, and quality is known."""
    import pyarrow.compute as pc

    keep = pc.and_(pc.and_(pc.invert(table.column("cache_hit")), pc.is_null(table.column("error"))),
                   pc.is_valid(table.column("quality")))
    return table.filter(keep)


def fit_policy(table: pa.Table, features: np.ndarray, cfg: RouterConfig, seed: int) -> tuple[bytes, PolicyInfo, dict]:
    models, chosen = cfg.model_names, np.array(table.column("model").to_pylist())
    quality = np.array(table.column("quality").to_pylist(), dtype=np.float64)
    train, hold = split_holdout(len(chosen), 0.2, seed)
    probe = RewardModelTrainer(models).fit(features[train], chosen[train], quality[train])
    pred = probe.predict(features[hold])
    cols = np.array([models.index(m) for m in chosen[hold]])
    mae = float(np.mean(np.abs(pred[np.arange(len(hold)), cols] - quality[hold])))
    final = RewardModelTrainer(models).fit(features, chosen, quality)
    info = PolicyInfo(kind="ridge_reward_model", models=models,
                      mean_output_tokens=_mean_by_model(table, "output_tokens", models, 200.0),
                      mean_latency_ms=_mean_by_model(table, "latency_ms", models, 1000.0))
    return final.to_onnx(), info, {"holdout_quality_mae": mae, "n_train": int(len(chosen))}


def _mean_by_model(table: pa.Table, column: str, models: Sequence[str], default: float) -> dict[str, float]:
    chosen, values = table.column("model").to_pylist(), table.column(column).to_pylist()
    out = {}
    for m in models:
        xs = [v for c, v in zip(chosen, values) if c == m and v is not None]
        out[m] = float(np.mean(xs)) if xs else default
    return out


def build_bundle(logs: str | Path, cfg: RouterConfig, out: str | Path, *, labelled: Sequence[Path] = (),
                 seed: int = 0, bundle_version: str | None = None, step: Step = lambda _: None) -> Bundle:
    step(f"reading logs from {logs}")
    table = read_logs(logs)
    data = labelled_from_logs(table)
    extra = labelled_from_jsonl(list(labelled))
    data = TrainingSet(data.texts + extra.texts, data.labels + extra.labels)
    step(f"fitting the category classifier on {len(data.texts)} labelled prompts")
    clf_bytes, clf_metrics = fit_classifier(data, cfg, seed)
    classifier = CategoryClassifier(make_session(clf_bytes), cfg.taxonomy)
    rows = policy_rows(table)
    step(f"featurizing {rows.num_rows} logged outcomes with the exported classifier")
    features = policy_features(rows, classifier)
    step("fitting the per-model reward model")
    pol_bytes, info, pol_metrics = fit_policy(rows, features, cfg, seed)
    cache_json = CachePolicy.from_router_config(cfg).model_dump_json(indent=2).encode()
    files = {"classifier.onnx": clf_bytes, "policy.onnx": pol_bytes, "cache_policy.json": cache_json}
    metrics = {"classifier": clf_metrics, "policy": pol_metrics, "logs_rows": table.num_rows}
    step(f"writing bundle to {out}")
    return write_bundle(out, files, router=cfg, policy=info, metrics=metrics, bundle_version=bundle_version)


def metrics_json(bundle: Bundle) -> str:
    return json.dumps(bundle.manifest.metrics, indent=2)
