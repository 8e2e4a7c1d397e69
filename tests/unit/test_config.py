"""router.config (RouterConfig, load_config), training.world.load_world's cross-file checks and
serving.config.load_serve_config: valid files load, and every invalid input names its problem."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from router.config import RouterConfig, load_config, validate_config
from router.errors import ConfigError, RouterError


@pytest.fixture(scope="module")
def router_yaml(configs_dir: Path) -> dict[str, Any]:
    return yaml.safe_load((configs_dir / "router.yaml").read_text(encoding="utf-8"))


def _write_yaml(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _problem_lines(message: str) -> list[str]:
    """The ``  loc -> msg`` lines of a ConfigError message (the first line names the source)."""
    return [ln.strip() for ln in message.splitlines()[1:]]


# --- the shipped config -------------------------------------------------------------------------


def test_shipped_router_yaml_loads(configs_dir: Path) -> None:
    cfg = load_config(configs_dir / "router.yaml", RouterConfig)
    assert cfg.taxonomy == ("code", "math", "writing", "knowledge", "chat", "translation")
    assert cfg.model_names == ("small", "medium", "large")
    assert cfg.fallback_model == "large"
    assert cfg.allowed_models("chat") == ("small", "medium")
    assert cfg.allowed_models("code") == cfg.model_names  # no models listed = all
    assert cfg.cache_tier("knowledge") == "semantic"
    assert cfg.cache_tier("writing") == "skip"
    assert cfg.exploration.epsilon == pytest.approx(0.1)
    assert cfg.model("large").price_out_per_1k == pytest.approx(0.01)


def test_config_is_frozen(configs_dir: Path) -> None:
    cfg = load_config(configs_dir / "router.yaml", RouterConfig)
    with pytest.raises(Exception, match="frozen"):
        cfg.fallback_model = "small"  # type: ignore[misc]


def test_config_error_is_a_router_error() -> None:
    assert issubclass(ConfigError, RouterError)


# --- invalid-input table ------------------------------------------------------------------------


def _unknown_route_model(d: dict[str, Any]) -> None:
    d["routes"]["chat"]["models"] = ["small", "huge"]


def _unknown_route_category(d: dict[str, Any]) -> None:
    d["routes"]["poetry"] = {"cache_tier": "skip"}


def _unknown_fallback(d: dict[str, Any]) -> None:
    d["fallback_model"] = "gigantic"


def _duplicate_model(d: dict[str, Any]) -> None:
    d["models"].append(dict(d["models"][0]))


def _extra_key(d: dict[str, Any]) -> None:
    d["colour"] = "red"


def _epsilon_high(d: dict[str, Any]) -> None:
    d["exploration"]["epsilon"] = 1.5


def _epsilon_negative(d: dict[str, Any]) -> None:
    d["exploration"]["epsilon"] = -0.1


def _bad_cache_tier(d: dict[str, Any]) -> None:
    d["routes"]["chat"]["cache_tier"] = "fuzzy"


def _duplicate_category(d: dict[str, Any]) -> None:
    d["taxonomy"].append("math")


def _empty_taxonomy(d: dict[str, Any]) -> None:
    d["taxonomy"] = []


INVALID = [
    # (id, mutation, loc, message regex)
    ("unknown-route-model", _unknown_route_model, "routes.chat.models",
     r"unknown model 'huge'; known models: small, medium, large$"),
    ("unknown-route-category", _unknown_route_category, "routes",
     r"unknown category 'poetry'; known categories: code, math, writing, knowledge, chat, translation$"),
    ("unknown-fallback", _unknown_fallback, "fallback_model",
     r"unknown model 'gigantic'; known models: small, medium, large$"),
    ("duplicate-model", _duplicate_model, "models", r"duplicate names \['small'\]$"),
    ("duplicate-category", _duplicate_category, "taxonomy", r"duplicate names \['math'\]$"),
    ("extra-key", _extra_key, "colour", r"Extra inputs are not permitted"),
    ("epsilon-above-1", _epsilon_high, "exploration.epsilon", r"less than or equal to 1"),
    ("epsilon-below-0", _epsilon_negative, "exploration.epsilon", r"greater than or equal to 0"),
    ("bad-cache-tier", _bad_cache_tier, "routes.chat.cache_tier", r"'skip', 'exact' or 'semantic'"),
    ("empty-taxonomy", _empty_taxonomy, "taxonomy", r"at least 1 item"),
]


@pytest.mark.parametrize(("mutate", "loc", "pattern"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_router_config(tmp_path: Path, router_yaml: dict[str, Any], mutate, loc: str, pattern: str) -> None:  # type: ignore[no-untyped-def]
    data = copy.deepcopy(router_yaml)
    mutate(data)
    path = _write_yaml(tmp_path / "router.yaml", data)
    with pytest.raises(ConfigError) as exc:
        load_config(path, RouterConfig)
    message = str(exc.value)
    assert message.splitlines()[0] == f"{path}: invalid RouterConfig:"
    lines = _problem_lines(message)
    assert len(lines) == 1, message
    assert lines[0].startswith(f"{loc} -> "), message
    assert re.search(pattern, lines[0]), message


def test_one_line_per_field_problem(router_yaml: dict[str, Any]) -> None:
    data = copy.deepcopy(router_yaml)
    data["colour"] = "red"
    data["exploration"]["epsilon"] = 2
    data["min_confidence"] = -1
    with pytest.raises(ConfigError) as exc:
        validate_config(data, RouterConfig, source="inline")
    lines = _problem_lines(str(exc.value))
    assert sorted(ln.split(" -> ")[0] for ln in lines) == ["colour", "exploration.epsilon", "min_confidence"]


def test_every_cross_reference_problem_is_reported(router_yaml: dict[str, Any]) -> None:
    data = copy.deepcopy(router_yaml)
    data["fallback_model"] = "gigantic"
    data["routes"]["poetry"] = {}
    data["routes"]["chat"]["models"] = ["small", "huge", "tiny"]
    with pytest.raises(ConfigError) as exc:
        validate_config(data, RouterConfig, source="inline")
    known_models = "known models: small, medium, large"
    assert _problem_lines(str(exc.value)) == [
        f"fallback_model -> unknown model 'gigantic'; {known_models}",
        "routes -> unknown category 'poetry'; known categories: code, math, writing, knowledge, chat, translation",
        f"routes.chat.models -> unknown model 'huge'; {known_models}",
        f"routes.chat.models -> unknown model 'tiny'; {known_models}",
    ]


def test_field_and_cross_reference_problems_together(router_yaml: dict[str, Any]) -> None:
    data = copy.deepcopy(router_yaml)
    data["fallback_model"] = "gigantic"
    data["colour"] = "red"
    with pytest.raises(ConfigError) as exc:
        validate_config(data, RouterConfig, source="inline")
    # a field error stops pydantic before the cross-reference validator runs: the field error is reported
    lines = _problem_lines(str(exc.value))
    assert "colour -> Extra inputs are not permitted" in lines


# --- file-level problems ------------------------------------------------------------------------


def test_non_mapping_yaml(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: expected a mapping at the top level, got list")):
        load_config(path, RouterConfig)


def test_empty_yaml_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text("# nothing here\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="expected a mapping at the top level, got NoneType"):
        load_config(path, RouterConfig)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=re.escape(f"config file not found: {path}")):
        load_config(path, RouterConfig)


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text("taxonomy: [code, math\nmodels: {\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: not valid YAML")):
        load_config(path, RouterConfig)


def test_invalid_utf8_yaml(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_bytes(b"taxonomy: [\xff\xfe]\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path, RouterConfig)


# --- training.world: names must agree with the router catalogue --------------------------------


def _world_files(tmp_path: Path, configs_dir: Path, mutate) -> Path:  # type: ignore[no-untyped-def]
    (tmp_path / "router.yaml").write_text((configs_dir / "router.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    world = yaml.safe_load((configs_dir / "world.yaml").read_text(encoding="utf-8"))
    world["router_config"] = "router.yaml"
    mutate(world)
    return _write_yaml(tmp_path / "world.yaml", world)


def test_world_loads_with_a_temp_router_yaml(tmp_path: Path, configs_dir: Path) -> None:
    from training.world import load_world

    world = load_world(_world_files(tmp_path, configs_dir, lambda w: None))
    assert world.model_names == ("small", "medium", "large")


def test_world_with_a_model_outside_the_catalogue(tmp_path: Path, configs_dir: Path) -> None:
    from training.world import load_world

    def add_huge(w: dict[str, Any]) -> None:
        w["models"]["huge"] = dict(w["models"]["large"])

    path = _world_files(tmp_path, configs_dir, add_huge)
    with pytest.raises(ConfigError) as exc:
        load_world(path)
    message = str(exc.value)
    assert message.splitlines()[0] == f"{path}: world and router config disagree:"
    assert _problem_lines(message) == [
        "models.huge: unknown model 'huge'; the router catalogue is ['small', 'medium', 'large']"]


def test_world_missing_a_catalogue_model_and_a_category(tmp_path: Path, configs_dir: Path) -> None:
    from training.world import load_world

    def drop(w: dict[str, Any]) -> None:
        del w["models"]["medium"]
        del w["categories"]["chat"]

    with pytest.raises(ConfigError) as exc:
        load_world(_world_files(tmp_path, configs_dir, drop))
    assert _problem_lines(str(exc.value)) == [
        "categories: taxonomy category 'chat' has no world entry",
        "models: catalogue model 'medium' has no world entry",
    ]


def test_world_pointing_at_a_missing_router_yaml(tmp_path: Path, configs_dir: Path) -> None:
    from training.world import load_world

    path = _world_files(tmp_path, configs_dir, lambda w: w.update(router_config="elsewhere.yaml"))
    with pytest.raises(ConfigError, match=re.escape(f"config file not found: {tmp_path / 'elsewhere.yaml'}")):
        load_world(path)


# --- serving.config -----------------------------------------------------------------------------


def test_serve_yaml_loads(configs_dir: Path) -> None:
    from serving.config import load_serve_config

    cfg = load_serve_config(configs_dir / "serve.yaml")
    assert cfg.host == "127.0.0.1" and cfg.port == 8000
    assert cfg.backend.kind == "simulated"
    assert cfg.deployment("large").num_replicas == 2
    assert cfg.deployment("small").num_replicas == 1
    assert cfg.gateway.log_flush_rows == 500


def test_serve_paths_resolve_against_the_yaml_directory(configs_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.config import load_serve_config

    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    cfg = load_serve_config(configs_dir / "serve.yaml")
    assert Path(cfg.base_dir) == configs_dir.resolve()
    assert cfg.path(cfg.bundle) == (configs_dir / ".." / "runs" / "bundle").resolve()
    assert cfg.path(cfg.log_dir) == (configs_dir.parent / "runs" / "decision-logs").resolve()
    assert cfg.path(str(tmp_path / "abs")) == tmp_path / "abs"


def test_serve_relative_paths_from_a_relative_config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.config import load_serve_config

    (tmp_path / "conf").mkdir()
    _write_yaml(tmp_path / "conf" / "serve.yaml", {"bundle": "b", "log_dir": "../logs"})
    monkeypatch.chdir(tmp_path)
    cfg = load_serve_config("conf/serve.yaml")
    assert cfg.path(cfg.bundle) == (tmp_path / "conf" / "b").resolve()
    assert cfg.path(cfg.log_dir) == (tmp_path / "logs").resolve()


SERVE_INVALID = [
    ("missing-bundle", {"log_dir": "l"}, "bundle -> Field required"),
    ("bad-port", {"bundle": "b", "log_dir": "l", "port": 70000}, "port -> Input should be less than or equal to 65535"),
    ("extra-key", {"bundle": "b", "log_dir": "l", "colour": 1}, "colour -> Extra inputs are not permitted"),
    ("flush-s-zero", {"bundle": "b", "log_dir": "l", "gateway": {"log_flush_s": 0}},
     "gateway.log_flush_s -> Input should be greater than 0"),
    ("bad-backend-kind", {"bundle": "b", "log_dir": "l", "backend": {"kind": "grpc"}}, "backend -> "),
]


@pytest.mark.parametrize(("data", "line"), [c[1:] for c in SERVE_INVALID], ids=[c[0] for c in SERVE_INVALID])
def test_invalid_serve_config(tmp_path: Path, data: dict[str, Any], line: str) -> None:
    from serving.config import load_serve_config

    path = _write_yaml(tmp_path / "serve.yaml", data)
    with pytest.raises(ConfigError) as exc:
        load_serve_config(path)
    assert str(exc.value).splitlines()[0] == f"{path}: invalid ServeConfig:"
    assert any(ln.startswith(line) for ln in _problem_lines(str(exc.value))), str(exc.value)
