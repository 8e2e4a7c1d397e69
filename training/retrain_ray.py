"""``turnout retrain --ray``: the same job with its heavy parts on a Ray cluster.

* logs: Ray Data ``read_parquet`` (local paths or object storage URIs) + a ``map_batches`` that runs
  ``router.log_schema.validate_table`` on every block in parallel and keeps the job's columns;
* policy trees: ``ray.train.lightgbm.LightGBMTrainer`` (Ray Train v2) -- one run per policy variant
  trains its three heads (quality, log cost, log latency) with ``get_network_params()`` so more
  workers train data-parallel; parameters are exactly ``training.policy.GBDTPolicyTrainer``'s;
* OPE: the bootstrap resamples run as Ray tasks, one per ``retrain_ope.BOOTSTRAP_CHUNK`` chunk, with
  the same per-chunk seeds as the local loop.

Parity with the local job: with one training worker the rows reach LightGBM in the local order (a
``_row`` column is sorted on in the worker), so the trees -- and hence every estimate and the decision
-- match the local path; more workers give data-parallel trees that differ slightly
(tests/serving/test_retrain_ray.py checks one worker, on the test session's single Ray cluster).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from router.errors import LogSchemaError
from training.policy import GBDTPolicyTrainer, LinUCBTrainer, LoggedBandit, PolicyTrainer
from training.retrain import Step, list_shards, validated_columns
from training.retrain_ope import bootstrap_chunk, chunk_plan

HEAD_NAMES = ("quality", "cost", "latency")


def _validate_block(batch: pa.Table) -> pa.Table:
    """Validate one block; a schema error comes back as a one-row ``_schema_error`` table (Ray Data
    wraps exceptions raised in UDFs beyond recognition, and the driver must name the bad field)."""
    source = batch.column("path")[0].as_py() if batch.num_rows else "logs"
    try:
        return validated_columns(batch.drop_columns(["path"]), source)
    except LogSchemaError as e:
        return pa.table({"_schema_error": [str(e)]})


def _lgb_params(t: GBDTPolicyTrainer, head: str) -> dict[str, Any]:
    """``GBDTPolicyTrainer.fit``'s LGBMRegressor arguments as ``lightgbm.train`` params (same aliases)."""
    return {"objective": "regression", "num_leaves": t.num_leaves,
            "learning_rate": t.learning_rate if head == "quality" else 0.12, "min_child_samples": t.min_child_samples,
            "subsample": 0.8, "subsample_freq": 1, "colsample_bytree": 0.8, "seed": t.seed, "num_threads": 1,
            "verbose": -1}


