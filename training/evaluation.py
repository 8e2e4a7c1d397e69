"""Evaluation of bundles: classifier quality and latency, and off-policy value of the model policy."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from router.bundle import Bundle
from router.config import Preference
from router.decision import Router
from router.features import featurize
from router.log_schema import read_logs
from router.policy import HeadPredictions, action_probs, utilities
from training.bundle_builder import bandit_rows
from training.ope import OPEBatch, evaluate


def classification_report(truth: Sequence[str], pred: Sequence[str], classes: Sequence[str]) -> dict[str, Any]:
    t, p = np.asarray(truth), np.asarray(pred)
    per_class = {}
    for c in classes:
        tp, fp, fn = int(np.sum((p == c) & (t == c))), int(np.sum((p == c) & (t != c))), int(np.sum((p != c) & (t == c)))
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per_class[c] = {"precision": prec, "recall": rec, "f1": f1, "support": int(np.sum(t == c))}
    present = [c for c in classes if per_class[c]["support"] > 0]
    return {"accuracy": float(np.mean(t == p)) if len(t) else 0.0,
            "macro_f1": float(np.mean([per_class[c]["f1"] for c in present])) if present else 0.0,
            "per_class": per_class, "n": int(len(t))}


def ope_batch(bundle: Bundle, table: pa.Table, preference: Preference | None = None) -> OPEBatch:
    """Target = the bundle's policy with its own exploration, restricted to each logged round's
    candidates; reward = logged quality; DM/DR use the bundle's own quality head."""
    router = Router(bundle)
    cfg, info = bundle.manifest.router, bundle.manifest.policy
    pref = preference or cfg.preference
    prompts, turns = table.column("prompt").to_pylist(), table.column("n_turns").to_pylist()
    probs = router.classifier.predict_proba(prompts)
    heads = router.scorer.predict_batch(np.stack([featurize(p, pr, t) for p, pr, t in zip(prompts, probs, turns)]))
    target_prob, q_logged, q_target = [], [], []
    for i, (cands, model) in enumerate(zip(table.column("candidates").to_pylist(), table.column("model").to_pylist())):
        idx = [info.models.index(m) for m in cands]
        h = HeadPredictions(heads.quality[i], heads.cost_usd[i], heads.latency_ms[i]).take(idx)
        pi = action_probs(utilities(h, pref, info.ref_cost_usd, info.ref_latency_ms), cfg.exploration)
        j = cands.index(model)
        q = np.clip(h.quality, 0.0, 1.0)
        target_prob.append(pi[j])
        q_logged.append(q[j])
        q_target.append(float(np.dot(pi, q)))
    return OPEBatch(reward=np.array(table.column("quality").to_pylist(), dtype=np.float64),
                    propensity=np.array(table.column("propensity").to_pylist(), dtype=np.float64),
                    target_prob=np.array(target_prob), q_logged=np.array(q_logged), q_target=np.array(q_target))


def run_ope(bundle: Bundle, logs: str | Path, *, n_bootstrap: int = 200, seed: int = 0) -> dict[str, Any]:
    table = bandit_rows(read_logs(logs))
    if table.num_rows == 0:
        raise ValueError(f"{logs}: no logged rounds with quality and a model decision to evaluate")
    b = ope_batch(bundle, table)
    est = evaluate(b, n_bootstrap=n_bootstrap, seed=seed)
    return {"n": int(table.num_rows), "logged_policy_value": float(np.mean(b.reward)),
            "effective_sample_size": float(b.weight.sum() ** 2 / max(float((b.weight ** 2).sum()), 1e-12)),
            "estimates": {k: {"estimate": v.value, "ci_low": v.low, "ci_high": v.high} for k, v in est.items()},
            "bundle_version": bundle.version}
