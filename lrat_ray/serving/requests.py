"""The retriever API's requests, checked before they reach a batch: content type, body size, JSON,
queries and ``k`` (:class:`RequestError` carries the HTTP status), and the bearer token, which
replicas hold only as its SHA-256."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lrat_ray.serving.config import ServeConfig


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def parse_search_request(
    content_type: str | None, body: bytes, max_k: int, max_query_chars: int, max_queries: int
) -> tuple[list[str], int, bool]:
    """Validate a /search request; returns (queries, k, whether the query was a list)."""
    if (content_type or "").split(";")[0].strip().lower() != "application/json":
        raise RequestError(415, "content type must be application/json")
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"malformed JSON: {exc}") from None
    except RecursionError:  # the parser recurses per nesting level; the API needs two
        raise RequestError(400, "malformed JSON: nested too deeply") from None
    if not isinstance(payload, dict):
        raise RequestError(422, "the body must be a JSON object with 'query' and optional 'k'")
    query, k = payload.get("query"), payload.get("k", 10)
    as_list = isinstance(query, list)
    queries = query if as_list else [query]
    if not queries or len(queries) > max_queries:
        raise RequestError(422, f"'query' must hold 1 to {max_queries} queries")
    for q in queries:
        if not isinstance(q, str):
            raise RequestError(422, "'query' must be a string or a list of strings")
        if not q.strip():
            raise RequestError(422, "empty query")
        if len(q) > max_query_chars:
            raise RequestError(422, f"query longer than {max_query_chars} characters")
        try:
            q.encode("utf-8")  # JSON may carry lone surrogates (\ud800): no tokenizer takes them
        except UnicodeEncodeError as exc:
            raise RequestError(
                422, f"query is not valid Unicode text ({exc.reason} at character {exc.start})"
            ) from None
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= max_k:
        raise RequestError(422, f"'k' must be an integer from 1 to {max_k}")
    return queries, k, as_list


def resolve_token(settings: ServeConfig) -> str | None:
    """The bearer token: ``--token``, else the first line of ``--token-file``, else the
    ``token_env`` variable; None when none is set (no authentication)."""
    from lrat_ray.infra.errors import LratError

    if settings.token:
        return settings.token
    if settings.token_file:
        try:
            text = Path(settings.token_file).read_text().strip()
        except OSError as exc:
            raise LratError(f"token_file {settings.token_file}: {exc.strerror}") from None
        if not text:
            raise LratError(f"token_file {settings.token_file}: the file is empty")
        return text.splitlines()[0].strip()
    return os.environ.get(settings.token_env) or None


def token_digest(token: str | None) -> str | None:
    """What replicas hold instead of the token: it never reaches a deployment's config."""
    return None if token is None else hashlib.sha256(token.encode()).hexdigest()


def authorized(header: str | None, digest: str | None) -> bool:
    """``Authorization: Bearer <token>`` against the token's digest; the scheme is matched without
    regard to case, as HTTP defines it."""
    if digest is None:
        return True
    scheme, _, credentials = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(hashlib.sha256(credentials.strip().encode()).hexdigest(), digest)


async def read_body(request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes without reading the rest."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
