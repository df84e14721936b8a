import json

import pyarrow.dataset as pads
import pytest

from lrat_ray.judge import (JudgeConfig, judge_rows, keyword_label, parse_label, render_prompt, run_judge)
from openai_stub import ScriptedOpenAI


@pytest.mark.parametrize("answer, label", [
    ("RELEVANT", True), ("NOT_RELEVANT", False), ("not relevant", False), ("**RELEVANT**", True),
    ("<think>It says relevant facts... maybe NOT_RELEVANT?</think>\nRELEVANT", True),
    ("Answer: NOT_RELEVANT", False), ("Irrelevant.", False), ("", None), (None, None),
    ("I cannot decide.", None), ("<think>RELEVANT</think>", None),
])
def test_parse_label(answer, label):
    assert parse_label(answer) is label


def test_prompt_rendering_and_keyword_rule():
    prompt = render_prompt("capital of Australia", "Canberra is the capital." * 200, "Canberra, confirmed.", 100)
    assert "Task query: capital of Australia" in prompt and "Canberra, confirmed." in prompt
    assert "Canberra is the capital." * 4 in prompt and "Canberra is the capital." * 5 not in prompt
    assert prompt.rstrip().endswith("RELEVANT or NOT_RELEVANT.")
    assert keyword_label("The page is about a different topic; not relevant.") is False
    assert keyword_label("It doesn’t help with the date.") is False
    assert keyword_label("Useful: it gives the founding year. Keep searching for the second fact.") is True


def _row(reasoning, i=0):
    return {"query": f"q{i}", "positive_id": f"d{i}", "reasoning": reasoning, "positive_text": "text"}


def test_openai_backend_labels_failures_and_cache():
    rows = [_row("Key facts extracted.", 0), _row("useless page", 1), _row("garbage", 2), _row("flaky but fine", 3)]
    with ScriptedOpenAI() as server:
        config = JudgeConfig(pairs="-", output="-", backend="openai", model="judge", endpoint=server.url,
                             retries=2, concurrency=2)
        labelled, fresh, counts = judge_rows([dict(r) for r in rows], config, {})
        assert [r["relevant"] for r in labelled] == [True, False, True, True]
        assert [r["judge_status"] for r in labelled] == ["ok", "ok", "unparseable", "ok"]
        assert labelled[2]["judge_label"] is None and labelled[2]["judge_raw"] == "I am not sure what you mean."
        assert counts == {"pairs": 4, "ok": 3, "cached": 0, "unparseable": 1, "failed": 0, "not_judged": 0,
                          "relevant": 3, "irrelevant": 1}
        calls = server.calls
        assert calls == 5  # one retry for the flaky answer
        again, _, counts2 = judge_rows([dict(r) for r in rows], config, fresh)
        assert counts2["cached"] == 3 and server.calls == calls + 1  # only the unparseable one is asked again
        strict = JudgeConfig(pairs="-", output="-", backend="openai", model="judge", endpoint=server.url,
                             on_failure="irrelevant")
        assert judge_rows([dict(rows[2])], strict, {})[0][0]["relevant"] is False


def test_unreachable_endpoint_counts_failures():
    config = JudgeConfig(pairs="-", output="-", backend="openai", model="m", endpoint="http://127.0.0.1:9/v1",
                         retries=1, timeout_s=2)
    labelled, _, counts = judge_rows([_row("fine")], config, {})
    assert counts["failed"] == 1 and labelled[0]["judge_status"] == "failed" and labelled[0]["relevant"] is True


def test_run_judge_on_mined_real_pairs(ray_session, real_trajectory_files, tmp_path):
    from lrat_ray.mine_job import MineConfig, run_mine

    run_mine(MineConfig(input=[str(real_trajectory_files[0].parent)], output=str(tmp_path / "mined"),
                        tokenizer="chars"))
    report = run_judge(JudgeConfig(pairs=str(tmp_path / "mined"), output=str(tmp_path / "judged")))
    table = pads.dataset(str(tmp_path / "judged" / "pairs"), format="parquet").to_table()
    assert report["pairs"] == table.num_rows == 28 and report["ok"] == 28
    assert report["relevant"] + report["irrelevant"] == 28
    assert set(table.column("judge_prompt_version").to_pylist()) == {"lrat-judge-v1"}
    saved = json.loads((tmp_path / "judged" / "report.json").read_text())
    assert saved["prompt_sha256"] and saved["backend"] == "keyword"
