"""The sentence encoder's graphs (router.encoder_graph): the fused float32 graph gives the packaged
graph's embeddings; the int8-activation graph that embeds every text (training and serving alike)
stays close to them, and a text's embedding does not depend on the batch it came in."""

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
    fused = SentenceEncoder(files[ENCODER_FILE], files[TOKENIZER_FILE], max_length=ENCODER_MAX_LENGTH,
                            int8_single=False)
    shipped = SentenceEncoder(files[ENCODER_FILE], files[TOKENIZER_FILE], max_length=ENCODER_MAX_LENGTH, fuse=False)
    return fused, shipped


@pytest.fixture(scope="module")
def serving():  # type: ignore[no-untyped-def]
    """The encoder as serving (and training) builds it: every text on the int8-activation graph."""
    from training.classifier import load_encoder

    return load_encoder(threads=1)


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


def test_every_text_runs_the_int8_graph_close_to_the_packaged_graph(serving, encoders) -> None:  # type: ignore[no-untyped-def]
    """The one embedding function quantizes activations (router.encoder_graph.int8_minilm). Its
    embeddings and, what thresholds and classifier heads actually see, its pairwise similarities stay
    close to the packaged graph's. Serving holds that one session, no float32 graph besides."""
    _, shipped = encoders
    assert serving.int8_single
    assert serving.session.get_modelmeta().graph_name == "minilm_fused_int8"
    import onnx

    ops = [n.op_type for n in onnx.load_from_string(serving.single_graph).graph.node]
    assert ops.count("DynamicQuantizeMatMul") == 24 and "Gather" in ops  # 6 layers x 4; outlier channels in float32
    texts = _prompts(80)
    ref = shipped.encode(texts)
    single = np.stack([serving._encode([t], 1)[0] for t in texts])
    cos = (single * ref).sum(axis=1)
    assert cos.mean() >= 0.998 and cos.min() >= 0.985, (cos.mean(), cos.min(), texts[int(cos.argmin())])
    assert not np.allclose(single, ref, atol=1e-5)  # it is a different computation, not the float32 graph
    iu = np.triu_indices(len(texts), 1)
    drift = np.abs((single @ single.T) - (ref @ ref.T))[iu]
    assert float(np.percentile(drift, 99)) <= 0.02 and float(drift.max()) <= 0.05, (np.percentile(drift, 99),
                                                                                      drift.max())


def test_a_batch_row_is_bit_identical_to_the_text_alone(serving) -> None:  # type: ignore[no-untyped-def]
    """Training embeds batches (classifier heads, cache thresholds, verifier), serving one prompt
    (memoised): both must see the same vector, bit for bit, whatever the batch, its order, the batch
    size or the thread count (training loads the encoder with 2 threads, serving with 1)."""
    from training.classifier import load_encoder

    texts = _prompts(40)
    alone = np.stack([serving._encode([t], 1)[0] for t in texts])
    np.testing.assert_array_equal(serving.encode(texts, batch_size=8), alone)
    rev = serving.encode(texts[::-1] + ["word " * 300], batch_size=32)  # other neighbours, other padding
    np.testing.assert_array_equal(rev[:-1][::-1], alone)
    np.testing.assert_array_equal(load_encoder(threads=2).encode(texts), alone)
    for i in (0, 5, len(texts) - 1):  # the memoised single-prompt path (Router.decide)
        np.testing.assert_array_equal(serving.encode([texts[i]])[0], alone[i])
        np.testing.assert_array_equal(serving.encode_one(texts[i]), alone[i])


