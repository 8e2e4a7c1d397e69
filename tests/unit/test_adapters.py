"""training.adapters on the real datasets (counts pinned to each SOURCE.md) and on small broken inputs."""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any, TypeAlias

import pytest

from training.adapters import (
    CONVERTERS,
    MT_BENCH_CATEGORIES,
    ROUTELLM_ASSUMED_OUTPUT_TOKENS,
    ROUTELLM_PRICES_USD_PER_1M,
    convert,
    prefix_hashes,
)
from training.formats import DataFormatError, LabelledPrompt, OutcomeRow, TraceRow, read_jsonl

RouterBench: TypeAlias = tuple[dict[str, Any], list[OutcomeRow], list[OutcomeRow]]
SUMMARY_KEYS = {"source", "files", "n_rows", "n_skipped", "categories"}


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("adapters")


def _check_summary(summary: dict[str, Any], source: str) -> None:
    assert set(summary) == SUMMARY_KEYS
    assert summary["source"] == source
    assert summary["n_rows"] == sum(summary["files"].values())
    for path, n_rows in summary["files"].items():
        assert sum(1 for _ in Path(path).open(encoding="utf-8")) == n_rows


def _assert_trace_sorted_from_zero(rows: list[TraceRow]) -> None:
    times = [r.timestamp_s for r in rows]
    assert times == sorted(times)
    assert times[0] == 0.0


# ------------------------------------------------------------------------------------------- routerbench


@pytest.fixture(scope="module")
def routerbench(shared_data: Path, out_dir: Path) -> RouterBench:
    summary = convert("routerbench", shared_data / "routerbench_subset_routerdc", out_dir / "routerbench")
    return (summary, read_jsonl(out_dir / "routerbench" / "train.jsonl", "outcomes"),
            read_jsonl(out_dir / "routerbench" / "test.jsonl", "outcomes"))


@pytest.mark.data
def test_routerbench_keeps_the_split_and_row_counts(routerbench: RouterBench) -> None:
    summary, train, test = routerbench
    _check_summary(summary, "routerbench")
    # SOURCE.md: arc 1,039/445, mbpp 299/128, winogrande 887/380. 8 + 6 arc rows carry a result for
    # gpt-3.5-turbo-1106 only (RouterBench re-ran it with a two-part prompt) and are skipped.
    assert Counter(r.extra["eval_name"] for r in train) == {"arc-challenge": 1031, "mbpp": 299, "winogrande": 887}
    assert Counter(r.extra["eval_name"] for r in test) == {"arc-challenge": 439, "mbpp": 128, "winogrande": 380}
    assert summary["n_skipped"] == 14
    assert summary["categories"] == {"code": 299 + 128, "knowledge": 1031 + 887 + 439 + 380}
    assert all(len(r.outcomes) >= 2 for r in train + test)


@pytest.mark.data
def test_routerbench_quality_and_cost_match_source_means(routerbench: RouterBench) -> None:
    _, _, test = routerbench
    mbpp = [r for r in test if r.extra["eval_name"] == "mbpp"]
    arc = [r for r in test if r.category == "knowledge" and r.extra["eval_name"] == "arc-challenge"]
    assert all(r.category == "code" for r in mbpp)
    assert statistics.mean(r.outcomes["gpt-4-1106-preview"].quality for r in mbpp) == pytest.approx(0.688, abs=0.001)
    mistral = statistics.mean(r.outcomes["mistralai/mistral-7b-chat"].quality for r in mbpp)
    assert mistral == pytest.approx(0.383, abs=0.001)
    assert statistics.mean(r.outcomes["gpt-4-1106-preview"].quality for r in arc) == pytest.approx(0.957, abs=0.001)
    # SOURCE.md's 0.00507 also averages the 6 skipped rows, whose cost cells are filled for every model
    # although only gpt-3.5 has a result (and whose doubled prompt costs ~1.5x).
    gpt4_cost_usd = statistics.mean(r.outcomes["gpt-4-1106-preview"].cost_usd for r in arc)
    assert gpt4_cost_usd == pytest.approx(0.00500, abs=0.00001)
    assert len({m for r in test for m in r.outcomes}) == 11
    assert not any(r.prompt.startswith("[") for r in test)  # the list literal was unpacked


