"""The agents that produce trajectories: retriever clients, the run recorder, the simulated and
ReAct (LLM) agents, answer grading and the Ray actors that roll them out."""
