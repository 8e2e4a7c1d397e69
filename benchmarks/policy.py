"""Issue 4's claims: the model policy learned from bandit feedback on full-information tables.

RouterBench (its own train/test split) and RouteLLM MMLU / GSM8K (seeded 50/50 split): for each seed,
`training.router_eval.eval_router` simulates uniform-random logging on train, trains the policy from
those logs alone, and sweeps the cost preference on test. Reported per dataset:

* quality at <= 30% of the best single model's cost, and at the cost of gpt-3.5-turbo (RouterBench);
* the gap to the same policy class trained on full information (at every cost on both curves);
* DR's error against the true value and whether its 95% CI covers it, over seeds;
* the policy's single-request decision latency: ONNX vs the native LightGBM booster (ratio).

Curves are compared on their upper convex hulls (a random mix of two routers reaches any point on the
segment between them, as in RouterBench's AIQ). Usage: python benchmarks/policy.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from _common import RESULTS, console, environment

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
GPT4, GPT35 = "gpt-4-1106-preview", "gpt-3.5-turbo-1106"


def hull(points: list[dict[str, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Upper concave envelope of (cost, quality), made non-decreasing in cost."""
    pts = sorted({(p["cost"], p["quality"]) for p in points})
    up: list[tuple[float, float]] = []
    for c, q in pts:
        if up and q <= up[-1][1]:
            continue  # dominated: costs more, no better
        while len(up) >= 2 and (up[-1][1] - up[-2][1]) * (c - up[-2][0]) <= (q - up[-2][1]) * (up[-1][0] - up[-2][0]):
            up.pop()
        up.append((c, q))
    xs, ys = np.array([p[0] for p in up]), np.array([p[1] for p in up])
    return xs, ys


def quality_at(points: list[dict[str, float]], budget: float) -> float:
    xs, ys = hull(points)
    if budget < xs[0]:
        return float("nan")
    return float(np.interp(budget, xs, ys))


def max_gap(bandit: list[dict[str, float]], full: list[dict[str, float]]) -> float:
    bx, _ = hull(bandit)
    fx, _ = hull(full)
    grid = np.linspace(max(bx[0], fx[0]), max(bx[-1], fx[-1]), 200)
    return float(max(quality_at(full, c) - quality_at(bandit, c) for c in grid))


def convert(work: Path) -> dict[str, tuple[Path, Path]]:
    from training.adapters import convert_routellm, convert_routerbench

    convert_routerbench(SHARED / "routerbench_subset_routerdc", work / "routerbench")
    convert_routellm(SHARED / "routellm", work / "routellm")
    out = {"routerbench": (work / "routerbench" / "train.jsonl", work / "routerbench" / "test.jsonl")}
    rng = np.random.default_rng(0)
    for name in ("mmlu", "gsm8k"):
        lines = [ln for ln in (work / "routellm" / f"{name}.jsonl").read_text(encoding="utf-8").split("\n") if ln]  # not splitlines(): U+2028 may sit inside JSON strings
        idx = rng.permutation(len(lines))
        half = len(lines) // 2
        for part, sel in (("train", idx[:half]), ("test", idx[half:])):
            (work / f"{name}_{part}.jsonl").write_text("\n".join(lines[i] for i in sel) + "\n")
        out[f"routellm-{name}"] = (work / f"{name}_train.jsonl", work / f"{name}_test.jsonl")
    return out


def source_oracle(test: Path, budgets: dict[str, float]) -> dict[str, float]:
    """Upper bound for routers that only identify the task: knows each test prompt's source dataset
    (``eval_name``, else ``category``) and picks, with hindsight on test, the best model per source for
    each cost weight. Its hull at a budget bounds any router whose decisions depend on the source alone."""
    rows = [json.loads(line) for line in test.read_text(encoding="utf-8").split("\n") if line.strip()]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r.get("eval_name") or r.get("category") or "all", []).append(r)
    stats = {g: {m: (np.mean([x["outcomes"][m]["quality"] for x in rs if m in x["outcomes"]]),
                     np.mean([x["outcomes"][m]["cost"] for x in rs if m in x["outcomes"]]))
                 for m in {m for x in rs for m in x["outcomes"]}} for g, rs in groups.items()}
    points = []
    for w in np.concatenate([[0.0], np.geomspace(1e-3, 1e3, 400)]):
        q = c = 0.0
        for g, rs in groups.items():
            m = max(stats[g], key=lambda k: stats[g][k][0] - w * stats[g][k][1])
            q += stats[g][m][0] * len(rs) / len(rows)
            c += stats[g][m][1] * len(rs) / len(rows)
        points.append({"quality": q, "cost": c})
    return {name: quality_at(points, b) for name, b in budgets.items()}


