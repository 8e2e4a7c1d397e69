"""The gateway's request handling, free of Ray so it can be tested with fake model callers.

Authenticate (key -> tenant, rate limit) -> parse (strict UTF-8, JSON, messages) -> A/B arm (sticky
hash) -> that arm's ``Router.decide`` -> cache hit, or call the chosen model with retries and
failover down the policy's ranking within a deadline -> log one ``LogRecord`` -> OpenAI-shaped
response (or SSE stream) plus a ``turnout`` block with the decision. With overload control on
(``serving.overload``), a model whose every replica is predicted to miss the TTFT SLO gets no new
request: 429 + Retry-After, or the next model of the ranking. Client mistakes become 4xx
naming the problem; a failing model is a 502/503/504 that is logged with its error; a client that
disconnects is logged with ``error="cancelled"``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from router.bundle import Bundle
from router.config import Preference
from router.decision import Decision, Router
from router.errors import ArtifactError, RequestError
from router.features import FEATURE_VERSION
from router.log_schema import LogRecord, dumps_stats
from router.request import Request, decode_json_object, estimate_tokens, parse_messages, parse_preference
from router.throttled_log import ThrottledLog
from serving.backends import BackendError, BackendResult, ModelReply
from serving.decision_log import DecisionLogWriter
from serving.experiments import Arm, assign_arm, assignment_key
from serving.metrics import GatewayMetrics, NullMetrics
from serving.overload import OVERLOAD_POLICY, OverloadGuard
from serving.request_ids import new_request_id
from serving.reload import BundleWatcher, verify_router
from serving.resilience import CircuitBreaker, FailoverConfig, failover_order
from serving.tenants import DEFAULT_TENANT, AuthError, TenantDirectory, retry_after_header

_LOG = logging.getLogger("turnout.gateway")

ModelCaller = Callable[[str, dict[str, Any], str], Awaitable[ModelReply]]
# yields text deltas (str), then exactly one ModelReply
ModelStreamer = Callable[[str, dict[str, Any], str], AsyncIterator[Any]]
# body keys that do not change the answer; every other key (max_tokens, temperature, response_format,
# tools, ...) is part of the cache context, so an answer is only reused for the same parameters
NOT_GENERATION_KEYS = frozenset({"messages", "model", "stream", "stream_options", "user", "metadata"})
MAX_REPLICA_LOST_RETRIES = 3  # per model and request, on top of failover.attempts_per_model
REPLICA_LOST_PAUSE_S = 0.05
AUTO_MODELS = ("auto", "turnout", "")
MAX_REQUEST_ID = 128
MAX_HEADER_BYTES = 32 * 1024  # all request headers together; more is a 431, not a 5xx or a slow parse
MAX_BODY_BYTES = 4 * 1024 * 1024  # a chat body larger than this is a 413 before any JSON parsing


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    stream: bool = False
    chunks: AsyncIterator[str] | None = None  # SSE lines when ``stream``


def error_reply(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, {"error": {"message": message, "type": kind, "param": param, "code": status}}, headers or {})


@dataclass(slots=True)
class _Call:
    """One admitted chat request on its way through the gateway."""

    request: Request
    decision: Decision
    arm: str
    body: dict[str, Any]
    now: float
    t0: float
    unit: str | None = None
    logged: LogRecord | None = None


def sse(obj: dict[str, Any] | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"


class GatewayCore:
    def __init__(self, router: Router | Mapping[str, Router], log: DecisionLogWriter, call_model: ModelCaller, *,
                 stream_model: ModelStreamer | None = None, arms: Sequence[Arm] | None = None,
                 assign_by: str = "user", arm: str = "default", preference: Preference | None = None, seed: int = 0,
                 tenants: TenantDirectory | None = None, failover: FailoverConfig | None = None,
                 metrics: GatewayMetrics | None = None, capacity: Mapping[str, float] | None = None,
                 build_router: Callable[[Bundle], Router] | None = None, feedback_dir: str | Path | None = None,
                 overload: OverloadGuard | None = None, clock: Callable[[], float] = time.monotonic,
                 decide_in_thread: bool = False) -> None:
        self.routers: dict[str, Router] = dict(router) if isinstance(router, Mapping) else {arm: router}
        self.arms = tuple(arms) if arms else tuple(Arm(name=n, bundle=str(r.bundle.path)) for n, r in self.routers.items())
        if [a.name for a in self.arms] != list(self.routers):
            raise ValueError(f"arms {[a.name for a in self.arms]} do not match routers {list(self.routers)}")
        self.assign_by = assign_by
        self.log = log
        self.call_model = call_model
        self.stream_model = stream_model
        self.preference = preference
        self.rng = np.random.default_rng(seed)
        self.tenants = tenants
        self.failover = failover or FailoverConfig()
        self.metrics = metrics or NullMetrics()
        self.capacity = dict(capacity or {})
        self.build_router = build_router or (lambda b: Router(b))
        self.feedback_dir = Path(feedback_dir) if feedback_dir else log.out_dir
        self.clock = clock
        self.overload = overload
        self.inflight: Counter[str] = Counter()
        self.breakers: dict[str, CircuitBreaker] = {}
        self._learn_failures = ThrottledLog(_LOG)  # a failing cache insert fails every request alike
        self.watchers = {a.name: BundleWatcher(a.bundle) for a in self.arms}
        self.deployed_models = set(self.router.config.model_names)
        self._decide_pool = ThreadPoolExecutor(1, thread_name_prefix="decide") if decide_in_thread else None
        self._decides_pending = 0  # decisions submitted to the decide thread and not finished
        self._in_chat = 0  # chat() calls in progress

    # --- arms ------------------------------------------------------------------------------------------

    @property
    def arm(self) -> str:
        """The control arm (first)."""
        return self.arms[0].name

    @property
    def router(self) -> Router:
        return self.routers[self.arm]

    def assign(self, tenant: str, user_header: str | None, body_user: object) -> tuple[str, str]:
        """(arm, assignment unit): the A/B report resamples units (users), not requests. The unit is a
        domain-separated sha256 prefix of the key: pseudonymous (anyone can hash candidate ids and
        compare), not the raw id, and not the bytes that pick the arm."""
        key = assignment_key(self.assign_by, tenant, user_header, body_user)
        unit = hashlib.sha256(b"turnout-assignment-unit\0" + key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        return (self.arm if len(self.arms) == 1 else assign_arm(key, self.arms)), unit

    def models(self) -> dict[str, Any]:
        cfg = self.router.config
        data = [{"id": "auto", "object": "model", "owned_by": "turnout"}]
        data += [{"id": m.name, "object": "model", "owned_by": "turnout"} for m in cfg.models]
        return {"object": "list", "data": data}

    # --- auth ------------------------------------------------------------------------------------------

    def admit(self, headers: Mapping[str, str]) -> str | Reply:
        """The tenant of an authenticated, non-rate-limited request, or the 431/401/429 reply."""
        size = sum(len(k) + len(v) for k, v in headers.items())
        if size > MAX_HEADER_BYTES:
            self.metrics.error("bad_request")
            return error_reply(431, f"request headers are {size} bytes; the limit is {MAX_HEADER_BYTES}")
        if self.tenants is None:
            return DEFAULT_TENANT
        try:
            tenant = self._authenticate(headers)
        except AuthError as e:
            self.metrics.error("unauthorized")
            return error_reply(401, str(e), kind="invalid_request_error")
        wait = self.tenants.retry_after(tenant)
        if wait > 0:
            self.metrics.error("rate_limited")
            return error_reply(429, f"rate limit exceeded for tenant {tenant!r}; retry after {wait:.2f}s",
                               kind="rate_limit_error", headers={"Retry-After": retry_after_header(wait)})
        return tenant

    def _authenticate(self, headers: Mapping[str, str]) -> str:
        assert self.tenants is not None
        return self.tenants.authenticate(headers.get("authorization"), headers.get("x-api-key"))

    def admin_allowed(self, headers: Mapping[str, str]) -> Reply | None:
        if self.tenants is None or not self.tenants.keys_required:
            return None
        try:
            tenant = self._authenticate(headers)
        except AuthError as e:
            return error_reply(401, str(e))
        return None if self.tenants.is_admin(tenant) else error_reply(403, f"tenant {tenant!r} is not an admin tenant",
                                                                       kind="permission_error")

    # --- chat ------------------------------------------------------------------------------------------

    async def chat(self, raw: bytes, *, tenant: str | None = None, headers: Mapping[str, str] | None = None,
                   preference_header: str | None = None) -> Reply:
        self._in_chat += 1
        try:
            return await self._chat(raw, tenant, headers or {}, preference_header)
        finally:
            self._in_chat -= 1

    async def _chat(self, raw: bytes, tenant: str | None, headers: Mapping[str, str],
                    preference_header: str | None) -> Reply:
        if tenant is None:
            admitted = self.admit(headers)
            if isinstance(admitted, Reply):
                return admitted
            tenant = admitted
        try:
            if len(raw) > MAX_BODY_BYTES:
                raise RequestError(f"request body is {len(raw)} bytes; the limit is {MAX_BODY_BYTES}", status=413)
            body = parse_body(raw)
            request, pinned = self._request(body, tenant)
            pref = preference_header or headers.get("x-turnout-preference")
            if pref:
                request = replace(request, preference=parse_preference(pref))
        except RequestError as e:
            self.metrics.error("bad_request")
            return error_reply(e.status, str(e), e.field)
        arm, unit = self.assign(tenant, headers.get("x-turnout-user"), body.get("user"))
        now = time.time()
        if self._decide_pool is None or (not self._decides_pending and not self._busy()):
            decision = self._decide(arm, request, pinned, now)  # nothing else to serve meanwhile: no thread hop
        else:
            decision = await self._decide_in_thread(arm, request, pinned, now, body, unit)
        call = _Call(request, decision, arm, body, now, time.perf_counter(), unit)
        d = call.decision
        self.metrics.decision(model=d.model, category=d.category, arm=arm, policy=d.policy, tier=d.cache_tier,
                              hit=d.cache_hit is not None, decision_ms=d.decision_ms)
        if d.cache_hit is None and self.overload is not None and self.overload.enabled:
            refused = self._shed_overload(call, pinned is not None)
            if refused is not None:
                return refused
            d = call.decision
        if body.get("stream") is True:
            return Reply(200, {}, stream=True, chunks=self._stream(call))
        if d.cache_hit is not None:
            return self._answer(call, d.cache_hit.answer, None, d.model)
        try:
            reply, served = await self._call_with_failover(call)
        except BackendError as e:
            self._log(call, None, d.model, error=str(e))
            self.metrics.error("upstream", d.model)
            return error_reply(e.status, f"model {d.model!r} failed: {e}",
                               kind="invalid_request_error" if e.status < 500 else "upstream_error")
        except asyncio.CancelledError:
            self._log(call, None, d.model, error="cancelled")
            self.metrics.error("cancelled", d.model)
            raise
        await self._learn(call, reply, served)
        return self._answer(call, reply.result.text, reply, served)

    def _decide(self, arm: str, request: Request, pinned: str | None, now: float | None = None) -> Decision:
        return self._decide_at(arm, request, pinned, time.time() if now is None else now,
                               self.model_load() if self.capacity else None)

    def _decide_at(self, arm: str, request: Request, pinned: str | None, now: float,
                   model_load: Mapping[str, float] | None) -> Decision:
        decision = self.routers[arm].decide(request, now_s=now, rng=self.rng,
                                            preference=request.preference or self.preference, model_load=model_load)
        return pin(decision, pinned) if pinned else decision

    async def _decide_in_thread(self, arm: str, request: Request, pinned: str | None, now: float,
                                body: dict[str, Any], unit: str | None) -> Decision:
        """``_decide`` on the one decide thread, so the event loop serves other requests meanwhile (the
        sentence encoder and the ONNX calls release the GIL). One thread: decisions stay in arrival order
        and ``self.rng`` is never shared. A client that goes away during the decision is still logged
        (``error="cancelled"``) once the decision exists, like one that goes away during the model call."""
        assert self._decide_pool is not None
        load = self.model_load() if self.capacity else None  # read on the loop thread that updates it
        fut = asyncio.get_running_loop().run_in_executor(self._decide_pool, self._decide_at, arm, request, pinned,
                                                         now, load)
        self._decides_pending += 1  # until the thread is done, even if this request is cancelled meanwhile
        fut.add_done_callback(self._decide_done)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            def log_cancelled(done: asyncio.Future[Decision]) -> None:
                if not done.cancelled() and done.exception() is None:
                    decision = done.result()
                    self._log(_Call(request, decision, arm, body, now, time.perf_counter(), unit), None,
                              decision.model, error="cancelled")
                    self.metrics.error("cancelled", decision.model)

            fut.add_done_callback(log_cancelled)
            raise

    def _decide_done(self, _: asyncio.Future[Decision]) -> None:
        self._decides_pending -= 1

    def _busy(self) -> bool:
        """Another request of this gateway is in progress (in ``chat`` or at a model)."""
        return self._in_chat > 1 or any(self.inflight.values())

    def _shed_overload(self, call: _Call, pinned: bool) -> Reply | None:
        """Overload control (``serving.overload``): ``None`` to go ahead (``call.decision`` possibly moved
        to the next model of the ranking, logged as policy ``overload``, propensity 1), or the logged 429."""
        from router.replica import request_from_body

        guard = self.overload
        assert guard is not None
        d = call.decision
        request = request_from_body(call.body)
        first = guard.verdict(d.model, request)
        if not first.overloaded:
            return None
        tried = [first]
        if guard.config.action == "next_model" and not pinned:
            order = failover_order(d, self.failover.max_models)
            for model in order[1:]:
                v = guard.verdict(model, request)
                if not v.overloaded:
                    rest = [m for m in order if m != model]
                    call.decision = replace(d, model=model, candidates=(model, *rest),
                                            action_probs=(1.0,) + (0.0,) * len(rest), propensity=1.0,
                                            policy=OVERLOAD_POLICY, cache_hit=None)
                    self.metrics.failover(d.model, model)
                    return None
                tried.append(v)
        wait = min(v.retry_after_s for v in tried)
        detail = ", ".join(f"{v.model} ~{v.predicted_ttft_ms:.0f} ms" for v in tried)
        message = (f"overloaded: every replica is predicted to exceed the {guard.config.slo_ttft_ms:.0f} ms TTFT SLO "
                   f"({detail}); retry after {wait}s")
        self._log(call, None, d.model, error=message)
        self.metrics.error("overloaded", d.model)
        return error_reply(429, message, kind="overloaded_error", headers={"Retry-After": str(wait)})

    def _observe(self, model: str, reply: ModelReply) -> None:
        if self.overload is not None:
            self.overload.observe(model, reply.replica, reply.replica_stats)

    def model_load(self) -> dict[str, float]:
        """This gateway's in-flight requests per model / its share of the model deployment's capacity
        (``capacity`` = capacity / gateway replicas, set by serving.app) (contract 2)."""
        return {m: self.inflight[m] / cap for m, cap in self.capacity.items() if cap > 0}

    async def _learn(self, call: _Call, reply: ModelReply, served: str) -> None:
        """Cache the answer and feed the online correction. The model has answered by now: a failure
        here (a cache insert, an index rebuild) is logged and counted, never the client's error."""
        try:
            await self._learn_unguarded(call, reply, served)
        except Exception as e:  # noqa: BLE001 -- the answer must still reach the client
            self._learn_failures.failed(f"storing answers of {served}",
                                        f"request {call.decision.request_id}: {type(e).__name__}: {e}")
            self.metrics.error("learn", served)

    async def _learn_unguarded(self, call: _Call, reply: ModelReply, served: str) -> None:
        router = self.routers.get(call.arm)
        if router is None or router.version != call.decision.bundle_version:
            return  # the arm was reloaded meanwhile; do not teach the new router about the old decision
        if served == call.decision.model:
            if call.decision.cache_tier == "semantic":  # an insert may rebuild an ANN index: off the event loop
                await asyncio.to_thread(router.remember, call.request, call.decision, reply.result.text, call.now)
            else:
                router.remember(call.request, call.decision, reply.result.text, call.now)
            if reply.result.quality is not None:
                router.observe(call.decision, reply.result.quality)

    def _breaker(self, model: str) -> CircuitBreaker:
        if model not in self.breakers:
            self.breakers[model] = CircuitBreaker(self.failover.breaker, self.clock)
        return self.breakers[model]

    async def _call_with_failover(self, call: _Call) -> tuple[ModelReply, str]:
        """The non-streaming call: ``_stream_with_failover``'s loop over a one-item stream (the whole
        reply), so the deadline, retries, circuit breakers and failover order live in one place."""
        async def whole(model: str, body: dict[str, Any], category: str) -> AsyncIterator[Any]:
            yield await self.call_model(model, body, category)

        async with aclosing(self._stream_with_failover(call, whole)) as attempts:
            async for model, reply in attempts:
                self._observe(model, reply)
                return reply, model
        raise BackendError("no model answered")  # unreachable: the loop yields or raises

    # --- streaming -------------------------------------------------------------------------------------

    def _streamer(self) -> ModelStreamer:
        """The streaming caller; without one (plain test callers) the whole answer is one delta."""
        if self.stream_model is not None:
            return self.stream_model

        async def whole(model: str, body: dict[str, Any], category: str) -> AsyncIterator[Any]:
            reply = await self.call_model(model, body, category)
            yield reply.result.text
            yield reply

        return whole

    async def _stream(self, call: _Call) -> AsyncIterator[str]:
        d = call.decision
        cid = f"chatcmpl-{call.request.request_id}"

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
            return sse({"id": cid, "object": "chat.completion.chunk", "created": int(call.now), "model": d.model,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})

        reply: ModelReply | None = None
        served = d.model
        error: str | None = None
        try:
            yield chunk({"role": "assistant", "content": ""}, turnout=self._turnout(call, None, None, d.model))
            if d.cache_hit is not None:
                text = d.cache_hit.answer
                yield chunk({"content": text})
            else:
                parts: list[str] = []
                try:
                    async for model, item in self._stream_with_failover(call):
                        served = model
                        if isinstance(item, ModelReply):
                            reply = item
                            self._observe(model, item)
                        else:
                            parts.append(str(item))
                            yield chunk({"content": str(item)})
                except BackendError as e:
                    error = str(e)
                    self.metrics.error("upstream", served)
                    yield sse({"error": {"message": f"model {served!r} failed: {e}", "type": "upstream_error",
                                         "param": None, "code": e.status}})
                    yield sse("[DONE]")
                    return
                text = "".join(parts)  # what the client received is what gets cached
                if reply is None:
                    reply = ModelReply(BackendResult(text, estimate_tokens(text), 0.0, 0.0), "unknown", {})
                elif reply.result.text != text:
                    reply = replace(reply, result=replace(reply.result, text=text))
                await self._learn(call, reply, served)
            record = self._log(call, reply, served)
            out = record.output_tokens or 0
            yield chunk({}, "stop", usage={"prompt_tokens": call.request.input_tokens, "completion_tokens": out,
                                           "total_tokens": call.request.input_tokens + out},
                        turnout=self._turnout(call, record, reply, served))
            yield sse("[DONE]")
        except (asyncio.CancelledError, GeneratorExit):
            error = "cancelled"
            self.metrics.error("cancelled", served)
            raise
        finally:
            if call.logged is None:
                self._log(call, None, served, error=error or "stream ended early")

    async def _stream_with_failover(self, call: _Call, streamer: ModelStreamer | None = None
                                    ) -> AsyncIterator[tuple[str, Any]]:
        """(model, item) pairs; a model is abandoned for the next one only before its first item. Within
        ``failover.deadline_s``: models in ``failover_order``, skipping open circuits, up to
        ``attempts_per_model`` tries each for retryable errors; a non-retryable error ends it."""
        streamer = streamer or self._streamer()
        deadline = self.clock() + self.failover.deadline_s
        errors: list[str] = []
        last_status = 503  # every circuit open
        d = call.decision
        for model in failover_order(d, self.failover.max_models):
            breaker = self._breaker(model)
            if not breaker.allow():
                errors.append(f"{model}: circuit open")
                continue
            attempts = lost = 0
            while attempts < self.failover.attempts_per_model:
                remaining = deadline - self.clock()
                if remaining <= 0:
                    breaker.release()
                    raise BackendError(_joined(errors + [f"deadline of {self.failover.deadline_s}s exceeded"]), status=504)
                agen = streamer(model, call.body, d.category)
                self.inflight[model] += 1
                try:
                    try:
                        async with asyncio.timeout(remaining):  # a timer on this task: no extra task per call
                            first = await agen.__anext__()
                    except TimeoutError:
                        err = BackendError(f"{model} did not answer within the {self.failover.deadline_s}s deadline",
                                           status=504)
                    except StopAsyncIteration:
                        err = BackendError(f"{model} sent an empty stream")
                    except BackendError as e:
                        err = e
                    except BaseException:  # cancelled by the client: no verdict on the upstream
                        breaker.release()
                        raise
                    else:
                        breaker.record_success()
                        if model != d.model:
                            self.metrics.failover(d.model, model)
                        yield model, first
                        async for item in agen:
                            yield model, item
                        return
                finally:
                    self.inflight[model] -= 1
                    await agen.aclose()
                errors.append(f"{model}: {err}")
                last_status = err.status
                if not err.retryable:  # the request itself was refused: says nothing about the upstream
                    breaker.release()
                    raise BackendError(_joined(errors), status=err.status, retryable=False)
                if err.replica_lost and lost < MAX_REPLICA_LOST_RETRIES:
                    # one replica died; Serve replaces it and routes around it. Not the model's health:
                    # no breaker failure, no attempt used; a short pause lets the handle notice.
                    lost += 1
                    breaker.release()
                    await asyncio.sleep(min(REPLICA_LOST_PAUSE_S * lost, max(0.0, deadline - self.clock())))
                    if not breaker.allow():
                        break
                    continue
                attempts += 1
                breaker.record_failure()
                if breaker.state != "closed":
                    break
        raise BackendError(_joined(errors) or "no model available", status=last_status)

    # --- request parsing, answers, log -----------------------------------------------------------------

    def _request(self, body: dict[str, Any], tenant: str) -> tuple[Request, str | None]:
        messages = parse_messages(body, max_prompt_chars=self.router.config.max_prompt_chars)
        model = body.get("model", "auto")
        if not isinstance(model, str):
            raise RequestError(f"'model' must be a string; got {type(model).__name__}", field="model")
        if model not in AUTO_MODELS and model not in self.router.config.model_names:
            known = ", ".join(("auto",) + self.router.config.model_names)
            raise RequestError(f"unknown model {model!r}; known models: {known}", field="model", status=404)
        if not isinstance(body.get("stream", False), bool):
            raise RequestError(f"'stream' must be true or false; got {body['stream']!r}", field="stream")
        user = body.get("user", "")
        if not isinstance(user, str):
            raise RequestError(f"'user' must be a string; got {type(user).__name__}", field="user")
        meta = body.get("metadata")
        if meta is not None and not isinstance(meta, dict):
            raise RequestError(f"'metadata' must be an object; got {type(meta).__name__}", field="metadata")
        max_tokens = body.get("max_tokens")
        if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
            raise RequestError(f"'max_tokens' must be a positive integer; got {max_tokens!r}", field="max_tokens")
        generation = {k: v for k, v in body.items() if k not in NOT_GENERATION_KEYS}
        return (Request(messages=messages, request_id=new_request_id(), tenant=tenant, user_id=user,
                        max_tokens=max_tokens,
                        generation=json.dumps(generation, sort_keys=True, ensure_ascii=False) if generation else ""),
                None if model in AUTO_MODELS else model)

    def _turnout(self, call: _Call, record: LogRecord | None, reply: ModelReply | None, served: str) -> dict[str, Any]:
        d = call.decision
        failover = served != d.model
        return {
            "request_id": call.request.request_id, "category": d.category, "confidence": d.confidence,
            "ood": d.ood, "fallback": d.fallback, "cache_tier": d.cache_tier, "cache_hit": d.cache_hit is not None,
            "model": served, "replica": record.replica if record else None,
            "propensity": 1.0 if failover else d.propensity, "policy": "failover" if failover else d.policy,
            "bundle_version": d.bundle_version, "arm": call.arm, "tenant": call.request.tenant,
            "cost_usd": record.cost_usd if record else None, "latency_ms": record.latency_ms if record else None,
            "decision_ms": d.decision_ms, "simulated": bool(reply and reply.result.simulated),
            "failover_from": d.model if failover else None,
        }

    def _answer(self, call: _Call, text: str, reply: ModelReply | None, served: str) -> Reply:
        record = self._log(call, reply, served)
        out_tokens = record.output_tokens or 0
        r = call.request
        return Reply(200, body={
            "id": f"chatcmpl-{r.request_id}",
            "object": "chat.completion",
            "created": int(call.now),
            "model": served,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": r.input_tokens, "completion_tokens": out_tokens,
                      "total_tokens": r.input_tokens + out_tokens},
            "turnout": self._turnout(call, record, reply, served),
        })

    def _log(self, call: _Call, reply: ModelReply | None, served: str, error: str | None = None) -> LogRecord:
        request, decision = call.request, call.decision
        hit = decision.cache_hit is not None
        res = reply.result if reply else None
        router = self.routers.get(call.arm, self.router)
        spec = router.config.model(served) if served in router.config.model_names else None
        cost = 0.0 if hit else (spec.cost_usd(request.input_tokens, res.output_tokens) if res and spec else None)
        forced = served != decision.model  # failover: the served model was not the policy's draw
        latency_ms = (time.perf_counter() - call.t0) * 1000.0 if (res or hit) and error is None else None
        record = LogRecord(
            request_id=request.request_id, timestamp_s=call.now, tenant=request.tenant, arm=call.arm,
            bundle_version=decision.bundle_version, feature_version=FEATURE_VERSION, prompt=request.prompt,
            n_turns=request.n_turns, input_tokens=request.input_tokens, features=decision.features,
            category=decision.category, category_probs=decision.category_probs, confidence=decision.confidence,
            fallback=decision.fallback, cache_tier=decision.cache_tier, cache_hit=hit, model=served,
            candidates=(served,) if forced else decision.candidates,
            action_probs=(1.0,) if forced else decision.action_probs,
            propensity=1.0 if forced else decision.propensity,
            policy="failover" if forced else decision.policy, replica=reply.replica if reply else None,
            replica_stats=dumps_stats(reply.replica_stats) if reply else None,
            ttft_ms=res.ttft_ms if res else None, latency_ms=latency_ms,
            output_tokens=res.output_tokens if res else (0 if hit else None), cost_usd=cost, error=error,
            quality=res.quality if res and error is None else None, assignment_unit=call.unit,
        )
        call.logged = record
        self.log.append(record)
        if error is None and latency_ms is not None:
            self.metrics.completed(model=served, arm=call.arm, latency_ms=latency_ms)
        return record

    # --- feedback --------------------------------------------------------------------------------------

    async def feedback(self, raw: bytes, *, prefix: str = "feedback") -> Reply:
        """``{"request_id": str, "quality": number in [0, 1]}`` -> one feedback shard (contract 1)."""
        try:
            body = parse_body(raw)
            row = parse_feedback(body)
        except RequestError as e:
            self.metrics.error("bad_request")
            return error_reply(e.status, str(e), e.field)
        from router.log_schema import write_feedback_shard

        path = await asyncio.to_thread(write_feedback_shard, self.feedback_dir, [row], prefix)
        return Reply(200, {"object": "feedback", "request_id": row["request_id"], "quality": row["quality"],
                           "shard": path.name})

    # --- hot reload ------------------------------------------------------------------------------------

    def reload(self, arm: str | None = None, bundle: str | None = None) -> Reply:
        """Load + verify ``bundle`` (default: the arm's current directory) and swap it in atomically.
        Blocking (ONNX sessions are built): call it from a worker thread."""
        arm = arm or self.arm
        if arm not in self.routers:
            return error_reply(404, f"unknown arm {arm!r}; arms: {', '.join(self.routers)}", "arm")
        if bundle is not None and (not isinstance(bundle, str) or not bundle):
            return error_reply(400, "'bundle' must be a non-empty path string", "bundle")
        path = bundle or next(a.bundle for a in self.arms if a.name == arm)
        previous = self.routers[arm]
        old = previous.version
        try:
            router = verify_router(path, self.deployed_models, self.build_router)
        except ArtifactError as e:
            self.metrics.reload(arm, "refused")
            return error_reply(409, f"bundle refused, arm {arm!r} keeps serving {old!r}: {e}", "bundle",
                               kind="bundle_error")
        self.routers[arm] = router  # atomic: in-flight requests finish on the old router
        # The old router's cache (Redis follower thread, connections) closes once requests that may still
        # ``remember`` into it are past their deadline.
        closer = threading.Timer(self.failover.deadline_s + 1.0, previous.cache.close)
        closer.daemon = True
        closer.start()
        if bundle is not None:
            self.arms = tuple(replace_arm(a, path) if a.name == arm else a for a in self.arms)
            self.watchers[arm] = BundleWatcher(path)
        self.metrics.reload(arm, "loaded")
        return Reply(200, {"arm": arm, "bundle": str(path), "previous_version": old, "bundle_version": router.version})

    def poll_bundles(self) -> list[Reply]:
        """The watcher: reload every arm whose bundle manifest changed since the last look."""
        return [self.reload(name) for name, w in list(self.watchers.items()) if w.changed()]

    def status(self) -> dict[str, Any]:
        return {"arms": [{"name": a.name, "weight": a.weight, "bundle": a.bundle,
                          "bundle_version": self.routers[a.name].version} for a in self.arms],
                "breakers": {m: b.state for m, b in self.breakers.items()},
                "inflight": {m: n for m, n in self.inflight.items() if n},
                # classifier/policy failures each router turned into a fallback decision (never silent)
                "scoring_failures": {name: r.n_fallbacks for name, r in self.routers.items()},
                # the bounded online quality correction per "category/model", per arm
                "online_correction": {name: r.online.snapshot() for name, r in self.routers.items()}}