def data_key(data: LoggedBandit) -> str:
    import hashlib

    h = hashlib.sha1()
    for a in (data.features, data.action, data.propensity, data.quality, data.cost, data.latency):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def train_on_ray(trainers: Sequence[GBDTPolicyTrainer], subsets: Sequence[np.ndarray], data: LoggedBandit, *,
                 num_workers: int, cpus_per_worker: float, storage: str) -> list[dict[str, Any]]:
    """One LightGBMTrainer run fitting ``trainers[i]`` on ``data.take(subsets[i])`` for every i; returns
    each job's heads (``{head: Booster}``). One run, not one per fit: a run costs ~20 s of actor start-up."""
    import lightgbm as lgb
    import ray.data
    from ray.train import RunConfig, ScalingConfig
    from ray.train.lightgbm import LightGBMTrainer

    k = len(trainers[0].models)
    x = np.concatenate([data.features.astype(np.float32), np.eye(k, dtype=np.float32)[data.action]], axis=1)
    cols: dict[str, Any] = {f"f{j}": x[:, j] for j in range(x.shape[1])}
    cols["_row"] = np.arange(data.n)
    jobs = []
    for i, (t, idx) in enumerate(zip(trainers, subsets)):
        # rows enter LightGBM in ``idx`` order locally; here a subset mask keeps data order, so targets
        # are recomputed on the subset when winsorising depends on it (cost/latency p99)
        sub = data.take(idx)
        mask = np.zeros(data.n, dtype=bool)
        mask[idx] = True
        cols[f"rows_{i}"] = mask
        order = np.empty(data.n, dtype=np.int64)
        order[idx] = np.arange(len(idx))
        cols[f"order_{i}"] = order
        st = sub.targets()
        for h in HEAD_NAMES:
            full = np.zeros(data.n)
            full[idx] = st[h]
            cols[f"y_{h}_{i}"] = full
        wv = np.zeros(data.n)
        wv[idx] = np.minimum(1.0 / sub.propensity, t.max_weight) if t.weighting == "ips" else 1.0
        cols[f"w_{i}"] = wv
        jobs.append({"index": i, "params": {h: _lgb_params(t, h) for h in HEAD_NAMES},
                     "rounds": {h: t.n_estimators if h == "quality" else t.n_estimators_cost_latency for h in HEAD_NAMES}})
    ds = ray.data.from_arrow(pa.table(cols))
    trainer = LightGBMTrainer(
        _train_jobs_per_worker, train_loop_config={"n_features": x.shape[1], "jobs": jobs}, datasets={"train": ds},
        scaling_config=ScalingConfig(num_workers=num_workers, resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(storage_path=storage, name=f"turnout-policy-{uuid.uuid4().hex[:8]}"))
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run returned no checkpoint: {result.error}")
    with result.checkpoint.as_directory() as d:
        return [{h: lgb.Booster(model_str=Path(d, f"job{i}.{h}.txt").read_text(encoding="utf-8")) for h in HEAD_NAMES}
                for i in range(len(jobs))]


def _train_jobs_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker loop: each job's rows in the order the local fit sees them, its own targets
    and weights; all heads; rank 0 checkpoints the boosters as ``job{i}.{head}.txt``."""
    import lightgbm as lgb
    import ray.train
    from ray.train import Checkpoint
    from ray.train.lightgbm import get_network_params

    shard = ray.train.get_dataset_shard("train")
    table = pa.concat_tables(list(shard.iter_batches(batch_format="pyarrow", batch_size=None))).sort_by("_row")
    x = np.column_stack([table.column(f"f{j}").to_numpy() for j in range(config["n_features"])]).astype(np.float32)
    network = get_network_params() if ray.train.get_context().get_world_size() > 1 else {}
    with tempfile.TemporaryDirectory() as d:
        for job in config["jobs"]:
            i = job["index"]
            rows = np.flatnonzero(table.column(f"rows_{i}").to_numpy(zero_copy_only=False))
            rows = rows[np.argsort(table.column(f"order_{i}").to_numpy()[rows], kind="stable")]
            w = table.column(f"w_{i}").to_numpy()[rows]
            for head in HEAD_NAMES:
                y = table.column(f"y_{head}_{i}").to_numpy()[rows]
                booster = lgb.train({**job["params"][head], **network}, lgb.Dataset(x[rows], y, weight=w),
                                    num_boost_round=job["rounds"][head])
                Path(d, f"job{i}.{head}.txt").write_text(booster.model_to_string(), encoding="utf-8")
        ckpt = Checkpoint.from_directory(d) if ray.train.get_context().get_world_rank() == 0 else None
        ray.train.report({"rows": int(table.num_rows)}, checkpoint=ckpt)


class _BoosterHead:
    """Holds a ``lightgbm.Booster`` where ``GBDTPolicyTrainer`` keeps an ``LGBMRegressor`` (``.booster_``)."""

    def __init__(self, booster: Any) -> None:
        self.booster_ = booster


class RayGBDTPolicyTrainer(GBDTPolicyTrainer):
    """``GBDTPolicyTrainer`` whose heads are fitted by Ray Train's LightGBMTrainer."""

    def __init__(self, models: Sequence[str], *, num_workers: int = 1, cpus_per_worker: float = 0.5,
                 storage: str | None = None, cache: dict[tuple[str, str], dict[str, Any]] | None = None,
                 **kw: Any) -> None:
        super().__init__(models, **kw)
        self.cache = cache
        self.num_workers = num_workers
        self.cpus_per_worker = cpus_per_worker
        self.storage = storage or os.path.join(tempfile.gettempdir(), "turnout-ray-train")

    def fit(self, data: LoggedBandit) -> RayGBDTPolicyTrainer:
        """Heads from the backend's pre-trained cache when ``prefit`` covered this data, else one run."""
        heads = self.cache.pop((self.weighting, data_key(data)), None) if self.cache is not None else None
        if heads is None:
            heads = train_on_ray([self], [np.arange(data.n)], data, num_workers=self.num_workers,
                                 cpus_per_worker=self.cpus_per_worker, storage=self.storage)[0]
        self.heads_ = {h: _BoosterHead(b) for h, b in heads.items()}
        self.n_context_ = data.features.shape[1]
        return self

    def to_onnx(self) -> bytes:
        from onnxmltools import convert_lightgbm
        from onnxmltools.convert.common.data_types import FloatTensorType

        from training.policy import merge_heads

        d = self.n_context_ + len(self.models)
        graphs = {h: convert_lightgbm(m.booster_, initial_types=[("features", FloatTensorType([None, d]))],
                                      target_opset=15) for h, m in self._fitted().items()}
        return merge_heads(graphs, d).SerializeToString()


def _bootstrap_task(terms: np.ndarray, seed: int, chunk: int, n_rep: int) -> np.ndarray:
    return bootstrap_chunk(terms, seed, chunk, n_rep)


class RayBackend:
    """Runs the job's heavy parts on the Ray cluster at ``address`` (or the one already initialised)."""

    name = "ray"

    def __init__(self, address: str | None = None, *, num_workers: int = 1, cpus_per_worker: float = 0.5,
                 cpus_per_task: float = 0.25) -> None:
        import ray

        if not ray.is_initialized():
            if address:
                ray.init(address=address, logging_level="ERROR")
            else:
                try:
                    ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
                except ConnectionError:
                    ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        self.num_workers = num_workers
        self.cpus_per_worker = cpus_per_worker
        self.cpus_per_task = cpus_per_task
        self._cache: dict[tuple[str, str], dict[str, Any]] = {}

    def read_table(self, logs: str, step: Step) -> pa.Table:
        import ray
        import ray.data

        files, _, fs = list_shards(logs)
        if not files:
            raise LogSchemaError(f"no Parquet log shards (*.parquet) found under {logs}")
        step(f"reading {len(files)} log shard(s) from {logs} with Ray Data")
        try:
            ds = ray.data.read_parquet(files, filesystem=fs, include_paths=True)
            ds = ds.map_batches(_validate_block, batch_format="pyarrow", batch_size=None, num_cpus=self.cpus_per_task)
            tables = ray.get(ds.to_arrow_refs())
        except Exception as e:  # noqa: BLE001 -- unreadable files, schema conflicts between shards
            raise LogSchemaError(f"{logs}: Ray Data could not read the log shards: {e}") from e
        errors = [t.column("_schema_error")[0].as_py() for t in tables if "_schema_error" in t.column_names]
        if errors:
            raise LogSchemaError(errors[0])
        tables = [t for t in tables if t.num_rows]
        if not tables:
            raise LogSchemaError(f"{logs}: the log shards hold no records")
        return pa.concat_tables([t.cast(tables[0].schema) for t in tables])

    def policy_trainers(self, models: Sequence[str], seed: int) -> list[PolicyTrainer]:
        kw = {"num_workers": self.num_workers, "cpus_per_worker": self.cpus_per_worker, "seed": seed,
              "cache": self._cache}
        return [RayGBDTPolicyTrainer(models, weighting="dm", **kw), RayGBDTPolicyTrainer(models, weighting="ips", **kw),
                LinUCBTrainer(models)]

    def prefit(self, data: LoggedBandit, seed: int, holdout: float = 0.25) -> None:
        """Train, in one Ray Train run, every tree fit ``training.policy.fit_policy`` will ask for: each
        GBDT variant on its selection split (same permutation as ``fit_policy``) and on all rows."""
        idx = np.random.default_rng(seed).permutation(data.n)
        train_idx, all_idx = idx[: int(data.n * (1 - holdout))], np.arange(data.n)
        variants = [t for t in self.policy_trainers(data.models, seed) if isinstance(t, RayGBDTPolicyTrainer)]
        jobs = [(t, sub) for sub in (train_idx, all_idx) for t in variants]
        heads = train_on_ray([t for t, _ in jobs], [sub for _, sub in jobs], data, num_workers=self.num_workers,
                             cpus_per_worker=self.cpus_per_worker,
                             storage=os.path.join(tempfile.gettempdir(), "turnout-ray-train"))
        keys = {id(train_idx): data_key(data.take(train_idx)), id(all_idx): data_key(data)}
        for (t, sub), h in zip(jobs, heads):
            self._cache[(t.weighting, keys[id(sub)])] = h

    def bootstrap(self, terms: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray:
        import ray

        task = ray.remote(num_cpus=self.cpus_per_task)(_bootstrap_task)
        ref = ray.put(terms)
        return np.concatenate(ray.get([task.remote(ref, seed, c, k) for c, k in chunk_plan(n_bootstrap)]))
