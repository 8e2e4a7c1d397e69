"""onnxruntime sessions tuned for single-request latency on a shared 2-core box."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnxruntime as ort

from router.errors import ArtifactError


def make_session(model: str | Path | bytes, threads: int = 1) -> ort.InferenceSession:
    """One intra-op thread, no spinning: batch-1 calls are fastest and leave the other core free
    (../shared/notes/dependencies.md §3)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model
    try:
        return ort.InferenceSession(source, sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own Fail/InvalidGraph/... types
        where = model if not isinstance(model, bytes) else f"<{len(model)} bytes>"
        raise ArtifactError(f"onnxruntime cannot load {where}: {e}") from e


def bound_runner(session: ort.InferenceSession, binding: Any) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """``(run, args)`` such that ``run(*args)`` runs ``binding`` on ``session``: through the session's pybind
    object with one reused ``RunOptions`` when onnxruntime exposes it (``InferenceSession._sess``; ~2 us
    less per call than the Python wrapper, which re-checks WebGPU graph capture every call), else, or if
    a trial run of that private call fails (its signature changed), through ``run_with_iobinding``."""
    sess, raw = getattr(session, "_sess", None), getattr(binding, "_iobinding", None)
    if sess is not None and raw is not None and hasattr(sess, "run_with_iobinding"):
        run, args = sess.run_with_iobinding, (raw, ort.RunOptions())
        try:  # one trial run: a private call whose signature changed must not fail every decision
            run(*args)
            return run, args
        except Exception:
            pass
    return session.run_with_iobinding, (binding,)
