import dataclasses
import json
import shutil

import pyarrow as pa
import pyarrow.dataset as pads
import pytest
from openai_stub import ScriptedOpenAI

from lrat_ray.core.pairs import PAIR_SCHEMA
from lrat_ray.stages.judge import JudgeConfig, run_judge
from lrat_ray.stages.judge.backends import OpenAIAnswers
from lrat_ray.stages.judge.prompts import OFFICIAL_RULE, keyword_label, parse_label, render_prompt
from lrat_ray.stages.judge.rows import add_prompts, label_answers, output_schema


@pytest.mark.parametrize(
    "answer, thinking, label",
    [
        ("RELEVANT", False, True),
        ("NOT_RELEVANT", False, False),
        ("not relevant", False, False),
        ("**RELEVANT**", False, True),
        ('{"label": "NOT_RELEVANT"}', False, False),
        ("<think>It says relevant facts... maybe NOT_RELEVANT?</think>\nRELEVANT", False, True),
        ("Hmm, the page is useful.</think>\n\nRELEVANT", True, True),  # Qwen3 opens <think> in the prompt
        ("Hmm, the page is useful and I keep thinking RELEVANT", True, None),  # thinking cut off by the budget
        ("<think>RELEVANT but unclosed", False, None),
        ("<think>RELEVANT</think>", False, None),
        ("Answer: NOT_RELEVANT", False, False),
        ("Irrelevant.", False, False),
        ("", False, None),
        (None, False, None),
        ("I cannot decide.", False, None),
    ],
)
def test_parse_label(answer, thinking, label):
    assert parse_label(answer, thinking) is label


def test_prompts_and_keyword_rule():
    official = JudgeConfig(output="-", pairs="-")
    prompt = render_prompt(official, "Canberra, confirmed.", "capital of Australia", "Canberra is the capital.")
    assert prompt.startswith(OFFICIAL_RULE) and prompt.endswith("AnalysisText:\nCanberra, confirmed.")
    assert "capital of Australia" not in prompt and "Canberra is the capital" not in prompt  # reasoning only
    with_document = JudgeConfig(output="-", pairs="-", prompt="query-document", document_chars=100)
    prompt = render_prompt(
        with_document, "Canberra, confirmed.", "capital of Australia", "Canberra is the capital." * 200
    )
    assert "Task query: capital of Australia" in prompt and "Canberra, confirmed." in prompt
    assert "Canberra is the capital." * 4 in prompt and "Canberra is the capital." * 5 not in prompt
    assert keyword_label("The page is about a different topic; not relevant.") is False
    assert keyword_label("It doesn’t help with the date.") is False
    assert keyword_label("Useful: it gives the founding year. Keep searching for the second fact.") is True


def test_config_is_checked_when_built():
    with pytest.raises(ValueError, match="exactly one of --pairs"):
        JudgeConfig(output="-")
    with pytest.raises(ValueError, match="needs --model"):
        JudgeConfig(output="-", pairs="-", backend="vllm")
    with pytest.raises(ValueError, match="--thinking needs --no-guided"):
        JudgeConfig(output="-", pairs="-", backend="vllm", model="m", thinking=True)


def _pairs(*reasonings) -> pa.Table:
    rows = [
        {
            "trajectory_id": "t",
            "turn": 0,
            "browse_turn": i + 1,
            "query": f"q{i}",
            "positive_id": f"d{i}",
            "negative_ids": ["x"],
            "reasoning": r,
            "reasoning_length": len(r),
            "rank": 1,
            "correct": None,
            "relevant": None,
            "weight": 1.0,
            "positive_text": "text",
            "negative_texts": ["s"],
            "source": "f",
        }
        for i, r in enumerate(reasonings)
    ]
    return pa.Table.from_pylist(rows, schema=PAIR_SCHEMA)