# ---------------------------------------------------------------------------------------------- routellm


@pytest.fixture(scope="module")
def routellm(shared_data: Path, out_dir: Path) -> dict[str, Any]:
    return convert("routellm", shared_data / "routellm", out_dir / "routellm")


@pytest.mark.data
def test_routellm_mmlu_matches_source_stats(routellm: dict[str, Any], out_dir: Path) -> None:
    _check_summary(routellm, "routellm")
    rows = read_jsonl(out_dir / "routellm" / "mmlu.jsonl", "outcomes")
    assert len(rows) == 14_042
    assert len({r.extra["subject"] for r in rows}) == 57
    pairs = Counter((r.outcomes["mixtral-8x7b-instruct"].quality, r.outcomes["gpt-4-1106-preview"].quality)
                    for r in rows)
    assert pairs == {(1.0, 1.0): 8818, (0.0, 1.0): 2497, (0.0, 0.0): 1985, (1.0, 0.0): 742}
    assert all(r.category == "knowledge" for r in rows)


@pytest.mark.data
def test_routellm_costs_follow_the_price_table(routellm: dict[str, Any], out_dir: Path) -> None:
    mmlu = read_jsonl(out_dir / "routellm" / "mmlu.jsonl", "outcomes")
    gsm8k = read_jsonl(out_dir / "routellm" / "gsm8k.jsonl", "outcomes")
    assert len(gsm8k) == 1319 and all(r.category == "math" for r in gsm8k)
    row = mmlu[0]
    price_in, price_out = ROUTELLM_PRICES_USD_PER_1M["gpt-4-1106-preview"]
    expected = (math.ceil(len(row.prompt) / 4) * price_in + ROUTELLM_ASSUMED_OUTPUT_TOKENS["mmlu"] * price_out) / 1e6
    assert row.outcomes["gpt-4-1106-preview"].cost_usd == pytest.approx(expected)
    for r in mmlu + gsm8k:
        assert r.outcomes["gpt-4-1106-preview"].cost_usd > 10 * r.outcomes["mixtral-8x7b-instruct"].cost_usd


@pytest.mark.data
def test_routellm_mt_bench_categories(routellm: dict[str, Any], out_dir: Path) -> None:
    rows = read_jsonl(out_dir / "routellm" / "categories.jsonl", "labelled")
    assert len(rows) == 80
    assert Counter(r.extra["mt_bench_category"] for r in rows) == {c: 10 for c in MT_BENCH_CATEGORIES}
    assert Counter(r.category for r in rows) == {"writing": 10, "chat": 10, "math": 10, "code": 10, "knowledge": 40}
    assert rows[0].text.startswith("Compose an engaging travel blog post")


# ---------------------------------------------------------------------------------------------- clinc150


@pytest.mark.data
def test_clinc150_maps_llm_intents(shared_data: Path, out_dir: Path) -> None:
    summary = convert("clinc150", shared_data / "clinc150_oos", out_dir / "clinc.jsonl")
    _check_summary(summary, "clinc150")
    rows = read_jsonl(out_dir / "clinc.jsonl", "labelled")
    # 15 small_talk intents + 3 single intents, 150 texts each (all splits); 2 exact duplicate texts.
    assert Counter(r.category for r in rows) == {"chat": 2248, "translation": 150, "math": 150, "knowledge": 150}
    assert len({r.text for r in rows}) == len(rows)
    assert LabelledPrompt("in spanish, meet me tomorrow is said how", "translation",
                          {"source": "clinc150", "intent": "translate"}) in rows


@pytest.mark.data
def test_clinc150_keep_other_drops_only_duplicates_and_conflicts(shared_data: Path, out_dir: Path) -> None:
    summary = convert("clinc150", shared_data / "clinc150_oos", out_dir / "clinc_all.jsonl", keep_other=True)
    # 23,700 labelled texts: 5 exact duplicates, and "what's your designation" is both chat and other.
    assert summary["n_rows"] == 23_694 and summary["n_skipped"] == 6
    assert summary["categories"]["oos"] == 100 + 100 + 1000
    assert summary["categories"]["chat"] == 2247


