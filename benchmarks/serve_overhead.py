"""What the routing gateway costs on top of a passthrough, end to end over HTTP on one Ray cluster.

Two Serve apps run side by side in **one** Ray cluster and receive the same load (``--requests``
chat requests per app, ``--concurrency`` clients, non-streaming):

* ``gateway``      the full turnout app (``serving.launcher.start`` -> ``serving.app.build_app``, a bundle
                   trained from the simulator): classify, cache, policy, decision log, then the model
                   deployment;
* ``passthrough``  ``serving.passthrough``: a minimal FastAPI ingress that calls the **same** model
                   deployments (the same replicas, via ``serve.get_deployment_handle``) with no
                   routing decision; models are cycled per request.

Backends are the SIMULATED engine with (almost) zero think time: ``time_scale`` is the smallest the
config allows, so a multi-second simulated answer sleeps microseconds and what is measured is the
serving path itself. Both apps are driven **alternately in rounds** (G,P then P,G, ...) after a warm-up
so the noise of the shared 2-core machine hits both alike; the per-round ratios show that noise.
Targets (issue 7): added p50 <= 1 ms, gateway throughput >= 90% of passthrough.

``--profile S`` additionally samples the gateway replica with py-spy during S seconds of gateway-only
load and prints where its time goes (top functions by own samples, and the decision's share).

CPU per request: around every measured round the CPU time (user + system, ``/proc``) of this process
and of the Ray cluster it started is read per role (gateway ingress, passthrough ingress, model
replicas, HTTP proxy, other Ray processes, the load generator), so the JSON's ``cpu`` block prices
each app in CPU ms per request -- steadier than wall time on a box that other work shares.
The cluster is CPU-bound at concurrency 16 (``cpu.cores_busy`` ~ the core count for both apps), so the
throughput ratio follows the total CPU ratio and closed-loop latency is 16 / throughput. Where the
gateway's extra CPU goes: ``cpu.ingress_threads_ms_per_request`` splits each ingress replica's CPU by
thread (/proc per thread, Python thread names from ``py-spy dump``): the extra is on the user event
loop, where FastAPI, ``GatewayCore`` and ``Router.decide`` run; ``decide_cpu_in_process`` is the CPU
of ``Router.decide`` over the same prompts by cache tier (a semantic-tier decision embeds the prompt
with the sentence encoder, several times the others). ``open_loop``: Poisson arrivals at a fraction
(``--open-loop``, default 0.5) of the passthrough's throughput, the added latency below saturation.
Every phase (warm-up, rounds, concurrency 1, open loop) sends fresh prompts: a repeated prompt could
be a gateway cache hit.
``--decide-in-thread`` runs the gateway with ``gateway.decide_in_thread: true`` (``Router.decide`` on a
decide thread whenever other requests are in flight; see ``serving.gateway``).

    python benchmarks/serve_overhead.py [--quick] [--profile 10] [--decide-in-thread] [--open-loop 0.5]
        ->  benchmarks/results/serve_overhead[_quick].{json,png}
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CONFIGS, console, environment, result_path, table, write_json  # noqa: E402

PASSTHROUGH_APP, PASSTHROUGH_PREFIX = "passthrough", "/passthrough"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000, help="measured requests per app")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=8, help="alternating rounds the requests are split into")
    ap.add_argument("--warmup", type=int, default=200, help="unmeasured requests per app first")
    ap.add_argument("--train-requests", type=int, default=2000, help="simulated logs the bundle is trained on")
    ap.add_argument("--serial", type=int, default=200,
                    help="also: this many requests per app at concurrency 1 (added latency without queueing)")
    ap.add_argument("--open-loop", type=float, default=0.5,
                    help="also: Poisson arrivals at this fraction of the passthrough's measured throughput "
                         "(below saturation: the added latency without CPU queueing); 0 = off")
    ap.add_argument("--open-loop-requests", type=int, default=300, help="requests per app in the open-loop run")
    ap.add_argument("--profile", type=float, default=0.0, help="py-spy the gateway replica for S seconds of load")
    ap.add_argument("--quick", action="store_true", help="400 requests, 4 rounds, 50 warm-up (smoke run)")
    ap.add_argument("--ingress-replicas", type=int, default=2,
                    help="replicas of the gateway and, equally, of the passthrough ingress")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--decide-in-thread", action="store_true",
                    help="the gateway runs Router.decide on its decide thread (gateway.decide_in_thread)")
    args = ap.parse_args(argv)
    if args.quick:
        args.requests, args.rounds, args.warmup = 400, 4, 50
        args.open_loop_requests = min(args.open_loop_requests, 150)
    n_open = args.open_loop_requests if args.open_loop > 0 else 0
    t_start = time.perf_counter()

    from ray import serve

    from serving import launcher
    from serving.passthrough import build_passthrough
    from training.world import generate_requests, load_world

    world = load_world(CONFIGS / "world.yaml")
    work = Path(tempfile.mkdtemp(prefix="turnout-overhead-"))
    ray_tmp = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
    cfg = _config(work, args.train_requests, args.ingress_replicas, args.decide_in_thread)
    try:
        with console.status(f"building a bundle from {args.train_requests} simulated requests"):
            launcher.ensure_bundle(cfg, step=lambda _: None)
        with console.status("starting Ray + the turnout app"):
            url = launcher.start(cfg, temp_dir=ray_tmp)
        models = list(world.router.model_names)
        serve.run(build_passthrough(launcher.APP_NAME, models, world.router.taxonomy[0], args.ingress_replicas), name=PASSTHROUGH_APP,
                  route_prefix=PASSTHROUGH_PREFIX, blocking=False)
        launcher.wait_healthy(url + PASSTHROUGH_PREFIX)

        # fresh prompts for every phase: a prompt the gateway saw before could be a cache hit (no model call)
        n_prompts = args.warmup + args.requests + args.serial + n_open
        prompts = [r.prompt for r in generate_requests(world, n_prompts, seed=args.seed + 4242)]
        # a unique tag per request: the cache never answers, so every gateway request reaches a model; the
        # true category tells the simulated backend what to simulate, the same for both apps
        bodies = [{"model": "auto", "messages": [{"role": "user", "content": f"{p.text} [#{i}]"}],
                   "metadata": {"sim_category": p.category}} for i, p in enumerate(prompts)]
        same_models, decide_cpu = _same_models(cfg, bodies, args.seed)
        pbodies = [{**b, "model": m} for b, m in zip(bodies, same_models)]
        targets = {"gateway": f"{url}/v1/chat/completions", "passthrough": f"{url}{PASSTHROUGH_PREFIX}/v1/chat/completions"}

        with console.status(f"warm-up: {args.warmup} requests per app"):
            for name, bs in (("gateway", bodies), ("passthrough", pbodies)):
                asyncio.run(_load(targets[name], bs[: args.warmup], args.concurrency))
        runs: dict[str, list[dict[str, Any]]] = {"gateway": [], "passthrough": []}
        cpu: dict[str, Counter[str]] = {"gateway": Counter(), "passthrough": Counter()}
        threads: dict[str, Counter[tuple[int, int, str]]] = {"gateway": Counter(), "passthrough": Counter()}
        blocks = np.array_split(np.arange(args.warmup, args.warmup + args.requests), args.rounds)
        with console.status(f"{args.rounds} alternating rounds x {args.requests // args.rounds} requests per app"):
            for r, idx in enumerate(blocks):
                order = ("gateway", "passthrough") if r % 2 == 0 else ("passthrough", "gateway")
                for name in order:
                    bs = bodies if name == "gateway" else pbodies
                    before, tbefore = _cpu_by_role(), _ingress_threads(INGRESS[name])
                    runs[name].append(asyncio.run(_load(targets[name], [bs[i] for i in idx], args.concurrency)))
                    cpu[name].update(_cpu_by_role() - before)
                    threads[name].update(_ingress_threads(INGRESS[name]) - tbefore)
        thread_names = _python_thread_names(tuple(INGRESS.values()))  # after the rounds: lazily started pools exist
        serial: dict[str, list[dict[str, Any]]] = {"gateway": [], "passthrough": []}
        if args.serial:
            with console.status(f"concurrency 1: {args.serial} requests per app, 2 alternating rounds"):
                first = args.warmup + args.requests
                for r, idx in enumerate(np.array_split(np.arange(first, first + args.serial), 2)):
                    for name in (("gateway", "passthrough") if r == 0 else ("passthrough", "gateway")):
                        bs = bodies if name == "gateway" else pbodies
                        serial[name].append(asyncio.run(_load(targets[name], [bs[i] for i in idx], 1)))
        open_runs: dict[str, list[dict[str, Any]]] = {"gateway": [], "passthrough": []}
        open_rate = 0.0
        if n_open:
            p_runs = runs["passthrough"]
            open_rate = args.open_loop * sum(b["latency_ms"].size for b in p_runs) / sum(b["wall_s"] for b in p_runs)
            first = args.warmup + args.requests + args.serial
            with console.status(f"open loop: {n_open} requests per app at {open_rate:.1f} req/s, 2 alternating rounds"):
                for r, idx in enumerate(np.array_split(np.arange(first, first + n_open), 2)):
                    for name in (("gateway", "passthrough") if r == 0 else ("passthrough", "gateway")):
                        bs = bodies if name == "gateway" else pbodies
                        open_runs[name].append(asyncio.run(_load(targets[name], [bs[i] for i in idx], 256,
                                                                 rate=open_rate, seed=args.seed + r)))
        profile = _profile(targets["gateway"], bodies, args) if args.profile > 0 else None
    finally:
        launcher.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)

    result = _report(runs, args)
    result["cpu"] = _report_cpu(cpu, runs)
    result["cpu"]["ingress_threads_ms_per_request"] = _report_threads(threads, thread_names, runs, decide_cpu)
    result["decide_cpu_in_process"] = decide_cpu
    if args.serial:
        result["concurrency_1"] = _report_serial(serial)
    if n_open:
        result["open_loop"] = _report_open(open_runs, open_rate, args.open_loop)
    result.update(benchmark="serve_overhead", quick=args.quick, profile=profile,
                  settings={"requests_per_app": args.requests, "ingress_replicas": args.ingress_replicas, "concurrency": args.concurrency, "rounds": args.rounds,
                            "warmup_per_app": args.warmup, "train_requests": args.train_requests, "stream": False,
                            "backend": cfg.backend.model_dump(), "models": models,
                            "gateway": cfg.gateway.model_dump(), "deployments": cfg.models.model_dump(),
                            "passthrough_models": ("per request, the model the same bundle chooses for that "
                                                   "prompt in process (same model mix as the gateway)"),
                            "cache": "every prompt carries a unique tag, so no cache hits",
                            "decide_in_thread": args.decide_in_thread, "open_loop_fraction": args.open_loop,
                            "open_loop_requests_per_app": n_open},
                  environment=environment(), wall_s=round(time.perf_counter() - t_start, 1))
    result["plot"] = _plot(runs, args.quick)
    path = write_json("serve_overhead", result, quick=args.quick)
    console.print(f"wrote {path} in {result['wall_s']} s")
    return 0


def _config(work: Path, train_requests: int, ingress_replicas: int = 1, decide_in_thread: bool = False) -> Any:
    """The benchmark's ServeConfig: a fresh bundle dir, simulated backends with the smallest time scale."""
    from pydantic import ValidationError

    from serving.config import ServeConfig
    from turnout.demo import free_port

    base: dict[str, Any] = {
        "port": free_port(), "bundle": str(work / "bundle"), "log_dir": str(work / "logs"), "base_dir": str(work),
        "build_if_missing": {"world": str(CONFIGS / "world.yaml"), "requests": train_requests},
        "models": {"num_replicas": 1, "num_cpus": 0.1, "max_ongoing_requests": 64},
        "gateway": {"num_replicas": ingress_replicas, "num_cpus": 0.2, "max_ongoing_requests": 128,
                    "decide_in_thread": decide_in_thread},
    }
    for scale in (0.0, 1e-6):  # zero think time if the config allows it, else a microsecond per simulated second
        try:
            return ServeConfig.model_validate({**base, "backend": {"kind": "simulated", "world": str(CONFIGS / "world.yaml"),
                                                                   "time_scale": scale}})
        except ValidationError:
            continue
    raise RuntimeError("no simulated time_scale accepted by ServeConfig")


