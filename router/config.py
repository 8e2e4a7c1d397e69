"""Router configuration: taxonomy, model catalogue, routes, preference, exploration, cache.

One pydantic model per concept, frozen and strict (unknown keys are errors). ``load_config`` is the
only place YAML is read; it turns pydantic's errors into one ``loc -> msg`` line per problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from router.errors import ConfigError
from router.types import CacheTier


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Frozen):
    """One model the router may send traffic to. Prices are USD per 1k tokens."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    price_in_per_1k: float = Field(ge=0)
    price_out_per_1k: float = Field(ge=0)

    def cost_usd(self, input_tokens: int, output_tokens: float) -> float:
        """Price of one request at the catalogue rates."""
        return (self.price_in_per_1k * input_tokens + self.price_out_per_1k * output_tokens) / 1000.0


class CategoryRoute(_Frozen):
    """What a category may use: allowed models (empty = all) and its cache tier."""

    models: tuple[str, ...] = ()
    cache_tier: CacheTier = "skip"


class Preference(_Frozen):
    """Weights of the run-time utility ``quality - cost * cost_rel - latency * latency_rel``."""

    quality: float = Field(default=1.0, ge=0)
    cost: float = Field(default=0.3, ge=0)
    latency: float = Field(default=0.0, ge=0)


class Exploration(_Frozen):
    """How actions are drawn around the best one; the propensity of every action is logged exactly.

    ``epsilon_greedy``: ``epsilon/K`` on every candidate, the rest on the best. ``softmax``:
    probability proportional to ``exp(utility / temperature)``.
    """

    kind: Literal["epsilon_greedy", "softmax"] = "epsilon_greedy"
    epsilon: float = Field(default=0.1, ge=0, le=1)
    temperature: float = Field(default=0.05, gt=0)


class CacheSettings(_Frozen):
    """Cache knobs used until a learned cache policy (``turnout train cache``) replaces them.

    ``load_relax_start`` / ``max_threshold_relax`` / ``max_cutoff_relax`` bound the load-adaptive
    relaxation (router.cache.LoadAdaptation); ``target_false_hit_rate`` is what ``train cache``
    fits thresholds for; prompts longer than ``max_prompt_chars`` skip the cache.
    """

    similarity_threshold: float = Field(default=0.9, gt=0, le=1)
    ttl_s: float = Field(default=3600.0, gt=0)
    max_entries_per_partition: int = Field(default=10_000, gt=0)
    eviction: Literal["fifo", "lru"] = "lru"
    max_prompt_chars: int = Field(default=4000, gt=0)
    load_relax_start: float = Field(default=0.8, ge=0)
    max_threshold_relax: float = Field(default=0.04, ge=0, le=0.5)
    max_cutoff_relax: float = Field(default=0.15, ge=0, le=0.5)
    target_false_hit_rate: float = Field(default=0.05, gt=0, lt=1)
    min_ttl_s: float = Field(default=60.0, gt=0)
    max_ttl_s: float = Field(default=7 * 86400.0, gt=0)


class RouterConfig(_Frozen):
    """Everything ``Router.route`` needs besides the ONNX files."""

    taxonomy: tuple[str, ...] = Field(min_length=1)
    models: tuple[ModelSpec, ...] = Field(min_length=1)
    fallback_model: str
    min_confidence: float = Field(default=0.4, ge=0, le=1)
    routes: dict[str, CategoryRoute] = Field(default_factory=dict)
    preference: Preference = Preference()
    exploration: Exploration = Exploration()
    cache: CacheSettings = CacheSettings()
    max_prompt_chars: int = Field(default=32_000, gt=0)

    @model_validator(mode="after")
    def _check_names(self) -> RouterConfig:
        """Cross-references between sections; every problem is reported, not just the first."""
        names, taxonomy = [m.name for m in self.models], list(self.taxonomy)
        problems = _duplicates("models", names) + _duplicates("taxonomy", taxonomy)
        problems += _unknown("fallback_model", [self.fallback_model], names, "model")
        problems += _unknown("routes", list(self.routes), taxonomy, "category")
        for category, route in self.routes.items():
            problems += _unknown(f"routes.{category}.models", list(route.models), names, "model")
        if problems:
            raise CrossReferenceErrors(problems)
        return self

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)

    def model(self, name: str) -> ModelSpec:
        return next(m for m in self.models if m.name == name)

    def allowed_models(self, category: str) -> tuple[str, ...]:
        route = self.routes.get(category)
        return route.models if route and route.models else self.model_names

    def cache_tier(self, category: str) -> CacheTier:
        route = self.routes.get(category)
        return route.cache_tier if route else "skip"


class CrossReferenceErrors(ValueError):
    """Several ``"loc: msg"`` problems found by one validator; ``validate_config`` prints one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


_PLURAL = {"model": "models", "category": "categories"}


def _duplicates(field: str, values: list[str]) -> list[str]:
    dupes = sorted({v for v in values if values.count(v) > 1})
    return [f"{field}: duplicate names {dupes}"] if dupes else []


def _unknown(field: str, values: list[str], known: list[str], what: str) -> list[str]:
    return [f"{field}: unknown {what} {v!r}; known {_PLURAL[what]}: {', '.join(known)}" for v in values if v not in known]


M = TypeVar("M", bound=BaseModel)


def load_yaml(path: str | Path) -> dict[str, object]:
    """Read a YAML mapping, raising ``ConfigError`` that names the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {path}") from e
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def validate_config(data: object, model: type[M], source: str = "config") -> M:
    """Validate a mapping against ``model``; one ``loc -> msg`` line per problem."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            cause = (err.get("ctx") or {}).get("error")
            if isinstance(cause, CrossReferenceErrors):
                lines += [f"  {p.replace(': ', ' -> ', 1)}" for p in cause.problems]
            else:
                lines.append(f"  {'.'.join(str(p) for p in err['loc']) or '<root>'} -> {err['msg']}")
        raise ConfigError(f"{source}: invalid {model.__name__}:\n" + "\n".join(lines)) from e


def load_config(path: str | Path, model: type[M]) -> M:
    """Load and validate one YAML config file."""
    return validate_config(load_yaml(path), model, source=str(path))
