"""``turnout data categories``: the labelled category set, built from the public datasets in ../shared/data.

Writes JSONL rows ``{"text", "category", "source"}`` (the labelled-prompt format plus the source, which
leave-one-source-out evaluation needs). Every row is a single user prompt as a user would type it:
benchmark boilerplate that no user writes ("Answer:", "Print only a single choice ...", few-shot
examples) is stripped so the classifier cannot learn a source's template instead of its content.

==================  ===================================================  =====================================
source              from                                                 category
==================  ===================================================  =====================================
mmlu                routellm/mmlu_responses/mmlu_<subject>.csv           knowledge; ``MMLU_MATH_SUBJECTS`` ->
                                                                         math; ``MMLU_SKIPPED_SUBJECTS`` left out
gsm8k               routellm/gsm8k/test.jsonl (question)                 math
mt_bench            routellm/mt_bench/question.jsonl (first turn)        ``training.adapters.MT_BENCH_CATEGORIES``
mbpp                routerbench_subset_routerdc/mbpp_*.csv               code
arc                 routerbench_subset_routerdc/arc_challenge_*.csv      knowledge (the last, real question of
                                                                         each few-shot prompt)
clinc150            clinc150_oos/data_full.json (all splits)             small_talk -> chat, translate ->
                                                                         translation, calculator -> math,
                                                                         definition -> knowledge
simulated           training.prompts.generate_prompt (seeded)            every category (chat: minus advice)
sharegpt_hand       sharegpt_v3_subset first human turns whose ids are   hand labels (labelling guideline);
                    in ``training/labels/sharegpt_train_labels.jsonl``   ``ood`` and classes with fewer than
                    (text joined at build time)                          ``HAND_MIN_PER_CLASS`` labels left out
sharegpt_weak       sharegpt_v3_subset first human turns, English,       ``weak_label`` rules (below); at most
                    never a hand-labelled id (eval or training) or an    ``WEAK_PER_CLASS`` per category
                    evaluation text
==================  ===================================================  =====================================

Why ``sharegpt_hand`` is in: 1,125 real first turns labelled by hand with the evaluation guideline
(``benchmarks/labels/README.md``, section "Training labels": how they were sampled, counts, labeller),
disjoint by id and by normalised text from the evaluation labels (a unit test checks both). The
repository stores ids and labels only; the text is joined from ``shared_dir`` like the evaluation set.

Why ``sharegpt_weak`` is in: the benchmark sources are exam questions and one-line specs; real users
write "how do i configure X in Y", paste code with a question, or ask for an ad headline. ShareGPT
first turns carry no labels, so ``weak_label`` gives one by precedence-ordered rules written from the
labelling guideline (benchmarks/labels/README.md) -- code syntax or a programming word with a build
verb -> code, "translate ... into <language>" -> translation, greetings/jokes/games -> chat, "write
a <letter|poem|post|...>"/"rewrite"/"summarise this" -> writing, a calculation word with numbers or
symbols -> math, a wh-/explain question -> knowledge -- and leaves the rest (about half) unlabelled.
Measured once on the hand-labelled set (never trained on): 99 of 114 rule labels agree (87%),
knowledge is the weakest rule (19 of 30). Prompts that are mostly not English (under 60% of words in
the MiniLM vocabulary) are left out so the OOD guard's language model stays English. Every id in
``benchmarks/labels/sharegpt_labels.jsonl`` (``labels_file``; found relative to this checkout, so a
non-editable install must pass it) and every text equal to a labelled one is excluded: the
hand-labelled prompts stay unseen, but ShareGPT as a *source* is no longer unseen -- the benchmark
reports the ShareGPT score with and without this source (``sharegpt_cross_source``). A category with
fewer than ``WEAK_MIN_PER_CLASS`` rule hits (translation, math: the rules fire on few real prompts)
gets no weak rows, so a handful of rows cannot carry a whole source's weight.

Why some ``simulated`` chat rows are out: the generator files personal advice and recommendations
("should i say something?", "recommend a show like ...") under chat; the labelling guideline (and the
benchmarks' knowledge rows) put advice and recommendations in knowledge. Rather than relabel generated
text, simulated chat prompts matching ``SIMULATED_ADVICE`` are dropped from the set.

Why ``simulated`` is in: public data is thin for *writing* (MT-Bench has 10 prompts) and *translation*
(CLINC150's 150 "how do I say X in Y" questions) and has no code prompts beyond MBPP's one-line
specifications. The simulated generator covers emails, cover letters, poems, stories, rewrites,
"translate this paragraph to Dutch", debugging questions with tracebacks, etc. Its rows are marked
``source="simulated"`` so every evaluation can report results with it held out. Winogrande (RouterBench)
is left out: fill-in-the-blank sentence pairs are not a request a user sends.

Balancing: at most ``per_class_max`` rows per category; inside a category the sources share the quota
equally (a source with fewer rows gives its unused share to the others), so MMLU's 14k questions do
not drown ARC and CLINC150. Deduplication is on whitespace/case-normalised text; a text seen with two
different categories is dropped (ambiguous).
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.adapters import CLINC_INTENT_CATEGORIES, MT_BENCH_CATEGORIES
from training.formats import DataFormatError, iter_json_objects

MMLU_MATH_SUBJECTS = frozenset({"abstract_algebra", "college_mathematics", "elementary_mathematics",
                                "high_school_mathematics", "high_school_statistics"})
# Questions about code listings: neither "knowledge" nor "code" in a router's sense; left out.
MMLU_SKIPPED_SUBJECTS = frozenset({"college_computer_science", "high_school_computer_science"})
SIMULATED_PER_CLASS = 600
WEAK_SOURCE = "sharegpt_weak"
WEAK_PER_CLASS = 500
WEAK_MIN_PER_CLASS = 50
WEAK_MIN_ENGLISH = 0.6
LABELS_FILE = Path(__file__).resolve().parents[1] / "benchmarks" / "labels" / "sharegpt_labels.jsonl"
HAND_SOURCE = "sharegpt_hand"
HAND_LABELS_FILE = Path(__file__).resolve().parent / "labels" / "sharegpt_train_labels.jsonl"
HAND_MIN_PER_CLASS = 20
SHAREGPT_SOURCES = (WEAK_SOURCE, HAND_SOURCE)  # drop both to score ShareGPT as an unseen source
SIMULATED_ADVICE = re.compile(r"\b(should i|recommend|how do i|how can i|what should|give me something|any tips|advice|"
                              r"ideas? for)\b", re.I)
DEFAULT_PER_CLASS_MAX = 1500
MIN_CHARS = 2

_ANSWER_TAIL = re.compile(r"\s*(Print only a single choice[^\n]*)?\s*Answer:\s*$", re.S)


@dataclass(frozen=True, slots=True)
class CategoryRow:
    text: str
    category: str
    source: str

    def to_json(self) -> dict[str, str]:
        return {"text": self.text, "category": self.category, "source": self.source}


# ------------------------------------------------------------------------------------------- sources


def mmlu_rows(folder: Path) -> Iterator[CategoryRow]:
    paths = sorted(folder.glob("mmlu_*.csv"))
    if not paths:
        raise DataFormatError(f"categories: no mmlu_*.csv in {folder}")
    for path in paths:
        subject = path.stem.removeprefix("mmlu_")
        if subject in MMLU_SKIPPED_SUBJECTS:
            continue
        category = "math" if subject in MMLU_MATH_SUBJECTS else "knowledge"
        for record in _csv_rows(path, "prompt"):
            yield CategoryRow(_strip_answer_tail(record["prompt"]), category, "mmlu")


def gsm8k_rows(path: Path) -> Iterator[CategoryRow]:
    for line_no, obj in iter_json_objects(path):
        question = obj.get("question")
        if not isinstance(question, str):
            raise DataFormatError(f"{path}:{line_no}: field 'question' must be a string; got {question!r:.80}")
        yield CategoryRow(question, "math", "gsm8k")


def mt_bench_rows(path: Path) -> Iterator[CategoryRow]:
    for line_no, obj in iter_json_objects(path):
        turns, category = obj.get("turns"), obj.get("category")
        if not isinstance(turns, list) or not turns or not isinstance(turns[0], str) or category not in MT_BENCH_CATEGORIES:
            raise DataFormatError(f"{path}:{line_no}: expected 'turns' (list of str) and an MT-Bench 'category'")
        yield CategoryRow(turns[0], MT_BENCH_CATEGORIES[category], "mt_bench")


def routerbench_rows(folder: Path, task: str, category: str, source: str) -> Iterator[CategoryRow]:
    import ast

    paths = sorted(folder.glob(f"{task}_*.csv"))
    if not paths:
        raise DataFormatError(f"categories: no {task}_*.csv in {folder}")
    for path in paths:
        for record in _csv_rows(path, "prompt"):
            try:
                parts = ast.literal_eval(record["prompt"])
            except (ValueError, SyntaxError) as e:
                raise DataFormatError(f"{path}: prompt is not a Python list literal: {record['prompt']!r:.80}") from e
            # Few-shot prompts: the blocks before the last are solved examples; the last is the question.
            last = "\n".join(parts).strip().split("\n\n")[-1]
            yield CategoryRow(_strip_answer_tail(last), category, source)


def clinc_rows(folder: Path) -> Iterator[CategoryRow]:
    domains = json.loads((folder / "domains.json").read_text(encoding="utf-8"))
    intent_map = {**{i: "chat" for i in domains["small_talk"]}, **CLINC_INTENT_CATEGORIES}
    data = json.loads((folder / "data_full.json").read_text(encoding="utf-8"))
    for split in sorted(data):
        for text, intent in data[split]:
            if intent in intent_map:
                yield CategoryRow(text, intent_map[intent], "clinc150")


def simulated_rows(taxonomy: Sequence[str], n_per_class: int, seed: int) -> Iterator[CategoryRow]:
    from training.prompts import CATEGORIES, generate_prompt

    rng = np.random.default_rng(seed)
    for category in taxonomy:
        if category not in CATEGORIES:
            continue
        for _ in range(n_per_class):
            text = generate_prompt(category, rng).text
            if category == "chat" and SIMULATED_ADVICE.search(text):
                continue  # advice and recommendations are knowledge in the guideline (module docstring)
            yield CategoryRow(text, category, "simulated")


def sharegpt_weak_rows(shared_dir: Path, exclude_ids: set[str], seed: int,
                       per_class: int = WEAK_PER_CLASS) -> Iterator[CategoryRow]:
    """English ShareGPT first turns with a ``weak_label``, none of ``exclude_ids`` nor their texts,
    at most ``per_class`` per category (seeded sample), categories with < ``WEAK_MIN_PER_CLASS`` hits left out."""
    from training.classifier import english_words
    from training.classifier_eval import sharegpt_first_turns
    from training.weak_labels import weak_label

    first = sharegpt_first_turns(shared_dir)
    excluded_texts = {_norm(first[i]) for i in exclude_ids if i in first}
    words = english_words()
    by_category: dict[str, list[str]] = defaultdict(list)
    for i in sorted(first):
        text = first[i]
        if i in exclude_ids or _norm(text) in excluded_texts or _english_share(text, words) < WEAK_MIN_ENGLISH:
            continue
        label = weak_label(text)
        if label is not None:
            by_category[label].append(text)
    rng = np.random.default_rng(seed)
    for category in sorted(by_category):
        items = by_category[category]
        if len(items) < WEAK_MIN_PER_CLASS:
            continue
        for k in sorted(rng.permutation(len(items))[:per_class]):
            yield CategoryRow(items[k], category, WEAK_SOURCE)


def hand_labels(labels_file: Path = HAND_LABELS_FILE) -> list[dict[str, str]]:
    """The training hand labels: ``[{"id", "category", "selection", "reason"?}]`` (ids and labels only)."""
    path = Path(labels_file)
    if not path.is_file():
        raise DataFormatError(f"categories: hand-label file {path} does not exist")
    rows = []
    for line_no, obj in iter_json_objects(path):
        if not isinstance(obj.get("id"), str) or not isinstance(obj.get("category"), str):
            raise DataFormatError(f"{path}:{line_no}: expected string fields 'id' and 'category'; got {obj!r:.80}")
        rows.append(obj)
    return rows


def sharegpt_hand_rows(shared_dir: Path, exclude_ids: set[str], labels_file: Path = HAND_LABELS_FILE,
                       min_per_class: int = HAND_MIN_PER_CLASS) -> Iterator[CategoryRow]:
    """Hand-labelled ShareGPT first turns (``training/labels``), text joined from ``shared_dir`` at build
    time. ``ood`` labels are not categories and are left out, and so is a category with fewer than
    ``min_per_class`` labels (ShareGPT has 8 translation requests in 1,231 read prompts; a handful of
    rows would carry a whole source's weight in the encoder head). Raises ``DataFormatError`` when an
    id has no first turn in ``shared_dir`` or when a label's id or text is among ``exclude_ids`` (the
    evaluation labels): training on them would score the classifier on its own training data."""
    from training.classifier_eval import sharegpt_first_turns

    first = sharegpt_first_turns(shared_dir)
    excluded_texts = {_norm(first[i]) for i in exclude_ids if i in first}
    by_category: dict[str, list[str]] = defaultdict(list)
    for row in hand_labels(labels_file):
        i = row["id"]
        if i not in first:
            raise DataFormatError(f"{labels_file}: id {i!r} has no first human turn in {shared_dir}")
        if i in exclude_ids or _norm(first[i]) in excluded_texts:
            raise DataFormatError(f"{labels_file}: id {i!r} (or its text) is also an evaluation label; "
                                  "training labels must stay disjoint from them")
        if row["category"] != "ood":
            by_category[row["category"]].append(first[i])
    for category in sorted(by_category):
        if len(by_category[category]) >= min_per_class:
            yield from (CategoryRow(text, category, HAND_SOURCE) for text in by_category[category])


def sharegpt_rows(shared_dir: Path, labels_file: Path | None, hand_labels_file: Path, seed: int, *,
                  hand: bool = True, weak: bool = True) -> list[CategoryRow]:
    """The ShareGPT sources, never an evaluation label (``labels_file``): the hand-labelled rows, then
    the rule-labelled rows of every conversation without a hand label (the hand label wins)."""
    eval_ids = labelled_ids(labels_file)
    rows = list(sharegpt_hand_rows(shared_dir, eval_ids, hand_labels_file)) if hand else []
    if weak:
        rows += sharegpt_weak_rows(shared_dir, eval_ids | labelled_ids(hand_labels_file), seed)
    return rows


def labelled_ids(labels_file: Path | None) -> set[str]:
    """Ids in a hand-label file (evaluation or training labels); none when there is no such file."""
    if labels_file is None or not Path(labels_file).is_file():
        return set()
    return {r["id"] for r in hand_labels(labels_file)}


def public_sources(shared_dir: Path) -> dict[str, tuple[Path, Callable[[], Iterator[CategoryRow]]]]:
    """Each public source: name -> (the folder it reads, its rows), in a fixed order."""
    routellm, routerbench = shared_dir / "routellm", shared_dir / "routerbench_subset_routerdc"
    return {
        "mmlu": (routellm / "mmlu_responses", lambda: mmlu_rows(routellm / "mmlu_responses")),
        "gsm8k": (routellm / "gsm8k", lambda: gsm8k_rows(routellm / "gsm8k" / "test.jsonl")),
        "mt_bench": (routellm / "mt_bench", lambda: mt_bench_rows(routellm / "mt_bench" / "question.jsonl")),
        "mbpp": (routerbench, lambda: routerbench_rows(routerbench, "mbpp", "code", "mbpp")),
        "arc": (routerbench, lambda: routerbench_rows(routerbench, "arc_challenge", "knowledge", "arc")),
        "clinc150": (shared_dir / "clinc150_oos", lambda: clinc_rows(shared_dir / "clinc150_oos")),
    }


def public_rows(shared_dir: Path, missing: list[str] | None = None) -> Iterator[CategoryRow]:
    """Every labelled row of the public sources present under ``shared_dir``, in a fixed order. A source
    whose folder is absent is skipped (its name appended to ``missing``): "the public datasets
    available" differ between machines; a folder that exists but is malformed still raises."""
    for name, (folder, rows) in public_sources(shared_dir).items():
        if folder.is_dir():
            yield from rows()
        elif missing is not None:
            missing.append(name)


