"""Category classifier + OOD guard: family comparison, leave-one-source-out, real prompts, OOD, latency.

1. Builds the labelled category set from ../shared/data (``training.categories``).
2. Fits both families with ``fit_category_model(select_by="loso")`` (leave-one-source-out per source,
   then calibration + OOD threshold at a 5% target FPR on in-distribution validation data) and picks
   one with the library's own rule (``training.classifier._pick``).
3. Evaluates both on the hand-labelled ShareGPT first turns (``benchmarks/labels``; text joined at run
   time), and the OOD guard on sets that share no source with anything used in fitting: non-English
   ShareGPT prompts (hand-labelled + a model-free non-Latin-script rule), CLINC150 out-of-scope
   queries, generated gibberish and base64 blobs -- each against held-out in-distribution prompts
   and against the English ShareGPT prompts. The category set includes ShareGPT first turns of *other*
   conversations (``sharegpt_hand``: hand-labelled, ``training/labels``; ``sharegpt_weak``: rule-labelled,
   ``training.weak_labels``), so the ShareGPT score is in-source; ``sharegpt_cross_source`` refits each
   family without both sources (ShareGPT unseen).
4. Single-request latency, one thread (prepare + ONNX + calibration + OOD); the encoder's cost apart.
5. ONNX vs native parity.

    python benchmarks/classifier.py [--quick] [--shared-dir DIR]  ->  benchmarks/results/classifier[_quick].json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import REPO, console, environment, table, write_json  # noqa: E402
from router.ood import prepare_text  # noqa: E402
from training.categories import SHAREGPT_SOURCES, WEAK_SOURCE, build_category_set, read_category_set  # noqa: E402
from router.classifier import OPENING_TOKENS, encoder_features  # noqa: E402
from training.classifier import (  # noqa: E402
    DEFAULT_MAX_CHARS,
    ENCODER_INPUTS,
    CategoryTrainer,
    FittedClassifier,
    _pick,
    fit_category_model,
    load_encoder,
    stratified_split,
)
from training.classifier_eval import (  # noqa: E402
    auroc,
    base64_blobs,
    clinc_oos,
    eval_classifier_report,
    fpr_at_tpr,
    gibberish,
    latency_ms,
    sharegpt_labelled,
    sharegpt_other_script,
)

TAXONOMY = ("code", "math", "writing", "knowledge", "chat", "translation")
LABELS = REPO / "benchmarks" / "labels" / "sharegpt_labels.jsonl"
BAD_INPUTS = ["", "   \n\t ", "\ud800", "\udfff abc", "😀🎉🔥👍", "x" * 1_000_000, "Hello 你好 Привет مرحبا שלום",
              "SGVsbG8gd29ybGQhIFRoaXMgaXMgYmFzZTY0IGVuY29kZWQgdGV4dC4=", "asdkjh qweoiu zxcmnb lkjqwe poiuyt",
              "\x00\x01\x02", "ﾟ･✿ヾ╲(｡◕‿◕｡)╱✿･ﾟ", "?!?!...", "Ünïcödé ßtrâßé ñ"]
MIN_GAIN = 0.02
MIN_CONFIDENCE = 0.4  # configs/router.yaml min_confidence


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="400 prompts per class, fewer latency calls")
    ap.add_argument("--shared-dir", type=Path, default=REPO.parent / "shared" / "data")
    a = ap.parse_args()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        summary = build_category_set(a.shared_dir, Path(tmp) / "categories.jsonl", seed=0,
                                     per_class_max=400 if a.quick else 1500, labels_file=LABELS)
        texts, labels, sources = read_category_set([Path(tmp) / "categories.jsonl"])
    console.print(f"category set: {summary['n_rows']} prompts {summary['categories']} sources {summary['sources']}")

    encoder = load_encoder(threads=2)
    prepared = [prepare_text(t, DEFAULT_MAX_CHARS) for t in texts]
    t0 = time.perf_counter()
    head = encoder.encode(prepared)
    encode_s = time.perf_counter() - t0
    windows = {name: encoder_features(encoder, prepared, (name,), OPENING_TOKENS, head=head)
               for name in ("opening", "tail")}
    blocks = {"head": head, **windows}
    embeddings = np.hstack([blocks[n] for n in ENCODER_INPUTS])
    encode_all_s = time.perf_counter() - t0
    console.print(f"encoded {len(prepared)} prompts in {encode_s:.0f} s, + opening/tail windows "
                  f"{encode_all_s - encode_s:.0f} s (2 threads)")

    fitted: dict[str, FittedClassifier] = {}
    for fam in ("tfidf", "encoder"):
        t0 = time.perf_counter()
        fitted[fam] = fit_category_model(texts, labels, TAXONOMY, seed=0, family=fam, sources=sources,
                                         select_by="loso", embeddings=embeddings if fam == "encoder" else None)
        console.print(f"fitted {fam} (with leave-one-source-out) in {time.perf_counter() - t0:.0f} s")
    selection = {f: fitted[f].metrics["selection"][f] for f in fitted}
    chosen, why = _pick(selection, "loso_mean_macro_f1", MIN_GAIN)

    sg = sharegpt_labelled(a.shared_dir, LABELS)
    sg_texts, sg_labels = [r["text"] for r in sg], [r["category"] for r in sg]
    n_lat = 100 if a.quick else 3 * len(sg_texts)
    lat_texts = sg_texts * 3  # every labelled ShareGPT prompt (incl. other-language ones) three times
    families: dict[str, Any] = {}
    load_before = os.getloadavg()
    for fam, f in fitted.items():
        clf = f.load(threads=1)
        rep = eval_classifier_report((clf, f.info), sg_texts, sg_labels, n_latency=n_lat, latency_texts=lat_texts)
        families[fam] = {"metrics": f.metrics, "sharegpt": rep}
    # ShareGPT as an unseen source: the same recipe fitted without the weak-labelled ShareGPT rows.
    seen = np.array([s not in SHAREGPT_SOURCES for s in sources])
    for fam, f in fitted.items():
        keep = np.flatnonzero(seen)
        cross = fit_category_model([texts[i] for i in keep], [labels[i] for i in keep], TAXONOMY, seed=0, family=fam,
                                   sources=[sources[i] for i in keep], select_by="holdout",
                                   embeddings=embeddings[keep] if fam == "encoder" else None,
                                   encoder_c=f.metrics["selection"][fam].get("c"))
        families[fam]["sharegpt_cross_source"] = {
            "trained_without": ",".join(SHAREGPT_SOURCES), "n_train": cross.metrics["n_train"],
            **eval_classifier_report((cross.load(threads=1), cross.info), sg_texts, sg_labels, n_latency=20)}
        console.print(f"fitted {fam} without {','.join(SHAREGPT_SOURCES)}: ShareGPT macro-F1 "
                      f"{families[fam]['sharegpt_cross_source']['macro_f1']:.3f} (with: {families[fam]['sharegpt']['macro_f1']:.3f})")

    _, _, test_idx = stratified_split(labels, (0.7, 0.15, 0.15), 0)
    ood = ood_study(fitted[chosen].load(threads=1), [texts[i] for i in test_idx],
                    [r["text"] for r in sg if r["category"] != "ood"], sg, a.shared_dir)
    bad = fitted[chosen].load(threads=1).predict(BAD_INPUTS)
    encoder_cost = encoder_latency(lat_texts, n_lat)
    inputs_cost = encoder_latency(lat_texts, n_lat, ENCODER_INPUTS)
    ablation = input_ablation(texts, labels, sources, blocks, sg_texts, sg_labels,
                              fitted["encoder"].metrics["selection"]["encoder"]["c"])
    parity = parity_check(texts, labels, sources, fitted, embeddings)

    result = {"environment": environment(), "category_set": summary, "chosen": chosen, "why": why,
              "selection_rule": f"mean leave-one-source-out macro-F1; encoder needs +{MIN_GAIN}",
              "families": families, "ood": ood, "encoder_latency_ms_1thread": encoder_cost,
              "encoder_inputs": list(ENCODER_INPUTS), "encoder_inputs_latency_ms_1thread": inputs_cost,
              "encoder_inputs_ablation": ablation,
              "encode_training_set_s_2threads": round(encode_s, 1),
              "encode_training_set_windows_s_2threads": round(encode_all_s - encode_s, 1), "parity": parity,
              "bad_inputs": {"n": len(BAD_INPUTS), "all_ood": bool(bad.is_ood.all()),
                             "ood_score": [round(float(s), 4) for s in bad.ood_score]},
              "loadavg_1_5_15_around_latency": {"before": load_before, "after": os.getloadavg()},
              "runtime_s": round(time.perf_counter() - t_start, 1)}
    path = write_json("classifier", result, a.quick)
    print_tables(result)
    console.print(f"wrote {path.relative_to(REPO)} in {result['runtime_s']:.0f} s")


def ood_study(clf: Any, heldout: list[str], sharegpt_english: list[str], sg: list[dict[str, str]],
              shared_dir: Path) -> dict[str, Any]:
    labelled_lang = [r["text"] for r in sg if r.get("reason") == "language"]
    other_script = sharegpt_other_script(shared_dir, exclude={r["id"] for r in sg})
    positives = {
        "sharegpt_other_language": labelled_lang + other_script,
        "clinc150_oos": clinc_oos(shared_dir),
        "gibberish": gibberish(300, seed=101),
        "base64": base64_blobs(300, seed=202),
    }
    negatives = {"heldout_in_distribution": heldout, "sharegpt_english": sharegpt_english}
    neg_scores = {k: clf.predict(v) for k, v in negatives.items()}
    out: dict[str, Any] = {"threshold": clf.info.ood.threshold, "target_fpr": clf.info.ood.target_fpr,
                           "min_confidence": MIN_CONFIDENCE,
                           "fpr_at_threshold": {k: float(np.mean(v.is_ood)) for k, v in neg_scores.items()},
                           "fallback_rate": {k: fallback_rate(v) for k, v in neg_scores.items()},
                           "sets": {}}
    for name, texts in positives.items():
        o = clf.predict(texts)
        out["sets"][name] = {"n": len(texts), "tpr_at_threshold": float(np.mean(o.is_ood)),
                             "fallback_rate": fallback_rate(o),
                             **{f"auroc_vs_{k}": auroc(v.ood_score, o.ood_score) for k, v in neg_scores.items()},
                             **{f"fpr95_vs_{k}": fpr_at_tpr(v.ood_score, o.ood_score) for k, v in neg_scores.items()}}
    return out


def fallback_rate(out: Any) -> float:
    """Share of prompts the router sends to the fallback model: OOD, or top probability < min_confidence."""
    return float(np.mean(out.is_ood | (out.probs.max(axis=1) < MIN_CONFIDENCE)))


def encoder_latency(texts: list[str], n: int, inputs: tuple[str, ...] = ("head",)) -> dict[str, float]:
    """One thread, one prompt: the head embedding alone (what the semantic cache shares) or the
    classifier's whole encoder input (``router.classifier.encoder_features``). A fresh encoder each
    time, so no memoised embedding is reused across the two."""
    enc = load_encoder(threads=1)
    enc._memo.clear()
    out = latency_ms(lambda b: encoder_features(enc, [prepare_text(t, DEFAULT_MAX_CHARS) for t in b], inputs,
                                                OPENING_TOKENS), texts, n)
    return {**out, "inputs": list(inputs)}


def input_ablation(texts: list[str], labels: list[str], sources: list[str], blocks: dict[str, np.ndarray],
                   sg_texts: list[str], sg_labels: list[str], c: float) -> dict[str, Any]:
    """Which encoder inputs the head reads, measured in this run at the chosen C: mean leave-one-source-out
    macro-F1 (the selection rule) and, reported after, macro-F1 on the hand-labelled ShareGPT prompts with
    and without the weak-labelled ShareGPT rows in training."""
    from training.classifier import EncoderHeadTrainer, _Family, _mean_macro_f1, encode_labels, leave_one_source_out, macro_f1

    enc = load_encoder(threads=2)
    keep = [i for i, lab in enumerate(sg_labels) if lab != "ood"]
    sg_prep = [prepare_text(sg_texts[i], DEFAULT_MAX_CHARS) for i in keep]
    sg_head = enc.encode(sg_prep)
    sg_blocks = {"head": sg_head, **{n: encoder_features(enc, sg_prep, (n,), OPENING_TOKENS, head=sg_head)
                                     for n in ("opening", "tail")}}
    y, ysg = encode_labels(labels, TAXONOMY), encode_labels([sg_labels[i] for i in keep], TAXONOMY)
    src = np.asarray(sources)
    out = {}
    for inputs in (("head",), ("head", "tail"), ("head", "opening"), ("head", "opening", "tail")):
        x = np.hstack([blocks[n] for n in inputs])
        xsg = np.hstack([sg_blocks[n] for n in inputs])
        fam = _Family("encoder", TAXONOMY, texts, 0, DEFAULT_MAX_CHARS, embeddings=x, sources=sources, c=c)
        loso = leave_one_source_out(fam, y, sources)
        row: dict[str, Any] = {"loso_mean_macro_f1": _mean_macro_f1(loso),
                               "loso": {k: v["macro_f1"] for k, v in loso.items()}}
        for name, rows in (("sharegpt_macro_f1", np.arange(len(y))), ("sharegpt_cross_source_macro_f1",
                                                                       np.flatnonzero(~np.isin(src, SHAREGPT_SOURCES)))):
            head = EncoderHeadTrainer(TAXONOMY, c=c).fit(x[rows], [labels[i] for i in rows], src[rows])
            row[name] = macro_f1(ysg, head.predict_proba(xsg).argmax(1))
        out["+".join(inputs)] = row
        console.print(f"encoder inputs {'+'.join(inputs)}: LOSO mean {row['loso_mean_macro_f1']:.3f}, ShareGPT "
                      f"{row['sharegpt_macro_f1']:.3f} / cross-source {row['sharegpt_cross_source_macro_f1']:.3f}")
    return {"c": c, "variants": out}


def parity_check(texts: list[str], labels: list[str], sources: list[str], fitted: dict[str, FittedClassifier],
                 embeddings: np.ndarray) -> dict[str, Any]:
    """Native scikit-learn vs ONNX on the same inputs (TF-IDF refit natively with the same data/seed)."""
    from router.classifier import apply_temperature
    from training.classifier import EncoderHeadTrainer

    probe = texts[::25] + BAD_INPUTS[:5] + BAD_INPUTS[6:]
    tr, _, te = stratified_split(labels, (0.7, 0.15, 0.15), 0)
    fit_idx = np.concatenate([tr, te])
    out = {}
    native = CategoryTrainer(TAXONOMY, seed=0).fit([texts[i] for i in fit_idx], [labels[i] for i in fit_idx])
    clf = fitted["tfidf"].load()
    n_p = apply_temperature(native.predict_proba(probe), fitted["tfidf"].info.temperature)
    o_p = clf.predict_proba(probe)
    out["tfidf"] = {"n": len(probe), "max_abs_diff": float(np.abs(n_p - o_p).max()),
                    "labels_equal": float(np.mean(n_p.argmax(1) == o_p.argmax(1)))}
    head = EncoderHeadTrainer(TAXONOMY, c=fitted["encoder"].metrics["selection"]["encoder"]["c"], seed=0).fit(
        embeddings[fit_idx], [labels[i] for i in fit_idx], [sources[i] for i in fit_idx])
    sess = fitted["encoder"].load().session
    e = embeddings[::25]
    (onnx_p,) = sess.run(["probabilities"], {"embedding": e})
    nat = head.predict_proba(e)
    out["encoder_head"] = {"n": len(e), "max_abs_diff": float(np.abs(nat - onnx_p).max()),
                           "labels_equal": float(np.mean(nat.argmax(1) == onnx_p.argmax(1)))}
    # end to end: the served classifier embeds the raw texts itself (encoder_features, one text per run)
    served = fitted["encoder"].load().raw_proba([prepare_text(t, DEFAULT_MAX_CHARS) for t in texts[::25]])
    out["encoder_end_to_end"] = {"n": len(served), "max_abs_diff": float(np.abs(nat - served).max()),
                                 "labels_equal": float(np.mean(nat.argmax(1) == served.argmax(1)))}
    return out


def print_tables(r: dict[str, Any]) -> None:
    fams = r["families"]
    rows = []
    for f, d in fams.items():
        m, s = d["metrics"], d["sharegpt"]
        rows.append([f + (" (chosen)" if f == r["chosen"] else ""), m["test_accuracy"], m["test_macro_f1"],
                     m["test_ece_uncalibrated"], m["test_ece"], m["temperature"],
                     m["selection"][f]["loso_mean_macro_f1"], s["macro_f1"], d["sharegpt_cross_source"]["macro_f1"],
                     s["accuracy"], s["ece"], s["latency_ms"]["p50"], s["latency_ms"]["p99"]])
    table("Families (random held-out split / leave-one-source-out / hand-labelled ShareGPT)",
          ["family", "test acc", "test F1", "ECE raw", "ECE cal", "T", "LOSO mean F1", "ShareGPT F1",
           "ShareGPT F1 w/o ShareGPT", "ShareGPT acc", "ShareGPT ECE", "p50 ms", "p99 ms"], rows,
          caption=r["why"] + "; ShareGPT F1 is in-source (ShareGPT prompts of other conversations in training, "
                             "hand- and rule-labelled), cross-source without them")
    srcs = sorted(next(iter(fams.values()))["metrics"]["selection"][next(iter(fams))]["loso"])
    rows = []
    for src in srcs:
        row: list[Any] = [src]
        for f in fams:
            lo = fams[f]["metrics"]["selection"][f]["loso"].get(src, {})
            row += [lo.get("n"), lo.get("accuracy"), lo.get("macro_f1")]
        rows.append(row)
    table("Leave-one-source-out (train without the source, evaluate on it)",
          ["held-out source"] + [f"{f} {c}" for f in fams for c in ("n", "acc", "macro-F1")], rows,
          caption=f"{WEAK_SOURCE} is scored against its own rule labels (noisy)")
    pcs = []
    for c in TAXONOMY:
        pcs.append([c] + [fams[f][k][f"per_class"][c]["f1"] for f in fams for k in ("sharegpt", "sharegpt_cross_source")]
                   + [fams[f]["sharegpt"]["per_class"][c][k] for f in fams for k in ("precision", "recall")]
                   + [fams[next(iter(fams))]["sharegpt"]["per_class"][c]["support"]])
    table("ShareGPT per class", ["category"] + [f"{f} F1{x}" for f in fams for x in ("", " w/o ShareGPT")]
          + [f"{f} {k}" for f in fams for k in ("P", "R")] + ["n"], pcs)
    o = r["ood"]
    rows = [[k, v["n"], v["auroc_vs_heldout_in_distribution"], v["fpr95_vs_heldout_in_distribution"],
             v["auroc_vs_sharegpt_english"], v["fpr95_vs_sharegpt_english"], v["tpr_at_threshold"], v["fallback_rate"]]
            for k, v in o["sets"].items()]
    rows += [[f"(in-distribution) {k}", None, None, None, None, None, o["fpr_at_threshold"][k], o["fallback_rate"][k]]
             for k in o["fpr_at_threshold"]]
    table(f"OOD guard of the chosen family (threshold {o['threshold']:.4f} for target FPR {o['target_fpr']})",
          ["OOD set", "n", "AUROC vs held-out", "FPR@95TPR", "AUROC vs ShareGPT-en", "FPR@95TPR", "flagged OOD",
           f"fallback (OOD or p<{o['min_confidence']})"], rows,
          caption=f"bad inputs all OOD: {r['bad_inputs']['all_ood']}")
    lat = [[f, fams[f]["sharegpt"]["latency_ms"]["p50"], fams[f]["sharegpt"]["latency_ms"]["p99"],
            fams[f]["sharegpt"]["latency_ms_graph"]["p50"], fams[f]["sharegpt"]["latency_ms_graph"]["p99"]]
           for f in fams]
    lat.append(["encoder alone", r["encoder_latency_ms_1thread"]["p50"], r["encoder_latency_ms_1thread"]["p99"],
                None, None])
    load = r["loadavg_1_5_15_around_latency"]
    table("Single-request latency on ShareGPT prompts, one thread (ms)",
          ["path", "predict p50", "predict p99", "ONNX only p50", "ONNX only p99"], lat,
          caption=f"load average (1/5/15 min) before {load['before']}, after {load['after']} on {os.cpu_count()} cores")
    table("ONNX vs native", ["model", "n", "max |diff|", "labels equal"],
          [[k, v["n"], v["max_abs_diff"], v["labels_equal"]] for k, v in r["parity"].items()])


if __name__ == "__main__":
    main()
