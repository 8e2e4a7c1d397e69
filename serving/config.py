"""Deployment knobs for ``turnout serve``: where the bundle is, how models are backed, resources.

Relative paths in the YAML resolve against the YAML file's directory, so a config works from any
working directory. Defaults fit a 2-CPU machine: fractional CPUs for every replica.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from router.config import Preference, _Frozen, load_yaml, validate_config
from router.cache_store import CacheStoreSettings
from serving.experiments import Arm, ExperimentConfig
from serving.overload import OverloadConfig
from serving.resilience import FailoverConfig, RetryPolicy
from serving.tenants import RateLimit, TenantConfig


class SimulatedBackend(_Frozen):
    """SIMULATED models (labelled as such in every response): latency and quality from the world.

    ``engine`` (a ``training.engine.SimulatedReplicaSpec``) runs the replica engine model in each replica
    instead: requests queue, batch and hit a prefix cache, latency comes from the engine, and replicas
    report the engine's stats -- what ``replica_routing.kind: learned`` scores. Without it replicas report
    in-flight counts only, so the learned replica router always falls back to pow2.
    """

    kind: Literal["simulated"] = "simulated"
    world: str = "world.yaml"
    time_scale: float = Field(default=0.02, gt=0, le=10, description="wall seconds per simulated second")
    seed: int = 0
    engine: dict[str, Any] | None = Field(default=None, description=(
        "replica engine model: {config: {...EngineConfig}, time_scale, slowdown_by_rank}; null = off"))

    @model_validator(mode="after")
    def _engine_spec(self) -> SimulatedBackend:
        if self.engine is not None:  # validated here, at config load, not in a replica at deploy time
            from pydantic import ValidationError

            from training.engine import SimulatedReplicaSpec

            try:
                SimulatedReplicaSpec.model_validate(self.engine)
            except ValidationError as e:
                raise ValueError("; ".join(f"backend.engine.{'.'.join(map(str, x['loc']))}: {x['msg']}"
                                           for x in e.errors())) from None
        return self


class OpenAIBackend(_Frozen):
    """A real OpenAI-compatible upstream (vLLM, hosted APIs): POST {base_url}/chat/completions."""

    kind: Literal["openai"] = "openai"
    base_url: str
    api_key_env: str = "OPENAI_API_KEY"
    upstream_models: dict[str, str] = Field(default_factory=dict, description="turnout model -> upstream model name")
    timeout_s: float = Field(default=60.0, gt=0, description="per HTTP attempt (connect, read, write)")
    retry: RetryPolicy = RetryPolicy()


class DeploymentOptions(_Frozen):
    num_replicas: int = Field(default=1, ge=1)
    num_cpus: float = Field(default=0.1, ge=0)
    max_ongoing_requests: int = Field(default=32, ge=1)


class GatewayOptions(_Frozen):
    num_replicas: int = Field(default=1, ge=1)
    num_cpus: float = Field(default=0.2, ge=0)
    max_ongoing_requests: int = Field(default=128, ge=1)
    request_timeout_s: float = Field(default=60.0, gt=0, description=(
        "one call to one model deployment; each call is also cut at the remaining failover.deadline_s, so "
        "this bites only when set below it (e.g. to leave time to fail over from a hung model)"))
    log_flush_rows: int = Field(default=500, ge=1)
    log_flush_s: float = Field(default=5.0, gt=0)
    seed: int = 0
    reload_poll_s: float | None = Field(default=2.0, gt=0, description="bundle watcher period; null = off")
    graceful_shutdown_timeout_s: float = Field(default=20.0, gt=0)
    decide_in_thread: bool = Field(default=False, description=(
        "run Router.decide on one decide thread when other requests are in flight: lower p99 under "
        "load, but up to ~14% less throughput on 2 cores (GIL contention); benchmarks/serve_overhead.py"))


class ReplicaRouting(_Frozen):
    """Replica choice inside each model deployment: power-of-two-choices, or the learned TTFT scorer
    (``replicas.onnx`` from ``turnout train replicas``; falls back to pow2 whenever stats are missing)."""

    kind: Literal["pow2", "learned"] = "pow2"
    model: str | None = Field(default=None, description=(
        "directory with replicas.onnx (kind: learned); default: the serving bundle, where retrain refits it "
        "(read at deploy time: a hot reload does not swap it)"))
    stats_period_s: float = Field(default=1.0, gt=0)


class BuildIfMissing(_Frozen):
    """With no bundle yet, ``turnout serve`` simulates this much traffic and trains one first."""

    world: str = "world.yaml"
    requests: int = Field(default=4000, ge=200)


class ServeConfig(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    bundle: str
    log_dir: str
    build_if_missing: BuildIfMissing | None = BuildIfMissing()
    backend: SimulatedBackend | OpenAIBackend = Field(default_factory=SimulatedBackend, discriminator="kind")
    models: DeploymentOptions = DeploymentOptions()
    model_overrides: dict[str, DeploymentOptions] = Field(default_factory=dict)
    gateway: GatewayOptions = GatewayOptions()
    replica_routing: ReplicaRouting = ReplicaRouting()
    preference: Preference | None = None
    epsilon: float | None = Field(default=None, ge=0, le=1)
    experiment: ExperimentConfig | None = Field(default=None, description="A/B arms; absent = one arm 'default'")
    tenants: dict[str, TenantConfig] = Field(default_factory=dict, description="no keys anywhere = auth off")
    default_rate_limit: RateLimit | None = Field(default=None, description="for tenants without their own")
    failover: FailoverConfig = FailoverConfig()
    overload: OverloadConfig = Field(default_factory=OverloadConfig,
                                     description="TTFT-SLO overload control at the gateway (serving.overload)")
    metrics_port: int = Field(default=9101, ge=1, le=65535, description="Ray's Prometheus export port (per node)")
    cache_store: CacheStoreSettings = Field(default_factory=CacheStoreSettings,
                                            description="where cached answers live: memory (default) or a shared redis")
    base_dir: str = Field(default=".", description="set by load_serve_config; relative paths resolve here")

    def path(self, value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else (Path(self.base_dir) / p).resolve()

    def deployment(self, model: str) -> DeploymentOptions:
        return self.model_overrides.get(model, self.models)

    def arms(self) -> tuple[Arm, ...]:
        """The experiment's arms, or one arm ``default`` serving ``bundle`` (contract 4)."""
        return self.experiment.arms if self.experiment else (Arm(name="default", bundle=self.bundle, weight=1.0),)


def load_serve_config(path: str | Path) -> ServeConfig:
    path = Path(path)
    data = load_yaml(path)
    data.setdefault("base_dir", str(path.resolve().parent))
    return validate_config(data, ServeConfig, source=str(path))
