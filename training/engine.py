"""Replica engine model: one LLM serving replica as a step machine (shared by the simulator and Serve).

The model, per replica (vLLM-style continuous batching with chunked prefill, FCFS):

* **Admission.** Arriving requests wait in a FCFS queue. At a step boundary the head is admitted while
  fewer than ``max_num_seqs`` requests are admitted and its KV reservation fits:
  ``min(input + output, kv_capacity_tokens)`` tokens stay reserved until the request finishes. A head
  that does not fit blocks the queue (head-of-line), which is how a full KV cache forces queueing.
* **Prefix cache.** On admission the leading prompt blocks (``prefix_hashes``, Mooncake-style: block
  ``i`` covers tokens ``[i*512, (i+1)*512)`` and equal hashes mean equal prefixes) already in the
  replica's prefix cache are reused: ``hit = 512 * n_leading_cached_blocks`` tokens (at most
  ``input - 1``: the last prompt token is always recomputed). The cache is an LRU over block hashes
  holding ``prefix_cache_blocks`` blocks, a pool separate from the running requests' KV (the
  HBM-free-pool + host-DRAM tier of Mooncake); a request's blocks enter it when its prefill finishes.
  (A simulator that knows the trace may have blocks that nobody asks for again kept as one anonymous
  run of the same size: ``submit``'s ``dead_from``.)
* **Steps.** Every step decodes one token for each of the ``n_dec`` decoding sequences and spends the
  rest of the token budget, ``max_batch_tokens - n_dec``, on prefill chunks taken FCFS across the
  admitted requests' uncached prompt tokens. A step lasts

      dt = slowdown * (step_base_s + decode_s_per_seq * n_dec + decode_s_per_ctx_token * ctx_dec
                       + prefill_s_per_token * P)

  where ``ctx_dec`` is the sum of the decoding sequences' prompt lengths (attention reads their KV;
  growth during decoding is ignored) and ``P`` the prefill tokens in the step.
* **Tokens.** A request's first token comes at the end of the step that finishes its prefill
  (TTFT = that time - arrival); each later token takes one step; it finishes after
  ``output_tokens - 1`` decode steps (immediately if ``output_tokens <= 1``) and releases its KV.

Simplifications (documented, deliberate): prefill cost is linear in tokens (no quadratic attention
term); KV is reserved for the whole output at admission (no preemption or swapping); decode cost uses
prompt lengths (context growth during decoding is ignored); scheduling is FCFS only.

Simulating step by step would cost hundreds of Python operations per request. Between two events (a
prefill or decode completion, an admission) all steps are identical, so the engine plans a *run* of
``K`` identical steps and jumps over it; an arrival that can be admitted truncates the run to the step
in progress (it joins at the next step boundary, as in a real engine). A decode clock ``D`` (steps
so far) turns decode completions into a heap keyed by ``D`` at finish. Each request therefore costs a
handful of O(log n) operations; see ``training.replica_sim`` for the event loop.

Example (hand-computed; ``tests/unit/test_engine.py`` has more)::

    >>> cfg = EngineConfig(step_base_s=0.01, prefill_s_per_token=1e-4, decode_s_per_seq=0.0,
    ...                    decode_s_per_ctx_token=0.0)
    >>> e = ReplicaEngine(cfg); e.submit(0.0, 0, 1000, 1, ())  # it planned a run
    True
    >>> e.run_until(1.0); round(e.first[0], 6)  # one step: 0.01 + 1000 * 1e-4
    0.11
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from router.replica import PREFIX_CHECKPOINTS

INF = math.inf


class EngineConfig(BaseModel):
    """Parameters of one replica. Times are seconds of engine time; token counts are model tokens.

    Defaults ~ an 8B model on one 80 GB GPU: prefill 20k tokens/s (5e-5 s/token); a 10 ms fixed step
    (weights read, launch); decode +0.2 ms per sequence and +0.05 ms per 1k prompt tokens of the decoding
    batch (KV read, ~128 KB/token at ~3 TB/s); 400k reservable KV tokens (~52 GB); a 2,048-token step
    budget (vLLM's chunked-prefill default); a prefix cache of 8,192 blocks = 4.2M tokens (a host-DRAM
    KV tier, as in Mooncake).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_tokens: int = Field(default=2048, gt=0,
                                  description="token budget per step: one per decoding sequence + the prefill chunk")
    max_num_seqs: int = Field(default=128, gt=0, description="admitted (prefilling + decoding) requests at most")
    kv_capacity_tokens: int = Field(default=400_000, gt=0, description="KV tokens reservable by admitted requests")
    block_tokens: int = Field(default=512, gt=0, description="tokens per prefix-cache block (Mooncake: 512)")
    prefix_cache_blocks: int = Field(default=8192, ge=0, description="LRU prefix-cache capacity in blocks (0 = off)")
    step_base_s: float = Field(default=0.010, gt=0, description="fixed cost of a step (weights read, launch)")
    decode_s_per_seq: float = Field(default=2e-4, ge=0, description="step cost per decoding sequence")
    decode_s_per_ctx_token: float = Field(default=5e-8, ge=0,
                                          description="step cost per prompt token of the decoding sequences (KV read)")
    prefill_s_per_token: float = Field(default=5e-5, gt=0, description="step cost per prefill token")
    slowdown: float = Field(default=1.0, gt=0, description="multiplies every step time (a slower replica)")

    @model_validator(mode="after")
    def _budget_leaves_room_for_prefill(self) -> EngineConfig:
        if self.max_batch_tokens <= self.max_num_seqs:
            raise ValueError(f"max_batch_tokens ({self.max_batch_tokens}) must exceed max_num_seqs "
                             f"({self.max_num_seqs}) so a full decode batch still leaves prefill budget")
        return self

    def idle_step_s(self) -> float:
        """Duration of a step with one prefill token and nothing else (reported by an idle replica)."""
        return self.slowdown * (self.step_base_s + self.prefill_s_per_token)


