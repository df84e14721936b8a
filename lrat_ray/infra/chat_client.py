"""One OpenAI-compatible chat client for the judge, the agents and the grader.

Every LLM call of the project that goes over HTTP (a vLLM or SGLang server, Ray Serve LLM, a hosted
API) goes through :class:`ChatClient`, a thin layer over the ``openai`` package's clients (sync
and async), which time out per call and retry transport errors, timeouts, 408/409/429 and 5xx
answers with exponential backoff, honouring ``Retry-After`` (a server that sheds load is waited
for, not hammered). A 4xx other than those is the caller's mistake and is raised at once. This
layer adds what the project records: one error type naming the endpoint (:class:`ChatError`), the
assistant message as a plain dict, and the tokens and seconds the answered calls cost.

:func:`retry_delay` and :func:`bearer_headers` are the same policy for the retriever's own HTTP API
(the agents' retriever client, the benchmarks).
"""

from __future__ import annotations

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
    retries: int = 3  # retries after the first attempt (the openai clients' max_retries)


def retry_delay(attempt: int, retry_after: str | None, backoff_s: float = 0.5) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): at least the server's ``Retry-After``,
    spread by up to half again so that the clients a busy server turned away do not all come back
    in the same instant; without one, exponential backoff with jitter."""
    if retry_after:
        try:
            return min(float(retry_after), 60.0) * (1 + 0.5 * random.random())
        except ValueError:
            pass
    return min(backoff_s * 2**attempt, 30.0) * (0.5 + random.random())


def _message(completion) -> dict:
    try:
        message = completion.choices[0].message
    except (AttributeError, IndexError, TypeError):
        raise ChatError(f"malformed chat completion: {str(completion)[:300]}") from None
    # A plain dict as the server sent it (extra fields such as vLLM's reasoning_content kept).
    return message.model_dump(exclude_none=True)


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

    def _client_options(self) -> dict:
        # The openai clients need a key; a server without authentication ignores a placeholder.
        return {
            "base_url": self.endpoint.base_url.rstrip("/"),
            "timeout": self.endpoint.timeout_s,
            "api_key": os.environ.get(self.endpoint.api_key_env) or "no-key",
            "max_retries": self.endpoint.retries,
        }

    def session(self):
        """A blocking ``openai.OpenAI`` client (a context manager) to share between calls."""
        import openai

        return openai.OpenAI(**self._client_options())

    def async_session(self):
        """An ``openai.AsyncOpenAI`` client (an async context manager) to share between calls."""
        import openai

        return openai.AsyncOpenAI(**self._client_options())

    async def chat(self, messages: list[dict], client=None, **params) -> dict:
        """One completion; pass a shared client from :meth:`async_session` when sending many."""
        import openai

        if client is None:
            async with self.async_session() as own:
                return await self.chat(messages, own, **params)
        started = time.perf_counter()
        try:
            completion = await client.chat.completions.create(model=self.endpoint.model, messages=messages, **params)
        except openai.OpenAIError as exc:
            raise self._error(exc) from None
        return self._answer(completion, time.perf_counter() - started)

    def chat_sync(self, messages: list[dict], client=None, **params) -> dict:
        """Blocking :meth:`chat`; pass a shared client from :meth:`session` when sending many."""
        import openai

        if client is None:
            with self.session() as own:
                return self.chat_sync(messages, own, **params)
        started = time.perf_counter()
        try:
            completion = client.chat.completions.create(model=self.endpoint.model, messages=messages, **params)
        except openai.OpenAIError as exc:
            raise self._error(exc) from None
        return self._answer(completion, time.perf_counter() - started)

    def _error(self, exc: Exception) -> ChatError:
        import openai

        where = self.endpoint.base_url
        attempts = self.endpoint.retries + 1
        if isinstance(exc, openai.APIStatusError):
            text = f"HTTP {exc.status_code}: {exc.response.text[:300]}"
            retried = exc.status_code in (408, 409, 429) or exc.status_code >= 500
            return ChatError(f"{where}: gave up after {attempts} attempts: {text}" if retried else f"{where}: {text}")
        if isinstance(exc, openai.APIConnectionError):  # timeouts too, retried by the client
            return ChatError(f"{where}: gave up after {attempts} attempts: {type(exc).__name__}: {exc}")
        return ChatError(f"{where}: {type(exc).__name__}: {exc}")

    def _answer(self, completion, seconds: float) -> dict:
        message = _message(completion)
        usage = getattr(completion, "usage", None)
        self.usage["calls"] += 1
        self.usage["completion_tokens"] += int(getattr(usage, "completion_tokens", 0) or 0)
        self.usage["seconds"] += seconds
        return message