# ------------------------------------------------------------------------------------------------ traces


@pytest.mark.data
def test_mooncake_conversation_trace(shared_data: Path, out_dir: Path) -> None:
    summary = convert("mooncake", shared_data / "mooncake_traces" / "conversation_trace.jsonl", out_dir / "mc.jsonl")
    _check_summary(summary, "mooncake")
    rows = read_jsonl(out_dir / "mc.jsonl", "trace")
    assert len(rows) == 12_031
    _assert_trace_sorted_from_zero(rows)
    assert rows[-1].timestamp_s == pytest.approx(3536.999)  # ~59 min, ms -> s
    assert statistics.median(r.input_tokens for r in rows) == 6909
    assert statistics.median(r.output_tokens for r in rows) == 350
    assert rows[0].prefix_hashes == tuple(range(14)) and rows[0].session_id is None


@pytest.mark.data
def test_ragpulse_is_sorted_and_hashed(shared_data: Path, out_dir: Path) -> None:
    summary = convert("ragpulse", shared_data / "ragpulse", out_dir / "rp.jsonl")
    _check_summary(summary, "ragpulse")
    rows = read_jsonl(out_dir / "rp.jsonl", "trace")
    assert len(rows) == 7106  # the blank line is skipped
    _assert_trace_sorted_from_zero(rows)
    assert 167 * 3600 < rows[-1].timestamp_s <= 168 * 3600  # one week
    assert len({r.session_id for r in rows}) == 3990
    assert abs(statistics.median(r.input_tokens for r in rows) - 3140) <= 1
    assert all(r.prefix_hashes and all(0 <= h < 2**63 for h in r.prefix_hashes) for r in rows)


def test_prefix_hashes_are_stable_chained_and_namespaced() -> None:
    ids = {"sys_prompt": [8302, 14332], "passages_ids": [7], "history": [], "web_search": 3, "user_input": [26923]}
    hashes = prefix_hashes(ids)
    assert len(hashes) == 5
    assert hashes[0] == 5473055844027019808  # hashlib: identical in every process and Python version
    other = prefix_hashes({**ids, "sys_prompt": [8303, 14332]})
    assert other[0] != hashes[0] and other[1] != hashes[1]  # a different first segment changes every later hash
    assert prefix_hashes({**ids, "user_input": [1]})[:4] == hashes[:4]
    swapped = prefix_hashes({**ids, "sys_prompt": [], "passages_ids": [8302, 14332, 7]})
    assert swapped[0] != hashes[0]
    with pytest.raises(DataFormatError, match=r"x:1: field 'hash_ids\.history' is missing"):
        prefix_hashes({"sys_prompt": [1], "passages_ids": []}, "x:1")


SERVEGEN_SMALL = {"duration_s": 1200.0, "max_requests": 5000}


@pytest.mark.data
def test_servegen_is_deterministic_by_seed(shared_data: Path, out_dir: Path) -> None:
    folder = shared_data / "servegen" / "language_m-small"
    convert("servegen", folder, out_dir / "sg_a.jsonl", seed=3, **SERVEGEN_SMALL)
    convert("servegen", shared_data / "servegen", out_dir / "sg_b.jsonl", seed=3, model="language_m-small",
            **SERVEGEN_SMALL)
    convert("servegen", folder, out_dir / "sg_c.jsonl", seed=4, **SERVEGEN_SMALL)
    a, b, c = ((out_dir / f"sg_{x}.jsonl").read_bytes() for x in "abc")
    assert a == b
    rows, other = read_jsonl(out_dir / "sg_a.jsonl", "trace"), read_jsonl(out_dir / "sg_c.jsonl", "trace")
    assert [r.timestamp_s for r in rows] != [r.timestamp_s for r in other]  # arrivals, not only lengths, use the seed
    assert [r.input_tokens for r in rows] != [r.input_tokens for r in other]
    assert len(rows) == 5000
    assert [r.timestamp_s for r in rows] == sorted(r.timestamp_s for r in rows)
    assert all(0 <= r.timestamp_s < 1200 for r in rows)
    assert {r.session_id for r in rows} <= {str(i) for i in range(43)}


