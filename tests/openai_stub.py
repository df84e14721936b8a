"""A scripted OpenAI-compatible chat server for tests (no model behind it).

It answers ``POST /v1/chat/completions`` by rules on the last user message, so tests can check
that our clients send the right requests and handle every kind of answer:

* judge prompts: reasoning containing "useless" -> ``NOT_RELEVANT``; "garbage" -> an answer with
  no label; "flaky" -> HTTP 500 on the first attempt, then ``RELEVANT``; "busy" -> HTTP 503 with
  ``Retry-After`` on the first attempt; otherwise a thinking-model style ``<think>...</think>RELEVANT``;
* grader prompts (with ``[correct_answer]``): ``{"correct": "yes"}`` when the response contains the
  correct answer, else ``"no"``;
* agent conversations (requests with ``tools``): first a ``search`` tool call with the question,
  then a ``get_document`` call for the first docid in the search result, then an ``answer`` call
  naming that docid.
"""

import json
import re
import threading
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from lrat_ray.infra.runtime import free_port


class ScriptedOpenAI:
    def __init__(self):
        self.calls = 0
        self.seen_flaky: set[str] = set()
        self.last_docid = None
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self.complete)
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self):
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                break
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=5)

    async def complete(self, request: Request):
        self.calls += 1
        body = await request.json()
        if body.get("tools"):
            return self._message(self._agent_turn(body["messages"]))
        prompt = body["messages"][-1]["content"]
        if "[correct_answer]" in prompt:
            response = prompt.split("[response]: ", 1)[1].split("\n\n[correct_answer]: ", 1)
            gold = response[1].split("\n", 1)[0]
            verdict = "yes" if any(g in response[0] for g in gold.split(" or ")) else "no"
            return self._message(
                {
                    "role": "assistant",
                    "content": json.dumps({"extracted_final_answer": response[0], "correct": verdict}),
                }
            )
        reasoning = prompt.split("AnalysisText:\n", 1)[1]
        for trigger, status in (("flaky", 500), ("busy", 503)):
            if trigger in reasoning and reasoning not in self.seen_flaky:
                self.seen_flaky.add(reasoning)
                return JSONResponse({"error": "overloaded"}, status_code=status, headers={"Retry-After": "0.1"})
        if "useless" in reasoning:
            return self._message({"role": "assistant", "content": "NOT_RELEVANT"})
        if "garbage" in reasoning:
            return self._message({"role": "assistant", "content": "I am not sure what you mean."})
        return self._message({"role": "assistant", "content": "<think>The agent used it.</think>\nRELEVANT"})

    def _agent_turn(self, messages):
        tool_messages = [m for m in messages if m["role"] == "tool"]
        question = next(m["content"] for m in messages if m["role"] == "user")
        if not tool_messages:
            call = {"name": "search", "arguments": json.dumps({"thought": "I should search first.", "query": question})}
        elif len(tool_messages) == 1:
            self.last_docid = re.search(r'"docid": "([^"]+)"', tool_messages[0]["content"]).group(1)
            call = {
                "name": "get_document",
                "arguments": json.dumps({"thought": "The first hit looks right; open it.", "docid": self.last_docid}),
            }
        else:
            call = {
                "name": "answer",
                "arguments": json.dumps({"thought": "The document answers it.", "answer": f"docid {self.last_docid}"}),
            }
        return {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": f"call-{len(tool_messages)}", "type": "function", "function": call}],
        }

    @staticmethod
    def _message(message):
        return {
            "id": "x",
            "object": "chat.completion",
            "model": "scripted",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        }
