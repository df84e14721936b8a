"""The agent kinds, registered by name: a kind is a function (task, retriever, config) -> run file.

The rollout actors, the flywheel and the ablation look a kind up here; nothing else branches on
its name. Register another with :func:`register_agent`.
"""

from __future__ import annotations

from collections.abc import Callable

from lrat_ray.agents.react import run_llm
from lrat_ray.agents.simulated import run_simulated, run_simulated_judged

AgentLoop = Callable[..., dict]  # (Task, Retriever, AgentConfig) -> a BrowseComp-Plus run file

AGENT_KINDS: dict[str, AgentLoop] = {}


def register_agent(name: str, loop: AgentLoop) -> AgentLoop:
    AGENT_KINDS[name] = loop
    return loop


register_agent("simulated", run_simulated)  # browses from snippets; needs qrels
register_agent("simulated-judged", run_simulated_judged)  # browses from the judgments (the earlier agent)
register_agent("llm", run_llm)  # a ReAct agent on an OpenAI-compatible endpoint
