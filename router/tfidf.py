"""TF-IDF features of the category classifier, computed without scikit-learn (one analyzer for training
and serving).

The features are scikit-learn's ``FeatureUnion`` of two ``TfidfVectorizer``s: word 1-2-grams (token
pattern ``(?u)\\b\\w\\w+\\b``) and character 2-4-grams (runs of 2+ whitespace characters collapsed to one
space first), each block ``count * idf`` and L2-normalised on its own. ``word_ngrams`` and
``char_ngrams`` are the analyzers: ``training.classifier.CategoryTrainer`` passes them to scikit-learn
as callables, so the vocabulary is built from exactly what serving computes (a unit test also pins
them to scikit-learn's own ``build_analyzer()`` output).

``TfidfVocabulary.transform(text)`` -> (indices, values): sorted feature indices into
``[word vocabulary | char vocabulary]`` and their tf-idf values, what the ``tfidf_sparse_linear``
classifier graph reads. Character n-grams are looked up without building their strings: the K characters
of the vocabulary map to ids 1..K, every other character to K + 1, an n-gram is the base-(K + 2) number
of its ids -- digits are never 0, so n-grams of different lengths fall in disjoint key ranges, and one
with an unknown character never equals a vocabulary key -- and looked up in a cuckoo hash table
(``CuckooTable``) with numpy. A vocabulary with more than 65,000 distinct characters (4-gram keys past
64 bits) takes the plain string path, with the same result.

``transform_many(texts)`` -> ``SparseRows`` (CSR) does a micro-batch in one pass of numpy calls (texts
joined by a character outside the alphabet, so no n-gram spans two of them); row ``s`` has the very
floats ``transform(texts[s])`` gives (every reduction runs per row), so ``Router.decide_batch`` equals
``Router.decide``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from router.ascii_regex import ASCII_SPACE, AsciiTwin
from router.types import FloatArray

ANALYZER = "sklearn-word(1,2)+char(2,4)"  # recorded in the vocabulary file; a different analyzer is refused
WORD_TOKEN = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token_pattern
_WHITE_SPACES = re.compile(r"\s\s+")  # what scikit-learn's char analyzer collapses to one space
CHAR_MIN, CHAR_MAX = 2, 4
_MAX_KEY_BASE = 65_000  # base**4 < 2**64
# the serving path's copies of the two patterns above, with an re.ASCII twin for ASCII text (same matches)
_WORD_TOKEN = AsciiTwin(r"(?u)\b\w\w+\b", r"\b\w\w+\b")
_SPACE_RUNS = AsciiTwin(r"\s\s+", ASCII_SPACE + "{2,}")


def word_ngrams(text: str) -> list[str]:
    """Word unigrams then bigrams, as scikit-learn's ``analyzer="word", ngram_range=(1, 2)``, lowercase off."""
    tokens = WORD_TOKEN.findall(text)
    return tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:])]


def char_ngrams(text: str) -> list[str]:
    """Character 2-, 3- and 4-grams, as scikit-learn's ``analyzer="char", ngram_range=(2, 4)``."""
    t = _WHITE_SPACES.sub(" ", text)
    return [t[i:i + n] for n in range(CHAR_MIN, CHAR_MAX + 1) for i in range(len(t) - n + 1)]


def char_codes(text: str) -> np.ndarray:
    """Code points of ``text`` (uint8 for ASCII, else uint32; lone surrogates kept as their code point)."""
    if text.isascii():
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


class CharIds:
    """Characters -> ids: the alphabet's characters 1..K in code point order, any other character K + 1."""

    def __init__(self, alphabet: Iterable[str]) -> None:
        chars = sorted(set(alphabet))
        self.unknown = len(chars) + 1
        self.base = len(chars) + 2  # n-gram keys are base-`base` numbers with digits 1..K+1
        self.index = {c: i for i, c in enumerate(chars, start=1)}
        self._bmp = np.full(0x10000, self.unknown, dtype=np.uint64)
        astral: list[tuple[int, int]] = []
        for c, i in self.index.items():
            cp = ord(c)
            if cp < 0x10000:
                self._bmp[cp] = i
            else:
                astral.append((cp, i))
        self._astral_cps = np.array([a for a, _ in astral] + [0x110000], dtype=np.uint32)
        self._astral_ids = np.array([i for _, i in astral] + [self.unknown], dtype=np.uint64)

    def ids(self, text: str) -> np.ndarray:
        """(len(text),) uint64 ids."""
        codes = char_codes(text)
        if codes.dtype == np.uint8 or codes.size == 0 or int(codes.max()) < 0x10000:
            return self._bmp.take(codes)
        out = self._bmp[np.minimum(codes, 0xFFFF)]
        astral = codes >= 0x10000
        cps = codes[astral]
        pos = np.searchsorted(self._astral_cps, cps)
        out[astral] = np.where(self._astral_cps[pos] == cps, self._astral_ids[pos], self.unknown)
        return out

    def key(self, gram: str) -> int:
        """The base-``base`` number of ``gram``'s ids (what ``TfidfVocabulary`` searches for)."""
        key = 0
        for c in gram:
            key = key * self.base + self.index.get(c, self.unknown)
        return key


