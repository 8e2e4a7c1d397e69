"""``turnout replay``: send chat requests to a running gateway over HTTP and summarise what it did.

Concurrency is bounded; the progress bar shows completed requests. The summary is computed only
from the responses' ``turnout`` blocks and client-side latencies, so it works against any
deployment, local or remote.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


@dataclass
class ReplayResult:
    statuses: Counter[int] = field(default_factory=Counter)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        d = self.decisions
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return {
            "requests": sum(self.statuses.values()),
            "ok": self.statuses.get(200, 0),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "per_model": dict(Counter(x["model"] for x in d if not x["cache_hit"])),
            "per_category": dict(Counter(x["category"] for x in d)),
            "cache_hits": sum(x["cache_hit"] for x in d),
            "fallbacks": sum(x["fallback"] for x in d),
            "latency_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99))},
            "cost_usd": float(sum(x.get("cost_usd") or 0.0 for x in d)),
            "throughput_rps": len(self.latencies_ms) / self.wall_s if self.wall_s else 0.0,
            "simulated": any(x.get("simulated") for x in d),
            # what went wrong, most frequent first (status 0 = no HTTP response: connection refused, timeout)
            "errors": [{"count": n, "error": e} for e, n in Counter(self.errors).most_common(3)],
        }


def load_requests(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """JSONL of chat bodies (``{"messages": ...}``) or prompts (``{"text": ...}``)."""
    bodies = []
    with Path(path).open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "messages" in row:
                bodies.append(row)
            elif "text" in row:
                bodies.append({"messages": [{"role": "user", "content": row["text"]}]})
            else:
                raise ValueError(f"{path}:{line_no}: expected a 'messages' or 'text' key")
            if limit and len(bodies) >= limit:
                break
    return bodies


async def replay(url: str, bodies: Sequence[dict[str, Any]], *, concurrency: int = 8, timeout_s: float = 60.0,
                 progress: bool = True, api_key: str | None = None) -> ReplayResult:
    """``api_key`` (default: env ``TURNOUT_API_KEY``) is sent as a Bearer token when set."""
    import os

    result = ReplayResult()
    api_key = api_key if api_key is not None else os.environ.get("TURNOUT_API_KEY", "")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    bar = Progress(TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), disable=not progress)
    task = bar.add_task("replay", total=len(bodies))

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/chat/completions", json=body)
                result.statuses[r.status_code] += 1
                if r.status_code == 200:
                    result.latencies_ms.append((time.perf_counter() - t0) * 1000.0)
                    result.decisions.append(r.json()["turnout"])
                else:
                    result.errors.append(f"HTTP {r.status_code}: {r.text[:300]}")
            except httpx.HTTPError as e:
                result.statuses[0] += 1
                result.errors.append(f"{type(e).__name__}: {e}")
            bar.advance(task)

    t_start = time.perf_counter()
    with bar:
        async with httpx.AsyncClient(base_url=url, timeout=timeout_s, headers=headers) as client:
            await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    result.wall_s = time.perf_counter() - t_start
    return result


def print_summary(summary: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    t = Table(title="turnout replay summary" + (" (SIMULATED models)" if summary["simulated"] else ""))
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("requests (ok)", f"{summary['requests']} ({summary['ok']})")
    t.add_row("statuses", ", ".join(f"{k}: {v}" for k, v in summary["statuses"].items()))
    for m, n in sorted(summary["per_model"].items()):
        t.add_row(f"model {m}", str(n))
    for c, n in sorted(summary["per_category"].items()):
        t.add_row(f"category {c}", str(n))
    t.add_row("cache hits", str(summary["cache_hits"]))
    t.add_row("fallbacks (OOD or low confidence)", str(summary["fallbacks"]))
    t.add_row("latency p50 / p99 (ms)", f"{summary['latency_ms']['p50']:.1f} / {summary['latency_ms']['p99']:.1f}")
    t.add_row("throughput (req/s)", f"{summary['throughput_rps']:.1f}")
    t.add_row("cost (USD)", f"{summary['cost_usd']:.4f}")
    console.print(t)
    for err in summary.get("errors", []):
        # the text is the server's: a '[/x]' in it must print as is, not raise rich's MarkupError
        console.print(f"[red]{err['count']} x[/red] {escape(err['error'])}", markup=True, highlight=False)
