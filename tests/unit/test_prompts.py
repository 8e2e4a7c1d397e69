"""training.prompts: determinism, variety, difficulty visible in the text, input validation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from training.prompts import CATEGORIES, GeneratedPrompt, generate_prompt

N_DISTINCT = 5000


def _batch(category: str, seed: int, n: int, difficulty: float | None = None) -> list[GeneratedPrompt]:
    rng = np.random.default_rng(seed)
    return [generate_prompt(category, rng, difficulty) for _ in range(n)]


def test_categories_constant() -> None:
    assert CATEGORIES == ("code", "math", "writing", "knowledge", "chat", "translation")


@pytest.mark.parametrize("category", CATEGORIES)
def test_deterministic_given_seed(category: str) -> None:
    a, b = _batch(category, 123, 200), _batch(category, 123, 200)
    assert a == b
    assert [p.text for p in a] != [p.text for p in _batch(category, 124, 200)]


def test_same_rng_state_same_prompt_regardless_of_history() -> None:
    rng = np.random.default_rng(9)
    state = rng.bit_generator.state
    first = generate_prompt("code", rng, 0.8)
    rng.bit_generator.state = state
    assert generate_prompt("code", rng, 0.8) == first


@pytest.mark.parametrize("category", CATEGORIES)
def test_many_distinct_texts(category: str) -> None:
    texts = {p.text for p in _batch(category, 0, N_DISTINCT)}
    assert len(texts) >= 3000, f"{category}: only {len(texts)} distinct texts out of {N_DISTINCT}"


@pytest.mark.parametrize("category", CATEGORIES)
def test_fields_and_difficulty_range(category: str) -> None:
    prompts = _batch(category, 1, 500)
    d = np.array([p.difficulty for p in prompts])
    assert all(p.category == category and isinstance(p.difficulty, float) for p in prompts)
    assert all(p.text and p.text == p.text.strip() for p in prompts)
    assert (d >= 0.0).all() and (d <= 1.0).all()
    # Beta(2, 2): mean 0.5, both halves well populated
    assert 0.45 < d.mean() < 0.55 and (d < 0.3).sum() > 50 and (d > 0.7).sum() > 50


@pytest.mark.parametrize("category", CATEGORIES)
def test_difficulty_visible_in_length(category: str) -> None:
    prompts = _batch(category, 2, 800)
    d = np.array([p.difficulty for p in prompts])
    length = np.array([len(p.text) for p in prompts], dtype=float)
    assert length[d > 0.7].mean() > 2.0 * length[d < 0.3].mean()
    rank_d, rank_len = np.argsort(np.argsort(d)), np.argsort(np.argsort(length))
    spearman = float(np.corrcoef(rank_d, rank_len)[0, 1])
    assert spearman > 0.5, f"{category}: spearman(difficulty, length) = {spearman:.2f}"


@pytest.mark.parametrize("category", CATEGORIES)
def test_explicit_difficulty_is_kept(category: str) -> None:
    easy, hard = _batch(category, 3, 200, 0.05), _batch(category, 3, 200, 0.95)
    assert {p.difficulty for p in easy} == {0.05} and {p.difficulty for p in hard} == {0.95}
    assert np.mean([len(p.text) for p in hard]) > 3 * np.mean([len(p.text) for p in easy])


def test_hard_prompts_carry_structure() -> None:
    """Hard code prompts sometimes include fenced code; hard math asks for proofs / rigour."""
    code = [p.text for p in _batch("code", 4, 300, 0.95)]
    assert sum("```" in t for t in code) > 60
    math_ = [p.text.lower() for p in _batch("math", 4, 300, 0.95)]
    assert sum("prove" in t for t in math_) > 40
    chat_easy = [p.text for p in _batch("chat", 4, 300, 0.02)]
    assert min(len(t.split()) for t in chat_easy) <= 2 and np.mean([len(t) for t in chat_easy]) < 40


def test_translation_prompts_name_a_language() -> None:
    langs = ("french", "german", "spanish", "japanese", "italian", "portuguese", "chinese", "korean", "dutch",
             "russian", "arabic", "hindi", "polish", "turkish", "swedish", "greek", "english")
    texts = [p.text.lower() for p in _batch("translation", 5, 300)]
    named = sum(any(lang in t for lang in langs) for t in texts)
    assert named >= 0.9 * len(texts)


def test_default_difficulty_draws_from_rng() -> None:
    rng = np.random.default_rng(6)
    ds = {generate_prompt("chat", rng).difficulty for _ in range(50)}
    assert len(ds) == 50


def test_frozen_dataclass() -> None:
    p = generate_prompt("math", np.random.default_rng(0), 0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.text = "x"  # type: ignore[misc]


def test_unknown_category_error_names_category_and_allowed() -> None:
    with pytest.raises(ValueError) as exc:
        generate_prompt("poetry", np.random.default_rng(0))
    msg = str(exc.value)
    assert "'poetry'" in msg
    assert all(c in msg for c in CATEGORIES)


@pytest.mark.parametrize("bad", [-0.01, 1.01, float("nan")])
def test_out_of_range_difficulty_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="difficulty"):
        generate_prompt("code", np.random.default_rng(0), bad)