class CuckooTable:
    """uint64 key -> int64 value, looked up for a whole array with a fixed handful of numpy calls: each
    key sits in one of two slots ``h1(k)``, ``h2(k)`` (multiplicative hashing, table at most 40% full;
    insertion evicts and re-places as cuckoo hashing does). A binary search (``searchsorted``) over a
    50k-entry vocabulary cost ~90 ns per n-gram; this costs ~10 vector operations per text.
    Keys must be non-zero (0 marks an empty slot)."""

    _MULTIPLIERS = ((0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F), (0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD),
                    (0xA0761D6478BD642F, 0xE7037ED1A0B428DB))

    def __init__(self, keys: Iterable[int], values: Iterable[int]) -> None:
        pairs = list(zip(keys, values))
        if any(k <= 0 or k >= 2**64 for k, _ in pairs):
            raise ValueError("cuckoo table keys must be in [1, 2**64)")
        bits = max(4, math.ceil(math.log2(max(len(pairs), 1) * 2.5)))
        for attempt in range(12):  # other multipliers, then a bigger table, until every key has a slot
            m1, m2 = self._MULTIPLIERS[attempt % 3]
            built = self._build(pairs, bits + attempt // 3, m1, m2)
            if built is not None:
                break
        else:
            raise ValueError(f"cannot place {len(pairs)} keys in a cuckoo table")
        self._keys, self._values, shift = built
        self._m1, self._m2, self._shift = np.uint64(m1), np.uint64(m2), np.uint64(shift)

    @staticmethod
    def _build(pairs: list[tuple[int, int]], bits: int, m1: int, m2: int
               ) -> tuple[np.ndarray, np.ndarray, int] | None:
        size, shift, mask = 1 << bits, 64 - bits, 2**64 - 1
        keys, values = [0] * size, [-1] * size
        for key, value in pairs:
            slot = ((key * m1) & mask) >> shift
            for _ in range(200):
                if keys[slot] == 0 or keys[slot] == key:
                    keys[slot], values[slot] = key, value
                    break
                keys[slot], key = key, keys[slot]
                values[slot], value = value, values[slot]
                first = ((key * m1) & mask) >> shift
                slot = ((key * m2) & mask) >> shift if first == slot else first
            else:
                return None
        return np.array(keys, dtype=np.uint64), np.array(values, dtype=np.int32), shift

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Values of the keys present in the table (absent keys dropped), in the order of ``keys``."""
        h1 = ((keys * self._m1) >> self._shift).view(np.int64)  # slots < 2**63: same numbers, and
        slot = np.where(self._keys.take(h1) == keys, h1, ((keys * self._m2) >> self._shift).view(np.int64))
        return self._values.take(slot[self._keys.take(slot) == keys]).astype(np.int64)  # take: faster gathers

    def hits(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions in ``keys`` of the keys present, their values int64), in the order of ``keys``."""
        h1 = ((keys * self._m1) >> self._shift).view(np.int64)
        slot = np.where(self._keys.take(h1) == keys, h1, ((keys * self._m2) >> self._shift).view(np.int64))
        pos = np.flatnonzero(self._keys.take(slot) == keys)
        return pos, self._values.take(slot.take(pos)).astype(np.int64)


@dataclass(frozen=True, slots=True)
class SparseRows:
    """TF-IDF rows in CSR form: row ``s`` holds ``indices[indptr[s]:indptr[s + 1]]`` (ascending) and
    their ``values``."""

    indptr: np.ndarray
    indices: np.ndarray
    values: FloatArray

    def row(self, s: int) -> tuple[np.ndarray, FloatArray]:
        a, b = int(self.indptr[s]), int(self.indptr[s + 1])
        return self.indices[a:b], self.values[a:b]


class TfidfVocabulary:
    """The fitted vocabularies and idf weights of both blocks; maps a prepared text to its tf-idf vector.

    ``word_idf[j]``/``char_idf[j]`` belong to ``words[j]``/``chars[j]``; feature index of ``chars[j]`` is
    ``len(words) + j``. Raises ``ValueError`` for inconsistent lengths or duplicate n-grams.
    """

    def __init__(self, words: Sequence[str], word_idf: Sequence[float], chars: Sequence[str],
                 char_idf: Sequence[float]) -> None:
        if len(words) != len(word_idf) or len(chars) != len(char_idf):
            raise ValueError(f"vocabulary and idf lengths differ: words {len(words)} vs {len(word_idf)}, "
                             f"chars {len(chars)} vs {len(char_idf)}")
        self.words, self.chars = tuple(words), tuple(chars)
        self.n_words = len(self.words)
        self.n_features = self.n_words + len(self.chars)
        self._word_index = {w: i for i, w in enumerate(self.words)}
        self._char_index = {c: self.n_words + i for i, c in enumerate(self.chars)}
        if len(self._word_index) != len(self.words) or len(self._char_index) != len(self.chars):
            raise ValueError("duplicate n-grams in the vocabulary")
        self.idf = np.concatenate([np.asarray(word_idf, dtype=np.float64), np.asarray(char_idf, dtype=np.float64)])
        self._ids = CharIds("".join(self.chars))
        self._fast = self._ids.base <= _MAX_KEY_BASE and all(CHAR_MIN <= len(c) <= CHAR_MAX for c in self.chars)
        # joins a batch's texts: any character outside the alphabet and not whitespace (never in a key)
        self._sep = next((c for c in map(chr, range(9)) if c not in self._ids.index), None)
        if self._fast:
            self._table = CuckooTable([self._ids.key(c) for c in self.chars], range(self.n_words, self.n_features))

    def transform(self, text: str) -> tuple[np.ndarray, FloatArray]:
        """(indices int64 (L,), values float64 (L,)) of the L non-zero features, indices ascending:
        row 0 of ``transform_many([text])``, bit for bit."""
        if not (self._fast and self._sep is not None):
            return self._transform_dicts(text)
        found = self._word_features(text)
        keys = self._table.lookup(self._char_keys(self._ids.ids(_SPACE_RUNS.sub(" ", text))))
        if found:
            keys = np.concatenate([np.array(found, dtype=np.int64), keys])
        if keys.size == 0:
            return keys, np.zeros(0)
        keys.sort()
        first = np.empty(keys.size, dtype=bool)
        first[0] = True
        np.not_equal(keys[1:], keys[:-1], out=first[1:])
        (starts,) = first.nonzero()  # = np.flatnonzero(first), without its Python wrapper
        idx = keys.take(starts)
        return idx, self._tfidf(idx, np.concatenate((starts[1:], [keys.size])) - starts)

    def transform_many(self, texts: Sequence[str]) -> SparseRows:
        """The TF-IDF rows of ``texts`` as one CSR matrix; row ``s`` does not depend on the other texts
        (same floats as ``transform(texts[s])``: every reduction runs per row, see ``_rows``).

        Counted with numpy over all texts at once (``_keys_numpy``: the texts joined by a character outside
        the vocabulary's alphabet, so no n-gram spans two texts), or with dicts when the alphabet is too
        large for 64-bit keys (``_keys_dicts``); both give the same indices and floats (a unit test pins it)."""
        texts = list(texts)
        if not texts:
            return SparseRows(np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0))
        keys = self._keys_numpy(texts) if self._fast and self._sep is not None else self._keys_dicts(texts)
        return self._rows(keys, len(texts))

    def _transform_numpy(self, text: str) -> tuple[np.ndarray, FloatArray]:
        return self._rows(self._keys_numpy([text]), 1).row(0)

    def _transform_dicts(self, text: str) -> tuple[np.ndarray, FloatArray]:
        return self._rows(self._keys_dicts([text]), 1).row(0)

    def _word_features(self, text: str) -> list[int]:
        """Feature indices of the vocabulary's word 1- and 2-grams in ``text`` (with repeats)."""
        get = self._word_index.get
        tokens = _WORD_TOKEN.findall(text)
        grams = tokens + list(map(" ".join, zip(tokens, tokens[1:])))
        return [i for i in map(get, grams) if i is not None]

    def _keys_numpy(self, texts: list[str]) -> np.ndarray:
        """Row-tagged feature occurrences ``row * n_features + feature`` (unsorted, with repeats)."""
        n_rows, n_feat = len(texts), self.n_features
        word_feats: list[int] = []
        word_counts: list[int] = []
        for text in texts:
            found = self._word_features(text)
            word_feats += found
            word_counts.append(len(found))
        subbed = [_SPACE_RUNS.sub(" ", t) for t in texts]
        joined = self._sep.join(subbed) if n_rows > 1 else subbed[0]  # type: ignore[union-attr]
        ids, (pos, feats) = self._char_hits(joined)
        words = np.array(word_feats, dtype=np.int64)
        if n_rows == 1:
            return np.concatenate([words, feats]) if word_feats else feats
        # char position of each key -> its row (the separator belongs to no n-gram the table holds)
        n = ids.size
        lengths = np.array([len(t) for t in subbed], dtype=np.int64)
        char_row = np.repeat(np.arange(n_rows, dtype=np.int64), lengths + 1)[:n]
        key_row = np.concatenate([char_row[:max(n - 1, 0)], char_row[:max(n - 2, 0)], char_row[:max(n - 3, 0)]])
        word_row = np.repeat(np.arange(n_rows, dtype=np.int64), word_counts)
        return np.concatenate([word_row * n_feat + words, key_row[pos] * n_feat + feats])

    def _char_hits(self, text: str) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """(char ids of ``text``, (positions in [2-gram keys | 3-gram keys | 4-gram keys] of the
        vocabulary's character n-grams, their feature indices))."""
        ids = self._ids.ids(text)
        return ids, self._table.hits(self._char_keys(ids))

    def _char_keys(self, ids: np.ndarray) -> np.ndarray:
        """[2-gram keys | 3-gram keys | 4-gram keys] of a text's char ids."""
        base = self._ids.base
        k2 = ids[:-1] * base + ids[1:]
        k3 = k2[:-1] * base + ids[2:]
        return np.concatenate([k2, k3, k3[:-1] * base + ids[3:]])

    def _keys_dicts(self, texts: list[str]) -> np.ndarray:
        out: list[int] = []
        get = self._char_index.get
        for row, text in enumerate(texts):
            found = self._word_features(text) + [i for i in map(get, char_ngrams(text)) if i is not None]
            offset = row * self.n_features
            out += [offset + i for i in found]
        return np.array(out, dtype=np.int64)

    def _rows(self, keys: np.ndarray, n_rows: int) -> SparseRows:
        """Row-tagged occurrences -> CSR rows of count * idf, each (row, block) divided by its L2 norm."""
        if keys.size == 0:
            return SparseRows(np.zeros(n_rows + 1, dtype=np.int64), keys, np.zeros(0))
        keys = np.sort(keys)
        first = np.empty(keys.size, dtype=bool)
        first[0] = True
        np.not_equal(keys[1:], keys[:-1], out=first[1:])
        starts = np.flatnonzero(first)
        counts = np.concatenate((starts[1:], [keys.size])) - starts
        if n_rows == 1:
            idx = keys[starts]
            return SparseRows(np.array([0, idx.size], dtype=np.int64), idx, self._tfidf(idx, counts))
        rows, idx = np.divmod(keys[starts], self.n_features)
        values = counts * self.idf.take(idx)
        block = rows * 2 + (idx >= self.n_words)
        bfirst = np.empty(block.size, dtype=bool)
        bfirst[0] = True
        np.not_equal(block[1:], block[:-1], out=bfirst[1:])
        bstarts = np.flatnonzero(bfirst)
        norms = np.sqrt(np.add.reduceat(values * values, bstarts))
        norms[~(norms > 0.0)] = 1.0  # x / 1.0 == x: what _tfidf does by skipping such a block
        values /= np.repeat(norms, np.concatenate((bstarts[1:], [block.size])) - bstarts)
        indptr = np.searchsorted(rows, np.arange(n_rows + 1, dtype=np.int64))
        return SparseRows(indptr, idx, values)

    def _tfidf(self, idx: np.ndarray, counts: np.ndarray) -> FloatArray:
        """One row: count * idf per feature, each block divided by its L2 norm. The sums of squares use
        ``np.add.reduceat`` as the many-row path does (its result for a segment depends on that segment's
        numbers only), so a row has the same floats alone or in a batch."""
        values = counts * self.idf.take(idx)
        k = int(idx.searchsorted(self.n_words))
        if 0 < k < idx.size:
            wn, cn = np.sqrt(np.add.reduceat(values * values, [0, k])).tolist()
            if wn > 0.0:
                values[:k] /= wn
            if cn > 0.0:
                values[k:] /= cn
        else:
            (norm,) = np.sqrt(np.add.reduceat(values * values, [0])).tolist()
            if norm > 0.0:
                values /= norm
        return values

    def to_json(self) -> bytes:
        data = {"analyzer": ANALYZER, "words": list(self.words), "word_idf": self.idf[:self.n_words].tolist(),
                "chars": list(self.chars), "char_idf": self.idf[self.n_words:].tolist()}
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes) -> TfidfVocabulary:
        """Raises ``ValueError``/``KeyError`` for a file this code cannot read (another analyzer included)."""
        d = json.loads(raw.decode("utf-8"))
        if d.get("analyzer") != ANALYZER:
            raise ValueError(f"analyzer {d.get('analyzer')!r}; this turnout computes {ANALYZER!r}")
        return cls(d["words"], d["word_idf"], d["chars"], d["char_idf"])
