"""The replica scorer: a LightGBM TTFT predictor over ``router.replica`` features, exported to ONNX.

Target: ``log(TTFT seconds)`` of the request on the replica it was sent to, from the telemetry the
simulator logs at every dispatch (``training.replica_sim.Telemetry``). Monotone constraints encode
what must hold whatever the data says (more queued prefill work or a slower step never lowers the
predicted TTFT; a longer cached prefix never raises it), which keeps the argmin sane on replica states
the logging policies rarely produced.

Output: ``replicas.onnx`` (float32 ``features [n, n_features]`` -> ``variable [n, 1]``, opset 15) +
``replicas.json`` (feature names and version, sha256, training sources and metrics), loaded by
``router.replica.ReplicaScorer``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from router.errors import NotFittedError
from router.replica import (REPLICA_FEATURE_NAMES, REPLICA_FEATURE_VERSION, REPLICA_MANIFEST_FILE,
                            REPLICA_MODEL_FILE, ReplicaScorer)
from training.replica_sim import Telemetry

MIN_TTFT_S = 1e-4  # floor before the log: a zero TTFT (float noise) must not become -inf

# +1: TTFT can only grow with the feature; -1: only shrink; 0: free.
MONOTONE: dict[str, int] = {"num_waiting": 1, "waiting_tokens": 1, "step_ms": 1, "uncached_tokens": 1,
                            "work_ahead_tokens": 1, "work_ahead_token_s": 1, "prefix_hit_tokens": -1,
                            "queued_kv_tokens": 1, "kv_excess_tokens": 1}


class ReplicaTTFTTrainer:
    """LightGBM regression of log TTFT on replica features (sklearn-style ``fit``/``predict``/``export``)."""

    def __init__(self, *, n_estimators: int = 20, num_leaves: int = 63, learning_rate: float = 0.35,
                 min_child_samples: int = 50, monotone: bool = True, seed: int = 0) -> None:
        self.n_estimators = n_estimators
        self.num_leaves = num_leaves
        self.learning_rate = learning_rate
        self.min_child_samples = min_child_samples
        self.monotone = monotone
        self.seed = seed

    def fit(self, x: np.ndarray, ttft_s: np.ndarray) -> ReplicaTTFTTrainer:
        """Fit on ``x`` (n, n_features) and realised TTFT seconds (n,).

        Raises:
            ValueError: shapes disagree, the feature count is not ``len(REPLICA_FEATURE_NAMES)``, or
                a TTFT is not finite.
        """
        import lightgbm as lgb

        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(ttft_s, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(REPLICA_FEATURE_NAMES) or x.shape[0] != y.shape[0]:
            raise ValueError(f"x must be (n, {len(REPLICA_FEATURE_NAMES)}) with one TTFT per row; "
                             f"got x {x.shape}, ttft {y.shape}")
        if x.shape[0] < 10 or not np.all(np.isfinite(y)):
            raise ValueError(f"need >= 10 rows with finite TTFTs; got {x.shape[0]} rows, "
                             f"{int(np.sum(~np.isfinite(y)))} non-finite")
        constraints = [MONOTONE.get(n, 0) if self.monotone else 0 for n in REPLICA_FEATURE_NAMES]
        self.model_ = lgb.LGBMRegressor(
            n_estimators=self.n_estimators, num_leaves=self.num_leaves, learning_rate=self.learning_rate,
            min_child_samples=self.min_child_samples, subsample=0.8, subsample_freq=1, monotone_constraints=constraints,
            random_state=self.seed, n_jobs=1, verbose=-1,
            # LightGBM times row- vs column-wise histograms and keeps the faster one unless told: runs on
            # the same rows could then differ. Pinned, the same telemetry gives the same model.
            force_col_wise=True, deterministic=True).fit(x, np.log(np.maximum(y, MIN_TTFT_S)))
        self.n_features_in_ = x.shape[1]
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted log TTFT, shape (n,)."""
        return np.asarray(self._fitted().booster_.predict(np.asarray(x, dtype=np.float32), num_threads=1))

    def to_onnx(self) -> bytes:
        from onnxmltools import convert_lightgbm
        from onnxmltools.convert.common.data_types import FloatTensorType

        model = convert_lightgbm(self._fitted(), initial_types=[("features", FloatTensorType([None, self.n_features_in_]))],
                                 target_opset=15)
        return bytes(model.SerializeToString())

    def export(self, out_dir: Path, *, info: dict[str, Any] | None = None) -> Path:
        """Write ``replicas.onnx`` + ``replicas.json`` into ``out_dir``; returns the ONNX path."""
        blob = self.to_onnx()
        out_dir.mkdir(parents=True, exist_ok=True)
        onnx_path = out_dir / REPLICA_MODEL_FILE
        onnx_path.write_bytes(blob)
        manifest = {"feature_version": REPLICA_FEATURE_VERSION, "feature_names": list(REPLICA_FEATURE_NAMES),
                    "target": "log_ttft_s", "sha256": hashlib.sha256(blob).hexdigest(),
                    "params": {"n_estimators": self.n_estimators, "num_leaves": self.num_leaves,
                               "learning_rate": self.learning_rate, "min_child_samples": self.min_child_samples,
                               "monotone": self.monotone, "seed": self.seed}, **(info or {})}
        (out_dir / REPLICA_MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        return onnx_path

    def _fitted(self) -> Any:
        if not hasattr(self, "model_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet; call fit(x, ttft_s) first")
        return self.model_


def _split(n: int, sources: list[str], seed: int) -> np.ndarray:
    """Held-out mask: whole telemetry sources when there are >= 4 of them (no leak across a run), else rows."""
    rng = np.random.default_rng(seed)
    names = sorted(set(sources))
    if len(names) >= 4:
        held = set(rng.choice(names, size=max(1, len(names) // 5), replace=False).tolist())
        return np.array([s in held for s in sources])
    return rng.random(n) < 0.2


def _metrics(y_log: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    err = pred - y_log
    ss_tot = float(np.sum((y_log - y_log.mean()) ** 2)) or 1.0
    return {"mae_log": float(np.mean(np.abs(err))), "rmse_log": float(np.sqrt(np.mean(err**2))),
            "r2_log": 1.0 - float(np.sum(err**2)) / ss_tot,
            "median_ratio_error": float(np.exp(np.median(np.abs(err))))}


def train_replica_model(telemetry: Telemetry, out_dir: Path, *, max_rows: int = 400_000, seed: int = 0,
                        trainer: ReplicaTTFTTrainer | None = None, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit on ``telemetry`` (held-out metrics on a source split first), refit on all, export, check parity.

    Returns the manifest's ``training`` block: rows, sources, held-out metrics, ONNX parity.
    """
    rng = np.random.default_rng(seed)
    keep = np.arange(telemetry.n)
    if telemetry.n > max_rows:
        keep = np.sort(rng.choice(telemetry.n, size=max_rows, replace=False))
    x, y = telemetry.x[keep], telemetry.ttft_s[keep]
    sources = [telemetry.source[i] for i in keep]
    ok = np.isfinite(y)
    x, y, sources = x[ok], y[ok], [s for s, k in zip(sources, ok) if k]
    trainer = trainer or ReplicaTTFTTrainer(seed=seed)
    held = _split(len(y), sources, seed)
    y_log = np.log(np.maximum(y, MIN_TTFT_S))
    holdout: dict[str, Any] = {}
    if held.any() and (~held).sum() >= 10:
        probe = ReplicaTTFTTrainer(**{k: getattr(trainer, k) for k in
                                      ("n_estimators", "num_leaves", "learning_rate", "min_child_samples",
                                       "monotone", "seed")}).fit(x[~held], y[~held])
        holdout = _metrics(y_log[held], probe.predict(x[held]))
        holdout["n_rows"] = int(held.sum())
    trainer.fit(x, y)
    source_counts = Counter(s.split("/")[0] for s in sources)
    training = {"n_rows": int(len(y)), "sources": dict(sorted(source_counts.items())), "holdout": holdout,
                "train": _metrics(y_log, trainer.predict(x))}
    onnx_path = trainer.export(out_dir, info={**(info or {}), "training": training})
    sample = x[: min(len(x), 5000)]
    parity = float(np.max(np.abs(ReplicaScorer(onnx_path).predict(sample) - trainer.predict(sample))))
    training["onnx_parity_max_abs"] = parity
    manifest_path = out_dir / REPLICA_MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["training"] = training
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    if not math.isfinite(parity) or parity > 1e-3:
        raise RuntimeError(f"ONNX export of the replica model disagrees with LightGBM by {parity} (log s) > 1e-3")
    return training


def train_replicas_cli(logs: Path, out: Path) -> dict[str, Any]:
    """``turnout train replicas --logs DIR --out DIR``: telemetry Parquet shards -> ``replicas.onnx`` + json.

    Raises:
        FileNotFoundError: no telemetry shards under ``logs``.
        ValueError: a shard is not replica telemetry of this feature version.
    """
    telemetry = Telemetry.read(Path(logs))
    training = train_replica_model(telemetry, Path(out), info={"logs": str(logs)})
    return {"out": str(Path(out) / REPLICA_MODEL_FILE), **training}
