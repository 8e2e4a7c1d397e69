"""Logged traffic: one record per request, the contract between serving and training.

Written as Parquet shards (``part-*.parquet``) by the simulator and the Serve gateway; read by every
trainer and by off-policy evaluation. ``FIELDS`` documents each column; ``validate_table`` checks a
table and names the first bad field and row.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from router.errors import LogSchemaError
from router.types import CACHE_TIERS

SCHEMA_VERSION = "2"


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    type: pa.DataType
    nullable: bool
    doc: str


_F32_LIST = pa.list_(pa.float32())
FIELDS: tuple[Field, ...] = (
    Field("request_id", pa.string(), False, "unique id; feedback joins on it"),
    Field("timestamp_s", pa.float64(), False, "arrival time, seconds since the epoch (simulated time in simulations)"),
    Field("tenant", pa.string(), False, "tenant the API key maps to"),
    Field("arm", pa.string(), False, "A/B arm that served the request ('default' without an experiment)"),
    Field("bundle_version", pa.string(), False, "manifest bundle_version of the deciding bundle"),
    Field("feature_version", pa.string(), False, "router.features.FEATURE_VERSION used for `features`"),
    Field("prompt", pa.string(), False, "last user turn (what the classifier read)"),
    Field("n_turns", pa.int32(), False, "user turns in the conversation"),
    Field("input_tokens", pa.int32(), False, "estimated prompt tokens of the whole conversation"),
    Field("features", _F32_LIST, False, "router.features.featurize output (policy context)"),
    Field("category", pa.string(), False, "predicted category (argmax of category_probs)"),
    Field("category_probs", _F32_LIST, False, "classifier probabilities in manifest taxonomy order"),
    Field("confidence", pa.float32(), False, "max category probability"),
    Field("fallback", pa.bool_(), False, "true when low confidence/OOD forced the fallback model"),
    Field("cache_tier", pa.string(), False, "skip | exact | semantic"),
    Field("cache_hit", pa.bool_(), False, "true when the answer came from the cache (no model ran)"),
    Field("model", pa.string(), False, "model that answered (or would have, on a cache hit)"),
    Field("candidates", pa.list_(pa.string()), False, "models the policy chose among"),
    Field("action_probs", _F32_LIST, False, "probability of each candidate under the logging policy"),
    Field("propensity", pa.float32(), False, "probability of `model`; 1.0 for forced fallbacks"),
    Field("policy", pa.string(), False, "decision rule, e.g. epsilon_greedy, uniform, fallback"),
    Field("replica", pa.string(), True, "replica id that ran the request"),
    Field("replica_stats", pa.string(), True, "JSON snapshot of the replica's routing stats at dispatch"),
    Field("ttft_ms", pa.float32(), True, "time to first token"),
    Field("latency_ms", pa.float32(), True, "end-to-end latency seen by the gateway"),
    Field("output_tokens", pa.int32(), True, "generated tokens"),
    Field("cost_usd", pa.float32(), True, "price of the request (0 on a cache hit)"),
    Field("error", pa.string(), True, "error class/message when the request failed"),
    Field("quality", pa.float32(), True, "reward in [0, 1] from feedback or the simulator; null until known"),
    Field("label_category", pa.string(), True, "true category when known (simulator, labelled data)"),
    Field("assignment_unit", pa.string(), True,
          "sha256 prefix of the key the A/B arm was assigned by (user id, else tenant): the unit the A/B "
          "report resamples; null in logs written before schema 2 and in simulations"),
)
SCHEMA = pa.schema([pa.field(f.name, f.type, nullable=f.nullable) for f in FIELDS], metadata={"turnout_log_schema": SCHEMA_VERSION})
FIELD_NAMES = tuple(f.name for f in FIELDS)
#: nullable fields added after schema 1: a shard written before them reads as all-null in that column
ADDED_FIELDS: dict[str, str] = {"assignment_unit": "2"}

#: ``policy`` values whose model was not drawn from the logged ``action_probs`` (a client pin, a cache hit,
#: a failover after an upstream error, an overload move): policy training and off-policy evaluation skip them.
NOT_DRAWN_POLICIES = ("pinned", "cache", "failover", "overload")


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One row of ``SCHEMA``; field meanings are in ``FIELDS``."""

    request_id: str
    timestamp_s: float
    tenant: str
    arm: str
    bundle_version: str
    feature_version: str
    prompt: str
    n_turns: int
    input_tokens: int
    features: Sequence[float]
    category: str
    category_probs: Sequence[float]
    confidence: float
    fallback: bool
    cache_tier: str
    cache_hit: bool
    model: str
    candidates: Sequence[str]
    action_probs: Sequence[float]
    propensity: float
    policy: str
    replica: str | None = None
    replica_stats: str | None = None
    ttft_ms: float | None = None
    latency_ms: float | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    error: str | None = None
    quality: float | None = None
    label_category: str | None = None
    assignment_unit: str | None = None

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        for key in ("features", "category_probs", "action_probs"):
            row[key] = [float(v) for v in row[key]]
        row["candidates"] = list(row["candidates"])
        return row


