"""The simulated world: categories, models with per-category quality, price and speed, arrivals.

Used by ``turnout simulate`` (logged traffic for training), by the simulated Serve backend (answers,
latency and quality at run time) and by tests. Everything is seeded. Quality of model m on a prompt
of category c and latent difficulty d (visible in the prompt text, see ``training.prompts``)::

    mean = clip(skill[m][c] - difficulty_slope[m] * (d - 0.5), 0, 1)
    observed = clip(mean + Normal(0, quality_noise), 0, 1)

so strong models lose less on hard prompts and a router can learn from text where the cheap model is
good enough.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import Field, model_validator

from router.config import RouterConfig, _Frozen, load_config, load_yaml, validate_config
from router.errors import ConfigError
from router.request import estimate_tokens
from training.prompts import GeneratedPrompt, generate_prompt


class CategoryWorld(_Frozen):
    weight: float = Field(gt=0)
    output_tokens_median: float = Field(gt=0)
    repeat_rate: float = Field(default=0.0, ge=0, lt=1)


class ModelWorld(_Frozen):
    skill: dict[str, float]
    difficulty_slope: float = Field(default=0.4, ge=0)
    ttft_ms: float = Field(gt=0)
    tokens_per_s: float = Field(gt=0)
    verbosity: float = Field(default=1.0, gt=0)


class WorldConfig(_Frozen):
    """``configs/world.yaml``. ``router_config`` is resolved relative to the world file."""

    seed: int = 0
    router_config: str
    arrival_rate_per_s: float = Field(default=5.0, gt=0)
    quality_noise: float = Field(default=0.1, ge=0)
    categories: dict[str, CategoryWorld]
    models: dict[str, ModelWorld]


@dataclass(frozen=True, slots=True)
class World:
    config: WorldConfig
    router: RouterConfig

    @property
    def model_names(self) -> tuple[str, ...]:
        return self.router.model_names


def load_world(path: str | Path) -> World:
    """Load ``world.yaml`` and the router config it names; names must agree across both files."""
    path = Path(path)
    cfg = validate_config(load_yaml(path), WorldConfig, source=str(path))
    router = load_config((path.parent / cfg.router_config).resolve(), RouterConfig)
    _check_world(cfg, router, str(path))
    return World(cfg, router)


def _check_world(cfg: WorldConfig, router: RouterConfig, source: str) -> None:
    problems = []
    for c in cfg.categories:
        if c not in router.taxonomy:
            problems.append(f"categories.{c}: unknown category {c!r}; the router taxonomy is {list(router.taxonomy)}")
    for c in router.taxonomy:
        if c not in cfg.categories:
            problems.append(f"categories: taxonomy category {c!r} has no world entry")
    for m, mw in cfg.models.items():
        if m not in router.model_names:
            problems.append(f"models.{m}: unknown model {m!r}; the router catalogue is {list(router.model_names)}")
        for c in router.taxonomy:
            if c not in mw.skill:
                problems.append(f"models.{m}.skill: no skill for category {c!r}")
    for m in router.model_names:
        if m not in cfg.models:
            problems.append(f"models: catalogue model {m!r} has no world entry")
    if problems:
        raise ConfigError(f"{source}: world and router config disagree:\n" + "\n".join(f"  {p}" for p in problems))


@dataclass(frozen=True, slots=True)
class SimRequest:
    """One simulated user request with its hidden truth (category, difficulty)."""

    index: int
    timestamp_s: float
    prompt: GeneratedPrompt
    user_id: str


@dataclass(frozen=True, slots=True)
class SimOutcome:
    quality: float
    output_tokens: int
    ttft_ms: float
    latency_ms: float
    cost_usd: float


def quality_mean(world: World, model: str, category: str, difficulty: float) -> float:
    mw = world.config.models[model]
    return float(np.clip(mw.skill[category] - mw.difficulty_slope * (difficulty - 0.5), 0.0, 1.0))


def outcome(world: World, model: str, category: str, difficulty: float, input_tokens: int,
            rng: np.random.Generator) -> SimOutcome:
    """Sample what ``model`` would deliver for one request (quality, tokens, latency, cost)."""
    mw, cw = world.config.models[model], world.config.categories[category]
    q = float(np.clip(quality_mean(world, model, category, difficulty) + rng.normal(0, world.config.quality_noise), 0, 1))
    median = cw.output_tokens_median * mw.verbosity * (0.6 + 0.8 * difficulty)
    out_tokens = max(1, int(rng.lognormal(math.log(median), 0.5)))
    ttft = mw.ttft_ms * (1.0 + input_tokens / 4000.0)
    latency = ttft + 1000.0 * out_tokens / mw.tokens_per_s
    cost = world.router.model(model).cost_usd(input_tokens, out_tokens)
    return SimOutcome(q, out_tokens, ttft, latency, cost)


def generate_requests(world: World, n: int, seed: int | None = None) -> list[SimRequest]:
    """Poisson arrivals; each category repeats a recent prompt of its own with ``repeat_rate``."""
    rng = np.random.default_rng(world.config.seed if seed is None else seed)
    cats = list(world.config.categories)
    weights = np.array([world.config.categories[c].weight for c in cats])
    weights = weights / weights.sum()
    recent: dict[str, list[GeneratedPrompt]] = {c: [] for c in cats}
    out, t = [], 0.0
    for i in range(n):
        t += float(rng.exponential(1.0 / world.config.arrival_rate_per_s))
        c = cats[int(rng.choice(len(cats), p=weights))]
        pool = recent[c]
        if pool and rng.random() < world.config.categories[c].repeat_rate:
            p = pool[int(rng.integers(len(pool)))]
        else:
            p = generate_prompt(c, rng)
            pool.append(p)
            del pool[:-200]
        out.append(SimRequest(i, t, p, user_id=f"user-{int(rng.integers(1000))}"))
    return out


def input_tokens_of(prompt: str) -> int:
    return estimate_tokens(f"user: {prompt}")
