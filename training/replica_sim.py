"""Discrete-event simulation of N replicas (``training.engine``) serving a request trace under a policy.

``simulate(trace, n_replicas, policy)`` replays arrivals in time order. At each arrival the policy sees
every replica's stats snapshot (``ReplicaEngine.stats``, the same keys a Serve replica reports) and
picks one; with ``telemetry=True`` the features of the chosen replica (``router.replica.replica_features``,
the one featurization) are logged with the realised TTFT: that is the replica scorer's training data.
A list holds each replica's next event time (the end of its current run of identical steps; updated
when the engine re-plans) and ``min`` over it picks the next one: engines are independent, so events at
equal times may run in any order. Arrivals are merged from the sorted trace. Cost is a few operations
per request (>= 50k requests per wall second is the target, measured in ``benchmarks/replicas.py``).
Knowing the whole trace, ``block_reuse`` tells each engine which of a request's prefix blocks no cache
can hold yet and which no later request will ask for: the engine then skips their lookups and caches
the latter as one anonymous LRU entry (identical results, about a third fewer cache operations on
Mooncake; ``tests/unit/test_replica_sim_shortcuts.py`` checks the identity).

**Load.** ``load = offered request rate / (n_replicas * capacity_rps)``, where ``capacity_rps`` is the
throughput of one replica kept saturated with this trace's request mix (a sample all queued at t=0,
prefix cache off): ``replica_capacity_rps``. ``scale_to_load`` stretches or compresses the trace's
timestamps by one factor to reach a target load, keeping its burst shape. Prefix-cache hits make the
work actually served smaller than the offered work, so a prefix-heavy trace at load 1.0 can be stable.

**SLO.** A request meets its SLO if ``TTFT <= ttft_base_s + ttft_per_token_s * input_tokens`` (defaults:
1 s + twice the engine's default prefill time per token) and its mean time per output token after the
first is at most ``tpot_s``.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from router.replica import (REPLICA_FEATURE_NAMES, PowerOfTwo, ReplicaPolicy, ReplicaRequest, RoundRobin,
                            features_from_states, prefix_hit_tokens, replica_state)
from training.engine import EngineConfig, ReplicaEngine
from training.formats import TraceRow, read_jsonl


@dataclass(frozen=True, slots=True, repr=False)
class Trace:
    """A request trace, columnar (arrival seconds ascending, token counts, prefix block hashes)."""

    name: str
    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    prefix_hashes: tuple[tuple[int, ...], ...]

    def __repr__(self) -> str:
        return (f"Trace({self.name!r}, n={self.n}, duration_s={self.duration_s:.1f}, "
                f"has_prefixes={self.has_prefixes})")

    @property
    def n(self) -> int:
        return int(self.arrival_s.size)

    @property
    def has_prefixes(self) -> bool:
        return any(self.prefix_hashes)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1] - self.arrival_s[0]) if self.n > 1 else 0.0

    @property
    def rate_rps(self) -> float:
        """Mean arrival rate (requests per second) over the trace's span."""
        return (self.n - 1) / self.duration_s if self.duration_s > 0 else math.inf

    @classmethod
    def from_rows(cls, rows: Sequence[TraceRow], name: str) -> Trace:
        if not rows:
            raise ValueError(f"trace {name!r} has no requests")
        t = np.array([r.timestamp_s for r in rows], dtype=np.float64)
        return cls(name, t - t[0], np.array([r.input_tokens for r in rows], dtype=np.int64),
                   np.array([r.output_tokens for r in rows], dtype=np.int64),
                   tuple(tuple(r.prefix_hashes or ()) for r in rows))

    @classmethod
    def read(cls, path: Path | str, name: str | None = None) -> Trace:
        """A DESIGN.md trace JSONL file (validated by ``training.formats.read_jsonl``), a Mooncake trace
        file as published (``timestamp`` ms, ``input_length``, ``output_length``, ``hash_ids``; converted
        on the fly like ``turnout data convert mooncake``), or a CSV trace (``read_csv``) when the name
        ends in ``.csv``."""
        from training.adapters import is_mooncake_trace, mooncake_trace_rows

        path = Path(path)
        if path.suffix.lower() == ".csv":
            return cls.read_csv(path, name)
        if path.is_file() and is_mooncake_trace(path):
            return cls.from_rows(mooncake_trace_rows(path), name or path.stem)
        return cls.from_rows(read_jsonl(path, "trace"), name or path.stem)

    @classmethod
    def read_csv(cls, path: Path | str, name: str | None = None, **columns: str | None) -> Trace:
        """A CSV trace: a header naming a timestamp, a prompt-token and an output-token column.

        Parsed by ``training.adapters.csv_trace_rows`` (the ``turnout data convert csv`` reader): recognised
        names (case-insensitive) ``timestamp``/``time``/``arrival_time``;
        ``context_tokens``/``contexttokens``/``input_tokens``/``prompt_tokens``;
        ``generated_tokens``/``generatedtokens``/``output_tokens``/``completion_tokens`` (e.g. the Azure
        LLM inference traces: ``TIMESTAMP,ContextTokens,GeneratedTokens``), or the names passed as
        ``timestamp_column``/``input_column``/``output_column``. Timestamps are seconds (``time_unit``)
        or ISO 8601 date-times; rows are sorted by time. No prefix hashes.

        Raises:
            DataFormatError: a column is missing, or a value does not parse (file:line, column, value).
        """
        from training.adapters import csv_trace_rows

        path = Path(path)
        return cls.from_rows(csv_trace_rows(path, **columns), name or path.stem)  # type: ignore[arg-type]

    def scaled(self, factor: float) -> Trace:
        """Timestamps multiplied by ``factor`` (< 1 compresses: more load)."""
        return replace(self, arrival_s=self.arrival_s * factor)

    def without_gaps(self, max_gap_s: float) -> tuple[Trace, int]:
        """Every inter-arrival gap longer than ``max_gap_s`` cut to ``max_gap_s`` (and how many were cut).
        ``scale_to_load`` scales to the mean rate over the whole span, so a quiet night or a missing day
        in a real trace would leave its busy hours overloaded at any ``load``; this removes the idle time."""
        if not (max_gap_s > 0 and math.isfinite(max_gap_s)):
            raise ValueError(f"max_gap_s must be a finite number > 0; got {max_gap_s!r}")
        gaps = np.diff(self.arrival_s)
        cut = gaps > max_gap_s
        if not cut.any():
            return self, 0
        arrival = np.concatenate([self.arrival_s[:1], self.arrival_s[0] + np.cumsum(np.minimum(gaps, max_gap_s))])
        return replace(self, arrival_s=arrival), int(cut.sum())

    def head(self, n: int) -> Trace:
        return Trace(self.name, self.arrival_s[:n], self.input_tokens[:n], self.output_tokens[:n],
                     self.prefix_hashes[:n])

    def without_prefixes(self) -> Trace:
        return replace(self, prefix_hashes=((),) * self.n)


