"""Replica choice: the replica snapshot features, the learned TTFT scorer and the replica policies.

One featurization, ``replica_features(stats, request)``, serves the discrete-event simulator (stats
from ``training.engine.ReplicaEngine.stats``), the telemetry the scorer is trained on, and the Ray
Serve ``RequestRouter`` (stats from each replica's ``record_routing_stats``). Stats keys:

==================== =====================================================================================
``num_ongoing``      requests admitted to the engine (prefilling or decoding)
``num_waiting``      requests queued in front of the engine (not admitted: KV full or batch full)
``running_tokens``   KV tokens reserved by admitted requests
``waiting_tokens``   prompt tokens still to prefill (admitted remainder + queued, net of prefix-cache hits)
``kv_used_frac``     ``running_tokens / kv_capacity_tokens``
``kv_capacity_tokens`` KV capacity in tokens
``queued_kv_tokens`` KV tokens the queued (not admitted) requests will reserve (prompt + output each): with
                     ``kv_free_tokens`` it tells whether a new request's KV fits or it waits for decodes to end
``step_ms``          duration of the engine step in progress (of a minimal step when idle): speed signal
``prefix_summary``   optional; container of cached block hashes (``in`` is all that is used); replicas send
                     the compact list of hashes at ``PREFIX_CHECKPOINTS`` positions only
``ts``               optional; wall-clock time of the snapshot (the Serve router counts its later sends)
==================== =====================================================================================

Policies (``POLICIES``) choose an index into a list of snapshots. Every random choice breaks ties
uniformly, so no replica is favoured by its position in the list (LiteLLM#39322's tie bias).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import contains
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from router.errors import ArtifactError, FeatureMismatchError
from router.request import estimate_tokens

BLOCK_TOKENS = 512  # Mooncake's KV block: prefix hash i covers tokens [512 i, 512 (i + 1))
BLOCK_CHARS = 4 * BLOCK_TOKENS  # without a tokenizer, ~4 characters per token (router.request.estimate_tokens)


def _checkpoints(limit: int = 1 << 22) -> tuple[int, ...]:
    """Block positions whose hashes summarise a prefix cache: prefix lengths 1,2,3,4,6,8,12,16,24,...
    (about sqrt(2) apart), so a matched prefix is known to within ~1.5x from ~2 log2(n) lookups."""
    lengths, a, b = [1, 2, 3], 2, 3
    while lengths[-1] < limit:
        a, b = 2 * a, 2 * b
        lengths += [a, b]
    return tuple(sorted({n - 1 for n in lengths if n <= limit}))


PREFIX_CHECKPOINTS: tuple[int, ...] = _checkpoints()

STATS_KEYS: tuple[str, ...] = ("num_ongoing", "num_waiting", "running_tokens", "waiting_tokens", "kv_used_frac",
                               "kv_capacity_tokens", "step_ms", "queued_kv_tokens")
REPLICA_FEATURE_VERSION = "replica-v2"
REPLICA_FEATURE_NAMES: tuple[str, ...] = (
    "num_ongoing", "num_waiting", "running_tokens", "waiting_tokens", "kv_used_frac", "kv_free_tokens", "step_ms",
    "queued_kv_tokens",
    "input_tokens", "prefix_hit_tokens", "uncached_tokens", "work_ahead_tokens", "work_ahead_token_s",
    "kv_need_frac", "kv_excess_tokens")
N_REQUEST = 7  # the last seven features depend on the request


@dataclass(frozen=True, slots=True)
class ReplicaRequest:
    """What the replica choice knows about a request: its prompt size and prompt block hashes."""

    input_tokens: int
    prefix_hashes: tuple[int, ...] = ()


def prompt_block_hashes(text: str, block_chars: int = BLOCK_CHARS) -> tuple[int, ...]:
    """Chained 63-bit hashes of the prompt's full blocks (``block_chars`` characters ~ 512 tokens).

    Hash ``i`` covers blocks ``0..i``, so equal hashes mean equal prefixes (Mooncake ``hash_ids``
    semantics); a partial last block is not hashed (engines cache full blocks only).
    """
    out: list[int] = []
    previous = b""
    data = memoryview(text.encode("utf-8", "replace"))
    blake2b, from_bytes = hashlib.blake2b, int.from_bytes
    for start in range(0, len(data) - block_chars + 1, block_chars):
        h = blake2b(previous, digest_size=8)
        h.update(data[start:start + block_chars])
        previous = h.digest()
        out.append(from_bytes(previous, "big") >> 1)
    return tuple(out)


def request_from_body(body: Any) -> ReplicaRequest:
    """A ``ReplicaRequest`` from an OpenAI chat body (or a bare prompt string); ``metadata.input_tokens`` /
    ``metadata.prefix_hashes`` override the estimates (trace replay). Anything unexpected gives an empty
    request, never an exception (this runs on the routing path)."""
    if isinstance(body, str):
        return ReplicaRequest(estimate_tokens(body), prompt_block_hashes(body))
    if not isinstance(body, Mapping):
        return ReplicaRequest(0)
    meta = body.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    messages = body.get("messages")
    text = ""
    if isinstance(messages, list):
        text = "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, Mapping))
    n_in = meta.get("input_tokens")
    n_in = n_in if isinstance(n_in, int) and not isinstance(n_in, bool) and n_in >= 0 else estimate_tokens(text)
    hashes = meta.get("prefix_hashes")
    if isinstance(hashes, list) and all(isinstance(h, int) for h in hashes):
        return ReplicaRequest(n_in, tuple(hashes))
    return ReplicaRequest(n_in, prompt_block_hashes(text))


def prefix_hit_tokens(hashes: Sequence[int], summary: Container[int] | None, input_tokens: int,
                      block_tokens: int = BLOCK_TOKENS) -> int:
    """Prompt tokens a replica's prefix cache would serve, judged at ``PREFIX_CHECKPOINTS`` positions.

    The longest checkpoint prefix whose hash is cached (stopping at the first miss, as chained hashes
    imply) -- an under-estimate by at most ~1.5x; capped at ``input_tokens - 1``.
    """
    if not hashes or not summary:
        return 0
    n, hit = len(hashes), 0
    for p in PREFIX_CHECKPOINTS:
        if p >= n or hashes[p] not in summary:
            break
        hit = p + 1
    return min(hit * block_tokens, input_tokens - 1) if hit else 0


def has_stats(stats: Mapping[str, Any] | None) -> bool:
    """True if ``stats`` carries every key the features need (else policies fall back to pow-2)."""
    return bool(stats) and all(k in stats for k in STATS_KEYS)  # type: ignore[union-attr]


ReplicaState = tuple[float, float, float, float, float, float, float, float]
N_STATE = 8  # the first eight features depend on the replica only


def replica_state(stats: Mapping[str, Any], sent: int = 0, sent_tokens: int = 0) -> ReplicaState:
    """The request-independent features (the first ``N_STATE`` of ``REPLICA_FEATURE_NAMES``).

    ``sent``/``sent_tokens``: requests (and their uncached prompt tokens) the caller sent this replica
    after ``stats`` was taken; they count as waiting, and their tokens as queued KV (a lower bound: the
    router knows neither their cached part nor their output; see ``serving.replica_router``).

    Raises:
        KeyError: a key of ``STATS_KEYS`` is missing (check ``has_stats`` first).
    """
    running = float(stats["running_tokens"])
    return (float(stats["num_ongoing"]), float(stats["num_waiting"]) + sent, running,
            float(stats["waiting_tokens"]) + sent_tokens, float(stats["kv_used_frac"]),
            float(stats["kv_capacity_tokens"]) - running, float(stats["step_ms"]),
            float(stats["queued_kv_tokens"]) + sent_tokens)


def features_from_states(states: Any, hit_tokens: Any, input_tokens: Any) -> np.ndarray:
    """THE featurization, vectorised: replica states + the request's prefix hits -> feature rows.

    Args:
        states: ``(n, N_STATE)`` from ``replica_state``.
        hit_tokens: ``(n,)`` from ``prefix_hit_tokens`` (request on each replica).
        input_tokens: the prompt size, a scalar or ``(n,)`` (one request per row: simulator telemetry).

    Returns:
        float32 ``(n, len(REPLICA_FEATURE_NAMES))``: the state, then ``input_tokens``,
        ``prefix_hit_tokens``, ``uncached_tokens = max(input - hit, 1)``, ``work_ahead_tokens =
        waiting_tokens + uncached`` and ``work_ahead_token_s = work_ahead_tokens * step_ms / 1000`` --
        prefill work ahead priced at the replica's current speed (a slow or busy replica's steps are
        longer), so the trees need not learn the product from its two factors -- then ``kv_need_frac =
        (queued_kv_tokens + input) * (1 / max(kv_free_tokens, 1))`` and ``kv_excess_tokens =
        (queued_kv_tokens - kv_free_tokens) + input``: KV the request and the queue ahead of it need
        beyond what is free (negative: headroom). A request whose KV does not fit waits (head-of-line)
        until running requests finish decoding -- seconds on a long-context trace, and invisible in the
        prefill work (the largest rank errors of ``replica-v1`` on Mooncake were such requests).
    """
    st = np.asarray(states, dtype=np.float64).reshape(-1, N_STATE)
    x = np.empty((st.shape[0], len(REPLICA_FEATURE_NAMES)), dtype=np.float64)
    x[:, :N_STATE] = st
    x[:, 8] = input_tokens
    x[:, 9] = hit_tokens
    np.maximum(x[:, 8] - x[:, 9], 1.0, out=x[:, 10])
    np.add(st[:, 3], x[:, 10], out=x[:, 11])
    np.multiply(x[:, 11], st[:, 6] / 1000.0, out=x[:, 12])
    np.multiply(st[:, 7] + x[:, 8], 1.0 / np.maximum(st[:, 5], 1.0), out=x[:, 13])
    np.add(st[:, 7] - st[:, 5], x[:, 8], out=x[:, 14])
    return x.astype(np.float32)


_add, _mul = np.add, np.multiply


class FeatureRows:
    """``features_from_states`` for one set of replica states, preallocated: the float32 rows ``x`` hold
    the state columns, and ``fill`` rewrites only the request columns (the last ``N_REQUEST``) in place.

    The serving hot path (``serving.replica_router``): a decision costs three numpy calls instead of
    building a matrix, and ``x`` can stay bound to an ONNX session (``ReplicaScorer.bind``). The seven
    request columns are ``(add + request) * mul`` in float64, cast once into ``x``, with per row
    ``add = [0, 0, 0, W, W, Q, Q - F]``, ``mul = [1, 1, 1, 1, step_ms / 1000, 1 / max(F, 1), 1]`` (W
    waiting tokens, Q queued KV tokens, F free KV tokens) and ``request = [input, hit, uncached,
    uncached, uncached, input, input]``: adding 0 and multiplying by 1 are exact, so values are bitwise
    those of ``features_from_states`` (the same float64 arithmetic, one cast to float32;
    ``tests/unit/test_replica_router.py`` pins it).
    """

    __slots__ = ("x", "_out", "_add", "_mul", "_req", "_rows", "_tmp", "_free", "_last")

    def __init__(self, states: Any) -> None:
        st = np.asarray(states, dtype=np.float64).reshape(-1, N_STATE)
        n = st.shape[0]
        self.x = np.zeros((n, len(REPLICA_FEATURE_NAMES)), dtype=np.float32)
        self._out = self.x[:, N_STATE:]  # the request columns, a view written by np.multiply(out=)
        self._add = np.zeros((n, N_REQUEST), dtype=np.float64)
        self._mul = np.ones((n, N_REQUEST), dtype=np.float64)
        self._req = np.zeros(N_REQUEST, dtype=np.float64)  # one request row, broadcast (no prefix hit anywhere)
        self._rows = np.zeros((n, N_REQUEST), dtype=np.float64)  # per-row request values (prefix hits differ)
        self._tmp = np.empty((n, N_REQUEST), dtype=np.float64)
        self._free = np.zeros(n, dtype=np.float64)
        self._last: float | None = None  # input_tokens held in _req
        self.set_states(st)

    def set_states(self, states: Any) -> None:
        """Replace the state columns (same shape as at construction)."""
        st = np.asarray(states, dtype=np.float64).reshape(-1, N_STATE)
        self.x[:, :N_STATE] = st
        self._free[:] = st[:, 5]
        self._mul[:, 4] = st[:, 6] / 1000.0
        self._mul[:, 5] = 1.0 / np.maximum(st[:, 5], 1.0)
        self.set_queued(st[:, 1], st[:, 3], st[:, 7])

    def set_queued(self, num_waiting: np.ndarray, waiting_tokens: np.ndarray, queued_kv_tokens: np.ndarray) -> None:
        """Replace only the ``num_waiting``, ``waiting_tokens`` and ``queued_kv_tokens`` columns (float64 ``(n,)``)."""
        x, add = self.x, self._add
        x[:, 1] = num_waiting
        x[:, 3] = waiting_tokens
        x[:, 7] = queued_kv_tokens
        add[:, 3] = waiting_tokens
        add[:, 4] = waiting_tokens
        add[:, 5] = queued_kv_tokens
        np.subtract(queued_kv_tokens, self._free, out=add[:, 6])

    def set_queued_row(self, i: int, num_waiting: float, waiting_tokens: float, queued_kv_tokens: float) -> None:
        """``set_queued`` for row ``i`` only."""
        x = self.x
        x[i, 1] = num_waiting
        x[i, 3] = waiting_tokens
        x[i, 7] = queued_kv_tokens
        add = self._add
        add[i, 3] = waiting_tokens
        add[i, 4] = waiting_tokens
        add[i, 5] = queued_kv_tokens
        add[i, 6] = queued_kv_tokens - self._free[i]

    def fill(self, hit_tokens: Sequence[int] | None, input_tokens: int) -> np.ndarray:
        """Write the request columns for a request of ``input_tokens`` with ``hit_tokens`` per row (``None``:
        no hit anywhere); returns ``x``."""
        n_in = float(input_tokens)
        if hit_tokens is None or not any(hit_tokens):  # no prefix hit anywhere (the common case)
            req = self._req
            if n_in != self._last:
                u = n_in if n_in > 1.0 else 1.0
                req[0] = req[5] = req[6] = n_in
                req[2] = req[3] = req[4] = u
                self._last = n_in
        else:
            req = self._rows
            hits = np.array(hit_tokens, dtype=np.float64)
            req[:, 0] = n_in
            req[:, 1] = hits
            np.maximum(n_in - hits, 1.0, out=req[:, 2])
            req[:, 3] = req[:, 2]
            req[:, 4] = req[:, 2]
            req[:, 5] = n_in
            req[:, 6] = n_in
        tmp = self._tmp
        _add(self._add, req, tmp)  # positional out: no keyword parsing
        _mul(tmp, self._mul, tmp)
        self._out[...] = tmp  # one cast to float32 (faster than a casting ufunc into the strided view)
        return self.x


def request_hits(request: ReplicaRequest, summaries: Sequence[Container[int] | None]) -> list[int]:
    """``prefix_hit_tokens`` of ``request`` on each replica's prefix summary."""
    hits = request_hits_or_none(request, summaries)
    return [0] * len(summaries) if hits is None else hits