def records_to_table(records: Iterable[LogRecord]) -> pa.Table:
    rows = [r.to_row() for r in records]
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def validate_table(table: pa.Table, source: str = "logs") -> pa.Table:
    """Check columns, types and per-row invariants; return the table cast to ``SCHEMA`` order.

    Raises ``LogSchemaError`` naming the field and the first bad row.
    """
    table = with_added_fields(table)
    missing = [n for n in FIELD_NAMES if n not in table.column_names]
    if missing:
        raise LogSchemaError(f"{source}: missing field(s) {missing}; expected the fields of router.log_schema.FIELDS")
    table = table.select(list(FIELD_NAMES))
    for f in FIELDS:
        if not f.nullable and table.column(f.name).null_count:
            row = table.column(f.name).to_pylist().index(None)
            raise LogSchemaError(f"{source}: row {row}: field '{f.name}' is null; it is required")
    try:
        table = table.cast(SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        bad = next((f for f in FIELDS if not _castable(table.column(f.name), f.type)), None)
        where = f"field '{bad.name}' has type {table.schema.field(bad.name).type}, expected {bad.type}" if bad else str(e)
        raise LogSchemaError(f"{source}: {where}") from e
    _check_rows(table, source)
    return table


def with_added_fields(table: pa.Table) -> pa.Table:
    """A shard written before a field in ``ADDED_FIELDS`` existed, with that column as nulls."""
    for name in ADDED_FIELDS:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, SCHEMA.field(name).type))
    return table


def _castable(col: pa.ChunkedArray, to: pa.DataType) -> bool:
    try:
        col.cast(to)
        return True
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False


def _check_rows(table: pa.Table, source: str) -> None:
    cols = {n: table.column(n).to_pylist() for n in ("propensity", "model", "candidates", "action_probs", "cache_tier",
                                                     "category", "category_probs", "quality", "latency_ms", "cost_usd")}
    for i in range(table.num_rows):
        problem = _row_problem({k: v[i] for k, v in cols.items()})
        if problem:
            field_name, message = problem
            raise LogSchemaError(f"{source}: row {i}: field '{field_name}' {message}")


def _row_problem(r: dict[str, Any]) -> tuple[str, str] | None:
    if not (0.0 < r["propensity"] <= 1.0 + 1e-6):
        return "propensity", f"= {r['propensity']!r} must be in (0, 1]"
    if r["model"] not in r["candidates"]:
        return "model", f"= {r['model']!r} is not among candidates {r['candidates']}"
    if len(r["action_probs"]) != len(r["candidates"]):
        return "action_probs", f"has {len(r['action_probs'])} entries for {len(r['candidates'])} candidates"
    if abs(sum(r["action_probs"]) - 1.0) > 1e-3:
        return "action_probs", f"sums to {sum(r['action_probs']):.4f}, expected 1"
    p_model = r["action_probs"][r["candidates"].index(r["model"])]
    if abs(p_model - r["propensity"]) > 1e-4:
        return "propensity", f"= {r['propensity']:.6f} but action_probs gives {p_model:.6f} for {r['model']!r}"
    if r["cache_tier"] not in CACHE_TIERS:
        return "cache_tier", f"= {r['cache_tier']!r}; allowed: {', '.join(CACHE_TIERS)}"
    if r["quality"] is not None and not (0.0 <= r["quality"] <= 1.0):
        return "quality", f"= {r['quality']!r} must be in [0, 1]"
    for name in ("latency_ms", "cost_usd"):
        v = r[name]
        if v is not None and (math.isnan(v) or v < 0):
            return name, f"= {v!r} must be >= 0"
    return None


