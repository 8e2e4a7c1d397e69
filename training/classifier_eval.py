"""Classifier evaluation: quality, calibration, OOD detection and single-request latency.

``eval_classifier_report`` is what ``turnout eval classifier --json`` prints. Rows labelled ``"ood"``
(e.g. the hand-labelled ShareGPT set) and ``ood_texts`` are the OOD positives; every in-taxonomy row
is a negative for OOD and a labelled example for accuracy / macro-F1 / per-class / ECE.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from router.classifier import CategoryClassifier, ClassifierInfo
from training.classifier import expected_calibration_error
from training.evaluation import classification_report

OOD_LABEL = "ood"


def load_classifier(source: str | Path | tuple[CategoryClassifier, ClassifierInfo | None]) -> CategoryClassifier:
    """A classifier from a ``train classifier`` directory, a bundle (manifest ``classifier`` entry, or the
    legacy single ``classifier.onnx``), or an already-built ``(classifier, info)`` pair."""
    if isinstance(source, tuple):
        return source[0]
    d = Path(source)
    if (d / "classifier_info.json").is_file():
        info = ClassifierInfo.model_validate_json((d / "classifier_info.json").read_text(encoding="utf-8"))
        return CategoryClassifier.from_files(d, info)
    manifest = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
    if isinstance(manifest.get("classifier"), dict):
        return CategoryClassifier.from_files(d, ClassifierInfo.model_validate(manifest["classifier"]))
    from router.onnx_session import make_session

    return CategoryClassifier(make_session(d / "classifier.onnx"), manifest["router"]["taxonomy"])


def auroc(neg: np.ndarray, pos: np.ndarray) -> float:
    """P(score(pos) > score(neg)) + 0.5 P(tie) (Mann-Whitney U / (n_pos n_neg))."""
    if len(neg) == 0 or len(pos) == 0:
        return float("nan")
    allv = np.concatenate([neg, pos])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv), dtype=np.float64)
    sorted_v = allv[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_v, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[len(neg):].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(pos) * len(neg)))


def fpr_at_tpr(neg: np.ndarray, pos: np.ndarray, tpr: float = 0.95) -> float:
    """Share of negatives scoring >= the threshold that catches ``tpr`` of the positives."""
    if len(neg) == 0 or len(pos) == 0:
        return float("nan")
    thr = np.quantile(pos, 1 - tpr, method="lower")
    return float(np.mean(neg >= thr))


def latency_ms(fn: Any, texts: Sequence[str], n: int) -> dict[str, float]:
    sample = list(texts)[:n] or [""]
    for t in sample[:20]:  # warm-up
        fn([t])
    timings = []
    for t in sample:
        t0 = time.perf_counter()
        fn([t])
        timings.append((time.perf_counter() - t0) * 1000.0)
    return {"p50": float(np.percentile(timings, 50)), "p99": float(np.percentile(timings, 99)), "n": len(timings)}


def eval_classifier_report(source: str | Path | tuple[CategoryClassifier, ClassifierInfo | None],
                           texts: Sequence[str], labels: Sequence[str], ood_texts: Sequence[str] | None = None,
                           *, n_latency: int = 500, latency_texts: Sequence[str] | None = None) -> dict[str, Any]:
    """One JSON-able dict: ``accuracy``, ``macro_f1``, ``per_class``, ``ece``, ``n``, ``latency_ms``
    {p50, p99} (single request, one thread: prepare + ONNX + calibration + OOD), ``latency_ms_graph``
    (the ONNX call(s) alone), ``ood_flag_rate`` (in-distribution rows flagged OOD at the shipped
    threshold) and, when OOD rows exist, ``ood_auroc``, ``ood_fpr_at_95tpr``, ``ood_tpr_at_threshold``.
    Latency is timed on the first ``n_latency`` of ``latency_texts`` (default: the in-taxonomy texts).
    """
    clf = load_classifier(source)
    taxonomy = clf.taxonomy
    unknown = sorted(set(labels) - set(taxonomy) - {OOD_LABEL})
    if unknown:
        raise ValueError(f"labels {unknown} are neither in the taxonomy {list(taxonomy)} nor {OOD_LABEL!r}")
    ind = [i for i, l in enumerate(labels) if l != OOD_LABEL]
    ood = [texts[i] for i, l in enumerate(labels) if l == OOD_LABEL] + list(ood_texts or [])
    in_texts, in_labels = [texts[i] for i in ind], [labels[i] for i in ind]
    out = clf.predict(in_texts)
    pred = [taxonomy[k] for k in out.probs.argmax(axis=1)] if len(in_texts) else []
    report = classification_report(in_labels, pred, taxonomy)
    truth = np.array([taxonomy.index(l) for l in in_labels], dtype=int)
    report["ece"] = expected_calibration_error(out.probs, truth) if len(truth) else 0.0
    report["ood_flag_rate"] = float(np.mean(out.is_ood)) if len(in_texts) else 0.0
    if ood:
        o = clf.predict(ood)
        report["ood_auroc"] = auroc(out.ood_score, o.ood_score)
        report["ood_fpr_at_95tpr"] = fpr_at_tpr(out.ood_score, o.ood_score)
        report["ood_tpr_at_threshold"] = float(np.mean(o.is_ood))
        report["n_ood"] = len(ood)
    timed = list(latency_texts) if latency_texts is not None else (in_texts or list(texts))
    report["latency_ms"] = latency_ms(clf.predict, timed, n_latency)
    from router.ood import prepare_text

    report["latency_ms_graph"] = latency_ms(lambda b: clf.raw_proba([prepare_text(t, clf.max_chars) for t in b]),
                                            timed, n_latency)
    report["kind"] = clf.info.kind if clf.info is not None else "legacy"
    return report


def read_labelled_for_eval(path: str | Path) -> tuple[list[Any], int]:
    """The labelled rows of ``path`` and how many were skipped for a blank ``text``: real held-out sets
    carry the odd empty prompt, and one must not void the whole evaluation (the classifier would only
    send it to the fallback by rule). Every other invalid row still raises ``DataFormatError``."""
    from training.formats import LabelledPrompt, iter_json_objects

    rows, skipped = [], 0
    for line_no, obj in iter_json_objects(Path(path)):
        if isinstance(obj.get("text"), str) and not obj["text"].strip():
            skipped += 1
            continue
        rows.append(LabelledPrompt.from_json(obj, line_no, source=str(path)))
    return rows, skipped


# ------------------------------------------------------------------------------ evaluation sets

SHAREGPT_FILE = Path("sharegpt_v3_subset") / "sharegpt_v3_human_turns.jsonl"


def sharegpt_first_turns(shared_dir: Path) -> dict[str, str]:
    """ShareGPT conversation id -> first human turn (conversations that start with a human turn)."""
    out = {}
    with (Path(shared_dir) / SHAREGPT_FILE).open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            roles, turns = row.get("turn_roles") or [], row.get("human_turns") or []
            if roles and roles[0] == "human" and turns and isinstance(turns[0], str) and turns[0].strip():
                out[row["id"]] = turns[0]
    return out


def sharegpt_labelled(shared_dir: Path, labels_path: Path) -> list[dict[str, str]]:
    """Hand labels joined to their text: ``[{"id", "category", "text", "reason"?}]``. The repository
    stores only ids and labels (benchmarks/labels/README.md); the text is read from ``shared_dir``."""
    first = sharegpt_first_turns(shared_dir)
    rows = []
    for line in Path(labels_path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            if row["id"] not in first:
                raise ValueError(f"{labels_path}: id {row['id']!r} has no first human turn in {shared_dir / SHAREGPT_FILE}")
            rows.append({**row, "text": first[row["id"]]})
    return rows


def non_latin_share(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    return sum(ord(c) > 0x24F for c in letters) / len(letters) if letters else 0.0


def sharegpt_other_script(shared_dir: Path, exclude: set[str], min_share: float = 0.5) -> list[str]:
    """First turns whose letters are mostly non-Latin (CJK, Hangul, Cyrillic, ...), a model-free rule."""
    return [t for i, t in sorted(sharegpt_first_turns(shared_dir).items())
            if i not in exclude and non_latin_share(t) >= min_share]


def clinc_oos(shared_dir: Path, split: str = "oos_test") -> list[str]:
    data = json.loads((Path(shared_dir) / "clinc150_oos" / "data_full.json").read_text(encoding="utf-8"))
    return [text for text, _ in data[split]]


def gibberish(n: int, seed: int) -> list[str]:
    """Random lowercase 'words' (2-10 letters), 3-30 of them: keyboard mashing."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return [" ".join("".join(rng.choice(letters, rng.integers(2, 11))) for _ in range(rng.integers(3, 31)))
            for _ in range(n)]


def base64_blobs(n: int, seed: int) -> list[str]:
    """Base64 of random bytes, 16-2048 bytes, optionally wrapped at 76 characters like MIME."""
    import base64

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s = base64.b64encode(rng.bytes(int(rng.integers(16, 2049)))).decode("ascii")
        out.append("\n".join(s[i:i + 76] for i in range(0, len(s), 76)) if rng.random() < 0.5 else s)
    return out
