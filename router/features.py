"""The one featurization used by training and serving alike.

The policy's context vector = cheap text statistics + a hashed bag of words/bigrams of the prompt +
the classifier's category probabilities (in taxonomy order). Training imports ``featurize`` from
here and never re-implements a feature, so training/serving skew is impossible by construction. Bump
``FEATURE_VERSION`` whenever a feature changes meaning; bundles trained with another version are
refused at load.

Cost is bounded for any input: character statistics are regex scans of at most ``STATS_WINDOW``
characters (both ends of long prompts), and the hashed sketch reads at most ``SKETCH_TOKENS // 2``
tokens from each end (the question usually sits at one end). Only the length features see everything.
"""

from __future__ import annotations

import hashlib
import math
import re
import zlib
from array import array
from collections.abc import Sequence
from itertools import repeat
from operator import mul, sub, truediv

import numpy as np

from router.ascii_regex import AsciiTwin
from router.types import FloatArray

FEATURE_VERSION = "2"
SKETCH_DIM = 64
SKETCH_TOKENS = 256
STATS_WINDOW = 4_000

TEXT_FEATURE_NAMES: tuple[str, ...] = (
    "log_chars",
    "log_words",
    "log_lines",
    "log_turns",
    "frac_digits",
    "frac_upper",
    "frac_non_ascii",
    "frac_code_symbols",
    "frac_math_symbols",
    "has_question",
    "has_code_fence",
)
SKETCH_FEATURE_NAMES: tuple[str, ...] = tuple(f"h{i:02d}" for i in range(SKETCH_DIM))
_DIGITS = re.compile(r"\d")
_UPPER = re.compile(r"[A-Z\u00C0-\u00DE\u0391-\u03A9\u0410-\u042F]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_CODE = re.compile(r"[{}\[\]();=<>_#$\\`]")
_MATH = re.compile(r"[+\-*/^=%√∑∫π]")
_TOKEN = re.compile(r"\w+")
_TOKENS = AsciiTwin(_TOKEN.pattern)  # _TOKEN with an re.ASCII twin for ASCII text (same tokens)
# the ASCII members of _DIGITS, _UPPER, _CODE and _MATH (text_features' fast path for ASCII text)
_ASCII_CLASSES = (b"0123456789", b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"{}[]();=<>_#$\\`", b"+-*/^=%")
_SLOTS: dict[str, int] = {}  # gram -> signed bucket (see _slot), bounded
_MAX_SLOTS = 200_000


def feature_names(taxonomy: Sequence[str]) -> tuple[str, ...]:
    return TEXT_FEATURE_NAMES + SKETCH_FEATURE_NAMES + tuple(f"p_{c}" for c in taxonomy)


def feature_spec_hash(taxonomy: Sequence[str]) -> str:
    """Identifies the feature spec: version + ordered names. Stored in the manifest."""
    spec = FEATURE_VERSION + "|" + ",".join(feature_names(taxonomy))
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def _ends(text: str, n_chars: int) -> str:
    return text if len(text) <= n_chars else text[: n_chars // 2] + "\n" + text[-(n_chars // 2):]


def text_features(text: str, n_turns: int = 1) -> FloatArray:
    return np.array(_text_values(text, n_turns), dtype=np.float32)


def _text_values(text: str, n_turns: int) -> list[float]:
    w = _ends(text, STATS_WINDOW)
    n = max(len(w), 1)
    if w.isascii():
        # ASCII: the classes reduce to byte sets; bytes.translate counts them without building match lists
        b = w.encode("ascii")
        size = len(b)
        counts = [size - len(b.translate(None, chars)) for chars in _ASCII_CLASSES]
        counts.insert(2, 0)  # no non-ASCII characters
    else:
        counts = [len(p.findall(w)) for p in (_DIGITS, _UPPER, _NON_ASCII, _CODE, _MATH)]
    return [
        math.log1p(len(text)),
        math.log1p(len(w.split()) * len(text) / n),  # word and line counts scaled up from the window
        math.log1p((w.count("\n") + 1) * len(text) / n),
        math.log1p(max(n_turns, 1)),
        *(c / n for c in counts),
        float("?" in text),
        float("```" in text),
    ]


def text_sketch(text: str) -> FloatArray:
    """Signed feature hashing of lowercase unigrams + bigrams into ``SKETCH_DIM`` buckets, L2-normed.

    crc32 (not ``hash``) so every process agrees; the sign bit halves collision bias.
    """
    return np.array(_sketch_values(text), dtype=np.float32)


def _slot(gram: str) -> int:
    """Bucket of ``gram``, plus ``SKETCH_DIM`` when its sign is +1."""
    h = zlib.crc32(gram.encode("utf-8", "replace"))
    return h % SKETCH_DIM + (SKETCH_DIM if (h >> 16) & 1 else 0)


def _sketch_values(text: str) -> list[float]:
    """``text_sketch`` as Python floats whose float32 roundings are its values: integer counts per
    signed bucket (the crc32 of a gram is memoised: most words and bigrams recur across requests), then
    numpy's float32 arithmetic emulated exactly -- ``norm = float32(sqrt(sum of squares))`` (the float32
    dot of integers below 2**24 is exact), ``value = count / norm`` in float64, which rounds to float32
    like one float32 division (both callers cast to float32; rounding here too would change nothing)."""
    half = SKETCH_TOKENS // 2
    head = _TOKENS.findall(text[: 16 * half].lower())[:half]
    tail = _TOKENS.findall(text[-16 * half:].lower())[-half:] if len(text) > 16 * half else []
    tokens = head + tail
    grams = tokens + list(map(" ".join, zip(tokens, tokens[1:])))
    slots = list(map(_SLOTS.get, grams))
    acc = [0] * (2 * SKETCH_DIM)
    try:
        for slot in slots:
            acc[slot] += 1
    except TypeError:  # a gram not memoised yet (its slot is None): count them all again, filling the memo
        acc = [0] * (2 * SKETCH_DIM)
        for g, slot in zip(grams, slots):
            if slot is None:
                slot = _slot(g)
                if len(_SLOTS) < _MAX_SLOTS:
                    _SLOTS[g] = slot
            acc[slot] += 1
    counts = list(map(sub, acc[SKETCH_DIM:], acc[:SKETCH_DIM]))
    squares = sum(map(mul, counts, counts))
    if not squares:
        return [float(c) for c in counts]
    norm = array("f", [math.sqrt(squares)])[0]
    return list(map(truediv, counts, repeat(norm, SKETCH_DIM)))


def featurize(text: str, category_probs: Sequence[float] | FloatArray, n_turns: int = 1) -> FloatArray:
    """Context features for the model policy: shape ``(len(feature_names(taxonomy)),)``."""
    probs = category_probs.reshape(-1).tolist() if isinstance(category_probs, np.ndarray) else list(category_probs)
    return np.array(_text_values(text, n_turns) + _sketch_values(text) + probs, dtype=np.float32)