def write_shard(records: Sequence[LogRecord] | pa.Table, out_dir: str | Path, prefix: str = "part") -> Path:
    """Write one Parquet shard atomically (temp file + rename) and return its path."""
    table = records if isinstance(records, pa.Table) else records_to_table(records)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{prefix}-{uuid.uuid4().hex[:12]}.parquet"
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(path)
    return path


def read_logs(path: str | Path, *, validate: bool = True, feedback: bool = True) -> pa.Table:
    """Read every ``*.parquet`` decision shard under ``path`` (a file or directory) into one table.

    ``feedback``: for a directory, the ``feedback-*.parquet`` shards under it (``POST /v1/feedback``) are
    joined (``join_feedback``: the latest quality per request wins). On real traffic that is where quality
    comes from, so every reader of logs -- training, OPE, A/B reports, retraining -- sees it alike.
    """
    path = Path(path)
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*.parquet") if not _is_feedback_shard(f))
    if not files:
        raise LogSchemaError(f"no Parquet shards (*.parquet) found under {path}")
    tables = [validate_table(t, source=str(f)) if validate else with_added_fields(t) for f, t in _read_shards(files)]
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    if feedback and path.is_dir():
        table = join_feedback(table, read_feedback(path))
    return table


def _read_shards(files: list[Path]) -> list[tuple[Path, pa.Table]]:
    """Each file as a table; an unreadable one is a ``LogSchemaError`` naming the file."""
    out = []
    for f in files:
        try:
            out.append((f, pq.read_table(f)))
        except (pa.ArrowInvalid, OSError) as e:
            raise LogSchemaError(f"{f}: not a readable Parquet file: {e}") from e
    return out


def dumps_stats(stats: dict[str, Any] | None) -> str | None:
    return None if stats is None else json.dumps(stats, sort_keys=True, default=float)


def schema_markdown() -> str:
    """The schema as a markdown table (used by docs and ``turnout data schema``)."""
    lines = ["| field | type | nullable | meaning |", "|---|---|---|---|"]
    lines += [f"| `{f.name}` | {f.type} | {'yes' if f.nullable else 'no'} | {f.doc} |" for f in FIELDS]
    return "\n".join(lines)


__all__ = ["FIELDS", "SCHEMA", "LogRecord", "read_logs", "records_to_table", "validate_table", "write_shard",
           "schema_markdown", "dumps_stats"]


# --- Late feedback (contract 1) ------------------------------------------------------------------
# Quality often arrives after the request was logged (a thumbs-up, a grader). It is written as its own
# ``feedback-*.parquet`` shards next to the decision logs; ``read_logs(d)`` reads the decision shards and
# joins them (``join_feedback(..., read_feedback(d))``; ``feedback=False`` keeps the logged quality).

FEEDBACK_PREFIX = "feedback"
FEEDBACK_SCHEMA = pa.schema([
    pa.field("request_id", pa.string(), nullable=False),
    pa.field("quality", pa.float64(), nullable=False),
    pa.field("timestamp_s", pa.float64(), nullable=False),
])


def _is_feedback_shard(path: Path) -> bool:
    return path.name.startswith(f"{FEEDBACK_PREFIX}-")


