"""Fused GroupNorm -> optional time scale-shift -> optional SiLU, forward and backward in Triton.

    y = silu((x - mean_g) * rstd_g * weight_c + bias_c) * (1 + scale_bc) + shift_bc)

is what the UNet's `ConvGroupNormSiLU` computes (GroupNorm(8), the time embedding's scale-shift,
SiLU); the VAE blocks are the same without scale-shift (GroupNorm(32, eps=1e-6) + SiLU) and
RelationNet's norm is plain GroupNorm (`silu=False`). `group_norm_silu_ref` below is the same
function in plain PyTorch; the tests compare the two and `bench/kernels.py` times them.

Numerics (flash-attention's layer_norm habit, not Liger's): statistics in fp32 whatever the input
dtype; the variance is centred (per-tile mean and M2, merged with Chan's formula), never E[x^2] -
E[x]^2; the backward's per-channel sums are fp32 per-program partials reduced once by `sum`, so the
gradients are deterministic (no atomics).

Layout: a group of (C / G channels) x (H * W pixels) is tiled [BLOCK_C, BLOCK_S]; an element is at
b * C * H * W + c * stride_c + s * stride_s, so NCHW-contiguous (stride_c = H * W, stride_s = 1) and
channels_last (stride_c = 1, stride_s = C) inputs are both read in place; any other layout is made
contiguous first. Outputs keep the input's layout.

Work split: a group at (32, 512, 80, 80) / 8 holds 409,600 elements, so each (batch, group) is cut
into chunks of pixels, one program per chunk (grid (B * G, chunks)). Forward = kernel 1 (partial
count/mean/M2 per chunk) + kernel 2 (each program merges its group's partials, then normalizes its
chunk). A group that fits one tile (ONE_PASS_ELEMENTS) is instead read once by one program, which
computes its statistics on chip and writes y (`_one_pass_forward_kernel`); its backward is one
program too (`_one_pass_backward_kernel`: the channel sums, the group means and dx from one read).
Backward = kernel 3 (per-(batch, channel) partial sums of du and du * xhat, where du is the gradient
reaching the GroupNorm-affine output after SiLU and scale-shift) + a few (B, C)-sized torch ops that
turn them into dweight, dbias, dscale, dshift and the two per-group means of dx's formula + kernel 4
(dx). Every kernel recomputes xhat from x and the saved mean/rstd instead of storing it.

Where it runs: on CUDA tensors the Triton kernels run on the GPU; on CPU tensors they run in
Triton's interpreter when TRITON_INTERPRET=1 was set before this module was imported (tests do
this; it is slow and only for testing). Otherwise, on CPU, `group_norm_silu` uses the reference.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

# Triton reads the flag when the kernels are decorated, i.e. when this module is imported.
TRITON_INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
_ROUND_BF16_BY_HAND = tl.constexpr(TRITON_INTERPRETER)

TILE_ELEMENTS = 4096  # elements of one [BLOCK_C, BLOCK_S] tile
MAX_BLOCK_C = 64  # wider groups loop over channel blocks
TILES_PER_PROGRAM = 2  # pixel tiles per chunk (per program); more chunks -> more programs
# A group of at most this many elements (padded to powers of two) is normalized by one program in one
# read (`_one_pass_forward_kernel`): the UNet's deeper levels and the small presets; larger groups take
# the two-kernel path. 0 turns the one-pass path off (tests compare the two).
ONE_PASS_ELEMENTS = 8192  # forward and backward


def group_norm_silu_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    num_groups: int,
    eps: float,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    silu: bool = True,
    upcast: bool = True,
) -> torch.Tensor:
    """The same function in plain PyTorch, as the models compute it. With `upcast` every step runs in
    at least fp32 (fp64 stays fp64) and the result is cast back to x.dtype; without it, each op runs
    at x's dtype as plain PyTorch would. scale and shift are (B, C) or (B, C, 1, 1)."""
    compute_dtype = torch.promote_types(x.dtype, torch.float32) if upcast else x.dtype

    def per_batch_channel(t: torch.Tensor) -> torch.Tensor:  # (B, C) or (B, C, 1, 1) -> (B, C, 1, 1)
        return t.reshape(t.shape[0], t.shape[1], 1, 1).to(compute_dtype)

    h = F.group_norm(x.to(compute_dtype), num_groups, weight.to(compute_dtype), bias.to(compute_dtype), eps)
    if scale is not None:
        h = h * (per_batch_channel(scale) + 1)
    if shift is not None:
        h = h + per_batch_channel(shift)
    if silu:
        h = F.silu(h)
    return h.to(x.dtype)


