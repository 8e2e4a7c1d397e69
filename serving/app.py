"""The Ray Serve application: a FastAPI gateway ingress in front of one deployment per model.

    HTTP -> Gateway (router in-process: classify, cache, choose model; logs decisions)
              -> LLM_<model> deployments (replica chosen by serving.replica_router: Pow2ReplicaRouter, or
                 LearnedReplicaRouter with replica_routing.kind: learned)

``build_app(args)`` is the typed builder used by ``turnout serve`` and by ``serve run``.

No ``from __future__ import annotations`` here: FastAPI must see the real ``Request`` type on the
ingress methods, which Serve rewrites (a string annotation is resolved as a query parameter -> 422).
"""

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.config import RequestRouterConfig
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from router.bundle import load_bundle
from router.decision import Router
from router.errors import RequestError
from router.replica import REPLICA_MODEL_FILE
from serving.backends import BackendError, ModelReply, make_backend
from serving.config import ServeConfig, load_serve_config
from serving.decision_log import DecisionLogWriter
from serving.gateway import GatewayCore, error_reply, parse_body
from serving.metrics import GatewayMetrics
from serving.overload import build_overload_guard
from serving.tenants import TenantDirectory

api = FastAPI(title="turnout gateway", description="OpenAI-compatible chat completions with learned routing")
QUIET_LOGS = {"enable_access_log": False, "log_level": "WARNING"}
METRICS_FLUSH_S = 1.0  # per-request counters reach Ray within this while traffic flows, else at the next log_flush_s tick
_LOG = logging.getLogger("ray.serve")


class AppArgs(BaseModel):
    """``config`` (a ServeConfig mapping) or ``config_file`` (a turnout serve YAML, for ``serve run``)."""

    model_config = ConfigDict(extra="forbid")
    config: ServeConfig | None = None
    config_file: str | None = None

    def serve_config(self) -> ServeConfig:
        if (self.config is None) == (self.config_file is None):
            raise ValueError("pass exactly one of 'config' and 'config_file'")
        return self.config if self.config is not None else load_serve_config(self.config_file)


def _replica_name() -> str:
    ctx = serve.get_replica_context()
    return f"{ctx.deployment}#{ctx.replica_id.unique_id}"


# Helpers the deployments call must be defined above them: Serve serialises the classes when
# they are decorated, capturing only globals that already exist.
def _log_reload(reply: Any, source: str) -> None:
    if reply.status == 200:
        _LOG.warning("bundle reload (%s): %s", source, reply.body)
    else:
        _LOG.warning("bundle reload refused (%s): %s", source, reply.body["error"]["message"])


def _as_backend_error(model: str, e: BaseException) -> BackendError:
    """A model call's failure as a ``BackendError``; a ``BackendError`` raised in the replica arrives
    wrapped in a ``RayTaskError`` (``.cause`` is the original, its attributes delegate)."""
    cause = getattr(e, "cause", e)
    if isinstance(cause, BackendError):
        return BackendError(str(cause), status=cause.status, retryable=cause.retryable)
    if isinstance(e, BackPressureError):
        return BackendError(f"{model} is overloaded: {e}", status=503)
    message = f"{model}: {type(e).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
    if isinstance(e, RayActorError):  # a dead or restarting replica (ActorDiedError, ActorUnavailableError)
        return BackendError(message, status=503, replica_lost=True)
    return BackendError(message)  # an unavailable deployment, a backend bug


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
        self.ewma_ttft_ms = 0.0
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
        self.counters = {"streams": 0, "streams_cancelled": 0, "streams_completed": 0}

    async def chat_stream(self, body: dict[str, Any], category: str) -> AsyncIterator[Any]:
        """Text deltas at the backend's pace, then one ``ModelReply``. A cancelled stream (the gateway
        cancels it when its client disconnects) stops the backend at once and is counted."""
        stats = self.record_routing_stats(summary=False)
        self.ongoing += 1
        self.counters["streams"] += 1
        try:
            if self.engine is not None:  # the engine model decides latency: no per-token pacing
                reply = await self.chat(body, category)
                yield reply.result.text
                yield reply
                return
            async for item in self.backend.stream(body, category):
                if isinstance(item, str):
                    yield item
                else:
                    self._record_latency(item)
                    yield ModelReply(item, _replica_name(), stats)
            self.counters["streams_completed"] += 1
        except (asyncio.CancelledError, GeneratorExit):
            self.counters["streams_cancelled"] += 1
            raise
        finally:
            self.ongoing -= 1

    def stream_counters(self) -> dict[str, int]:
        return dict(self.counters)

    async def chat(self, body: dict[str, Any], category: str) -> ModelReply:
        stats = self.record_routing_stats(summary=False)
        self.ongoing += 1
        try:
            result = await self.backend.generate(body, category)
            if self.engine is not None:
                result = await self._run_on_engine(body, result)
        finally:
            self.ongoing -= 1
        self._record_latency(result)
        return ModelReply(result, _replica_name(), stats)

    def _record_latency(self, result: Any) -> None:
        self.ewma_latency_ms = 0.9 * self.ewma_latency_ms + 0.1 * result.latency_ms
        self.ewma_ttft_ms = 0.9 * self.ewma_ttft_ms + 0.1 * result.ttft_ms

    async def _run_on_engine(self, body: dict[str, Any], result: Any) -> Any:
        import dataclasses

        from router.replica import request_from_body

        req = request_from_body(body)
        ttft_s, e2e_s = await self.engine.generate(req.input_tokens, result.output_tokens, req.prefix_hashes)
        return dataclasses.replace(result, ttft_ms=1000.0 * ttft_s, latency_ms=1000.0 * e2e_s)

    def record_routing_stats(self, summary: bool = True) -> dict[str, Any]:
        """In-flight count, latency and TTFT EWMAs (read by ``serving.overload``) and ``ts`` (wall clock of
        the snapshot); with an engine, its ``router.replica.STATS_KEYS`` and, when ``summary``, the
        compact ``prefix_summary`` list."""
        stats: dict[str, Any] = {"num_ongoing": self.ongoing, "ewma_latency_ms": round(self.ewma_latency_ms, 2),
                                 "ewma_ttft_ms": round(self.ewma_ttft_ms, 2), "ts": time.time()}
        if self.engine is not None:
            stats.update({k: v for k, v in self.engine.stats().items() if k != "prefix_summary"})
            if summary:
                stats["prefix_summary"] = self.engine.engine.summary_list()
        return stats