# ------------------------------------------------------------------------------------- build the set


def build_category_set(shared_dir: Path, out: Path, *, seed: int = 0, per_class_max: int = DEFAULT_PER_CLASS_MAX,
                       n_simulated_per_class: int = SIMULATED_PER_CLASS,
                       taxonomy: Sequence[str] = ("code", "math", "writing", "knowledge", "chat", "translation"),
                       sharegpt_weak: bool = True, labels_file: Path | None = LABELS_FILE,
                       sharegpt_hand: bool = True, hand_labels_file: Path = HAND_LABELS_FILE) -> dict[str, Any]:
    """Build, balance, deduplicate and write the category set. ``sharegpt_hand`` adds the hand-labelled
    ShareGPT source (``hand_labels_file``) and ``sharegpt_weak`` the rule-labelled one (when ``shared_dir``
    has ShareGPT); both exclude the evaluation ids in ``labels_file``, and the rule-labelled rows also
    exclude the hand-labelled ids (the hand label wins). Returns a summary::

        {"out": str, "n_rows": int, "categories": {cat: n}, "sources": {src: n},
         "by_category_source": {cat: {src: n}}, "n_duplicates": int, "n_ambiguous": int,
         "missing_sources": [public source absent from shared_dir]}
    """
    shared_dir, out = Path(shared_dir), Path(out)
    if not shared_dir.is_dir():
        raise DataFormatError(f"categories: shared data folder {shared_dir} does not exist")
    if per_class_max < 1:
        raise DataFormatError(f"categories: per_class_max must be >= 1; got {per_class_max}")
    missing: list[str] = []
    rows = [r for r in public_rows(shared_dir, missing) if r.category in taxonomy]
    if missing:
        logging.getLogger("turnout.categories").warning(
            "categories: %s not found under %s; building the set without %s", ", ".join(missing), shared_dir,
            "it" if len(missing) == 1 else "them")
    rows += list(simulated_rows(taxonomy, n_simulated_per_class, seed))
    if (shared_dir / "sharegpt_v3_subset").is_dir():
        rows += [r for r in sharegpt_rows(shared_dir, labels_file, hand_labels_file, seed, hand=sharegpt_hand,
                                          weak=sharegpt_weak) if r.category in taxonomy]
    rows, n_dup, n_amb = deduplicate(rows)
    chosen = balance(rows, per_class_max, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for row in chosen:
            fh.write(json.dumps(row.to_json(), ensure_ascii=False) + "\n")
    by_cs: dict[str, Counter[str]] = defaultdict(Counter)
    for r in chosen:
        by_cs[r.category][r.source] += 1
    return {"out": str(out), "n_rows": len(chosen),
            "categories": dict(sorted(Counter(r.category for r in chosen).items())),
            "sources": dict(sorted(Counter(r.source for r in chosen).items())),
            "by_category_source": {c: dict(sorted(v.items())) for c, v in sorted(by_cs.items())},
            "n_duplicates": n_dup, "n_ambiguous": n_amb, "missing_sources": missing}


def deduplicate(rows: Sequence[CategoryRow]) -> tuple[list[CategoryRow], int, int]:
    """Keep the first row of each normalised text; drop texts seen with two categories."""
    first: dict[str, CategoryRow] = {}
    ambiguous: set[str] = set()
    n_dup = 0
    for row in rows:
        text = row.text.strip()
        if len(text) < MIN_CHARS:
            continue
        key = " ".join(text.lower().split())
        seen = first.get(key)
        if seen is None:
            first[key] = CategoryRow(text, row.category, row.source)
        else:
            n_dup += 1
            if seen.category != row.category:
                ambiguous.add(key)
    kept = [r for k, r in first.items() if k not in ambiguous]
    return kept, n_dup, len(ambiguous)


def balance(rows: Sequence[CategoryRow], per_class_max: int, seed: int) -> list[CategoryRow]:
    """At most ``per_class_max`` rows per category, sources sharing the quota equally (water-filling)."""
    rng = np.random.default_rng(seed)
    groups: dict[str, dict[str, list[CategoryRow]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        groups[r.category][r.source].append(r)
    out: list[CategoryRow] = []
    for category in sorted(groups):
        by_source = groups[category]
        quota = _water_fill({s: len(v) for s, v in by_source.items()}, per_class_max)
        for source in sorted(by_source):
            items = by_source[source]
            idx = rng.permutation(len(items))[:quota[source]]
            out += [items[i] for i in sorted(idx)]
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def _water_fill(sizes: dict[str, int], total: int) -> dict[str, int]:
    quota = {s: 0 for s in sizes}
    left, open_ = total, sorted(sizes, key=lambda s: sizes[s])
    while open_ and left > 0:
        share = left // len(open_)
        s = open_[0]
        if sizes[s] <= share:
            quota[s] = sizes[s]
            left -= sizes[s]
            open_.pop(0)
        else:
            for i, s in enumerate(open_):
                quota[s] = share + (1 if i < left - share * len(open_) else 0)
            break
    return quota


# ------------------------------------------------------------------------------------------- helpers


_WORD = re.compile(r"[^\W\d_]{2,}")


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _english_share(text: str, words: frozenset[str]) -> float:
    """Share of the first 300 letter-only words that are English words (0 for no words)."""
    found = _WORD.findall(text.lower())[:300]
    return sum(w in words for w in found) / len(found) if found else 0.0


def _strip_answer_tail(text: str) -> str:
    return _ANSWER_TAIL.sub("", text).strip()


def _csv_rows(path: Path, *required: str) -> Iterator[dict[str, str]]:
    csv.field_size_limit(2**31 - 1)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise DataFormatError(f"{path}: missing column(s) {missing}; header is {reader.fieldnames}")
        yield from reader


def read_category_set(paths: Sequence[Path]) -> tuple[list[str], list[str], list[str]]:
    """Texts, categories and sources (``"unknown"`` when a row has none) of labelled JSONL files."""
    from training.formats import read_jsonl

    texts, labels, sources = [], [], []
    for path in paths:
        for row in read_jsonl(path, "labelled"):
            texts.append(row.text)
            labels.append(row.category)
            src = row.extra.get("source")
            sources.append(src if isinstance(src, str) else "unknown")
    return texts, labels, sources
