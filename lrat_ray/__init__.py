"""lrat-ray: train retrievers for LLM search agents from the agents' own trajectories, on Ray.

Implements LRAT (Zhou et al., "Learning to Retrieve from Agent Trajectories", SIGIR 2026): mine
(query, browsed document) pairs from agent logs, weight them by the length of the reasoning the
document triggered, and train a bi-encoder with weighted InfoNCE.
"""

__version__ = "0.1.0"
