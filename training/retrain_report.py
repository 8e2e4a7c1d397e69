"""The retrain report: ``report.md`` with the decision, guards, OPE table and three PNG plots
(estimates with CIs, per-category change, calibration of the quality heads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _save(plt: Any, fig: Any, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def _plots(comparison: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    est = ("dr", "snips", "ips", "dm")
    gate = comparison["metrics"][comparison["gate_metric"]]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for off, who, color in ((-0.18, "current", "tab:gray"), (0.18, "candidate", "tab:blue")):
        vals = [gate[who][e] for e in est]
        ax.errorbar([i + off for i in range(len(est))], [v["estimate"] for v in vals],
                    yerr=[[v["estimate"] - v["ci_low"] for v in vals], [v["ci_high"] - v["estimate"] for v in vals]],
                    fmt="o", capsize=4, color=color, label=who)
    ax.axhline(comparison["logged_value"][comparison["gate_metric"]], ls=":", color="k", lw=1,
               label="logging policy (observed)")
    ax.set_xticks(range(len(est)), [e.upper() for e in est])
    ax.set_ylabel(f"estimated mean {comparison['gate_metric']}")
    ax.set_title("Off-policy estimates on held-out logs (95% bootstrap CI)")
    ax.legend(fontsize=8)
    names.append(_save(plt, fig, out, "estimates.png"))

    cats = comparison["per_category"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    keys = list(cats)
    ax.bar(range(len(keys)), [cats[k]["difference"] for k in keys], color="tab:blue")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(keys)), [f"{k}\n(n={cats[k]['n']})" for k in keys], fontsize=8)
    ax.set_ylabel(f"DR {comparison['gate_metric']}: candidate - current")
    ax.set_title("Per-category change")
    names.append(_save(plt, fig, out, "categories.png"))

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for who, color in (("current", "tab:gray"), ("candidate", "tab:blue")):
        bins = comparison["calibration"][who]["bins"]
        ax.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], "o-", color=color,
                label=f"{who} (ECE {comparison['calibration'][who]['ece']:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="k", lw=1)
    ax.set_xlabel("predicted quality (logged model)")
    ax.set_ylabel("observed quality")
    ax.set_title("Calibration of the quality head")
    ax.legend(fontsize=8)
    names.append(_save(plt, fig, out, "calibration.png"))
    return names


def write_report(outcome: Any, comparison: dict[str, Any] | None, out: Path) -> Path:
    lines = [f"# Retrain: **{outcome.decision.upper()}**", "", outcome.reason, ""]
    if outcome.bundle:
        lines += [f"Candidate bundle: `{outcome.bundle}`", ""]
    lines += ["## Guards", "", "| guard | ok | detail |", "|---|---|---|"]
    lines += [f"| {k} | {'yes' if g.ok else '**no**'} | {g.detail} |" for k, g in outcome.guards.items()]
    steps = outcome.details.get("steps")
    if steps:
        lines += ["", "## What was refitted", ""] + [f"- **{k}**: {v}" for k, v in steps.items()]
    if comparison is not None:
        gm = comparison["gate_metric"]
        lines += ["", f"## Off-policy evaluation ({comparison['n_rounds']} held-out rounds, the newest logs)", "",
                  f"Gate metric: **{gm}** (scales: {comparison['scales']}).", "",
                  "| metric | estimator | current | candidate | difference (DR, paired) |", "|---|---|---|---|---|"]
        for metric, m in comparison["metrics"].items():
            for e in ("dr", "snips", "ips", "dm"):
                c, n = m["current"][e], m["candidate"][e]
                diff = m["difference"] if e == "dr" else None
                lines.append(f"| {metric} | {e.upper()} | {c['estimate']:.4g} [{c['ci_low']:.4g}, {c['ci_high']:.4g}] | "
                             f"{n['estimate']:.4g} [{n['ci_low']:.4g}, {n['ci_high']:.4g}] | "
                             + (f"{diff['estimate']:+.4g} [{diff['ci_low']:+.4g}, {diff['ci_high']:+.4g}]" if diff else "") + " |")
        lines += ["", f"Effective sample size: current {comparison['ess']['current']:.0f}, candidate "
                  f"{comparison['ess']['candidate']:.0f}. Logging policy observed: "
                  + ", ".join(f"{k} {v:.4g}" for k, v in comparison["logged_value"].items()) + ".", ""]
        lines += [f"Per category (DR {gm}):", "", "| category | n | current | candidate | change |", "|---|---|---|---|---|"]
        for k, v in comparison["per_category"].items():
            lines.append(f"| {k} | {v['n']} | {v['current']:.4f} | {v['candidate']:.4f} | {v['difference']:+.4f} |")
        lines += [""] + [f"![{p}]({p})" for p in _plots(comparison, out)]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
