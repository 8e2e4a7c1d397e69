"""A/B experiment report: per-arm outcomes with 95% CIs, differences vs control, sample-ratio check.

Reads logged traffic (``router.log_schema.read_logs``) and joins late feedback
(``read_feedback`` + ``join_feedback``: the latest ``/v1/feedback`` quality per request overrides the
logged one). Each row counts as one request of its ``arm``.

The unit of analysis is the unit of randomisation. The gateway assigns arms per user (or tenant) and
logs that unit (``assignment_unit``); one user's requests are correlated (same kind of prompts, same
tolerance), so treating them as independent would make every interval too narrow. When every row
carries its unit ("unit": "assignment_unit"), means and differences use cluster-robust (delta-method,
ratio-of-sums) standard errors with t on (units - 1) degrees of freedom, the p50 difference uses a
cluster bootstrap (units resampled with all their requests), and the sample-ratio check counts units.
Logs without units (older logs, simulations) fall back to requests as the unit, and the report says so.

Methods (all intervals two-sided 95%, unadjusted for the number of arms):

* means (quality, cost_usd, latency_ms): Student-t interval ``mean +- t_{0.975, n-1} s / sqrt(n)``;
* difference of means vs control: Welch's t (unequal variances, Welch-Satterthwaite df), with its
  two-sided p-value. Large n makes both the normal interval; small n stays honest;
* latency p50/p99 per arm: distribution-free order-statistic interval (binomial ranks around n q);
  difference of p50 vs control: seeded percentile bootstrap (``n_bootstrap`` resamples per arm);
* sample-ratio mismatch (SRM): Pearson chi-square of the per-arm unit (or request) counts against the configured
  traffic weights (equal by default), df = arms - 1; flagged when p < ``SRM_ALPHA`` = 0.001 (the usual
  SRM threshold: a real split problem gives tiny p-values, and a strict alpha keeps false alarms rare
  when the check runs on every report).

Which rows feed which number: ``requests`` counts every row of the arm. Rows with a non-null ``error``
are counted in ``errors`` and left out of every metric. Of the rest, rows with a null quality (no
feedback yet) are counted in ``quality_missing`` and left out of quality only; likewise null cost or
latency. Nothing is imputed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from router.errors import RouterError

Z = 0.975  # two-sided 95%
SRM_ALPHA = 0.001
METRICS = ("quality", "cost_usd", "latency_ms")
REPORT_FILE = "ab_report.json"


class ABReportError(RouterError):
    """The logs or options cannot produce an A/B report (names the problem)."""


# ------------------------------------------------------------------------------------------------
# statistics (pure functions of arrays)


def mean_ci(x: np.ndarray) -> dict[str, float | int | None]:
    """Mean with a Student-t 95% interval; ``ci_*`` are None when n < 2."""
    from scipy import stats

    x = np.asarray(x, dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return {"n": 0, "mean": None, "ci_low": None, "ci_high": None, "sd": None}
    mean = float(x.mean())
    if n < 2:
        return {"n": n, "mean": mean, "ci_low": None, "ci_high": None, "sd": None}
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(Z, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "ci_low": mean - half, "ci_high": mean + half, "sd": sd}


def welch_diff(x: np.ndarray, control: np.ndarray) -> dict[str, float | None]:
    """``mean(x) - mean(control)`` with Welch's t 95% interval and two-sided p-value.

    None fields when either side has fewer than 2 values. With zero variance on both sides the
    interval collapses to the estimate and the p-value is None (no test is possible).
    """
    from scipy import stats

    x, c = np.asarray(x, dtype=np.float64), np.asarray(control, dtype=np.float64)
    if x.size < 2 or c.size < 2:
        est = float(x.mean() - c.mean()) if x.size and c.size else None
        return {"estimate": est, "ci_low": None, "ci_high": None, "p_value": None}
    est = float(x.mean() - c.mean())
    vx, vc = x.var(ddof=1) / x.size, c.var(ddof=1) / c.size
    se = math.sqrt(vx + vc)
    if se == 0.0:
        return {"estimate": est, "ci_low": est, "ci_high": est, "p_value": None}
    df = (vx + vc) ** 2 / (vx ** 2 / (x.size - 1) + vc ** 2 / (c.size - 1))
    half = float(stats.t.ppf(Z, df)) * se
    p = float(2.0 * stats.t.sf(abs(est) / se, df))
    return {"estimate": est, "ci_low": est - half, "ci_high": est + half, "p_value": p}


def quantile_ci(x: np.ndarray, q: float) -> dict[str, float | None]:
    """The q-quantile with a distribution-free 95% interval: order statistics at ranks
    ``n q -+ z sqrt(n q (1 - q))`` (normal approximation to the binomial count below the quantile)."""
    x = np.sort(np.asarray(x, dtype=np.float64))
    n = x.size
    if n == 0:
        return {"estimate": None, "ci_low": None, "ci_high": None}
    half = 1.959963984540054 * math.sqrt(n * q * (1.0 - q))
    lo, hi = int(math.floor(n * q - half)), int(math.ceil(n * q + half))
    return {"estimate": float(np.quantile(x, q)),
            "ci_low": float(x[lo]) if lo >= 0 else None,
            "ci_high": float(x[hi]) if hi < n else None}


def bootstrap_median_diff(x: np.ndarray, control: np.ndarray, *, n_bootstrap: int = 1000,
                          seed: int = 0) -> dict[str, float | None]:
    """``median(x) - median(control)`` with a seeded percentile-bootstrap 95% interval."""
    x, c = np.asarray(x, dtype=np.float64), np.asarray(control, dtype=np.float64)
    if x.size == 0 or c.size == 0:
        return {"estimate": None, "ci_low": None, "ci_high": None}
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_bootstrap)
    for b in range(n_bootstrap):
        diffs[b] = np.median(x[rng.integers(0, x.size, x.size)]) - np.median(c[rng.integers(0, c.size, c.size)])
    lo, hi = np.quantile(diffs, [1.0 - Z, Z])
    return {"estimate": float(np.median(x) - np.median(c)), "ci_low": float(lo), "ci_high": float(hi)}


def _cluster_sums(x: np.ndarray, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit sums and counts of ``x`` (units are any hashable labels, one per value)."""
    _, g = np.unique(units, return_inverse=True)
    return np.bincount(g, weights=x), np.bincount(g).astype(np.float64)