@pytest.mark.data
def test_servegen_arrival_count_matches_the_rates(shared_data: Path, out_dir: Path) -> None:
    folder = shared_data / "servegen" / "reason_deepseek-r1"
    expected = sum(float(row[1]) * 600 for path in folder.glob("*.csv") for row in csv.reader(path.open())
                   if row[3] and float(row[0]) < 1200)
    summary = convert("servegen", folder, out_dir / "sg_r1.jsonl", seed=0, duration_s=1200.0, max_requests=10**6)
    assert summary["n_rows"] == pytest.approx(expected, rel=0.1)
    rows = read_jsonl(out_dir / "sg_r1.jsonl", "trace")
    assert 600 < statistics.median(r.input_tokens for r in rows) < 1000  # the assumed lognormal median 800


@pytest.mark.data
def test_servegen_start_offset_is_relative(shared_data: Path, out_dir: Path) -> None:
    folder = shared_data / "servegen" / "multimodal_mm-image"
    summary = convert("servegen", folder, out_dir / "sg_mm.jsonl", start_s=3000.0, duration_s=900.0)
    rows = read_jsonl(out_dir / "sg_mm.jsonl", "trace")
    assert summary["n_rows"] == len(rows) > 0
    assert all(0 <= r.timestamp_s < 900 for r in rows)


@pytest.mark.data
def test_sharegpt_first_human_turns(shared_data: Path, out_dir: Path) -> None:
    source = shared_data / "sharegpt_v3_subset" / "sharegpt_v3_human_turns.jsonl"
    summary = convert("sharegpt", source, out_dir / "sh.jsonl")
    _check_summary(summary, "sharegpt")
    rows = read_jsonl(out_dir / "sh.jsonl", "prompts")
    # SOURCE.md: 17,671 records, 11,144 start with a human turn; 7 of those first turns are blank.
    assert len(rows) == 11_137 and summary["n_skipped"] == 17_671 - 11_137
    texts = Counter(r.text for r in rows)
    assert texts["hi"] == 48 and texts["Explain quantum computing in simple terms"] == 43
    assert rows[1].to_json() == {"text": "How to tell if a customer segment is well segmented? In 3 bullet points.",
                                 "session_id": "i6IyJda_0", "n_turns": 2}
    assert convert("sharegpt", source, out_dir / "sh10.jsonl", limit=10)["n_rows"] == 10


# ------------------------------------------------------------------------------------- errors (no data)


def test_every_converter_takes_seed_and_limit() -> None:
    assert sorted(CONVERTERS) == ["clinc150", "csv", "mooncake", "ragpulse", "routellm", "routerbench", "servegen",
                                  "sharegpt"]
    for converter in CONVERTERS.values():
        assert converter.__kwdefaults__ is not None
        assert {"seed", "limit"} <= set(converter.__kwdefaults__)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file.jsonl").write_text("{}\n")
    return {"dir": tmp_path / "dir", "file": tmp_path / "file.jsonl", "missing": tmp_path / "nope",
            "out": tmp_path / "o.jsonl"}


DISPATCH_ERRORS = [
    ("routerbenc", "dir", {}, r"unknown source 'routerbenc'; known sources: clinc150, csv, mooncake, ragpulse, "
                             r"routellm, routerbench, servegen, sharegpt\. Did you mean 'routerbench'\?"),
    ("xyz", "dir", {}, r"unknown source 'xyz'; known sources: .*sharegpt$"),
    ("clinc150", "dir", {"keep_othr": True},
     r"clinc150: unknown option 'keep_othr'; allowed: seed, limit, keep_other\. Did you mean 'keep_other'\?"),
    ("mooncake", "missing", {}, r"mooncake: input .*nope does not exist; expected a Mooncake \*_trace\.jsonl file"),
    ("mooncake", "dir", {}, r"mooncake: input .*dir is a directory; expected a file"),
    ("routerbench", "file", {}, r"routerbench: input .*file\.jsonl is a file; expected a directory"),
    ("routerbench", "dir", {}, r"routerbench: no \*_train\.csv in"),
    ("sharegpt", "file", {"limit": 0}, r"sharegpt: limit must be None or an integer >= 1; got 0"),
    ("servegen", "dir", {"seed": -1}, r"servegen: seed must be an integer >= 0; got -1"),
    ("servegen", "dir", {"duration_s": 0.0}, r"servegen: duration_s must be a finite number > 0; got 0\.0"),
    ("servegen", "dir", {}, r"servegen: .*dir has no chunk-<client>-trace\.csv files"),
]


