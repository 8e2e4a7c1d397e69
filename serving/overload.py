"""Overload control at the gateway: when every replica of the chosen model is predicted to miss the
TTFT SLO, reject the request (429 + ``Retry-After``) or move it to the next model of the policy's
ranking -- before it joins a queue it cannot get out of in time.

Where the numbers come from (no extra RPCs): every model reply already carries the serving replica's
stats snapshot (``ModelReply.replica_stats``, taken by ``ModelServer.record_routing_stats`` when the
call arrived). ``ReplicaStatsBoard`` keeps the latest snapshot per (model, replica) with its time (the
snapshot's wall-clock ``ts`` when it has one -- a reply can arrive long after its snapshot -- else the
arrival time); snapshots older than ``stale_after_s`` are ignored, so a replica that died or went
quiet stops counting. A model judged overloaded gets no new requests, so its stats age out and the
next requests probe it again (recovery needs no extra signal). The guard judges a model only when it
holds fresh stats from every replica the deployment runs (``replicas[model]``): an unseen replica may
be idle, so it fails open.

Predicted TTFT of the request on one replica (milliseconds):

* ``learned`` -- when the gateway has the replica TTFT scorer (``replicas.onnx``; serve.yaml
  ``replica_routing.kind: learned``) and the snapshot has ``router.replica.STATS_KEYS`` (engine
  replicas): ``exp(ReplicaScorer.predict(features))``, the same features as the replica router, with
  no prefix hit assumed (replies carry no prefix summary, so the estimate errs on the slow side).
* ``queue`` -- otherwise: ``ewma_ttft_ms + queued * ewma_latency_ms / max(num_ongoing, 1)``, where
  ``queued = num_waiting + max(0, num_ongoing + 1 - slots)`` are the requests ahead of this one that
  are not being served yet (waiting in the engine, or over the deployment's ``max_ongoing_requests``
  = ``slots``) and a busy replica finishes ``num_ongoing`` requests per ``ewma_latency_ms`` (an M/G/c
  drain). A snapshot without ``num_ongoing``/``ewma_latency_ms`` gives no estimate (the model is then
  not judged).

``Retry-After`` is the predicted drain time: ``min_predicted_ttft - slo`` (the excess queue wait drains
in real time), rounded up to whole seconds and clipped to ``[min_retry_after_s, max_retry_after_s]``.

Times are in the units the replicas report (a simulated backend reports simulated milliseconds, the
same as the logged ``ttft_ms``; wall time is that times its ``time_scale``).

A request moved to another model is logged with ``policy="overload"`` and propensity 1 (forced, not a
draw of the policy), so off-policy evaluation can exclude it like ``failover``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from router.config import _Frozen
from router.replica import ReplicaRequest, ReplicaScorer, features_from_states, has_stats, replica_state

if TYPE_CHECKING:
    from serving.config import ServeConfig

OVERLOAD_POLICY = "overload"


class OverloadConfig(_Frozen):
    """``action``: ``off`` (default), ``reject`` (429 + Retry-After) or ``next_model`` (the next model of
    the policy's ranking that is not overloaded; 429 when none is, or when the client pinned the model)."""

    action: Literal["off", "reject", "next_model"] = "off"
    slo_ttft_ms: float = Field(default=5000.0, gt=0, description="a model is overloaded when every replica's "
                                                                  "predicted TTFT exceeds this")
    stale_after_s: float = Field(default=10.0, gt=0, description="replica stats older than this are ignored")
    min_retry_after_s: int = Field(default=1, ge=1)
    max_retry_after_s: int = Field(default=60, ge=1)

    @field_validator("action", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        return "off" if v is False else v  # YAML 1.1 reads a bare ``off`` as false

    @model_validator(mode="after")
    def _retry_range(self) -> OverloadConfig:
        if self.min_retry_after_s > self.max_retry_after_s:
            raise ValueError(f"min_retry_after_s ({self.min_retry_after_s}) exceeds max_retry_after_s "
                             f"({self.max_retry_after_s})")
        return self


@dataclass(frozen=True, slots=True)
class Verdict:
    """The guard's view of one model: ``overloaded`` only when every replica is known and over the SLO."""

    model: str
    overloaded: bool
    predicted_ttft_ms: float | None  # best replica's prediction; None when the model could not be judged
    retry_after_s: int = 0


class ReplicaStatsBoard:
    """Latest stats snapshot per (model, replica), with the wall-clock time it was taken (``ts``, when
    present and not in the future of this clock) or else received."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._stats: dict[str, dict[str, tuple[float, Mapping[str, Any]]]] = {}

    def observe(self, model: str, replica: str, stats: Mapping[str, Any] | None) -> None:
        if stats and replica:
            now = self.clock()
            ts = _num(stats, "ts")
            self._stats.setdefault(model, {})[replica] = (ts if ts is not None and ts <= now else now, stats)

    def fresh(self, model: str, stale_after_s: float) -> list[Mapping[str, Any]]:
        """Snapshots of ``model``'s replicas received within ``stale_after_s``; older ones are dropped."""
        per = self._stats.get(model)
        if not per:
            return []
        cutoff = self.clock() - stale_after_s
        for replica in [r for r, (t, _) in per.items() if t < cutoff]:
            del per[replica]
        return [s for _, s in per.values()]


def _num(stats: Mapping[str, Any], key: str) -> float | None:
    v = stats.get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def queue_ttft_ms(stats: Mapping[str, Any], slots: int) -> float | None:
    """The queue-based TTFT estimate (module docstring); ``None`` without ``num_ongoing``/``ewma_latency_ms``."""
    ongoing, latency = _num(stats, "num_ongoing"), _num(stats, "ewma_latency_ms")
    if ongoing is None or latency is None:
        return None
    ttft = _num(stats, "ewma_ttft_ms")
    queued = (_num(stats, "num_waiting") or 0.0) + max(0.0, ongoing + 1 - slots)
    return (latency if ttft is None else ttft) + queued * latency / max(ongoing, 1.0)


class OverloadGuard:
    """Judges models from the stats board (see the module docstring)."""

    def __init__(self, config: OverloadConfig, *, replicas: Mapping[str, int] | None = None,
                 slots: Mapping[str, int] | None = None, scorer: ReplicaScorer | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.replicas = dict(replicas or {})
        self.slots = dict(slots or {})
        self.scorer = scorer
        self.board = ReplicaStatsBoard(clock)

    @property
    def enabled(self) -> bool:
        return self.config.action != "off"

    def observe(self, model: str, replica: str, stats: Mapping[str, Any] | None) -> None:
        if self.enabled:
            self.board.observe(model, replica, stats)

    def predicted_ttft_ms(self, model: str, request: ReplicaRequest) -> list[float] | None:
        """One prediction per fresh replica snapshot; ``None`` when some replica is unknown or unjudgeable."""
        snaps = self.board.fresh(model, self.config.stale_after_s)
        if not snaps or len(snaps) < self.replicas.get(model, 1):
            return None
        out: list[float | None] = [None] * len(snaps)
        learned = [i for i, s in enumerate(snaps) if has_stats(s)] if self.scorer is not None else []
        if learned:
            x = features_from_states([replica_state(snaps[i]) for i in learned], 0, request.input_tokens)
            for i, log_s in zip(learned, self.scorer.predict(x).tolist()):  # type: ignore[union-attr]
                out[i] = 1000.0 * math.exp(log_s)
        slots = self.slots.get(model, 1)
        for i, s in enumerate(snaps):
            if out[i] is None:
                out[i] = queue_ttft_ms(s, slots)
        return None if any(v is None for v in out) else out  # type: ignore[return-value]

    def verdict(self, model: str, request: ReplicaRequest) -> Verdict:
        preds = self.predicted_ttft_ms(model, request) if self.enabled else None
        if not preds:
            return Verdict(model, False, None)
        best = min(preds)
        slo = self.config.slo_ttft_ms
        if best <= slo:
            return Verdict(model, False, best)
        wait = math.ceil(round(best - slo) / 1000.0)  # whole ms first: float32 noise must not add a second
        wait = min(max(wait, self.config.min_retry_after_s), self.config.max_retry_after_s)
        return Verdict(model, True, best, wait)


def build_overload_guard(cfg: ServeConfig, models: Iterable[str],
                         log: logging.Logger | None = None) -> OverloadGuard | None:
    """The gateway's guard from ``cfg.overload`` (``None`` when off): replica counts and slots from each
    model's deployment options; the learned scorer when ``replica_routing`` is learned (a scorer that
    fails to load is logged and the queue estimate is used: overload control never fails the gateway)."""
    if cfg.overload.action == "off":
        return None
    models = list(models)
    scorer = None
    rr = cfg.replica_routing
    if rr.kind == "learned" and rr.model:
        try:
            scorer = ReplicaScorer(cfg.path(rr.model))
        except Exception as e:  # ArtifactError, FeatureMismatchError, ORT errors
            (log or logging.getLogger(__name__)).error(
                "overload control cannot load the replica scorer %s (%s); using the queue estimate", rr.model, e)
    return OverloadGuard(cfg.overload, replicas={m: cfg.deployment(m).num_replicas for m in models},
                         slots={m: cfg.deployment(m).max_ongoing_requests for m in models}, scorer=scorer)
