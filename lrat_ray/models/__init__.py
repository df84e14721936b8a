"""The models: the bi-encoder (queries and documents in one space), padding-free packed encoding,
and the two embedded defaults prepared from PyPI packages (MiniLM embedder, SmolLM2 chat model)."""