def request_hits_or_none(request: ReplicaRequest, summaries: Sequence[Container[int] | None],
                         present: Sequence[Container[int]] | None = None) -> list[int] | None:
    """``request_hits``, or ``None`` when no replica has even the request's first block (the common case:
    then every hit is 0 and ``FeatureRows.fill`` takes its broadcast path). ``present``: the summaries
    that are not ``None`` (the caller may keep it per set of replicas)."""
    hashes = request.prefix_hashes
    if not hashes:
        return None
    if present is None:
        present = [s for s in summaries if s is not None]
    if not any(map(contains, present, repeat(hashes[0]))):  # C-level: no summary holds the first block
        return None
    n, n_in = len(hashes), request.input_tokens
    probes = [(hashes[p], min((p + 1) * BLOCK_TOKENS, n_in - 1)) for p in PREFIX_CHECKPOINTS if p < n]
    out = []
    for summary in summaries:  # prefix_hit_tokens, inlined: the checkpoint probes are built once per request
        hit = 0
        if summary:
            for h, tokens in probes:
                if h not in summary:
                    break
                hit = tokens
        out.append(hit)
    return out


def replica_feature_matrix(stats: Sequence[Mapping[str, Any]], request: ReplicaRequest) -> np.ndarray:
    """Features of sending ``request`` to each replica: shape ``(len(stats), len(REPLICA_FEATURE_NAMES))``.

    Raises:
        KeyError: a key of ``STATS_KEYS`` is missing (check ``has_stats`` first).
    """
    return features_from_states([replica_state(s) for s in stats],
                                request_hits(request, [s.get("prefix_summary") for s in stats]), request.input_tokens)