def _same_models(cfg: Any, bodies: Sequence[dict[str, Any]], seed: int) -> tuple[list[str], dict[str, Any]]:
    """The model the gateway's bundle picks for each body (an in-process ``Router.decide``, outside the
    timed load): the passthrough then sends the same mix of models, so the two apps differ only in the
    routing work and not in which (differently busy) model deployments they load.

    Also the CPU of each of those decisions (``time.thread_time``; onnxruntime runs on the calling
    thread) by the cache tier it chose: a semantic-tier decision embeds the prompt with the cache's
    sentence encoder, several times the cost of the others, so the mean over this load's tier mix --
    not a skip/exact-tier figure -- is what the gateway pays per request for its decision."""
    from router.bundle import load_bundle
    from router.decision import Router
    from router.request import Message, Request

    router = Router(load_bundle(cfg.path(cfg.bundle)))
    rng = np.random.default_rng(seed)
    models: list[str] = []
    cpu_by_tier: dict[str, list[float]] = {}
    for b in bodies:
        request = Request(messages=tuple(Message(m["role"], m["content"]) for m in b["messages"]))
        t0 = time.thread_time()
        d = router.decide(request, now_s=time.time(), rng=rng)
        cpu_by_tier.setdefault(d.cache_tier, []).append((time.thread_time() - t0) * 1000.0)
        models.append(d.model)
    every = [x for v in cpu_by_tier.values() for x in v]
    return models, {"n": len(every), "mean_ms": float(np.mean(every)),
                    "by_cache_tier": {t: {"n": len(v), "share": len(v) / len(every), "mean_ms": float(np.mean(v)),
                                          "p50_ms": float(np.median(v))} for t, v in sorted(cpu_by_tier.items())}}


