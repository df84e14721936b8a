import json
import shutil

import pyarrow.dataset as pads
import pytest
from conftest import FIXTURES, SHARED_DATA, jsonl_lines

from lrat_ray.cli import main
from lrat_ray.core.mining import MiningOptions, character_lengths
from lrat_ray.core.pairs import PAIR_SCHEMA
from lrat_ray.infra.errors import LratError, RecordError
from lrat_ray.infra.stage_run import run_stage
from lrat_ray.stages.mine import MineConfig, mine_file_group, run_mine

GOOD = json.loads((FIXTURES / "browsecomp_json_output.json").read_text())


def _bad_records(tmp_path):
    """One JSONL file: two good trajectories and one of each kind of bad record."""
    lines = [
        json.dumps(GOOD),
        "{not json",
        json.dumps({**GOOD, "query_id": None}),  # missing field
        json.dumps({**GOOD, "result": "steps"}),  # mistyped field
        json.dumps({**GOOD, "result": [{"type": "image", "output": "x"}]}),  # unknown step kind
        json.dumps({**GOOD, "result": []}),  # empty trajectory
        json.dumps({"hello": "world"}),  # unknown format
        json.dumps({**GOOD, "query_id": "second"}),
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_lenient_counts_every_bad_record_under_its_reason(tmp_path):
    path = _bad_records(tmp_path)
    table, summary = mine_file_group([str(path)], MiningOptions(), character_lengths)
    assert summary["records_read"] == 8 and summary["records_used"] == 2
    assert summary["records_skipped"] == {
        "invalid_json": 1,
        "missing_field": 1,
        "wrong_type": 1,
        "unknown_step_kind": 1,
        "empty_trajectory": 1,
        "unknown_format": 1,
    }
    assert summary["records_read"] == summary["records_used"] + sum(summary["records_skipped"].values())
    assert table.num_rows == 4 and set(table.column("trajectory_id").to_pylist()) == {"731", "second"}
    assert any("line 5: field 'result[0].type'" in e for e in summary["skipped_examples"])


@pytest.mark.parametrize(
    "line, reason, where",
    [
        ("{not json", "invalid_json", "line 2"),
        (json.dumps({**GOOD, "query_id": None}), "missing_field", "line 2: field 'query_id'"),
        (json.dumps({**GOOD, "result": "steps"}), "wrong_type", "line 2: field 'result'"),
        (json.dumps({**GOOD, "result": [{"type": "image"}]}), "unknown_step_kind", "line 2: field 'result[0].type'"),
        (json.dumps({**GOOD, "result": []}), "empty_trajectory", "line 2: field 'result'"),
    ],
)
def test_strict_stops_at_the_first_bad_record_naming_file_line_field(tmp_path, line, reason, where):
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line + "\n" + json.dumps(GOOD) + "\n")
    with pytest.raises(RecordError) as info:
        mine_file_group([str(path)], MiningOptions(), character_lengths, strict=True)
    assert info.value.reason == reason
    assert f"{path}:{where}" in str(info.value)


def test_mine_job_on_real_trajectories(ray_session, real_trajectory_files, tmp_path):
    out = tmp_path / "out"
    report = run_stage(
        "mine",
        MineConfig(input=[str(real_trajectory_files[0].parent)], output=str(out), export="lrat-jsonl", workers=2),
        run_mine,
    ).result
    assert report["records_read"] == report["records_used"] == 10 and report["records_skipped"] == {}
    table = pads.dataset(str(out / "pairs"), format="parquet").to_table()
    assert table.schema.equals(PAIR_SCHEMA)
    assert table.num_rows == report["pairs"] == 28  # 28 browses, all attributable, none repeated
    assert report["unattributed_browses"] == 0
    assert sum(table.column("weight").to_pylist()) == pytest.approx(table.num_rows)
    assert json.loads((out / "report.json").read_text()) == report  # recorded once, by run_stage
    assert json.loads((out / "_lrat_stage.json").read_text())["report"] == "report.json"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("_lrat_stage")) == [
        "lrat_pairs.jsonl",
        "pairs",
        "report.json",
    ]
    exported = [json.loads(l) for l in jsonl_lines(out / "lrat_pairs.jsonl")]
    official = json.loads(jsonl_lines(SHARED_DATA / "lrat" / "train_pairs_sample.jsonl")[0])
    assert len(exported) == 28 and set(exported[0]) == set(official)
    for key in official:
        assert type(exported[0][key]) is type(official[key]), key
    assert exported[0]["pos"] == [
        table.filter(pads.field("positive_id") == exported[0]["pos_id"][0]).column("positive_text")[0].as_py()
    ]


