"""The one featurization used by training and serving alike.

The policy's context vector = cheap text statistics of the prompt + the classifier's category
probabilities (in taxonomy order). Training imports ``featurize`` from here and never re-implements a
feature, so training/serving skew is impossible by construction. Bump ``FEATURE_VERSION`` whenever a
feature changes meaning; bundles trained with another version are refused at load.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np

from router.types import FloatArray

FEATURE_VERSION = "1"

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
_CODE_SYMBOLS = frozenset("{}[]();=<>_#$\\`")
_MATH_SYMBOLS = frozenset("+-*/^=%√∑∫π")


def feature_names(taxonomy: Sequence[str]) -> tuple[str, ...]:
    return TEXT_FEATURE_NAMES + tuple(f"p_{c}" for c in taxonomy)


def feature_spec_hash(taxonomy: Sequence[str]) -> str:
    """Identifies the feature spec: version + ordered names. Stored in the manifest."""
    spec = FEATURE_VERSION + "|" + ",".join(feature_names(taxonomy))
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def text_features(text: str, n_turns: int = 1) -> FloatArray:
    n = max(len(text), 1)
    counts = _char_counts(text)
    values = (
        math.log1p(len(text)),
        math.log1p(len(text.split())),
        math.log1p(text.count("\n") + 1),
        math.log1p(max(n_turns, 1)),
        counts["digit"] / n,
        counts["upper"] / n,
        counts["non_ascii"] / n,
        counts["code"] / n,
        counts["math"] / n,
        float("?" in text),
        float("```" in text),
    )
    return np.asarray(values, dtype=np.float32)


def featurize(text: str, category_probs: Sequence[float] | FloatArray, n_turns: int = 1) -> FloatArray:
    """Context features for the model policy: shape ``(len(TEXT_FEATURE_NAMES) + n_categories,)``."""
    probs = np.asarray(category_probs, dtype=np.float32).reshape(-1)
    return np.concatenate([text_features(text, n_turns), probs])


def _char_counts(text: str) -> dict[str, int]:
    digit = upper = non_ascii = code = maths = 0
    for ch in text:
        digit += ch.isdigit()
        upper += ch.isupper()
        non_ascii += ord(ch) > 127
        code += ch in _CODE_SYMBOLS
        maths += ch in _MATH_SYMBOLS
    return {"digit": digit, "upper": upper, "non_ascii": non_ascii, "code": code, "math": maths}