async def _load(url: str, bodies: Sequence[dict[str, Any]], concurrency: int, rate: float | None = None,
                seed: int = 0) -> dict[str, Any]:
    """``concurrency`` clients over one keep-alive pool; per-request latency (ms), wall time, statuses.

    With ``rate`` (req/s): open loop instead -- requests start at Poisson arrival times whatever the
    answers do (at most ``concurrency`` connections), and latency counts from the scheduled start, so a
    slow answer cannot hide the requests queued behind it."""
    import httpx

    if rate is not None:
        return await _load_open(url, bodies, concurrency, rate, seed)
    tally = _Tally(len(bodies))
    it = iter(range(len(bodies)))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60.0) as client:
        async def worker() -> None:
            for i in it:
                await tally.post(client, url, bodies[i], i, time.perf_counter())

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return tally.result(wall)


class _Tally:
    """Per-request latency (ms, from ``start``), statuses, models, cache tiers and decision times of one load."""

    def __init__(self, n: int) -> None:
        self.lat = np.full(n, np.nan)
        self.status: Counter[int] = Counter()
        self.models: Counter[str] = Counter()
        self.decision_ms: list[float] = []
        self.tiers = np.full(n, "", dtype=object)

    async def post(self, client: Any, url: str, body: dict[str, Any], i: int, start: float) -> None:
        import httpx

        try:
            r = await client.post(url, json=body)
            code = r.status_code
        except httpx.HTTPError:
            code = 0
        self.lat[i] = (time.perf_counter() - start) * 1000.0
        self.status[code] += 1
        if code == 200:
            answer = r.json()
            self.models[answer.get("model", "?")] += 1
            t = answer.get("turnout") or {}
            self.tiers[i] = str(t.get("cache_tier", ""))
            if t.get("decision_ms") is not None:
                self.decision_ms.append(float(t["decision_ms"]))

    def result(self, wall: float) -> dict[str, Any]:
        return {"latency_ms": self.lat, "wall_s": wall, "status": dict(self.status), "models": dict(self.models),
                "decision_ms": self.decision_ms, "cache_tier": self.tiers}


