"""training.replica_model / replica_eval: the TTFT predictor, its ONNX export, and ``eval replicas``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from router.errors import NotFittedError
from router.replica import REPLICA_FEATURE_NAMES, ReplicaScorer
from training.formats import TraceRow, write_jsonl
from training.replica_eval import (SYNTHETIC, collect_telemetry, eval_replicas_cli, overlap, synthetic_trace,
                                   training_traces)
from training.replica_model import ReplicaTTFTTrainer, train_replica_model, train_replicas_cli
from training.replica_sim import Telemetry, Trace

WAITING = REPLICA_FEATURE_NAMES.index("waiting_tokens")


@pytest.fixture(scope="module")
def telemetry() -> Telemetry:
    traces = {f"synthetic_{k}": synthetic_trace(k, 500, seed=7) for k in ("poisson", "conversation")}
    return collect_telemetry(traces, loads=(0.6, 1.1), replica_counts=(2, 3), max_requests=500, seed=0)


def test_synthetic_traces() -> None:
    for kind in SYNTHETIC:
        t = synthetic_trace(kind, 300, seed=1)
        assert t.n == 300 and t.name == kind and np.all(np.diff(t.arrival_s) >= 0) and t.arrival_s[0] == 0
        assert t.has_prefixes == (kind in ("conversation", "rag"))
        assert synthetic_trace(kind, 300, seed=1).input_tokens.tolist() == t.input_tokens.tolist()
    conv = synthetic_trace("conversation", 2000, seed=1)
    firsts = {h[0] for h in conv.prefix_hashes if h}
    assert len(firsts) <= 4  # every prompt starts with one of four system prompts
    for n_in, h in zip(conv.input_tokens[:50], conv.prefix_hashes[:50]):
        assert len(h) == -(-int(n_in) // 512)  # one hash per 512-token block, Mooncake-style
    with pytest.raises(ValueError, match="unknown synthetic trace 'zipf'"):
        synthetic_trace("zipf")


def test_telemetry_covers_every_run(telemetry: Telemetry) -> None:
    runs = {s.split("/load")[0] for s in telemetry.source}
    assert runs == {f"synthetic_{k}/{p}" for k in ("poisson", "conversation")
                    for p in ("round_robin", "pow2", "least_loaded", "prefix_affinity")}
    assert telemetry.n == 2 * 2 * 4 * 500 and np.all(np.isfinite(telemetry.ttft_s))


def test_trainer_fit_predict_export_parity(telemetry: Telemetry, tmp_path: Path) -> None:
    trainer = ReplicaTTFTTrainer(n_estimators=30, seed=0)
    assert trainer.fit(telemetry.x, telemetry.ttft_s) is trainer
    onnx_path = trainer.export(tmp_path)
    scorer = ReplicaScorer(onnx_path)
    x = telemetry.x[:2000]
    assert np.max(np.abs(scorer.predict(x) - trainer.predict(x))) < 1e-4
    manifest = json.loads((tmp_path / "replicas.json").read_text())
    assert manifest["target"] == "log_ttft_s" and manifest["feature_names"] == list(REPLICA_FEATURE_NAMES)


def test_the_same_telemetry_gives_the_same_model(telemetry: Telemetry) -> None:
    """Benchmarks compare policies across runs: the scorer must not depend on LightGBM's timing probes."""
    a, b = (ReplicaTTFTTrainer(n_estimators=30, seed=0).fit(telemetry.x, telemetry.ttft_s) for _ in range(2))
    assert np.array_equal(a.predict(telemetry.x), b.predict(telemetry.x))


def test_more_queued_prefill_never_predicts_a_faster_first_token(telemetry: Telemetry) -> None:
    trainer = ReplicaTTFTTrainer(n_estimators=30, seed=0).fit(telemetry.x, telemetry.ttft_s)
    base = np.repeat(telemetry.x[:200], 5, axis=0)
    base[:, WAITING] = np.tile(np.array([0, 2_000, 10_000, 50_000, 200_000], dtype=np.float32), 200)
    pred = trainer.predict(base).reshape(200, 5)
    assert np.all(np.diff(pred, axis=1) >= -1e-9)  # monotone constraint


def test_trainer_errors() -> None:
    with pytest.raises(NotFittedError, match="ReplicaTTFTTrainer is not fitted yet"):
        ReplicaTTFTTrainer().predict(np.zeros((1, len(REPLICA_FEATURE_NAMES))))
    with pytest.raises(ValueError, match=rf"x must be \(n, {len(REPLICA_FEATURE_NAMES)}\)"):
        ReplicaTTFTTrainer().fit(np.zeros((20, 3)), np.ones(20))
    with pytest.raises(ValueError, match="1 non-finite"):
        ReplicaTTFTTrainer().fit(np.zeros((20, len(REPLICA_FEATURE_NAMES))), np.r_[np.ones(19), np.nan])


