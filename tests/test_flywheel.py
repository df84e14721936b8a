"""One flywheel iteration in this process (local Ray) on a real SciFact slice."""

import csv
import json


def test_one_flywheel_iteration_in_one_process(ray_session, scifact_slice, serve_port, tmp_path):
    from lrat_ray.flywheel import FlywheelConfig, run_flywheel

    out = tmp_path / "flywheel"
    config = FlywheelConfig(
        corpus=[str(scifact_slice / "corpus.jsonl")], queries=str(scifact_slice / "queries.jsonl"),
        train_qrels=str(scifact_slice / "train.tsv"), heldout_qrels=str(scifact_slice / "test.tsv"), output=str(out),
        iterations=1, train_tasks=20, document_max_length=32, index_workers=1, rollout_workers=2, port=serve_port,
        agent={"max_turns": 3}, train={"per_device_batch": 4, "group_size": 2, "workers": 1, "checkpoint_every": 1000})
    rows = run_flywheel(config)
    assert [r["iteration"] for r in rows] == [0, 1]
    for row in rows:
        for metric in ("success_rate", "evidence_recall", "ndcg@10", "recall@100"):
            assert row[f"{metric}_lo"] <= row[metric] <= row[f"{metric}_hi"], (metric, row)
    assert 0 <= rows[1]["ndcg@10_p_vs_0"] <= 1 and 0 < rows[1]["judged_relevant"] <= rows[1]["train_pairs"]
    with open(out / "results.csv") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 2 and "ndcg@10_lo" in table[0]
    assert "95% bootstrap interval" in (out / "results.md").read_text()
    per_query = json.loads((out / "iter-1" / "eval" / "per_query.json").read_text())
    assert set(per_query) == set(json.loads((out / "tasks.json").read_text())["heldout"])
    mined = json.loads((out / "iter-1" / "mine" / "report.json").read_text())
    assert mined["zero_length"] == "neutral" and "failed_browses" in mined
    # Every sub-stage has a manifest whose key chains from its inputs' keys.
    def manifest(iteration, stage):
        return json.loads((out / f"iter-{iteration}" / stage / "_lrat_stage.json").read_text())

    assert manifest(1, "rollout")["inputs"]["index"] == f"stage:{manifest(0, 'index')['key']}"
    assert manifest(1, "judge")["inputs"]["pairs"] == f"stage:{manifest(1, 'mine')['key']}"
    assert manifest(1, "train")["inputs"]["pairs"] == [f"stage:{manifest(1, 'judge')['key']}"]
    assert manifest(1, "index")["inputs"]["model"] == f"stage:{manifest(1, 'train')['key']}"
    assert manifest(1, "eval")["inputs"]["index"] == f"stage:{manifest(1, 'index')['key']}"
