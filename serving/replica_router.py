"""Replica choice inside Ray Serve: ``RequestRouter``s for the model deployments.

* ``Pow2ReplicaRouter`` -- power-of-two-choices over the load each replica reports through
  ``record_routing_stats`` (falling back to Ray's cached queue length when stats are not in yet).
* ``LearnedReplicaRouter`` -- ranks replicas by the TTFT ``router.replica.ReplicaScorer`` predicts
  from their stats (``replicas.onnx``), pow-2 whenever a stat is missing.

Both return ranks -- the pick first, then everyone else -- so a full replica never stalls the request.
Two verified Ray 2.60 traps are handled here (../shared/notes/ray-serve.md §7): ``should_backoff`` is
always set (else a busy loop), and any exception falls back to all candidates (an exception would hang
the request forever).
"""

from __future__ import annotations

import logging
import time
from operator import attrgetter, is_
from collections import OrderedDict
from collections.abc import Container, Mapping
from typing import Any

import numpy as np
from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica

from router.replica import (FeatureRows, Learned, ReplicaRequest, ReplicaScorer, ReplicaState, choose_pow2, has_stats,
                            prefix_hit_tokens, replica_load, replica_state, request_from_body, request_hits_or_none)

logger = logging.getLogger("ray.serve")
# a replica's cached view: (its stats object, replica_state of it, prefix summary as a set, unique id)
_Snap = tuple[Mapping[str, Any], ReplicaState, Container[int] | None, str]
_NO_SENDS = (0, 0)
_ROUTING_STATS = attrgetter("routing_stats")


class SafeRequestRouter(FIFOMixin, RequestRouter):
    """The frame both routers share -- the one place the Ray 2.60 traps are handled: always set
    ``should_backoff``, pre-filter full replicas, and turn any exception into "any candidate"."""

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if pending_request is not None:
            pending_request.routing_context.should_backoff = True
        try:
            cands = self.select_available_replicas(candidate_replicas) or candidate_replicas
            if len(cands) <= 1:
                return [cands]
            return self.ranks(cands, pending_request)
        except Exception:  # never raise: Ray would hang the request
            logger.exception("%s failed; routing to any candidate", type(self).__name__)
            return [candidate_replicas]

    def ranks(self, cands: list[RunningReplica], pending_request: PendingRequest | None) -> list[list[RunningReplica]]:
        """Ranks of at least two available candidates, best first."""
        raise NotImplementedError


class Pow2ReplicaRouter(SafeRequestRouter):
    def initialize_state(self, seed: int | None = None, **_: Any) -> None:
        self._rng = np.random.default_rng(seed)

    def _rng_(self) -> np.random.Generator:
        if not hasattr(self, "_rng"):  # initialize_state not called (no kwargs configured)
            self._rng = np.random.default_rng()
        return self._rng

    def ranks(self, cands: list[RunningReplica], pending_request: PendingRequest | None) -> list[list[RunningReplica]]:
        loads = [replica_load(r.routing_stats, self.replica_queue_len_cache.get(r.replica_id)) for r in cands]
        pick = choose_pow2(loads, self._rng_())
        return [[cands[pick]], [r for i, r in enumerate(cands) if i != pick]]


