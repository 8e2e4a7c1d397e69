"""Model backends: what actually produces an answer once the router has chosen a model.

* ``SimulatedBackend`` -- SIMULATED. Latency, tokens and quality come from ``training.world``; the
  answer text is synthetic. Every response says ``"simulated": true``.
* ``OpenAIUpstream`` -- the real path: any OpenAI-compatible server (vLLM, hosted APIs) via httpx.

Both return ``BackendResult`` from ``generate`` and stream text deltas then a final ``BackendResult``
from ``stream``; neither imports Ray, so both are unit-testable. A cancelled stream (client gone)
stops producing at once: the simulated backend stops sleeping, the upstream response is closed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from router.request import estimate_tokens
from serving.resilience import RetryPolicy



@dataclass(frozen=True, slots=True)
class BackendResult:
    text: str
    output_tokens: int
    ttft_ms: float
    latency_ms: float
    quality: float | None = None
    simulated: bool = False


@dataclass(frozen=True, slots=True)
class ModelReply:
    """What a model deployment returns to the gateway: the answer and who produced it."""

    result: BackendResult
    replica: str
    replica_stats: dict[str, Any]


class BackendError(Exception):
    """The backend failed (timeout, upstream 5xx, bad upstream payload, overload: ``status`` 503).

    ``retryable``: another attempt (same or next model) may succeed; False for an upstream 400/413/422,
    which says the request itself is unacceptable there."""

    def __init__(self, message: str, *, status: int = 502, retryable: bool = True, replica_lost: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.replica_lost = replica_lost  # one replica died (Serve replaces it): not the model's health


class SimulatedBackend:
    def __init__(self, model: str, world_path: str, time_scale: float, seed: int = 0) -> None:
        from training.world import load_world

        self.model = model
        self.world = load_world(world_path)
        self.time_scale = time_scale
        self._rng = np.random.default_rng([zlib.crc32(model.encode()), seed, os.getpid()])

    def _outcome(self, body: dict[str, Any], category_hint: str) -> tuple[BackendResult, float]:
        """The simulated result and the wall-clock scale to play it at (``metadata.sim_latency_scale``
        stretches one request, e.g. a long stream in a cancellation test)."""
        from training.world import outcome

        meta = body.get("metadata") or {}
        category = meta.get("sim_category") if meta.get("sim_category") in self.world.router.taxonomy else category_hint
        difficulty = _float_or(meta.get("sim_difficulty"), 0.5)
        scale = self.time_scale * _float_or(meta.get("sim_latency_scale"), 1.0, hi=1000.0)
        prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []) if isinstance(m, dict))
        o = outcome(self.world, self.model, category, difficulty, estimate_tokens(prompt), self._rng)
        digest = hashlib.sha256(prompt.encode("utf-8", "replace")).hexdigest()[:8]
        text = f"[simulated {self.model} answer {digest} for a {category} request, {o.output_tokens} tokens]"
        return BackendResult(text, o.output_tokens, o.ttft_ms, o.latency_ms, o.quality, simulated=True), scale

    async def generate(self, body: dict[str, Any], category_hint: str) -> BackendResult:
        result, scale = self._outcome(body, category_hint)
        await asyncio.sleep(result.latency_ms / 1000.0 * scale)
        return result

    async def stream(self, body: dict[str, Any], category_hint: str) -> AsyncIterator[Any]:
        """Word chunks at the simulated pace: first after TTFT, the rest spread over the decode time."""
        result, scale = self._outcome(body, category_hint)
        words = result.text.split(" ")
        await asyncio.sleep(result.ttft_ms / 1000.0 * scale)
        per_chunk_s = max(result.latency_ms - result.ttft_ms, 0.0) / 1000.0 * scale / max(len(words) - 1, 1)
        for i, word in enumerate(words):
            if i:
                await asyncio.sleep(per_chunk_s)
            yield word if i == 0 else " " + word
        yield result


def _float_or(value: Any, default: float, hi: float = 1.0) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return default
    return min(max(v, 0.0), hi) if v == v else default


RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
CLIENT_STATUSES = frozenset({400, 413, 422})  # upstream answers that mean "this request is invalid"


class OpenAIUpstream:
    """POST {base_url}/chat/completions with per-attempt timeouts and jittered retries on connection
    errors and 408/429/5xx (``Retry-After`` honoured up to the backoff cap). Other 4xx are not
    retried. ``stream`` passes ``stream: true`` through and re-yields the upstream's deltas; a retry is
    only possible before the first delta."""

    def __init__(self, model: str, base_url: str, api_key_env: str, upstream_model: str, timeout_s: float,
                 transport: httpx.AsyncBaseTransport | None = None, retry: RetryPolicy | None = None,
                 seed: int | None = None) -> None:
        self.model = model
        self.upstream_model = upstream_model
        self.retry = retry or RetryPolicy()
        self._rng = random.Random(seed)
        self._retry_after: str | None = None
        key = os.environ.get(api_key_env, "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}  # local vLLM often needs no key
        self._client = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers,
                                         timeout=httpx.Timeout(timeout_s), transport=transport)
        self.n_attempts = 0

    def _payload(self, body: dict[str, Any], stream: bool) -> dict[str, Any]:
        payload = {k: v for k, v in body.items() if k not in ("metadata", "stream", "turnout")}
        payload["model"] = self.upstream_model
        if stream:
            payload["stream"] = True
        return payload

    async def _send(self, payload: dict[str, Any], stream: bool) -> httpx.Response:
        """One response with a non-retryable status, after retries; raises BackendError otherwise."""
        last = ""
        for attempt in range(1, self.retry.attempts + 1):
            if attempt > 1:
                await asyncio.sleep(self._pause(attempt - 1, last))
            self.n_attempts += 1
            try:
                req = self._client.build_request("POST", "/chat/completions", json=payload)
                resp = await self._client.send(req, stream=stream)
            except httpx.TimeoutException as e:
                last = f"timed out ({type(e).__name__})"
                continue
            except httpx.HTTPError as e:
                last = f"unreachable ({type(e).__name__}: {e})"
                continue
            if resp.status_code in RETRY_STATUSES:
                text = (await resp.aread()).decode("utf-8", "replace")[:200]
                await resp.aclose()
                last = f"answered {resp.status_code}: {text}"
                self._retry_after = resp.headers.get("retry-after")
                continue
            if resp.status_code >= 400:
                text = (await resp.aread()).decode("utf-8", "replace")[:200]
                await resp.aclose()
                # the upstream refused this request (too many tokens, bad parameter): the client's mistake
                # -> 400, not retried anywhere. Any other 4xx (401/403/404 on our key or model name) is this
                # upstream's misconfiguration -> 502, retryable: the gateway counts it against the model's
                # circuit breaker and fails over to the next model instead of failing every request.
                client = resp.status_code in CLIENT_STATUSES
                raise BackendError(f"upstream {self.upstream_model} answered {resp.status_code}: {text}",
                                   status=400 if client else 502, retryable=not client)
            return resp
        status = 504 if last.startswith("timed out") else 502
        raise BackendError(f"upstream {self.upstream_model} {last} (after {self.retry.attempts} attempts)", status=status)

    def _pause(self, retry_number: int, last: str) -> float:
        pause = self.retry.backoff_s(retry_number, self._rng)
        hint, self._retry_after = self._retry_after, None
        try:
            return max(pause, min(float(hint), self.retry.max_backoff_s)) if hint else pause
        except ValueError:
            return pause

    async def generate(self, body: dict[str, Any], category_hint: str) -> BackendResult:
        t0 = time.perf_counter()
        resp = await self._send(self._payload(body, stream=False), stream=False)
        latency_ms = (time.perf_counter() - t0) * 1000.0
        try:
            data = resp.json()
            text = data["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise BackendError(f"upstream {self.upstream_model} sent an unexpected payload: {resp.text[:200]}") from e
        tokens = int((data.get("usage") or {}).get("completion_tokens") or estimate_tokens(text))
        return BackendResult(text, tokens, latency_ms, latency_ms)

    async def stream(self, body: dict[str, Any], category_hint: str) -> AsyncIterator[Any]:
        t0 = time.perf_counter()
        resp = await self._send(self._payload(body, stream=True), stream=True)
        ttft_ms: float | None = None
        parts: list[str] = []
        tokens: int | None = None
        try:
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                    choices = chunk.get("choices") or []
                    delta = (choices[0].get("delta") or {}).get("content") if choices else None
                except (ValueError, AttributeError, IndexError) as e:
                    raise BackendError(f"upstream {self.upstream_model} sent a bad stream chunk: {data[:200]}") from e
                usage = chunk.get("usage") if isinstance(chunk, dict) else None
                if isinstance(usage, dict) and usage.get("completion_tokens"):
                    tokens = int(usage["completion_tokens"])
                if delta:
                    if ttft_ms is None:
                        ttft_ms = (time.perf_counter() - t0) * 1000.0
                    parts.append(delta)
                    yield delta
        except httpx.HTTPError as e:
            raise BackendError(f"upstream {self.upstream_model} stream broke: {type(e).__name__}: {e}") from e
        finally:
            await resp.aclose()  # also on cancellation: closes the upstream connection
        latency_ms = (time.perf_counter() - t0) * 1000.0
        text = "".join(parts)
        yield BackendResult(text, tokens or estimate_tokens(text), ttft_ms or latency_ms, latency_ms)

    async def aclose(self) -> None:
        await self._client.aclose()


def make_backend(model: str, spec: dict[str, Any], base_dir: str) -> SimulatedBackend | OpenAIUpstream:
    """Build the backend a ``serving.config`` backend section describes (as a plain dict)."""
    from pathlib import Path

    if spec["kind"] == "simulated":
        world = Path(spec["world"])
        world = world if world.is_absolute() else Path(base_dir) / world
        return SimulatedBackend(model, str(world), spec["time_scale"], spec.get("seed", 0))
    upstream = spec.get("upstream_models", {}).get(model, model)
    return OpenAIUpstream(model, spec["base_url"], spec.get("api_key_env", "OPENAI_API_KEY"), upstream,
                          spec.get("timeout_s", 60.0), retry=RetryPolicy.model_validate(spec.get("retry") or {}))
