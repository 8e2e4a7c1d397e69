"""onnxruntime sessions tuned for single-request latency on a shared 2-core box."""

from __future__ import annotations

from pathlib import Path

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
