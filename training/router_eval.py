"""``turnout eval router``: judge the model policy on a full-information outcome table.

1. On the train part, simulate a uniform-random logging policy: each prompt reveals only the chosen
   model's outcome, with propensity ``1/K``. Train the policy from those logs alone (``fit_policy``).
2. On the test part, sweep the cost preference and report the policy's true quality and cost (every
   model's outcome is known there), next to every single model, the oracle and the same policy class
   trained on full information (the ceiling partial feedback can reach).
3. Off-policy evaluation: simulate uniform logs on the test part and estimate the greedy policy's
   quality with IPS/SNIPS/DM/DR/switch-DR; ``true`` is its actual quality on the full table.

Context features are ``router.features.featurize(prompt, one-hot category)``, the serving features
with the table's category standing in for the classifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router.config import Preference
from router.features import featurize
from router.policy import utilities
from training.formats import DataFormatError, OutcomeRow, read_jsonl
from training.ope import DEFAULT_ESTIMATORS, OPEBatch, estimate_interval
from training.policy import GBDTPolicyTrainer, LinUCBTrainer, LoggedBandit, PolicyTrainer, fit_policy

COST_SWEEP = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)
OPE_PREFERENCE = 0.1


@dataclass(frozen=True, slots=True)
class OutcomeTable:
    prompts: list[str]
    categories: list[str]
    models: tuple[str, ...]
    quality: np.ndarray  # (n, K), NaN where the model has no outcome
    cost: np.ndarray

    @classmethod
    def from_rows(cls, rows: Sequence[OutcomeRow], models: Sequence[str] | None = None) -> OutcomeTable:
        models = tuple(models or sorted({m for r in rows for m in r.outcomes}))
        q = np.full((len(rows), len(models)), np.nan)
        c = np.full((len(rows), len(models)), np.nan)
        for i, r in enumerate(rows):
            for j, m in enumerate(models):
                o = r.outcomes.get(m)
                if o is not None:
                    q[i, j], c[i, j] = o.quality, o.cost_usd
        return cls([r.prompt for r in rows], [r.category or "unknown" for r in rows], models, q, c)

    @property
    def available(self) -> np.ndarray:
        return ~np.isnan(self.quality)

    def features(self, categories: Sequence[str]) -> np.ndarray:
        eye = np.eye(len(categories), dtype=np.float32)
        return np.stack([featurize(p, eye[categories.index(c)] if c in categories else np.zeros(len(categories)))
                         for p, c in zip(self.prompts, self.categories)])


def uniform_logs(table: OutcomeTable, x: np.ndarray, rng: np.random.Generator) -> LoggedBandit:
    """Partial feedback: one uniformly drawn available model per prompt, propensity 1/K_available."""
    avail = table.available
    action = np.array([rng.choice(np.flatnonzero(a)) for a in avail])
    rows = np.arange(len(action))
    return LoggedBandit(x, action, 1.0 / avail.sum(axis=1), table.quality[rows, action], table.cost[rows, action],
                        np.zeros(len(action)), table.models)


def full_information_logs(table: OutcomeTable, x: np.ndarray) -> LoggedBandit:
    i, a = np.nonzero(table.available)
    return LoggedBandit(x[i], a, np.ones(len(a)), table.quality[i, a], table.cost[i, a], np.zeros(len(a)), table.models)


def choose_greedy(trainer: PolicyTrainer, x: np.ndarray, available: np.ndarray, cost_weight: float,
                  ref_cost: float) -> np.ndarray:
    u = utilities(trainer.predict(x), Preference(quality=1.0, cost=cost_weight, latency=0.0), ref_cost, 1.0)
    return np.argmax(np.where(available, u, -np.inf), axis=1)


def curve(trainer: PolicyTrainer, table: OutcomeTable, x: np.ndarray, ref_cost: float,
          sweep: Sequence[float] = COST_SWEEP) -> list[dict[str, float]]:
    rows, out = np.arange(len(table.prompts)), []
    for w in sweep:
        a = choose_greedy(trainer, x, table.available, w, ref_cost)
        out.append({"preference": w, "quality": float(np.mean(table.quality[rows, a])),
                    "cost": float(np.mean(table.cost[rows, a]))})
    return out


def single_models(table: OutcomeTable) -> dict[str, dict[str, float]]:
    return {m: {"quality": float(np.nanmean(table.quality[:, j])), "cost": float(np.nanmean(table.cost[:, j]))}
            for j, m in enumerate(table.models)}


def oracle(table: OutcomeTable) -> dict[str, float]:
    """Best quality per prompt, the cheapest model among the best."""
    q = np.where(table.available, table.quality, -np.inf)
    c = np.where(table.available, table.cost, np.inf)
    best = np.argmin(np.where(q >= q.max(axis=1, keepdims=True), c, np.inf), axis=1)
    rows = np.arange(len(best))
    return {"quality": float(np.mean(table.quality[rows, best])), "cost": float(np.mean(table.cost[rows, best]))}


def ope_report(trainer: PolicyTrainer, table: OutcomeTable, x: np.ndarray, ref_cost: float, seed: int,
               n_bootstrap: int = 200) -> dict[str, Any]:
    """OPE of the greedy policy's quality at ``OPE_PREFERENCE`` from uniform logs on ``table``."""
    logs = uniform_logs(table, x, np.random.default_rng(seed + 7919))
    target = choose_greedy(trainer, x, table.available, OPE_PREFERENCE, ref_cost)
    q_hat = np.clip(trainer.predict(x).quality, 0.0, 1.0)
    rows = np.arange(len(target))
    batch = OPEBatch(reward=logs.quality, propensity=logs.propensity,
                     target_prob=(target == logs.action).astype(np.float64),
                     q_logged=q_hat[rows, logs.action].astype(np.float64), q_target=q_hat[rows, target].astype(np.float64))
    out: dict[str, Any] = {"preference": {"quality": 1.0, "cost": OPE_PREFERENCE, "latency": 0.0}}
    for est in DEFAULT_ESTIMATORS:
        e = estimate_interval(est, batch, n_bootstrap=n_bootstrap, seed=seed)
        out[est.name] = {"estimate": e.value, "ci_low": e.low, "ci_high": e.high}
    out["true"] = float(np.mean(table.quality[rows, target]))
    return out