async def _load_open(url: str, bodies: Sequence[dict[str, Any]], connections: int, rate: float,
                     seed: int) -> dict[str, Any]:
    import httpx

    n = len(bodies)
    starts = np.cumsum(np.random.default_rng(seed).exponential(1.0 / rate, n))
    tally = _Tally(n)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits, timeout=60.0) as client:
        t0 = time.perf_counter()

        async def one(i: int) -> None:
            due = t0 + starts[i]
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            await tally.post(client, url, bodies[i], i, due)

        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - t0
    return tally.result(wall)


def _profile(url: str, bodies: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any] | None:
    """py-spy the gateway replica while it serves gateway-only load for ``args.profile`` seconds."""
    pid = _gateway_pid()
    if pid is None or not shutil.which("py-spy"):
        console.print("[yellow]profile skipped: no gateway replica process found or no py-spy[/]")
        return None
    out = result_path("serve_overhead_profile", "txt", args.quick)
    raw = Path(tempfile.mkdtemp(prefix="turnout-pyspy-")) / "gateway.raw.txt"  # ~0.5 MB: not evidence to commit
    spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--duration", str(int(args.profile)), "--rate", "200",
                            "--format", "raw", "--output", str(raw), "--nonblocking", "--threads"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + args.profile
    n = 0
    while time.monotonic() < deadline and spy.poll() is None:
        chunk = [_retagged(bodies[(n + i) % len(bodies)], f"p{n + i}") for i in range(400)]  # fresh: no cache hits
        asyncio.run(_load(url, chunk, args.concurrency))
        n += len(chunk)
    _, err = spy.communicate(timeout=60)
    if spy.returncode != 0 or not raw.exists():
        console.print(f"[yellow]py-spy failed ({spy.returncode}): {err.decode()[-300:]}[/]")
        return None
    summary = _summarise_stacks(raw.read_text())
    out.write_text("\n".join(f"{share:6.1%}  {name}" for name, share in summary["self_top"]) + "\n")
    rows = [[name, share] for name, share in summary["inclusive"]]
    table(f"Where the gateway replica's time goes (py-spy, {n} requests, {summary['samples']} samples, "
          "share of samples including callees)", ["frame", "share"], rows)
    table("Top functions by own samples", ["function", "share"], [[a, b] for a, b in summary["self_top"][:15]])
    table("The user event loop thread only (FastAPI handler, GatewayCore, Router.decide): share of its samples",
          ["frame", "share"], [[name, share] for name, share in summary["loop_inclusive"]],
          caption=f"{summary['loop_samples']} of {summary['samples']} samples are on that thread; samples include "
                  "time spent waiting for the GIL")
    return {"pid": pid, "requests": n, **summary, "raw": str(raw)}