def test_train_replica_model_reports_held_out_error(telemetry: Telemetry, tmp_path: Path) -> None:
    training = train_replica_model(telemetry, tmp_path, trainer=ReplicaTTFTTrainer(n_estimators=30),
                                   info={"trained_on": ["a"]})
    assert training["n_rows"] == telemetry.n and training["onnx_parity_max_abs"] < 1e-3
    assert training["holdout"]["r2_log"] > 0.8 and training["holdout"]["n_rows"] > 0
    manifest = json.loads((tmp_path / "replicas.json").read_text())
    assert manifest["trained_on"] == ["a"] and manifest["training"]["sources"] == {
        "synthetic_conversation": 4000, "synthetic_poisson": 4000}


def test_train_replicas_cli(telemetry: Telemetry, tmp_path: Path) -> None:
    telemetry.write(tmp_path / "logs" / "shard-0.parquet")
    report = train_replicas_cli(tmp_path / "logs", tmp_path / "model")
    assert Path(report["out"]).is_file() and report["n_rows"] == telemetry.n
    assert ReplicaScorer(tmp_path / "model").manifest["logs"] == str(tmp_path / "logs")
    with pytest.raises(FileNotFoundError, match="no replica telemetry"):
        train_replicas_cli(tmp_path / "empty", tmp_path / "model2")


def test_eval_replicas_cli_with_a_model(telemetry: Telemetry, tmp_path: Path) -> None:
    train_replica_model(telemetry, tmp_path / "model", trainer=ReplicaTTFTTrainer(n_estimators=30),
                        info={"trained_on": ["synthetic_poisson", "synthetic_conversation"]})
    tr = synthetic_trace("rag", 400, seed=3)
    rows = [TraceRow(float(t), int(i), int(o), h) for t, i, o, h in
            zip(tr.arrival_s, tr.input_tokens, tr.output_tokens, tr.prefix_hashes)]
    write_jsonl(tmp_path / "rag.jsonl", rows)
    out = tmp_path / "report.json"
    report = eval_replicas_cli(tmp_path / "rag.jsonl", 3, 0.8, ["pow2", "prefix_affinity", "learned"],
                               tmp_path / "model", out)
    assert json.loads(out.read_text()) == report
    assert report["trained_on"] == ["synthetic_poisson", "synthetic_conversation"]
    assert report["replicas"] == 3 and report["load"] == 0.8 and report["has_prefixes"]
    for m in report["policies"].values():
        assert {"ttft_p50", "ttft_p99", "e2e_p50", "e2e_p99", "throughput", "slo_attainment"} <= set(m)
    assert report["policies"]["learned"]["n_fallbacks"] == 0
    with pytest.raises(ValueError, match="unknown replica policies"):
        eval_replicas_cli(tmp_path / "rag.jsonl", 3, 0.8, ["fastest"], None, out)
    with pytest.raises(ValueError, match="--replicas must be >= 1"):
        eval_replicas_cli(tmp_path / "rag.jsonl", 0, 0.8, ["pow2"], None, out)


def test_the_evaluated_trace_is_excluded_from_training(tmp_path: Path) -> None:
    evaluated = synthetic_trace("conversation", 300, seed=0)
    kept, excluded = training_traces(evaluated, shared_data=None, work_dir=tmp_path, n_synthetic=300)
    assert "synthetic_conversation" not in kept and "same generator" in excluded["synthetic_conversation"]
    assert set(kept) == {"synthetic_poisson", "synthetic_bursty", "synthetic_rag"}


def test_overlap_ignores_timing() -> None:
    t = synthetic_trace("rag", 300, seed=0)
    assert overlap(t.scaled(0.1).head(100), t) == 1.0
    assert overlap(synthetic_trace("rag", 300, seed=5), t) < 0.05


@pytest.mark.data
def test_public_traces_are_excluded_when_evaluated(shared_data: Path, tmp_path: Path) -> None:
    from training.adapters import convert_mooncake

    convert_mooncake(shared_data / "mooncake_traces" / "conversation_trace.jsonl", tmp_path / "mc.jsonl", limit=500)
    evaluated = Trace.read(tmp_path / "mc.jsonl")
    kept, excluded = training_traces(evaluated, shared_data=shared_data, work_dir=tmp_path, n_synthetic=200)
    assert "mooncake_conversation" in excluded and "100% of the evaluated trace" in excluded["mooncake_conversation"]
    assert {"mooncake_synthetic", "ragpulse", "servegen_m_large", "synthetic_conversation"} <= set(kept)


def test_write_replica_telemetry_cli_feeds_train_replicas(tmp_path: Path) -> None:
    from training.replica_eval import write_replica_telemetry_cli

    tr = synthetic_trace("poisson", 200, seed=9)
    write_jsonl(tmp_path / "p.jsonl", [TraceRow(float(t), int(i), int(o)) for t, i, o in
                                       zip(tr.arrival_s, tr.input_tokens, tr.output_tokens)])
    info = write_replica_telemetry_cli(tmp_path / "logs", [tmp_path / "p.jsonl"], builtin=False)
    assert info["traces"] == ["p"] and info["n_rows"] == 200 * 4 * 4
    assert train_replicas_cli(tmp_path / "logs", tmp_path / "model")["n_rows"] == info["n_rows"]
    with pytest.raises(ValueError, match="no traces to simulate"):
        write_replica_telemetry_cli(tmp_path / "x", [], builtin=False)