def group_norm_silu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    num_groups: int,
    eps: float,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    silu: bool = True,
) -> torch.Tensor:
    """GroupNorm of x (B, C, H, W) over `num_groups` groups with the per-channel affine weight, bias
    (C,), then `* (1 + scale) + shift` where given ((B, C) or (B, C, 1, 1)), then SiLU if `silu`.

    Runs the Triton kernels (`torch.ops.irt4.group_norm_silu`, differentiable and traceable by
    torch.compile without graph breaks) on CUDA, and on CPU under TRITON_INTERPRET=1; the reference
    otherwise. Output in x's dtype and layout."""
    _check_inputs(x, weight, bias, num_groups, scale, shift)
    if not (x.is_cuda or TRITON_INTERPRETER):
        return group_norm_silu_ref(x, weight, bias, num_groups, eps, scale, shift, silu)
    batch, channels = x.shape[:2]
    scale = None if scale is None else scale.reshape(batch, channels)
    shift = None if shift is None else shift.reshape(batch, channels)
    y, _, _ = torch.ops.irt4.group_norm_silu(x, weight, bias, scale, shift, num_groups, eps, silu)
    return y


def _check_inputs(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    num_groups: int,
    scale: torch.Tensor | None,
    shift: torch.Tensor | None,
) -> None:
    if x.dim() != 4:
        raise ValueError(f"group_norm_silu expects x of shape (B, C, H, W), got {tuple(x.shape)}")
    batch, channels = x.shape[:2]
    if num_groups < 1 or channels % num_groups:
        raise ValueError(f"{channels} channels cannot be split into {num_groups} groups")
    for name, t in (("weight", weight), ("bias", bias)):
        if t.shape != (channels,):
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected ({channels},)")
    for name, t in (("scale", scale), ("shift", shift)):
        if t is not None and t.shape not in ((batch, channels), (batch, channels, 1, 1)):
            expected = f"({batch}, {channels}) or ({batch}, {channels}, 1, 1)"
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {expected}")
    if x.numel() >= 2**31:
        raise ValueError(f"x has {x.numel()} elements; the kernels index with int32 (< 2**31)")


# ---------------------------------------------------------------------------------------------------
# Triton kernels


@triton.jit
def _tile_offsets(b, g, c0, s0, C, HW, C_PER_GROUP, stride_c, stride_s, BLOCK_C, BLOCK_S):
    """Element offsets, mask and channel indices of the tile at channel c0 (within group g) and
    pixel s0 of batch b."""
    c_in_group = c0 + tl.arange(0, BLOCK_C)
    s = s0 + tl.arange(0, BLOCK_S)
    channel = g * C_PER_GROUP + c_in_group  # (BLOCK_C,)
    mask = (c_in_group[:, None] < C_PER_GROUP) & (s[None, :] < HW)
    offsets = b * C * HW + channel[:, None] * stride_c + s[None, :] * stride_s
    return offsets, mask, channel, c_in_group < C_PER_GROUP


@triton.jit
def _group_moments(partial_ptr, bg, num_chunks, BLOCK_CHUNKS: tl.constexpr):
    """Merge a group's per-chunk (count, mean, M2) into the group's mean and M2 (Chan et al.)."""
    chunk = tl.arange(0, BLOCK_CHUNKS)
    valid = chunk < num_chunks
    base = partial_ptr + bg * num_chunks * 3 + chunk * 3
    count = tl.load(base, mask=valid, other=0.0)
    mean_c = tl.load(base + 1, mask=valid, other=0.0)
    m2_c = tl.load(base + 2, mask=valid, other=0.0)
    total = tl.sum(count, axis=0)
    mean = tl.sum(count * mean_c, axis=0) / total
    delta = mean_c - mean
    m2 = tl.sum(m2_c + count * delta * delta, axis=0)
    return mean, m2 / total


