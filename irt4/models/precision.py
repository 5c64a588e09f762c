"""Inference weights stored the way the sampler's kernels read them: cast to the autocast dtype once
and, optionally, in channels_last (NHWC) layout.

Under bf16 autocast every conv and linear call casts its fp32 weight to bf16 again: autocast caches
that cast only for leaf tensors that require grad and only outside CUDA graph capture, so folded
(weight-standardized) weights and every weight inside a captured loop are re-cast at each of the
sampler's 51 network calls. `inference_weights` stores them in bf16 once for the duration of a
`with` block, so autocast's casts become no-ops; norms, the spectral filter and the time embedding
keep their fp32 parameters (autocast runs norms in fp32, the FFT is fp32 by design). On the way out
every tensor is restored, bit for bit, in its original dtype and layout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from irt4.models.layers import WeightStandardizedConv2d

CAST_MODULES = (nn.Conv2d, nn.Linear)


def _stored(t: torch.Tensor, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    if channels_last and t.dim() == 4:
        return t.to(dtype=dtype, memory_format=torch.channels_last)
    return t.to(dtype=dtype)


@contextlib.contextmanager
@torch.no_grad()
def inference_weights(model: nn.Module, dtype: torch.dtype, channels_last: bool = False) -> Iterator[int]:
    """Within the block, every Conv2d and Linear of `model` holds its weight and bias in `dtype` (and
    4-D weights in channels_last if asked); a weight-standardized conv's folded weight is cast instead
    of its raw weight (fold first: `fold_weight_standardization`). Yields how many modules changed."""
    saved: list[tuple[nn.Module, str, torch.Tensor]] = []
    try:
        for module in model.modules():
            if not isinstance(module, CAST_MODULES):
                continue
            if isinstance(module, WeightStandardizedConv2d) and module.folded_weight is not None:
                saved.append((module, "folded_weight", module.folded_weight))
                module.folded_weight = _stored(module.folded_weight, dtype, channels_last)
            else:
                saved.append((module, "weight", module.weight.data))
                module.weight.data = _stored(module.weight.data, dtype, channels_last)
            if module.bias is not None:
                saved.append((module, "bias", module.bias.data))
                module.bias.data = module.bias.data.to(dtype)
        yield len({id(module) for module, _, _ in saved})
    finally:
        for module, name, original in reversed(saved):
            if name == "folded_weight":
                module.folded_weight = original
            else:
                getattr(module, name).data = original