class ReplicaEngine:
    """The step machine of one replica, advanced by events (see the module docstring).

    Results go to ``first[rid]`` (first-token time) and ``done[rid]`` (finish time), engine seconds;
    both are any ``MutableMapping[int, float]`` or list the caller supplies (the simulator passes
    preallocated lists, the real-time driver a sink that resolves futures).
    """

    __slots__ = ("cfg", "first", "done", "estimate_waiting", "t0", "dt", "P", "K", "D", "version", "waiting",
                 "waiting_tokens", "prefilling", "pf_total", "dec", "n_dec", "ctx_dec", "kv_used", "n_admitted",
                 "cache", "cache_blocks", "n_prefill_tokens", "n_hit_tokens", "n_output_tokens", "n_requests", "busy_s",
                 "_budget", "_max_seqs", "_kv_cap", "_block", "_cache_cap", "_base", "_s_seq", "_s_ctx", "_s_tok", "_slow")

    def __init__(self, cfg: EngineConfig | None = None, first: Any = None, done: Any = None, *,
                 estimate_waiting: bool = True) -> None:
        self.cfg = cfg = cfg or EngineConfig()
        # False: skip the prefix-cache lookup that only feeds the ``waiting_tokens`` stat (a simulation
        # whose policy reads no stats); ``stats`` then refuses to report
        self.estimate_waiting = estimate_waiting
        self.first: MutableMapping[int, float] | list[float] = {} if first is None else first
        self.done: MutableMapping[int, float] | list[float] = {} if done is None else done
        self._budget, self._max_seqs, self._kv_cap = cfg.max_batch_tokens, cfg.max_num_seqs, cfg.kv_capacity_tokens
        self._block, self._cache_cap = cfg.block_tokens, cfg.prefix_cache_blocks
        self._base, self._s_seq, self._s_ctx = cfg.step_base_s, cfg.decode_s_per_seq, cfg.decode_s_per_ctx_token
        self._s_tok, self._slow = cfg.prefill_s_per_token, cfg.slowdown
        self.t0, self.dt, self.P, self.K, self.D, self.version = 0.0, 0.0, 0, 0, 0, 0
        # waiting: [rid, input, output, hashes, estimated uncached tokens, kv tokens to reserve, fresh_from,
        #           dead_from] (``submit``)
        self.waiting: deque[list[Any]] = deque()
        self.waiting_tokens = 0
        # prefilling: [rid, remaining uncached tokens, input, output, hashes, prefix blocks hit, kv, fresh_from,
        #              dead_from] (FCFS)
        self.prefilling: deque[list[Any]] = deque()
        self.pf_total = 0
        self.dec: list[tuple[int, int, int, int]] = []  # (decode clock at finish, rid, kv tokens, prompt tokens)
        self.n_dec = self.ctx_dec = self.kv_used = self.n_admitted = 0
        # block hash -> block position in its prompt; or, under an ``_Anon`` key, minus the length of an
        # anonymous run of blocks (see ``submit``'s ``dead_from``). LRU order, most recent last.
        self.cache: OrderedDict[Any, int] = OrderedDict()
        self.cache_blocks = 0  # blocks held by the cache (keyed + anonymous) <= prefix_cache_blocks
        self.n_prefill_tokens = self.n_hit_tokens = self.n_output_tokens = self.n_requests = 0
        self.busy_s = 0.0  # engine time spent stepping

    # ------------------------------------------------------------------------------------ public API

    @property
    def busy(self) -> bool:
        return self.K > 0

    @property
    def event_s(self) -> float:
        """When the current run ends (the next time something completes or is admitted); inf if idle."""
        return self.t0 + self.K * self.dt if self.K else INF

    def submit(self, now: float, rid: int, input_tokens: int, output_tokens: int,
               prefix_hashes: Sequence[int] = (), fresh_from: int | None = None,
               dead_from: int | None = None) -> bool:
        """A request arrives at ``now`` (after every event up to ``now`` has run; see ``run_until``).

        A simulator that knows the whole trace may pass two facts about ``prefix_hashes`` (results are
        identical with or without them; ``training.replica_sim.block_reuse`` computes them):

        * ``fresh_from``: no earlier request holds the blocks at positions ``>= fresh_from``, so no cache
          can hold them before this request's prefill ends (later requests are admitted after it: FCFS);
          their lookups are skipped.
        * ``dead_from``: no later request holds the blocks at positions ``>= dead_from``, so no cache is
          asked about them once this request's prefill ends; they are cached as one anonymous run that
          takes the same LRU capacity in the same order: one cache operation instead of an insert and an
          eviction per block. They must be distinct and absent from the positions below ``dead_from``.

        Both are positions in ``[0, len(prefix_hashes)]``; ``None`` means ``len(prefix_hashes)`` (nothing known).

        Returns True if the current run was re-planned (``event_s`` changed; ``version`` counts these).
        """
        self.n_requests += 1
        n_in, n_out = int(input_tokens), int(output_tokens)
        if n_in < 1:
            n_in = 1
        if n_out < 1:
            n_out = 1
        est = n_in
        n_blocks = len(prefix_hashes)
        fresh = n_blocks if fresh_from is None else fresh_from
        if fresh and self._cache_cap and self.estimate_waiting:  # leading cached blocks (hit <= input - 1)
            cache, k = self.cache, 0
            for h in prefix_hashes:
                if h not in cache:
                    break
                k += 1
            if k:
                hit = k * self._block
                est = n_in - (hit if hit < n_in else n_in - 1)
        need = n_in + n_out if n_in + n_out < self._kv_cap else self._kv_cap
        self.waiting_tokens += est
        waiting = self.waiting
        was_empty = not waiting
        waiting.append([rid, n_in, n_out, prefix_hashes, est, need, fresh,
                        n_blocks if dead_from is None else dead_from])
        K = self.K
        if not K:  # idle: the request starts a run now
            self.t0 = now
            self._plan()
            self.version += 1
            return True
        t0 = self.t0
        if now > t0:  # self.sync(now), inlined (once per request)
            dt = self.dt
            k = int((now - t0) / dt)
            if k >= K:
                k = K - 1
            if k > 0:
                self.t0 = t0 = t0 + k * dt
                self.busy_s += k * dt
                self.K = K = K - k
                self.D += k
                P = self.P
                if P:
                    self.prefilling[0][1] -= k * P
                    self.pf_total -= k * P
                    self.n_prefill_tokens += k * P
                self.n_output_tokens += k * self.n_dec
        if now <= t0:  # the step starts right now: re-plan it with this request in the batch
            self._plan()
            self.version += 1
            return True
        if was_empty and K > 1 and self.n_admitted < self._max_seqs and self.kv_used + need <= self._kv_cap:
            self.K = 1  # re-plan at the end of the step in progress, where the request joins
            self.version += 1
            return True
        return False

    def run_until(self, now: float) -> None:
        """Run every event that ends at or before ``now``; then sync whole steps up to ``now``."""
        while self.K and self.t0 + self.K * self.dt <= now:
            self.step_run()
        self.sync(now)

    def step_run(self) -> float:
        """Finish the current run of ``K`` identical steps (its completions happen at its end), re-plan.

        Returns the end of the next run (``event_s``): inf when idle.
        """
        K, P = self.K, self.P
        span = K * self.dt
        t_end = self.t0 + span
        self.busy_s += span
        self.D = D = self.D + K
        consumed = K * P
        n_dec = self.n_dec
        self.n_output_tokens += K * n_dec
        finished = None
        if consumed:
            self.pf_total -= consumed
            self.n_prefill_tokens += consumed
            pf = self.prefilling
            head = pf[0]
            if consumed >= head[1]:
                finished = []
                while pf and consumed >= pf[0][1]:
                    consumed -= pf[0][1]
                    finished.append(pf.popleft())
                if consumed:
                    pf[0][1] -= consumed
            else:
                head[1] -= consumed
        dec = self.dec
        if dec and dec[0][0] <= D:
            done = self.done
            kv_used, ctx_dec, n_left = self.kv_used, self.ctx_dec, n_dec
            pop = heapq.heappop
            while dec and dec[0][0] <= D:
                _, rid, kv, ctx = pop(dec)
                done[rid] = t_end
                kv_used -= kv
                ctx_dec -= ctx
                n_left -= 1
            self.n_admitted -= n_dec - n_left
            self.kv_used, self.ctx_dec, self.n_dec = kv_used, ctx_dec, n_left
        if finished:
            first, cache_on, push = self.first, self._cache_cap, heapq.heappush
            for rid, _, n_in, n_out, hashes, n_hit_blocks, need, fresh, dead in finished:
                first[rid] = t_end
                if hashes and cache_on:
                    self._insert_blocks(hashes, n_hit_blocks, fresh, dead)
                if n_out <= 1:
                    self.done[rid] = t_end
                    self.kv_used -= need
                    self.n_admitted -= 1
                else:
                    push(dec, (D + n_out - 1, rid, need, n_in))
                    self.n_dec += 1
                    self.ctx_dec += n_in
            self.n_output_tokens += len(finished)
        self.t0 = t_end
        return self._plan()

    def sync(self, now: float) -> None:
        """Apply the whole steps of the current run that end by ``now`` (never its last one)."""
        K = self.K
        if not K or now <= self.t0:
            return
        dt = self.dt
        k = int((now - self.t0) / dt)
        if k >= K:
            k = K - 1
        if k <= 0:
            return
        # k < K <= steps until the head's prefill completes, so only the head shrinks.
        self.t0 += k * dt
        self.busy_s += k * dt
        self.K = K - k
        self.D += k
        P = self.P
        if P:
            self.prefilling[0][1] -= k * P
            self.pf_total -= k * P
            self.n_prefill_tokens += k * P
        self.n_output_tokens += k * self.n_dec

    def step_s(self) -> float:
        """Duration of the step in progress, or of an idle replica's minimal step."""
        return self.dt if self.K else self.cfg.idle_step_s()

    def stats(self, now: float) -> dict[str, Any]:
        """The routing stats this replica would report at ``now`` (keys in ``router.replica.STATS_KEYS``).

        ``prefix_summary`` is the live cache (``in`` works on it); ``summary_list`` makes the compact list.

        Raises:
            RuntimeError: the engine was built with ``estimate_waiting=False`` (``waiting_tokens`` unknown).
        """
        if not self.estimate_waiting:
            raise RuntimeError("ReplicaEngine(estimate_waiting=False) does not track waiting_tokens; no stats")
        self.sync(now)
        return {"num_ongoing": self.n_admitted, "num_waiting": len(self.waiting), "running_tokens": self.kv_used,
                "waiting_tokens": self.pf_total + self.waiting_tokens, "kv_used_frac": self.kv_used / self._kv_cap,
                "queued_kv_tokens": sum(w[5] for w in self.waiting),  # KV the queued requests will reserve
                "kv_capacity_tokens": self._kv_cap, "step_ms": 1000.0 * self.step_s(), "prefix_summary": self.cache}

    def summary_list(self, max_items: int = 4096) -> list[int]:
        """Compact prefix-cache summary: hashes of cached blocks at ``PREFIX_CHECKPOINTS``, most recent first.

        The router tests only those positions (``router.replica.prefix_hit_tokens``), so the answer is
        the same as against the full cache while the list stays a fraction of its size.
        """
        out: list[int] = []
        for h, pos in reversed(self.cache.items()):
            if pos in _CHECKPOINT_SET:  # (an anonymous run's value is negative)
                out.append(h)
                if len(out) >= max_items:
                    break
        return out

    # ------------------------------------------------------------------------------------ internals

    def _plan(self) -> float:
        """Admit what fits, then plan the next run of identical steps from ``t0``; returns its end (inf: idle)."""
        waiting = self.waiting
        if waiting:
            kv_cap, max_seqs, block, cache_on = self._kv_cap, self._max_seqs, self._block, self._cache_cap
            n_admitted, kv_used = self.n_admitted, self.kv_used
            while waiting and n_admitted < max_seqs and kv_used + waiting[0][5] <= kv_cap:
                rid, n_in, n_out, hashes, est, need, fresh, dead = waiting.popleft()
                self.waiting_tokens -= est
                n_blocks = 0
                if fresh and cache_on:  # leading cached blocks, marked most recently used
                    cache = self.cache
                    for h in hashes:
                        if h not in cache:
                            break
                        n_blocks += 1
                    # with no prefill ahead, nothing is evicted before this request's prefill ends and marks
                    # them again (``_insert_blocks``), so marking them now would not change any later state
                    if n_blocks and self.prefilling:
                        move = cache.move_to_end
                        for i in range(n_blocks - 1, -1, -1):
                            move(hashes[i])
                hit = (n_blocks * block if n_blocks * block < n_in else n_in - 1) if n_blocks else 0
                self.n_hit_tokens += hit
                self.prefilling.append([rid, n_in - hit, n_in, n_out, hashes, n_blocks, need, fresh, dead])
                self.pf_total += n_in - hit
                kv_used += need
                n_admitted += 1
            self.n_admitted, self.kv_used = n_admitted, kv_used
        pf_total, n_dec = self.pf_total, self.n_dec
        k = INF
        if pf_total:
            room = self._budget - n_dec
            if pf_total <= room:
                P, k = pf_total, 1
            else:
                P = room
                head = -(-self.prefilling[0][1] // room)
                k = head if head < pf_total // room else pf_total // room
        else:
            P = 0
        self.P = P
        dec = self.dec
        if dec:
            k_dec = dec[0][0] - self.D
            if k_dec < k:
                k = k_dec
        if k == INF:
            self.K = 0
            return INF
        self.K = k  # an int here (only the idle case is the float INF)
        self.dt = dt = self._slow * (self._base + self._s_seq * n_dec + self._s_ctx * self.ctx_dec + self._s_tok * P)
        return self.t0 + k * dt

    def _insert_blocks(self, hashes: Sequence[int], start: int, fresh: int, dead: int) -> None:
        """Cache the prompt's blocks after prefill; evict least recently used blocks beyond capacity.

        Blocks are stamped last-to-first, so a prompt's tail is evicted before its head (as vLLM frees
        blocks in reverse): a chained prefix then stays matchable for as long as possible.
        ``hashes[:start]`` were hits at admission; ``hashes[dead:]`` become one anonymous run
        (``submit``'s ``dead_from``), stamped first as their blocks would be; ``hashes[fresh:]`` are in
        no cache yet (``fresh_from``). Plain loops: on an ``OrderedDict`` they beat
        ``update``/``map``/``starmap`` (measured ~1.6x on the Mooncake trace's block stream).
        """
        cache, n = self.cache, len(hashes)
        move = cache.move_to_end
        size = self.cache_blocks
        end = n
        if dead < n:  # drop the run's blocks that are cached by hash (hits, or cached by another request)
            pop = cache.pop
            lo = dead if dead > start else start
            for i in range(dead, lo):
                if pop(hashes[i], _MISSING) is not _MISSING:
                    size -= 1
            if lo < fresh and not cache.keys().isdisjoint(hashes[lo:fresh]):  # rare: cached meanwhile
                for i in range(lo, fresh):
                    if pop(hashes[i], _MISSING) is not _MISSING:
                        size -= 1
            cache[_Anon()] = dead - n
            size += n - dead
            end = dead
        if start < end:
            before = len(cache)
            for i in range(end - 1, start - 1, -1):
                cache[hashes[i]] = i
            added = len(cache) - before
            size += added
            if added != end - start:  # rare: another request cached some of them meanwhile
                for i in range(end - 1, start - 1, -1):
                    move(hashes[i])  # (assignment keeps an existing key's place)
        top = start if start < end else end
        if top:
            try:
                for i in range(top - 1, -1, -1):
                    move(hashes[i])
            except KeyError:  # rare: a hit block was evicted during the prefill; cache it again
                for i in range(top - 1, -1, -1):
                    if hashes[i] in cache:
                        move(hashes[i])
                    else:
                        cache[hashes[i]] = i
                        size += 1
        excess = size - self._cache_cap
        if excess > 0:
            pop_lru = cache.popitem
            size -= excess
            while excess > 0:
                h, v = pop_lru(False)
                if v >= 0:
                    excess -= 1
                elif excess < -v:  # part of an anonymous run: the rest stays least recently used
                    cache[h] = v + excess
                    move(h, False)
                    break
                else:
                    excess += v
        self.cache_blocks = size


class _Anon:
    """Key of an anonymous run of prefix-cache blocks (equal only to itself; never a block hash)."""

    __slots__ = ()


_MISSING = object()
_CHECKPOINT_SET = frozenset(PREFIX_CHECKPOINTS)


class _FutureSink:
    """``sink[rid] = t`` resolves the future registered for ``rid`` (the engine's ``first``/``done``)."""

    def __init__(self) -> None:
        self.futures: dict[int, asyncio.Future[float]] = {}

    def __setitem__(self, rid: int, t: float) -> None:
        fut = self.futures.pop(rid, None)
        if fut is not None and not fut.done():
            fut.set_result(t)


class RealtimeEngine:
    """``ReplicaEngine`` driven by the wall clock inside an asyncio loop (the Serve backend's replica model).

    Engine time runs ``1 / time_scale`` times faster than wall time (``time_scale=0.01``: a 2 s TTFT
    takes 20 ms). ``generate`` returns ``(ttft_s, e2e_s)`` in engine seconds. A driver task sleeps
    until the engine's next event; ``submit`` wakes it because an arrival can move that event earlier.
    Cancelling ``generate`` leaves the request in the engine (its GPU work would not stop either).
    """

    def __init__(self, cfg: EngineConfig | None = None, *, time_scale: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not time_scale > 0:
            raise ValueError(f"time_scale must be > 0; got {time_scale!r}")
        self._first, self._done = _FutureSink(), _FutureSink()
        self.engine = ReplicaEngine(cfg, self._first, self._done)
        self.time_scale = time_scale
        self._clock = clock
        self._t_start = clock()
        self._ids = itertools.count()
        self._wake: asyncio.Event | None = None
        self._driver: asyncio.Task[None] | None = None

    def now(self) -> float:
        return (self._clock() - self._t_start) / self.time_scale

    def stats(self) -> dict[str, Any]:
        self.engine.run_until(self.now())
        return self.engine.stats(self.now())

    async def generate(self, input_tokens: int, output_tokens: int,
                       prefix_hashes: Sequence[int] = ()) -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        self._ensure_driver()
        rid = next(self._ids)
        first, done = loop.create_future(), loop.create_future()
        self._first.futures[rid], self._done.futures[rid] = first, done
        now = self.now()
        self.engine.run_until(now)
        self.engine.submit(now, rid, input_tokens, output_tokens, tuple(prefix_hashes))
        assert self._wake is not None
        self._wake.set()
        t_first = await first
        t_done = await done
        return t_first - now, t_done - now

    def _ensure_driver(self) -> None:
        if self._driver is None or self._driver.done():
            self._wake = asyncio.Event()
            self._driver = asyncio.get_running_loop().create_task(self._drive())

    async def _drive(self) -> None:
        assert self._wake is not None
        while True:
            self._wake.clear()
            self.engine.run_until(self.now())
            wait_s = (self.engine.event_s - self.now()) * self.time_scale
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=None if wait_s == INF else max(wait_s, 0.0))
            except asyncio.TimeoutError:
                pass


class SimulatedReplicaSpec(BaseModel):
    """How a Serve replica simulates its engine (``ModelServer(..., engine=spec)``).

    ``slowdown_by_rank[i % len]`` multiplies the step time of the replica of rank ``i`` (heterogeneous
    hardware, or a deliberately slow replica in tests); ``time_scale`` is wall seconds per engine second.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: EngineConfig = EngineConfig()
    time_scale: float = Field(default=1.0, gt=0)
    slowdown_by_rank: tuple[float, ...] = ()

    def realtime_engine(self, rank: int) -> RealtimeEngine:
        cfg = self.config
        if self.slowdown_by_rank:
            slow = self.slowdown_by_rank[rank % len(self.slowdown_by_rank)]
            cfg = cfg.model_copy(update={"slowdown": cfg.slowdown * slow})
        return RealtimeEngine(cfg, time_scale=self.time_scale)