@serve.deployment(ray_actor_options={"num_cpus": 0.2}, logging_config=QUIET_LOGS)
@serve.ingress(api)
class Gateway:
    """The ingress: ``serving.gateway.GatewayCore`` behind FastAPI, one ``Router`` per A/B arm."""

    def __init__(self, config: dict[str, Any], models: dict[str, DeploymentHandle]) -> None:
        cfg = ServeConfig.model_validate(config)
        self.cfg = cfg
        arms = [a.model_copy(update={"bundle": str(cfg.path(a.bundle))}) for a in cfg.arms()]
        routers = {a.name: self._build_router(load_bundle(a.bundle)) for a in arms}
        self.replica = _replica_name().replace("#", "-")
        self.log = DecisionLogWriter(cfg.path(cfg.log_dir), prefix=f"decisions-{self.replica}",
                                     flush_rows=cfg.gateway.log_flush_rows, flush_s=cfg.gateway.log_flush_s,
                                     background=True)
        self.handles = {m: h.options(method_name="chat") for m, h in models.items()}
        self.stream_handles = {m: h.options(method_name="chat_stream", stream=True) for m, h in models.items()}
        # this gateway replica's share of each model's capacity: it counts only its own in-flight requests,
        # so with N gateway replicas each sees ~1/N of the load (uniform spreading by Serve's proxy)
        share = 1.0 / cfg.gateway.num_replicas
        capacity = {m: share * cfg.deployment(m).max_ongoing_requests * cfg.deployment(m).num_replicas for m in models}
        tenants = TenantDirectory(cfg.tenants, cfg.default_rate_limit) if cfg.tenants or cfg.default_rate_limit else None
        self.core = GatewayCore(routers, self.log, self._call_model, stream_model=self._stream_model, arms=arms,
                                assign_by=cfg.experiment.assign_by if cfg.experiment else "user",
                                preference=cfg.preference, seed=cfg.gateway.seed, tenants=tenants,
                                failover=cfg.failover, metrics=GatewayMetrics(flush_s=METRICS_FLUSH_S),
                                capacity=capacity, build_router=self._build_router, feedback_dir=cfg.path(cfg.log_dir),
                                overload=build_overload_guard(cfg, models, _LOG),
                                decide_in_thread=cfg.gateway.decide_in_thread)
        self.core.deployed_models = set(models)
        self._tasks: "list[asyncio.Task[None]]" = []
        # the bundle, ONNX sessions and libraries loaded above live as long as the replica: keep them out of
        # every later garbage collection (a full collection would walk them again and again)
        gc.collect()
        gc.freeze()

    def _build_router(self, bundle: Any) -> Router:
        """The one place a Router is built (startup and hot reload)."""
        router_cfg = bundle.manifest.router
        if self.cfg.epsilon is not None:
            router_cfg = router_cfg.model_copy(update={"exploration": router_cfg.exploration.model_copy(
                update={"epsilon": self.cfg.epsilon})})
        # Redis entries are scoped by bundle version: arms never serve each other's answers (an A/B stays
        # clean) and a reloaded bundle never adopts vectors from another bundle's embedder.
        store = self.cfg.cache_store.model_copy(
            update={"key_prefix": f"{self.cfg.cache_store.key_prefix}{bundle.version}:"})
        return Router(bundle, config=router_cfg, cache_store=store)

    async def _call_model(self, model: str, body: dict[str, Any], category: str) -> ModelReply:
        try:
            async with asyncio.timeout(self.cfg.gateway.request_timeout_s):  # a timer, not a task per call
                return await self.handles[model].remote(body, category)
        except TimeoutError as e:
            raise BackendError(f"{model} timed out after {self.cfg.gateway.request_timeout_s}s", status=504) from e
        except asyncio.CancelledError:
            raise
        except Exception as e:
            raise _as_backend_error(model, e) from e

    async def _stream_model(self, model: str, body: dict[str, Any], category: str) -> AsyncIterator[Any]:
        gen = self.stream_handles[model].remote(body, category)
        try:
            async for item in gen:
                yield item
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as e:
            raise _as_backend_error(model, e) from e
        finally:
            gen.cancel()  # the client went away (or we failed over): stop the model's stream too

    # --- background: periodic log flush and the bundle watcher ----------------------------------------

    def _ensure_background(self) -> None:
        if self._tasks and all(not t.done() for t in self._tasks):
            return
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._flush_periodically())]
        if self.cfg.gateway.reload_poll_s:
            self._tasks.append(loop.create_task(self._watch_bundles()))

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.gateway.log_flush_s)
            self.core.metrics.flush()  # counters summed since the last request-triggered flush
            await asyncio.to_thread(self.log.flush_if_due)

    async def _watch_bundles(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.gateway.reload_poll_s or 2.0)
            try:
                for reply in await asyncio.to_thread(self.core.poll_bundles):
                    _log_reload(reply, "watcher")
            except Exception as e:  # never let the watcher die silently
                _LOG.warning("bundle watcher error: %s: %s", type(e).__name__, e)

    async def check_health(self) -> None:
        """Serve calls this periodically: also (re)starts the background tasks without traffic."""
        self._ensure_background()

    # --- API --------------------------------------------------------------------------------------------

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        self._ensure_background()
        reply = await self.core.chat(await request.body(), headers=request.headers)
        if reply.stream and reply.chunks is not None:
            return StreamingResponse(reply.chunks, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)

    @api.post("/v1/feedback")
    async def feedback(self, request: Request) -> Response:
        admitted = self.core.admit(request.headers)
        if not isinstance(admitted, str):
            return JSONResponse(admitted.body, status_code=admitted.status, headers=admitted.headers)
        reply = await self.core.feedback(await request.body(), prefix=f"feedback-{self.replica}")
        return JSONResponse(reply.body, status_code=reply.status)

    @api.get("/v1/models")
    async def list_models(self) -> dict[str, Any]:
        return self.core.models()

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        self._ensure_background()
        log = self.log
        return {"status": "ok", "bundle_version": self.core.router.version, "buffered_log_records": len(log),
                "decision_log": {"written": log.n_written, "failed_writes": log.n_failed_writes,
                                 "dropped": log.n_dropped, "quarantined": log.n_quarantined},
                **self.core.status()}

    @api.get("/metrics")
    async def metrics(self) -> Response:
        """This node's Prometheus page (Ray's metrics agent); scrape every node's port for a cluster."""
        import httpx

        url = f"http://127.0.0.1:{self.cfg.metrics_port}/metrics"
        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                r = await client.get(url)
        except httpx.HTTPError as e:
            return JSONResponse({"error": {"message": f"Ray metrics exporter at {url} unreachable: {e}",
                                           "type": "unavailable", "param": None, "code": 503}}, status_code=503)
        return Response(r.content, status_code=r.status_code,
                        media_type=r.headers.get("content-type", "text/plain; version=0.0.4"))

    @api.post("/admin/reload")
    async def reload(self, request: Request) -> Response:
        denied = self.core.admin_allowed(request.headers)
        if denied is not None:
            return JSONResponse(denied.body, status_code=denied.status)
        raw = await request.body()
        try:
            body = parse_body(raw) if raw.strip() else {}
        except RequestError as e:
            return JSONResponse(error_reply(400, str(e)).body, status_code=400)
        arm, bundle = body.get("arm"), body.get("bundle")
        if arm is not None and not isinstance(arm, str):
            return JSONResponse(error_reply(400, f"'arm' must be a string; got {arm!r}", "arm").body, status_code=400)
        # every gateway replica loads and swaps (broadcast also reaches this one); each verifies on its own
        ctx = serve.get_replica_context()
        handle = serve.get_deployment_handle(ctx.deployment, app_name=ctx.app_name)
        results = await handle.broadcast("reload_local", arm, bundle).results_async(timeout_s=300)
        status = max(r["status"] for r in results)
        body = results[0]["body"] if len(results) == 1 else {"replicas": [r["body"] for r in results]}
        if len(results) > 1 and status != 200:
            body["error"] = next(r["body"]["error"] for r in results if r["status"] == status)
        return JSONResponse(body, status_code=status)

    async def reload_local(self, arm: "str | None", bundle: "str | None") -> dict[str, Any]:
        """This replica's part of ``POST /admin/reload`` (called on every replica by broadcast)."""
        reply = await asyncio.to_thread(self.core.reload, arm, bundle)
        _log_reload(reply, "admin")
        return {"status": reply.status, "body": reply.body}

    @api.post("/admin/flush")
    async def flush(self, request: Request) -> Response:
        denied = self.core.admin_allowed(request.headers)
        if denied is not None:
            return JSONResponse(denied.body, status_code=denied.status)
        path = await asyncio.to_thread(self.log.flush)
        return JSONResponse({"flushed": str(path) if path else None, "written_total": self.log.n_written})

    def __del__(self) -> None:
        """Graceful shutdown (Serve drains, then deletes the replica): nothing buffered is lost."""
        try:
            self.core.metrics.flush()
        finally:
            self.log.close()


