"""Text keys and query/cached-query pair features of the semantic cache (one implementation for
training and serving).

The pair features are what the hit verifier reads: a dense cosine alone cannot tell "enable 2FA"
from "disable 2FA" (vllm-project/semantic-router#2691) or "chapter 1" from "chapter 2", so the
verifier also sees lexical overlap, the length ratio, and whether the two texts disagree on
negation, on numbers or on content words that only one of them has.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

_WS = re.compile(r"\s+")
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)?", re.UNICODE)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
NEGATIONS = frozenset({
    "not", "no", "never", "none", "nothing", "nobody", "neither", "nor", "without", "cannot", "can't", "cant",
    "don't", "dont", "doesn't", "doesnt", "didn't", "didnt", "isn't", "isnt", "aren't", "arent", "wasn't",
    "wasnt", "weren't", "won't", "wont", "wouldn't", "shouldn't", "couldn't", "haven't", "hasn't", "hadn't",
    "n't", "disable", "disabled", "stop", "remove", "unsubscribe", "cancel", "deactivate", "turn off",
})
# opposite pairs whose members look alike to an encoder; a pair mismatch counts as a polarity flip
OPPOSITES = (("enable", "disable"), ("increase", "decrease"), ("before", "after"), ("max", "min"),
             ("maximum", "minimum"), ("add", "remove"), ("encrypt", "decrypt"), ("on", "off"), ("buy", "sell"),
             ("import", "export"), ("upload", "download"), ("higher", "lower"), ("more", "less"),
             ("largest", "smallest"), ("first", "last"), ("start", "stop"), ("open", "close"), ("true", "false"),
             ("ascending", "descending"), ("inner", "outer"), ("left", "right"), ("celsius", "fahrenheit"),
             ("to", "from"), ("lock", "unlock"), ("subscribe", "unsubscribe"), ("activate", "deactivate"))
_OPPOSITE_OF = {a: b for a, b in OPPOSITES} | {b: a for a, b in OPPOSITES}
STOPWORDS = frozenset(
    "a an the is are was were be been am i you he she it we they me my your our their its this that these those "
    "to of in on at for with by from as and or but if so do does did can could would should will shall may might "
    "must please pls hey hi hello what whats what's how who whom which when where why there here about into "
    "just some any me tell give show help want need like know let us ok okay thanks thank".split())

PAIR_FEATURES: tuple[str, ...] = (
    "cosine", "word_jaccard", "content_jaccard", "char3_jaccard", "length_ratio", "negation_mismatch",
    "opposite_flip", "number_mismatch", "numbers_present", "n_extra_content", "query_words",
)


def normalise(text: str) -> str:
    """Case, whitespace and edge punctuation folded: the exact tier's notion of 'the same prompt'."""
    return _WS.sub(" ", text.strip().lower()).strip(" .!?,;:")


def exact_key(text: str, context: str = "") -> str:
    """sha256 of the normalised prompt, bound to the exact conversation context before it."""
    h = hashlib.sha256(normalise(text).encode("utf-8"))
    if context:
        h.update(b"\x00" + hashlib.sha256(context.encode("utf-8", "replace")).digest())
    return h.hexdigest()


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def numbers(text: str) -> frozenset[str]:
    return frozenset(n.replace(",", "") for n in _NUMBER.findall(text))


def _negated(ws: Sequence[str], text: str) -> bool:
    return any(w in NEGATIONS or w.endswith("n't") for w in ws) or "turn off" in text


def _char3(text: str) -> set[str]:
    t = f" {normalise(text)} "
    return {t[i:i + 3] for i in range(len(t) - 2)}


def _jaccard(a: set[str] | frozenset[str], b: set[str] | frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def pair_features(query: str, cached: str, cosine: float) -> list[float]:
    """``PAIR_FEATURES`` for one (query, cached query) pair, in that order."""
    qw, cw = words(query), words(cached)
    qs, cs = set(qw), set(cw)
    qc, cc = qs - STOPWORDS, cs - STOPWORDS
    qn, cn = numbers(query), numbers(cached)
    flip = any(_OPPOSITE_OF.get(w) in cs and w not in cs for w in qs if w in _OPPOSITE_OF)
    lq, lc = max(len(query), 1), max(len(cached), 1)
    return [
        float(cosine), _jaccard(qs, cs), _jaccard(qc, cc), _jaccard(_char3(query), _char3(cached)),
        min(lq, lc) / max(lq, lc), float(_negated(qw, query.lower()) != _negated(cw, cached.lower())),
        float(flip), float(qn != cn), float(bool(qn or cn)), float(len(qc ^ cc)), float(min(len(qw), 64)),
    ]


def feature_matrix(query: str, cached: Sequence[str], cosines: Sequence[float], category_index: int,
                   n_categories: int) -> np.ndarray:
    """(K, len(PAIR_FEATURES) + n_categories + 1) float32: pair features + one-hot category (last
    column = a category the policy does not know)."""
    out = np.zeros((len(cached), len(PAIR_FEATURES) + n_categories + 1), dtype=np.float32)
    for i, (text, cos) in enumerate(zip(cached, cosines)):
        out[i, :len(PAIR_FEATURES)] = pair_features(query, text, cos)
    out[:, len(PAIR_FEATURES) + (category_index if 0 <= category_index < n_categories else n_categories)] = 1.0
    return out