def _cluster_var(sums: np.ndarray, counts: np.ndarray) -> tuple[float, float]:
    """(ratio-of-sums mean, its delta-method variance ``K/(K-1) sum_k (S_k - m N_k)^2 / N^2``)."""
    n, k = counts.sum(), sums.size
    m = float(sums.sum() / n)
    r = sums - m * counts
    return m, float(k / (k - 1) * np.sum(r * r) / (n * n))


def cluster_mean_ci(x: np.ndarray, units: np.ndarray) -> dict[str, float | int | None]:
    """Mean of ``x`` with a 95% interval that treats ``units`` (users) as the independent draws:
    cluster-robust standard error, t on (units - 1) df. ``ci_*`` None with fewer than 2 units."""
    from scipy import stats

    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return {"n": 0, "units": 0, "mean": None, "ci_low": None, "ci_high": None, "sd": None}
    sums, counts = _cluster_sums(x, units)
    sd = float(x.std(ddof=1)) if x.size > 1 else None
    if sums.size < 2:
        return {"n": int(x.size), "units": int(sums.size), "mean": float(x.mean()), "ci_low": None, "ci_high": None,
                "sd": sd}
    m, var = _cluster_var(sums, counts)
    half = float(stats.t.ppf(Z, sums.size - 1)) * math.sqrt(var)
    return {"n": int(x.size), "units": int(sums.size), "mean": m, "ci_low": m - half, "ci_high": m + half, "sd": sd}


