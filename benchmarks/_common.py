"""Shared helpers for the benchmark scripts (not a test module; pytest never collects ``benchmarks/``).

Every benchmark prints rich tables and writes one JSON file to ``benchmarks/results/<name>.json``
carrying the environment it ran in, so numbers from different machines are never compared blindly.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

# pasted into reports and CI logs: wide enough for the tables when stdout is not a terminal
console = Console() if sys.stdout.isatty() else Console(width=140)


def environment() -> dict[str, Any]:
    import onnxruntime
    import sklearn

    return {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "sklearn": sklearn.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "argv": sys.argv,
        "code": code_state(),
    }


def code_state() -> dict[str, Any]:
    """Which code produced the numbers: git HEAD, uncommitted changes to the measured packages, and
    where ``router`` was imported from (other engineers edit the tree while benchmarks run)."""
    import subprocess

    import router
    from router.features import FEATURE_VERSION

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("status", "--porcelain", "--", "router", "training", "configs")
    return {"git_head": git("rev-parse", "HEAD"),
            "dirty_measured_paths": None if status is None else [ln[3:] for ln in status.splitlines()],
            "router_imported_from": str(Path(router.__file__).resolve().parent),
            "feature_version": FEATURE_VERSION}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def result_path(name: str, suffix: str, quick: bool) -> Path:
    """``results/<name>.<suffix>``; ``--quick`` smoke runs go to ``<name>_quick.<suffix>`` (git-ignored)
    so they never overwrite the committed evidence."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    return RESULTS / f"{name}{'_quick' if quick else ''}.{suffix}"


def write_json(name: str, payload: dict[str, Any], quick: bool = False) -> Path:
    path = result_path(name, "json", quick)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False, default=_jsonable) + "\n", encoding="utf-8")
    return path


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], caption: str | None = None) -> None:
    t = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    for i, c in enumerate(columns):
        t.add_column(c, justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*[_fmt(v) for v in r])
    console.print(t)


def _fmt(v: Any) -> str:
    if isinstance(v, str):
        return v
    if v is None:
        return "-"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    v = float(v)
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    if abs(v) >= 0.001:
        return f"{v:.4f}"
    return f"{v:.2e}"