@pytest.mark.parametrize("model", ["embedded", "tiny"])
def test_token_lengths_equal_the_tokenizers_own_count(real_trajectory_files, model):
    """The miner reads tokenizer.json with the Rust library directly (no transformers import); its
    counts must equal transformers' own call, for the embedded MiniLM (WordPiece, lower-casing) and
    the tiny chat model (byte-level BPE)."""

    from transformers import AutoTokenizer

    from lrat_ray.models.embedded import resolve_model
    from lrat_ray.models.tiny_llm import tiny_model_path
    from lrat_ray.stages.mine import length_measure

    path = tiny_model_path() if model == "tiny" else resolve_model(model)
    table, _ = mine_file_group([str(p) for p in real_trajectory_files], MiningOptions(), character_lengths)
    texts = table.column("reasoning").to_pylist() + ["", "Ünïcode 北京 and a very long word " * 200, "  MiXeD\tcase  "]
    tok = AutoTokenizer.from_pretrained(path)
    expected = [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    assert length_measure(str(path))(texts) == expected and max(expected) > 512


def test_measuring_token_lengths_imports_neither_transformers_nor_torch():
    """What keeps a mining worker's start cheap (~0.2 s, not ~6.5 s): checked in a fresh process."""
    import subprocess
    import sys

    code = (
        "import sys; from lrat_ray.stages.mine import length_measure; length_measure('embedded')(['a b']); "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    reply = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert reply.stdout.strip() == "[]"


def test_sharded_job_equals_single_process(ray_session, real_trajectory_files, tmp_path):
    """Each real file in its own task (10 shards): beta, mu_raw and every weight equal one process."""
    from lrat_ray.core.weighting import LengthHistogram, fit_weights
    from lrat_ray.stages.mine import length_measure

    table, _ = mine_file_group([str(p) for p in real_trajectory_files], MiningOptions(), length_measure("embedded"))
    single = fit_weights(LengthHistogram.of(table.column("reasoning_length").to_pylist()))
    report = run_mine(
        MineConfig(
            input=[str(p) for p in real_trajectory_files], output=str(tmp_path / "o"), files_per_task=1, workers=2
        )
    )
    assert report["beta"] == single.beta
    assert report["mu_raw"] == pytest.approx(single.mu_raw, rel=1e-12)
    sharded = pads.dataset(str(tmp_path / "o" / "pairs"), format="parquet").to_table()
    weights = {(r["trajectory_id"], r["browse_turn"]): r["weight"] for r in sharded.to_pylist()}
    expected = {(r["trajectory_id"], r["browse_turn"]): single.weight(r["reasoning_length"]) for r in table.to_pylist()}
    assert weights == pytest.approx(expected, rel=1e-12)


def test_one_large_jsonl_file_mined_in_byte_ranges_by_several_actors_equals_one_process(
    ray_session, real_trajectory_files, tmp_path
):
    """The ten real runs, three times over with new ids, plus bad and blank lines, in one JSONL
    file cut into ~40 line-aligned ranges: the same pairs, weights, counts and file:line examples."""
    lines = []
    for copy in range(3):
        for path in real_trajectory_files:
            record = json.loads(path.read_text())
            record["query_id"] = f"{record['query_id']}-{copy}"
            lines.append(json.dumps(record, ensure_ascii=False))
        lines += ["", "{broken", json.dumps({"query_id": f"x{copy}", "result": "not a list"})]
    big = tmp_path / "runs.jsonl"
    big.write_text("\n".join(lines) + "\n")
    whole = run_mine(MineConfig(input=[str(big)], output=str(tmp_path / "whole"), workers=1, tokenizer="chars"))
    split = run_mine(
        MineConfig(
            input=[str(big)],
            output=str(tmp_path / "split"),
            workers=2,
            tokenizer="chars",
            split_bytes=big.stat().st_size // 40,
        )
    )
    for key in (
        "records_read",
        "records_used",
        "records_skipped",
        "skipped_examples",
        "pairs",
        "beta",
        "mu_raw",
        "unattributed_browses",
        "stats",
    ):
        assert split[key] == whole[key], key
    assert whole["records_read"] == 36 and any(":line 12" in e or "line 12" in e for e in whole["skipped_examples"])

    def pairs(name):
        rows = pads.dataset(str(tmp_path / name / "pairs"), format="parquet").to_table().to_pylist()
        return sorted(rows, key=lambda r: (r["trajectory_id"], r["browse_turn"]))

    assert pairs("split") == pairs("whole") and len(pairs("whole")) > 50
    with pytest.raises(LratError, match=r"runs.jsonl.*line 12"):
        run_mine(
            MineConfig(
                input=[str(big)],
                output=str(tmp_path / "strict"),
                workers=2,
                tokenizer="chars",
                strict=True,
                split_bytes=big.stat().st_size // 40,
            )
        )


def test_cli_lenient_and_strict(ray_session, tmp_path, capsys):
    bad = _bad_records(tmp_path)
    assert main(["mine", "--input", str(bad), "--output", str(tmp_path / "lenient"), "--tokenizer", "chars"]) == 0
    report = json.loads((tmp_path / "lenient" / "report.json").read_text())
    assert report["records_read"] == 8 and sum(report["records_skipped"].values()) == 6
    # One line when the stage starts and one with what it did, counts from its report.
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "lrat mine: started"
    assert out[1].startswith(f"lrat mine: 2 of 8 records -> {report['pairs']} pairs (6 records skipped") and (
        f"-> {tmp_path / 'lenient'} (version " in out[1]
    )
    code = main(["mine", "--input", str(bad), "--output", str(tmp_path / "strict"), "--strict"])
    err = capsys.readouterr().err
    assert code == 2 and f"{bad}:line 2" in err and "invalid_json" in err
    assert not (tmp_path / "strict" / "report.json").exists() and not (tmp_path / "strict" / "pairs").exists()


def test_missing_input_and_bad_tokenizer_fail_fast(tmp_path):
    with pytest.raises(LratError, match="input not found"):
        run_mine(MineConfig(input=[str(tmp_path / "nope")], output=str(tmp_path / "o")))
    shutil.copy(FIXTURES / "browsecomp_json_output.json", tmp_path / "a.json")
    with pytest.raises(LratError, match="does not load"):
        run_mine(
            MineConfig(
                input=[str(tmp_path / "a.json")],
                output=str(tmp_path / "o"),
                tokenizer=str(tmp_path / "no-such-tokenizer"),
            )
        )


def test_native_parquet_and_jsonl_inputs_give_the_same_pairs(tmp_path):
    import pyarrow.parquet as pq

    from lrat_ray.core.adapters import parse_trajectory
    from lrat_ray.core.trajectory import to_arrow_table, trajectory_to_dict

    traj = parse_trajectory(GOOD)
    pq.write_table(to_arrow_table([traj]), tmp_path / "t.parquet")
    (tmp_path / "t.jsonl").write_text(json.dumps(trajectory_to_dict(traj)) + "\n")
    from_parquet, s1 = mine_file_group([str(tmp_path / "t.parquet")], MiningOptions(), character_lengths)
    from_bcp, _ = mine_file_group([str(FIXTURES / "browsecomp_json_output.json")], MiningOptions(), character_lengths)
    from_jsonl, _ = mine_file_group([str(tmp_path / "t.jsonl")], MiningOptions(), character_lengths)

    def strip(table):
        return table.drop(["source"]).to_pylist()

    assert s1["records_used"] == 1 and strip(from_parquet) == strip(from_bcp) == strip(from_jsonl)
    assert from_parquet.num_rows == 2


def test_corrupt_files_are_counted_and_named_strict_stops_and_the_corrected_run_proceeds(
    ray_session, real_trajectory_files, tmp_path, capsys
):
    """Random bytes named .parquet and .jsonl.gz among good run files: a lenient run mines the good
    ones and counts each corrupt file as skipped under unreadable_file, naming it; --strict stops
    in one line (exit 2) and the corrected command into the same directory then runs; a run where
    nothing is usable fails instead of publishing an empty result."""
    import random

    runs = tmp_path / "runs"
    runs.mkdir()
    for path in real_trajectory_files[:3]:
        shutil.copy(path, runs / path.name)
    noise = random.Random(7).randbytes(4096)
    (runs / "corrupt.parquet").write_bytes(noise)
    (runs / "corrupt.jsonl.gz").write_bytes(noise[::-1])
    out = tmp_path / "mined"

    code = main(["mine", "--input", str(runs), "--output", str(out), "--tokenizer", "chars", "--strict"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "corrupt." in err[0] and "[unreadable_file]" in err[0], err
    assert main(["mine", "--input", str(runs), "--output", str(out), "--tokenizer", "chars"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["records_used"] == 3 and report["records_skipped"] == {"unreadable_file": 2}
    assert report["records_read"] == 5
    named = " ".join(report["skipped_examples"])
    assert f"{runs / 'corrupt.parquet'}: not a Parquet file" in named
    assert f"{runs / 'corrupt.jsonl.gz'}: not a readable gzip file" in named

    only_bad = tmp_path / "only-bad"
    only_bad.mkdir()
    shutil.copy(runs / "corrupt.parquet", only_bad / "a.parquet")
    (only_bad / "b.jsonl").write_text('{"hello": "world"}\n')
    capsys.readouterr()
    assert main(["mine", "--input", str(only_bad), "--output", str(tmp_path / "nothing"), "--tokenizer", "chars"]) == 2
    err = capsys.readouterr().err
    assert "no usable trajectory among 2 records" in err and "1 unknown_format, 1 unreadable_file" in err
    assert not (tmp_path / "nothing" / "_lrat_stage.json").exists()
