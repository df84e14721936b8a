import asyncio
import dataclasses
import json
import threading
import time
from collections import Counter

import httpx
import pytest
from conftest import jsonl_lines

from lrat_ray.infra.chat_client import bearer_headers
from lrat_ray.infra.runtime import free_port
from lrat_ray.serving.requests import RequestError, parse_search_request

TOKEN = "s3cret"


@pytest.mark.parametrize(
    "content_type, body, status",
    [
        ("text/plain", b'{"query": "x"}', 415),
        (None, b'{"query": "x"}', 415),
        ("application/json", b'{"query": ', 400),
        ("application/json", b'["x"]', 422),
        ("application/json", b'{"query": ""}', 422),
        ("application/json", b'{"query": "   "}', 422),
        ("application/json", json.dumps({"query": "x" * 2049}).encode(), 422),
        ("application/json", b'{"query": 5}', 422),
        ("application/json", b'{"query": []}', 422),
        ("application/json", b'{"query": "x", "k": 0}', 422),
        ("application/json", b'{"query": "x", "k": 101}', 422),
        ("application/json", b'{"query": "x", "k": "5"}', 422),
        ("application/json", b'{"query": "x", "k": true}', 422),
        ("application/json", b'{"query": "a\\ud800b"}', 422),  # a lone surrogate: no tokenizer takes it
        ("application/json", b'{"query": ["ok", "\\udfff"]}', 422),
        ("application/json", b"[" * 100_000 + b"]" * 100_000, 400),  # deeper than the parser recurses
    ],
)
def test_bad_search_requests_are_4xx(content_type, body, status):
    with pytest.raises(RequestError) as info:
        parse_search_request(content_type, body, max_k=100, max_query_chars=2048, max_queries=64)
    assert info.value.status == status


def test_good_search_request():
    assert parse_search_request("application/json; charset=utf-8", b'{"query": ["a", "b"], "k": 3}', 100, 2048, 64) == (
        ["a", "b"],
        3,
        True,
    )
    assert parse_search_request("application/json", b'{"query": "a"}', 100, 2048, 64) == (["a"], 10, False)


@pytest.fixture(scope="module")
def second_index(ray_session, msmarco_slice, tmp_path_factory):
    from lrat_ray.stages.index import IndexConfig, run_index

    root = tmp_path_factory.mktemp("second")
    (root / "corpus.jsonl").write_text("\n".join(jsonl_lines(msmarco_slice / "corpus.jsonl")[:60]) + "\n")
    run_index(
        IndexConfig(
            corpus=[str(root / "corpus.jsonl")], output=str(root / "index"), workers=1, shards=2, index_type="hnsw"
        )
    )  # the first index's shards: a composed app can swap
    return root / "index"


@pytest.fixture(scope="module", params=["whole", "composed"])
def server(request, ray_session, msmarco_index, serve_port):
    """The retriever in both layouts: every replica whole, or an ingress, an encoder deployment and
    one deployment per shard (the index has two)."""
    from ray import serve

    from lrat_ray.serving.config import ServeConfig
    from lrat_ray.serving.retriever import deploy

    settings = ServeConfig(
        index=str(msmarco_index), port=serve_port, token=TOKEN, replica_cpus=0.5, composed=request.param == "composed"
    )
    url = deploy(settings)
    client = httpx.Client(base_url=url, headers=bearer_headers(TOKEN), timeout=60)
    yield settings, url, client
    client.close()
    serve.shutdown()


def test_search_document_and_health(server, msmarco_index, msmarco_slice):
    from lrat_ray.stages.index import RetrievalIndex

    _, url, client = server
    assert url.startswith("http://127.0.0.1:")
    queries = [json.loads(l)["text"] for l in jsonl_lines(msmarco_slice / "queries.jsonl")]
    one = client.post("/search", json={"query": queries[0], "k": 5})
    assert one.status_code == 200
    hits = one.json()["results"]
    assert len(hits) == 5 and set(hits[0]) == {"docid", "score", "title", "snippet"}
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    # same ranking as searching the index in-process
    from lrat_ray.models.encoder import Encoder

    index = RetrievalIndex.load(str(msmarco_index))
    local = index.search(Encoder(index.spec).encode_queries([queries[0]]), 5)[0]
    assert [h["docid"] for h in hits] == [d for d, _ in local]
    many = client.post("/search", json={"query": queries[:3], "k": 2}).json()["results"]
    assert len(many) == 3 and all(len(r) == 2 for r in many)
    assert [h["docid"] for h in many[0]] == [h["docid"] for h in hits[:2]]  # scores differ by float noise
    assert [h["score"] for h in many[0]] == pytest.approx([h["score"] for h in hits[:2]], abs=1e-5)
    doc = client.get(f"/documents/{hits[0]['docid']}").json()
    assert doc["docid"] == hits[0]["docid"] and doc["text"].startswith(hits[0]["snippet"][:50])
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["documents"] == index.count
    assert health["shards"] == len(index.shards) == 2
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}  # without the token: liveness only
    lower = httpx.post(f"{url}/search", json={"query": "axon"}, headers={"authorization": f"bearer {TOKEN}"})
    assert lower.status_code == 200  # the scheme is case-insensitive