def replace_arm(arm: Arm, bundle: str) -> Arm:
    return arm.model_copy(update={"bundle": bundle})


def _joined(errors: list[str]) -> str:
    return "; ".join(errors)


def parse_feedback(body: dict[str, Any]) -> dict[str, Any]:
    rid = body.get("request_id")
    if rid is None:
        raise RequestError("missing required field 'request_id'", field="request_id")
    if not isinstance(rid, str) or not rid.strip() or len(rid) > MAX_REQUEST_ID:
        raise RequestError(f"'request_id' must be a non-empty string of at most {MAX_REQUEST_ID} characters; "
                           f"got {rid!r}"[:300], field="request_id")
    q = body.get("quality")
    if q is None:
        raise RequestError("missing required field 'quality'", field="quality")
    if isinstance(q, bool) or not isinstance(q, int | float) or not math.isfinite(q) or not 0.0 <= q <= 1.0:
        raise RequestError(f"'quality' must be a number in [0, 1]; got {q!r}", field="quality")
    extra = sorted(set(body) - {"request_id", "quality"})
    if extra:
        raise RequestError(f"unknown field(s) {extra}; feedback takes 'request_id' and 'quality'", field=extra[0])
    return {"request_id": rid, "quality": float(q), "timestamp_s": time.time()}


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        return decode_json_object(raw)
    except RequestError as e:
        raise RequestError(f"request body is {e}" if str(e).startswith("not") else f"request body {e}") from e


def pin(decision: Decision, model: str) -> Decision:
    """The client named a model: honour it, logged as a forced action with propensity 1."""
    return replace(decision, model=model, candidates=(model,), action_probs=(1.0,), propensity=1.0, policy="pinned",
                   cache_hit=None if decision.cache_hit and decision.cache_hit.model != model else decision.cache_hit)