@pytest.mark.parametrize(("source", "in_kind", "options", "message"), DISPATCH_ERRORS)
def test_dispatch_errors(files: dict[str, Path], source: str, in_kind: str, options: dict[str, Any],
                         message: str) -> None:
    with pytest.raises(DataFormatError, match=message):
        convert(source, files[in_kind], files["out"], **options)


def test_output_that_is_a_directory_is_rejected(files: dict[str, Path]) -> None:
    with pytest.raises(DataFormatError, match=r"sharegpt: output .*dir is a directory; expected a file path"):
        convert("sharegpt", files["file"], files["dir"])


def test_servegen_unknown_model_suggests(tmp_path: Path) -> None:
    (tmp_path / "language_m-small").mkdir()
    (tmp_path / "language_m-mid").mkdir()
    with pytest.raises(DataFormatError, match=r"model 'language_m-smal' not found .*available: language_m-mid, "
                                              r"language_m-small\. Did you mean 'language_m-small'\?"):
        convert("servegen", tmp_path, tmp_path / "o.jsonl", model="language_m-smal")


BAD_SOURCES = [
    ("mooncake", "t.jsonl",
     '{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [1]}\n{"timestamp": 1,',
     r"t\.jsonl:2: not valid JSON"),
    ("mooncake", "t.jsonl", '{"timestamp": 0, "input_length": "5", "output_length": 1, "hash_ids": [1]}',
     r"t\.jsonl:1: field 'input_length' must be an integer >= 0; got '5'"),
    ("mooncake", "t.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 1}',
     r"t\.jsonl:1: field 'hash_ids' must be a list of integers; got None"),
    ("sharegpt", "s.jsonl", '{"id": "a", "n_turns": 1, "turn_roles": "human", "human_turns": ["x"]}',
     r"s\.jsonl:1: fields 'turn_roles' and 'human_turns' must be lists"),
]


@pytest.mark.parametrize(("source", "name", "content", "message"), BAD_SOURCES)
def test_malformed_source_files_name_the_line(tmp_path: Path, source: str, name: str, content: str,
                                              message: str) -> None:
    (tmp_path / name).write_text(content + "\n")
    with pytest.raises(DataFormatError, match=message):
        convert(source, tmp_path / name, tmp_path / "out.jsonl")


