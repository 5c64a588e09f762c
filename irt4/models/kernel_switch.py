"""The one switch between PyTorch's ops and irt4's Triton kernels in the models (`Config.kernels`).

Each module whose GroupNorm+SiLU or attention has a Triton kernel holds the kernel function in an
attribute, `group_norm_silu` or `attention`, None by default (its own PyTorch ops); `use_kernels` sets
or clears that attribute on every such module, so the torch path is the reference code, untouched.
The kernels (and Triton) are imported here only when asked for: CPU-only installs never load them.
"""

from __future__ import annotations

from torch import nn

from irt4.errors import ConfigError
from irt4.models import layers, swin, vae

GROUP_NORM_SILU_MODULES = (layers.ConvGroupNormSiLU, vae.ResnetBlock, vae.Encoder, vae.Decoder)
ATTENTION_MODULES = (layers.Attention, vae.AttnBlock, swin.ShiftedWindowAttention)


def use_kernels(model: nn.Module, kind: str) -> int:
    """Run every switchable module of `model` on `kind`: "torch" (PyTorch ops) or "triton" (the fused
    kernels of irt4.kernels; on a CPU they fall back to their references unless TRITON_INTERPRET=1).
    Returns how many modules were set."""
    if kind == "torch":
        group_norm_silu = attention = None
    elif kind == "triton":
        from irt4.kernels.attention import attention
        from irt4.kernels.group_norm import group_norm_silu
    else:
        raise ConfigError(f"kernels must be 'torch' or 'triton', got {kind!r}")
    switched = 0
    for module in model.modules():
        if isinstance(module, GROUP_NORM_SILU_MODULES):
            module.group_norm_silu = group_norm_silu
            switched += 1
        elif isinstance(module, ATTENTION_MODULES):
            module.attention = attention
            switched += 1
    return switched
