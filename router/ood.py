"""Text preparation and the out-of-distribution (OOD) score of the category classifier.

One module, used by training and serving alike, so the features the threshold was chosen on are the
features serving computes.

``prepare_text`` makes any ``str`` safe for onnxruntime and the tokenizers: lone surrogates (which
cannot be encoded as UTF-8) become U+FFFD, NULs and whitespace runs become one space, text is
lowercased and cut to ``max_chars``: the first two thirds and the last third of a long prompt (a pasted
document comes with its instruction before or after it; a 1 MB paste costs the same as a
``max_chars`` one).

The OOD score combines two detectors, each mapped through its empirical CDF on *in-distribution
validation* prompts (so each is "how unusual is this value for in-distribution text", in [0, 1]):

* ``char_nll``  mean negative log-likelihood per character under a character-trigram language model
  of the training prompts (stupid backoff to bigrams and unigrams). Other languages, other scripts,
  gibberish and base64 blobs are improbable character sequences.
* ``oov_rate``  the fraction of letter-only words (2+ letters) in neither the training vocabulary nor
  an English word list (the whole-word entries of the MiniLM WordPiece vocabulary, when training had it).

Classifier uncertainty (max-probability) is deliberately *not* part of the score: on real user prompts
it flagged 39% of in-distribution English prompts at a 5% validation FPR (its validation quantiles come
from the training sources, whose phrasing real users do not share). Uncertain, in-language prompts --
including out-of-taxonomy domains -- take the fallback route through ``min_confidence`` instead.

``score = max(CDF_k(feature_k))``; a prompt is OOD when ``score >= threshold``, where the threshold is
the (1 - target FPR) quantile of the score on in-distribution validation data (scored cross-source when
the rows carry sources, see ``training.classifier._ood_validation_features``). No OOD examples are
used to fit or calibrate anything, so every OOD evaluation set is a different source by construction.
Text with no letter or digit at all (empty, whitespace, emoji-only, punctuation) is OOD by rule with
score 1.0.

How it fails: English prompts made mostly of identifiers, names or numbers read as unusual (false
positives are bounded by the target FPR on data like the training sources, not on unlike data); a
short phrase in a language that shares many trigrams with English ("come mi chiamo?") can pass.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from router.ascii_regex import ASCII_SPACE, AsciiTwin
from router.tfidf import CharIds, CuckooTable
from router.types import FloatArray

OOD_FEATURES: tuple[str, ...] = ("char_nll", "oov_rate")
LM_MAX_CHARS = 500
_NUMPY_MIN_CHARS = 200  # mean_nll's crossover between the plain loop and the numpy lookup
_BACKOFF = math.log(0.4)
_WS = AsciiTwin(r"\s+", ASCII_SPACE + "+")
_WORD = AsciiTwin(r"[^\W\d_]{2,}")
_ALNUM = AsciiTwin(r"[^\W_]")


def valid_text(text: object) -> str:
    """Any input -> a ``str`` every encoder accepts: UTF-16 round trip, so a lone surrogate (an escaped
    ``"\\ud800"`` is valid JSON) becomes one U+FFFD and a split pair its character; valid text is unchanged."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    if text.isascii():
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def prepare_text(text: object, max_chars: int) -> str:
    """Any input -> a clean, lowercased, whitespace-normalised string of at most ``max_chars`` chars."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    # Cut first (a 1 MB paste costs O(max_chars) from here on); x4 leaves room for whitespace runs.
    if len(text) > 4 * max_chars:
        text = text[: 3 * max_chars] + " " + text[-max_chars:]
    text = _WS.sub(" ", valid_text(text).replace("\x00", " ")).strip().lower()
    if len(text) <= max_chars:
        return text
    # Head and tail: a pasted document usually comes with its instruction before *or after* it.
    head = (max_chars * 2) // 3
    return text[:head] + " " + text[len(text) - (max_chars - head - 1):]


def lm_view(text: str, max_chars: int = LM_MAX_CHARS) -> str:
    """What the character LM reads: the head of the prepared text. (Mapping digits to one symbol was
    tried: no better on real prompts.)"""
    return text[:max_chars]


def has_content(text: str) -> bool:
    return _ALNUM.search(text) is not None


def words(text: str) -> list[str]:
    return _WORD.findall(text)


@dataclass(frozen=True, slots=True)
class CharLanguageModel:
    """Character-trigram LM with stupid backoff; log-probabilities in nats.

    ``mean_nll`` runs the plain loop (trigram, else bigram + log 0.4, else unigram + 2 log 0.4, else
    ``floor``) on short texts and a numpy lookup (``_NgramTables``) on long ones; both sum the
    per-character log-probabilities left to right and return the very same float (a unit test pins it).
    """

    trigram: Mapping[str, float]
    bigram: Mapping[str, float]
    unigram: Mapping[str, float]
    floor: float
    vocab: frozenset[str]
    max_chars: int = LM_MAX_CHARS  # stored in the file: serving reads exactly what training read
    _tables: _NgramTables | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_tables", _NgramTables(self.trigram, self.bigram, self.unigram, self.floor))

    def mean_nll(self, text: str) -> float:
        t = lm_view(text, self.max_chars)
        if not t:
            return -self.floor
        if len(t) < _NUMPY_MIN_CHARS:  # short texts: the plain loop beats numpy's fixed per-call costs
            return -self._loop_logprob("  " + t) / len(t)
        assert self._tables is not None
        return -self._tables.total_logprob("  " + t) / len(t)

    def mean_nll_many(self, texts: Sequence[str]) -> list[float]:
        """``[mean_nll(t) for t in texts]``, the same floats, with one numpy pass over all of them
        (``_NgramTables.total_logprobs``): for a micro-batch, where the per-text loop dominated."""
        views = [lm_view(t, self.max_chars) for t in texts]
        assert self._tables is not None
        totals = iter(self._tables.total_logprobs(["  " + t for t in views if t]))
        return [-next(totals) / len(t) if t else -self.floor for t in views]

    def _loop_logprob(self, padded: str) -> float:
        total = 0.0
        tri, bi, uni, floor = self.trigram, self.bigram, self.unigram, self.floor
        for i in range(2, len(padded)):
            lp = tri.get(padded[i - 2:i + 1])
            if lp is None:
                lp = bi.get(padded[i - 1:i + 1])
                if lp is not None:
                    lp += _BACKOFF
                else:
                    lp = uni.get(padded[i])
                    lp = floor if lp is None else lp + 2 * _BACKOFF
            total += lp
        return total

    def oov_rate(self, text: str) -> float:
        ws = words(lm_view(text, self.max_chars))
        if not ws:
            return 0.0
        return (len(ws) - sum(map(self.vocab.__contains__, ws))) / len(ws)

    def to_json(self) -> bytes:
        data = {"trigram": self.trigram, "bigram": self.bigram, "unigram": self.unigram, "floor": self.floor,
                "vocab": sorted(self.vocab), "max_chars": self.max_chars}
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes) -> CharLanguageModel:
        d = json.loads(raw.decode("utf-8"))
        return cls(d["trigram"], d["bigram"], d["unigram"], float(d["floor"]), frozenset(d["vocab"]),
                   int(d["max_chars"]))

    @classmethod
    def fit(cls, texts: Iterable[str], *, min_count: int = 2, min_word_count: int = 2,
            extra_vocab: Iterable[str] = (), max_chars: int = LM_MAX_CHARS) -> CharLanguageModel:
        """Fit on *prepared* texts (see ``prepare_text``); ``extra_vocab`` adds known words."""
        c1: Counter[str] = Counter()
        c2: Counter[str] = Counter()
        c3: Counter[str] = Counter()
        cw: Counter[str] = Counter()
        for text in texts:
            t = "  " + lm_view(text, max_chars)
            c1.update(t[2:])
            c2.update(t[i:i + 2] for i in range(1, len(t) - 1))
            c3.update(t[i:i + 3] for i in range(len(t) - 2))
            cw.update(words(lm_view(text, max_chars)))
        n = max(sum(c1.values()), 1)
        ctx1: Counter[str] = Counter()
        for g, c in c2.items():
            ctx1[g[0]] += c
        ctx2: Counter[str] = Counter()
        for g, c in c3.items():
            ctx2[g[:2]] += c
        uni = {g: round(math.log(c / n), 3) for g, c in c1.items() if c >= min_count}
        bi = {g: round(math.log(c / ctx1[g[0]]), 3) for g, c in c2.items() if c >= min_count}
        tri = {g: round(math.log(c / ctx2[g[:2]]), 3) for g, c in c3.items() if c >= min_count}
        floor = round(math.log(0.5 / n) + 2 * _BACKOFF, 3)
        vocab = frozenset(w for w, c in cw.items() if c >= min_word_count) | frozenset(extra_vocab)
        return cls(tri, bi, uni, floor, vocab, max_chars)


class _NgramTables:
    """The LM's n-grams as base-B keys (``router.tfidf.CharIds``: trigram keys in [B^2, B^3), bigram
    keys in [B, B^2), disjoint) in a cuckoo table pointing at their backed-off log-probabilities, and
    the unigram fallback (``unigram + 2 log 0.4``, or ``floor``) per character id."""

    def __init__(self, trigram: Mapping[str, float], bigram: Mapping[str, float], unigram: Mapping[str, float],
                 floor: float) -> None:
        grams = [g for g in (*trigram, *bigram, *unigram) if 1 <= len(g) <= 3]
        self.ids = CharIds("".join(grams))
        keyed = [(self.ids.key(g), lp) for g, lp in trigram.items() if len(g) == 3]
        keyed += [(self.ids.key(g), lp + _BACKOFF) for g, lp in bigram.items() if len(g) == 2]
        keyed.sort()
        self.values = np.array([v for _, v in keyed], dtype=np.float64)
        self.table = CuckooTable([k for k, _ in keyed], range(len(keyed)))  # key -> its row in values
        self.unigram = np.full(self.ids.base, floor, dtype=np.float64)
        for g, lp in unigram.items():
            if len(g) == 1:
                self.unigram[self.ids.index[g]] = lp + 2 * _BACKOFF

    def total_logprobs(self, padded: Sequence[str]) -> list[float]:
        """``[total_logprob(p) for p in padded]`` (each starting with its two pad characters): the texts
        joined as they are -- a scored position's two context characters always lie in its own text --
        n-grams found in a cuckoo hash table (``CuckooTable``: ~2 probes per key instead of a binary
        search), and each text's log-probabilities summed left to right on their own (``cumsum``): the
        very floats of the loop."""
        if not padded:
            return []
        ids = self.ids.ids("".join(padded))
        base = self.ids.base
        k1 = ids[2:]
        k2 = ids[1:-1] * base + k1
        keys = np.concatenate([ids[:-2] * (base * base) + k2, k2])
        pos, found = self.table.hits(keys)
        hit = np.zeros(keys.size, dtype=bool)
        hit[pos] = True
        val = np.empty(keys.size, dtype=np.float64)
        val[pos] = self.values[found]
        n = k1.size
        lp = np.where(hit[:n], val[:n], np.where(hit[n:], val[n:], self.unigram[k1]))
        out, start = [], 0
        for p in padded:  # lp[j] scores joined position j + 2; a text's own positions are its 3rd char on
            out.append(float(lp[start:start + len(p) - 2].cumsum()[-1]))
            start += len(p)
        return out

    def total_logprob(self, padded: str) -> float:
        """Sum over i >= 2 of log p(padded[i] | padded[i-2:i]), accumulated in order (as the plain loop):
        ``total_logprobs([padded])[0]``, the n-grams found in the cuckoo table (a binary search over
        the sorted keys cost a third more)."""
        ids = self.ids.ids(padded)
        base = self.ids.base
        k1 = ids[2:]
        k2 = ids[1:-1] * base + k1
        keys = np.concatenate([ids[:-2] * (base * base) + k2, k2])
        pos, found = self.table.hits(keys)
        hit = np.zeros(keys.size, dtype=bool)
        hit[pos] = True
        val = np.empty(keys.size, dtype=np.float64)
        val[pos] = self.values.take(found)
        n = k1.size
        lp = np.where(hit[:n], val[:n], np.where(hit[n:], val[n:], self.unigram.take(k1.view(np.int64))))
        return float(lp.cumsum()[-1])  # cumsum adds left to right, like the loop (np.sum is pairwise)


def ood_features(prepared: Sequence[str], lm: CharLanguageModel) -> FloatArray:
    """(N, 2) float64 in ``OOD_FEATURES`` order for prepared texts."""
    out = np.empty((len(prepared), len(OOD_FEATURES)), dtype=np.float64)
    for i, text in enumerate(prepared):
        out[i, 0] = lm.mean_nll(text)
        out[i, 1] = lm.oov_rate(text)
    return out


def quantile_levels(n: int = 1001) -> tuple[float, ...]:
    return tuple(float(x) for x in np.linspace(0.0, 1.0, n))


def feature_quantiles(features: FloatArray, levels: Sequence[float]) -> dict[str, tuple[float, ...]]:
    """Per-feature quantiles of in-distribution validation features (the empirical CDFs' knots)."""
    return {name: tuple(round(float(v), 6) for v in np.quantile(features[:, k], levels))
            for k, name in enumerate(OOD_FEATURES)}


def combine(features: FloatArray, quantiles: Mapping[str, Sequence[float] | np.ndarray]) -> FloatArray:
    """score = max_k CDF_k(feature_k) with CDF_k(x) = share of knots strictly below x; (N,) float64.

    "Strictly below" keeps ties honest: the many in-distribution prompts with ``oov_rate == 0`` get
    CDF 0 for that detector, not the level of the last tied knot.
    """
    cdfs = [np.searchsorted(np.asarray(quantiles[name], dtype=np.float64), features[:, k], side="left")
            / len(quantiles[name]) for k, name in enumerate(OOD_FEATURES)]
    return np.max(np.stack(cdfs, axis=1), axis=1)


def combine_row(features: Sequence[float], quantiles: Sequence[Sequence[float]]) -> float:
    """``combine`` for one row, in plain Python (``quantiles`` in ``OOD_FEATURES`` order, as lists):
    ``bisect_left`` is ``searchsorted(side="left")``; NaN counts as above every knot, as numpy sorts it."""
    score = 0.0
    for x, q in zip(features, quantiles):
        cdf = 1.0 if x != x else bisect_left(q, x) / len(q)
        score = cdf if cdf > score else score
    return score
