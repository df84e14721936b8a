"""One OpenAI-compatible chat client for the judge, the agents and the grader.

Every LLM call of the project that goes over HTTP (a vLLM or SGLang server, Ray Serve LLM, a hosted
API) goes through :class:`ChatClient`: a bearer token from an environment variable, a timeout per
call, and retries with exponential backoff on transport errors, 429 and 5xx answers (a
``Retry-After`` header is honoured, so a server that sheds load is waited for, not hammered). A 4xx
other than 429 is the caller's mistake and is raised at once. Both an async API (the judge sends
many prompts at once) and a blocking one (an agent takes one step at a time) share the policy.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass

from lrat_ray.infra.errors import LratError


def bearer_headers(token: str | None) -> dict[str, str]:
    """``Authorization: Bearer <token>`` when a token is set, else nothing."""
    return {"Authorization": f"Bearer {token}"} if token else {}


class ChatError(LratError):
    """A chat call that failed for good (after its retries, or at once for a client error)."""


@dataclass(frozen=True)
class ChatEndpoint:
    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 120.0
    retries: int = 3
    backoff_s: float = 0.5

    def headers(self) -> dict[str, str]:
        return bearer_headers(os.environ.get(self.api_key_env) or None)


def _retryable(status: int) -> bool:
    return status == 429 or status >= 500


def retry_delay(attempt: int, retry_after: str | None, backoff_s: float = 0.5) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): at least the server's ``Retry-After``,
    spread by up to half again so that the clients a busy server turned away do not all come back
    in the same instant; without one, exponential backoff with jitter."""
    if retry_after:
        try:
            return min(float(retry_after), 60.0) * (1 + 0.5 * random.random())
        except ValueError:
            pass
    return min(backoff_s * 2 ** attempt, 30.0) * (0.5 + random.random())


def _delay(endpoint: ChatEndpoint, attempt: int, retry_after: str | None) -> float:
    return retry_delay(attempt, retry_after, endpoint.backoff_s)


def _retry_reason(response) -> tuple[str, str | None]:
    return f"HTTP {response.status_code}: {response.text[:200]}", response.headers.get("retry-after")


def _message(payload: dict) -> dict:
    try:
        return payload["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        raise ChatError(f"malformed chat completion: {str(payload)[:300]}") from None


def _has_elapsed(response) -> bool:
    try:
        return response.elapsed is not None  # set once httpx has read the whole response; absent on hand-built ones
    except RuntimeError:
        return False


def usage_rate(usage: dict) -> float | None:
    """Generated tokens per second of waiting, over a client's (or several clients') ``usage``."""
    return round(usage["completion_tokens"] / usage["seconds"], 2) if usage.get("seconds") else None


class ChatClient:
    """Chat completions at ``endpoint``; ``chat`` returns the assistant message dict."""

    def __init__(self, endpoint: ChatEndpoint):
        self.endpoint = endpoint
        # What this client's answered calls cost: generated tokens (the server's ``usage``) and the
        # seconds spent waiting for them. A run records it; on a slow machine its rate says why.
        self.usage = {"calls": 0, "completion_tokens": 0, "seconds": 0.0}

    def _body(self, messages: list[dict], params: dict) -> dict:
        return {"model": self.endpoint.model, "messages": messages, **params}

    async def chat(self, messages: list[dict], client=None, **params) -> dict:
        """One completion; pass a shared ``httpx.AsyncClient`` from :meth:`async_session` when sending many."""
        if client is None:
            async with self.async_session() as own:
                return await self.chat(messages, own, **params)
        import httpx

        last = "no attempt"
        for attempt in range(self.endpoint.retries + 1):
            retry_after = None
            try:
                response = await client.post("/chat/completions", json=self._body(messages, params))
                if not _retryable(response.status_code):
                    return self._answer(response)
                last, retry_after = _retry_reason(response)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if attempt < self.endpoint.retries:
                await asyncio.sleep(_delay(self.endpoint, attempt, retry_after))
        raise self._gave_up(last)

    def chat_sync(self, messages: list[dict], client=None, **params) -> dict:
        """Blocking :meth:`chat`; pass a shared ``httpx.Client`` from :meth:`session` when sending many."""
        if client is None:
            with self.session() as own:
                return self.chat_sync(messages, own, **params)
        import httpx

        last = "no attempt"
        for attempt in range(self.endpoint.retries + 1):
            retry_after = None
            try:
                response = client.post("/chat/completions", json=self._body(messages, params))
                if not _retryable(response.status_code):
                    return self._answer(response)
                last, retry_after = _retry_reason(response)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if attempt < self.endpoint.retries:
                time.sleep(_delay(self.endpoint, attempt, retry_after))
        raise self._gave_up(last)

    def _gave_up(self, last: str) -> ChatError:
        return ChatError(f"{self.endpoint.base_url}: gave up after {self.endpoint.retries + 1} attempts: {last}")

    def _answer(self, response) -> dict:
        if response.status_code >= 400:
            raise ChatError(f"{self.endpoint.base_url}: HTTP {response.status_code}: {response.text[:300]}")
        try:
            payload = response.json()
        except ValueError:
            raise ChatError(f"{self.endpoint.base_url}: not JSON: {response.text[:200]}") from None
        message = _message(payload)
        usage = payload.get("usage") if isinstance(payload, dict) else None
        self.usage["calls"] += 1
        self.usage["completion_tokens"] += int((usage or {}).get("completion_tokens") or 0)
        self.usage["seconds"] += response.elapsed.total_seconds() if _has_elapsed(response) else 0.0
        return message

    def async_session(self):
        import httpx

        return httpx.AsyncClient(base_url=self.endpoint.base_url.rstrip("/"), headers=self.endpoint.headers(),
                                 timeout=self.endpoint.timeout_s)

    def session(self):
        import httpx

        return httpx.Client(base_url=self.endpoint.base_url.rstrip("/"), headers=self.endpoint.headers(),
                            timeout=self.endpoint.timeout_s)