class LearnedReplicaRouter(SafeRequestRouter):
    """Replicas ranked by predicted TTFT (argmin first; ties at random); pow-2 when anything is missing.

    Configure with ``RequestRouterConfig(request_router_class="serving.replica_router:LearnedReplicaRouter",
    request_router_kwargs={"scorer_path": "<dir or replicas.onnx>"}, request_routing_stats_period_s=1)``.

    * Features are ``router.replica.replica_features`` over each replica's ``routing_stats``; the request's
      prompt size and block hashes come from the call's first argument (a chat body or a prompt).
    * Stats arrive every ``request_routing_stats_period_s`` and are stale in between, so requests this
      router sent a replica after its snapshot (``ts``) and that have not completed yet are added to
      that replica's ``num_waiting``, ``waiting_tokens`` and ``queued_kv_tokens`` -- otherwise every
      caller would pile onto the replica that looked idle (and, without the completion check, a fast
      replica that finished them would look busier than a slow one).
    * Pow-2 fallback (counted in ``n_fallbacks``) whenever a candidate has no or partial stats (replica
      just started; a backend without an engine model) or the scorer failed to load (logged once at
      start: a missing or mismatched ``replicas.onnx`` never takes the deployment down).
    * Never raises: an unexpected error routes to any candidate. ORT runs on one thread.
    """

    MAX_TRACKED = 10_000  # bound on remembered requests/dispatches (on_request_routed may never come)

    def initialize_state(self, scorer_path: str = "", seed: int | None = None, **unknown: Any) -> None:
        if unknown:
            logger.warning("LearnedReplicaRouter ignores unknown request_router_kwargs %s (known: scorer_path, seed)",
                           sorted(unknown))
        self._policy = Learned(None, seed)
        self.scorer_error: str | None = None
        if scorer_path:
            try:
                self._policy.scorer = ReplicaScorer(scorer_path)
            except Exception as e:  # ArtifactError, FeatureMismatchError, ORT errors: serve with pow-2
                self.scorer_error = f"{type(e).__name__}: {e}"
                logger.error("LearnedReplicaRouter cannot load the replica scorer %r; routing with pow-2: %s",
                             scorer_path, self.scorer_error)
        else:
            self.scorer_error = "no scorer_path configured"
        self._requests: OrderedDict[str, ReplicaRequest] = OrderedDict()
        # replica unique id -> {internal request id: (wall time sent, uncached prompt tokens)} until completed
        self._sent: dict[str, OrderedDict[str, tuple[float, int]]] = {}
        # replica unique id -> its snapshot's ``ts``, and [requests, tokens] of ``_sent`` sent after it:
        # kept up to date on every send, completion and new snapshot, so a decision just reads them
        self._ts: dict[str, float] = {}
        self._late: dict[str, list[int]] = {}
        self._snaps: dict[RunningReplica, _Snap] = {}  # weak in effect: pruned in update_replicas
        self._batch: _Batch | None = None  # the last call's candidates, stats and feature rows: reused while unchanged

    @property
    def n_fallbacks(self) -> int:
        return self._state().n_fallbacks

    def _state(self) -> Learned:
        if not hasattr(self, "_policy"):  # initialize_state not called (no kwargs configured)
            self.initialize_state()
        return self._policy

    def ranks(self, cands: list[RunningReplica], pending_request: PendingRequest | None) -> list[list[RunningReplica]]:
        return [[cands[i]] for i in self.rank(cands, self._request(pending_request))]

    def rank(self, cands: list[RunningReplica], request: ReplicaRequest) -> list[int]:
        """Candidate indices, best first (the decision ``choose_replicas`` wraps; benchmarked alone).

        Hot path (issue 6 target p99 <= 0.1 ms for 16 replicas; measured in ``benchmarks/replicas.py``,
        ``targets.decision_p99_us_16_replicas``): each replica's
        ``replica_state`` and prefix set are built once per stats object; the feature rows
        (``router.replica.FeatureRows``, bound to the ONNX session without copies) once per set of stats
        objects (checked by identity, in C, against the last call's candidates and stats); the router's
        own sends since the snapshots are added to the rows as they happen (``_count_late``). Per request
        only the prefix hits and five feature columns are computed before the ONNX call.
        """
        policy = self._state()
        stats = list(map(_ROUTING_STATS, cands))
        batch = self._batch
        if not (batch is not None and policy.scorer is not None and len(batch.cands) == len(cands)
                and all(map(is_, batch.cands, cands)) and all(map(is_, batch.stats, stats))):
            maybe = [self._snapshot(r) for r in cands]
            if policy.scorer is None or None in maybe:
                queue_lens = [self.replica_queue_len_cache.get(r.replica_id) for r in cands]
                return policy.rank(stats, request, queue_lens)
            batch = self._batch = _Batch(list(cands), stats, maybe, policy.scorer)  # type: ignore[arg-type]
            batch.add_sends([self._late.get(rid, _NO_SENDS) for rid in batch.ids])
        batch.rows.fill(request_hits_or_none(request, batch.summaries, batch.present), request.input_tokens)
        return policy.rank_predictions(batch.predict().tolist())

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        if hasattr(self, "_snaps"):  # forget replicas that left (died, scaled down)
            alive = set(replicas)
            ids = {r.replica_id.unique_id for r in replicas}
            self._snaps = {r: s for r, s in self._snaps.items() if r in alive}
            self._sent = {rid: q for rid, q in self._sent.items() if rid in ids}
            self._ts = {rid: t for rid, t in self._ts.items() if rid in ids}
            self._late = {rid: c for rid, c in self._late.items() if rid in ids}
            self._batch = None

    def _count_late(self, rid: str, sign: int, sent_s: float, tokens: int) -> None:
        """Count a send (``sign`` +1) or its completion or eviction (-1) if it is later than the snapshot."""
        ts = self._ts.get(rid)
        if ts is not None and sent_s > ts:
            c = self._late.setdefault(rid, [0, 0])
            c[0] += sign
            c[1] += sign * tokens
            batch = self._batch
            if batch is not None:
                i = batch.index.get(rid)
                if i is not None:
                    batch.add_send(i, sign, sign * tokens)

    def on_request_routed(self, pending_request: PendingRequest, replica_id: Any, result: Any) -> None:
        try:
            key = pending_request.metadata.internal_request_id
            request = self._requests.pop(key, None) or self._request(pending_request, remember=False)
            rid = replica_id.unique_id
            snap = next((v for v in self._snaps.values() if v[3] == rid), None)  # not hot: once per request
            hit = prefix_hit_tokens(request.prefix_hashes, snap[2], request.input_tokens) if snap else 0
            sent = self._sent.get(rid)
            if sent is None:
                sent = self._sent[rid] = OrderedDict()
            entry = sent[key] = (time.time(), max(request.input_tokens - hit, 1))
            self._count_late(rid, 1, *entry)
            while len(sent) > self.MAX_TRACKED:
                self._count_late(rid, -1, *sent.popitem(last=False)[1])
        except Exception:  # bookkeeping only; never disturb routing
            logger.exception("LearnedReplicaRouter.on_request_routed failed")
        super().on_request_routed(pending_request, replica_id, result)

    def on_request_completed(self, replica_id: Any, internal_request_id: str) -> None:
        try:
            rid = replica_id.unique_id
            sent = self._sent.get(rid)
            entry = sent.pop(internal_request_id, None) if sent else None
            if entry is not None:
                self._count_late(rid, -1, *entry)
        except Exception:  # bookkeeping only
            logger.exception("LearnedReplicaRouter.on_request_completed failed")
        super().on_request_completed(replica_id, internal_request_id)

    def _request(self, pending_request: PendingRequest | None, remember: bool = True) -> ReplicaRequest:
        if pending_request is None:
            return ReplicaRequest(0)
        key = pending_request.metadata.internal_request_id
        cached = self._requests.get(key)
        if cached is not None:
            return cached
        args, kwargs = pending_request.args, pending_request.kwargs
        body = args[0] if args else kwargs.get("body", kwargs.get("prompt"))
        request = request_from_body(body)
        if remember:
            self._requests[key] = request
            while len(self._requests) > self.MAX_TRACKED:
                self._requests.popitem(last=False)
        return request

    def _snapshot(self, replica: RunningReplica) -> _Snap | None:
        """``(stats, replica_state, prefix summary as a set, replica unique id)``, built once per stats
        object (a new one arrives every stats period); ``None`` when the stats are missing or partial."""
        stats = replica.routing_stats
        snap = self._snaps.get(replica)
        if snap is None or snap[0] is not stats:
            if not has_stats(stats):
                return None
            summary = stats.get("prefix_summary")
            rid = replica.replica_id.unique_id
            snap = (stats, replica_state(stats), frozenset(summary) if isinstance(summary, list) else summary, rid)
            self._snaps[replica] = snap
            self._new_snapshot_ts(rid, stats.get("ts"))
        return snap

    def _new_snapshot_ts(self, rid: str, ts: Any) -> None:
        """Recount the sends later than a new snapshot's ``ts`` (none count without a numeric ``ts``)."""
        self._late.pop(rid, None)
        if not isinstance(ts, (int, float)) or isinstance(ts, bool):
            self._ts.pop(rid, None)
            return
        self._ts[rid] = float(ts)
        n, tokens = 0, 0
        for t, n_tokens in reversed(self._sent.get(rid, {}).values()):  # newest first: stop at the snapshot
            if t <= ts:
                break
            n += 1
            tokens += n_tokens
        if n:
            self._late[rid] = [n, tokens]