def replica_router_config(cfg: ServeConfig) -> RequestRouterConfig:
    rr = cfg.replica_routing
    if rr.kind == "learned":
        # the explicit model dir, else the serving bundle's own replicas.onnx (``turnout retrain`` refits it there)
        model = cfg.path(rr.model) if rr.model else cfg.path(cfg.bundle)
        if not (model / REPLICA_MODEL_FILE).exists():
            raise ValueError(f"replica_routing.kind is 'learned' but {model} has no {REPLICA_MODEL_FILE}; set "
                             "replica_routing.model to a `turnout train replicas` output dir")
        cls, kwargs = "serving.replica_router:LearnedReplicaRouter", {"scorer_path": str(model)}
    else:
        cls, kwargs = "serving.replica_router:Pow2ReplicaRouter", {}
    return RequestRouterConfig(request_router_class=cls, request_router_kwargs=kwargs,
                               request_routing_stats_period_s=rr.stats_period_s, initial_backoff_s=0.005,
                               max_backoff_s=0.05)


def build_app(args: AppArgs | dict[str, Any]) -> serve.Application:
    """Typed builder: validates the config and the bundle in the driver before anything deploys."""
    args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    cfg = args.serve_config()
    bundle = load_bundle(cfg.path(cfg.bundle))
    for arm in cfg.arms():  # every arm's bundle must load and route to deployed models
        b = load_bundle(cfg.path(arm.bundle))
        missing = set(b.manifest.router.model_names) - set(bundle.manifest.router.model_names)
        if missing:
            raise ValueError(f"arm {arm.name!r}: bundle routes to {sorted(missing)}, not in the deployed catalogue")
    if cfg.tenants or cfg.default_rate_limit:
        TenantDirectory(cfg.tenants, cfg.default_rate_limit)  # fails here, naming a missing key env var
    backend = cfg.backend.model_dump()
    engine = backend.pop("engine", None)  # simulated backend only: see serving.config.SimulatedBackend
    models = {}
    for m in bundle.manifest.router.model_names:
        opts = cfg.deployment(m)
        models[m] = ModelServer.options(
            name=f"LLM_{m}", num_replicas=opts.num_replicas, max_ongoing_requests=opts.max_ongoing_requests,
            ray_actor_options={"num_cpus": opts.num_cpus},
            request_router_config=replica_router_config(cfg),
        ).bind(m, backend, cfg.base_dir, engine)
    g = cfg.gateway
    return Gateway.options(num_replicas=g.num_replicas, max_ongoing_requests=g.max_ongoing_requests,
                           ray_actor_options={"num_cpus": g.num_cpus},
                           graceful_shutdown_timeout_s=g.graceful_shutdown_timeout_s).bind(cfg.model_dump(), models)
