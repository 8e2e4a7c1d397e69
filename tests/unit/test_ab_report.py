"""``turnout ab report``: per-arm CIs, differences vs control, SRM, feedback join, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from router.log_schema import SCHEMA, write_feedback_shard, write_shard
from training.ab_report import (ABReportError, ab_report, mean_ci, parse_weights, quantile_ci, srm_check,
                                welch_diff)
from turnout.cli import main

TRUE = {"control": {"quality": 0.60, "cost_usd": 0.010, "latency_ms": 800.0},
        "treatment": {"quality": 0.65, "cost_usd": 0.007, "latency_ms": 900.0}}


def _rows(arm: str, n: int, rng: np.random.Generator, start: int = 0) -> list[dict]:
    t = TRUE[arm]
    q = np.clip(rng.normal(t["quality"], 0.2, n), 0, 1)
    rows = []
    for i in range(n):
        rows.append({
            "request_id": f"{arm}-{start + i}", "timestamp_s": float(i), "tenant": "t", "arm": arm,
            "bundle_version": f"v-{arm}", "feature_version": "2", "prompt": "p", "n_turns": 1, "input_tokens": 3,
            "features": [0.0], "category": "chat", "category_probs": [1.0], "confidence": 1.0, "fallback": False,
            "cache_tier": "skip", "cache_hit": False, "model": "m", "candidates": ["m"], "action_probs": [1.0],
            "propensity": 1.0, "policy": "epsilon_greedy", "replica": None, "replica_stats": None, "ttft_ms": None,
            "latency_ms": float(rng.gamma(4.0, t["latency_ms"] / 4.0)), "output_tokens": 10,
            "cost_usd": float(rng.gamma(2.0, t["cost_usd"] / 2.0)), "error": None, "quality": float(q[i]),
            "label_category": None})
    return rows


def _write(d: Path, rows: list[dict]) -> Path:
    write_shard(pa.Table.from_pylist(rows, schema=SCHEMA), d)
    return d


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2,000 requests per arm with known means; 30 errored and 50 feedback-less rows per arm."""
    rng = np.random.default_rng(7)
    d = tmp_path_factory.mktemp("ab") / "logs"
    for arm in ("control", "treatment"):
        rows = _rows(arm, 2000, rng)
        for r in rows[:30]:
            r.update(error="UpstreamTimeout: 30 s", quality=None, latency_ms=None, cost_usd=None)
        for r in rows[30:80]:
            r["quality"] = None
        _write(d, rows[:1000])
        _write(d, rows[1000:])
    return d


def test_known_effect_is_covered_and_keys_follow_the_contract(logs: Path, tmp_path: Path) -> None:
    rep = ab_report(logs, tmp_path, plots=False)
    assert rep["control"] == "control" and set(rep["arms"]) == {"control", "treatment"}
    assert json.loads((tmp_path / "ab_report.json").read_text())["arms"]["treatment"]["requests"] == 2000
    for arm, truth in TRUE.items():
        a = rep["arms"][arm]
        assert a["requests"] == 2000 and a["errors"] == 30 and a["quality_missing"] == 50
        assert a["quality"]["n"] == 2000 - 30 - 50 and a["latency_ms"]["n"] == 1970
        for m, v in truth.items():
            assert a[m]["ci_low"] < v < a[m]["ci_high"], (arm, m, a[m])
    d = rep["arms"]["treatment"]["diff_vs_control"]
    assert rep["arms"]["control"]["diff_vs_control"] is None
    for m in ("quality", "cost_usd", "latency_ms"):
        effect = TRUE["treatment"][m] - TRUE["control"][m]
        assert d[m]["ci_low"] < effect < d[m]["ci_high"], (m, d[m])
        assert not (d[m]["ci_low"] < 0 < d[m]["ci_high"]), f"{m}: a real effect must be detected at n=2000"
        assert set(d[m]) >= {"estimate", "ci_low", "ci_high"}
    assert set(rep["srm"]) >= {"chi2", "p_value", "expected", "observed", "mismatch"}
    assert rep["srm"]["mismatch"] is False and rep["srm"]["chi2"] == 0.0


def test_welch_interval_has_nominal_coverage() -> None:
    """Over 400 seeded small-sample experiments with unequal variances the 95% interval covers the
    true difference 93-97% of the time (a normal interval at n=8 would undercover)."""
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(400):
        d = welch_diff(rng.normal(1.0, 3.0, 8), rng.normal(0.0, 0.5, 30))
        hits += d["ci_low"] < 1.0 < d["ci_high"]
    assert 0.93 <= hits / 400 <= 0.975


