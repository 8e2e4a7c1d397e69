"""Replica choice inside Ray Serve: a ``RequestRouter`` for the model deployments.

Power-of-two-choices over the load each replica reports through ``record_routing_stats`` (falling
back to Ray's cached queue length when stats are not in yet). Returns two ranks -- the pick, then
everyone else -- so a full replica never stalls the request. Two verified Ray 2.60 traps are handled
here (../shared/notes/ray-serve.md §7): ``should_backoff`` is always set (else a busy loop), and any
exception falls back to all candidates (an exception would hang the request forever).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica

from router.replica import choose_pow2, replica_load

logger = logging.getLogger("ray.serve")


class Pow2ReplicaRouter(FIFOMixin, RequestRouter):
    def initialize_state(self, seed: int | None = None, **_: Any) -> None:
        self._rng = np.random.default_rng(seed)

    def _rng_(self) -> np.random.Generator:
        if not hasattr(self, "_rng"):  # initialize_state not called (no kwargs configured)
            self._rng = np.random.default_rng()
        return self._rng

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if pending_request is not None:
            pending_request.routing_context.should_backoff = True
        try:
            cands = self.select_available_replicas(candidate_replicas) or candidate_replicas
            if len(cands) <= 1:
                return [cands]
            loads = [replica_load(r.routing_stats, self.replica_queue_len_cache.get(r.replica_id)) for r in cands]
            pick = choose_pow2(loads, self._rng_())
            return [[cands[pick]], [r for i, r in enumerate(cands) if i != pick]]
        except Exception:  # never raise: Ray would hang the request
            logger.exception("Pow2ReplicaRouter failed; routing to any candidate")
            return [candidate_replicas]
