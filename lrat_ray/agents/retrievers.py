"""The two retriever tools an agent calls, ``search(query, k)`` and ``document(doc_id)``, behind
one protocol: over the served HTTP API (:class:`RetrieverClient`, as deployed agents use it) or
over an index and encoder in this process (:class:`LocalRetriever`, for experiments)."""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Retriever(Protocol):
    """What an agent needs from a retriever; results have the served API's shape
    (``docid``, ``score``, ``title``, ``snippet``; documents ``docid``, ``title``, ``text``)."""

    def search(self, query: str, k: int) -> list[dict]: ...

    def document(self, doc_id: str) -> dict | None: ...


class RetrieverClient:
    """The two tools over the retriever's HTTP API. A busy retriever answers 503 (or 429) with
    ``Retry-After``; the client waits that long (with jitter) and asks again, up to ``retries``
    times, and counts the turn-aways in ``retried``."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 120.0, retries: int = 20):
        import httpx

        from lrat_ray.infra.chat_client import bearer_headers

        self.http = httpx.Client(base_url=url, headers=bearer_headers(token), timeout=timeout_s)
        self.retries = retries
        self.retried = 0

    def _send(self, method: str, path: str, **kwargs):
        from lrat_ray.infra.chat_client import retry_delay

        for attempt in range(self.retries + 1):
            response = self.http.request(method, path, **kwargs)
            if response.status_code not in (429, 503) or attempt == self.retries:
                return response
            self.retried += 1
            time.sleep(retry_delay(attempt, response.headers.get("retry-after")))
        raise AssertionError("unreachable")

    def search(self, query: str, k: int) -> list[dict]:
        response = self._send("POST", "/search", json={"query": query[:2000] or "?", "k": k})
        response.raise_for_status()
        return response.json()["results"]

    def document(self, doc_id: str) -> dict | None:
        response = self._send("GET", f"/documents/{doc_id}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    def close(self) -> None:
        self.http.close()


class LocalRetriever:
    """The same two tools over a FAISS index and encoder in this process (no HTTP, no Serve), with
    the served API's result shape: for experiments that roll out many agents on one index
    (``lrat ablation``)."""

    def __init__(self, index, encoder, snippet_chars: int = 300):
        self.index, self.encoder, self.snippet_chars = index, encoder, snippet_chars

    def search(self, query: str, k: int) -> list[dict]:
        hits = self.index.search(self.encoder.encode_queries([query[:2000] or "?"]), k)[0]
        results = []
        for doc_id, score in hits:
            document = self.index.document(doc_id)
            results.append(
                {
                    "docid": doc_id,
                    "score": score,
                    "title": document.get("title"),
                    "snippet": (document.get("text") or "")[: self.snippet_chars],
                }
            )
        return results

    def document(self, doc_id: str) -> dict | None:
        document = self.index.document(doc_id)
        return (
            None
            if document is None
            else {"docid": doc_id, "title": document.get("title"), "text": document.get("text")}
        )