def test_without_the_int8_graph_everything_runs_float32(monkeypatch, caplog, encoders) -> None:  # type: ignore[no-untyped-def]
    """An onnxruntime that cannot build the int8 graph: a warning, then batches and lone prompts
    both run the fused float32 graph (still one featurization), with the packaged graph's vectors."""
    import logging

    import router.encoder as encoder_mod
    import router.encoder_graph as graph_mod
    from router.encoder import SentenceEncoder
    from training.classifier import ENCODER_FILE, ENCODER_MAX_LENGTH, TOKENIZER_FILE, encoder_source_files

    def broken(*_a, **_k):  # type: ignore[no-untyped-def]
        raise RuntimeError("no DynamicQuantizeMatMul here")

    monkeypatch.setattr(encoder_mod, "_INT8", {})
    monkeypatch.setattr(graph_mod, "matmul_inputs", broken)
    files = encoder_source_files()
    with caplog.at_level(logging.WARNING, logger="turnout.encoder"):
        enc = SentenceEncoder(files[ENCODER_FILE], files[TOKENIZER_FILE], max_length=ENCODER_MAX_LENGTH)
    assert "int8 encoder graph not built" in caplog.text and "no DynamicQuantizeMatMul here" in caplog.text
    assert enc.fused and not enc.int8_single and enc.session.get_modelmeta().graph_name != "minilm_fused_int8"
    _, shipped = encoders
    texts = _prompts(8)
    batch, ref = enc.encode(texts), shipped.encode(texts)
    assert float((batch * ref).sum(axis=1).min()) >= 0.9999
    assert float(min(enc.encode([t])[0] @ batch[i] for i, t in enumerate(texts))) >= 0.9999


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


def test_a_bundle_gets_the_embedding_its_heads_were_fitted_on(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Manifests name the embedding function (``EncoderInfo.embedding``/``EncoderFiles.embedding``):
    older ones (no field) were fitted on float32 batches and keep getting them; int8 ones get int8,
    and a process that cannot build the int8 graph refuses such a bundle instead of serving skewed
    vectors. The cache shares the classifier's encoder only when both saw the same embedding."""
    import router.encoder as encoder_mod
    import router.encoder_graph as graph_mod
    from router.cache import CachePolicy, EncoderFiles, load_cache_parts
    from router.classifier import EncoderInfo
    from router.encoder import encoder_for
    from router.errors import ArtifactError
    from router.types import CURRENT_EMBEDDING, LEGACY_EMBEDDING
    from training.classifier import ENCODER_FILE, ENCODER_MAX_LENGTH, TOKENIZER_FILE, encoder_source_files

    files = encoder_source_files()
    assert EncoderInfo(name="e", model_file="m", tokenizer_file="t", max_length=8, dim=384,
                       source="s").embedding == LEGACY_EMBEDDING
    assert EncoderFiles().embedding == LEGACY_EMBEDDING
    legacy = encoder_for(files[ENCODER_FILE], files[TOKENIZER_FILE], max_length=ENCODER_MAX_LENGTH,
                         embedding=LEGACY_EMBEDDING)
    current = encoder_for(files[ENCODER_FILE], files[TOKENIZER_FILE], max_length=ENCODER_MAX_LENGTH,
                          embedding=CURRENT_EMBEDDING)
    assert (legacy.embedding, legacy.int8_single) == (LEGACY_EMBEDDING, False)
    assert (current.embedding, current.int8_single) == (CURRENT_EMBEDDING, True)

    policy = CachePolicy(encoder=EncoderFiles(model_file=ENCODER_FILE, tokenizer_file=TOKENIZER_FILE,
                                              max_length=ENCODER_MAX_LENGTH, embedding=CURRENT_EMBEDDING))
    assert load_cache_parts(policy, files, shared_encoder=current)[0] is current
    own, _ = load_cache_parts(policy, files, shared_encoder=legacy)
    assert own is not legacy and own.embedding == CURRENT_EMBEDDING

    def broken(*_a, **_k):  # type: ignore[no-untyped-def]
        raise RuntimeError("no DynamicQuantizeMatMul here")

    monkeypatch.setattr(encoder_mod, "_INT8", {})
    monkeypatch.setattr(graph_mod, "matmul_inputs", broken)
    with pytest.raises(ArtifactError, match="int8_single_v1"):
        encoder_for(files[ENCODER_FILE], files[TOKENIZER_FILE], max_length=ENCODER_MAX_LENGTH,
                    embedding=CURRENT_EMBEDDING)