def test_ragpulse_string_timestamps_are_sorted(tmp_path: Path) -> None:
    ids = {"sys_prompt": [1], "passages_ids": [2], "history": [], "web_search": [], "user_input": [3]}
    lines = [{"timestamp": t, "input_length": 10, "output_length": 2, "hash_ids": ids, "session_id": s}
             for t, s in (("90", "b"), ("82", "a"), ("125.5", "c"))]
    (tmp_path / "0_trace.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    convert("ragpulse", tmp_path, tmp_path / "o.jsonl")
    rows = read_jsonl(tmp_path / "o.jsonl", "trace")
    assert [(r.timestamp_s, r.session_id) for r in rows] == [(0.0, "a"), (8.0, "b"), (43.5, "c")]
    (tmp_path / "0_trace.jsonl").write_text(json.dumps({**lines[0], "timestamp": "soon"}) + "\n")
    with pytest.raises(DataFormatError, match=r"0_trace\.jsonl:1: field 'timestamp' must be a finite number >= 0 "
                                              r"\(or a numeric string\); got 'soon'"):
        convert("ragpulse", tmp_path, tmp_path / "o.jsonl")


ROUTERBENCH_HEADER = ",sample_id,prompt,eval_name,a,b,a|total_cost,b|total_cost"


@pytest.mark.parametrize(("row", "message"), [
    ('0,s1,"[\'hi\']",hellaswag,1.0,0.0,0.1,0.2', r"test\.csv:2: eval_name 'hellaswag' has no category; known: "
                                                   r"arc_challenge, mbpp, winogrande"),
    ('0,s1,"[\'hi\']",mbpp,1.0,yes,0.1,0.2', r"test\.csv:2: column 'b' must be a number; got 'yes'"),
    ('0,s1,"[\'hi\']",mbpp,1.0,2.0,0.1,0.2',
     r"test\.csv:2: field 'outcomes\.b\.quality' must be a number in \[0, 1\]; got 2\.0"),
    ('0,s1,hi there,mbpp,1.0,0.0,0.1,0.2',
     r"test\.csv:2: column 'prompt' must be a Python list of strings; got 'hi there'"),
])
def test_routerbench_bad_cells(tmp_path: Path, row: str, message: str) -> None:
    (tmp_path / "x_train.csv").write_text(ROUTERBENCH_HEADER + "\n")
    (tmp_path / "x_test.csv").write_text(ROUTERBENCH_HEADER + "\n" + row + "\n")
    with pytest.raises(DataFormatError, match=message):
        convert("routerbench", tmp_path, tmp_path / "out")


def test_routerbench_blank_model_cells_are_left_out(tmp_path: Path) -> None:
    (tmp_path / "x_train.csv").write_text(ROUTERBENCH_HEADER + "\n")
    rows = ['0,s1,"[\'hi\', \'there\']",mbpp,1.0,0.0,0.1,0.2', '1,s2,"[\'x\']",mbpp,1.0,,0.1,0.2']
    (tmp_path / "x_test.csv").write_text("\n".join([ROUTERBENCH_HEADER, *rows]) + "\n")
    summary = convert("routerbench", tmp_path, tmp_path / "out")
    assert summary["files"][str(tmp_path / "out" / "test.jsonl")] == 1 and summary["n_skipped"] == 1
    (row,) = read_jsonl(tmp_path / "out" / "test.jsonl", "outcomes")
    assert row.prompt == "hi\nthere" and row.outcomes["b"].cost_usd == 0.2 and row.category == "code"


def test_servegen_bad_csv_row(tmp_path: Path) -> None:
    (tmp_path / "chunk-0-trace.csv").write_text("0,1.0,1.0,Gamma,1,1\n600,1.0,Gamma,1,1\n")
    with pytest.raises(DataFormatError, match=r"chunk-0-trace\.csv:2: expected 6 columns \(window_start_s, rate, cv, "
                                              r"dist, p1, p2\); got 5"):
        convert("servegen", tmp_path, tmp_path / "o.jsonl")


def test_servegen_regular_arrivals_with_zero_cv(tmp_path: Path) -> None:
    (tmp_path / "chunk-7-trace.csv").write_text("0,0.5,0.0,Gamma,1,1\n600,0,0,,0,0\n")
    summary = convert("servegen", tmp_path, tmp_path / "o.jsonl", duration_s=1200.0)
    rows = read_jsonl(tmp_path / "o.jsonl", "trace")
    assert summary["n_rows"] == 300  # 0.5 req/s for one 600 s window, the next window idle
    gaps = {round(b.timestamp_s - a.timestamp_s, 9) for a, b in zip(rows, rows[1:])}
    assert gaps == {2.0} and {r.session_id for r in rows} == {"7"}


def test_routellm_bad_correctness_value(tmp_path: Path) -> None:
    (tmp_path / "mmlu_responses").mkdir()
    (tmp_path / "mmlu_responses" / "mmlu_x.csv").write_text(
        "prompt,mistralai/Mixtral-8x7B-Instruct-v0.1,gpt-4-1106-preview\nq,True,maybe\n")
    message = r"mmlu_x\.csv:2: column 'gpt-4-1106-preview' must be True or False; got 'maybe'"
    with pytest.raises(DataFormatError, match=message):
        convert("routellm", tmp_path, tmp_path / "out")


def test_clinc150_malformed_item(tmp_path: Path) -> None:
    (tmp_path / "domains.json").write_text(json.dumps({"small_talk": ["greeting"]}))
    (tmp_path / "data_full.json").write_text(json.dumps({"train": [["hello", "greeting"], ["oops"]]}))
    with pytest.raises(DataFormatError, match=r"data_full\.json: split 'train' item 1 must be \[text, intent\]"):
        convert("clinc150", tmp_path, tmp_path / "o.jsonl")



def test_csv_trace_converts_with_default_and_named_columns(tmp_path: Path) -> None:
    src = tmp_path / "azure.csv"
    src.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                   "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.9951690,396,109\n"
                   "2023-11-16 18:15:45.6805900,100,1\n")
    summary = convert("csv", src, tmp_path / "azure.jsonl")
    rows = read_jsonl(tmp_path / "azure.jsonl", "trace")
    assert [(r.input_tokens, r.output_tokens) for r in rows] == [(100, 1), (374, 44), (396, 109)]
    assert [r.timestamp_s for r in rows] == pytest.approx([0.0, 1.0, 5.314579])
    assert all(r.prefix_hashes is None for r in rows) and json.dumps(summary)
    custom = tmp_path / "custom.csv"
    custom.write_text("arrive_ms,n_prompt,n_gen,other\n2500,10,2,x\n1000,20,3,y\n4000,30,4,z\n")
    convert("csv", custom, tmp_path / "c.jsonl", timestamp_column="Arrive_ms", input_column="n_prompt",
            output_column="n_gen", time_unit="ms", limit=2)
    rows = read_jsonl(tmp_path / "c.jsonl", "trace")
    assert [(r.timestamp_s, r.input_tokens, r.output_tokens) for r in rows] == [(0.0, 20, 3), (1.5, 10, 2)]