def test_openai_answers_retries_and_failure_policy():
    batch = _pairs("Key facts extracted.", "useless page", "garbage", "flaky but fine", "busy but fine")
    with ScriptedOpenAI() as server:
        config = JudgeConfig(
            output="-", pairs="-", backend="openai", model="judge", endpoint=server.url, retries=2, concurrency=2
        )
        answered = OpenAIAnswers(dataclasses.asdict(config))(add_prompts(batch, config))
        assert server.calls == 7  # one retry each for the 500 and the 503 with Retry-After
    labelled = label_answers(answered, config, output_schema(PAIR_SCHEMA)).to_pylist()
    assert [r["judge_status"] for r in labelled] == ["ok", "ok", "unparseable", "ok", "ok"]
    assert [r["relevant"] for r in labelled] == [True, False, True, True, True]
    assert labelled[2]["judge_label"] is None and labelled[2]["judge_raw"] == "I am not sure what you mean."
    strict = JudgeConfig(output="-", pairs="-", backend="openai", model="judge", on_failure="irrelevant")
    assert label_answers(answered, strict, output_schema(PAIR_SCHEMA)).column("relevant").to_pylist()[2] is False


def test_unreachable_endpoint_counts_failures():
    config = JudgeConfig(
        output="-", pairs="-", backend="openai", model="m", endpoint="http://127.0.0.1:9/v1", retries=1, timeout_s=2
    )
    answered = OpenAIAnswers(dataclasses.asdict(config))(add_prompts(_pairs("fine"), config))
    (row,) = label_answers(answered, config, output_schema(PAIR_SCHEMA)).to_pylist()
    assert row["judge_status"] == "failed" and row["relevant"] is True
    assert "gave up after 2 attempts" in row["judge_raw"]


def test_run_judge_on_mined_real_pairs(ray_session, real_trajectory_files, tmp_path):
    from lrat_ray.infra.stage_run import run_stage
    from lrat_ray.stages.mine import MineConfig, run_mine

    run_mine(
        MineConfig(input=[str(real_trajectory_files[0].parent)], output=str(tmp_path / "mined"), tokenizer="chars")
    )
    report = run_stage(
        "judge", JudgeConfig(pairs=str(tmp_path / "mined"), output=str(tmp_path / "judged")), run_judge
    ).result
    table = pads.dataset(str(tmp_path / "judged" / "pairs"), format="parquet").to_table()
    assert report["pairs"] == table.num_rows == 28 and report["ok"] == 28
    assert report["relevant"] + report["irrelevant"] == 28
    assert table.schema.equals(output_schema(PAIR_SCHEMA))  # the pair columns keep their types
    assert set(table.column("judge_prompt_version").to_pylist()) == {"lrat-official-v1"}
    saved = json.loads((tmp_path / "judged" / "report.json").read_text())  # recorded once, by run_stage
    assert saved == report and saved["prompt_sha256"] and saved["backend"] == "keyword"


def test_run_judge_openai_uses_the_cache_on_a_rerun(ray_session, tmp_path):
    pairs = tmp_path / "mined" / "pairs"
    pairs.mkdir(parents=True)
    import pyarrow.parquet as pq

    pq.write_table(_pairs("Key facts extracted.", "useless page", "garbage", "flaky but fine"), pairs / "p.parquet")
    with ScriptedOpenAI() as server:
        config = dict(pairs=str(tmp_path / "mined"), backend="openai", model="judge", endpoint=server.url, retries=2)
        first = run_judge(JudgeConfig(output=str(tmp_path / "one"), **config))
        calls = server.calls
        second = run_judge(JudgeConfig(output=str(tmp_path / "two"), **config))
    assert (first["ok"], first["unparseable"], first["cached"]) == (3, 1, 0)
    assert (second["cached"], second["unparseable"]) == (3, 1) and server.calls == calls + 1  # only the unparseable
    rows = pads.dataset(str(tmp_path / "two" / "pairs"), format="parquet").to_table().to_pylist()
    assert sorted(r["browse_turn"] for r in rows) == [1, 2, 3, 4]  # every pair comes back exactly once

    # A job killed after writing its judged blocks (one cut off mid-write), resubmitted with a new cache:
    # the finished answers are kept, only the rest goes to the model.
    partial = tmp_path / "three" / ".pairs.partial"
    partial.mkdir(parents=True)
    for block in (tmp_path / "one" / "pairs").glob("judged_*.parquet"):
        shutil.copy(block, partial / block.name)
    (partial / "judged_cut_off.parquet").write_bytes(b"PAR1 half a file")
    with ScriptedOpenAI() as server:
        third = run_judge(
            JudgeConfig(
                output=str(tmp_path / "three"), cache=str(tmp_path / "cache3"), **{**config, "endpoint": server.url}
            )
        )
        assert server.calls == 1  # the unparseable one again
    assert (third["cached"], third["unparseable"], third["pairs"]) == (3, 1, 4)
    assert not partial.exists()