def test_concurrent_requests_are_batched_and_all_answered(server):
    _, url, _ = server

    async def burst():
        async with httpx.AsyncClient(base_url=url, headers=bearer_headers(TOKEN), timeout=60) as client:
            return await asyncio.gather(
                *(client.post("/search", json={"query": f"query number {i}", "k": 3}) for i in range(24))
            )

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 24


def test_poisoned_queries_in_a_batch_fail_alone(server):
    """Good and bad requests at the same moment, so they share batches: every good one answered."""
    _, url, _ = server
    bad = b'{"query": "a\\ud800b", "k": 3}'

    async def burst():
        async with httpx.AsyncClient(base_url=url, headers=bearer_headers(TOKEN), timeout=60) as client:
            good = [client.post("/search", json={"query": f"query number {i}", "k": 3}) for i in range(24)]
            poisoned = [
                client.post("/search", content=bad, headers={"content-type": "application/json"}) for _ in range(3)
            ]
            return await asyncio.gather(*good[:8], *poisoned[:1], *good[8:16], *poisoned[1:], *good[16:])

    for _ in range(2):
        responses = asyncio.run(burst())
        statuses = [r.status_code for r in responses]
        assert statuses.count(200) == 24 and statuses.count(422) == 3, statuses
        assert all("error" in r.json() for r in responses if r.status_code == 422)


@pytest.mark.parametrize(
    "request_kwargs, status",
    [
        (
            {
                "method": "POST",
                "url": "/search",
                "content": b'{"query": "' + b"x" * (2 << 20) + b'"}',
                "headers": {"content-type": "application/json"},
            },
            413,
        ),
        (
            {
                "method": "POST",
                "url": "/search",
                "content": b"[" * 1000 + b"]" * 1000,
                "headers": {"content-type": "application/json"},
            },
            400,
        ),
        ({"method": "GET", "url": "/no-such-route"}, 404),
        ({"method": "GET", "url": "/search"}, 405),
        (
            {
                "method": "POST",
                "url": "/search",
                "content": b'{"query": "x"}',
                "headers": {"content-type": "text/plain"},
            },
            415,
        ),
        (
            {
                "method": "POST",
                "url": "/search",
                "content": b'{"query": ',
                "headers": {"content-type": "application/json"},
            },
            400,
        ),
        ({"method": "POST", "url": "/search", "json": {"query": ""}}, 422),
        ({"method": "POST", "url": "/search", "json": {"query": "y" * 5000}}, 422),
        ({"method": "POST", "url": "/search", "json": {"query": "x", "k": 1000}}, 422),
        ({"method": "GET", "url": "/documents/no-such-doc"}, 404),
    ],
)
def test_bad_inputs_get_json_4xx(server, request_kwargs, status):
    _, _, client = server
    response = client.request(**request_kwargs)
    assert response.status_code == status and "error" in response.json(), response.text[:200]


def test_bearer_token_is_required(server):
    _, url, _ = server
    assert httpx.post(f"{url}/search", json={"query": "x"}).status_code == 401
    wrong = httpx.post(f"{url}/search", json={"query": "x"}, headers=bearer_headers("nope"))
    assert wrong.status_code == 401 and wrong.json()["error"]
    assert httpx.get(f"{url}/documents/x").status_code == 401


