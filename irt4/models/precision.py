"""Inference weights stored the way the sampler's kernels read them: cast to the autocast dtype once
and, optionally, in channels_last (NHWC) layout.

Under bf16 autocast every conv and linear call casts its fp32 weight to bf16 again: autocast caches
that cast only for leaf tensors that require grad and only outside CUDA graph capture, so folded
(weight-standardized) weights and every weight inside a captured loop are re-cast at each of the
sampler's 51 network calls. `inference_weights` stores them in bf16 once for the duration of a
`with` block, so autocast's casts become no-ops; norms, the spectral filter and the time embedding
keep their fp32 parameters (autocast runs norms in fp32, the FFT is fp32 by design). On the way out
every tensor is restored, bit for bit, in its original dtype and layout. `cast_inference_weights`
does the same for good, for a model that is only sampled from (irt4-infer's reduced precisions):
entering inference_weights and dropping the context would restore the weights at once.
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


@torch.no_grad()
def cast_inference_weights(
    model: nn.Module, dtype: torch.dtype, channels_last: bool = False
) -> list[tuple[nn.Module, str, torch.Tensor]]:
    """Every Conv2d and Linear of `model` made to hold its weight and bias in `dtype` (and 4-D weights
    in channels_last if asked), for good; a weight-standardized conv's folded weight is cast instead of
    its raw weight (fold first: `fold_weight_standardization`). Returns (module, attribute, original)
    for each tensor replaced, in order."""
    saved: list[tuple[nn.Module, str, torch.Tensor]] = []
    _cast(model, dtype, channels_last, saved)
    return saved


def _cast(model: nn.Module, dtype: torch.dtype, channels_last: bool, saved: list) -> None:
    """cast_inference_weights, noting each tensor in `saved` before it is replaced."""
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


@contextlib.contextmanager
@torch.no_grad()
def inference_weights(model: nn.Module, dtype: torch.dtype, channels_last: bool = False) -> Iterator[int]:
    """cast_inference_weights within the block; on the way out every tensor is restored. Yields how
    many modules changed."""
    saved: list[tuple[nn.Module, str, torch.Tensor]] = []
    try:
        _cast(model, dtype, channels_last, saved)  # noted as it goes: a failure halfway is undone too
        yield len({id(module) for module, _, _ in saved})
    finally:
        for module, name, original in reversed(saved):
            if name == "folded_weight":
                module.folded_weight = original
            else:
                getattr(module, name).data = original
