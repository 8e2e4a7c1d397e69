"""A passthrough ingress: the baseline ``benchmarks/serve_overhead.py`` measures the gateway against.

It answers ``POST /v1/chat/completions`` by calling a model deployment of a running turnout app
(the *same* deployments and replicas the gateway calls, found with ``serve.get_deployment_handle``)
and wrapping the reply in the OpenAI response shape -- with no routing decision: no classifier, no
policy, no cache, no decision log, no tenants. The model is the body's ``model`` when it names a
catalogue model, else the first one. Not for production traffic: it exists to price the router.

No ``from __future__ import annotations``: FastAPI must see the real ``Request`` type (see serving.app).
"""

import gc
import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve

api = FastAPI(title="turnout passthrough (benchmark baseline: no routing decision)")
QUIET_LOGS = {"enable_access_log": False, "log_level": "WARNING"}


# defined above the deployment: Serve serialises the class with the globals that exist at decoration
def _openai_body(model: str, result: Any) -> dict[str, Any]:
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text}, "finish_reason": "stop"}],
            "usage": {"completion_tokens": result.output_tokens},
            "simulated": bool(getattr(result, "simulated", False))}


@serve.deployment(ray_actor_options={"num_cpus": 0.2}, logging_config=QUIET_LOGS, max_ongoing_requests=128)
@serve.ingress(api)
class Passthrough:
    """``app_name``: the turnout app whose ``LLM_<model>`` deployments to call; ``category``: the hint
    passed to the model deployment (the simulated backend draws latency/quality for it)."""

    def __init__(self, app_name: str, models: Sequence[str], category: str) -> None:
        if not models:
            raise ValueError("Passthrough needs at least one model")
        self.models = list(models)
        self.category = category
        self.handles = {m: serve.get_deployment_handle(f"LLM_{m}", app_name=app_name).options(method_name="chat")
                        for m in self.models}
        gc.collect()  # as the gateway does after loading: long-lived objects skip later collections
        gc.freeze()

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as e:
            return JSONResponse({"error": {"message": f"request body is not valid JSON: {e}",
                                           "type": "invalid_request_error"}}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": {"message": "request body must be a JSON object",
                                           "type": "invalid_request_error"}}, status_code=400)
        model = body.get("model") if body.get("model") in self.handles else self.models[0]
        reply = await self.handles[model].remote(body, self.category)
        return JSONResponse(_openai_body(model, reply.result))

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "models": self.models}


def build_passthrough(app_name: str, models: Sequence[str], category: str, num_replicas: int = 1) -> serve.Application:
    return Passthrough.options(num_replicas=num_replicas).bind(app_name, list(models), category)