@triton.jit
def _pre_silu(
    xhat, weight_ptr, bias_ptr, scale_ptr, shift_ptr, b, C, channel, channel_mask, HAS_SCALE, HAS_SHIFT
):
    """The affine GroupNorm output and the time scale-shift of batch b: SiLU's argument. The
    per-channel parameters are loaded per tile (cached, tiny next to x). One helper rather than
    several: each jit-helper call costs Triton's interpreter ~4 ms."""
    weight = tl.load(weight_ptr + channel, mask=channel_mask, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + channel, mask=channel_mask, other=0.0).to(tl.float32)
    u = xhat * weight[:, None] + bias[:, None]
    if HAS_SCALE:
        scale = tl.load(scale_ptr + b * C + channel, mask=channel_mask, other=0.0).to(tl.float32)
        u = u * (1.0 + scale[:, None])
    if HAS_SHIFT:
        shift = tl.load(shift_ptr + b * C + channel, mask=channel_mask, other=0.0).to(tl.float32)
        u = u + shift[:, None]
    return u


@triton.jit
def _silu_input_grad(dy, u, SILU: tl.constexpr):
    """d silu(u) / du * dy, or dy without SiLU."""
    if SILU:
        sig = 1.0 / (1.0 + tl.exp(-u))  # tl.sigmoid's formula, without a jit call for the interpreter
        return dy * sig * (1.0 + u * (1.0 - sig))
    return dy


@triton.jit
def _cast_for_store(value, dtype: tl.constexpr):
    """value (fp32) cast to the output dtype, rounding to nearest even. Triton's interpreter truncates
    fp32 -> bf16 casts (the GPU rounds to nearest even), which alone would double the bf16 error in
    the CPU tests; there the rounding is done by hand on the bits."""
    if _ROUND_BF16_BY_HAND and dtype == tl.bfloat16:
        bits = value.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        value = bits.to(tl.float32, bitcast=True)
    return value.to(dtype)


@triton.jit
def _stats_kernel(
    x_ptr,
    partial_ptr,  # (B * G, chunks, 3) fp32: count, mean, M2
    C,
    HW,
    C_PER_GROUP,
    GROUPS,
    stride_c,
    stride_s,
    num_chunks,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
    TILES: tl.constexpr,
):
    bg = tl.program_id(0)
    chunk = tl.program_id(1)
    b = bg // GROUPS
    g = bg % GROUPS
    count = 0.0
    mean = 0.0
    m2 = 0.0
    for c0 in range(0, C_PER_GROUP, BLOCK_C):
        for t in range(TILES):
            s0 = (chunk * TILES + t) * BLOCK_S
            offsets, mask, _, _ = _tile_offsets(
                b, g, c0, s0, C, HW, C_PER_GROUP, stride_c, stride_s, BLOCK_C, BLOCK_S
            )
            x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            n = tl.sum(mask.to(tl.float32), axis=1)
            n = tl.sum(n, axis=0)
            tile_mean = tl.sum(tl.sum(x, axis=1), axis=0) / tl.maximum(n, 1.0)
            centred = tl.where(mask, x - tile_mean, 0.0)
            tile_m2 = tl.sum(tl.sum(centred * centred, axis=1), axis=0)
            total = count + n
            delta = tile_mean - mean
            weight = n / tl.maximum(total, 1.0)
            mean = mean + delta * weight
            m2 = m2 + tile_m2 + delta * delta * count * weight
            count = total
    out = partial_ptr + (bg * num_chunks + chunk) * 3
    tl.store(out, count)
    tl.store(out + 1, mean)
    tl.store(out + 2, m2)


