"""The Ray Serve application: a FastAPI gateway ingress in front of one deployment per model.

    HTTP -> Gateway (router in-process: classify, cache, choose model; logs decisions)
              -> LLM_<model> deployments (replica chosen by serving.replica_router.Pow2ReplicaRouter)

``build_app(args)`` is the typed builder used by ``turnout serve`` and by ``serve run``.

No ``from __future__ import annotations`` here: FastAPI must see the real ``Request`` type on the
ingress methods, which Serve rewrites (a string annotation is resolved as a query parameter -> 422).
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict
from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from router.bundle import load_bundle
from router.decision import Router
from serving.backends import BackendError, ModelReply, make_backend
from serving.config import ServeConfig
from serving.decision_log import DecisionLogWriter
from serving.gateway import GatewayCore

api = FastAPI(title="turnout gateway", description="OpenAI-compatible chat completions with learned routing")
QUIET_LOGS = {"enable_access_log": False, "log_level": "WARNING"}


class AppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config: ServeConfig


def _replica_name() -> str:
    ctx = serve.get_replica_context()
    return f"{ctx.deployment}#{ctx.replica_id.unique_id}"


# Helpers the deployments call must be defined above them: Serve serialises the classes when
# they are decorated, capturing only globals that already exist.
async def _sse(body: dict[str, Any]) -> AsyncIterator[str]:
    """Skeleton streaming: the finished answer as one OpenAI ``chat.completion.chunk``."""
    chunk = {"id": body["id"], "object": "chat.completion.chunk", "created": int(time.time()), "model": body["model"],
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": body["choices"][0]["message"]["content"]},
                          "finish_reason": "stop"}], "turnout": body["turnout"]}
    yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, logging_config=QUIET_LOGS)
class ModelServer:
    """One model's replica. With the simulated backend, answers are SIMULATED (labelled in the reply).

    ``engine`` (a ``training.engine.SimulatedReplicaSpec`` as a dict; simulated backend only) runs the
    replica engine model in real time: requests queue, batch and hit the prefix cache as in the
    discrete-event simulator, latency comes from the engine, and ``record_routing_stats`` reports the
    engine's state (``router.replica`` stats keys + a compact prefix-cache summary) for
    ``serving.replica_router.LearnedReplicaRouter``. Without it the stats are in-flight counts only.
    """

    def __init__(self, model: str, backend: dict[str, Any], base_dir: str,
                 engine: dict[str, Any] | None = None) -> None:
        self.model = model
        self.ongoing = 0
        self.ewma_latency_ms = 0.0
        self.engine = None
        if engine is not None:
            from training.engine import SimulatedReplicaSpec

            if backend.get("kind") != "simulated":
                raise ValueError(f"model {model!r}: an engine model needs the simulated backend; got backend "
                                 f"kind {backend.get('kind')!r} (a real upstream reports its own state)")
            spec = SimulatedReplicaSpec.model_validate(engine)
            self.engine = spec.realtime_engine(serve.get_replica_context().rank.rank)
            backend = {**backend, "time_scale": 0.0}  # the engine, not the backend, decides latency
        self.backend = make_backend(model, backend, base_dir)

    async def chat(self, body: dict[str, Any], category: str) -> ModelReply:
        stats = self.record_routing_stats(summary=False)
        self.ongoing += 1
        try:
            result = await self.backend.generate(body, category)
            if self.engine is not None:
                result = await self._run_on_engine(body, result)
        finally:
            self.ongoing -= 1
        self.ewma_latency_ms = 0.9 * self.ewma_latency_ms + 0.1 * result.latency_ms
        return ModelReply(result, _replica_name(), stats)

    async def _run_on_engine(self, body: dict[str, Any], result: Any) -> Any:
        import dataclasses

        from router.replica import request_from_body

        req = request_from_body(body)
        ttft_s, e2e_s = await self.engine.generate(req.input_tokens, result.output_tokens, req.prefix_hashes)
        return dataclasses.replace(result, ttft_ms=1000.0 * ttft_s, latency_ms=1000.0 * e2e_s)

    def record_routing_stats(self, summary: bool = True) -> dict[str, Any]:
        """In-flight count and latency EWMA; with an engine, its ``router.replica.STATS_KEYS`` + ``ts``
        (wall clock of the snapshot) and, when ``summary``, the compact ``prefix_summary`` list."""
        stats: dict[str, Any] = {"num_ongoing": self.ongoing, "ewma_latency_ms": round(self.ewma_latency_ms, 2),
                                 "ts": time.time()}
        if self.engine is not None:
            stats.update({k: v for k, v in self.engine.stats().items() if k != "prefix_summary"})
            if summary:
                stats["prefix_summary"] = self.engine.engine.summary_list()
        return stats


@serve.deployment(ray_actor_options={"num_cpus": 0.2}, logging_config=QUIET_LOGS)
@serve.ingress(api)
class Gateway:
    def __init__(self, config: dict[str, Any], models: dict[str, DeploymentHandle]) -> None:
        cfg = ServeConfig.model_validate(config)
        bundle = load_bundle(cfg.path(cfg.bundle))
        router_cfg = bundle.manifest.router
        if cfg.epsilon is not None:
            router_cfg = router_cfg.model_copy(update={"exploration": router_cfg.exploration.model_copy(update={"epsilon": cfg.epsilon})})
        self.cfg = cfg
        self.log = DecisionLogWriter(cfg.path(cfg.log_dir), prefix=f"decisions-{_replica_name().replace('#', '-')}",
                                     flush_rows=cfg.gateway.log_flush_rows, flush_s=cfg.gateway.log_flush_s)
        self.handles = {m: h.options(method_name="chat") for m, h in models.items()}
        self.core = GatewayCore(Router(bundle, config=router_cfg), self.log, self._call_model,
                                preference=cfg.preference, seed=cfg.gateway.seed)
        self._flusher: "asyncio.Task[None] | None" = None

    async def _call_model(self, model: str, body: dict[str, Any], category: str) -> ModelReply:
        try:
            return await asyncio.wait_for(self.handles[model].remote(body, category),
                                          timeout=self.cfg.gateway.request_timeout_s)
        except BackPressureError as e:
            raise BackendError(f"{model} is overloaded: {e}", status=503) from e
        except asyncio.TimeoutError as e:
            raise BackendError(f"{model} timed out after {self.cfg.gateway.request_timeout_s}s", status=504) from e
        except BackendError:
            raise
        except Exception as e:  # a replica crash or backend bug: a server-side failure, logged with the request
            raise BackendError(f"{type(e).__name__}: {e}") from e

    def _ensure_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_periodically())

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.gateway.log_flush_s)
            await asyncio.to_thread(self.log.flush_if_due)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        self._ensure_flusher()
        reply = await self.core.chat(await request.body(),
                                     preference_header=request.headers.get("x-turnout-preference"))
        if reply.stream:
            return StreamingResponse(_sse(reply.body), media_type="text/event-stream")
        return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)

    @api.get("/v1/models")
    async def list_models(self) -> dict[str, Any]:
        return self.core.models()

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "bundle_version": self.core.router.version, "buffered_log_records": len(self.log)}

    @api.post("/admin/flush")
    async def flush(self) -> dict[str, Any]:
        path = await asyncio.to_thread(self.log.flush)
        return {"flushed": str(path) if path else None, "written_total": self.log.n_written}

    def __del__(self) -> None:
        self.log.close()


def replica_router_config(cfg: ServeConfig) -> RequestRouterConfig:
    rr = cfg.replica_routing
    if rr.kind == "learned":
        if not rr.model:
            raise ValueError("replica_routing.kind is 'learned' but replica_routing.model (a replicas.onnx dir) is not set")
        cls, kwargs = "serving.replica_router:LearnedReplicaRouter", {"scorer_path": str(cfg.path(rr.model))}
    else:
        cls, kwargs = "serving.replica_router:Pow2ReplicaRouter", {}
    return RequestRouterConfig(request_router_class=cls, request_router_kwargs=kwargs,
                               request_routing_stats_period_s=rr.stats_period_s, initial_backoff_s=0.005,
                               max_backoff_s=0.05)


def build_app(args: AppArgs | dict[str, Any]) -> serve.Application:
    """Typed builder: validates the config and the bundle in the driver before anything deploys."""
    args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    cfg = args.config
    bundle = load_bundle(cfg.path(cfg.bundle))
    backend = cfg.backend.model_dump()
    models = {}
    for m in bundle.manifest.router.model_names:
        opts = cfg.deployment(m)
        models[m] = ModelServer.options(
            name=f"LLM_{m}", num_replicas=opts.num_replicas, max_ongoing_requests=opts.max_ongoing_requests,
            ray_actor_options={"num_cpus": opts.num_cpus},
            request_router_config=replica_router_config(cfg),
        ).bind(m, backend, cfg.base_dir)
    g = cfg.gateway
    return Gateway.options(num_replicas=g.num_replicas, max_ongoing_requests=g.max_ongoing_requests,
                           ray_actor_options={"num_cpus": g.num_cpus}).bind(cfg.model_dump(), models)
