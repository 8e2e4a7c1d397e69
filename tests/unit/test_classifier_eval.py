"""training.classifier_eval: the report's keys and the OOD metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.classifier import FittedClassifier, fit_category_model
from training.classifier_eval import auroc, base64_blobs, eval_classifier_report, fpr_at_tpr, gibberish, load_classifier
from training.prompts import CATEGORIES, generate_prompt

REPORT_KEYS = {"accuracy", "macro_f1", "per_class", "ece", "n", "latency_ms", "ood_auroc", "ood_fpr_at_95tpr"}


@pytest.fixture(scope="module")
def fitted() -> FittedClassifier:
    rng = np.random.default_rng(8)
    rows = [generate_prompt(c, rng) for c in CATEGORIES for _ in range(80)]
    return fit_category_model([r.text for r in rows], [r.category for r in rows], CATEGORIES, family="tfidf")


def test_auroc_and_fpr_at_tpr() -> None:
    assert auroc(np.array([0.1, 0.2]), np.array([0.3, 0.4])) == 1.0
    assert auroc(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.5
    assert auroc(np.array([0.3, 0.4]), np.array([0.1, 0.2])) == 0.0
    assert fpr_at_tpr(np.linspace(0, 1, 101), np.ones(20)) == pytest.approx(1 / 101)


def test_report_json_keys(fitted: FittedClassifier, tmp_path: Path) -> None:
    fitted.write(tmp_path)
    rng = np.random.default_rng(77)
    rows = [generate_prompt(c, rng) for c in CATEGORIES for _ in range(10)]
    texts, labels = [r.text for r in rows] + ["这是中文"], [r.category for r in rows] + ["ood"]
    report = eval_classifier_report(tmp_path, texts, labels, ood_texts=gibberish(20, 1) + base64_blobs(5, 2),
                                    n_latency=30)
    assert REPORT_KEYS <= set(report)
    assert set(report["per_class"]) == set(CATEGORIES)
    assert set(report["per_class"]["code"]) >= {"precision", "recall", "f1"}
    assert set(report["latency_ms"]) >= {"p50", "p99"} and report["n"] == 60 and report["n_ood"] == 26
    assert report["ood_auroc"] >= 0.95
    json.dumps(report)  # JSON-able as printed by `turnout eval classifier --json`


def test_report_without_ood_has_no_ood_keys(fitted: FittedClassifier) -> None:
    clf = fitted.load()
    report = eval_classifier_report((clf, fitted.info), ["hi there", "solve 2x = 4"], ["chat", "math"], n_latency=5)
    assert "ood_auroc" not in report and report["n"] == 2


def test_unknown_labels_are_rejected(fitted: FittedClassifier) -> None:
    with pytest.raises(ValueError, match="poetry"):
        eval_classifier_report((fitted.load(), fitted.info), ["x"], ["poetry"], n_latency=1)


def test_load_classifier_reads_a_train_classifier_dir(fitted: FittedClassifier, tmp_path: Path) -> None:
    fitted.write(tmp_path)
    assert load_classifier(tmp_path).info == fitted.info


def test_train_classifier_cli_writes_a_loadable_dir_and_selects_by_source(tmp_path: Path) -> None:
    from training.classifier import train_classifier_cli

    rng = np.random.default_rng(21)
    data = tmp_path / "labelled.jsonl"
    with data.open("w", encoding="utf-8") as fh:
        for i, c in enumerate(CATEGORIES * 30):
            row = {"text": generate_prompt(c, rng).text, "category": c, "source": f"src{i % 3}"}
            fh.write(json.dumps(row) + "\n")
    metrics = train_classifier_cli([data], tmp_path / "clf", CATEGORIES, seed=0, family="tfidf")
    assert metrics["selected_by"] == "loso_mean_macro_f1"
    assert set(metrics["selection"]["tfidf"]["loso"]) == {"src0", "src1", "src2"}
    assert {"classifier.onnx", "ood_lm.json", "classifier_info.json", "classifier_metrics.json"} <= {
        p.name for p in (tmp_path / "clf").iterdir()}
    clf = load_classifier(tmp_path / "clf")
    fresh = [generate_prompt(c, rng).text for c in CATEGORIES * 5]
    out = clf.predict([""] + fresh)
    assert out.is_ood[0] and out.is_ood[1:].mean() <= 0.3


def test_eval_classifier_cli_skips_blank_texts_and_says_so(fitted: FittedClassifier, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from training.formats import DataFormatError
    from turnout.cli import main

    fitted.write(tmp_path / "clf")
    rows = [{"text": "write a python function that reverses a list", "category": "code"},
            {"text": "   ", "category": "chat"}, {"text": "what is 12 * 7?", "category": "math"}, {"text": "", "category": "code"}]
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert main(["eval", "classifier", "--bundle", str(tmp_path / "clf"), "--data", str(data), "--json"]) == 0
    out = capsys.readouterr()
    report = json.loads(out.out)
    assert report["n"] == 2 and report["n_skipped_blank_text"] == 2 and REPORT_KEYS - {"ood_auroc", "ood_fpr_at_95tpr"} <= set(report)
    assert "skipped 2 row(s) with a blank text" in out.err
    data.write_text(json.dumps({"text": 3, "category": "code"}) + "\n", encoding="utf-8")  # other bad rows still refuse
    from training.classifier_eval import read_labelled_for_eval

    with pytest.raises(DataFormatError, match="eval.jsonl:1: field 'text' must be a non-empty string"):
        read_labelled_for_eval(data)
