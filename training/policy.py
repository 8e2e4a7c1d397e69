"""Model-choice policies learned from bandit feedback, exported as one ONNX graph with three heads.

Variants (``turnout train policy`` fits all and keeps the best by doubly-robust value on held-out
logs):

* ``gbdt-dm`` -- direct method: LightGBM regressors over [context, one-hot model] for quality,
  log cost and log latency, trained on the logged (context, action, outcome) triples.
* ``gbdt-ips`` -- the same, each sample weighted by ``1/propensity`` (clipped at ``max_weight``), which
  undoes the logging policy's preference for some actions when it was not uniform.
* ``linucb`` -- per-model ridge regression with an upper-confidence bonus ``alpha * sqrt(x' A^-1 x)``
  on quality (scored by a hand-built MatMul/Einsum ONNX graph) and per-model ridge heads for log cost
  and log latency.

Heavy tails: cost and latency are winsorised at their 99th percentile and learned in log space
(``PolicyInfo.log_heads``); quality is bounded in [0, 1]. We chose clipping over median-of-means
because it keeps every sample (bandit logs are small per arm) and is one line to audit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from router.config import Preference
from router.errors import NotFittedError
from router.policy import HEADS, HeadPredictions, OnlineBounds, PolicyInfo, utilities

LOG_EPS = {"cost": 1e-7, "latency": 1.0}


@dataclass(frozen=True, slots=True)
class LoggedBandit:
    """Logged rounds as arrays: context (n, d), action index (n,), propensity and outcomes (n,)."""

    features: np.ndarray
    action: np.ndarray
    propensity: np.ndarray
    quality: np.ndarray
    cost: np.ndarray
    latency: np.ndarray
    models: tuple[str, ...]

    def __post_init__(self) -> None:
        n = self.features.shape[0]
        for name in ("action", "propensity", "quality", "cost", "latency"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"LoggedBandit.{name} has shape {getattr(self, name).shape}; expected ({n},)")
        if n == 0:
            raise ValueError("LoggedBandit is empty: no logged rounds with a model decision and known quality")

    @property
    def n(self) -> int:
        return int(self.features.shape[0])

    def take(self, idx: np.ndarray) -> LoggedBandit:
        return LoggedBandit(self.features[idx], self.action[idx], self.propensity[idx], self.quality[idx],
                            self.cost[idx], self.latency[idx], self.models)

    def targets(self) -> dict[str, np.ndarray]:
        """Training targets per head: quality as is; cost/latency winsorised at p99, then log."""
        out = {"quality": self.quality.astype(np.float64)}
        for head, values in (("cost", self.cost), ("latency", self.latency)):
            v = np.clip(values.astype(np.float64), 0.0, np.percentile(values, 99) if len(values) else 0.0)
            out[head] = np.log(v + LOG_EPS[head])
        return out

    def reference_scales(self) -> tuple[float, float]:
        """ref_cost / ref_latency: the largest per-model mean (so a weight is unit-free)."""
        costs = [self.cost[self.action == k].mean() for k in range(len(self.models)) if np.any(self.action == k)]
        lats = [self.latency[self.action == k].mean() for k in range(len(self.models)) if np.any(self.action == k)]
        return max(max(costs, default=0.0), 1e-9), max(max(lats, default=0.0), 1e-6)


class PolicyTrainer(Protocol):
    name: str

    def fit(self, data: LoggedBandit) -> PolicyTrainer: ...
    def predict(self, features: np.ndarray) -> HeadPredictions: ...
    def to_onnx(self) -> bytes: ...
    def info(self, ref_cost: float, ref_latency: float, online: OnlineBounds) -> PolicyInfo: ...


def _model_feature_rows(x: np.ndarray, k: int) -> np.ndarray:
    n = x.shape[0]
    return np.concatenate([np.repeat(x, k, axis=0), np.tile(np.eye(k, dtype=np.float32), (n, 1))], axis=1)


class GBDTPolicyTrainer:
    """LightGBM heads over [context, one-hot model] (``layout="model_feature"``)."""

    def __init__(self, models: Sequence[str], *, weighting: str = "dm", n_estimators: int = 150,
                 n_estimators_cost_latency: int = 60, num_leaves: int = 15, learning_rate: float = 0.05,
                 min_child_samples: int = 10, max_weight: float = 20.0, seed: int = 0) -> None:
        self.models = tuple(models)
        self.weighting = weighting
        self.n_estimators = n_estimators
        self.n_estimators_cost_latency = n_estimators_cost_latency
        self.num_leaves = num_leaves
        self.learning_rate = learning_rate
        self.min_child_samples = min_child_samples
        self.max_weight = max_weight
        self.seed = seed

    @property
    def name(self) -> str:
        return f"gbdt-{self.weighting}"

    def fit(self, data: LoggedBandit) -> GBDTPolicyTrainer:
        import lightgbm as lgb

        k = len(self.models)
        x = np.concatenate([data.features.astype(np.float32), np.eye(k, dtype=np.float32)[data.action]], axis=1)
        w = np.minimum(1.0 / data.propensity, self.max_weight) if self.weighting == "ips" else np.ones(data.n)
        self.heads_ = {}
        for head, y in data.targets().items():
            # cost and latency are near-deterministic in prompt size and model: fewer trees, same fit,
            # and a cheaper decision (ONNX time grows with the total number of trees)
            trees = self.n_estimators if head == "quality" else self.n_estimators_cost_latency
            reg = lgb.LGBMRegressor(n_estimators=trees, num_leaves=self.num_leaves,
                                    learning_rate=self.learning_rate if head == "quality" else 0.12, min_child_samples=self.min_child_samples,
                                    subsample=0.8, subsample_freq=1, colsample_bytree=0.8,
                                    random_state=self.seed, n_jobs=1, verbose=-1)
            self.heads_[head] = reg.fit(x, y, sample_weight=w)
        self.n_context_ = data.features.shape[1]
        return self

    def predict(self, features: np.ndarray) -> HeadPredictions:
        heads = self._fitted()
        x = np.asarray(features, dtype=np.float32)
        rows, n, k = _model_feature_rows(x, len(self.models)), x.shape[0], len(self.models)
        raw = {h: heads[h].booster_.predict(rows, num_threads=1).reshape(n, k) for h in HEADS}
        return HeadPredictions(raw["quality"].astype(np.float32), np.exp(raw["cost"]).astype(np.float32),
                               np.exp(raw["latency"]).astype(np.float32))

    def to_onnx(self) -> bytes:
        from onnxmltools import convert_lightgbm
        from onnxmltools.convert.common.data_types import FloatTensorType

        d = self.n_context_ + len(self.models)
        graphs = {h: convert_lightgbm(m, initial_types=[("features", FloatTensorType([None, d]))], target_opset=15)
                  for h, m in self._fitted().items()}
        return merge_heads(graphs, d).SerializeToString()

    def info(self, ref_cost: float, ref_latency: float, online: OnlineBounds) -> PolicyInfo:
        return PolicyInfo(kind="gbdt", variant=self.weighting, layout="model_feature", models=self.models,
                          n_context=self._n_context(), ref_cost_usd=ref_cost, ref_latency_ms=ref_latency, online=online)

    def _n_context(self) -> int:
        self._fitted()
        return int(self.n_context_)

    def _fitted(self) -> dict[str, Any]:
        if not hasattr(self, "heads_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet; call fit(logged) first")
        return self.heads_


class LinUCBTrainer:
    """Per-model ridge with a UCB bonus on quality (``layout="per_arm"``)."""

    def __init__(self, models: Sequence[str], *, alpha: float = 0.1, ridge: float = 1.0) -> None:
        self.models = tuple(models)
        self.alpha = alpha
        self.ridge = ridge
        self.name = "linucb"

    def fit(self, data: LoggedBandit) -> LinUCBTrainer:
        x = np.concatenate([data.features.astype(np.float64), np.ones((data.n, 1))], axis=1)  # intercept column
        d1, targets = x.shape[1], data.targets()
        k = len(self.models)
        self.a_inv_ = np.zeros((k, d1, d1))
        self.theta_ = {h: np.zeros((k, d1)) for h in HEADS}
        for a in range(k):
            xa = x[data.action == a]
            a_inv = np.linalg.inv(self.ridge * np.eye(d1) + xa.T @ xa)
            self.a_inv_[a] = a_inv
            for h in HEADS:
                self.theta_[h][a] = a_inv @ (xa.T @ targets[h][data.action == a])
        self.n_context_ = data.features.shape[1]
        return self

    def predict(self, features: np.ndarray) -> HeadPredictions:
        self._fitted()
        x = np.concatenate([np.asarray(features, dtype=np.float64), np.ones((features.shape[0], 1))], axis=1)
        bonus = self.alpha * np.sqrt(np.maximum(np.einsum("nd,kde,ne->nk", x, self.a_inv_, x), 0.0))
        q = x @ self.theta_["quality"].T + bonus
        return HeadPredictions(q.astype(np.float32), np.exp(x @ self.theta_["cost"].T).astype(np.float32),
                               np.exp(x @ self.theta_["latency"].T).astype(np.float32))

    def to_onnx(self) -> bytes:
        """quality = x W_q' + b_q + alpha * sqrt(x' Axx x + x' (2 Ax1) + a11); cost/latency = x W' + b.

        The intercept is folded out of the augmented vector [x, 1] so the graph takes plain x.
        """
        self._fitted()
        d = self.n_context_
        axx, ax1, a11 = self.a_inv_[:, :d, :d], self.a_inv_[:, :d, d], self.a_inv_[:, d, d]
        init = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in {
            "Axx": axx, "Ax1x2T": (2.0 * ax1).T, "a11": a11, "alpha": np.array(self.alpha),
            **{f"W_{h}": self.theta_[h][:, :d].T for h in HEADS}, **{f"b_{h}": self.theta_[h][:, d] for h in HEADS},
        }.items()]
        nodes = [
            helper.make_node("Einsum", ["features", "Axx", "features"], ["quad"], equation="nd,kde,ne->nk"),
            helper.make_node("MatMul", ["features", "Ax1x2T"], ["lin"]),
            helper.make_node("Add", ["quad", "lin"], ["v0"]),
            helper.make_node("Add", ["v0", "a11"], ["v1"]),
            helper.make_node("Relu", ["v1"], ["var"]),
            helper.make_node("Sqrt", ["var"], ["sd"]),
            helper.make_node("Mul", ["sd", "alpha"], ["bonus"]),
        ]
        for h in HEADS:
            nodes += [helper.make_node("MatMul", ["features", f"W_{h}"], [f"m_{h}"]),
                      helper.make_node("Add", [f"m_{h}", f"b_{h}"], [f"{h}_mean" if h == "quality" else h])]
        nodes.append(helper.make_node("Add", ["quality_mean", "bonus"], ["quality"]))
        k = len(self.models)
        graph = helper.make_graph(nodes, "linucb_policy",
                                  [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, d])],
                                  [helper.make_tensor_value_info(h, TensorProto.FLOAT, [None, k]) for h in HEADS], init)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
        onnx.checker.check_model(model)
        return model.SerializeToString()

    def info(self, ref_cost: float, ref_latency: float, online: OnlineBounds) -> PolicyInfo:
        self._fitted()
        return PolicyInfo(kind="linucb", variant=f"alpha={self.alpha}", layout="per_arm", models=self.models,
                          n_context=int(self.n_context_), ref_cost_usd=ref_cost, ref_latency_ms=ref_latency, online=online)

    def _fitted(self) -> None:
        if not hasattr(self, "a_inv_"):
            raise NotFittedError("LinUCBTrainer is not fitted yet; call fit(logged) first")


def merge_heads(graphs: dict[str, onnx.ModelProto], n_inputs: int) -> onnx.ModelProto:
    """Join single-input/single-output head graphs into one graph: input ``features``, one output per head."""
    from onnx.compose import add_prefix

    nodes, inits, opsets = [], [], {}
    for head, g in graphs.items():
        p = add_prefix(g, prefix=f"{head}_")
        (inp,), (out,) = p.graph.input, p.graph.output
        nodes.append(helper.make_node("Identity", ["features"], [inp.name]))
        nodes.extend(p.graph.node)
        nodes.append(helper.make_node("Identity", [out.name], [head]))
        inits.extend(p.graph.initializer)
        for o in p.opset_import:
            opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    graph = helper.make_graph(nodes, "policy_heads",
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, n_inputs])],
                              [helper.make_tensor_value_info(h, TensorProto.FLOAT, [None, 1]) for h in graphs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                              ir_version=next(iter(graphs.values())).ir_version)
    onnx.checker.check_model(model)
    return model


def rewards(data: LoggedBandit, pref: Preference, ref_cost: float, ref_latency: float) -> np.ndarray:
    """Observed utility of each logged round under ``pref`` (the quantity the policy maximises)."""
    return pref.quality * data.quality - pref.cost * data.cost / ref_cost - pref.latency * data.latency / ref_latency


def greedy_value_dr(trainer: PolicyTrainer, reward_model: PolicyTrainer, data: LoggedBandit, pref: Preference,
                    ref_cost: float, ref_latency: float) -> float:
    """Doubly-robust estimate of the greedy policy's utility on ``data`` (held-out logs)::

        mean( u_hat[i, pi(i)] + 1[a_i = pi(i)] / p_i * (r_i - u_hat[i, a_i]) )
    """
    u = utilities(trainer.predict(data.features), pref, ref_cost, ref_latency)
    u_hat = utilities(reward_model.predict(data.features), pref, ref_cost, ref_latency)
    rows, best = np.arange(data.n), np.argmax(u, axis=1)
    match = (best == data.action).astype(np.float64)
    r = rewards(data, pref, ref_cost, ref_latency)
    return float(np.mean(u_hat[rows, best] + match / data.propensity * (r - u_hat[rows, data.action])))


@dataclass
class FittedPolicy:
    trainer: PolicyTrainer
    info: PolicyInfo
    files: dict[str, bytes]
    metrics: dict[str, Any] = field(default_factory=dict)


def default_trainers(models: Sequence[str], seed: int) -> list[PolicyTrainer]:
    return [GBDTPolicyTrainer(models, weighting="dm", seed=seed), GBDTPolicyTrainer(models, weighting="ips", seed=seed),
            LinUCBTrainer(models)]


def fit_policy(data: LoggedBandit, pref: Preference, *, seed: int = 0, online: OnlineBounds | None = None,
               trainers: Sequence[PolicyTrainer] | None = None, holdout: float = 0.25) -> FittedPolicy:
    """Fit every variant on a train split, pick the best DR value on the held-out split, refit it on all."""
    ref_cost, ref_latency = data.reference_scales()
    idx = np.random.default_rng(seed).permutation(data.n)
    cut = int(data.n * (1 - holdout))
    train, hold = data.take(idx[:cut]), data.take(idx[cut:])
    candidates = list(trainers) if trainers is not None else default_trainers(data.models, seed)
    reward_model = GBDTPolicyTrainer(data.models, weighting="dm", seed=seed + 1).fit(train)
    scores = {}
    for t in candidates:
        t.fit(train)
        scores[t.name] = greedy_value_dr(t, reward_model, hold, pref, ref_cost, ref_latency)
    best = max(candidates, key=lambda t: scores[t.name])
    best.fit(data)
    bounds = online or OnlineBounds()
    metrics = {"variants_dr_value": scores, "chosen": best.name, "n_train": int(data.n),
               "holdout_rounds": int(hold.n), "preference": pref.model_dump()}
    return FittedPolicy(best, best.info(ref_cost, ref_latency, bounds), {"policy.onnx": best.to_onnx()}, metrics)