def test_mean_and_quantile_intervals_degrade_cleanly() -> None:
    assert mean_ci(np.array([]))["mean"] is None
    one = mean_ci(np.array([3.0]))
    assert one["mean"] == 3.0 and one["ci_low"] is None
    flat = welch_diff(np.ones(5), np.ones(5))
    assert flat == {"estimate": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": None}
    q = quantile_ci(np.arange(1000.0), 0.5)
    assert q["ci_low"] < 499.5 < q["ci_high"] and q["ci_high"] - q["ci_low"] < 80


@pytest.mark.parametrize(("counts", "mismatch"), [({"a": 1200, "b": 800}, True), ({"a": 1000, "b": 1000}, False),
                                                  ({"a": 1030, "b": 970}, False)])
def test_srm_against_a_50_50_configuration(counts: dict[str, int], mismatch: bool) -> None:
    s = srm_check(counts, {"a": 0.5, "b": 0.5})
    assert s["mismatch"] is mismatch
    assert s["expected"] == {"a": 1000.0, "b": 1000.0}


def test_srm_in_the_report_uses_the_configured_weights(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    d = _write(tmp_path / "logs", _rows("control", 600, rng) + _rows("treatment", 400, rng))
    assert ab_report(d, tmp_path / "r1", plots=False)["srm"]["mismatch"] is True  # equal weights by default
    rep = ab_report(d, tmp_path / "r2", weights=parse_weights("control=0.6,treatment=0.4"), plots=False)
    assert rep["srm"]["mismatch"] is False and rep["srm"]["expected"]["control"] == pytest.approx(600)
    # an arm configured but absent from the logs is an SRM, not a crash
    rep = ab_report(d, tmp_path / "r3", weights=parse_weights("control=1,treatment=1,third=1"), plots=False)
    assert rep["srm"]["observed"]["third"] == 0 and rep["srm"]["mismatch"] is True
    assert rep["arms"]["third"]["requests"] == 0 and rep["arms"]["third"]["quality"]["mean"] is None


def test_late_feedback_overrides_logged_quality(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    rows = _rows("control", 100, rng) + _rows("treatment", 100, rng)
    for r in rows:
        r["quality"] = None
    d = _write(tmp_path / "logs", rows)
    write_feedback_shard(d, [{"request_id": f"treatment-{i}", "quality": 0.0, "timestamp_s": 1.0} for i in range(100)])
    write_feedback_shard(d, [{"request_id": f"treatment-{i}", "quality": 1.0, "timestamp_s": 2.0} for i in range(40)])
    rep = ab_report(d, tmp_path / "r", plots=False)
    t = rep["arms"]["treatment"]
    assert rep["feedback_rows_joined"] == 100
    assert t["quality"]["n"] == 100 and t["quality"]["mean"] == pytest.approx(0.4)
    assert rep["arms"]["control"]["quality_missing"] == 100
    assert t["diff_vs_control"]["quality"]["estimate"] is None  # no control quality: no difference, no crash


def test_cli_prints_the_table_and_writes_json_and_plots(logs: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ab", "report", "--logs", str(logs), "--out", str(tmp_path), "--bootstrap", "100"]) == 0
    out = capsys.readouterr().out
    assert "treatment" in out and "sample-ratio check" in out and "rows with an error" in out
    rep = json.loads((tmp_path / "ab_report.json").read_text())
    assert [Path(p).name for p in rep["plots"]] == ["ab_means.png", "ab_diff.png"]
    assert all(Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in rep["plots"])
    assert main(["ab", "report", "--logs", str(logs), "--out", str(tmp_path), "--json", "--control", "treatment",
                 "--bootstrap", "50"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["control"] == "treatment" and rep["arms"]["control"]["diff_vs_control"]["quality"]["estimate"] < 0


@pytest.mark.parametrize(("args", "message"), [
    (["--logs", "{tmp}/nope"], "no such file or directory"),
    (["--control", "nobody"], "--control 'nobody' is not an arm; arms: control, treatment"),
    (["--weights", "control=0.5,treatment"], "must be ARM=WEIGHT"),
    (["--weights", "control=0.5,treatment=-1"], "must be ARM=WEIGHT"),
    (["--weights", "control=1"], "logged arm(s) ['treatment'] have no weight"),
])
def test_bad_input_exits_2_with_one_line(args: list[str], message: str, logs: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["ab", "report", "--logs", str(logs), "--out", str(tmp_path / "out"), "--bootstrap", "10"]
    argv += [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_rows_without_an_arm_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _rows("control", 10, np.random.default_rng(3))
    for r in rows[:4]:
        r["arm"] = ""
    d = _write(tmp_path / "logs", rows)
    with pytest.raises(ABReportError, match="4 of 10 rows have an empty 'arm'"):
        ab_report(d, tmp_path / "r", plots=False)
    assert main(["ab", "report", "--logs", str(d), "--out", str(tmp_path / "r")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["ab", "report", "--logs", str(empty), "--out", str(tmp_path / "r")]) == 2
    assert "no Parquet shards" in capsys.readouterr().err


def test_cli_takes_weights_and_control_from_the_serve_config(logs: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    # the logs hold a 50/50 split; a config that says 90/10 must make the SRM check fire
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("bundle: b\nlog_dir: l\nexperiment:\n  arms:\n"
                   "    - {name: treatment, bundle: b2, weight: 0.9}\n    - {name: control, bundle: b, weight: 0.1}\n")
    assert main(["ab", "report", "--logs", str(logs), "--out", str(tmp_path / "r"), "--json", "--config", str(cfg),
                 "--bootstrap", "50"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["control"] == "treatment" and rep["srm"]["mismatch"] is True
    assert main(["ab", "report", "--logs", str(logs), "--out", str(tmp_path / "r"), "--config", str(cfg),
                 "--weights", "a=1"]) == 2


# --- the unit of analysis is the unit of randomisation -------------------------------------------------


def _user_rows(arm: str, n_users: int, per_user: int, rng: np.random.Generator) -> list[dict]:
    """Users with a strong per-user quality level (intra-user correlation ~0.6), same truth in both arms."""
    rows = []
    for u in range(n_users):
        level = rng.normal(0.6, 0.15)
        for r in _rows(arm, per_user, rng, start=u * per_user):
            r["quality"] = float(np.clip(level + rng.normal(0.0, 0.12), 0, 1))
            r["assignment_unit"] = f"{arm}-user-{u}"
            rows.append(r)
    return rows


def test_cluster_intervals_keep_their_coverage_where_request_level_ones_do_not() -> None:
    from training.ab_report import cluster_diff

    rng = np.random.default_rng(11)
    covered = {"cluster": 0, "request": 0}
    n_rep = 200
    for _ in range(n_rep):
        sides = []
        for _arm in range(2):  # no true difference
            units = np.repeat(np.arange(30), 20)
            x = rng.normal(0.0, 1.0, 30)[units] + rng.normal(0.0, 0.6, units.size)
            sides.append((x, units))
        (a, au), (c, cu) = sides
        cl, rq = cluster_diff(a, au, c, cu), welch_diff(a, c)
        covered["cluster"] += cl["ci_low"] <= 0.0 <= cl["ci_high"]
        covered["request"] += rq["ci_low"] <= 0.0 <= rq["ci_high"]
    assert covered["cluster"] / n_rep >= 0.90  # nominal 95%
    assert covered["request"] / n_rep <= 0.70  # requests as independent draws: far too narrow


def test_report_uses_logged_units_and_counts_them_for_srm(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    d = tmp_path / "logs"
    _write(d, _user_rows("control", 40, 25, rng) + _user_rows("treatment", 40, 25, rng))
    rep = ab_report(d, tmp_path / "out", plots=False)
    assert rep["unit"] == "assignment_unit" and rep["srm"]["counts"] == "units"
    assert rep["arms"]["control"]["units"] == 40 and rep["arms"]["control"]["requests"] == 1000
    assert rep["srm"]["observed"] == {"control": 40, "treatment": 40}
    clustered = rep["arms"]["treatment"]["diff_vs_control"]["quality"]
    assert clustered["ci_low"] <= 0.0 <= clustered["ci_high"]
    # the same rows with units dropped: request-level, and a much narrower (overconfident) interval
    table = pa.Table.from_pylist(_user_rows("control", 40, 25, np.random.default_rng(5)) +
                                 _user_rows("treatment", 40, 25, np.random.default_rng(5)), schema=SCHEMA)
    flat = tmp_path / "flat"
    write_shard(table.drop_columns(["assignment_unit"]), flat)
    rep_flat = ab_report(flat, tmp_path / "out2", plots=False)
    assert rep_flat["unit"] == "request" and rep_flat["arms"]["control"]["units"] is None
    width = lambda r: r["ci_high"] - r["ci_low"]  # noqa: E731
    assert width(clustered) > 2.5 * width(rep_flat["arms"]["treatment"]["diff_vs_control"]["quality"])
    lat = rep["arms"]["treatment"]["diff_vs_control"]["latency_p50_ms"]
    assert lat["ci_low"] <= lat["estimate"] <= lat["ci_high"]


def test_cluster_bootstrap_needs_two_units_per_arm_and_uses_the_midpoint_median() -> None:
    from training.ab_report import _weighted_median, cluster_bootstrap_median_diff

    one = cluster_bootstrap_median_diff(np.array([1.0, 2.0]), np.array(["u", "u"]),
                                        np.array([1.0, 5.0, 9.0]), np.array(["a", "b", "b"]))
    assert one["ci_low"] is None and one["estimate"] == 1.5 - 5.0
    assert _weighted_median(np.array([10.0, 20.0]), np.array([1.0, 1.0])) == 15.0 == np.median([10.0, 20.0])
    assert _weighted_median(np.array([1.0, 2.0, 3.0]), np.array([2.0, 0.0, 1.0])) == 1.0