def cluster_diff(x: np.ndarray, x_units: np.ndarray, control: np.ndarray, c_units: np.ndarray) -> dict[str, float | None]:
    """``mean(x) - mean(control)`` with cluster-robust standard errors per arm (arms are independent
    groups of units) and Welch-Satterthwaite df over units; same keys as ``welch_diff``."""
    from scipy import stats

    x, c = np.asarray(x, dtype=np.float64), np.asarray(control, dtype=np.float64)
    if x.size == 0 or c.size == 0:
        return {"estimate": None, "ci_low": None, "ci_high": None, "p_value": None}
    (sx, nx), (sc, nc) = _cluster_sums(x, x_units), _cluster_sums(c, c_units)
    if sx.size < 2 or sc.size < 2:
        return {"estimate": float(x.mean() - c.mean()), "ci_low": None, "ci_high": None, "p_value": None}
    (mx, vx), (mc, vc) = _cluster_var(sx, nx), _cluster_var(sc, nc)
    est, se = mx - mc, math.sqrt(vx + vc)
    if se == 0.0:
        return {"estimate": est, "ci_low": est, "ci_high": est, "p_value": None}
    df = (vx + vc) ** 2 / ((vx ** 2 / (sx.size - 1) if vx else 0.0) + (vc ** 2 / (sc.size - 1) if vc else 0.0))
    half = float(stats.t.ppf(Z, df)) * se
    return {"estimate": est, "ci_low": est - half, "ci_high": est + half,
            "p_value": float(2.0 * stats.t.sf(abs(est) / se, df))}


def _weighted_median(sorted_x: np.ndarray, w: np.ndarray) -> float:
    """Median of sorted values with integer weights; like ``np.median``, the midpoint of the two middle
    values when the weight splits exactly in half."""
    c = np.cumsum(w)
    half = 0.5 * c[-1]
    i = int(np.searchsorted(c, half))
    if c[i] == half:
        return float(0.5 * (sorted_x[i] + sorted_x[int(np.searchsorted(c, half, side="right"))]))
    return float(sorted_x[i])


def cluster_bootstrap_median_diff(x: np.ndarray, x_units: np.ndarray, control: np.ndarray, c_units: np.ndarray, *,
                                  n_bootstrap: int = 1000, seed: int = 0) -> dict[str, float | None]:
    """``median(x) - median(control)`` with a percentile interval from resampling *units* (each drawn
    unit brings all its requests: a multinomial weight per unit)."""
    x, c = np.asarray(x, dtype=np.float64), np.asarray(control, dtype=np.float64)
    if x.size == 0 or c.size == 0:
        return {"estimate": None, "ci_low": None, "ci_high": None}
    if min(np.unique(x_units).size, np.unique(c_units).size) < 2:  # one unit shows no between-unit spread
        return {"estimate": float(np.median(x) - np.median(c)), "ci_low": None, "ci_high": None}
    rng = np.random.default_rng(seed)
    sides = []
    for v, u in ((x, x_units), (c, c_units)):
        order = np.argsort(v, kind="stable")
        _, g = np.unique(u, return_inverse=True)
        sides.append((v[order], g[order], int(g.max()) + 1))
    diffs = np.empty(n_bootstrap)
    for b in range(n_bootstrap):
        med = [_weighted_median(v, rng.multinomial(k, np.full(k, 1.0 / k))[g].astype(np.float64))
               for v, g, k in sides]
        diffs[b] = med[0] - med[1]
    lo, hi = np.quantile(diffs, [1.0 - Z, Z])
    return {"estimate": float(np.median(x) - np.median(c)), "ci_low": float(lo), "ci_high": float(hi)}


