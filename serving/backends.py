"""Model backends: what actually produces an answer once the router has chosen a model.

* ``SimulatedBackend`` -- SIMULATED. Latency, tokens and quality come from ``training.world``; the
  answer text is synthetic. Every response says ``"simulated": true``.
* ``OpenAIUpstream`` -- the real path: any OpenAI-compatible server (vLLM, hosted APIs) via httpx.

Both return ``BackendResult``; neither imports Ray, so both are unit-testable.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import zlib
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from router.request import estimate_tokens


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
    """The backend failed (timeout, upstream 5xx, bad upstream payload, overload: ``status`` 503)."""

    def __init__(self, message: str, *, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


class SimulatedBackend:
    def __init__(self, model: str, world_path: str, time_scale: float, seed: int = 0) -> None:
        from training.world import load_world

        self.model = model
        self.world = load_world(world_path)
        self.time_scale = time_scale
        self._rng = np.random.default_rng([zlib.crc32(model.encode()), seed, os.getpid()])

    async def generate(self, body: dict[str, Any], category_hint: str) -> BackendResult:
        from training.world import outcome

        meta = body.get("metadata") or {}
        category = meta.get("sim_category") if meta.get("sim_category") in self.world.router.taxonomy else category_hint
        difficulty = _float_or(meta.get("sim_difficulty"), 0.5)
        prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []) if isinstance(m, dict))
        o = outcome(self.world, self.model, category, difficulty, estimate_tokens(prompt), self._rng)
        await asyncio.sleep(o.latency_ms / 1000.0 * self.time_scale)
        digest = hashlib.sha256(prompt.encode("utf-8", "replace")).hexdigest()[:8]
        text = f"[simulated {self.model} answer {digest} for a {category} request, {o.output_tokens} tokens]"
        return BackendResult(text, o.output_tokens, o.ttft_ms, o.latency_ms, o.quality, simulated=True)


def _float_or(value: Any, default: float) -> float:
    try:
        return min(max(float(value), 0.0), 1.0)
    except (TypeError, ValueError):
        return default


class OpenAIUpstream:
    def __init__(self, model: str, base_url: str, api_key_env: str, upstream_model: str, timeout_s: float,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.model = model
        self.upstream_model = upstream_model
        headers = {"Authorization": f"Bearer {os.environ.get(api_key_env, '')}"}
        self._client = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers,
                                         timeout=httpx.Timeout(timeout_s), transport=transport)

    async def generate(self, body: dict[str, Any], category_hint: str) -> BackendResult:
        payload = {k: v for k, v in body.items() if k not in ("metadata", "stream")}
        payload["model"] = self.upstream_model
        t0 = time.perf_counter()
        try:
            resp = await self._client.post("/chat/completions", json=payload)
        except httpx.HTTPError as e:
            raise BackendError(f"upstream {self.upstream_model} unreachable: {type(e).__name__}: {e}") from e
        latency_ms = (time.perf_counter() - t0) * 1000.0
        if resp.status_code >= 400:
            raise BackendError(f"upstream {self.upstream_model} answered {resp.status_code}: {resp.text[:200]}")
        try:
            data = resp.json()
            text = data["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise BackendError(f"upstream {self.upstream_model} sent an unexpected payload: {resp.text[:200]}") from e
        tokens = int((data.get("usage") or {}).get("completion_tokens") or estimate_tokens(text))
        return BackendResult(text, tokens, latency_ms, latency_ms)

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
                          spec.get("timeout_s", 60.0))
