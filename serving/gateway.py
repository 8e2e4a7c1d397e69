"""The gateway's request handling, free of Ray so it can be tested with fake model callers.

Parse (strict UTF-8, JSON, messages) -> ``Router.decide`` -> cache hit or call the chosen model ->
log one ``LogRecord`` -> OpenAI-shaped response plus a ``turnout`` block with the decision. Client
mistakes become 4xx with a message naming the problem; a failing model is a 502/503 that is logged
with its error, and the gateway keeps serving.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from router.config import Preference
from router.decision import Decision, Router
from router.errors import RequestError
from router.features import FEATURE_VERSION
from router.log_schema import LogRecord, dumps_stats
from router.request import Request, decode_json_object, parse_messages, parse_preference
from serving.backends import BackendError, ModelReply
from serving.decision_log import DecisionLogWriter

ModelCaller = Callable[[str, dict[str, Any], str], Awaitable[ModelReply]]
AUTO_MODELS = ("auto", "turnout", "")


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    stream: bool = False


def error_reply(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error") -> Reply:
    return Reply(status, {"error": {"message": message, "type": kind, "param": param, "code": status}})


class GatewayCore:
    def __init__(self, router: Router, log: DecisionLogWriter, call_model: ModelCaller, *, arm: str = "default",
                 preference: Preference | None = None, seed: int = 0) -> None:
        self.router = router
        self.log = log
        self.call_model = call_model
        self.arm = arm
        self.preference = preference
        self.rng = np.random.default_rng(seed)

    def models(self) -> dict[str, Any]:
        cfg = self.router.config
        data = [{"id": "auto", "object": "model", "owned_by": "turnout"}]
        data += [{"id": m.name, "object": "model", "owned_by": "turnout"} for m in cfg.models]
        return {"object": "list", "data": data}

    async def chat(self, raw: bytes, *, tenant: str = "default", preference_header: str | None = None) -> Reply:
        try:
            body = parse_body(raw)
            request, pinned = self._request(body, tenant)
            if preference_header:
                request = replace(request, preference=parse_preference(preference_header))
        except RequestError as e:
            return error_reply(e.status, str(e), e.field)
        now = time.time()
        t0 = time.perf_counter()
        decision = self.router.decide(request, now_s=now, rng=self.rng,
                                      preference=request.preference or self.preference)
        if pinned:
            decision = pin(decision, pinned)
        if decision.cache_hit is not None:
            return self._answer(request, decision, decision.cache_hit.answer, None, now, t0, body)
        try:
            reply = await self.call_model(decision.model, body, decision.category)
        except BackendError as e:
            self._log(request, decision, now, t0, None, error=str(e))
            return error_reply(e.status, f"model {decision.model!r} failed: {e}", kind="upstream_error")
        self.router.remember(request, decision, reply.result.text, now)
        if reply.result.quality is not None:
            self.router.observe(decision, reply.result.quality)
        return self._answer(request, decision, reply.result.text, reply, now, t0, body)

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
        max_tokens = body.get("max_tokens")
        if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
            raise RequestError(f"'max_tokens' must be a positive integer; got {max_tokens!r}", field="max_tokens")
        return (Request(messages=messages, tenant=tenant, user_id=str(user), max_tokens=max_tokens),
                None if model in AUTO_MODELS else model)

    def _answer(self, request: Request, decision: Decision, text: str, reply: ModelReply | None, now: float,
                t0: float, body: dict[str, Any]) -> Reply:
        record = self._log(request, decision, now, t0, reply)
        out_tokens = record.output_tokens or 0
        return Reply(200, stream=body.get("stream") is True, body={
            "id": f"chatcmpl-{request.request_id}",
            "object": "chat.completion",
            "created": int(now),
            "model": decision.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": request.input_tokens, "completion_tokens": out_tokens,
                      "total_tokens": request.input_tokens + out_tokens},
            "turnout": {
                "request_id": request.request_id, "category": decision.category, "confidence": decision.confidence,
                "ood": decision.ood, "fallback": decision.fallback, "cache_tier": decision.cache_tier,
                "cache_hit": decision.cache_hit is not None, "model": decision.model,
                "replica": record.replica, "propensity": decision.propensity, "policy": decision.policy,
                "bundle_version": decision.bundle_version, "arm": self.arm, "cost_usd": record.cost_usd,
                "latency_ms": record.latency_ms, "decision_ms": decision.decision_ms,
                "simulated": bool(reply and reply.result.simulated),
            },
        })

    def _log(self, request: Request, decision: Decision, now: float, t0: float, reply: ModelReply | None,
             error: str | None = None) -> LogRecord:
        hit = decision.cache_hit is not None
        res = reply.result if reply else None
        spec = self.router.config.model(decision.model)
        cost = 0.0 if hit else (spec.cost_usd(request.input_tokens, res.output_tokens) if res else None)
        record = LogRecord(
            request_id=request.request_id, timestamp_s=now, tenant=request.tenant, arm=self.arm,
            bundle_version=decision.bundle_version, feature_version=FEATURE_VERSION, prompt=request.prompt,
            n_turns=request.n_turns, input_tokens=request.input_tokens, features=decision.features,
            category=decision.category, category_probs=decision.category_probs, confidence=decision.confidence,
            fallback=decision.fallback, cache_tier=decision.cache_tier, cache_hit=hit, model=decision.model,
            candidates=decision.candidates, action_probs=decision.action_probs, propensity=decision.propensity,
            policy=decision.policy, replica=reply.replica if reply else None,
            replica_stats=dumps_stats(reply.replica_stats) if reply else None,
            ttft_ms=res.ttft_ms if res else None,
            latency_ms=(time.perf_counter() - t0) * 1000.0 if (res or hit) else None,
            output_tokens=res.output_tokens if res else (0 if hit else None), cost_usd=cost, error=error,
            quality=res.quality if res else None,
        )
        self.log.append(record)
        return record


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        return decode_json_object(raw)
    except RequestError as e:
        raise RequestError(f"request body is {e}" if str(e).startswith("not") else f"request body {e}") from e


def pin(decision: Decision, model: str) -> Decision:
    """The client named a model: honour it, logged as a forced action with propensity 1."""
    return replace(decision, model=model, candidates=(model,), action_probs=(1.0,), propensity=1.0, policy="pinned",
                   cache_hit=None if decision.cache_hit and decision.cache_hit.model != model else decision.cache_hit)
