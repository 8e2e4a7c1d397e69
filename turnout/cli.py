"""The ``turnout`` command. Heavy imports happen inside each command so ``--help`` is instant.

Errors that are the user's (bad config, bad bundle, bad data) print one clear message and exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from router.errors import RouterError

Handler = Callable[[argparse.Namespace], int]


def _finite(obj: object) -> object:
    """NaN/Infinity -> null: they are not JSON, and a consumer's strict parser would reject the whole report.
    numpy scalars (np.float32 is no ``float``; ``default=str`` would write the string "nan") become Python's."""
    if type(obj).__module__ == "numpy" and getattr(obj, "shape", None) == ():
        obj = obj.item()  # type: ignore[attr-defined]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _emit(obj: object, out: str | None = None) -> None:
    text = json.dumps(_finite(obj), indent=2, default=str, allow_nan=False)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n", encoding="utf-8")
    print(text)


def cmd_data_convert(a: argparse.Namespace) -> int:
    from training.adapters import convert

    kw: dict[str, object] = {"seed": a.seed, "limit": a.limit, **dict(_parse_option(o) for o in a.option)}
    _emit(convert(a.source, Path(a.in_path), Path(a.out_path), **kw))
    return 0


def _parse_option(text: str) -> tuple[str, object]:
    """``k=v`` with v parsed as JSON when it can be (numbers, true/false), else kept as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--option expects KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def cmd_data_schema(a: argparse.Namespace) -> int:
    from router.log_schema import schema_markdown

    print(schema_markdown())
    return 0


def cmd_data_validate(a: argparse.Namespace) -> int:
    from router.log_schema import read_logs

    t = read_logs(a.logs)
    print(f"{a.logs}: {t.num_rows} valid records")
    return 0


def cmd_simulate(a: argparse.Namespace) -> int:
    from training.simulator import write_simulation
    from training.world import load_world

    _emit(write_simulation(load_world(a.config), a.requests, a.out, seed=a.seed, progress=not a.quiet))
    return 0


def cmd_train_bundle(a: argparse.Namespace) -> int:
    from rich.console import Console

    from router.config import RouterConfig, load_config
    from training.bundle_builder import build_bundle

    console = Console(stderr=True)
    bundle = build_bundle(a.logs, load_config(a.config, RouterConfig), a.out, labelled=[Path(p) for p in a.labelled],
                          seed=a.seed, bundle_version=a.version, classifier_family=a.classifier_family,
                          step=lambda m: console.log(m))
    _emit({"bundle": str(bundle.path), "bundle_version": bundle.version, "metrics": bundle.manifest.metrics})
    return 0


def cmd_train_policy(a: argparse.Namespace) -> int:
    from rich.console import Console

    from router.bundle import load_bundle
    from training.bundle_builder import retrain_policy

    console = Console(stderr=True)
    bundle = retrain_policy(a.logs, load_bundle(a.bundle), a.out, seed=a.seed, bundle_version=a.version,
                            step=lambda m: console.log(m))
    _emit({"bundle": str(bundle.path), "bundle_version": bundle.version, "policy": bundle.manifest.metrics["policy"]})
    return 0


def cmd_eval_router(a: argparse.Namespace) -> int:
    from training.router_eval import eval_router

    report = eval_router(a.train, a.test, seed=a.seed, n_bootstrap=a.bootstrap)
    _emit(report, a.out)
    return 0


def cmd_eval_replicas(a: argparse.Namespace) -> int:
    from training.replica_eval import eval_replicas_cli

    policies = [p.strip() for p in a.policies.split(",") if p.strip()]
    if not policies:
        raise ValueError("--policies is empty; give a comma-separated list, e.g. pow2,learned")
    report = eval_replicas_cli(Path(a.trace), a.replicas, a.load, policies, Path(a.model) if a.model else None,
                               Path(a.out), seed=a.seed, max_gap_s=a.max_gap)
    _emit(report)
    return 0


def cmd_train_replicas(a: argparse.Namespace) -> int:
    from training.replica_model import train_replicas_cli

    _emit(train_replicas_cli(Path(a.logs), Path(a.out)))
    return 0


def cmd_train_cache(a: argparse.Namespace) -> int:
    from router.config import RouterConfig, load_config
    from training.cache_data import read_stream
    from training.cache_train import train_cache

    cfg = load_config(a.config, RouterConfig)
    fit_rows = read_stream(a.fit_stream) if a.fit_stream else None
    shared = Path(a.shared_dir) if a.shared_dir and Path(a.shared_dir).is_dir() else None
    policy = train_cache(Path(a.logs), cfg, Path(a.out), fit_rows=fit_rows, shared_dir=shared, seed=a.seed, online=a.online,
                         step=lambda m: print(m, file=sys.stderr))
    if a.bundle:
        from router.bundle import load_bundle
        from training.bundle_builder import with_cache_policy

        with_cache_policy(load_bundle(a.bundle), Path(a.out), Path(a.bundle_out or a.bundle + "-cache"))
    _emit({c: {"tier": p.tier, "threshold": p.threshold, "verifier_cutoff": p.verifier_cutoff, "ttl_s": p.ttl_s,
               "max_entries": p.max_entries, "eviction": p.eviction, "expected_hit_rate": p.expected_hit_rate,
               "break_even_hit_rate": p.break_even_hit_rate} for c, p in policy.categories.items()})
    return 0


def cmd_eval_cache(a: argparse.Namespace) -> int:
    from training.cache_eval import eval_cache

    shared = Path(a.shared_dir) if a.shared_dir and Path(a.shared_dir).is_dir() else None
    report = eval_cache(Path(a.stream), Path(a.out), policy_dir=Path(a.policy) if a.policy else None,
                        target_fhr=a.target_false_hit_rate, shared_dir=shared, seed=a.seed,
                        step=lambda m: print(m, file=sys.stderr))
    _emit({"methods": {k: v["overall"] for k, v in report["methods"].items()}, "at_target": report["at_target"],
           "matched": report["matched"], "latency_ms": report.get("latency_ms"), "out": a.out})
    return 0


def cmd_data_telemetry(a: argparse.Namespace) -> int:
    from training.replica_eval import write_replica_telemetry_cli

    _emit(write_replica_telemetry_cli(Path(a.out), [Path(t) for t in a.trace], builtin=not a.no_builtin, seed=a.seed))
    return 0


def cmd_ope(a: argparse.Namespace) -> int:
    from router.bundle import load_bundle
    from training.evaluation import run_ope

    report = run_ope(load_bundle(a.bundle), a.logs, n_bootstrap=a.bootstrap, seed=a.seed)
    _emit(report, a.out)
    return 0


def cmd_ab_report(a: argparse.Namespace) -> int:
    from training.ab_report import ab_report, parse_weights, print_report

    weights, control = parse_weights(a.weights), a.control
    if a.config:  # the split the gateway was configured with; the first arm is the control
        if weights is not None:
            raise ValueError("give either --config or --weights, not both")
        from serving.config import load_serve_config

        arms = load_serve_config(a.config).arms()
        weights = {arm.name: arm.weight for arm in arms}
        control = control or arms[0].name
    report = ab_report(a.logs, a.out, control=control, weights=weights, n_bootstrap=a.bootstrap, seed=a.seed)
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


def cmd_eval_classifier(a: argparse.Namespace) -> int:
    from router.bundle import load_bundle
    from training.classifier_eval import eval_classifier_report, read_labelled_for_eval
    from training.formats import read_texts

    if (Path(a.bundle) / "manifest.json").exists():
        load_bundle(a.bundle)  # verify hashes before trusting the files
    rows, blank = read_labelled_for_eval(a.data)
    if blank:
        print(f"turnout: {a.data}: skipped {blank} row(s) with a blank text", file=sys.stderr)
    if not any(r.category != "ood" for r in rows):  # accuracy, ECE and OOD AUROC all need in-taxonomy rows
        raise ValueError(f"{a.data}: no rows with a taxonomy category ({len(rows)} rows, all labelled 'ood' or none)")
    ood = read_texts(a.ood) if a.ood else None
    report = eval_classifier_report(Path(a.bundle), [r.text for r in rows], [r.category for r in rows], ood)
    report["n_skipped_blank_text"] = blank
    _emit(report, a.out)
    return 0


def cmd_data_categories(a: argparse.Namespace) -> int:
    from training.categories import build_category_set

    _emit(build_category_set(Path(a.shared_dir), Path(a.out), seed=a.seed))
    return 0


def cmd_train_classifier(a: argparse.Namespace) -> int:
    from router.config import RouterConfig, load_config
    from training.classifier import train_classifier_cli

    taxonomy = load_config(a.config, RouterConfig).taxonomy
    _emit(train_classifier_cli([Path(d) for d in a.data], Path(a.out), taxonomy, a.seed, family=a.family,
                               target_fpr=a.target_fpr))
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    import time

    from serving import launcher
    from serving.config import load_serve_config

    cfg = load_serve_config(a.config)
    if a.port:
        cfg = cfg.model_copy(update={"port": a.port})
    launcher.ensure_bundle(cfg)
    if a.emit_serve_config:
        path = launcher.write_ray_serve_config(cfg, Path(a.config), Path(a.emit_serve_config))
        print(f"wrote Ray Serve config {path} (serve run {path} | serve deploy {path})")
        return 0
    try:
        url = launcher.start(cfg, quiet=False)
        print(f"turnout is serving at {url}/v1/chat/completions (Ctrl-C to stop)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping: draining requests and flushing decision logs", flush=True)
    finally:
        launcher.stop()
    return 0


def cmd_replay(a: argparse.Namespace) -> int:
    from serving.replay import load_requests, print_summary, replay

    bodies = load_requests(a.requests, a.limit)
    result = asyncio.run(replay(a.url, bodies, concurrency=a.concurrency, progress=not a.quiet))
    summary = result.summary()
    print_summary(summary)
    if a.json:
        _emit(summary, a.json)
    return 0 if summary["ok"] == summary["requests"] else 1


def cmd_demo(a: argparse.Namespace) -> int:
    from turnout.demo import run_demo

    out = run_demo(requests=a.requests, train_requests=a.train_requests, workdir=a.workdir, port=a.port,
                   concurrency=a.concurrency)
    if a.json:
        _emit(out, a.json)
    return 0 if out["summary"]["ok"] == out["summary"]["requests"] else 1  # type: ignore[index]


def cmd_retrain(a: argparse.Namespace) -> int:
    """Exit codes: 0 promote, 3 hold (guard failed or no significant improvement), 2 bad input."""
    from rich.console import Console

    from training.retrain import RetrainSettings, retrain

    console = Console(stderr=True)
    given = {"holdout_frac": a.holdout, "n_bootstrap": a.bootstrap, "min_improvement": a.min_improvement,
             "min_ess": a.min_ess, "max_fit_rows": a.max_fit_rows}
    settings = RetrainSettings(**{k: v for k, v in given.items() if v is not None}, seed=a.seed,
                               refit_classifier=not a.keep_classifier, refit_cache=a.refit_cache,
                               bundle_version=a.version)
    backend = None
    if a.ray:
        from training.retrain_ray import RayBackend

        backend = RayBackend(address=a.ray_address)
    outcome = retrain(a.logs, a.current, a.out, settings=settings, backend=backend, step=lambda m: console.log(m))
    if a.json:
        _emit(outcome.as_dict())
    else:
        color = "green" if outcome.decision == "promote" else "yellow"
        console.print(f"[bold {color}]{outcome.decision.upper()}[/]: {outcome.reason}")
        console.print(f"bundle: {outcome.bundle}  report: {outcome.report}")
    return outcome.exit_code


def cmd_loop(a: argparse.Namespace) -> int:
    from turnout.loop import run_loop

    result = run_loop(a.world, Path(a.workdir) if a.workdir else None, v1_requests=a.v1_requests,
                      explore_requests=a.explore_requests, ab_requests=a.ab_requests, epsilon=a.epsilon,
                      seed=a.seed)
    _emit(result, a.json)
    return 0 if result.get("agrees") else 1


def _fraction(text: str) -> float:
    """argparse type: a number strictly between 0 and 1."""
    v = float(text)
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive); got {text}")
    return v


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text}")
    return v


def _positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    v = float(text)
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0; got {text}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="turnout", description="Learned query router and load balancer for LLM traffic.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="convert public datasets; inspect and validate logs")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    conv = dsub.add_parser("convert", help="turn a public dataset into turnout's JSONL formats")
    conv.add_argument("source", help="routerbench | routellm | clinc150 | mooncake | ragpulse | servegen | sharegpt | csv")
    conv.add_argument("--in", dest="in_path", required=True, help="input file or directory (see the source's SOURCE.md)")
    conv.add_argument("--out", dest="out_path", required=True, help="output file or directory")
    conv.add_argument("--seed", type=int, default=0)
    conv.add_argument("--limit", type=int, default=None, help="convert at most this many rows")
    conv.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                      help="source-specific option, e.g. keep_other=true (clinc150), duration_s=3600 (servegen)")
    conv.set_defaults(func=cmd_data_convert)
    dsub.add_parser("schema", help="print the logged-traffic schema").set_defaults(func=cmd_data_schema)
    val = dsub.add_parser("validate", help="validate Parquet logs against the schema")
    val.add_argument("logs")
    val.set_defaults(func=cmd_data_validate)
    cat = dsub.add_parser("categories", help="build the labelled category set from the public datasets")
    cat.add_argument("--shared-dir", default="../shared/data")
    cat.add_argument("--out", required=True, help='JSONL: {"text", "category", "source"}')
    cat.add_argument("--seed", type=int, default=0)
    cat.set_defaults(func=cmd_data_categories)
    tel = dsub.add_parser("telemetry", help="simulate replica dispatch telemetry for `turnout train replicas`")
    tel.add_argument("--out", required=True)
    tel.add_argument("--trace", action="append", default=[], help="extra trace JSONL (repeatable)")
    tel.add_argument("--no-builtin", action="store_true", help="skip the built-in synthetic traces")
    tel.add_argument("--seed", type=int, default=0)
    tel.set_defaults(func=cmd_data_telemetry)

    sim = sub.add_parser("simulate", help="simulate logged traffic from a world config")
    sim.add_argument("--config", default="configs/world.yaml")
    sim.add_argument("--requests", type=_positive_int, default=4000)
    sim.add_argument("--out", required=True)
    sim.add_argument("--seed", type=int, default=None, help="default: the world's seed")
    sim.add_argument("--quiet", action="store_true")
    sim.set_defaults(func=cmd_simulate)

    train = sub.add_parser("train", help="fit models on logs and export a bundle")
    tsub = train.add_subparsers(dest="train_command", required=True, metavar="WHAT")
    tb = tsub.add_parser("bundle", help="classifier + policy + cache policy -> bundle directory")
    tb.add_argument("--logs", required=True, help="directory of Parquet log shards")
    tb.add_argument("--config", default="configs/router.yaml", help="router config (taxonomy, catalogue, routes)")
    tb.add_argument("--out", required=True, help="bundle directory to write")
    tb.add_argument("--labelled", action="append", default=[], help="extra labelled prompts JSONL (repeatable)")
    tb.add_argument("--seed", type=int, default=0)
    tb.add_argument("--version", default=None, help="bundle_version (default: UTC timestamp)")
    tb.add_argument("--classifier-family", choices=["tfidf", "encoder", "auto"], default="tfidf",
                    help="tfidf: <1 ms; encoder: better on unseen sources, ~11 ms (benchmarks/classifier.py)")
    tb.set_defaults(func=cmd_train_bundle)
    tp = tsub.add_parser("policy", help="refit the model policy on logs; keeps the bundle's classifier and cache policy")
    tp.add_argument("--logs", required=True, help="directory of Parquet log shards (with propensities)")
    tp.add_argument("--bundle", required=True, help="current bundle (classifier, catalogue, preference)")
    tp.add_argument("--out", required=True, help="new bundle directory to write")
    tp.add_argument("--seed", type=int, default=0)
    tp.add_argument("--version", default=None, help="bundle_version (default: UTC timestamp)")
    tp.set_defaults(func=cmd_train_policy)
    tc = tsub.add_parser("classifier", help="category classifier + OOD guard -> ONNX files in a directory")
    tc.add_argument("--data", action="append", required=True, help='labelled JSONL (repeatable; a "source" key enables leave-one-source-out selection)')
    tc.add_argument("--out", required=True)
    tc.add_argument("--config", default="configs/router.yaml", help="router config (taxonomy)")
    tc.add_argument("--family", choices=["auto", "tfidf", "encoder"], default="auto")
    tc.add_argument("--target-fpr", type=float, default=0.05, help="OOD false-positive rate on in-distribution validation")
    tc.add_argument("--seed", type=int, default=0)
    tc.set_defaults(func=cmd_train_classifier)
    trp = tsub.add_parser("replicas", help="fit the TTFT predictor (replicas.onnx) on replica telemetry")
    trp.add_argument("--logs", required=True, help="telemetry Parquet shards (see `turnout data telemetry`)")
    trp.add_argument("--out", required=True, help="directory for replicas.onnx + replicas.json")
    trp.set_defaults(func=cmd_train_replicas)
    tca = tsub.add_parser("cache", help="per-category cache policy (tier, threshold, TTL, quota, eviction) + hit verifier",
                          description="Fits thresholds and the ONNX hit verifier on labelled streams that are not the "
                          "evaluated data (generated paraphrases/near misses + public sets), then measures each "
                          "category's hit rate and break-even (lookup cost / saved model latency) by replaying the "
                          "logs. Writes cache_policy.json, cache_verifier.onnx, encoder files, cache_report.json.")
    tca.add_argument("--logs", required=True, help="logged traffic (Parquet shards)")
    tca.add_argument("--out", required=True, help="output directory")
    tca.add_argument("--config", default="configs/router.yaml", help="router config (taxonomy, cache knobs)")
    tca.add_argument("--fit-stream", default=None, help="labelled JSONL {text, category, answer_id[, timestamp_s]} to "
                     "fit on instead of the generated streams (timestamps give observed staleness)")
    tca.add_argument("--shared-dir", default="../shared/data", help="public datasets to add to the generated fit data")
    tca.add_argument("--bundle", default=None, help="also write a copy of this bundle with the new cache policy")
    tca.add_argument("--bundle-out", default=None, help="where that copy goes (default: BUNDLE-cache)")
    tca.add_argument("--seed", type=int, default=0)
    tca.add_argument("--online", action="store_true",
                     help="serve with online per-answer-cluster thresholds learned from miss feedback "
                          "(router.cache_online; error bound = the config's target false-hit rate)")
    tca.set_defaults(func=cmd_train_cache)

    ab = sub.add_parser("ab", help="A/B experiments")
    absub = ab.add_subparsers(dest="ab_command", required=True, metavar="WHAT")
    abr = absub.add_parser("report", help="per-arm quality/cost/latency with 95%% CIs vs control, SRM check, plots")
    abr.add_argument("--logs", required=True, help="decision logs (Parquet shards; feedback-*.parquet joined)")
    abr.add_argument("--out", required=True, help="directory for ab_report.json and the PNG plots")
    abr.add_argument("--control", default=None, help="control arm (default: first --weights arm, else 'control'/'default')")
    abr.add_argument("--weights", default=None, help="configured traffic split for the SRM check, e.g. a=0.5,b=0.5 "
                     "(default: equal)")
    abr.add_argument("--config", default=None, help="serve config whose experiment.arms give the weights and the "
                     "control (first arm); instead of --weights")
    abr.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    abr.add_argument("--bootstrap", type=_positive_int, default=1000, help="resamples for the latency p50 difference")
    abr.add_argument("--seed", type=int, default=0)
    abr.set_defaults(func=cmd_ab_report)

    ope = sub.add_parser("ope", help="off-policy evaluation of a bundle's policy on logged traffic")
    ope.add_argument("--logs", required=True)
    ope.add_argument("--bundle", required=True)
    ope.add_argument("--json", action="store_true", help="print JSON (the default and only format for now)")
    ope.add_argument("--out", default=None, help="also write the JSON report here")
    ope.add_argument("--bootstrap", type=_positive_int, default=200)
    ope.add_argument("--seed", type=int, default=0)
    ope.set_defaults(func=cmd_ope)

    rt = sub.add_parser("retrain", help="nightly job: logs -> candidate bundle -> OPE gate -> promote/hold "
                        "(exit 0 promote, 3 hold, 2 bad input)")
    rt.add_argument("--logs", required=True, help="serving logs: directory or object-store URI of Parquet shards "
                    "(feedback-*.parquet joined)")
    rt.add_argument("--current", required=True, help="the bundle serving today")
    rt.add_argument("--out", required=True, help="directory for bundle/, report.md, *.png, retrain.json")
    rt.add_argument("--json", action="store_true", help="print the outcome as JSON on stdout")
    rt.add_argument("--ray", action="store_true", help="run on a Ray cluster (Ray Data, Ray Train LightGBM, Ray tasks)")
    rt.add_argument("--ray-address", default=None, help="Ray address (default: auto-detect or start a local cluster)")
    # defaults (None here) live once, in training.retrain.RetrainSettings (imported only when retrain runs)
    rt.add_argument("--holdout", type=_fraction, default=None, help="newest share of rounds held out for OPE (default 0.3)")
    rt.add_argument("--bootstrap", type=_positive_int, default=None, help="bootstrap resamples (default 200)")
    rt.add_argument("--min-improvement", type=float, default=None, help="promote iff the CI low of the DR utility gain exceeds this (default 0)")
    rt.add_argument("--min-ess", type=float, default=None, help="minimum effective sample size for OPE (default 100)")
    rt.add_argument("--max-fit-rows", type=_positive_int, default=None, help="policy trees fit on at most this many rounds (uniform sample; default 50,000)")
    rt.add_argument("--keep-classifier", action="store_true", help="do not refit the classifier even if labels are logged")
    rt.add_argument("--refit-cache", action="store_true", help="also refit the cache policy (`turnout train cache`; "
                    "encodes every logged prompt, slow on large logs)")
    rt.add_argument("--version", default=None, help="bundle_version of the candidate (default: UTC timestamp)")
    rt.add_argument("--seed", type=int, default=0)
    rt.set_defaults(func=cmd_retrain)

    lp = sub.add_parser("loop", help="end to end: serve v1 with exploration, retrain v2, OPE, A/B v1 vs v2 (simulated models)")
    lp.add_argument("--world", default="configs/world.yaml")
    lp.add_argument("--workdir", default=None, help="default: a new temp directory")
    lp.add_argument("--v1-requests", type=int, default=30, help="simulated logs v1 is trained on (few: v1 is weak)")
    lp.add_argument("--explore-requests", type=int, default=4000, help="requests served by v1 with exploration")
    lp.add_argument("--epsilon", type=float, default=0.3, help="epsilon-greedy exploration of v1 (and v2)")
    lp.add_argument("--ab-requests", type=int, default=3000, help="requests in the A/B experiment")
    lp.add_argument("--seed", type=int, default=0)
    lp.add_argument("--json", default=None, help="also write the result JSON here")
    lp.set_defaults(func=cmd_loop)

    ev = sub.add_parser("eval", help="evaluate a bundle")
    esub = ev.add_subparsers(dest="eval_command", required=True, metavar="WHAT")
    ec = esub.add_parser("classifier", help="accuracy, macro-F1, per-class and latency on labelled prompts")
    ec.add_argument("--bundle", required=True)
    ec.add_argument("--data", required=True, help='labelled JSONL: {"text", "category"}')
    ec.add_argument("--ood", default=None, help="JSONL of out-of-distribution prompts ({\"text\"}; other keys ignored)")
    ec.add_argument("--json", action="store_true")
    ec.add_argument("--out", default=None)
    ec.set_defaults(func=cmd_eval_classifier)
    er = esub.add_parser("router", help="policy from simulated bandit feedback on a full-information outcome table")
    er.add_argument("--train", required=True, help='outcome table JSONL: {"prompt", "outcomes": {model: {"quality", "cost"}}}')
    er.add_argument("--test", required=True)
    er.add_argument("--out", required=True, help="REPORT.json")
    er.add_argument("--seed", type=int, default=0)
    er.add_argument("--bootstrap", type=_positive_int, default=200)
    er.set_defaults(func=cmd_eval_router)
    erp = esub.add_parser("replicas", help="replay a request trace over N simulated replicas under each policy")
    erp.add_argument("--trace", required=True, help="trace JSONL (turnout data convert mooncake|ragpulse|servegen output, or a Mooncake *_trace.jsonl as published) or CSV")
    erp.add_argument("--replicas", type=int, default=4)
    erp.add_argument("--load", type=float, default=0.8,
                     help="offered load / saturated capacity, as a mean over the trace's span (see --max-gap)")
    erp.add_argument("--max-gap", type=_positive_float, default=None, metavar="SECONDS",
                     help="cut idle gaps longer than this (trace time) before scaling to --load: a trace with quiet "
                          "nights or missing days is otherwise overloaded in its busy hours")
    erp.add_argument("--policies", default="round_robin,pow2,least_loaded,prefix_affinity,learned")
    erp.add_argument("--model", default=None, help="replica model dir; default: train one on other traces first")
    erp.add_argument("--out", required=True, help="REPORT.json")
    erp.add_argument("--seed", type=int, default=0)
    erp.set_defaults(func=cmd_eval_replicas)
    eca = esub.add_parser(
        "cache", help="replay a labelled stream through the cache: hit / false-hit rates per matching rule",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""Replays FILE.jsonl rows {"text", "category", "answer_id"} in order (lookup; on a miss,
insert). A hit is false when the cached row's answer_id differs. REPORT.json keys:
  stream            requests, categories, answers, path
  methods.<rule>    overall and per_category {requests, hits, false_hits, hit_rate,
                    false_hit_rate (= false hits / hits), correct_hit_rate} for the rules
                    global_threshold (best single threshold, chosen on this stream: oracle baseline),
                    per_category_thresholds (fitted), verifier (fitted ONNX hit verifier),
                    global_threshold_fitted (one threshold fitted on held-out fitting data:
                    honest baseline), verifier_online (per-answer-cluster thresholds learned
                    online from miss feedback, router.cache_online) and verifier_online_explore
                    (+ exploration); plus threshold / thresholds / cutoffs / settings used and,
                    for the online rows, `feedback` (what they learned from, explorations)
  curves.<rule>     [{threshold|shift|cutoff_shift|max_error, hit_rate, false_hit_rate, correct_hit_rate}]
  at_target         best point of each curve with false_hit_rate <= --target-false-hit-rate, and
                    hit_rate_ratio_{per_category,verifier,verifier_online}_vs_global
  matched           the verifier as fitted (and each online row) vs the oracle global threshold at
                    its realised false_hit_rate, and vs global_threshold_fitted, with hit-rate ratios
  latency_ms        lookup_p50, lookup_p99 (real cache, excluding the encoder), encoder_p50, entries;
                    online: the online rule on the real cache (lookup/insert p50/p99, agreement)
  fitting           what the fitted rules were trained on
Fitting never uses the evaluated stream: --policy DIR (from `turnout train cache`), or fitted now on
generated data.""")
    eca.add_argument("--stream", required=True, help="JSONL stream of {text, category, answer_id}")
    eca.add_argument("--out", required=True, help="REPORT.json")
    eca.add_argument("--policy", default=None, help="directory written by `turnout train cache`")
    eca.add_argument("--target-false-hit-rate", type=_fraction, default=0.05)
    eca.add_argument("--shared-dir", default="../shared/data", help="public datasets added to the generated fit data")
    eca.add_argument("--seed", type=int, default=0)
    eca.set_defaults(func=cmd_eval_cache)

    sv = sub.add_parser("serve", help="run the Ray Serve application")
    sv.add_argument("--config", default="configs/serve.yaml")
    sv.add_argument("--port", type=int, default=None)
    sv.add_argument("--emit-serve-config", metavar="FILE", default=None,
                    help="write a Ray Serve config (for `serve run`/`serve deploy`) for this config and exit")
    sv.set_defaults(func=cmd_serve)

    rp = sub.add_parser("replay", help="send requests to a running gateway and summarise")
    rp.add_argument("--url", default="http://127.0.0.1:8000")
    rp.add_argument("--requests", required=True, help="JSONL of chat bodies or {\"text\"} prompts")
    rp.add_argument("--limit", type=int, default=None)
    rp.add_argument("--concurrency", type=int, default=8)
    rp.add_argument("--json", default=None, help="write the summary JSON here")
    rp.add_argument("--quiet", action="store_true")
    rp.set_defaults(func=cmd_replay)

    dm = sub.add_parser("demo", help="simulate, train, serve and replay end to end (simulated models)")
    dm.add_argument("--requests", type=int, default=300, help="requests to replay over HTTP")
    dm.add_argument("--train-requests", type=int, default=4000, help="simulated logged requests to train on")
    dm.add_argument("--workdir", default=None, help="default: a new temp directory")
    dm.add_argument("--port", type=int, default=None, help="default: a free port")
    dm.add_argument("--concurrency", type=int, default=8)
    dm.add_argument("--json", default=None, help="write the result JSON here")
    dm.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:  # e.g. `turnout ... | head`
        sys.stderr.close()
        return 0
    except (RouterError, ValueError, OSError) as e:  # OSError: a path that exists as a file, no permission, ...
        print(f"turnout: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