def srm_check(observed: Mapping[str, int], weights: Mapping[str, float]) -> dict[str, Any]:
    """Pearson chi-square of observed counts (units, or requests without units) vs ``weights``
    (normalised); df = arms - 1."""
    from scipy import stats

    arms = list(weights)
    total_w = float(sum(weights.values()))
    n = int(sum(observed.get(a, 0) for a in arms))
    obs = {a: int(observed.get(a, 0)) for a in arms}
    exp = {a: n * weights[a] / total_w for a in arms}
    if len(arms) < 2 or n == 0:
        return {"chi2": 0.0, "df": 0, "p_value": 1.0, "alpha": SRM_ALPHA, "expected": exp, "observed": obs,
                "weights": dict(weights), "mismatch": False, "note": "needs at least two arms with traffic"}
    chi2 = float(sum((obs[a] - exp[a]) ** 2 / exp[a] for a in arms))
    p = float(stats.chi2.sf(chi2, len(arms) - 1))
    return {"chi2": chi2, "df": len(arms) - 1, "p_value": p, "alpha": SRM_ALPHA, "expected": exp, "observed": obs,
            "weights": {a: weights[a] / total_w for a in arms}, "mismatch": p < SRM_ALPHA}


# ------------------------------------------------------------------------------------------------
# the report


def parse_weights(text: str | None) -> dict[str, float] | None:
    """``"a=0.5,b=0.5"`` -> ``{"a": 0.5, "b": 0.5}`` (order kept: the first arm is the default control)."""
    if text is None:
        return None
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        name, sep, value = part.partition("=")
        name = name.strip()
        try:
            w = float(value)
        except ValueError:
            w = float("nan")
        if not sep or not name or not math.isfinite(w) or w <= 0:
            raise ABReportError(f"--weights: {part!r} must be ARM=WEIGHT with WEIGHT > 0, e.g. control=0.5,treatment=0.5")
        if name in out:
            raise ABReportError(f"--weights: arm {name!r} is listed twice")
        out[name] = w
    return out


def load_outcomes(logs_dir: str | Path) -> tuple[pa.Table, int]:
    """Logged rows with late feedback joined; also the number of rows whose quality came from feedback."""
    from router.log_schema import join_feedback, read_feedback, read_logs

    d = Path(logs_dir)
    if not d.exists():
        raise ABReportError(f"--logs {d}: no such file or directory")
    logs = read_logs(d, feedback=False)  # joined below, counting the rows feedback changed
    feedback = read_feedback(d)
    n_feedback = 0
    if feedback.num_rows:
        ids = set(feedback.column("request_id").to_pylist())
        n_feedback = sum(1 for r in logs.column("request_id").to_pylist() if r in ids)
        logs = join_feedback(logs, feedback)
    return logs, n_feedback


