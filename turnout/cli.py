"""The ``turnout`` command. Heavy imports happen inside each command so ``--help`` is instant.

Errors that are the user's (bad config, bad bundle, bad data) print one clear message and exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from router.errors import RouterError

Handler = Callable[[argparse.Namespace], int]


def _emit(obj: object, out: str | None = None) -> None:
    text = json.dumps(obj, indent=2, default=str)
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
    report = eval_replicas_cli(Path(a.trace), a.replicas, a.load, policies, Path(a.model) if a.model else None,
                               Path(a.out), seed=a.seed)
    _emit(report)
    return 0


def cmd_train_replicas(a: argparse.Namespace) -> int:
    from training.replica_model import train_replicas_cli

    _emit(train_replicas_cli(Path(a.logs), Path(a.out)))
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


def cmd_eval_classifier(a: argparse.Namespace) -> int:
    from router.bundle import load_bundle
    from training.classifier_eval import eval_classifier_report
    from training.formats import read_jsonl

    if (Path(a.bundle) / "manifest.json").exists():
        load_bundle(a.bundle)  # verify hashes before trusting the files
    rows = read_jsonl(a.data, "labelled")
    ood = [r.text for r in read_jsonl(a.ood, "labelled")] if a.ood else None
    report = eval_classifier_report(Path(a.bundle), [r.text for r in rows], [r.category for r in rows], ood)
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="turnout", description="Learned query router and load balancer for LLM traffic.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="convert public datasets; inspect and validate logs")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    conv = dsub.add_parser("convert", help="turn a public dataset into turnout's JSONL formats")
    conv.add_argument("source", help="routerbench | routellm | clinc150 | mooncake | ragpulse | servegen | sharegpt")
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
    sim.add_argument("--requests", type=int, default=4000)
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

    ope = sub.add_parser("ope", help="off-policy evaluation of a bundle's policy on logged traffic")
    ope.add_argument("--logs", required=True)
    ope.add_argument("--bundle", required=True)
    ope.add_argument("--json", action="store_true", help="print JSON (the default and only format for now)")
    ope.add_argument("--out", default=None, help="also write the JSON report here")
    ope.add_argument("--bootstrap", type=int, default=200)
    ope.add_argument("--seed", type=int, default=0)
    ope.set_defaults(func=cmd_ope)

    ev = sub.add_parser("eval", help="evaluate a bundle")
    esub = ev.add_subparsers(dest="eval_command", required=True, metavar="WHAT")
    ec = esub.add_parser("classifier", help="accuracy, macro-F1, per-class and latency on labelled prompts")
    ec.add_argument("--bundle", required=True)
    ec.add_argument("--data", required=True, help='labelled JSONL: {"text", "category"}')
    ec.add_argument("--ood", default=None, help="JSONL of out-of-distribution prompts ({\"text\", \"category\": \"ood\"})")
    ec.add_argument("--json", action="store_true")
    ec.add_argument("--out", default=None)
    ec.set_defaults(func=cmd_eval_classifier)
    er = esub.add_parser("router", help="policy from simulated bandit feedback on a full-information outcome table")
    er.add_argument("--train", required=True, help='outcome table JSONL: {"prompt", "outcomes": {model: {"quality", "cost"}}}')
    er.add_argument("--test", required=True)
    er.add_argument("--out", required=True, help="REPORT.json")
    er.add_argument("--seed", type=int, default=0)
    er.add_argument("--bootstrap", type=int, default=200)
    er.set_defaults(func=cmd_eval_router)
    erp = esub.add_parser("replicas", help="replay a request trace over N simulated replicas under each policy")
    erp.add_argument("--trace", required=True, help="trace JSONL (turnout data convert mooncake|ragpulse|servegen) or CSV")
    erp.add_argument("--replicas", type=int, default=4)
    erp.add_argument("--load", type=float, default=0.8, help="offered load / saturated capacity")
    erp.add_argument("--policies", default="round_robin,pow2,least_loaded,prefix_affinity,learned")
    erp.add_argument("--model", default=None, help="replica model dir; default: train one on other traces first")
    erp.add_argument("--out", required=True, help="REPORT.json")
    erp.add_argument("--seed", type=int, default=0)
    erp.set_defaults(func=cmd_eval_replicas)

    sv = sub.add_parser("serve", help="run the Ray Serve application")
    sv.add_argument("--config", default="configs/serve.yaml")
    sv.add_argument("--port", type=int, default=None)
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
    except (RouterError, ValueError, FileNotFoundError) as e:
        print(f"turnout: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `turnout ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
