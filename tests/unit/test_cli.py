"""The ``turnout`` command: every subcommand has --help, the offline commands work, errors exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from turnout.cli import main

SUBCOMMANDS = [[], ["data"], ["data", "convert"], ["data", "schema"], ["data", "validate"], ["simulate"], ["train"],
               ["train", "bundle"], ["train", "policy"], ["ope"], ["eval"], ["eval", "classifier"], ["eval", "router"], ["eval", "replicas"],
               ["train", "replicas"], ["data", "telemetry"],
               ["train", "classifier"], ["data", "categories"], ["serve"], ["replay"], ["demo"]]


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=lambda w: " ".join(w) or "turnout")
def test_every_command_has_help(words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([*words, "--help"])
    assert e.value.code == 0
    assert "usage: turnout" in capsys.readouterr().out


def test_simulate_train_ope_eval(configs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logs, bundle = tmp_path / "logs", tmp_path / "bundle"
    assert main(["simulate", "--config", str(configs_dir / "world.yaml"), "--requests", "900", "--out", str(logs),
                 "--quiet"]) == 0
    assert main(["train", "bundle", "--logs", str(logs), "--config", str(configs_dir / "router.yaml"),
                 "--out", str(bundle), "--version", "cli-test"]) == 0
    capsys.readouterr()
    assert main(["ope", "--logs", str(logs), "--bundle", str(bundle), "--json", "--bootstrap", "20",
                 "--out", str(tmp_path / "ope.json")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bundle_version"] == "cli-test" and set(report["estimates"]) == {"ips", "snips", "dm", "dr", "switch_dr"}
    assert json.loads((tmp_path / "ope.json").read_text()) == report

    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("\n".join(json.dumps(r) for r in [
        {"text": "write a bash script that renames every .txt file", "category": "code"},
        {"text": "Translate 'thank you very much' into Italian", "category": "translation"},
        {"text": "what is 15% of 80?", "category": "math"}]) + "\n")
    assert main(["eval", "classifier", "--bundle", str(bundle), "--data", str(labelled), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert {"accuracy", "macro_f1", "per_class", "latency_ms", "n"} <= set(ev) and ev["n"] == 3
    assert main(["data", "validate", str(logs)]) == 0
    assert "900 valid records" in capsys.readouterr().out
    assert main(["train", "policy", "--logs", str(logs), "--bundle", str(bundle), "--out", str(tmp_path / "b2"),
                 "--version", "cli-test-2"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["policy"]["chosen"] in {"gbdt-dm", "gbdt-ips", "linucb"}
    assert (tmp_path / "b2" / "classifier.onnx").read_bytes() == (bundle / "classifier.onnx").read_bytes()


def test_data_schema_lists_every_field(capsys: pytest.CaptureFixture[str]) -> None:
    from router.log_schema import FIELD_NAMES

    assert main(["data", "schema"]) == 0
    out = capsys.readouterr().out
    assert all(f"`{name}`" in out for name in FIELD_NAMES)


@pytest.mark.parametrize("argv, message", [
    (["train", "bundle", "--logs", "{tmp}/nope", "--out", "{tmp}/b"], "no Parquet shards"),
    (["train", "bundle", "--logs", "{tmp}", "--config", "{tmp}/missing.yaml", "--out", "{tmp}/b"], "config file not found"),
    (["ope", "--logs", "{tmp}", "--bundle", "{tmp}/no-bundle"], "bundle directory not found"),
    (["simulate", "--config", "{tmp}/bad.yaml", "--out", "{tmp}/o"], "unknown model 'gpt-9'"),
    (["data", "convert", "routerbnch", "--in", "{tmp}", "--out", "{tmp}/o"], "Did you mean 'routerbench'"),
    (["data", "convert", "clinc150", "--in", "{tmp}", "--out", "{tmp}/o", "--option", "novalue"], "KEY=VALUE"),
])
def test_user_errors_exit_2_with_a_clear_message(argv: list[str], message: str, tmp_path: Path, configs_dir: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.yaml").write_text(
        (configs_dir / "world.yaml").read_text().replace("router_config: router.yaml",
                                                          f"router_config: {configs_dir / 'router.yaml'}")
        .replace("  large:\n", "  gpt-9:\n"))
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    assert message in capsys.readouterr().err


def test_empty_or_all_ood_inputs_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ood = tmp_path / "ood.jsonl"
    ood.write_text(json.dumps({"text": "bonjour", "category": "ood"}) + "\n")
    assert main(["eval", "classifier", "--bundle", str(tmp_path / "b"), "--data", str(ood), "--json"]) == 2
    assert "no rows with a taxonomy category" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["eval", "router", "--train", str(empty), "--test", str(empty), "--out", str(tmp_path / "r.json")]) == 2
    assert "no outcome rows" in capsys.readouterr().err


def test_retrain_help_states_the_settings_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    """The flags default to None (RetrainSettings holds the values); their help text must not drift."""
    from training.retrain import RetrainSettings

    d = RetrainSettings()
    with pytest.raises(SystemExit):
        main(["retrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for value in (d.holdout_frac, d.n_bootstrap, d.min_improvement, d.min_ess, d.max_fit_rows):
        shown = f"{value:,}" if isinstance(value, int) else f"{value:g}"
        assert f"(default {shown})" in text or f"default {shown})" in text, (value, text)


def test_json_output_has_null_for_non_finite_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    from turnout.cli import _emit

    _emit({"nan": float("nan"), "inf": [float("-inf")], "f32": np.float32("nan"), "f64": np.float64(1.5), "n": 2})
    assert json.loads(capsys.readouterr().out) == {"nan": None, "inf": [None], "f32": None, "f64": 1.5, "n": 2}