def ab_report(logs_dir: str | Path, out_dir: str | Path, control: str | None = None,
              weights: Mapping[str, float] | None = None, *, n_bootstrap: int = 1000, seed: int = 0,
              plots: bool = True) -> dict[str, Any]:
    """Build the report, write ``out_dir/ab_report.json`` (+ PNG plots) and return it.

    Raises ``ABReportError`` (or ``LogSchemaError`` from reading) naming the problem: missing logs,
    empty arm names, an unknown control, weights that do not cover the logged arms.
    """
    table, n_feedback = load_outcomes(logs_dir)
    arm_col = np.asarray(table.column("arm").to_pylist(), dtype=object)
    if table.num_rows == 0:
        raise ABReportError(f"--logs {logs_dir}: the logs hold no rows")
    blank = int(sum(1 for a in arm_col if not str(a).strip()))
    if blank:
        raise ABReportError(f"--logs {logs_dir}: {blank} of {table.num_rows} rows have an empty 'arm'; "
                            "every logged decision must name its A/B arm")
    logged = sorted(set(arm_col.tolist()))
    weights_given = weights is not None
    if weights is not None:
        unknown = [a for a in logged if a not in weights]
        if unknown:
            raise ABReportError(f"--weights: logged arm(s) {unknown} have no weight; weights given for {list(weights)}")
        arms = list(weights)
    else:
        arms = logged
        weights = {a: 1.0 for a in arms}
    control, chosen_by = _control(control, arms, weights_given=weights_given)
    cols = _columns(table)
    clustered = not any(u is None for u in cols["unit"])
    if not clustered:  # requests are the unit: each row its own cluster gives the request-level formulas
        cols["unit"] = np.arange(table.num_rows)
    per_arm = {a: _arm_stats(cols, arm_col == a, clustered) for a in arms}
    for a in arms:
        per_arm[a]["diff_vs_control"] = (None if a == control else
                                         _diffs(per_arm[a], per_arm[control], n_bootstrap, seed, clustered))
    for stats_ in per_arm.values():
        stats_.pop("_values")
        stats_.pop("_units")
    count_key = "units" if clustered else "requests"
    counts = {a: per_arm[a][count_key] for a in arms}
    unit_arms: dict[Any, set[str]] = {}
    for u, a in zip(cols["unit"].tolist(), arm_col.tolist()):
        unit_arms.setdefault(u, set()).add(a)
    unit_doc = ("assignment_unit (the logged user/tenant hash): cluster-robust intervals, units resampled"
                if clustered else "request (some rows have no assignment_unit, e.g. logs from before schema 2): "
                "requests treated as independent; intervals too narrow if users were randomised")
    report: dict[str, Any] = {
        "logs": str(logs_dir), "n_rows": table.num_rows, "feedback_rows_joined": n_feedback,
        "unit": "assignment_unit" if clustered else "request",
        "units_in_several_arms": sum(1 for v in unit_arms.values() if len(v) > 1) if clustered else 0,
        "arms": per_arm, "control": control, "control_chosen_by": chosen_by,
        "srm": {**srm_check(counts, weights), "counts": count_key},
        "methods": {"unit": unit_doc,
                    "mean_ci": ("cluster-robust (delta method), t on units - 1 df, 95%" if clustered
                                else "Student t, 95%"),
                    "diff_ci": ("cluster-robust per arm, Welch-Satterthwaite df over units, 95%, two-sided p"
                                if clustered else "Welch t (unequal variances), 95%, two-sided p"),
                    "latency_quantile_ci": "order-statistic (binomial) 95%, requests treated as independent",
                    "latency_p50_diff_ci": (f"{'cluster' if clustered else 'percentile'} bootstrap "
                                            f"({'units' if clustered else 'requests'} resampled), "
                                            f"{n_bootstrap} resamples, seed {seed}"),
                    "srm": f"Pearson chi-square of {count_key} vs weights, mismatch when p < {SRM_ALPHA}",
                    "excluded": "rows with an error; null quality/cost/latency left out of that metric only"},
        "plots": [],
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if plots:
        report["plots"] = [str(p) for p in write_plots(report, out)]
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def _control(control: str | None, arms: Sequence[str], *, weights_given: bool) -> tuple[str, str]:
    if control is not None:
        if control not in arms:
            raise ABReportError(f"--control {control!r} is not an arm; arms: {', '.join(arms)}")
        return control, "--control"
    if weights_given:
        return arms[0], "first arm of --weights"
    for name in ("control", "default"):
        if name in arms:
            return name, f"arm named {name!r}"
    return arms[0], "alphabetically first arm (pass --control to choose)"


def _columns(table: pa.Table) -> dict[str, np.ndarray]:
    def f64(name: str) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in table.column(name).to_pylist()], dtype=np.float64)

    return {"error": np.array([e is not None for e in table.column("error").to_pylist()], dtype=bool),
            "cache_hit": np.asarray(table.column("cache_hit").to_pylist(), dtype=bool),
            "fallback": np.asarray(table.column("fallback").to_pylist(), dtype=bool),
            "bundle_version": np.asarray(table.column("bundle_version").to_pylist(), dtype=object),
            "unit": np.asarray(table.column("assignment_unit").to_pylist(), dtype=object),
            **{m: f64(m) for m in METRICS}}


