"""ONNX export of a RadioDiff model as the three graphs that serving runs (spec: "Where the time goes").

- `cond_encoder.onnx`: cond (B, 3, H, W) -> the condition features, run once per sample.
- `unet_step.onnx`: x_t (B, C, h, w), t (B,) and the condition features -> (C, noise), run at every step.
- `vae_decoder.onnx`: scaled latents (B, C, h, w) -> radio maps in [0, 1] (B, 1, H, W), i.e.
  `RadioDiff.decode_latents` with the model's scale_factor baked in as a constant.

Each graph's input and output names and shapes are declared once, by `graph_specs`; the batch axis is
the only dynamic one (named "batch"). Export, engine build and runtime read the same declarations.

Op choices, for TensorRT (which fuses these patterns) and ONNX Runtime:
- Opset 18 (`DEFAULT_OPSET`), TorchScript exporter (`dynamo=False`), which takes the declared dynamic
  axes directly (the dynamo exporter was not tried). The example batch is 2: a batch of 1 lets an
  exporter specialize the batch axis; the test checks that the saved inputs keep the "batch" symbol.
- The exporter leaves most output sizes symbolic (and wrongly shares one symbol between the condition
  levels), so the declared output shapes are written into the saved graphs.
- GroupNorm is decomposed by the exporter as Reshape -> InstanceNormalization -> Reshape -> Mul -> Add,
  the pattern TensorRT's GroupNorm fusion matches; the opset-18 GroupNormalization op is not used
  (its scale/bias are per group, deprecated in opset 21 for per-channel ones).
- Attention (UNet mid, VAE mid, Swin windows) exports as plain MatMul -> (Add bias) -> Softmax ->
  MatMul with the scale as a Mul, which TensorRT fuses into its multi-head attention kernels; no ONNX
  `Attention` op. The UNet's linear attention stays two Einsum ops (supported by TensorRT, not fused).
- BlockFFT (`SpectralFilter`) would become ONNX `DFT`, which TensorRT does not support and the
  TorchScript exporter rejects. With fixed weights it is linear, so during export only it is replaced by
  `MatmulSpectralFilter`: the same orthonormal rfft2 -> complex weight -> irfft2 written with real DFT
  matrices along H and W (MatMul, Mul, Add, Sub). The torch model is unchanged afterwards.
- The VAE decoder graph bakes in the model's scale_factor: export again after `set_scale_from_batch`.
- Weight standardization is folded for the export (left folded if the caller folded it, else folded
  and unfolded again), so the graphs hold plain convolutions.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from irt4.config import Config
from irt4.errors import InputError
from irt4.models.layers import (
    SpectralFilter,
    WeightStandardizedConv2d,
    fold_weight_standardization,
    unfold_weight_standardization,
)
from irt4.models.radiodiff import RadioDiff

DEFAULT_OPSET = 18
BATCH = "batch"  # the name of the dynamic batch axis in every graph

# the serving graphs run the condition network, the UNet step and the decoder; a residual model also
# needs the VAE encoder on the regressor's map between the first and the last (not exported yet)
RESIDUAL_NOT_SERVED = (
    "diffusion.residual models sample with the PyTorch backends only (irt4-infer --backend torch or "
    "torch-compile): the exported graphs do not add the regressor's latents before decoding"
)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]  # BATCH where the axis is dynamic

    def example_shape(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == BATCH else d for d in self.shape)


@dataclass(frozen=True)
class GraphSpec:
    name: str  # the file is f"{name}.onnx"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def file_name(self) -> str:
        return f"{self.name}.onnx"

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {
            t.name: {axis: d for axis, d in enumerate(t.shape) if isinstance(d, str)}
            for t in (*self.inputs, *self.outputs)
        }


def graph_specs(cfg: Config, cond_channels: int | None = None) -> dict[str, GraphSpec]:
    """The three serving graphs of a model built from `cfg`, by name. `cond_channels`: the condition
    image's channels (default: the Swin backbone's input, 3; the UNet's cond adapter's count also works)."""
    cond_channels = cond_channels or len(cfg.data.condition)  # the prior (if any) is inside the graph
    latent = (cfg.unet.channels, cfg.latent_size, cfg.latent_size)
    # the UNet's width at the input of each level: cond_projections[i] maps Swin stage i to it
    dims = [cfg.unet.dim, *(cfg.unet.dim * m for m in cfg.unet.dim_mults[:-1])]
    # Swin stage i: embed_dim * 2^i channels at 1/(patch_size * 2^i) of the image (sizes rounded up)
    stage_size = [math.ceil(cfg.image_size / cfg.swin.patch_size / 2**i) for i in range(len(dims))]
    features = (
        TensorSpec("init_cond", (BATCH, cfg.swin.embed_dim, stage_size[0], stage_size[0])),
        *(
            TensorSpec(f"cond_level{i}", (BATCH, dim, s, s))
            for i, (dim, s) in enumerate(zip(dims, stage_size))
        ),
    )
    x_t = TensorSpec("x_t", (BATCH, *latent))
    specs = (
        GraphSpec(
            "cond_encoder",
            inputs=(TensorSpec("cond", (BATCH, cond_channels, cfg.image_size, cfg.image_size)),),
            outputs=features,
        ),
        GraphSpec(
            "unet_step",
            inputs=(x_t, TensorSpec("t", (BATCH,)), *features),
            outputs=(TensorSpec("c_pred", x_t.shape), TensorSpec("noise_pred", x_t.shape)),
        ),
        GraphSpec(
            "vae_decoder",
            inputs=(TensorSpec("latents", x_t.shape),),
            outputs=(TensorSpec("maps", (BATCH, cfg.vae.in_channels, cfg.image_size, cfg.image_size)),),
        ),
    )
    return {spec.name: spec for spec in specs}


class MatmulSpectralFilter(nn.Module):
    """`SpectralFilter` with fixed weights as real matrix products: ONNX MatMul/Mul/Add instead of DFT.

    rfft2 (orthonormal) = a real DFT along W (W // 2 + 1 frequencies) then a complex DFT along H; the
    complex weight multiplies the spectrum; irfft2 = the inverse complex DFT along H, then the real
    inverse along W, which counts each frequency except 0 and W/2 twice (Hermitian symmetry). The
    matrices are built in float64 and stored in the filter's dtype.
    """

    def __init__(self, spectral: SpectralFilter):
        super().__init__()
        h, w = spectral.height, spectral.width
        dtype = spectral.complex_weight.dtype
        freqs_w = w // 2 + 1
        angle_w = 2 * math.pi * torch.outer(torch.arange(freqs_w), torch.arange(w)).double() / w  # (Wf, W)
        angle_h = 2 * math.pi * torch.outer(torch.arange(h), torch.arange(h)).double() / h  # (H, H)
        # counts of each rfft frequency in the full spectrum: 1 for 0 and (W even) W/2, else 2
        counts = torch.full((freqs_w, 1), 2.0, dtype=torch.float64)
        counts[0] = 1.0
        if w % 2 == 0:
            counts[-1] = 1.0

        def buffer(name: str, value: torch.Tensor) -> None:
            self.register_buffer(name, value.to(dtype).contiguous(), persistent=False)

        buffer("rfft_w_re", (angle_w.cos() / math.sqrt(w)).T)  # (W, Wf): x @ it
        buffer("rfft_w_im", (-angle_w.sin() / math.sqrt(w)).T)
        buffer("dft_h_re", angle_h.cos() / math.sqrt(h))  # (H, H): it @ x; the inverse is its conjugate
        buffer("dft_h_im", -angle_h.sin() / math.sqrt(h))
        buffer("irfft_w_re", counts * angle_w.cos() / math.sqrt(w))  # (Wf, W)
        buffer("irfft_w_im", -counts * angle_w.sin() / math.sqrt(w))
        weight = spectral.complex_weight.detach()
        buffer("weight_re", weight[..., 0])  # (C, H, Wf)
        buffer("weight_im", weight[..., 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_re, x_im = x @ self.rfft_w_re, x @ self.rfft_w_im  # (B, C, H, Wf)
        a, b = self.dft_h_re, self.dft_h_im
        y_re, y_im = a @ x_re - b @ x_im, a @ x_im + b @ x_re
        z_re = y_re * self.weight_re - y_im * self.weight_im
        z_im = y_re * self.weight_im + y_im * self.weight_re
        u_re, u_im = a @ z_re + b @ z_im, a @ z_im - b @ z_re  # inverse DFT along H: conj(a + ib)
        return u_re @ self.irfft_w_re + u_im @ self.irfft_w_im  # (B, C, H, W)


@contextlib.contextmanager
def spectral_filters_as_matmul(model: nn.Module) -> Iterator[int]:
    """Within the block, every SpectralFilter of `model` is a `MatmulSpectralFilter`; yields how many."""
    swapped = [
        (model.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2], module)
        for name, module in model.named_modules()
        if isinstance(module, SpectralFilter)
    ]
    try:
        for parent, attr, module in swapped:
            setattr(parent, attr, MatmulSpectralFilter(module))
        yield len(swapped)
    finally:
        for parent, attr, module in swapped:
            setattr(parent, attr, module)


class _CondEncoder(nn.Module):
    def __init__(self, model: RadioDiff):
        super().__init__()
        self.unet = model.unet

    def forward(self, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.unet.encode_condition(cond)


class _UNetStep(nn.Module):
    def __init__(self, model: RadioDiff):
        super().__init__()
        self.unet = model.unet

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, *cond_features: torch.Tensor):
        return self.unet.denoise(x_t, t, cond_features)


class _VAEDecoder(nn.Module):
    def __init__(self, model: RadioDiff):
        super().__init__()
        self.model = model

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.model.decode_latents(latents)


GRAPH_MODULES = {"cond_encoder": _CondEncoder, "unet_step": _UNetStep, "vae_decoder": _VAEDecoder}


def export_example_inputs(spec: GraphSpec, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs for `spec` at `batch`: t in [0.01, 1) (the network takes log t), the rest N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    return tuple(
        torch.rand(t.example_shape(batch), generator=g) * 0.99 + 0.01
        if t.name == "t"
        else torch.randn(t.example_shape(batch), generator=g)
        for t in spec.inputs
    )


@contextlib.contextmanager
def _folded_weights(model: nn.Module) -> Iterator[None]:
    """Weight standardization folded for the block, unless it already was (then left as it is)."""
    convs = [m for m in model.modules() if isinstance(m, WeightStandardizedConv2d)]
    already = all(c.folded_weight is not None for c in convs)
    if not already:
        fold_weight_standardization(model)
    try:
        yield
    finally:
        if not already:
            unfold_weight_standardization(model)


def _declare_output_shapes(path: Path, spec: GraphSpec) -> None:
    """Write the declared output shapes into the saved graph: the TorchScript exporter leaves the
    spatial sizes of most outputs symbolic (and gives the condition levels one shared symbol, which is
    wrong). The parity test checks the declared shapes against what the graph computes."""
    import onnx

    model = onnx.load(str(path))
    declared = {t.name: t.shape for t in spec.outputs}
    for output in model.graph.output:
        for dim, size in zip(output.type.tensor_type.shape.dim, declared[output.name], strict=True):
            if isinstance(size, str):
                dim.dim_param = size
            else:
                dim.dim_value = size
    onnx.save(model, str(path))


@torch.no_grad()
def export_onnx(
    model: RadioDiff,
    out_dir: str | Path,
    opset: int = DEFAULT_OPSET,
    example_batch: int = 2,
    cond_channels: int | None = None,
) -> dict[str, Path]:
    """Write cond_encoder.onnx, unet_step.onnx and vae_decoder.onnx of `model` (fp32, eval mode, the
    PyTorch ops: Triton kernels are not exportable) into `out_dir`; returns their paths by graph name."""
    import onnx

    # a batch of 1 lets the tracer specialize on it: the batch axis must be seen as a variable
    assert example_batch >= 2, "export with an example batch of at least 2"
    if model.cfg.diffusion.residual:
        raise InputError(RESIDUAL_NOT_SERVED)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = graph_specs(model.cfg, cond_channels)
    was_training = model.training
    model.eval()
    paths: dict[str, Path] = {}
    try:
        with _folded_weights(model), spectral_filters_as_matmul(model):
            for name, spec in specs.items():
                path = out_dir / spec.file_name
                torch.onnx.export(
                    GRAPH_MODULES[name](model),
                    export_example_inputs(spec, example_batch),
                    str(path),
                    input_names=[t.name for t in spec.inputs],
                    output_names=[t.name for t in spec.outputs],
                    dynamic_axes=spec.dynamic_axes(),
                    opset_version=opset,
                    do_constant_folding=True,
                    dynamo=False,
                )
                _declare_output_shapes(path, spec)
                onnx.checker.check_model(str(path), full_check=True)
                paths[name] = path
    finally:
        model.train(was_training)
    return paths
