"""A scripted OpenAI-compatible chat server for tests (no model behind it).

It answers ``POST /v1/chat/completions`` by rules on the last user message, so tests can check
that our clients send the right requests and handle every kind of answer:

* judge prompts: reasoning containing "useless" -> ``NOT_RELEVANT``; "garbage" -> an answer with
  no label; "flaky" -> HTTP 500 on the first attempt, then ``RELEVANT``; otherwise a thinking-model
  style ``<think>...</think>RELEVANT``;
* agent conversations (requests with ``tools``): first a ``search`` tool call with the question,
  then a ``get_document`` call for the first docid in the search result, then a final answer.
"""

import json
import re
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


class ScriptedOpenAI:
    def __init__(self):
        self.calls = 0
        self.seen_flaky: set[str] = set()
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self.complete)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
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
        reasoning = prompt.split("right after reading it:\n", 1)[1].split("\n\nDecision rule", 1)[0]
        if "flaky" in reasoning and reasoning not in self.seen_flaky:
            self.seen_flaky.add(reasoning)
            return JSONResponse({"error": "overloaded"}, status_code=500)
        if "useless" in reasoning:
            return self._message({"role": "assistant", "content": "NOT_RELEVANT"})
        if "garbage" in reasoning:
            return self._message({"role": "assistant", "content": "I am not sure what you mean."})
        return self._message({"role": "assistant", "content": "<think>The agent used it.</think>\nRELEVANT"})

    def _agent_turn(self, messages):
        tool_messages = [m for m in messages if m["role"] == "tool"]
        question = next(m["content"] for m in messages if m["role"] == "user")
        if not tool_messages:
            call = {"name": "search", "arguments": json.dumps({"query": question})}
            return {"role": "assistant", "reasoning_content": "I should search first.", "content": None,
                    "tool_calls": [{"id": "call-1", "type": "function", "function": call}]}
        if len(tool_messages) == 1:
            found = re.search(r'"docid": "([^"]+)"', tool_messages[0]["content"])
            call = {"name": "get_document", "arguments": json.dumps({"docid": found.group(1)})}
            return {"role": "assistant", "reasoning_content": "The first hit looks right; open it.", "content": None,
                    "tool_calls": [{"id": "call-2", "type": "function", "function": call}]}
        return {"role": "assistant", "reasoning_content": "The document answers it.", "content": "Final answer."}

    @staticmethod
    def _message(message):
        return {"id": "x", "object": "chat.completion", "model": "scripted",
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