def _retagged(body: dict[str, Any], tag: str) -> dict[str, Any]:
    """``body`` with ``tag`` appended to its last message: a prompt no phase has sent before."""
    messages = [*body["messages"][:-1], {**body["messages"][-1], "content": f"{body['messages'][-1]['content']} [{tag}]"}]
    return {**body, "messages": messages}


def _gateway_pid() -> int | None:
    """A gateway replica among *this* process's descendants (other Ray clusters may run on the box;
    the state API needs the dashboard, which the launcher leaves off)."""
    return next(iter(_descendants(INGRESS["gateway"])), None)


ROLES = (("ServeReplica:turnout:Gateway", "gateway ingress replicas"),
         ("ServeReplica:passthrough:Passthrough", "passthrough ingress replicas"),
         ("ServeReplica:turnout:LLM_", "model replicas"),
         ("ProxyActor", "HTTP proxy"),
         ("", "other Ray processes (controller, raylet, GCS, idle workers)"))
CLIENT_ROLE = "load generator (this process: httpx clients + Ray driver)"


def _cpu_by_role() -> Counter[str]:
    """CPU seconds (user + system, from /proc) used so far by this process and its descendants (the
    Ray cluster it started), summed by role. Differences over a round price each app per request in
    CPU rather than in wall time, which the other work on a shared box distorts much more."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stat: dict[int, list[str]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            stat[int(d.name)] = fields
            children.setdefault(int(fields[1]), []).append(int(d.name))
    out: Counter[str] = Counter()
    me = os.getpid()
    todo = [me]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        fields = stat.get(pid)
        if fields is None:
            continue
        seconds = (int(fields[11]) + int(fields[12])) / tick  # utime + stime (fields 14, 15 of stat)
        if pid == me:
            out[CLIENT_ROLE] += seconds
            continue
        try:
            cmd = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmd = ""
        out[next(name for marker, name in ROLES if marker in cmd)] += seconds
    return out


INGRESS = {"gateway": "ServeReplica:turnout:Gateway", "passthrough": "ServeReplica:passthrough:Passthrough"}
# Python thread name (py-spy dump) -> what runs there; threads py-spy cannot name are Ray's C++ threads
THREAD_GROUPS = (("_run_user_code_event_loop", "user event loop (FastAPI handler, GatewayCore, Router.decide)"),
                 ("_run_router_event_loop", "Serve handle router loop (model replica choice)"),
                 ("AsyncIO Thread", "Ray asyncio thread (replica RPCs)"),
                 ("decision-log", "decision-log writer thread"),
                 ("decide", "decide thread (gateway.decide_in_thread)"),
                 ("ThreadPool", "thread pools (asyncio.to_thread, ...)"))
NATIVE_THREADS = "Ray core worker C++ threads (and threads gone before the final dump)"
OTHER_PY_THREADS = "other Python threads"


def _descendants(marker: str) -> list[int]:
    """Pids among this process's descendants whose command line contains ``marker``."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            if marker in (Path("/proc") / str(pid) / "cmdline").read_bytes().decode(errors="replace"):
                out.append(pid)
        except OSError:
            continue
    return out


