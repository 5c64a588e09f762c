"""Regional compilation: torch.compile each repeated block of a model instead of the whole network.

Compiling the whole UNet step traces ~28,000 ops into one graph; its Inductor compile did not finish
inside a 3-minute GPU run. The UNet is built from a few block classes repeated many times (ResnetBlock
at every level and in both decoders, RelationNet, the Swin blocks, the VAE's ResnetBlocks), and
Dynamo reuses one compiled artifact for every instance of a class at the same input shapes (with
its default `inline_inbuilt_nn_modules`), so compiling the blocks, not the network, compiles each
distinct (class, shape) once. The glue between blocks stays eager; inside a CUDA graph its launch
cost disappears anyway.
"""

from __future__ import annotations

import torch
from torch import nn

from irt4.models import layers, relation, swin, vae

REGION_CLASSES: tuple[type[nn.Module], ...] = (
    layers.ResnetBlock,
    relation.RelationNet,
    swin.SwinBlock,
    vae.ResnetBlock,
    vae.AttnBlock,
)

REGION_RECOMPILE_LIMIT = 64  # compiled versions of one block's forward (its widths x dtypes)


def compile_regions(
    model: nn.Module, classes: tuple[type[nn.Module], ...] = REGION_CLASSES, **options
) -> int:
    """`module.compile(**options)` on every outermost instance of `classes` in `model` (a block inside
    a compiled block is traced with it); returns how many were compiled. Undo with `uncompile_regions`.
    Dynamo's recompile limit is raised to at least REGION_RECOMPILE_LIMIT for the process: a block class
    appears at every level's width and dtype, and the default 8 versions would send the rest to eager."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, REGION_RECOMPILE_LIMIT)

    def visit(module: nn.Module) -> int:
        if isinstance(module, classes):
            module.compile(**options)
            return 1
        return sum(visit(child) for child in module.children())

    return visit(model)


def uncompile_regions(model: nn.Module) -> None:
    """Every module of `model` back to its eager forward."""
    for module in model.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None
