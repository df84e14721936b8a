import json
import pickle

import pytest
from conftest import FIXTURES

from lrat_ray.core.adapters import detect_format, parse_search_output, parse_trajectory
from lrat_ray.core.trajectory import SearchHit
from lrat_ray.infra.errors import RecordError


def test_real_browsecomp_runs_match_their_own_tool_counts(real_trajectory_files):
    for path in real_trajectory_files:
        raw = json.loads(path.read_text())
        traj = parse_trajectory(raw)
        counts = raw["tool_call_counts"]
        assert traj.id == raw["query_id"]
        assert traj.count("search") == counts["search"]
        assert traj.count("browse") == counts.get("visit", 0) + counts.get("get_document", 0)
        assert traj.question == raw["query"] and traj.gold_answer == raw["answer"]
        assert traj.final_answer == raw["result"][-1]["output"]
        # every search of these BM25 runs returned k=10 hits, each with a title and snippet
        for step in traj.steps:
            if step.kind == "search":
                assert len(step.results) == 10
                assert all(h.title and h.snippet for h in step.results)
        # every doc id the run recorded as retrieved is one our parser found in a search or browse
        seen = {h.doc_id for s in traj.steps for h in s.results} | {s.doc_id for s in traj.steps if s.doc_id}
        assert set(raw["retrieved_docids"]) <= seen


def test_real_list_query_uses_the_query_the_output_names(real_trajectory_files):
    raw = json.loads(real_trajectory_files[1].read_text())  # 1.json: one search with four queries
    traj = parse_trajectory(raw)
    search = next(s for s in traj.steps if s.kind == "search")
    assert search.query == json.loads(raw["result"][1]["arguments"])["query"][0]
    assert search.results[0].doc_id == "9358159"
    assert search.results[0].title == "Bedřich Havlíček"
    browse = next(s for s in traj.steps if s.kind == "browse")
    assert browse.doc_id == "9358159"
    # the harness printed the document as a Python dict; the text inside is what the agent read
    assert browse.text.startswith("Bedřich Havlíček\nCzech historian")


def test_text_hits_ids_found_without_parsing_equal_the_parsed_hits(real_trajectory_files):
    """Ids come from one scan; titles and snippets are parsed when first read (LazyHits). Both must
    agree on every real search output, and a pickled step carries the parsed hits."""
    outputs = [
        item["output"]
        for path in real_trajectory_files
        for item in json.loads(path.read_text())["result"]
        if item.get("tool_name") == "search"
    ]
    assert len(outputs) > 50
    for output in outputs:
        _, hits = parse_search_output(output)
        ids = list(hits.ids)
        parsed = tuple(hits)
        assert ids == [h.doc_id for h in parsed] and all(h.snippet for h in parsed)
        assert pickle.loads(pickle.dumps(hits)) == parsed == hits and hash(hits) == hash(parsed)
    _, hits = parse_search_output("DocID: 7 \n[Title]\nsnippet\nDocID:8")
    assert hits.ids == ["7", "8"] and tuple(hits) == (SearchHit("7", "Title", "snippet"), SearchHit("8"))


def test_browsecomp_json_search_output_dict_arguments_and_int_ids():
    traj = parse_trajectory(json.loads((FIXTURES / "browsecomp_json_output.json").read_text()))
    assert traj.id == "731" and traj.correct is True
    kinds = [s.kind for s in traj.steps]
    assert kinds == ["think", "search", "think", "browse", "think", "search", "browse", "think", "answer"]
    assert traj.steps[0].text.startswith("The 1936 Winter Olympics") and "\n" in traj.steps[0].text
    first = traj.steps[1]
    assert first.query == "1936 Winter Olympics host town"  # list query, JSON output names none
    assert first.result_ids == ["d-101", "102", "d-103"]
    assert [h.score for h in first.results] == [14.2, 11.0, None]
    assert first.results[1].snippet == "Garmisch-Partenkirchen is a market town in Bavaria."
    assert traj.steps[3].text.startswith("The 1936 Winter Olympics were held")
    assert traj.steps[6].doc_id == "102"
    assert traj.steps[6].text == "Garmisch-Partenkirchen is a market town in Bavaria, southern Germany."
    assert traj.final_answer == "The Partnach."


def test_openai_messages():
    lines = (FIXTURES / "openai_messages.jsonl").read_text().splitlines()
    first, second = (parse_trajectory(json.loads(line)) for line in lines)
    assert detect_format(json.loads(lines[0])) == "openai"
    assert [s.kind for s in first.steps] == ["think", "search", "think", "browse", "think", "answer"]
    assert first.steps[1].result_ids == ["e1", "e2", "e3"] and first.steps[1].results[0].title == "Eiffel Tower"
    assert first.steps[3].doc_id == "e1" and first.steps[3].text.startswith("The design of the Eiffel Tower")
    assert first.steps[4].text.startswith("So the structural design")
    assert (first.final_answer, first.correct, first.gold_answer) == (
        "Gustave Eiffel.",
        False,
        "Maurice Koechlin and Emile Nouguier",
    )
    assert second.question == "What is the capital of Australia?"
    assert second.steps[0].text == "Let me look it up."  # content next to a tool call is thinking
    assert second.steps[1].result_ids == ["au-1", "au-2"]
    assert second.steps[3].kind == "browse" and second.steps[3].text.startswith("Canberra is the capital")


def test_text_search_output_with_no_results_and_docid_prefix():
    query, hits = parse_search_output("No results found for 'xyz'. Try with a more general query.")
    assert query == "xyz" and len(hits) == 0 and list(hits) == []
    query, hits = parse_search_output(
        "A search for 'a b' found 1 results:\n\n## Web Results\nDocID:42\n[T]\nline one\n\nline two after a blank line"
    )
    assert query == "a b" and hits[0].doc_id == "42" and hits[0].snippet == "line one\n\nline two after a blank line"


@pytest.mark.parametrize(
    "mutate, reason, field",
    [
        (lambda d: d.pop("query_id"), "missing_field", "query_id"),
        (lambda d: d.update(result=[]), "empty_trajectory", "result"),
        (lambda d: d["result"][1].update(type="image"), "unknown_step_kind", "result[1].type"),
        (lambda d: d["result"][1].update(tool_name="python"), "unknown_step_kind", "result[1].tool_name"),
        (lambda d: d["result"][3].update(arguments="{docid: d-101"), "invalid_json", "result[3].arguments"),
        (lambda d: d["result"][3].update(arguments="{}"), "missing_field", "result[3].arguments.docid"),
        (lambda d: d["result"][5].update(arguments={"query": 5}), "wrong_type", "result[5].arguments.query"),
        (lambda d: d["result"][1].update(output='[{"score": 1.0}]'), "missing_field", "result[1].output[0].docid"),
        (lambda d: d.update(correct="yes"), "wrong_type", "correct"),
    ],
)
def test_browsecomp_bad_input(mutate, reason, field):
    record = json.loads((FIXTURES / "browsecomp_json_output.json").read_text())
    mutate(record)
    with pytest.raises(RecordError) as info:
        parse_trajectory(record)
    assert (info.value.reason, info.value.field) == (reason, field)


def test_unknown_format_and_forced_format():
    with pytest.raises(RecordError, match="unknown_format"):
        parse_trajectory({"foo": 1})
    record = json.loads((FIXTURES / "browsecomp_json_output.json").read_text())
    with pytest.raises(RecordError) as info:
        parse_trajectory(record, "openai")
    assert info.value.field == "messages"
