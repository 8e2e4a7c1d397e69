"""The sentence encoder's fused serving graph (router.encoder_graph) gives the packaged graph's
embeddings: the classifier heads and cache thresholds fitted on one are used with the other."""

from __future__ import annotations

import numpy as np
import pytest

from training.classifier import encoder_available

pytestmark = pytest.mark.skipif(not encoder_available(), reason="encoder packages not installed")


@pytest.fixture(scope="module")
def encoders():  # type: ignore[no-untyped-def]
    from router.encoder import SentenceEncoder
    from training.classifier import ENCODER_FILE, ENCODER_MAX_LENGTH, TOKENIZER_FILE, encoder_source_files

    files = encoder_source_files()
    fused = SentenceEncoder(files[ENCODER_FILE], files[TOKENIZER_FILE], max_length=ENCODER_MAX_LENGTH)
    shipped = SentenceEncoder(files[ENCODER_FILE], files[TOKENIZER_FILE], max_length=ENCODER_MAX_LENGTH, fuse=False)
    return fused, shipped


def _prompts(n: int) -> list[str]:
    from training.cache_data import paraphrase
    from training.prompts import CATEGORIES, generate_prompt

    rng = np.random.default_rng(3)
    out = [generate_prompt(CATEGORIES[i % len(CATEGORIES)], rng, difficulty=float(rng.uniform(0, 0.5))).text
           for i in range(n)]
    out = [paraphrase(t, rng) if i % 3 == 0 else t for i, t in enumerate(out)]
    # edge cases: empty, one token, over max_length (truncated), non-Latin, emoji, whitespace only
    return out + ["", "a", "word " * 400, "Wie spät ist es in Tokio?", "日本語のテキスト", "🙂🙂🙂", "   \n\t "]


def test_fused_graph_is_used_and_matches_the_packaged_graph(encoders) -> None:  # type: ignore[no-untyped-def]
    fused, shipped = encoders
    assert fused.fused and not shipped.fused
    texts = _prompts(200)
    a, b = fused.encode(texts), shipped.encode(texts)
    cos = (a * b).sum(axis=1)
    assert cos.min() >= 0.9999, (cos.argmin(), texts[int(cos.argmin())])
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    for t in texts[:8] + texts[-7:]:  # the single-prompt (unpadded, memoised) path
        assert float(fused.encode([t])[0] @ shipped.encode([t])[0]) >= 0.9999


def test_a_single_prompt_is_not_padded_and_padding_does_not_move_it(encoders) -> None:  # type: ignore[no-untyped-def]
    fused, _ = encoders
    assert len(fused.tokenizer.encode_batch(["hi"])[0].ids) == 3  # [CLS] hi [SEP], not max_length
    short, long = "reset my password", "how do I reset the password of my online banking account on a new phone"
    alone = fused._encode([short], 1)[0]
    padded = fused._encode([short, long], 2)[0]  # padded to the longer text in one batch
    assert float(alone @ padded) >= 0.9999


def test_any_string_encodes_and_valid_text_is_unchanged(encoders) -> None:  # type: ignore[no-untyped-def]
    fused, _ = encoders
    lone = "caf\ud800 menu"  # a lone surrogate, as json.loads gives for "\\ud800"
    out = fused.encode([lone, "x" * 100_000, ""])
    assert out.shape == (3, 384) and np.all(np.isfinite(out))
    assert float(fused.encode([lone])[0] @ fused.encode(["caf\ufffd menu"])[0]) >= 0.9999
    valid = "Wie spät ist es in Tokio? 🙂"
    assert float(fused._encode([valid], 1)[0] @ fused._encode([valid, "a"], 2)[0]) >= 0.9999


def test_a_model_of_another_shape_is_run_as_shipped() -> None:
    """An encoder graph the rewrite does not know (here: a bare embedding table) is run as shipped,
    with pooling in numpy."""
    from onnx import TensorProto, helper, numpy_helper

    from router.encoder import SentenceEncoder
    from router.encoder_graph import fuse_minilm
    from training.classifier import TOKENIZER_FILE, encoder_source_files

    table = np.random.default_rng(0).standard_normal((30522, 384)).astype(np.float32)
    ids_info = [helper.make_tensor_value_info(n, TensorProto.INT64, ["b", "s"])
                for n in ("input_ids", "attention_mask", "token_type_ids")]
    graph = helper.make_graph([helper.make_node("Gather", ["table", "input_ids"], ["last_hidden_state"])], "g", ids_info,
                              [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["b", "s", 384])],
                              initializer=[numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    assert fuse_minilm(model) is None
    enc = SentenceEncoder(model, encoder_source_files()[TOKENIZER_FILE])
    assert not enc.fused
    ids = enc.tokenizer.encode("hello world").ids
    want = table[ids].mean(axis=0)
    np.testing.assert_allclose(enc.encode(["hello world"])[0], want / np.linalg.norm(want), atol=1e-6)
