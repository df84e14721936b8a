"""Regional ``torch.compile``: each transformer layer compiled on its own.

The step's profile on a GPU is dominated by small elementwise kernels (RMSNorm, SwiGLU, RoPE,
dtype casts under autocast) between the matmuls; inductor fuses them. Compiling the repeated
layer rather than the whole model compiles one graph, reused by every layer (the layers share
code and shapes), keeps the model's own forward (pooling, packing's arguments) eager, and sits
inside transformers' per-layer activation checkpoints. The fused-kernel alternative, Liger Kernel,
needs Triton on a GPU; this needs only torch (inductor, with a C++ compiler on CPU).
"""

from __future__ import annotations


def layer_list(model):
    """The model's repeated layers: the largest ``ModuleList`` whose members are all one class."""
    import torch

    best = None
    for module in model.modules():
        if (
            isinstance(module, torch.nn.ModuleList)
            and len(module) > 0
            and len({type(layer) for layer in module}) == 1
            and (best is None or len(module) > len(best))
        ):
            best = module
    if best is None:
        raise ValueError(f"{type(model).__name__} has no list of repeated layers to compile")
    return best


def compile_layers(model, dynamic: bool | None = None) -> int:
    """Compile each of ``model``'s repeated layers in place (``nn.Module.compile``: the module and
    its parameters stay what they were, so optimizers, DDP, checkpoints and saving see no change).
    Packed rows and length groups change shape every step: ``dynamic=None`` lets torch mark the
    varying sizes dynamic after the first recompilation. Returns how many layers were compiled."""
    layers = layer_list(model)
    for layer in layers:
        layer.compile(dynamic=dynamic)
    return len(layers)
