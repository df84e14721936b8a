"""The ReAct agent: driven by any OpenAI-compatible chat endpoint (a vLLM or SGLang server, Ray
Serve LLM, a hosted API) with function calling: tools ``search(query)``, ``get_document(docid)``
and ``answer(answer)``, each with a ``thought``; the model's reasoning (``reasoning_content``) is
kept, ``max_turns`` tool calls at most, and the final answer is graded (:mod:`lrat_ray.agents.grading`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from lrat_ray.agents.recorder import RunRecorder, doc_text

if TYPE_CHECKING:
    from lrat_ray.agents.config import AgentConfig
    from lrat_ray.agents.retrievers import Retriever
    from lrat_ray.agents.tasks import Task


def _tool(
    name: str,
    description: str,
    argument: str,
    argument_help: str,
    max_length: int,
    choices: list[str] | None = None,
    thought_chars: int = 400,
) -> dict:
    # Every tool also takes the agent's thought, so the reasoning written after reading a document
    # (what LRAT weighs and judges) exists even for models that write no free text around a call.
    # maxLength bounds each string: small models otherwise loop inside an argument until max_tokens.
    value = {"type": "string", "enum": choices} if choices else {"type": "string", "maxLength": max_length}
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "strict": True,
            "parameters": {
                "type": "object",
                "additionalProperties": False,
                "required": ["thought", argument],
                "properties": {
                    "thought": {
                        "type": "string",
                        "maxLength": thought_chars,
                        "description": "what you learned so far and why you take this step",
                    },
                    argument: {**value, "description": argument_help},
                },
            },
        },
    }


def search_tool(thought_chars: int = 400) -> dict:
    return _tool(
        "search",
        "Search the corpus; returns the top results with docid and snippet.",
        "query",
        "the search query",
        300,
        thought_chars=thought_chars,
    )


def answer_tool(thought_chars: int = 400) -> dict:
    return _tool(
        "answer",
        "Give the final answer and stop.",
        "answer",
        "the final answer, short",
        300,
        thought_chars=thought_chars,
    )


BROWSABLE = 20  # docids get_document accepts: those of the latest search results


def tools_for(shown: list[str], may_answer: bool, must_read: bool, thought_chars: int = 400) -> list[dict]:
    """The tools of one turn. get_document takes only docids the agent has been shown (an enum,
    enforced by servers that decode tool calls against their schema): an agent opens documents it
    found, as in the logs LRAT mines, and a small model cannot invent ids. ``answer`` is offered
    once the agent has read enough (``min_reads``); with ``must_read`` (right after a search, when
    ``read_after_search``) reading one of the results is the only move."""
    browse = [
        _tool(
            "get_document",
            "Read one document in full by its docid.",
            "docid",
            "a docid from the search results",
            64,
            list(dict.fromkeys(reversed(shown)))[:BROWSABLE],
            thought_chars,
        )
    ]
    if must_read and shown:
        return browse
    return (
        [search_tool(thought_chars)] + (browse if shown else []) + ([answer_tool(thought_chars)] if may_answer else [])
    )


SYSTEM_PROMPT = (
    "You are a deep-research agent. Use search to find documents and get_document to read the "
    "promising ones in full. In every call, write your thought: what the last result told you. "
    "When you are confident, call answer."
)


def run_llm(task: Task, client: Retriever, config: AgentConfig) -> dict:
    """The ReAct loop: one tool call per turn (tool choice required), ``max_turns`` searches and
    reads, then a forced ``answer``; the final answer is graded against the task's gold answer."""
    from lrat_ray.agents.grading import Grader
    from lrat_ray.infra.chat_client import ChatClient, ChatEndpoint

    llm = ChatClient(ChatEndpoint(config.endpoint, config.model, config.api_key_env, config.timeout_s, config.retries))
    recorder = RunRecorder(task, {"agent": "llm", "model": config.model, "endpoint": config.endpoint})
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": config.task_prompt.format(question=task.question)},
    ]
    params = {"temperature": config.temperature, "max_tokens": config.max_tokens}
    final = None
    shown: list[str] = []
    previous = None
    with llm.session() as http:
        for turn in range(config.max_turns + 1):
            last = turn == config.max_turns
            must_read = config.read_after_search and previous == "search"
            tools = (
                [answer_tool(config.thought_chars)]
                if last
                else tools_for(
                    shown, recorder.counts["get_document"] >= config.min_reads, must_read, config.thought_chars
                )
            )
            choice = {"type": "function", "function": {"name": "answer"}} if last else "required"
            message = llm.chat_sync(messages, http, tools=tools, tool_choice=choice, **params)
            calls = message.get("tool_calls") or []
            if not calls:  # a model that answers in plain text has answered
                final = message.get("content") or ""
                break
            call = calls[0]  # one call per turn keeps the trajectory linear
            name, args = call["function"]["name"], _arguments(call["function"].get("arguments"))
            thought = "\n".join(
                t for t in (message.get("reasoning_content"), message.get("content"), args.get("thought")) if t
            )
            if thought:
                recorder.think(thought)
            if name == "answer":
                final = str(args.get("answer") or "")
                break
            messages.append(
                {
                    "role": "assistant",
                    "content": message.get("content") or "",
                    "tool_calls": [
                        {
                            "id": call.get("id") or f"call-{turn}",
                            "type": "function",
                            "function": {"name": name, "arguments": json.dumps(args)},
                        }
                    ],
                }
            )
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": call.get("id") or f"call-{turn}",
                    "content": _run_tool(name, args, client, recorder, config),
                }
            )
            if name == "search" and recorder.last_hits is not None:
                shown.extend(recorder.last_hits)
            previous = name
    recorder.metadata["llm_usage"] = dict(llm.usage)
    grader = Grader(config.grader_config(), config.endpoint, config.model)
    return recorder.answer(final or "", grader.grade(task.question, final, task.answer))


def _arguments(raw) -> dict:
    if isinstance(raw, dict):
        return raw
    try:
        decoded = json.loads(raw or "{}")
        return decoded if isinstance(decoded, dict) else {}
    except json.JSONDecodeError:
        return {}


def _run_tool(name: str, args: dict, client: Retriever, recorder: RunRecorder, config: AgentConfig) -> str:
    if name == "search" and isinstance(args.get("query"), str) and args["query"].strip():
        hits = client.search(args["query"], config.k)
        recorder.search(args["query"], hits)
        return json.dumps([{"docid": h["docid"], "snippet": h["snippet"]} for h in hits], ensure_ascii=False)
    if name == "get_document" and str(args.get("docid") or "").strip():
        document = client.document(str(args["docid"]).strip())
        recorder.browse(str(args["docid"]).strip(), document)
        return doc_text(document)[: config.document_chars] or "document not found"
    return f"invalid tool call {name}({json.dumps(args)[:200]}): use search(query), get_document(docid) or answer"
