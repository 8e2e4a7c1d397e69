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
from collections.abc import Sequence

import numpy as np

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


def feature_names(taxonomy: Sequence[str]) -> tuple[str, ...]:
    return TEXT_FEATURE_NAMES + SKETCH_FEATURE_NAMES + tuple(f"p_{c}" for c in taxonomy)


def feature_spec_hash(taxonomy: Sequence[str]) -> str:
    """Identifies the feature spec: version + ordered names. Stored in the manifest."""
    spec = FEATURE_VERSION + "|" + ",".join(feature_names(taxonomy))
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def _ends(text: str, n_chars: int) -> str:
    return text if len(text) <= n_chars else text[: n_chars // 2] + "\n" + text[-(n_chars // 2):]


def text_features(text: str, n_turns: int = 1) -> FloatArray:
    w = _ends(text, STATS_WINDOW)
    n = max(len(w), 1)
    values = (
        math.log1p(len(text)),
        math.log1p(len(w.split()) * len(text) / n),  # word and line counts scaled up from the window
        math.log1p((w.count("\n") + 1) * len(text) / n),
        math.log1p(max(n_turns, 1)),
        len(_DIGITS.findall(w)) / n,
        len(_UPPER.findall(w)) / n,
        len(_NON_ASCII.findall(w)) / n,
        len(_CODE.findall(w)) / n,
        len(_MATH.findall(w)) / n,
        float("?" in text),
        float("```" in text),
    )
    return np.asarray(values, dtype=np.float32)


def text_sketch(text: str) -> FloatArray:
    """Signed feature hashing of lowercase unigrams + bigrams into ``SKETCH_DIM`` buckets, L2-normed.

    crc32 (not ``hash``) so every process agrees; the sign bit halves collision bias.
    """
    half = SKETCH_TOKENS // 2
    head = _TOKEN.findall(text[: 16 * half].lower())[:half]
    tail = _TOKEN.findall(text[-16 * half:].lower())[-half:] if len(text) > 16 * half else []
    tokens = head + tail
    grams = tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:])]
    # integer counts in a list, one array at the end: numpy scalar updates cost ~2x (sums of +-1 are
    # exact in float32 below 2**24, so the result is bit-identical to accumulating in the array)
    acc = [0] * SKETCH_DIM
    crc32 = zlib.crc32
    for g in grams:
        h = crc32(g.encode("utf-8", "replace"))
        acc[h % SKETCH_DIM] += 1 if (h >> 16) & 1 else -1
    vec = np.array(acc, dtype=np.float32)
    norm = float(np.linalg.norm(vec))
    return vec / norm if norm else vec


def featurize(text: str, category_probs: Sequence[float] | FloatArray, n_turns: int = 1) -> FloatArray:
    """Context features for the model policy: shape ``(len(feature_names(taxonomy)),)``."""
    probs = np.asarray(category_probs, dtype=np.float32).reshape(-1)
    return np.concatenate([text_features(text, n_turns), text_sketch(text), probs])