def eval_router(train_path: str | Path, test_path: str | Path, *, seed: int = 0,
                sweep: Sequence[float] = COST_SWEEP, n_bootstrap: int = 200) -> dict[str, Any]:
    train_rows, test_rows = read_jsonl(train_path, "outcomes"), read_jsonl(test_path, "outcomes")
    for path, rows in ((train_path, train_rows), (test_path, test_rows)):
        if not rows:
            raise DataFormatError(f"{path}: no outcome rows (expected JSONL of {{prompt, outcomes}})")
    train = OutcomeTable.from_rows(train_rows)
    test = OutcomeTable.from_rows(test_rows, train.models)
    categories = sorted(set(train.categories))
    x_train, x_test = train.features(categories), test.features(categories)
    logs = uniform_logs(train, x_train, np.random.default_rng(seed))
    fitted = fit_policy(logs, Preference(quality=1.0, cost=OPE_PREFERENCE, latency=0.0), seed=seed)
    ref_cost = fitted.info.ref_cost_usd
    full = _same_kind(fitted.trainer, train.models, seed).fit(full_information_logs(train, x_train))
    return {
        "models": list(train.models),
        "n_train": len(train.prompts), "n_test": len(test.prompts), "seed": seed,
        "policy": {"chosen": fitted.metrics["chosen"], "variants_dr_value": fitted.metrics["variants_dr_value"],
                   "ref_cost_usd": ref_cost},
        "curve": curve(fitted.trainer, test, x_test, ref_cost, sweep),
        "full_information": curve(full, test, x_test, ref_cost, sweep),
        "single_models": single_models(test),
        "oracle": oracle(test),
        "ope": ope_report(fitted.trainer, test, x_test, ref_cost, seed, n_bootstrap),
    }


def _same_kind(t: PolicyTrainer, models: Sequence[str], seed: int) -> PolicyTrainer:
    if isinstance(t, GBDTPolicyTrainer):
        return GBDTPolicyTrainer(models, weighting="dm", seed=seed)
    return LinUCBTrainer(models, alpha=getattr(t, "alpha", 0.1))