def summarise(name: str, reports: list[dict[str, Any]], test: Path) -> dict[str, Any]:
    singles = reports[0]["single_models"]
    best_model = max(singles, key=lambda m: singles[m]["quality"])
    best = singles[best_model]
    per_seed = []
    for r in reports:
        row = {"seed": r["seed"], "chosen": r["policy"]["chosen"],
               "quality_at_30pct_best_cost": quality_at(r["curve"], 0.3 * best["cost"]),
               "full_info_quality_at_30pct_best_cost": quality_at(r["full_information"], 0.3 * best["cost"]),
               "max_gap_to_full_information": max_gap(r["curve"], r["full_information"]),
               "dr_error": abs(r["ope"]["dr"]["estimate"] - r["ope"]["true"]),
               "dr_covers": r["ope"]["dr"]["ci_low"] <= r["ope"]["true"] <= r["ope"]["dr"]["ci_high"]}
        if GPT35 in singles:
            row["quality_at_gpt35_cost"] = quality_at(r["curve"], singles[GPT35]["cost"])
        per_seed.append(row)
    keys = [k for k in per_seed[0] if k not in ("seed", "chosen", "dr_covers")]
    budgets = {"at_30pct_best_cost": 0.3 * best["cost"]}
    if GPT35 in singles:
        budgets["at_gpt35_cost"] = singles[GPT35]["cost"]
    return {"dataset": name, "best_single": {"model": best_model, **best}, "single_models": singles,
            "source_oracle_quality": source_oracle(test, budgets),
            "oracle": reports[0]["oracle"], "per_seed": per_seed,
            "mean": {k: float(np.nanmean([s[k] for s in per_seed])) for k in keys},
            "dr_coverage": float(np.mean([s["dr_covers"] for s in per_seed])),
            "curves": [{"seed": r["seed"], "bandit": r["curve"], "full_information": r["full_information"]} for r in reports]}