@pytest.mark.parametrize("server", ["whole"], indirect=True)  # same ingress code in both layouts
def test_mcp_tools_answer_like_http(server):
    import uvicorn
    from mcp.client.client import Client

    from lrat_ray.serving.mcp import McpConfig, build_mcp_server

    _, url, client = server
    port = free_port()
    app = build_mcp_server(McpConfig(url=url, port=port, token=TOKEN)).streamable_http_app(host="127.0.0.1")
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    for _ in range(100):
        if uv.started:
            break
        time.sleep(0.05)

    async def call():
        async with Client(f"http://127.0.0.1:{port}/mcp") as mcp:
            names = sorted(t.name for t in (await mcp.list_tools()).tools)
            found = await mcp.call_tool("search", {"query": "definition of environment", "k": 3})
            return names, json.loads(found.content[0].text)

    try:
        names, found = asyncio.run(call())
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
    assert names == ["get_document", "search"]
    direct = client.post("/search", json={"query": "definition of environment", "k": 3}).json()["results"]
    assert [h["docid"] for h in found["results"]] == [h["docid"] for h in direct]


def test_swap_index_under_load_drops_no_request(server, second_index):
    from lrat_ray.serving.retriever import swap_index

    settings, url, _ = server
    replica = httpx.get(f"{url}/healthz", headers=bearer_headers(TOKEN), timeout=30).json()["replica"]
    outcomes: list = []
    stop = threading.Event()

    def agent():
        with httpx.Client(base_url=url, headers=bearer_headers(TOKEN), timeout=60) as c:
            while not stop.is_set():
                try:
                    r = c.post("/search", json={"query": "what is an axon terminal", "k": 3})
                    outcomes.append((r.status_code, r.json().get("index")))
                except httpx.HTTPError as exc:
                    outcomes.append(("error", repr(exc)))

    threads = [threading.Thread(target=agent) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    swap_index(settings, str(second_index))
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join()
    counts = Counter(status for status, _ in outcomes)
    indexes = [index for status, index in outcomes if status == 200]
    assert counts == {200: len(outcomes)}, counts
    assert indexes[0] == settings.index and indexes[-1] == str(second_index)
    # once switched, never back: each request saw one whole index
    first_new = indexes.index(str(second_index))
    assert set(indexes[first_new:]) == {str(second_index)}
    assert (
        httpx.get(f"{url}/healthz", headers=bearer_headers(TOKEN), timeout=30).json()["replica"] == replica
    )  # reconfigured in place

    # the same from the command line, against the running cluster: back to the first index
    from lrat_ray.cli import main

    assert (
        main(
            [
                "serve",
                "--swap",
                "--index",
                settings.index,
                "--port",
                str(settings.port),
                "--token",
                TOKEN,
                "--replica-cpus",
                "0.5",
                *(["--composed"] if settings.composed else []),
            ]
        )
        == 0
    )
    health = httpx.get(f"{url}/healthz", headers=bearer_headers(TOKEN), timeout=30).json()
    assert health["index"] == settings.index


@pytest.mark.parametrize("server", ["whole"], indirect=True)  # same ingress code in both layouts
def test_a_full_replica_turns_requests_away_with_retry_after_and_the_agent_client_retries(server):
    from concurrent.futures import ThreadPoolExecutor

    from lrat_ray.agents.retrievers import RetrieverClient
    from lrat_ray.serving.retriever import deploy

    settings, url, _ = server
    deploy(dataclasses.replace(settings, max_in_flight=1))

    async def burst():
        async with httpx.AsyncClient(base_url=url, headers=bearer_headers(TOKEN), timeout=60) as client:
            return await asyncio.gather(
                *(client.post("/search", json={"query": f"query number {i}", "k": 3}) for i in range(48))
            )

    responses = asyncio.run(burst())
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) == {200, 503} and statuses[200] >= 1, statuses
    turned_away = next(r for r in responses if r.status_code == 503)
    # Retry-After: the drain time at the replica's answer rate per busy second (exact values in
    # test_admission.py), a second or a few here; idle time before the burst must not stretch it.
    assert 1 <= int(turned_away.headers["retry-after"]) <= 5 and "busy" in turned_away.json()["error"]

    clients = [RetrieverClient(url, TOKEN) for _ in range(12)]

    def searches(client):
        return [len(client.search(f"axon terminal {i}", 3)) for i in range(4)]

    with ThreadPoolExecutor(len(clients)) as pool:
        answered = [n for found in pool.map(searches, clients) for n in found]
    assert answered == [3] * 48  # every search answered in the end
    assert sum(c.retried for c in clients) > 0  # after waiting out some 503s