def _feedback_problem(row: Any) -> tuple[str, str] | None:
    if not isinstance(row, dict):
        return "row", f"is {type(row).__name__}, expected a dict with request_id, quality, timestamp_s"
    extra = sorted(set(row) - set(FEEDBACK_SCHEMA.names))
    if extra:
        return extra[0], f"is not a feedback field; allowed: {', '.join(FEEDBACK_SCHEMA.names)}"
    rid = row.get("request_id")
    if not isinstance(rid, str) or not rid:
        return "request_id", f"= {rid!r} must be a non-empty string"
    for name, lo, hi in (("quality", 0.0, 1.0), ("timestamp_s", -math.inf, math.inf)):
        v = row.get(name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(float(v)) or math.isinf(float(v)):
            return name, f"= {v!r} must be a finite number"
        if not (lo <= float(v) <= hi):
            return name, f"= {v!r} must be in [{lo}, {hi}]"
    return None


def validate_feedback(table: pa.Table, source: str = "feedback") -> pa.Table:
    """Check a feedback table against ``FEEDBACK_SCHEMA``; return it cast to that schema."""
    missing = [n for n in FEEDBACK_SCHEMA.names if n not in table.column_names]
    if missing:
        raise LogSchemaError(f"{source}: missing feedback field(s) {missing}; expected {FEEDBACK_SCHEMA.names}")
    table = table.select(FEEDBACK_SCHEMA.names)
    try:
        table = table.cast(FEEDBACK_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise LogSchemaError(f"{source}: feedback columns do not cast to {FEEDBACK_SCHEMA}: {e}") from e
    for i, row in enumerate(table.to_pylist()):
        problem = _feedback_problem(row)
        if problem:
            raise LogSchemaError(f"{source}: row {i}: field '{problem[0]}' {problem[1]}")
    return table


def write_feedback_shard(log_dir: str | Path, rows: list[dict], prefix: str = FEEDBACK_PREFIX) -> Path:
    """Validate feedback rows and write them as one ``{prefix}-*.parquet`` shard atomically."""
    if not rows:
        raise LogSchemaError("feedback: no rows to write")
    for i, row in enumerate(rows):
        problem = _feedback_problem(row)
        if problem:
            raise LogSchemaError(f"feedback: row {i}: field '{problem[0]}' {problem[1]}")
    table = pa.Table.from_pylist(
        [{"request_id": r["request_id"], "quality": float(r["quality"]), "timestamp_s": float(r["timestamp_s"])}
         for r in rows], schema=FEEDBACK_SCHEMA)
    return write_shard(table, log_dir, prefix=prefix)


def read_feedback(log_dir: str | Path) -> pa.Table:
    """Every ``feedback-*.parquet`` shard under ``log_dir``; an empty ``FEEDBACK_SCHEMA`` table when none."""
    path = Path(log_dir)
    files = sorted(f for f in path.rglob(f"{FEEDBACK_PREFIX}-*.parquet")) if path.is_dir() else []
    tables = [validate_feedback(t, source=str(f)) for f, t in _read_shards(files)]
    if not tables:
        return FEEDBACK_SCHEMA.empty_table()
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def join_feedback(logs: pa.Table, feedback: pa.Table) -> pa.Table:
    """Override ``quality`` with the latest feedback per request_id (max ``timestamp_s``).

    Rows without feedback keep their logged quality; feedback for unknown request ids is ignored.
    Exact timestamp ties keep the row read last (shards in file-name order, not write order).
    Returns the logs with the same schema and row order.
    """
    if feedback.num_rows == 0 or logs.num_rows == 0:
        return logs
    import pyarrow.compute as pc

    fb = feedback.select(FEEDBACK_SCHEMA.names).append_column("_order", pa.array(range(feedback.num_rows), pa.int64()))
    fb = fb.sort_by([("timestamp_s", "ascending"), ("_order", "ascending")])
    latest = fb.group_by("request_id", use_threads=False).aggregate([("quality", "last")])
    pos = pc.index_in(logs.column("request_id"), value_set=latest.column("request_id"))
    idx = logs.schema.get_field_index("quality")
    field = logs.schema.field(idx)
    override = pc.take(latest.column("quality_last"), pos).cast(field.type)
    quality = pc.if_else(pc.is_valid(pos), override, logs.column("quality"))
    return logs.set_column(idx, field, quality)


__all__ += ["FEEDBACK_SCHEMA", "join_feedback", "read_feedback", "validate_feedback", "write_feedback_shard"]