@triton.jit
def _forward_kernel(
    x_ptr,
    y_ptr,
    weight_ptr,
    bias_ptr,
    scale_ptr,
    shift_ptr,
    partial_ptr,
    mean_ptr,  # (B * G,) fp32, saved for the backward
    rstd_ptr,
    eps,
    C,
    HW,
    C_PER_GROUP,
    GROUPS,
    stride_c,
    stride_s,
    num_chunks,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
    TILES: tl.constexpr,
    BLOCK_CHUNKS: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    SILU: tl.constexpr,
):
    bg = tl.program_id(0)
    chunk = tl.program_id(1)
    b = bg // GROUPS
    g = bg % GROUPS
    mean, var = _group_moments(partial_ptr, bg, num_chunks, BLOCK_CHUNKS)
    rstd = 1.0 / tl.sqrt(var + eps)
    if chunk == 0:
        tl.store(mean_ptr + bg, mean)
        tl.store(rstd_ptr + bg, rstd)
    for c0 in range(0, C_PER_GROUP, BLOCK_C):
        for t in range(TILES):
            s0 = (chunk * TILES + t) * BLOCK_S
            offsets, mask, channel, channel_mask = _tile_offsets(
                b, g, c0, s0, C, HW, C_PER_GROUP, stride_c, stride_s, BLOCK_C, BLOCK_S
            )
            x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            y = _pre_silu(
                (x - mean) * rstd,
                weight_ptr,
                bias_ptr,
                scale_ptr,
                shift_ptr,
                b,
                C,
                channel,
                channel_mask,
                HAS_SCALE,
                HAS_SHIFT,
            )
            if SILU:
                y = y / (1.0 + tl.exp(-y))
            tl.store(y_ptr + offsets, _cast_for_store(y, y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _one_pass_forward_kernel(
    x_ptr,
    y_ptr,
    weight_ptr,
    bias_ptr,
    scale_ptr,
    shift_ptr,
    mean_ptr,
    rstd_ptr,
    eps,
    C,
    HW,
    C_PER_GROUP,
    GROUPS,
    stride_c,
    stride_s,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    SILU: tl.constexpr,
):
    """A whole group in one tile: one program per (batch, group) reads x once, keeps it on chip for
    the centred statistics, and writes y; no partials buffer and no second launch."""
    bg = tl.program_id(0)
    b = bg // GROUPS
    g = bg % GROUPS
    offsets, mask, channel, channel_mask = _tile_offsets(
        b, g, 0, 0, C, HW, C_PER_GROUP, stride_c, stride_s, BLOCK_C, BLOCK_S
    )
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    count = tl.sum(tl.sum(mask.to(tl.float32), axis=1), axis=0)
    mean = tl.sum(tl.sum(x, axis=1), axis=0) / count
    centred = tl.where(mask, x - mean, 0.0)
    var = tl.sum(tl.sum(centred * centred, axis=1), axis=0) / count
    rstd = 1.0 / tl.sqrt(var + eps)
    tl.store(mean_ptr + bg, mean)
    tl.store(rstd_ptr + bg, rstd)
    y = _pre_silu(
        centred * rstd, weight_ptr, bias_ptr, scale_ptr, shift_ptr, b, C, channel, channel_mask,
        HAS_SCALE, HAS_SHIFT,
    )  # fmt: skip
    if SILU:
        y = y / (1.0 + tl.exp(-y))
    tl.store(y_ptr + offsets, _cast_for_store(y, y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _channel_sums_kernel(
    dy_ptr,
    x_ptr,
    weight_ptr,
    bias_ptr,
    scale_ptr,
    shift_ptr,
    mean_ptr,
    rstd_ptr,
    partial_du_ptr,  # (B, C, chunks) fp32: sum over the chunk's pixels of du
    partial_du_xhat_ptr,  # (B, C, chunks) fp32: ... of du * xhat
    C,
    HW,
    C_PER_GROUP,
    GROUPS,
    stride_c,
    stride_s,
    num_chunks,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
    TILES: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    SILU: tl.constexpr,
):
    bg = tl.program_id(0)
    chunk = tl.program_id(1)
    b = bg // GROUPS
    g = bg % GROUPS
    mean = tl.load(mean_ptr + bg)
    rstd = tl.load(rstd_ptr + bg)
    for c0 in range(0, C_PER_GROUP, BLOCK_C):
        sum_du = tl.zeros((BLOCK_C,), dtype=tl.float32)
        sum_du_xhat = tl.zeros((BLOCK_C,), dtype=tl.float32)
        channel = g * C_PER_GROUP + c0 + tl.arange(0, BLOCK_C)
        channel_mask = c0 + tl.arange(0, BLOCK_C) < C_PER_GROUP
        for t in range(TILES):
            s0 = (chunk * TILES + t) * BLOCK_S
            offsets, mask, _, _ = _tile_offsets(
                b, g, c0, s0, C, HW, C_PER_GROUP, stride_c, stride_s, BLOCK_C, BLOCK_S
            )
            x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            xhat = tl.where(mask, (x - mean) * rstd, 0.0)
            u = _pre_silu(
                xhat,
                weight_ptr,
                bias_ptr,
                scale_ptr,
                shift_ptr,
                b,
                C,
                channel,
                channel_mask,
                HAS_SCALE,
                HAS_SHIFT,
            )
            du = _silu_input_grad(dy, u, SILU)
            sum_du += tl.sum(du, axis=1)
            sum_du_xhat += tl.sum(du * xhat, axis=1)
        out = (b * C + channel) * num_chunks + chunk
        tl.store(partial_du_ptr + out, sum_du, mask=channel_mask)
        tl.store(partial_du_xhat_ptr + out, sum_du_xhat, mask=channel_mask)


@triton.jit
def _input_grad_kernel(
    dy_ptr,
    x_ptr,
    dx_ptr,
    weight_ptr,
    bias_ptr,
    scale_ptr,
    shift_ptr,
    mean_ptr,
    rstd_ptr,
    dxhat_gain_ptr,  # (B, C) fp32: weight * (1 + scale), dxhat = du * gain
    group_mean_dxhat_ptr,  # (B * G,) fp32
    group_mean_dxhat_xhat_ptr,  # (B * G,) fp32
    C,
    HW,
    C_PER_GROUP,
    GROUPS,
    stride_c,
    stride_s,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
    TILES: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    SILU: tl.constexpr,
):
    bg = tl.program_id(0)
    chunk = tl.program_id(1)
    b = bg // GROUPS
    g = bg % GROUPS
    mean = tl.load(mean_ptr + bg)
    rstd = tl.load(rstd_ptr + bg)
    mean_dxhat = tl.load(group_mean_dxhat_ptr + bg)
    mean_dxhat_xhat = tl.load(group_mean_dxhat_xhat_ptr + bg)
    for c0 in range(0, C_PER_GROUP, BLOCK_C):
        for t in range(TILES):
            s0 = (chunk * TILES + t) * BLOCK_S
            offsets, mask, channel, channel_mask = _tile_offsets(
                b, g, c0, s0, C, HW, C_PER_GROUP, stride_c, stride_s, BLOCK_C, BLOCK_S
            )
            gain = tl.load(dxhat_gain_ptr + b * C + channel, mask=channel_mask, other=0.0)
            x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            xhat = (x - mean) * rstd
            u = _pre_silu(
                xhat,
                weight_ptr,
                bias_ptr,
                scale_ptr,
                shift_ptr,
                b,
                C,
                channel,
                channel_mask,
                HAS_SCALE,
                HAS_SHIFT,
            )
            dxhat = _silu_input_grad(dy, u, SILU) * gain[:, None]
            # spec: GroupNorm backward, dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
            dx = rstd * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat)
            tl.store(dx_ptr + offsets, _cast_for_store(dx, dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _one_pass_backward_kernel(
    dy_ptr,
    x_ptr,
    dx_ptr,
    weight_ptr,
    bias_ptr,
    scale_ptr,
    shift_ptr,
    mean_ptr,
    rstd_ptr,
    sum_du_ptr,  # (B, C) fp32: sum over pixels of du
    sum_du_xhat_ptr,  # (B, C) fp32: ... of du * xhat
    C,
    HW,
    C_PER_GROUP,
    GROUPS,
    stride_c,
    stride_s,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    SILU: tl.constexpr,
):
    """A whole group in one tile: the per-channel sums and dx in one program that reads x and dy once
    (the two-kernel path reads them twice and reduces the group means in torch between its kernels)."""
    bg = tl.program_id(0)
    b = bg // GROUPS
    g = bg % GROUPS
    mean = tl.load(mean_ptr + bg)
    rstd = tl.load(rstd_ptr + bg)
    offsets, mask, channel, channel_mask = _tile_offsets(
        b, g, 0, 0, C, HW, C_PER_GROUP, stride_c, stride_s, BLOCK_C, BLOCK_S
    )
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    xhat = tl.where(mask, (x - mean) * rstd, 0.0)
    u = _pre_silu(
        xhat, weight_ptr, bias_ptr, scale_ptr, shift_ptr, b, C, channel, channel_mask,
        HAS_SCALE, HAS_SHIFT,
    )  # fmt: skip
    du = tl.where(mask, _silu_input_grad(dy, u, SILU), 0.0)
    sum_du = tl.sum(du, axis=1)
    sum_du_xhat = tl.sum(du * xhat, axis=1)
    tl.store(sum_du_ptr + b * C + channel, sum_du, mask=channel_mask)
    tl.store(sum_du_xhat_ptr + b * C + channel, sum_du_xhat, mask=channel_mask)
    gain = tl.load(weight_ptr + channel, mask=channel_mask, other=0.0).to(tl.float32)
    if HAS_SCALE:
        scale = tl.load(scale_ptr + b * C + channel, mask=channel_mask, other=0.0).to(tl.float32)
        gain = gain * (1.0 + scale)
    count = tl.sum(tl.sum(mask.to(tl.float32), axis=1), axis=0)
    mean_dxhat = tl.sum(gain * sum_du, axis=0) / count
    mean_dxhat_xhat = tl.sum(gain * sum_du_xhat, axis=0) / count
    # spec: GroupNorm backward, dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    dx = rstd * (du * gain[:, None] - mean_dxhat - xhat * mean_dxhat_xhat)
    tl.store(dx_ptr + offsets, _cast_for_store(dx, dx_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------------
# Launchers


def _alloc_like(t: torch.Tensor) -> torch.Tensor:
    """Output buffers (the poisoned-output test fills them with NaN instead)."""
    return torch.empty_like(t)


def _alloc(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """fp32 work buffers (the poisoned-output test fills them with NaN instead)."""
    return torch.empty(shape, dtype=torch.float32, device=device)


def _in_kernel_layout(t: torch.Tensor) -> torch.Tensor:
    """x as the kernels read it: NCHW-contiguous or channels_last as given, anything else made contiguous."""
    if t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last):
        return t
    return t.contiguous()


def _pixel_strides(x: torch.Tensor) -> tuple[int, int]:
    """(stride_c, stride_s) of a tensor in kernel layout; the batch stride is always C * H * W."""
    batch, channels, height, width = x.shape
    if x.is_contiguous():
        return height * width, 1
    return 1, channels


def _launch_config(c_per_group: int, hw: int) -> dict[str, int]:
    """Tile shape, warps and number of pixel chunks (programs per group) for groups of c_per_group x hw.
    Not tuned on a GPU yet (issue 6). A full 4096-element tile gets 8 warps (16 elements per thread): at 4,
    ptxas spilled up to ~300 bytes per thread in the backward kernels at 64 channels per group (the UNet's
    deepest level; tests/kernels/test_gpu_compile.py reports registers and spills)."""
    block_c = min(triton.next_power_of_2(c_per_group), MAX_BLOCK_C)
    block_s = max(min(triton.next_power_of_2(hw), TILE_ELEMENTS // block_c), 16)
    tiles = min(TILES_PER_PROGRAM, triton.cdiv(hw, block_s))
    num_chunks = triton.cdiv(hw, block_s * tiles)
    num_warps = 8 if block_c * block_s >= TILE_ELEMENTS else 4
    return {
        "BLOCK_C": block_c,
        "BLOCK_S": block_s,
        "TILES": tiles,
        "num_chunks": num_chunks,
        "num_warps": num_warps,
    }


def _one_pass_tile(c_per_group: int, hw: int) -> tuple[int, int] | None:
    """(BLOCK_C, BLOCK_S) of a tile that holds a whole group, if it is at most ONE_PASS_ELEMENTS."""
    block_c, block_s = triton.next_power_of_2(c_per_group), max(triton.next_power_of_2(hw), 16)
    return (block_c, block_s) if block_c * block_s <= ONE_PASS_ELEMENTS else None


def _forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    scale: torch.Tensor | None,
    shift: torch.Tensor | None,
    num_groups: int,
    eps: float,
    silu: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = _in_kernel_layout(x)
    batch, channels, height, width = x.shape
    hw, c_per_group = height * width, channels // num_groups
    tile = _one_pass_tile(c_per_group, hw)
    if tile is not None:
        return _forward_one_pass(x, weight, bias, scale, shift, num_groups, eps, silu, tile)
    config = _launch_config(c_per_group, hw)
    num_chunks = config.pop("num_chunks")
    stride_c, stride_s = _pixel_strides(x)
    grid = (batch * num_groups, num_chunks)
    shape_args = (channels, hw, c_per_group, num_groups, stride_c, stride_s)

    partials = _alloc((batch * num_groups, num_chunks, 3), x.device)
    _stats_kernel[grid](x, partials, *shape_args, num_chunks, **config)
    y = _alloc_like(x)
    mean = _alloc((batch, num_groups), x.device)
    rstd = _alloc((batch, num_groups), x.device)
    _forward_kernel[grid](
        x,
        y,
        weight.contiguous(),
        bias.contiguous(),
        _contiguous_or_dummy(scale, weight),
        _contiguous_or_dummy(shift, weight),
        partials,
        mean,
        rstd,
        eps,
        *shape_args,
        num_chunks,
        **config,
        BLOCK_CHUNKS=triton.next_power_of_2(num_chunks),
        HAS_SCALE=scale is not None,
        HAS_SHIFT=shift is not None,
        SILU=silu,
    )
    return y, mean, rstd


def _forward_one_pass(x, weight, bias, scale, shift, num_groups, eps, silu, tile):
    batch, channels, height, width = x.shape
    stride_c, stride_s = _pixel_strides(x)
    y = _alloc_like(x)
    mean = _alloc((batch, num_groups), x.device)
    rstd = _alloc((batch, num_groups), x.device)
    block_c, block_s = tile
    _one_pass_forward_kernel[(batch * num_groups,)](
        x,
        y,
        weight.contiguous(),
        bias.contiguous(),
        _contiguous_or_dummy(scale, weight),
        _contiguous_or_dummy(shift, weight),
        mean,
        rstd,
        eps,
        channels,
        height * width,
        channels // num_groups,
        num_groups,
        stride_c,
        stride_s,
        BLOCK_C=block_c,
        BLOCK_S=block_s,
        HAS_SCALE=scale is not None,
        HAS_SHIFT=shift is not None,
        SILU=silu,
        num_warps=8 if block_c * block_s >= TILE_ELEMENTS else 4,
    )
    return y, mean, rstd


def _contiguous_or_dummy(t: torch.Tensor | None, dummy: torch.Tensor) -> torch.Tensor:
    """A pointer for an optional tensor; the kernel does not read it when its HAS_* flag is off."""
    return dummy if t is None else t.contiguous()


def _backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    scale: torch.Tensor | None,
    shift: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    num_groups: int,
    silu: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x = _in_kernel_layout(x)
    layout = torch.contiguous_format if x.is_contiguous() else torch.channels_last
    dy = dy.contiguous(memory_format=layout)
    batch, channels, height, width = x.shape
    hw, c_per_group = height * width, channels // num_groups
    config = _launch_config(c_per_group, hw)
    num_chunks = config.pop("num_chunks")
    stride_c, stride_s = _pixel_strides(x)
    grid = (batch * num_groups, num_chunks)
    shape_args = (channels, hw, c_per_group, num_groups, stride_c, stride_s)
    flags = {"HAS_SCALE": scale is not None, "HAS_SHIFT": shift is not None, "SILU": silu}
    params = (
        weight.contiguous(),
        bias.contiguous(),
        _contiguous_or_dummy(scale, weight),
        _contiguous_or_dummy(shift, weight),
    )

    tile = _one_pass_tile(c_per_group, hw)
    if tile is not None:
        sum_du = _alloc((batch, channels), x.device)
        sum_du_xhat = _alloc((batch, channels), x.device)
        dx = _alloc_like(x)
        _one_pass_backward_kernel[(batch * num_groups,)](
            dy, x, dx, *params, mean, rstd, sum_du, sum_du_xhat, *shape_args,
            BLOCK_C=tile[0], BLOCK_S=tile[1], num_warps=8 if tile[0] * tile[1] >= TILE_ELEMENTS else 4,
            **flags,
        )  # fmt: skip
        return (dx, *_param_grads(sum_du, sum_du_xhat, weight, bias, scale, shift))

    partial_du = _alloc((batch, channels, num_chunks), x.device)
    partial_du_xhat = _alloc((batch, channels, num_chunks), x.device)
    _channel_sums_kernel[grid](
        dy, x, *params, mean, rstd, partial_du, partial_du_xhat, *shape_args, num_chunks, **config, **flags
    )
    # (B, C) fp32 sums over pixels of du and du * xhat: every parameter gradient follows from them.
    sum_du = partial_du.sum(dim=2)
    sum_du_xhat = partial_du_xhat.sum(dim=2)
    weight32 = weight.float()
    scale_gain = 1.0 if scale is None else scale.float() + 1.0  # (B, C)
    dxhat_gain = (weight32 * scale_gain).expand(batch, channels).contiguous()
    group_size = c_per_group * hw
    mean_dxhat = (dxhat_gain * sum_du).view(batch, num_groups, c_per_group).sum(dim=2) / group_size
    mean_dxhat_xhat = (dxhat_gain * sum_du_xhat).view(batch, num_groups, c_per_group).sum(dim=2) / group_size

    dx = _alloc_like(x)
    _input_grad_kernel[grid](
        dy,
        x,
        dx,
        *params,
        mean,
        rstd,
        dxhat_gain,
        mean_dxhat,
        mean_dxhat_xhat,
        *shape_args,
        **config,
        **flags,
    )
    return (dx, *_param_grads(sum_du, sum_du_xhat, weight, bias, scale, shift))


def _param_grads(sum_du, sum_du_xhat, weight, bias, scale, shift):
    """dweight, dbias, dscale, dshift from the (B, C) fp32 sums over pixels of du and du * xhat."""
    weight32, bias32 = weight.float(), bias.float()
    scale_gain = 1.0 if scale is None else scale.float() + 1.0  # (B, C)
    dshift = sum_du
    dscale = weight32 * sum_du_xhat + bias32 * sum_du
    dweight = (scale_gain * sum_du_xhat).sum(dim=0)
    dbias = (scale_gain * sum_du).sum(dim=0)
    param_grad_dtype = (scale if scale is not None else shift if shift is not None else weight).dtype
    return (
        dweight.to(weight.dtype),
        dbias.to(bias.dtype),
        dscale.to(param_grad_dtype),
        dshift.to(param_grad_dtype),
    )


# ---------------------------------------------------------------------------------------------------
# Registered ops: opaque to torch.compile (traced through via the fake implementations, no graph break)


@torch.library.custom_op("irt4::group_norm_silu", mutates_args=())
def _group_norm_silu_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    scale: torch.Tensor | None,
    shift: torch.Tensor | None,
    num_groups: int,
    eps: float,
    silu: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (y in x's dtype and layout, mean (B, G) fp32, rstd (B, G) fp32)."""
    return _forward(x, weight, bias, scale, shift, num_groups, eps, silu)


@_group_norm_silu_op.register_fake
def _(x, weight, bias, scale, shift, num_groups, eps, silu):
    stats = x.new_empty((x.shape[0], num_groups), dtype=torch.float32)
    return torch.empty_like(_in_kernel_layout(x)), stats, torch.empty_like(stats)


@torch.library.custom_op("irt4::group_norm_silu_backward", mutates_args=())
def _group_norm_silu_backward_op(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    scale: torch.Tensor | None,
    shift: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    num_groups: int,
    silu: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (dx, dweight, dbias, dscale (B, C), dshift (B, C)); dscale/dshift are computed, and
    dropped by the autograd formula, when scale/shift are absent."""
    return _backward(dy, x, weight, bias, scale, shift, mean, rstd, num_groups, silu)


@_group_norm_silu_backward_op.register_fake
def _(dy, x, weight, bias, scale, shift, mean, rstd, num_groups, silu):
    param_grad_dtype = (scale if scale is not None else shift if shift is not None else weight).dtype
    per_batch_channel = x.new_empty(x.shape[:2], dtype=param_grad_dtype)
    return (
        torch.empty_like(_in_kernel_layout(x)),
        torch.empty_like(weight),
        torch.empty_like(bias),
        per_batch_channel,
        torch.empty_like(per_batch_channel),
    )


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias, scale, shift, num_groups, _eps, silu = inputs
    _y, mean, rstd = output
    ctx.save_for_backward(x, weight, bias, scale, shift, mean, rstd)
    ctx.num_groups, ctx.silu = num_groups, silu
    ctx.has_scale, ctx.has_shift = scale is not None, shift is not None
    ctx.mark_non_differentiable(mean, rstd)


def _backward_formula(ctx, dy, _dmean, _drstd):
    x, weight, bias, scale, shift, mean, rstd = ctx.saved_tensors
    dx, dweight, dbias, dscale, dshift = _group_norm_silu_backward_op(
        dy, x, weight, bias, scale, shift, mean, rstd, ctx.num_groups, ctx.silu
    )
    return (
        dx,
        dweight,
        dbias,
        dscale if ctx.has_scale else None,
        dshift if ctx.has_shift else None,
        None,
        None,
        None,
    )


_group_norm_silu_op.register_autograd(_backward_formula, setup_context=_setup_context)
