"""What this machine computes fast: the one place that chooses bfloat16 or float32.

bfloat16 halves memory traffic and runs on native instructions on CUDA GPUs and on CPUs with
AVX512-BF16 or AMX; elsewhere (an AVX2-only EPYC, say) the CPU emulates it and it is ~3x *slower*
than float32 (vLLM on SmolLM2-135M: 17.6 generated tokens/s in bf16 against 53.6 in fp32 on such a
machine). So nothing in the project hard-codes a precision. Every option that can take either
(``--bf16`` for indexing, serving and training; the dtype of the vLLM engines of the judge and
the agents' LLM) defaults to *auto*, resolved here:

* CUDA device: bf16 where the GPU supports it;
* CPU with ``avx512_bf16`` or ``amx_bf16`` in its flags: bf16;
* any other CPU: fp32.

``LRAT_PRECISION=fp32`` (or ``bf16``) overrides what *auto* resolves to on a machine, e.g. to
take the AVX2 path on an AVX-512 machine, or to keep a test suite on one numeric path whatever
CPU runs it. An explicit ``--bf16`` / ``--no-bf16`` always wins over both.

Whatever a stage resolved is written into its report or manifest together with
:func:`describe` (CPU model, the precision-relevant ISA flags, the GPU), so a figure can always be
traced to the hardware and precision that produced it.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

CPUINFO = "/proc/cpuinfo"
ENV = "LRAT_PRECISION"
PRECISIONS = ("auto", "bf16", "fp32")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# The ISA flags that decide how fast fp32/bf16 run; recorded with every result (a full flag list is
# ~100 words of noise).
RECORDED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class CpuInfo:
    """The CPU's model name and ISA flags, as ``/proc/cpuinfo`` gives them."""

    model: str
    flags: frozenset[str]

    @property
    def bf16_native(self) -> bool:
        return any(flag in self.flags for flag in BF16_FLAGS)


def parse_cpuinfo(text: str) -> CpuInfo:
    """The first processor's ``model name`` and ``flags`` (all cores of a machine agree)."""
    model, flags = "unknown", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown":
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
        if model != "unknown" and flags:
            break
    return CpuInfo(model, flags)


@functools.cache
def cpu_info(path: str = CPUINFO) -> CpuInfo:
    """This machine's CPU; an unreadable file (not Linux) gives an unknown CPU without flags, which
    resolves to fp32: the choice that is never slow by much."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return parse_cpuinfo(fh.read())
    except OSError:
        return CpuInfo("unknown", frozenset())


def override() -> str:
    """``LRAT_PRECISION`` (auto when unset); an unknown value is an error, not silently auto."""
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in PRECISIONS:
        raise ValueError(f"{ENV}={value!r}: expected one of {list(PRECISIONS)}")
    return value


def default_device() -> str:
    """Where a model runs unless told otherwise: the first GPU, else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _cuda_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def fast_bf16(device: str = "cpu", cpu: CpuInfo | None = None) -> bool:
    """Whether bfloat16 is the faster precision on ``device`` ("cpu", "cuda", "cuda:1", ...)."""
    forced = override()
    if forced != "auto":
        return forced == "bf16"
    if str(device).startswith("cuda"):
        return _cuda_bf16()
    return (cpu or cpu_info()).bf16_native


def resolve_bf16(value: bool | None, device: str = "cpu", cpu: CpuInfo | None = None) -> bool:
    """An option's bf16 setting: ``True``/``False`` as given, ``None`` (auto) by :func:`fast_bf16`."""
    return bool(value) if value is not None else fast_bf16(device, cpu)


def parse_auto(value) -> bool | None:
    """An on/off/auto option (``bf16``, ``packing``) as given in YAML, JSON or Python: a bool, or
    ``auto``/``on``/``off`` and friends as text (``None`` = auto)."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text == "auto":
        return None
    if text in ("true", "on", "yes", "1", "bf16"):
        return True
    if text in ("false", "off", "no", "0", "fp32"):
        return False
    raise ValueError(f"{value!r} is not one of auto, true, false")


DTYPES = ("auto", "bfloat16", "float32", "float16")


def engine_dtype(requested: str = "auto", gpus: int = 0, cpu: CpuInfo | None = None) -> str:
    """The ``dtype`` a vLLM engine gets: ``requested`` unless it is ``auto``; then, for GPU
    engines, ``auto`` (vLLM takes the checkpoint's own, bf16 for the models used here) and for CPU
    engines bfloat16 only where the CPU has native bf16, else float32.

    Resolved by the process that builds the engine's config (the driver): a CPU engine placed on a
    node of another CPU kind gets the driver's choice unless ``requested`` names one."""
    if requested not in DTYPES:
        raise ValueError(f"dtype {requested!r}: expected one of {list(DTYPES)}")
    if requested != "auto":
        return requested
    if gpus:
        return "auto"
    return "bfloat16" if fast_bf16("cpu", cpu) else "float32"


def torch_dtype(requested: str = "auto", device: str = "cpu"):
    """The torch dtype to load a model in for inference on ``device`` (``auto`` as above)."""
    import torch

    if requested == "auto":
        return torch.bfloat16 if fast_bf16(device) else torch.float32
    return getattr(torch, requested)


def describe(device: str = "cpu") -> dict:
    """What produced a result: CPU model, recorded ISA flags, whether bf16 is native, the
    ``LRAT_PRECISION`` override and the GPU (when ``device`` is CUDA)."""
    cpu = cpu_info()
    found = {
        "cpu": cpu.model,
        "cpu_flags": [f for f in RECORDED_FLAGS if f in cpu.flags],
        "bf16_native": cpu.bf16_native,
        "precision_override": override(),
    }
    if str(device).startswith("cuda"):
        import torch

        found["gpu"] = torch.cuda.get_device_name(torch.device(device)) if torch.cuda.is_available() else None
    return found


def summary_line() -> str:
    """One line for benchmarks and logs: ``CPU: <model> (bf16 native|emulated: fp32 is faster)``."""
    cpu = cpu_info()
    speed = "bf16 native" if cpu.bf16_native else "no native bf16: fp32 is faster"
    forced = override()
    return f"CPU: {cpu.model} ({speed}; auto precision here: {'bf16' if fast_bf16() else 'fp32'}" + (
        f", forced by {ENV}={forced})" if forced != "auto" else ")"
    )
