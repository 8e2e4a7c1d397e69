"""serving.config defaults and the Ray Serve config `turnout serve --emit-serve-config` writes (no cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from router.bundle import Bundle
from router.errors import ConfigError
from serving.config import load_serve_config


def test_default_config_is_loopback_without_keys(configs_dir: Path) -> None:
    cfg = load_serve_config(configs_dir / "serve.yaml")
    assert cfg.host == "127.0.0.1" and cfg.tenants == {} and cfg.experiment is None
    assert [a.name for a in cfg.arms()] == ["default"] and cfg.arms()[0].bundle == cfg.bundle


def _write(tmp_path: Path, bundle: Bundle, **extra: object) -> Path:
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({"bundle": str(bundle.path), "log_dir": "logs", "build_if_missing": None,
                                    "backend": {"kind": "simulated", "world": str(Path("configs/world.yaml").resolve())},
                                    **extra}))
    return path


def test_experiment_and_tenants_validate(tmp_path: Path, bundle: Bundle) -> None:
    cfg = load_serve_config(_write(tmp_path, bundle, experiment={"arms": [
        {"name": "a", "bundle": str(bundle.path), "weight": 2}, {"name": "b", "bundle": "b", "weight": 1}]},
        tenants={"acme": {"api_key_envs": ["ACME_KEY"], "rate_limit": {"requests_per_s": 5}}}))
    assert [a.name for a in cfg.arms()] == ["a", "b"] and cfg.experiment.assign_by == "user"  # type: ignore[union-attr]
    assert cfg.tenants["acme"].rate_limit.burst == 10  # type: ignore[union-attr]


@pytest.mark.parametrize(("extra", "message"), [
    ({"experiment": {"arms": [{"name": "a", "bundle": "x", "weight": 0}]}}, "weight"),
    ({"experiment": {"arms": []}}, "arms"),
    ({"tenants": {"t": {"rate_limit": {"requests_per_s": 0}}}}, "requests_per_s"),
    ({"tenants": {"t": {"api_keys": [""]}}}, "empty key"),
    ({"failover": {"deadline_s": -1}}, "deadline_s"),
])
def test_bad_serving_config_names_the_field(tmp_path: Path, bundle: Bundle, extra: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_serve_config(_write(tmp_path, bundle, **extra))


def test_emitted_ray_serve_config_is_valid_and_builds(tmp_path: Path, bundle: Bundle) -> None:
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    from serving.app import build_app
    from turnout.cli import main

    cfg_path = _write(tmp_path, bundle, port=8123)
    out = tmp_path / "ray-serve.yaml"
    assert main(["serve", "--config", str(cfg_path), "--emit-serve-config", str(out)]) == 0
    data = yaml.safe_load(out.read_text())
    schema = ServeDeploySchema.model_validate(data)
    (app,) = schema.applications
    assert app.import_path == "serving.app:build_app" and data["http_options"] == {"host": "127.0.0.1", "port": 8123}
    assert isinstance(build_app(app.args), serve.Application)  # what `serve run` calls with these args


def test_missing_key_env_fails_at_build_time(tmp_path: Path, bundle: Bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.app import build_app

    monkeypatch.delenv("TURNOUT_TEST_KEY_UNSET", raising=False)
    path = _write(tmp_path, bundle, tenants={"acme": {"api_key_envs": ["TURNOUT_TEST_KEY_UNSET"]}})
    with pytest.raises(ValueError, match="TURNOUT_TEST_KEY_UNSET"):
        build_app({"config_file": str(path)})


def test_engine_model_reaches_every_model_deployment(tmp_path: Path, bundle: Bundle) -> None:
    """``backend.engine`` is what lets replicas report engine stats to the learned replica router; a bad
    engine setting fails at config load, naming the field."""
    from serving.app import build_app

    world = str(Path("configs/world.yaml").resolve())
    engine = {"time_scale": 0.5, "config": {"prefix_cache_blocks": 64}}
    path = _write(tmp_path, bundle, backend={"kind": "simulated", "world": world, "engine": engine})
    gateway = build_app({"config_file": str(path)})._bound_deployment
    models = gateway.init_args[1]
    assert models and all(m._bound_deployment.init_args[3] == engine for m in models.values())
    assert all("engine" not in m._bound_deployment.init_args[1] for m in models.values())
    bad = _write(tmp_path, bundle, backend={"kind": "simulated", "world": world, "engine": {"time_scale": 0}})
    with pytest.raises(ConfigError, match=r"backend\.engine\.time_scale: Input should be greater than 0"):
        load_serve_config(bad)


def test_learned_replica_routing_finds_its_model(tmp_path: Path, bundle: Bundle) -> None:
    """kind: learned uses replica_routing.model, else the serving bundle's replicas.onnx (where retrain
    refits it); neither -> a config error naming the missing file."""
    from serving.app import replica_router_config

    cfg = load_serve_config(_write(tmp_path, bundle, replica_routing={"kind": "learned"}))
    with pytest.raises(ValueError, match=r"has no replicas\.onnx; set replica_routing\.model"):
        replica_router_config(cfg)
    model = tmp_path / "replica-model"
    model.mkdir()
    (model / "replicas.onnx").write_bytes(b"x")
    cfg = load_serve_config(_write(tmp_path, bundle, replica_routing={"kind": "learned", "model": str(model)}))
    rc = replica_router_config(cfg)
    assert rc.request_router_kwargs == {"scorer_path": str(model)}
    assert replica_router_config(load_serve_config(_write(tmp_path, bundle))).request_router_kwargs == {}