def replica_features(stats: Mapping[str, Any], request: ReplicaRequest) -> np.ndarray:
    """Features of sending ``request`` to the replica with ``stats``: float32 ``(len(REPLICA_FEATURE_NAMES),)``.

    Every caller (simulator telemetry, simulated learned policy, Serve router) goes through
    ``replica_state`` + ``prefix_hit_tokens`` + ``features_from_states``.
    """
    return replica_feature_matrix([stats], request)[0]


# ---------------------------------------------------------------------------------------------- scorer

REPLICA_MODEL_FILE = "replicas.onnx"
REPLICA_MANIFEST_FILE = "replicas.json"


class ReplicaScorer:
    """Runs ``replicas.onnx``: predicted log TTFT (seconds) for each row of replica features.

    Loading checks the sibling ``replicas.json`` (feature names, version, sha256 of the ONNX file);
    a mismatch raises at load time, never on the request path.
    """

    def __init__(self, path: str | Path) -> None:
        from router.onnx_session import make_session

        path = Path(path)
        if not path.exists():
            raise ArtifactError(f"no replica model at {path}: expected a directory written by "
                                f"`turnout train replicas` ({REPLICA_MODEL_FILE} + {REPLICA_MANIFEST_FILE})")
        onnx_path = path / REPLICA_MODEL_FILE if path.is_dir() else path
        manifest_path = onnx_path.with_name(REPLICA_MANIFEST_FILE)
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            blob = onnx_path.read_bytes()
        except (OSError, ValueError) as e:
            raise ArtifactError(f"cannot read the replica model at {onnx_path} (+ {manifest_path.name}): {e}") from e
        names, version = tuple(manifest.get("feature_names", ())), manifest.get("feature_version")
        if names != REPLICA_FEATURE_NAMES or version != REPLICA_FEATURE_VERSION:
            raise FeatureMismatchError(
                f"{manifest_path}: replica model was trained on features {version} {list(names)}; this code computes "
                f"{REPLICA_FEATURE_VERSION} {list(REPLICA_FEATURE_NAMES)}; retrain with `turnout train replicas`")
        digest = hashlib.sha256(blob).hexdigest()
        if manifest.get("sha256") != digest:
            raise ArtifactError(f"{onnx_path}: sha256 {digest} does not match {manifest_path.name} "
                                f"({manifest.get('sha256')}); the file is corrupt or was replaced")
        self.path, self.manifest = onnx_path, manifest
        self.session = make_session(blob)
        self._input = self.session.get_inputs()[0].name
        self._output = self.session.get_outputs()[0].name

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted log TTFT, shape ``(n,)``, for ``x`` of shape ``(n, n_features)`` float32."""
        return self.session.run([self._output], {self._input: x})[0].reshape(-1)

    def bind(self, x: np.ndarray) -> BoundScorer:
        """A predictor over the fixed buffer ``x`` (its current contents at each call); see ``BoundScorer``."""
        return BoundScorer(self, x)


class BoundScorer:
    """``ReplicaScorer.predict`` on one preallocated float32 C-contiguous ``(n, n_features)`` buffer.

    ONNX Runtime I/O binding to ``x``'s and an output array's memory: a call copies nothing in or out
    and allocates nothing (the serving hot path; ``predict`` converts a dict of arrays each call). The
    binding runs through ``router.onnx_session.bound_runner`` (the session's pybind call when it can).
    The returned ``(n,)`` array is overwritten by the next call; ``x`` must outlive this object (it is kept).

    Raises:
        ValueError: ``x`` is not float32, C-contiguous, ``(n, len(REPLICA_FEATURE_NAMES))``.
    """

    __slots__ = ("x", "y", "_binding", "_run", "_args")

    def __init__(self, scorer: ReplicaScorer, x: np.ndarray) -> None:
        if (x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != len(REPLICA_FEATURE_NAMES)
                or not x.flags.c_contiguous):
            raise ValueError(f"BoundScorer needs a C-contiguous float32 (n, {len(REPLICA_FEATURE_NAMES)}) array; "
                             f"got {x.dtype} {x.shape}")
        self.x = x
        self.y = np.empty(x.shape[0], dtype=np.float32)  # bound as the (n, 1) output: same memory
        session = scorer.session
        binding = session.io_binding()
        binding.bind_input(scorer._input, "cpu", 0, np.float32, list(x.shape), x.ctypes.data)
        binding.bind_output(scorer._output, "cpu", 0, np.float32, [x.shape[0], 1], self.y.ctypes.data)
        self._binding = binding
        from router.onnx_session import bound_runner

        self._run, self._args = bound_runner(session, binding)

    def __call__(self) -> np.ndarray:
        """Predicted log TTFT of the rows ``x`` holds now, shape ``(n,)`` (reused)."""
        self._run(*self._args)
        return self.y


# ---------------------------------------------------------------------------------------------- policies


def replica_load(stats: Mapping[str, Any] | None, queue_len: int | None) -> float:
    """Load from the replica's reported stats, else the router's cached queue length, else 0."""
    if stats and "num_ongoing" in stats:
        return float(stats["num_ongoing"]) + float(stats.get("num_waiting", 0))
    return float(queue_len or 0)


class _Uniform(Protocol):
    def random(self) -> float: ...


def choose_pow2(loads: Sequence[float], rnd: _Uniform) -> int:
    """Power of two choices: two distinct replicas at random, the less loaded wins, ties at random.

    ``rnd`` is ``random.Random`` (the simulator: fastest) or ``numpy.random.Generator`` (both have
    ``random()``).
    """
    n = len(loads)
    if n == 0:
        raise ValueError("choose_pow2 needs at least one replica")
    if n == 1:
        return 0
    a = int(rnd.random() * n)
    b = int(rnd.random() * (n - 1))
    b += b >= a  # a uniformly drawn second replica, distinct from a
    if loads[a] == loads[b]:
        return a if rnd.random() < 0.5 else b
    return a if loads[a] < loads[b] else b


def _argmin_random(values: Sequence[float], rnd: random.Random, among: Sequence[int] | None = None) -> int:
    idx = range(len(values)) if among is None else among
    best = min(values[i] for i in idx)
    ties = [i for i in idx if values[i] == best]
    return ties[0] if len(ties) == 1 else ties[int(rnd.random() * len(ties))]


def rank_by_scores(scores: Sequence[float], rnd: random.Random) -> list[int]:
    """Indices best (lowest score) first; equal scores in random order."""
    if len(set(scores)) == len(scores):  # no ties (the common case): skip the random keys
        return sorted(range(len(scores)), key=scores.__getitem__)
    keys = [(s, rnd.random()) for s in scores]
    return sorted(range(len(scores)), key=keys.__getitem__)


class ReplicaPolicy(Protocol):
    """Chooses one replica index for a request from per-replica stats (``None`` = no stats yet).

    ``needs`` tells a caller which stats to build: ``"none"``, ``"load"`` (``num_ongoing`` and
    ``num_waiting`` only; such policies also offer ``choose_loads(loads)``) or ``"full"``
    (``STATS_KEYS`` + ``prefix_summary``).
    """

    name: str
    needs: str

    def choose(self, stats: Sequence[Mapping[str, Any] | None], request: ReplicaRequest) -> int: ...


class RoundRobin:
    """Cycles through the replicas from a random start; ignores load and prefixes."""

    name = "round_robin"
    needs = "none"

    def __init__(self, seed: int | None = None) -> None:
        self._rnd = random.Random(seed)
        self._next: int | None = None

    def choose(self, stats: Sequence[Mapping[str, Any] | None], request: ReplicaRequest) -> int:
        n = len(stats)
        i = int(self._rnd.random() * n) if self._next is None else self._next % n
        self._next = i + 1
        return i


class PowerOfTwo:
    """Ray Serve's default: two replicas at random, fewer requests (ongoing + waiting) wins."""

    name = "pow2"
    needs = "load"

    def __init__(self, seed: int | None = None) -> None:
        self._rnd = random.Random(seed)

    def choose(self, stats: Sequence[Mapping[str, Any] | None], request: ReplicaRequest) -> int:
        return choose_pow2([replica_load(s, None) for s in stats], self._rnd)

    def choose_loads(self, loads: Sequence[float]) -> int:
        """``choose`` given ``replica_load`` of each replica (the simulator's fast path)."""
        return choose_pow2(loads, self._rnd)


class LeastLoaded:
    """Fewest requests (ongoing + waiting); ties at random."""

    name = "least_loaded"
    needs = "load"

    def __init__(self, seed: int | None = None) -> None:
        self._rnd = random.Random(seed)

    def choose(self, stats: Sequence[Mapping[str, Any] | None], request: ReplicaRequest) -> int:
        return _argmin_random([replica_load(s, None) for s in stats], self._rnd)

    def choose_loads(self, loads: Sequence[float]) -> int:
        """``choose`` given ``replica_load`` of each replica (the simulator's fast path)."""
        return _argmin_random(loads, self._rnd)


class PrefixAffinity:
    """Longest cached prefix among replicas that pass a load gate; least loaded otherwise.

    Gate: a replica is eligible if its load (ongoing + waiting requests) is at most
    ``min_load + max_imbalance``. Among eligible replicas the longest prefix hit wins (then the lower
    load, then at random) if it covers at least ``min_match_frac`` of the prompt; otherwise the least
    loaded replica. Without the gate, affinity piles a hot prefix on one replica (AIBrix#842, SGLang
    PR #14305); ``min_match_frac`` stops a shared system prompt from pinning everything (kserve PR #5411).
    """

    name = "prefix_affinity"
    needs = "full"

    def __init__(self, seed: int | None = None, *, max_imbalance: float = 4.0, min_match_frac: float = 0.1) -> None:
        self._rnd = random.Random(seed)
        self.max_imbalance = max_imbalance
        self.min_match_frac = min_match_frac

    def choose(self, stats: Sequence[Mapping[str, Any] | None], request: ReplicaRequest) -> int:
        loads = [replica_load(s, None) for s in stats]
        if not request.prefix_hashes:
            return _argmin_random(loads, self._rnd)
        gate = min(loads) + self.max_imbalance
        eligible = [i for i, load in enumerate(loads) if load <= gate]
        hits = {i: prefix_hit_tokens(request.prefix_hashes, (stats[i] or {}).get("prefix_summary"),
                                     request.input_tokens) for i in eligible}
        best = max(hits.values())
        if best <= 0 or best < self.min_match_frac * request.input_tokens:
            return _argmin_random(loads, self._rnd)
        return _argmin_random(loads, self._rnd, [i for i in eligible if hits[i] == best])


class Learned:
    """Argmin of the predicted TTFT (``ReplicaScorer``); pow-2 when any replica lacks stats or no scorer.

    ``n_fallbacks`` counts the pow-2 decisions so the fallback is never silent.
    """

    name = "learned"
    needs = "full"

    def __init__(self, scorer: ReplicaScorer | None, seed: int | None = None) -> None:
        self.scorer = scorer
        self._rnd = random.Random(seed)
        self.n_fallbacks = 0

    def scores(self, stats: Sequence[Mapping[str, Any] | None], request: ReplicaRequest) -> np.ndarray | None:
        """Predicted log TTFT per replica, or ``None`` when the policy must fall back."""
        if self.scorer is None or not all(has_stats(s) for s in stats):
            return None
        return self.scorer.predict(replica_feature_matrix(stats, request))  # type: ignore[arg-type]

    def choose(self, stats: Sequence[Mapping[str, Any] | None], request: ReplicaRequest) -> int:
        if len(stats) == 1:
            return 0
        s = self.scores(stats, request)
        if s is None:
            self.n_fallbacks += 1
            return choose_pow2([replica_load(x, None) for x in stats], self._rnd)
        return _argmin_random(s.tolist(), self._rnd)

    def rank_features(self, x: np.ndarray) -> list[int]:
        """Best first by the scorer's prediction for feature rows ``x`` (the caller checked the stats).

        Raises:
            RuntimeError: no scorer (callers check ``scorer`` first and fall back to ``rank``).
        """
        if self.scorer is None:
            raise RuntimeError("Learned.rank_features needs a scorer")
        return rank_by_scores(self.scorer.predict(x).tolist(), self._rnd)

    def rank_predictions(self, log_ttft: Sequence[float]) -> list[int]:
        """Best first by predictions the caller made with ``scorer`` (e.g. a ``BoundScorer``); ties at random."""
        return rank_by_scores(log_ttft, self._rnd)

    def rank(self, stats: Sequence[Mapping[str, Any] | None], request: ReplicaRequest,
             queue_lens: Sequence[int | None] | None = None) -> list[int]:
        """Best first: by predicted TTFT, or (fallback) the pow-2 pick then the rest by load."""
        s = self.scores(stats, request) if len(stats) > 1 else None
        if s is not None:
            return rank_by_scores(s.tolist(), self._rnd)
        self.n_fallbacks += len(stats) > 1
        loads = [replica_load(x, None if queue_lens is None else queue_lens[i]) for i, x in enumerate(stats)]
        pick = choose_pow2(loads, self._rnd) if loads else 0
        return [pick] + [i for i in rank_by_scores(loads, self._rnd) if i != pick]


POLICIES: tuple[str, ...] = ("round_robin", "pow2", "least_loaded", "prefix_affinity", "learned")


def make_policy(name: str, *, seed: int | None = None, scorer: ReplicaScorer | None = None) -> ReplicaPolicy:
    """A fresh policy by name (``POLICIES``).

    Raises:
        ValueError: unknown name, or ``learned`` without a scorer.
    """
    if name == "learned":
        if scorer is None:
            raise ValueError("policy 'learned' needs a scorer (a replicas.onnx model)")
        return Learned(scorer, seed)
    classes: dict[str, Any] = {"round_robin": RoundRobin, "pow2": PowerOfTwo, "least_loaded": LeastLoaded,
                               "prefix_affinity": PrefixAffinity}
    if name not in classes:
        raise ValueError(f"unknown replica policy {name!r}; choose from {', '.join(POLICIES)}")
    return classes[name](seed)  # type: ignore[no-any-return]