def _arm_stats(cols: Mapping[str, np.ndarray], mask: np.ndarray, clustered: bool) -> dict[str, Any]:
    ok = mask & ~cols["error"]
    keep = {m: ok & ~np.isnan(cols[m]) for m in METRICS}
    values = {m: cols[m][keep[m]] for m in METRICS}
    units = {m: cols["unit"][keep[m]] for m in METRICS}
    n_ok = int(ok.sum())
    lat = values["latency_ms"]
    s: dict[str, Any] = {
        "requests": int(mask.sum()), "units": int(np.unique(cols["unit"][mask]).size) if clustered else None,
        "errors": int((mask & cols["error"]).sum()),
        "error_rate": float((mask & cols["error"]).sum() / mask.sum()) if mask.any() else None,
        "quality_missing": n_ok - int(values["quality"].size),
        "cost_missing": n_ok - int(values["cost_usd"].size),
        "latency_missing": n_ok - int(lat.size),
        "cache_hit_rate": float(cols["cache_hit"][ok].mean()) if n_ok else None,
        "fallback_rate": float(cols["fallback"][ok].mean()) if n_ok else None,
        "bundle_versions": sorted(set(cols["bundle_version"][mask].tolist())),
        **{m: (cluster_mean_ci(values[m], units[m]) if clustered else mean_ci(values[m])) for m in METRICS},
        "latency_p50_ms": quantile_ci(lat, 0.5), "latency_p99_ms": quantile_ci(lat, 0.99),
        "_values": values, "_units": units,
    }
    return s


def _diffs(arm: Mapping[str, Any], control: Mapping[str, Any], n_bootstrap: int, seed: int,
           clustered: bool) -> dict[str, Any]:
    a, c = arm["_values"], control["_values"]
    if not clustered:
        out: dict[str, Any] = {m: welch_diff(a[m], c[m]) for m in METRICS}
        out["latency_p50_ms"] = bootstrap_median_diff(a["latency_ms"], c["latency_ms"], n_bootstrap=n_bootstrap,
                                                      seed=seed)
        return out
    au, cu = arm["_units"], control["_units"]
    out = {m: cluster_diff(a[m], au[m], c[m], cu[m]) for m in METRICS}
    out["latency_p50_ms"] = cluster_bootstrap_median_diff(a["latency_ms"], au["latency_ms"], c["latency_ms"],
                                                          cu["latency_ms"], n_bootstrap=n_bootstrap, seed=seed)
    return out


# ------------------------------------------------------------------------------------------------
# output