class _Batch:
    """One set of candidates with their stats objects: snapshots, prefix summaries, the state matrix and
    the feature rows bound to the scorer (rebuilt when a candidate or a stats object changes)."""

    __slots__ = ("cands", "stats", "snaps", "ids", "index", "summaries", "present", "states", "rows", "predict",
                 "_waiting", "_tokens", "_queued_kv")

    def __init__(self, cands: list[RunningReplica], stats: list[Any], snaps: list[_Snap], scorer: ReplicaScorer) -> None:
        self.cands, self.stats, self.snaps = cands, stats, snaps
        self.ids = [s[3] for s in snaps]
        self.index = {rid: i for i, rid in enumerate(self.ids)}
        self.summaries = [s[2] for s in snaps]
        self.present = [s for s in self.summaries if s is not None]
        self.states = np.array([s[1] for s in snaps], dtype=np.float64)
        self.rows = FeatureRows(self.states)
        self.predict = scorer.bind(self.rows.x)
        self._waiting = self.states[:, 1].copy()  # num_waiting and waiting_tokens with the sends since the snapshots
        self._tokens = self.states[:, 3].copy()
        self._queued_kv = self.states[:, 7].copy()  # sends count as queued KV too (``replica_state``)
        self.rows.set_queued(self._waiting, self._tokens, self._queued_kv)

    def add_sends(self, counts: list[Any]) -> None:
        """Add ``counts[i] = (requests, tokens)`` sent replica ``i`` since its snapshot (at build)."""
        for i, (n, tokens) in enumerate(counts):
            if n:
                self.add_send(i, n, tokens)

    def add_send(self, i: int, n: int, tokens: int) -> None:
        """Row ``i`` gains ``n`` waiting requests of ``tokens`` prefill tokens (negative: they completed).

        Integer steps in float64 are exact: the rows stay bitwise ``replica_state(stats, sent, sent_tokens)``.
        """
        self._waiting[i] += n
        self._tokens[i] += tokens
        self._queued_kv[i] += tokens
        self.rows.set_queued_row(i, self._waiting[i], self._tokens[i], self._queued_kv[i])
