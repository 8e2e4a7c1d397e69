"""training.categories: the labelled category set from the public datasets."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from training.categories import (
    HAND_LABELS_FILE,
    HAND_SOURCE,
    LABELS_FILE,
    SIMULATED_ADVICE,
    WEAK_SOURCE,
    CategoryRow,
    _norm,
    _strip_answer_tail,
    _water_fill,
    balance,
    build_category_set,
    deduplicate,
    hand_labels,
    labelled_ids,
    sharegpt_hand_rows,
    sharegpt_rows,
    sharegpt_weak_rows,
    simulated_rows,
)
from training.formats import DataFormatError
from training.weak_labels import weak_label


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
    summary = build_category_set(shared_data, out, seed=0, per_class_max=200, n_simulated_per_class=100,
                                 sharegpt_weak=False)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == summary["n_rows"]
    assert set(summary["categories"]) == {"code", "math", "writing", "knowledge", "chat", "translation"}
    assert max(summary["categories"].values()) <= 200
    assert all(set(r) == {"text", "category", "source"} for r in rows)
    assert {"mmlu", "gsm8k", "mt_bench", "mbpp", "arc", "clinc150", "simulated"} <= set(summary["sources"])
    texts = [" ".join(r["text"].lower().split()) for r in rows]
    assert len(texts) == len(set(texts))
    assert not any(r["text"].rstrip().endswith("Answer:") for r in rows)


@pytest.mark.parametrize(("text", "label"), [
    ("Can you translate this Python function to C++? def f(a): return a", "code"),  # code syntax beats "translate"
    ("Translate this text into Czech: the woman I see before me", "translation"),
    ("I want you to act as an English translator and spelling corrector", "translation"),
    ("how do i configure celery queues in a yaml file with python?", "code"),
    ("hi", "chat"),
    ("tell me a joke about a computer mouse", "chat"),
    ("Write a loving Christmas letter to my former neighbor Samuel", "writing"),
    ("rewrite this paragraph to make it easier to read: so, what makes it funny", "writing"),
    ("Suppose you roll three dice. What is the probability that the sum is 3 + 4 + 9 or more?", "math"),
    ("what kind of mulch is best for oak trees?", "knowledge"),
    ("golf in the dominican republic", None),
    ("", None),
])
def test_weak_label_follows_the_guideline_in_precedence_order(text: str, label: str | None) -> None:
    assert weak_label(text) == label


def test_weak_label_reads_head_and_tail_of_a_long_paste() -> None:
    assert weak_label("Summarize this text: " + "the cat sat on the mat. " * 5000) == "writing"
    assert weak_label("the cat sat on the mat. " * 5000 + " Can you translate the above into French?") == "translation"


def test_sharegpt_weak_rows_exclude_labelled_ids_their_texts_and_other_languages(tmp_path: Path) -> None:
    turns = {f"c{i}_0": f"how do i fix this python error number {i}?" for i in range(60)}
    turns |= {"lab_0": "write a poem about snow", "dup_0": "Write a poem  about SNOW", "es_0": "hola, como estas amigo mio",
              "none_0": "golf in the dominican republic"}
    folder = tmp_path / "sharegpt_v3_subset"
    folder.mkdir()
    with (folder / "sharegpt_v3_human_turns.jsonl").open("w", encoding="utf-8") as fh:
        for cid, text in turns.items():
            fh.write(json.dumps({"id": cid, "turn_roles": ["human", "gpt"], "human_turns": [text]}) + "\n")
    labels = tmp_path / "labels.jsonl"
    labels.write_text(json.dumps({"id": "lab_0", "category": "writing"}) + "\n", encoding="utf-8")
    rows = list(sharegpt_weak_rows(tmp_path, labelled_ids(labels), seed=0, per_class=50))
    assert {r.source for r in rows} == {WEAK_SOURCE}
    assert [r.category for r in rows] == ["code"] * 50  # writing: 0 rows left (< WEAK_MIN_PER_CLASS anyway)
    assert not {r.text for r in rows} & {turns["lab_0"], turns["dup_0"], turns["es_0"], turns["none_0"]}
    assert labelled_ids(None) == set() and labelled_ids(tmp_path / "missing.jsonl") == set()


def test_simulated_chat_rows_carry_no_advice() -> None:
    rows = list(simulated_rows(("chat", "knowledge"), 200, seed=0))
    chat = [r.text for r in rows if r.category == "chat"]
    assert 0 < len(chat) < 200  # some generated chat prompts are advice and were dropped
    assert not any(SIMULATED_ADVICE.search(t) for t in chat)
    assert sum(r.category == "knowledge" for r in rows) == 200


# --------------------------------------------------------------------- hand-labelled training prompts

LABEL_KEYS = {"id", "category", "selection", "reason"}
LABELS = {"code", "math", "writing", "knowledge", "chat", "translation", "ood"}


def test_training_hand_labels_ship_with_the_package_and_store_no_text() -> None:
    import importlib.resources

    packaged = importlib.resources.files("training") / "labels" / HAND_LABELS_FILE.name
    assert packaged.is_file() and Path(str(packaged)) == HAND_LABELS_FILE
    rows = hand_labels()
    assert len(rows) >= 700
    for row in rows:
        assert set(row) <= LABEL_KEYS, row  # ids and labels only: the text stays in ../shared/data
        assert row["category"] in LABELS and row["selection"] in {"random", "keyword"}
        assert ("reason" in row) == (row["category"] == "ood")
    assert len({r["id"] for r in rows}) == len(rows)
    assert sum(r["category"] not in {"ood"} and r["selection"] == "random" for r in rows) >= 700


def test_training_hand_labels_are_disjoint_from_the_evaluation_ids() -> None:
    train_ids = {r["id"] for r in hand_labels()}
    eval_ids = labelled_ids(LABELS_FILE)
    assert eval_ids and not train_ids & eval_ids


@pytest.mark.data
def test_training_hand_labels_are_disjoint_from_the_evaluation_texts(shared_data: Path) -> None:
    from training.classifier_eval import sharegpt_first_turns

    first = sharegpt_first_turns(shared_data)
    train = [_norm(first[r["id"]]) for r in hand_labels()]
    evaluation = {_norm(first[i]) for i in labelled_ids(LABELS_FILE)}
    assert len(train) == len(hand_labels())  # every training id has a first turn in the shared data
    assert not set(train) & evaluation
    assert len(set(train)) == len(train)  # no prompt labelled twice


@pytest.mark.data
def test_build_category_set_has_the_hand_labelled_source(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "cats.jsonl"
    summary = build_category_set(shared_data, out, seed=0, per_class_max=300, n_simulated_per_class=50,
                                 sharegpt_weak=False)
    hand = summary["by_category_source"]
    assert {"code", "knowledge", "writing", "chat", "math"} <= {c for c, v in hand.items() if HAND_SOURCE in v}
    assert HAND_SOURCE not in hand.get("translation", {})  # 8 labels < HAND_MIN_PER_CLASS
    assert WEAK_SOURCE not in summary["sources"]


def _sharegpt(folder: Path, turns: dict[str, str]) -> None:
    (folder / "sharegpt_v3_subset").mkdir()
    with (folder / "sharegpt_v3_subset" / "sharegpt_v3_human_turns.jsonl").open("w", encoding="utf-8") as fh:
        for cid, text in turns.items():
            fh.write(json.dumps({"id": cid, "turn_roles": ["human", "gpt"], "human_turns": [text]}) + "\n")


def _labels(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_sharegpt_hand_rows_join_text_and_drop_ood_and_rare_classes(tmp_path: Path) -> None:
    turns = {f"c{i}_0": f"how do i fix python error {i}" for i in range(3)} | {"w_0": "write a poem", "x_0": "sdf"}
    _sharegpt(tmp_path, turns)
    code = [{"id": f"c{i}_0", "category": "code", "selection": "random"} for i in range(3)]
    labels = _labels(tmp_path / "l.jsonl", code + [{"id": "w_0", "category": "writing", "selection": "random"},
                                                   {"id": "x_0", "category": "ood", "reason": "nonsense",
                                                    "selection": "random"}])
    rows = list(sharegpt_hand_rows(tmp_path, set(), labels, min_per_class=2))
    assert [(r.text, r.category, r.source) for r in rows] == [(turns[f"c{i}_0"], "code", HAND_SOURCE) for i in range(3)]


@pytest.mark.parametrize(("exclude", "turns", "match"), [
    ({"c0_0"}, {"c0_0": "write a poem"}, "evaluation label"),  # same id as an evaluation label
    ({"e_0"}, {"c0_0": "Write a  POEM", "e_0": "write a poem"}, "evaluation label"),  # same normalised text
    (set(), {"other_0": "hi"}, "no first human turn"),  # id missing from the shared data
])
def test_sharegpt_hand_rows_refuse_overlap_and_unknown_ids(tmp_path: Path, exclude: set[str], turns: dict[str, str],
                                                          match: str) -> None:
    _sharegpt(tmp_path, turns)
    labels = _labels(tmp_path / "l.jsonl", [{"id": "c0_0", "category": "writing", "selection": "random"}])
    with pytest.raises(DataFormatError, match=match):
        list(sharegpt_hand_rows(tmp_path, exclude, labels, min_per_class=1))


def test_sharegpt_rows_leave_hand_labelled_prompts_to_the_hand_source(tmp_path: Path) -> None:
    turns = {f"c{i}_0": f"how do i fix this python error number {i}?" for i in range(100)} | {"ev_0": "write a poem"}
    _sharegpt(tmp_path, turns)
    hand = _labels(tmp_path / "hand.jsonl", [{"id": f"c{i}_0", "category": "knowledge", "selection": "random"}
                                             for i in range(25)])
    evaluation = _labels(tmp_path / "eval.jsonl", [{"id": "ev_0", "category": "writing"}])
    rows = sharegpt_rows(tmp_path, evaluation, hand, seed=0)
    assert [r.text for r in rows if r.source == HAND_SOURCE] == [turns[f"c{i}_0"] for i in range(25)]
    weak = {r.text for r in rows if r.source == WEAK_SOURCE}
    assert weak == {turns[f"c{i}_0"] for i in range(25, 100)}  # rule labels only where no hand label exists
    assert {r.source for r in sharegpt_rows(tmp_path, evaluation, hand, seed=0, hand=False)} == {WEAK_SOURCE}
    assert {r.source for r in sharegpt_rows(tmp_path, evaluation, hand, seed=0, weak=False)} == {HAND_SOURCE}


@pytest.mark.data
def test_missing_public_sources_are_skipped_and_reported(shared_data: Path, tmp_path: Path) -> None:
    partial = tmp_path / "shared"
    partial.mkdir()
    (partial / "clinc150_oos").symlink_to(shared_data / "clinc150_oos")  # only CLINC150 on this machine
    summary = build_category_set(partial, tmp_path / "cats.jsonl", seed=0, per_class_max=100, n_simulated_per_class=20)
    assert summary["missing_sources"] == ["mmlu", "gsm8k", "mt_bench", "mbpp", "arc"]
    assert set(summary["sources"]) == {"clinc150", "simulated"}
