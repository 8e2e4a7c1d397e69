"""Labelled cache streams ``{"text", "category", "answer_id"}`` for fitting and evaluating the cache.

Fitting data never comes from the evaluated stream. ``fit_stream`` builds one from sources other than
CLINC150: the simulator's prompt generator (``training.prompts``) and, when ``../shared/data`` is
there, GSM8K / MMLU / MT-Bench questions (routellm). Each base prompt is an answer; rule-based
*paraphrases* keep its ``answer_id`` (politeness wrappers, contractions, synonyms, filler words,
case, typos) and *near misses* get a new one (a changed number, a flipped negation or opposite, a
swapped entity) -- the cases where one global cosine threshold fails. ``clinc_stream`` is the
cross-source evaluation stream: CLINC150 test queries, intent as ``answer_id``, domain as category.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from router.ood import valid_text
from training.prompts import CATEGORIES, CITIES, CODE_LANGS, MONTHS, NAMES, generate_prompt

WRAPPERS = ("{x}", "{x}?", "Could you tell me {x}?", "{x} please", "Quick question: {x}", "hey, {x}",
            "I was wondering, {x}", "Please help: {x}", "{x}, thanks!", "Can you answer this: {x}",
            "I need to know {x}", "{x} (asking for a friend)")
SYNONYMS = (("explain", "describe"), ("make", "create"), ("write", "compose"), ("fix", "repair"),
            ("quick", "fast"), ("show me", "tell me"), ("what is", "what's"), ("how do i", "how can i"),
            ("do not", "don't"), ("is not", "isn't"), ("big", "large"), ("small", "little"), ("begin", "start"),
            ("error", "problem"), ("buy", "purchase"), ("help me", "assist me"), ("find", "look up"),
            ("simple", "easy"), ("use", "utilize"), ("example", "sample"), ("answer", "response"))
FILLERS = ("please", "just", "actually", "basically", "really", "kindly")
OPPOSITE_SWAPS = (("enable", "disable"), ("increase", "decrease"), ("before", "after"), ("maximum", "minimum"),
                  ("max", "min"), ("add", "remove"), ("encrypt", "decrypt"), ("upload", "download"),
                  ("higher", "lower"), ("more", "less"), ("largest", "smallest"), ("first", "last"),
                  ("start", "stop"), ("open", "close"), ("ascending", "descending"), ("import", "export"),
                  ("buy", "sell"), ("celsius", "fahrenheit"), ("true", "false"), ("lock", "unlock"))
NEGATABLE = re.compile(r"\b(is|are|was|were|does|do|did|can|should|will|could|would|has|have)\b", re.I)
NUMBER = re.compile(r"\d+")
ENTITY_POOLS = (CODE_LANGS, CITIES, NAMES, MONTHS,
                ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"))


# how a request is framed: swapping one frame for another keeps the answer but moves the wording
# the way real paraphrases do ("how do I X" / "what's the way to X" / "I want to X")
FRAMES = ("how do i {x}", "how can i {x}", "what's the way to {x}", "i want to {x}", "i need to {x}", "help me {x}",
          "can you help me {x}", "tell me how to {x}", "is there a way to {x}", "what do i do to {x}", "{x}")
_FRAME = re.compile(r"^(?:please\s+)?(how do i|how can i|how would i|what's the way to|what is the way to|i want to|"
                    r"i need to|i'd like to|help me|can you help me|can you|could you|tell me how to|is there a way to|"
                    r"what do i do to)\s+", re.I)
IMPERATIVES = frozenset("write explain create make find show give convert calculate compute list describe summarize "
                        "summarise translate sort reset check book set cancel change add remove get send fix build "
                        "implement generate compare plan draft design update order pay transfer".split())
DROPPABLE = frozenset("a an the please just really actually basically kindly so very quite my your".split())


def reframe(text: str, rng: np.random.Generator) -> str:
    """Swap the request frame of ``text`` (or add one to a bare imperative)."""
    core = text.rstrip("?.! ")
    m = _FRAME.match(core)
    if m is not None:
        core = core[m.end():]
    elif core.split(" ", 1)[0].lower() in IMPERATIVES:
        core = core[0].lower() + core[1:] if not core[1:2].isupper() else core
    else:  # a question or statement: no request frame to swap
        return text
    out = FRAMES[int(rng.integers(len(FRAMES)))].format(x=core)
    return out + ("?" if rng.random() < 0.5 and not out.endswith("?") else "")


def drop_word(text: str, rng: np.random.Generator) -> str:
    """Drop one article / filler word (never a negation, number or content word)."""
    ws = text.split()
    idx = [i for i, w in enumerate(ws) if w.lower().strip(",.?!") in DROPPABLE]
    if not idx or len(ws) < 4:
        return text
    del ws[idx[int(rng.integers(len(idx)))]]
    return " ".join(ws)


def paraphrase(text: str, rng: np.random.Generator, *, natural: bool = True) -> str:
    """A rewrite that keeps the answer: 1-3 surface operations (``natural``: also reframing the
    request and dropping filler words, which move an embedding further than case or typos do)."""
    out = text
    for _ in range(int(rng.integers(1, 4))):
        op = int(rng.integers(8 if natural else 6))
        if op == 6:
            out = reframe(out, rng)
            continue
        if op == 7:
            out = drop_word(out, rng)
            continue
        if op == 0:
            core = out.rstrip("?.! ")
            core = core[0].lower() + core[1:] if core[:1].isupper() and not core[1:2].isupper() else core
            out = WRAPPERS[int(rng.integers(len(WRAPPERS)))].format(x=core)
        elif op == 1:
            for a, b in (SYNONYMS[i] for i in rng.permutation(len(SYNONYMS))):
                src, dst = (a, b) if rng.random() < 0.5 else (b, a)
                new = re.sub(rf"\b{re.escape(src)}\b", dst, out, count=1, flags=re.I)
                if new != out:
                    out = new
                    break
        elif op == 2:
            out = out.lower() if rng.random() < 0.5 else out[:1].upper() + out[1:]
        elif op == 3:
            ws = out.split()
            if len(ws) > 3:
                i = int(rng.integers(1, len(ws) - 1))
                w = ws[i]
                if len(w) > 4 and w.isalpha():
                    j = int(rng.integers(1, len(w) - 2))
                    ws[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
                out = " ".join(ws)
        elif op == 4:
            ws = out.split()
            ws.insert(int(rng.integers(0, max(1, min(3, len(ws))))), FILLERS[int(rng.integers(len(FILLERS)))])
            out = " ".join(ws)
        else:
            out = out.rstrip("?.!") + ("?" if rng.random() < 0.5 else "")
    return out


def near_miss(text: str, rng: np.random.Generator) -> str | None:
    """A minimal edit that changes the answer (number, negation, opposite, entity), or None."""
    ops = list(rng.permutation(4))
    for op in ops:
        if op == 0 and NUMBER.search(text):
            nums = NUMBER.findall(text)
            n = nums[int(rng.integers(len(nums)))]
            new = str(int(n) + int(rng.integers(1, 9))) if len(n) < 9 else n[:-1] + str((int(n[-1]) + 1) % 10)
            return text.replace(n, new, 1)
        if op == 1:
            for a, b in (OPPOSITE_SWAPS[i] for i in rng.permutation(len(OPPOSITE_SWAPS))):
                for src, dst in ((a, b), (b, a)):
                    if re.search(rf"\b{src}\b", text, re.I):
                        return re.sub(rf"\b{src}\b", dst, text, count=1, flags=re.I)
        if op == 2:
            m = NEGATABLE.search(text)
            if m:
                if re.search(r"\bnot\b|n't\b", text):
                    return re.sub(r"\s*\bnot\b|n't\b", "", text, count=1)
                return text[:m.end()] + " not" + text[m.end():]
        if op == 3:
            for pool in ENTITY_POOLS:
                present = [e for e in pool if re.search(rf"(?<!\w){re.escape(e)}(?!\w)", text)]
                if present:
                    old = present[0]
                    others = [e for e in pool if e != old]
                    return text.replace(old, others[int(rng.integers(len(others)))], 1)
    return None


def _generated_bases(n: int, rng: np.random.Generator) -> Iterator[tuple[str, str]]:
    for i in range(n):
        category = CATEGORIES[i % len(CATEGORIES)]
        yield generate_prompt(category, rng, difficulty=float(rng.uniform(0.0, 0.45))).text, category


def _shared_bases(shared_dir: Path, n: int, rng: np.random.Generator, extra: bool = True) -> list[tuple[str, str]]:
    """GSM8K (math), MMLU (knowledge) and MT-Bench (mapped) questions, when present (``extra``:
    also MBPP, ARC-Challenge and ShareGPT first turns)."""
    out: list[tuple[str, str]] = []
    gsm = shared_dir / "routellm" / "gsm8k" / "test.jsonl"
    if gsm.is_file():
        out += [(json.loads(line)["question"], "math") for line in gsm.read_text(encoding="utf-8").splitlines()[:600]]
    mt = shared_dir / "routellm" / "mt_bench" / "question.jsonl"
    mt_map = {"coding": "code", "math": "math", "writing": "writing", "roleplay": "writing"}
    if mt.is_file():
        for line in mt.read_text(encoding="utf-8").splitlines():
            q = json.loads(line)
            out.append((q["turns"][0], mt_map.get(q["category"], "knowledge")))
    mmlu = sorted((shared_dir / "routellm" / "mmlu_responses").glob("mmlu_*.csv"))
    if mmlu:
        import csv

        for f in mmlu[::4]:
            with f.open(encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))[:12]
            out += [(r["prompt"].split("\nA.")[0].strip()[:600], "knowledge") for r in rows]
    if extra:
        out += _routerbench_bases(shared_dir) + _sharegpt_bases(shared_dir)
    idx = rng.permutation(len(out))[:n]
    return [out[i] for i in idx]


OTHER = "__other__"  # a category no policy knows: the verifier's "unknown category" column


def _routerbench_bases(shared_dir: Path) -> list[tuple[str, str]]:
    """MBPP tasks (code) and ARC-Challenge questions (knowledge): the last question of each
    few-shot prompt, without its options."""
    import ast
    import csv

    root = shared_dir / "routerbench_subset_routerdc"
    out: list[tuple[str, str]] = []
    for name, category in (("mbpp_train.csv", "code"), ("arc_challenge_train.csv", "knowledge")):
        path = root / name
        if not path.is_file():
            continue
        with path.open(encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                try:
                    prompt = ast.literal_eval(row["prompt"])[0]
                except (ValueError, SyntaxError, IndexError, KeyError):
                    continue
                question = prompt.split("\n\n")[-1].split("\nA)")[0].strip()
                if 10 <= len(question) <= 400:
                    out.append((question, category))
    return out


def _sharegpt_bases(shared_dir: Path, limit: int = 1500) -> list[tuple[str, str]]:
    """Short first turns of real ChatGPT conversations, under a category no policy knows."""
    path = shared_dir / "sharegpt_v3_subset" / "sharegpt_v3_human_turns.jsonl"
    if not path.is_file():
        return []
    out: list[tuple[str, str]] = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                turns = json.loads(line).get("human_turns") or []
            except json.JSONDecodeError:
                continue
            first = str(turns[0]).strip() if turns else ""
            if 15 <= len(first) <= 200 and "\n" not in first and first.isascii():
                out.append((first, OTHER))
                if len(out) >= limit:
                    break
    return out


def fit_stream(n_bases: int = 600, *, seed: int = 0, shared_dir: Path | None = None,
               paraphrases: tuple[int, int] = (1, 4), near_miss_rate: float = 0.6,
               natural: bool = True) -> list[dict[str, object]]:
    """A shuffled stream of bases, their paraphrases and near misses (never CLINC150). ``natural``
    adds the request-reframing paraphrases and the MBPP / ARC / ShareGPT bases."""
    rng = np.random.default_rng(seed)
    bases = list(_generated_bases(n_bases if shared_dir is None else n_bases // 2, rng))
    if shared_dir is not None:
        bases += _shared_bases(shared_dir, n_bases - len(bases), rng, extra=natural)
    rows: list[dict[str, object]] = []
    seen: set[str] = set()
    next_id = 0
    for text, category in bases:
        if text in seen:
            continue
        seen.add(text)
        group = [(text, next_id)]
        next_id += 1
        if rng.random() < near_miss_rate:
            nm = near_miss(text, rng)
            if nm is not None and nm != text and nm not in seen:
                seen.add(nm)
                group.append((nm, next_id))
                next_id += 1
        for t, aid in list(group):
            for _ in range(int(rng.integers(paraphrases[0], paraphrases[1] + 1))):
                rows.append({"text": paraphrase(t, rng, natural=natural), "category": category, "answer_id": f"a{aid}",
                             "source": "fit"})
            rows.append({"text": t, "category": category, "answer_id": f"a{aid}", "source": "fit"})
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]


def clinc_stream(shared_dir: Path, *, n: int = 3000, seed: int = 0, split: str = "test") -> list[dict[str, object]]:
    """CLINC150 queries (no out-of-scope), intent = answer_id, domain = category, shuffled."""
    root = shared_dir / "clinc150_oos"
    data = json.loads((root / "data_full.json").read_text(encoding="utf-8"))[split]
    domains = json.loads((root / "domains.json").read_text(encoding="utf-8"))
    domain_of = {intent: d for d, intents in domains.items() for intent in intents}
    rows = [{"text": t, "category": domain_of.get(i, "other"), "answer_id": i, "source": "clinc150"} for t, i in data]
    rng = np.random.default_rng(seed)
    return [rows[j] for j in rng.permutation(len(rows))[:n]]


def read_stream(path: str | Path) -> list[dict[str, object]]:
    """Read a ``{"text", "category", "answer_id"}`` JSONL stream; ValueError names the bad line."""
    from training.formats import DataFormatError, is_finite_number, iter_json_objects  # \n-split, strict UTF-8

    try:
        objects = list(iter_json_objects(Path(path)))
    except DataFormatError as e:  # callers (and tests) expect ValueError with file:line
        raise ValueError(str(e)) from e
    rows = []
    for i, row in objects:
        for key in ("text", "category", "answer_id"):
            if key not in row:
                raise ValueError(f"{path}:{i}: missing field {key!r} (expected text, category, answer_id)")
        if not isinstance(row["text"], str):
            raise ValueError(f"{path}:{i}: 'text' must be a string")
        ts = row.get("timestamp_s")
        if "timestamp_s" in row and not is_finite_number(ts):
            raise ValueError(f"{path}:{i}: 'timestamp_s' must be a finite number of seconds; got {ts!r:.40}")
        rows.append({"text": valid_text(row["text"]), "category": str(row["category"]), "answer_id": str(row["answer_id"]),
                     **({"timestamp_s": float(ts)} if "timestamp_s" in row else {})})
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def write_stream(rows: list[dict[str, object]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