def test_one_failing_request_in_a_batch_fails_alone(ray_session, msmarco_index):
    """A request that passes every check but still breaks the encoder (a fault, not bad input)
    is answered 500 alone; its batch-mates get their results."""
    import functools
    import types

    from lrat_ray.serving.admission import Admission
    from lrat_ray.serving.deployments import make_deployment
    from lrat_ray.serving.search import LocalSearch, SearchBackend, _Failed

    backend = LocalSearch(snippet_chars=100)
    asyncio.run(backend.load(str(msmarco_index)))
    assert isinstance(backend, SearchBackend)  # the protocol the ingress types its backend with

    async def faulty(queries, depth):
        if any("poison" in q for q in queries):
            raise RuntimeError("the encoder broke")
        return await LocalSearch.search(backend, queries, depth)

    backend.search = faulty
    ingress = make_deployment().func_or_class  # the deployment's class, its methods called on a stand-in
    counter = types.SimpleNamespace(observe=lambda n: None, inc=lambda n: None)
    retriever = types.SimpleNamespace(
        backend=backend,
        batch_size=counter,
        queries_total=counter,
        admission=Admission(max_in_flight=4, retry_after_s=1),
    )
    retriever._search_together = functools.partial(ingress._search_together, retriever)
    retriever._search_alone = functools.partial(ingress._search_alone, retriever)
    out = asyncio.run(ingress._search(retriever, [(["axon terminal"], 3), (["poison pill"], 3), (["heart attack"], 2)]))
    assert isinstance(out[1], _Failed) and "RuntimeError" in out[1].message
    assert [len(r[0]) for i, r in enumerate(out) if i != 1] == [3, 2]
    assert retriever.admission.answered == 3  # the failed one too: it was answered (with its error)


def test_a_layout_the_cluster_cannot_hold_fails_at_once(ray_session, msmarco_index, serve_port):
    from lrat_ray.infra.errors import LratError
    from lrat_ray.serving.config import ServeConfig
    from lrat_ray.serving.retriever import check_placement, deploy

    composed = ServeConfig(index=str(msmarco_index), composed=True, shard_cpus=1.0, replica_cpus=1.0)
    check_placement(dataclasses.replace(composed, shard_cpus=0.25, replica_cpus=0.5), {"CPU": 2.0})  # fits
    with pytest.raises(LratError, match=r"needs 3\.25 CPU .*1 IndexShard0 x 1.*but the cluster has 2"):
        check_placement(composed, {"CPU": 2.0})
    started = time.time()
    with pytest.raises(LratError, match="cannot be placed"):
        deploy(dataclasses.replace(composed, port=serve_port, shard_cpus=64))
    assert time.time() - started < 30


def test_lrat_serve_takes_its_token_from_the_environment_and_listens_on_loopback_only(msmarco_index, tmp_path, capsys):
    """`lrat serve` as a user starts it: the token never in any process's argv, and every socket
    its local Ray listens on (GCS, raylet, workers, agents, Serve) bound to 127.0.0.1 (read from the OS)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import psutil

    from lrat_ray.cli import main

    assert main(["serve", "--index", str(tmp_path)]) == 2  # not an index: one line, before any Ray starts
    assert "is not an lrat index" in capsys.readouterr().err

    secret, port = "token-from-the-environment-7f3a", free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "lrat"),
            "serve",
            "--index",
            str(msmarco_index),
            "--port",
            str(port),
            "--replica-cpus",
            "0.5",
        ],
        env={**os.environ, "LRAT_SERVE_TOKEN": secret},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        for line in server.stdout:  # returns once it serves (or the process ends)
            lines.append(line)
            if line.startswith("serving "):
                break
        assert lines and lines[-1].startswith("serving "), "".join(lines)[-3000:]
        url = f"http://127.0.0.1:{port}"
        assert httpx.post(f"{url}/search", json={"query": "axon"}).status_code == 401
        assert httpx.post(f"{url}/search", json={"query": "axon"}, headers=bearer_headers(secret)).status_code == 200
        assert not [p.pid for p in psutil.process_iter(["cmdline"]) if secret in " ".join(p.info["cmdline"] or [])]
        ours = {server.pid, *(child.pid for child in psutil.Process(server.pid).children(recursive=True))}
        listening = {
            (c.laddr.ip, c.laddr.port, psutil.Process(c.pid).name())
            for c in psutil.net_connections("inet")
            if c.status == psutil.CONN_LISTEN and c.pid in ours
        }
        assert len(listening) >= 5  # GCS, raylet, agents, Serve's controller and proxy at least
        assert {ip for ip, _, _ in listening} <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, [
            entry for entry in listening if entry[0] not in ("127.0.0.1", "::ffff:127.0.0.1")
        ]
    finally:
        server.send_signal(2)  # Ctrl-C
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