def _ingress_threads(marker: str) -> Counter[tuple[int, int, str]]:
    """CPU seconds so far of every thread of the ingress replicas matching ``marker``, keyed by
    (pid, tid, OS thread name)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: Counter[tuple[int, int, str]] = Counter()
    for pid in _descendants(marker):
        try:
            tasks = list((Path("/proc") / str(pid) / "task").iterdir())
        except OSError:
            continue
        for t in tasks:
            try:
                stat = (t / "stat").read_text()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat.rsplit(")", 1)[1].split()
            out[(pid, int(t.name), comm)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def _python_thread_names(markers: Sequence[str]) -> dict[int, dict[int, str]]:
    """{pid: {tid: Python thread name}} of the matching replicas from ``py-spy dump`` (Python threads
    do not name their OS threads, so /proc alone cannot tell the event loop from Ray's threads);
    {} without py-spy."""
    import re

    if not shutil.which("py-spy"):
        return {}
    names: dict[int, dict[int, str]] = {}
    for pid in [p for m in markers for p in _descendants(m)]:
        try:
            dump = subprocess.run(["py-spy", "dump", "--pid", str(pid), "--nonblocking"], capture_output=True,
                                  text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        names[pid] = {int(m.group(1)): m.group(2) for m in re.finditer(r'^Thread (\d+) \([^)]*\): "(.*)"', dump, re.M)}
    return names


def _report_threads(threads: dict[str, Counter[tuple[int, int, str]]], names: dict[int, dict[int, str]],
                    runs: dict[str, list[dict[str, Any]]], decide_cpu: dict[str, Any]) -> dict[str, Any]:
    """The ingress CPU per request split by thread: shows which thread the gateway's extra CPU is on
    (the user event loop, where the handler and ``Router.decide`` run) and how much of it the
    in-process decision CPU over the same prompts explains."""
    n = {k: max(sum(b["latency_ms"].size for b in v), 1) for k, v in runs.items()}
    groups = [g for _, g in THREAD_GROUPS] + [OTHER_PY_THREADS, NATIVE_THREADS]
    per: dict[str, dict[str, float]] = {}
    for app, counter in threads.items():
        acc: Counter[str] = Counter()
        for (pid, tid, _), seconds in counter.items():
            py = names.get(pid, {}).get(tid)
            group = NATIVE_THREADS if py is None else next((g for key, g in THREAD_GROUPS if key in py), OTHER_PY_THREADS)
            acc[group] += seconds
        per[app] = {g: 1000.0 * acc[g] / n[app] for g in groups}
    if not names:
        console.print("[yellow]no py-spy: ingress threads not named (all counted as native)[/]")
    loop = groups[0]
    added_loop = per["gateway"][loop] - per["passthrough"][loop]
    table("Ingress CPU ms per request by thread (/proc per thread, named with py-spy dump)",
          ["thread", "gateway", "passthrough", "gateway - passthrough"],
          [[g, per["gateway"][g], per["passthrough"][g], per["gateway"][g] - per["passthrough"][g]] for g in groups],
          caption=f"added on the user event loop: {added_loop:.2f} ms per request; Router.decide in process over "
                  f"the same prompts: {decide_cpu['mean_ms']:.2f} ms CPU mean ("
                  + ", ".join(f"{t} {v['mean_ms']:.2f} ms x {v['share']:.0%}" for t, v in decide_cpu["by_cache_tier"].items())
                  + ")")
    return {"by_thread": per, "added_user_event_loop_ms": added_loop, "named": bool(names),
            "decide_cpu_mean_ms": decide_cpu["mean_ms"]}


def _report_cpu(cpu: dict[str, Counter[str]], runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """CPU ms per request by role while each app was loaded (rounds alternate, so background work of the
    cluster lands on both alike). The ingress rows are the cleanest comparison: the gateway's own work
    (decision, cache, log, metrics) on top of what the passthrough ingress does."""
    n = {k: sum(b["latency_ms"].size for b in v) for k, v in runs.items()}
    roles = [name for _, name in ROLES] + [CLIENT_ROLE]
    per = {app: {role: 1000.0 * cpu[app][role] / max(n[app], 1) for role in roles} for app in cpu}
    ingress = {"gateway": per["gateway"]["gateway ingress replicas"],
               "passthrough": per["passthrough"]["passthrough ingress replicas"]}
    total = {app: sum(per[app].values()) for app in per}
    # CPU seconds of this cluster per wall second: ~2 on the 2-core box means the load saturates the CPU,
    # so throughput ~ 1 / (CPU per request) and the throughput ratio ~ the inverse of the total CPU ratio
    cores_busy = {app: sum(cpu[app].values()) / max(sum(b["wall_s"] for b in runs[app]), 1e-9) for app in cpu}
    rows = [[role, per["gateway"][role], per["passthrough"][role]] for role in roles]
    rows.append(["all of the above", total["gateway"], total["passthrough"]])
    table("CPU ms per request while each app was loaded (user + system, /proc; this cluster's processes only)",
          ["process role", "gateway run", "passthrough run"], rows,
          caption=f"ingress CPU per request: gateway {ingress['gateway']:.2f} ms vs passthrough "
                  f"{ingress['passthrough']:.2f} ms (+{ingress['gateway'] - ingress['passthrough']:.2f} ms); "
                  f"all processes: ratio {total['gateway'] / max(total['passthrough'], 1e-9):.2f}; cores busy "
                  f"{cores_busy['gateway']:.2f} / {cores_busy['passthrough']:.2f} of {os.cpu_count()}")
    return {"ms_per_request": per, "ingress_ms_per_request": ingress,
            "ingress_added_ms_per_request": ingress["gateway"] - ingress["passthrough"],
            "total_ms_per_request": total,
            "total_ratio": total["gateway"] / max(total["passthrough"], 1e-9), "cores_busy": cores_busy}


MARKERS = {
    "router decide (classify + featurize + policy)": "decide (router/decision.py",
    "semantic-tier prompt embedding (sentence encoder)": "_embedding (router/decision.py",
    "classifier ONNX + OOD": "(router/classifier.py",
    "policy ONNX": "(router/policy.py",
    "featurize": "featurize (router/features.py",
    "decision log append/flush": "serving/decision_log.py",
    "gateway core (serving/gateway.py)": "serving/gateway.py",
    "model call (handle.remote + await)": "_call_model",
    "Ray Serve replica/handle machinery": "ray/serve/",
    "FastAPI/Starlette": "starlette/",
    "JSON": "json/",
    "event loop idle (select/epoll)": "select (",
}


def _summarise_stacks(raw: str) -> dict[str, Any]:
    """py-spy ``raw`` format: ``frame;frame;...;leaf count`` per line; with ``--threads`` the first
    frame is ``thread (tid): name``, used to summarise the user event loop thread on its own."""
    total = loop_total = 0
    inclusive: Counter[str] = Counter()
    loop: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        total += c
        head, _, rest = stack.partition(";")
        on_loop = head.startswith("thread (") and "_run_user_code_event_loop" in head
        if head.startswith("thread ("):
            stack = rest
        loop_total += c if on_loop else 0
        for name, marker in MARKERS.items():
            if marker in stack:
                inclusive[name] += c
                loop[name] += c if on_loop else 0
        own[stack.split(";")[-1]] += c
    total, loop_total = max(total, 1), max(loop_total, 1)
    return {"samples": total, "inclusive": [(k, inclusive[k] / total) for k in MARKERS],
            "self_top": [(k, v / total) for k, v in own.most_common(30)],
            "loop_samples": loop_total, "loop_inclusive": [(k, loop[k] / loop_total) for k in MARKERS]}


def _stats(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    lat = np.concatenate([b["latency_ms"] for b in blocks])
    wall = sum(b["wall_s"] for b in blocks)
    status: Counter[int] = Counter()
    models: Counter[str] = Counter()
    for b in blocks:
        status.update(b["status"])
        models.update(b["models"])
    dec = np.concatenate([np.asarray(b["decision_ms"], dtype=float) for b in blocks])
    tiers = np.concatenate([b["cache_tier"] for b in blocks])
    by_tier = {str(t): {"n": int((tiers == t).sum()), "p50_ms": float(np.percentile(lat[tiers == t], 50))}
               for t in sorted(set(tiers.tolist())) if t}
    ok = status.get(200, 0)
    return {"n": int(lat.size), "ok": ok, "errors": int(lat.size - ok), "status": {str(k): v for k, v in status.items()},
            "p50_ms": float(np.percentile(lat, 50)), "p90_ms": float(np.percentile(lat, 90)),
            "p99_ms": float(np.percentile(lat, 99)), "mean_ms": float(lat.mean()),
            "throughput_rps": float(lat.size / wall), "wall_s": wall, "models": dict(models),
            "by_cache_tier": by_tier,
            "decision_ms_p50": float(np.median(dec)) if dec.size else None,
            "decision_ms_p99": float(np.percentile(dec, 99)) if dec.size else None}


def _report(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> dict[str, Any]:
    s = {k: _stats(v) for k, v in runs.items()}
    g, p = s["gateway"], s["passthrough"]
    added_p50 = g["p50_ms"] - p["p50_ms"]
    ratio = g["throughput_rps"] / p["throughput_rps"]
    per_round = [{"added_p50_ms": float(np.median(a["latency_ms"]) - np.median(b["latency_ms"])),
                  "throughput_ratio": (a["latency_ms"].size / a["wall_s"]) / (b["latency_ms"].size / b["wall_s"])}
                 for a, b in zip(runs["gateway"], runs["passthrough"])]
    table(f"Serve overhead: {args.requests} requests per app, concurrency {args.concurrency}, {args.rounds} alternating "
          "rounds, SIMULATED zero-think-time backends",
          ["app", "ok", "errors", "p50 ms", "p90 ms", "p99 ms", "mean ms", "req/s", "decision p50 ms"],
          [[k, v["ok"], v["errors"], v["p50_ms"], v["p90_ms"], v["p99_ms"], v["mean_ms"], v["throughput_rps"],
            v["decision_ms_p50"]] for k, v in s.items()])
    rr = [r["added_p50_ms"] for r in per_round]
    tr = [r["throughput_ratio"] for r in per_round]
    targets = {"added_p50_ms": {"value": added_p50, "target": "<= 1.0", "met": added_p50 <= 1.0},
               "throughput_ratio": {"value": ratio, "target": ">= 0.90", "met": ratio >= 0.90}}
    table("Gateway vs passthrough (measured in the same run)", ["metric", "value", "per-round range", "target", "met"],
          [["added p50 latency (ms)", added_p50, f"{min(rr):.2f}..{max(rr):.2f}", "<= 1.0", str(targets["added_p50_ms"]["met"])],
           ["added p99 latency (ms)", g["p99_ms"] - p["p99_ms"], "-", "-", "-"],
           ["throughput gateway / passthrough", ratio, f"{min(tr):.2f}..{max(tr):.2f}", ">= 0.90",
            str(targets["throughput_ratio"]["met"])]])
    if g["by_cache_tier"]:
        table("Gateway p50 by the decision's cache tier (a semantic tier embeds the prompt with the cache's encoder)",
              ["cache tier", "requests", "p50 ms", "added p50 vs passthrough ms"],
              [[t, v["n"], v["p50_ms"], v["p50_ms"] - p["p50_ms"]] for t, v in g["by_cache_tier"].items()])
    return {"apps": s, "added_p50_ms": added_p50, "added_p99_ms": g["p99_ms"] - p["p99_ms"], "throughput_ratio": ratio,
            "per_round": per_round, "targets": targets}


def _report_serial(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Concurrency 1: no queueing, so the difference is the gateway's own time per request."""
    s = {k: _stats(v) for k, v in runs.items()}
    g, p = s["gateway"], s["passthrough"]
    added = g["p50_ms"] - p["p50_ms"]
    table("Concurrency 1 (no queueing): the gateway's own added time per request",
          ["app", "n", "p50 ms", "p99 ms", "req/s", "decision p50 ms"],
          [[k, v["n"], v["p50_ms"], v["p99_ms"], v["throughput_rps"], v["decision_ms_p50"]] for k, v in s.items()],
          caption=f"added p50 at concurrency 1: {added:.2f} ms (target <= 1 ms); by cache tier: "
                  + ", ".join(f"{t} {v['p50_ms'] - p['p50_ms']:+.2f} ms (n={v['n']})" for t, v in g["by_cache_tier"].items()))
    return {"apps": s, "added_p50_ms": added, "added_p50_ms_by_cache_tier":
            {t: v["p50_ms"] - p["p50_ms"] for t, v in g["by_cache_tier"].items()}}


def _report_open(runs: dict[str, list[dict[str, Any]]], rate: float, fraction: float) -> dict[str, Any]:
    """Open loop below saturation: the gateway's added latency when the CPU is not the queue (at
    concurrency 16 the box is saturated, so latency there is 16 / throughput for both apps)."""
    s = {k: _stats(v) for k, v in runs.items()}
    g, p = s["gateway"], s["passthrough"]
    added = g["p50_ms"] - p["p50_ms"]
    table(f"Open loop: Poisson arrivals at {rate:.1f} req/s ({fraction:.0%} of the passthrough's closed-loop "
          "throughput), same rate for both apps",
          ["app", "n", "ok", "p50 ms", "p90 ms", "p99 ms", "decision p50 ms"],
          [[k, v["n"], v["ok"], v["p50_ms"], v["p90_ms"], v["p99_ms"], v["decision_ms_p50"]] for k, v in s.items()],
          caption=f"added p50 {added:.2f} ms, added p99 {g['p99_ms'] - p['p99_ms']:.2f} ms; by cache tier: "
                  + ", ".join(f"{t} {v['p50_ms'] - p['p50_ms']:+.2f} ms (n={v['n']})" for t, v in g["by_cache_tier"].items()))
    return {"rate_rps": rate, "fraction_of_passthrough": fraction, "apps": s, "added_p50_ms": added,
            "added_p99_ms": g["p99_ms"] - p["p99_ms"],
            "added_p50_ms_by_cache_tier": {t: v["p50_ms"] - p["p50_ms"] for t, v in g["by_cache_tier"].items()}}


def _plot(runs: dict[str, list[dict[str, Any]]], quick: bool) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, blocks in runs.items():
        lat = np.sort(np.concatenate([b["latency_ms"] for b in blocks]))
        a1.plot(lat, np.arange(1, lat.size + 1) / lat.size, label=name)
        a2.plot(range(1, len(blocks) + 1), [b["latency_ms"].size / b["wall_s"] for b in blocks], marker="o", label=name)
    a1.set_xlabel("latency ms (client)")
    a1.set_ylabel("CDF")
    a1.set_xscale("log")
    a1.legend()
    a2.set_xlabel("round")
    a2.set_ylabel("requests/s")
    a2.legend()
    fig.suptitle("turnout gateway vs passthrough (same model deployments, SIMULATED zero-think-time backends)", fontsize=10)
    fig.tight_layout()
    path = result_path("serve_overhead", "png", quick)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    raise SystemExit(main())