def write_plots(report: Mapping[str, Any], out: Path) -> list[Path]:
    """``ab_means.png`` (per-arm means with 95% CI bars) and ``ab_diff.png`` (difference vs control)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(report["arms"])
    titles = {"quality": "quality (mean)", "cost_usd": "cost per request, USD (mean)", "latency_ms": "latency ms (mean)"}
    paths = []
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, m in zip(axes, METRICS):
        _bars(ax, arms, [report["arms"][a][m] for a in arms], "mean")
        ax.set_title(titles[m], fontsize=10)
    fig.suptitle(f"A/B arms (95% CI; control = {report['control']})", fontsize=11)
    fig.tight_layout()
    paths.append(out / "ab_means.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    others = [a for a in arms if a != report["control"]]
    if others:
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
        for ax, m in zip(axes, METRICS):
            _bars(ax, others, [report["arms"][a]["diff_vs_control"][m] for a in others], "estimate")
            ax.axhline(0.0, color="black", linewidth=0.8)
            ax.set_title(f"Δ {titles[m]}", fontsize=10)
        fig.suptitle(f"difference vs control {report['control']!r} (Welch 95% CI)", fontsize=11)
        fig.tight_layout()
        paths.append(out / "ab_diff.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def _bars(ax: Any, names: Sequence[str], stats: Sequence[Mapping[str, Any]], key: str) -> None:
    xs = np.arange(len(names))
    est = np.array([np.nan if s[key] is None else s[key] for s in stats], dtype=float)
    lo = np.array([np.nan if s["ci_low"] is None else s["ci_low"] for s in stats], dtype=float)
    hi = np.array([np.nan if s["ci_high"] is None else s["ci_high"] for s in stats], dtype=float)
    err = np.nan_to_num(np.vstack([est - lo, hi - est]), nan=0.0)
    ax.bar(xs, np.nan_to_num(est), color="#4c72b0", alpha=0.8)
    ax.errorbar(xs, np.nan_to_num(est), yerr=err, fmt="none", ecolor="black", capsize=4)
    ax.set_xticks(xs, names)


def print_report(report: Mapping[str, Any], console: Any | None = None) -> None:
    """The per-arm table and the SRM verdict (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    ctl = report["control"]
    t = Table(title=f"A/B report: {report['logs']} ({report['n_rows']:,} rows; control = {ctl}; 95% CIs)",
              title_justify="left")
    for col in ("arm", "requests", "units", "errors", "quality", "Δ quality", "cost USD", "Δ cost", "latency ms", "Δ latency",
                "p50 ms (Δ)"):
        t.add_column(col, justify="left" if col == "arm" else "right")
    n_total = max(report["n_rows"], 1)
    for name, a in report["arms"].items():
        d = a["diff_vs_control"] or {}
        p50 = a["latency_p50_ms"]["estimate"]
        p50_txt = "-" if p50 is None else f"{p50:.1f}"
        if d.get("latency_p50_ms", {}).get("estimate") is not None:
            p50_txt += f" ({_signed(d['latency_p50_ms']['estimate'], 1)})"
        t.add_row(name + (" (control)" if name == ctl else ""),
                  f"{a['requests']:,} ({a['requests'] / n_total:.1%})",
                  f"{a['units']:,}" if report["unit"] == "assignment_unit" else "-", f"{a['errors']:,}",
                  _ci(a["quality"], 4), _dci(d.get("quality"), 4),
                  _ci(a["cost_usd"], 6), _dci(d.get("cost_usd"), 6),
                  _ci(a["latency_ms"], 1), _dci(d.get("latency_ms"), 1), p50_txt)
    console.print(t)
    console.print(f"unit of analysis: {report['methods']['unit']}")
    if report["units_in_several_arms"]:
        console.print(f"[yellow]{report['units_in_several_arms']:,} unit(s) appear in more than one arm "
                      "(weights or arms changed during the experiment?)[/]")
    srm = report["srm"]
    verdict = "[bold red]MISMATCH[/]" if srm["mismatch"] else "ok"
    exp = ", ".join(f"{k}: {v:,} obs / {srm['expected'][k]:,.0f} exp" for k, v in srm["observed"].items())
    if srm.get("note"):
        console.print(f"sample-ratio check: not applicable ({srm['note']}); {exp}")
    else:
        console.print(f"sample-ratio check: chi2 = {srm['chi2']:.2f} (df {srm['df']}), p = {srm['p_value']:.3g} "
                      f"-> {verdict} (alpha {srm['alpha']}); {exp}")
    missing = {k: a["quality_missing"] for k, a in report["arms"].items() if a["quality_missing"]}
    errors = {k: a["errors"] for k, a in report["arms"].items() if a["errors"]}
    if missing:
        console.print(f"rows without quality (no feedback yet; left out of quality): {missing}")
    if errors:
        console.print(f"rows with an error (left out of every metric): {errors}")
    if report["feedback_rows_joined"]:
        console.print(f"late feedback joined on {report['feedback_rows_joined']:,} rows")
    for p in report["plots"]:
        console.print(f"wrote {p}")


def _ci(s: Mapping[str, Any], digits: int) -> str:
    if s["mean"] is None:
        return "-"
    if s["ci_low"] is None:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} [{s['ci_low']:.{digits}f}, {s['ci_high']:.{digits}f}]"


def _dci(d: Mapping[str, Any] | None, digits: int) -> str:
    if not d or d["estimate"] is None:
        return "-"
    if d["ci_low"] is None:
        return _signed(d["estimate"], digits)
    sig = d["ci_low"] > 0 or d["ci_high"] < 0
    text = f"{_signed(d['estimate'], digits)} [{_signed(d['ci_low'], digits)}, {_signed(d['ci_high'], digits)}]"
    return f"[bold]{text}[/]" if sig else text


def _signed(v: float, digits: int) -> str:
    return f"{v:+.{digits}f}"