_NO_REQUEST = ReplicaRequest(0)


@dataclass(frozen=True, slots=True)
class SLO:
    """Per-request SLO: TTFT budget growing with the prompt, and a time-per-output-token bound."""

    ttft_base_s: float = 1.0
    ttft_per_token_s: float = 1e-4
    tpot_s: float = 0.1


@dataclass(slots=True)
class Telemetry:
    """Logged dispatches: features of the chosen replica (``REPLICA_FEATURE_NAMES``) and the outcome."""

    x: np.ndarray  # (n, n_features) float32
    ttft_s: np.ndarray  # (n,)
    replica: np.ndarray  # (n,) int
    source: list[str] = field(default_factory=list)  # per row: "<trace>/<policy>/load=<L>"

    @property
    def n(self) -> int:
        return int(self.ttft_s.size)

    @classmethod
    def concat(cls, parts: Iterable[Telemetry]) -> Telemetry:
        parts = list(parts)
        return cls(np.concatenate([p.x for p in parts]), np.concatenate([p.ttft_s for p in parts]),
                   np.concatenate([p.replica for p in parts]), [s for p in parts for s in p.source])

    def write(self, path: Path) -> Path:
        """One Parquet shard: a column per feature + ``ttft_s``, ``replica``, ``source``."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols: dict[str, Any] = {name: self.x[:, j] for j, name in enumerate(REPLICA_FEATURE_NAMES)}
        cols.update(ttft_s=self.ttft_s, replica=self.replica, source=self.source)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(cols), path)
        return path

    @classmethod
    def read(cls, path: Path) -> Telemetry:
        """A shard or a directory of ``*.parquet`` shards written by ``write``.

        Raises:
            FileNotFoundError: no shard found.
            ValueError: a shard lacks a feature column (written by another feature version).
        """
        import pyarrow.parquet as pq

        files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
        if not files or not files[0].exists():
            raise FileNotFoundError(f"no replica telemetry (*.parquet) at {path}")
        parts = []
        for f in files:
            t = pq.read_table(f)
            missing = [c for c in (*REPLICA_FEATURE_NAMES, "ttft_s") if c not in t.column_names]
            if missing:
                raise ValueError(f"{f}: not replica telemetry; missing columns {missing}")
            x = np.column_stack([t.column(c).to_numpy() for c in REPLICA_FEATURE_NAMES]).astype(np.float32)
            parts.append(cls(x, t.column("ttft_s").to_numpy().astype(np.float64),
                             t.column("replica").to_numpy() if "replica" in t.column_names else np.zeros(len(x), int),
                             t.column("source").to_pylist() if "source" in t.column_names else [f.stem] * len(x)))
        return cls.concat(parts)


@dataclass(slots=True)
class SimResult:
    """Per-request outcomes of one simulation (engine seconds) plus per-replica counters."""

    trace: Trace
    policy: str
    replica: np.ndarray
    ttft_s: np.ndarray
    e2e_s: np.ndarray
    busy_s: np.ndarray  # per replica
    hit_tokens: int
    prefill_tokens: int
    wall_s: float
    telemetry: Telemetry | None = None

    def metrics(self, slo: SLO = SLO()) -> dict[str, Any]:
        """TTFT / e2e percentiles (s), throughput, SLO attainment, prefix-hit share and load balance."""
        tr, n_rep = self.trace, self.busy_s.size
        ttft, e2e = self.ttft_s, self.e2e_s
        span = float(np.max(tr.arrival_s + e2e) - tr.arrival_s[0])
        out = tr.output_tokens
        tpot = np.where(out > 1, (e2e - ttft) / np.maximum(out - 1, 1), 0.0)
        ttft_ok = ttft <= slo.ttft_base_s + slo.ttft_per_token_s * tr.input_tokens
        counts = np.bincount(self.replica, minlength=n_rep)
        util = self.busy_s / span if span > 0 else np.zeros(n_rep)
        m: dict[str, Any] = {"n_requests": tr.n}
        for name, v in (("ttft", ttft), ("e2e", e2e)):
            p50, p90, p99 = np.percentile(v, [50, 90, 99])
            m.update({f"{name}_p50": float(p50), f"{name}_p90": float(p90), f"{name}_p99": float(p99),
                      f"{name}_mean": float(v.mean())})
        m.update({
            "throughput": tr.n / span if span > 0 else math.inf,
            "output_tokens_per_s": float(out.sum()) / span if span > 0 else math.inf,
            "slo_attainment": float(np.mean(ttft_ok & (tpot <= slo.tpot_s))),
            "ttft_slo_attainment": float(np.mean(ttft_ok)),
            "prefix_hit_frac": self.hit_tokens / max(int(tr.input_tokens.sum()), 1),
            "requests_per_replica": counts.tolist(),
            "max_over_mean_requests": float(counts.max() / counts.mean()) if counts.sum() else 0.0,
            "utilization_per_replica": [round(float(u), 4) for u in util],
            "max_over_mean_utilization": float(util.max() / util.mean()) if util.mean() > 0 else 0.0,
            "sim_requests_per_wall_s": tr.n / self.wall_s if self.wall_s > 0 else math.inf,
        })
        return m


def _engines(engine: EngineConfig | Sequence[EngineConfig] | None, n_replicas: int) -> list[EngineConfig]:
    if n_replicas < 1:
        raise ValueError(f"n_replicas must be >= 1; got {n_replicas}")
    if engine is None or isinstance(engine, EngineConfig):
        return [engine or EngineConfig()] * n_replicas
    cfgs = list(engine)
    if len(cfgs) != n_replicas:
        raise ValueError(f"got {len(cfgs)} engine configs for {n_replicas} replicas; pass one or one per replica")
    return cfgs


def simulate(trace: Trace, n_replicas: int, policy: ReplicaPolicy, *,
             engine: EngineConfig | Sequence[EngineConfig] | None = None, telemetry: bool = False,
             source: str = "") -> SimResult:
    """Replay ``trace`` over ``n_replicas`` engines, ``policy`` choosing the replica at each arrival."""
    cfgs = _engines(engine, n_replicas)
    n = trace.n
    first: list[float] = [math.nan] * n
    done: list[float] = [math.nan] * n
    arrival, n_in, n_out = trace.arrival_s.tolist(), trace.input_tokens.tolist(), trace.output_tokens.tolist()
    hashes = trace.prefix_hashes
    chosen = [0] * n
    states: list[tuple[float, ...]] = []
    hits: list[int] = []
    inf = math.inf
    next_t = [inf] * n_replicas  # when each engine's current run ends (inf: idle); min() is cheaper than a heap
    needs = getattr(policy, "needs", "full")
    no_stats: list[None] = [None] * n_replicas
    choose = policy.choose
    choose_loads = getattr(policy, "choose_loads", None)
    if needs == "load" and choose_loads is None:
        needs = "full"
    if type(policy) is PowerOfTwo and n_replicas > 1:  # choose_pow2 inlined over the engines (same draws)
        needs, rand = "pow2", policy._rnd.random
        n_other = n_replicas - 1
    # stats are read only by "full" policies and telemetry; else skip the lookup feeding waiting_tokens
    engines = [ReplicaEngine(c, first, done, estimate_waiting=needs == "full" or telemetry) for c in cfgs]

    # the replay makes no reference cycles (refcounting frees all it drops): pause the cyclic collector,
    # whose passes over the growing heap would otherwise take ~5% of the time
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        t_wall = time.perf_counter()
        # blocks no cache can hold yet / will be asked about again (timed: computed once per trace)
        fresh, dead = (block_reuse(hashes) if any(c.prefix_cache_blocks for c in cfgs) and trace.has_prefixes
                       else ([None] * n, [None] * n))
        for i, t, a_in, a_out, a_hashes, a_fresh, a_dead in zip(range(n), arrival, n_in, n_out, hashes, fresh,
                                                                dead):
            m = min(next_t)
            while m <= t:  # every engine run that ends by t (engines are independent: any order); inf > any t
                r = next_t.index(m)
                next_t[r] = engines[r].step_run()
                m = min(next_t)
            if needs == "pow2":  # router.replica.choose_pow2 on replica_load, without building the load list
                a = int(rand() * n_replicas)
                b = int(rand() * n_other)
                b += b >= a
                ea, eb = engines[a], engines[b]
                la, lb = ea.n_admitted + len(ea.waiting), eb.n_admitted + len(eb.waiting)
                r = (a if rand() < 0.5 else b) if la == lb else (a if la < lb else b)
            elif needs == "load":
                r = choose_loads([e.n_admitted + len(e.waiting) for e in engines])
            elif needs == "full":
                req = ReplicaRequest(a_in, a_hashes)
                stats: list[Any] = [e.stats(t) for e in engines]
                r = choose(stats, req)
            else:
                r = choose(no_stats, _NO_REQUEST)
            chosen[i] = r
            e = engines[r]
            if telemetry:  # featurised in one vectorised call at the end (same function as online)
                snap = stats[r] if needs == "full" else e.stats(t)
                states.append(replica_state(snap))
                hits.append(prefix_hit_tokens(a_hashes, snap["prefix_summary"], a_in) if a_hashes else 0)
            if e.submit(t, i, a_in, a_out, a_hashes, a_fresh, a_dead):  # re-planned (else its run end stands)
                next_t[r] = e.t0 + e.K * e.dt if e.K else inf
        m = min(next_t)
        while m < inf:  # drain: every run left
            r = next_t.index(m)
            next_t[r] = engines[r].step_run()
            m = min(next_t)
        wall = time.perf_counter() - t_wall
    finally:
        if gc_was_on:
            gc.enable()
    arr = trace.arrival_s
    ttft, e2e = np.array(first) - arr, np.array(done) - arr
    replica = np.array(chosen, dtype=np.int64)
    tel = None
    if telemetry:
        x = features_from_states(states, hits, trace.input_tokens)
        tel = Telemetry(x, ttft, replica, [source or f"{trace.name}/{policy.name}"] * n)
    return SimResult(trace, policy.name, replica, ttft, e2e, np.array([e.busy_s for e in engines]),
                     sum(e.n_hit_tokens for e in engines), sum(e.n_prefill_tokens for e in engines), wall, tel)


_BLOCK_REUSE: dict[int, tuple[Any, tuple[list[int], list[int]]]] = {}  # id(prefix_hashes) -> (them, result)


def block_reuse(prefix_hashes: tuple[tuple[int, ...], ...]) -> tuple[list[int], list[int]]:
    """Per request, ``ReplicaEngine.submit``'s ``fresh_from`` and ``dead_from`` (``len`` where none).

    ``fresh_from``: where its trailing run of blocks that no earlier request holds begins;
    ``dead_from``: where its trailing run of blocks that no later request holds begins (``len`` for a
    request that holds a hash twice). Vectorised over the trace's blocks (a stable sort groups equal
    hashes in trace order), once per trace: the last few results are kept, keyed by the identity of
    ``prefix_hashes`` (traces are immutable). Hashes beyond int64 get no shortcut (same results).
    """
    got = _BLOCK_REUSE.get(id(prefix_hashes))
    if got is not None and got[0] is prefix_hashes:
        return got[1]
    n = len(prefix_hashes)
    lens = np.fromiter(map(len, prefix_hashes), np.int64, n)
    fresh, dead = lens.copy(), lens.copy()
    total = int(lens.sum())
    try:
        flat = np.fromiter(chain.from_iterable(prefix_hashes), np.int64, total)
    except (OverflowError, TypeError, ValueError):  # not all int64
        total = 0
    if total:
        req = np.repeat(np.arange(n), lens)
        order = np.argsort(flat, kind="stable")
        fs, rq = flat[order], req[order]
        same = fs[1:] == fs[:-1]
        head = np.ones(total, bool)
        head[1:] = ~same  # first of a group of equal hashes (the earliest request holding it)
        tail = np.ones(total, bool)
        tail[:-1] = ~same  # last of a group (the latest request)
        grp = np.cumsum(head) - 1
        is_fresh, is_dead = np.empty(total, bool), np.empty(total, bool)
        is_fresh[order] = rq[head][grp] == rq
        is_dead[order] = rq[tail][grp] == rq
        twice = same & (rq[1:] == rq[:-1])  # a request holding a hash twice: adjacent in the group
        starts = np.cumsum(lens) - lens
        pos = np.arange(total) - np.repeat(starts, lens)
        nz = lens > 0
        for mask, out in ((is_fresh, fresh), (is_dead, dead)):  # 1 + the last position outside the run
            out[nz] = np.maximum.reduceat(np.where(mask, -1, pos), starts[nz]) + 1
        dup = rq[1:][twice]
        dead[dup] = lens[dup]
    result = (fresh.tolist(), dead.tolist())
    if len(_BLOCK_REUSE) >= 4:
        _BLOCK_REUSE.pop(next(iter(_BLOCK_REUSE)))
    _BLOCK_REUSE[id(prefix_hashes)] = (prefix_hashes, result)
    return result


# ---------------------------------------------------------------------------------------------- load


def replica_capacity_rps(trace: Trace, engine: EngineConfig | None = None, n_sample: int = 2000) -> float:
    """Requests per second one replica sustains on this trace's request mix (saturated, prefix cache off).

    ``n_sample`` requests spread evenly over the trace are all queued at t=0 and run to completion;
    capacity = ``n_sample / makespan``. With a mix of other sizes, the result is that of this mix.
    """
    cfg = (engine or EngineConfig()).model_copy(update={"prefix_cache_blocks": 0})
    idx = np.unique(np.linspace(0, trace.n - 1, num=min(n_sample, trace.n)).astype(np.int64))
    sample = Trace(trace.name, np.zeros(idx.size), trace.input_tokens[idx], trace.output_tokens[idx],
                   ((),) * idx.size)
    res = simulate(sample, 1, RoundRobin(0), engine=cfg)  # one replica: any policy
    return idx.size / float(np.max(res.e2e_s))


@dataclass(frozen=True, slots=True)
class ScaledTrace:
    trace: Trace
    load: float
    time_factor: float  # new timestamps = original * time_factor
    capacity_rps: float  # of one replica
    offered_rps: float


def scale_to_load(trace: Trace, load: float, n_replicas: int, engine: EngineConfig | None = None,
                  capacity_rps: float | None = None) -> ScaledTrace:
    """Rescale timestamps so that ``offered_rps = load * n_replicas * capacity_rps`` (see module docstring)."""
    if not (load > 0 and math.isfinite(load)):
        raise ValueError(f"load must be a finite number > 0; got {load!r}")
    if trace.n < 2 or trace.duration_s <= 0:
        raise ValueError(f"trace {trace.name!r} needs at least two distinct timestamps to be scaled")
    cap = capacity_rps if capacity_rps is not None else replica_capacity_rps(trace, engine)
    target = load * n_replicas * cap
    factor = trace.rate_rps / target
    return ScaledTrace(trace.scaled(factor), load, factor, cap, target)
