"""Out-of-taxonomy prompts: can an embedding-space score flag a category the classifier never saw?

The issue asks that out-of-taxonomy domains score as OOD. The shipped OOD score (``router/ood.py``:
character LM + unknown-word rate) flags other languages, gibberish and blobs, not unseen *topics*:
uncertain in-language prompts take the fallback route through ``min_confidence`` instead. This
benchmark measures whether the usual embedding-space detectors would do better, by holding one
category out of training at a time (its prompts are then out-of-taxonomy by construction):

* ``mahalanobis`` -- min over classes of the Mahalanobis distance to the class mean, shared covariance
  shrunk 50% towards its mean variance (Lee et al. 2018);
* ``max_prob`` -- 1 - the largest class probability of the same logistic-regression head family the
  classifier uses (C = 0.3);
* ``knn10`` -- 1 - the mean cosine similarity to the 10 nearest training prompts.

Two protocols, both on the MiniLM int8 head embedding (``router.encoder``):

* ``in_source`` -- in-distribution test prompts are a random fifth of the training sources' rows, out-of-
  taxonomy prompts are the held-out category's rows of every source (the optimistic textbook setting);
* ``cross_source`` -- fitted on the public sources only (no ShareGPT), scored on real ShareGPT first turns
  (``sharegpt_hand``: in-distribution = the other categories' prompts, out-of-taxonomy = the held-out
  category's). ``fpr_real_at_5pct`` is the share of real in-distribution prompts flagged when the
  threshold is set for a 5% false-positive rate on held-out *public* prompts -- what an operator would
  get in production -- and ``tpr`` the share of the held-out category flagged at that threshold.
  Translation has too few real prompts; its out-of-taxonomy rows are the public ones there.

    python benchmarks/ood_taxonomy.py [--shared-dir DIR]  ->  benchmarks/results/ood_taxonomy.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import REPO, console, environment, table, write_json  # noqa: E402
from router.ood import prepare_text  # noqa: E402
from training.categories import HAND_SOURCE, SHAREGPT_SOURCES, build_category_set, read_category_set  # noqa: E402
from training.classifier import DEFAULT_MAX_CHARS, load_encoder  # noqa: E402

SHRINK = 0.5
K = 10
C = 0.3
MIN_REAL_OUT = 20  # fewer real prompts of the held-out category: score its public rows instead


def mahalanobis_fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    classes = np.unique(y)
    mu = np.stack([x[y == c].mean(0) for c in classes])
    r = x - mu[np.searchsorted(classes, y)]
    cov = r.T @ r / len(r)
    cov = (1 - SHRINK) * cov + SHRINK * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
    return mu, np.linalg.inv(cov)


def scorers(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Each detector fitted on (x, y): name -> function(embeddings) -> score (higher = more unusual)."""
    from sklearn.linear_model import LogisticRegression

    mu, prec = mahalanobis_fit(x, y)
    head = LogisticRegression(C=C, max_iter=3000).fit(x, y)

    def maha(z: np.ndarray) -> np.ndarray:
        d = z[:, None, :] - mu[None]
        return np.einsum("nkd,de,nke->nk", d, prec, d).min(1)

    def knn(z: np.ndarray) -> np.ndarray:
        return 1 - np.sort(z @ x.T, axis=1)[:, -K:].mean(1)

    return {"mahalanobis": maha, "max_prob": lambda z: 1 - head.predict_proba(z).max(1), "knn10": knn}


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.zeros(len(inside)), np.ones(len(outside))], np.r_[inside, outside]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared-dir", type=Path, default=REPO.parent / "shared" / "data")
    a = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        summary = build_category_set(a.shared_dir, Path(tmp) / "categories.jsonl", seed=0)
        texts, labels, sources = read_category_set([Path(tmp) / "categories.jsonl"])
    console.print(f"category set: {summary['n_rows']} prompts; encoding (2 threads)")
    x = load_encoder(threads=2).encode([prepare_text(t, DEFAULT_MAX_CHARS) for t in texts]).astype(np.float64)
    y, src = np.array(labels), np.array(sources)
    public, real = ~np.isin(src, SHAREGPT_SOURCES), src == HAND_SOURCE
    rng = np.random.default_rng(0)
    result: dict[str, Any] = {"in_source": {}, "cross_source": {}}
    rows_in, rows_cross = [], []
    for out in sorted(set(labels)):
        # in-source: random fifth of the other categories' rows as in-distribution test prompts
        keep = rng.permutation(np.flatnonzero(y != out))
        test, train = keep[: len(keep) // 5], keep[len(keep) // 5:]
        fitted = scorers(x[train], y[train])
        held = np.flatnonzero(y == out)
        result["in_source"][out] = {n: auroc(f(x[test]), f(x[held])) for n, f in fitted.items()}
        rows_in.append([out, *(result["in_source"][out][n] for n in fitted)])
        # cross-source: public rows only for fitting (and a held-out fifth of them for the threshold)
        pub = rng.permutation(np.flatnonzero(public & (y != out)))
        val, train = pub[: len(pub) // 5], pub[len(pub) // 5:]
        fitted = scorers(x[train], y[train])
        inside = np.flatnonzero(real & (y != out))
        outside = np.flatnonzero(real & (y == out))
        out_rows = "sharegpt_hand"
        if len(outside) < MIN_REAL_OUT:
            outside, out_rows = np.flatnonzero(public & (y == out)), "public"
        entry: dict[str, Any] = {"n_in": int(len(inside)), "n_out": int(len(outside)), "out_rows": out_rows}
        for n, f in fitted.items():
            thr = float(np.quantile(f(x[val]), 0.95))
            s_in, s_out = f(x[inside]), f(x[outside])
            entry[n] = {"auroc": auroc(s_in, s_out), "fpr_real_at_5pct": float(np.mean(s_in >= thr)),
                        "tpr": float(np.mean(s_out >= thr))}
        result["cross_source"][out] = entry
        rows_cross.append([out, out_rows, *(f"{entry[n]['auroc']:.3f} / {entry[n]['fpr_real_at_5pct']:.2f} / "
                                           f"{entry[n]['tpr']:.2f}" for n in fitted)])
    names = ("mahalanobis", "max_prob", "knn10")
    for proto in ("in_source", "cross_source"):
        per = result[proto]
        result[f"{proto}_mean_auroc"] = {n: float(np.mean([(v[n] if proto == "in_source" else v[n]["auroc"])
                                                           for v in per.values()])) for n in names}
    result["cross_source_mean_fpr_real_at_5pct"] = {
        n: float(np.mean([v[n]["fpr_real_at_5pct"] for v in result["cross_source"].values()])) for n in names}
    table("held-out category vs in-distribution, in-source (AUROC)", ["held out", *names],
          rows_in + [["mean", *(result["in_source_mean_auroc"][n] for n in names)]])
    table("cross-source: fitted on public sources, scored on real ShareGPT prompts "
          "(AUROC / FPR on real prompts at 5% public FPR / TPR)", ["held out", "out rows", *names], rows_cross)
    payload = {"environment": environment(), "category_set": summary, "settings": {"shrink": SHRINK, "k": K, "c": C},
               **result, "runtime_s": round(time.perf_counter() - t0, 1)}
    console.print(f"wrote {write_json('ood_taxonomy', payload)}")


if __name__ == "__main__":
    main()
