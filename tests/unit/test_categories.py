"""training.categories: the labelled category set from the public datasets."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from training.categories import CategoryRow, _strip_answer_tail, _water_fill, balance, build_category_set, deduplicate


def test_water_fill_shares_the_quota_and_passes_on_unused_share() -> None:
    assert _water_fill({"a": 10, "b": 1000, "c": 1000}, 100) == {"a": 10, "b": 45, "c": 45}
    assert _water_fill({"a": 3, "b": 4}, 100) == {"a": 3, "b": 4}
    assert sum(_water_fill({"a": 50, "b": 50, "c": 50}, 100).values()) == 100


def test_deduplicate_normalises_and_drops_ambiguous_texts() -> None:
    rows = [CategoryRow("Hello  there", "chat", "x"), CategoryRow("hello there", "chat", "y"),
            CategoryRow("2+2?", "math", "x"), CategoryRow("2+2?", "code", "y"), CategoryRow(" ", "chat", "x")]
    kept, n_dup, n_amb = deduplicate(rows)
    assert [(r.text, r.source) for r in kept] == [("Hello  there", "x")]
    assert (n_dup, n_amb) == (2, 1)


def test_balance_caps_each_category() -> None:
    rows = [CategoryRow(f"t{i}", "code" if i % 3 else "math", "a" if i % 2 else "b") for i in range(300)]
    out = balance(rows, 50, seed=0)
    assert Counter(r.category for r in out) == {"code": 50, "math": 50}
    assert balance(rows, 50, seed=0) == out


def test_strip_answer_tail() -> None:
    assert _strip_answer_tail("Q?\nA) x\nB) y\nPrint only a single choice from \"A\" or \"B\".\nAnswer:") == "Q?\nA) x\nB) y"
    assert _strip_answer_tail("What is 2+2?\nAnswer:") == "What is 2+2?"


@pytest.mark.data
def test_build_category_set_from_shared_data(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "cats.jsonl"
    summary = build_category_set(shared_data, out, seed=0, per_class_max=200, n_simulated_per_class=100)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == summary["n_rows"]
    assert set(summary["categories"]) == {"code", "math", "writing", "knowledge", "chat", "translation"}
    assert max(summary["categories"].values()) <= 200
    assert all(set(r) == {"text", "category", "source"} for r in rows)
    assert {"mmlu", "gsm8k", "mt_bench", "mbpp", "arc", "clinc150", "simulated"} <= set(summary["sources"])
    texts = [" ".join(r["text"].lower().split()) for r in rows]
    assert len(texts) == len(set(texts))
    assert not any(r["text"].rstrip().endswith("Answer:") for r in rows)