def decision_latency(train: Path, n_calls: int) -> dict[str, Any]:
    """Single-request scoring of every candidate model: ONNX session vs native LightGBM boosters."""
    from router.onnx_session import make_session
    from router.policy import OnlineBounds, PolicyScorer
    from training.router_eval import OutcomeTable, uniform_logs
    from training.formats import read_jsonl
    from training.policy import GBDTPolicyTrainer, LinUCBTrainer

    table = OutcomeTable.from_rows(read_jsonl(train, "outcomes"))
    x = table.features(sorted(set(table.categories)))
    logs = uniform_logs(table, x, np.random.default_rng(0))
    out = {}
    for trainer in (GBDTPolicyTrainer(table.models), LinUCBTrainer(table.models)):
        trainer.fit(logs)
        scorer = PolicyScorer(make_session(trainer.to_onnx()), trainer.info(1.0, 1.0, OnlineBounds()))
        onnx_t, native_t = [], []
        for i in range(n_calls):
            row = x[i % len(x)]
            t0 = time.perf_counter()
            scorer.predict(row)
            t1 = time.perf_counter()
            trainer.predict(row[None, :])
            native_t.append(time.perf_counter() - t1)
            onnx_t.append(t1 - t0)
        o, n = np.array(onnx_t[50:]) * 1e3, np.array(native_t[50:]) * 1e3
        out[trainer.name] = {"models": len(table.models), "onnx_ms": {"p50": float(np.percentile(o, 50)), "p99": float(np.percentile(o, 99))},
                             "native_ms": {"p50": float(np.percentile(n, 50)), "p99": float(np.percentile(n, 99))},
                             "native_over_onnx_p50": float(np.percentile(n, 50) / np.percentile(o, 50))}
    return out


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    curves = summary["curves"][0]
    for key, style in (("bandit", "o-"), ("full_information", "s--")):
        pts = sorted((p["cost"] * 1e3, p["quality"]) for p in curves[key])
        ax.plot(*zip(*pts), style, label=f"turnout ({key.replace('_', ' ')})", ms=4)
    for m, v in summary["single_models"].items():
        ax.scatter(v["cost"] * 1e3, v["quality"], marker="x", color="gray")
        ax.annotate(m.split("/")[-1][:18], (v["cost"] * 1e3, v["quality"]), fontsize=7, xytext=(3, 2), textcoords="offset points")
    ax.scatter(summary["oracle"]["cost"] * 1e3, summary["oracle"]["quality"], marker="*", s=120, color="gold", label="oracle")
    ax.set_xscale("log")
    ax.set_xlabel("mean cost per query (m$, log scale)")
    ax.set_ylabel("quality on test")
    ax.set_title(f"{summary['dataset']}: quality vs cost (seed {curves['seed']})")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 seeds, RouterBench only, fewer bootstrap draws")
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    from training.router_eval import eval_router

    seeds = range(2 if args.quick else args.seeds)
    n_boot = 50 if args.quick else 200
    work = Path(tempfile.mkdtemp(prefix="turnout-policy-bench-"))
    datasets = convert(work)
    if args.quick:
        datasets = {"routerbench": datasets["routerbench"]}
    results = {}
    for name, (train, test) in datasets.items():
        with console.status(f"{name}: eval router over {len(seeds)} seeds"):
            reports = [eval_router(train, test, seed=s, n_bootstrap=n_boot) for s in seeds]
        results[name] = summarise(name, reports, test)
    latency = decision_latency(datasets["routerbench"][0], 300 if args.quick else 2000)

    t = Table(title="model policy from simulated bandit feedback (test split; hull-interpolated)")
    for col in ("dataset", "best single (q @ m$)", "oracle", "q @ 30% best cost", "full-info q @ 30%", "source-oracle q @ 30%",
                "q @ gpt-3.5 cost", "max gap to full info", "DR |err|", "DR CI coverage", "chosen variants"):
        t.add_column(col)
    for name, s in results.items():
        b, m = s["best_single"], s["mean"]
        t.add_row(name, f"{b['model'].split('/')[-1]} {b['quality']:.3f} @ {b['cost'] * 1e3:.2f}",
                  f"{s['oracle']['quality']:.3f} @ {s['oracle']['cost'] * 1e3:.2f}",
                  f"{m['quality_at_30pct_best_cost']:.3f}", f"{m['full_info_quality_at_30pct_best_cost']:.3f}",
                  f"{s['source_oracle_quality']['at_30pct_best_cost']:.3f}",
                  f"{m['quality_at_gpt35_cost']:.3f}" if "quality_at_gpt35_cost" in m else "-",
                  f"{m['max_gap_to_full_information']:.3f}", f"{m['dr_error']:.4f}", f"{s['dr_coverage']:.0%}",
                  ",".join(sorted({p['chosen'] for p in s['per_seed']})))
    console.print(t)
    lt = Table(title="policy decision latency, one request scoring every model (ms)")
    for col in ("variant", "models", "ONNX p50", "ONNX p99", "native p50", "native p99", "native/ONNX p50"):
        lt.add_column(col)
    for v, d in latency.items():
        lt.add_row(v, str(d["models"]), f"{d['onnx_ms']['p50']:.3f}", f"{d['onnx_ms']['p99']:.3f}",
                   f"{d['native_ms']['p50']:.3f}", f"{d['native_ms']['p99']:.3f}", f"{d['native_over_onnx_p50']:.1f}x")
    console.print(lt)
    suffix = "_quick" if args.quick else ""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"environment": environment(), "seeds": list(seeds), "datasets": results, "decision_latency": latency,
           "targets": {"routerbench_quality_at_30pct_gpt4_cost": 0.874, "routerbench_quality_at_gpt35_cost": 0.85,
                       "max_gap_to_full_information": 0.02, "dr_error": 0.02, "dr_coverage": 0.9,
                       "decision_latency_p99_ms": 0.2}}
    (RESULTS / f"policy{suffix}.json").write_text(json.dumps(out, indent=2, default=float) + "\n")
    plot(results["routerbench"], RESULTS / f"policy{suffix}.png")
    console.print(f"wrote {RESULTS / f'policy{suffix}.json'} and .png")


if __name__ == "__main__":
    main()