def test_csv_trace_recognises_burstgpt_headers(tmp_path: Path) -> None:
    """BurstGPT names its columns ``Request tokens`` / ``Response tokens`` (spaces, capitals); failed
    requests have 0 response tokens and still arrive."""
    src = tmp_path / "burst.csv"
    src.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                   "5,ChatGPT,472,18,490,Conversation log\n7,GPT-4,1100,0,1100,API log\n")
    convert("csv", src, tmp_path / "b.jsonl")
    rows = read_jsonl(tmp_path / "b.jsonl", "trace")
    assert [(r.timestamp_s, r.input_tokens, r.output_tokens) for r in rows] == [(0.0, 472, 18), (2.0, 1100, 0)]


CSV_ERRORS = [
    ("time,prompt,output_tokens\n0.5,10,2\n", {}, r"x\.csv: no input column; expected one of context_tokens"),
    ("time,n,output_tokens\n0.5,10,2\n", {"input_column": "tokens_in"}, r"no input column; expected one of tokens_in \(case, spaces and _ ignored\); header is"),
    ("time,input_tokens,output_tokens\n0.5,10,2\nsoon,1,1\n", {}, r"x\.csv:3: cannot parse"),
    ("time,input_tokens,output_tokens\n0.5,-10,2\n", {}, r"x\.csv:2: timestamp must be finite and token counts >= 0"),
    ("time,input_tokens,output_tokens\n", {}, r"x\.csv: the CSV trace has no rows"),
    ("time,input_tokens,output_tokens\n1,1,1\n", {"time_unit": "h"}, r"csv: time_unit must be one of s, ms, us"),
]


@pytest.mark.parametrize(("content", "options", "message"), CSV_ERRORS)
def test_csv_trace_errors_name_the_problem(tmp_path: Path, content: str, options: dict[str, Any],
                                           message: str) -> None:
    (tmp_path / "x.csv").write_text(content)
    with pytest.raises(DataFormatError, match=message):
        convert("csv", tmp_path / "x.csv", tmp_path / "x.jsonl", **options)
