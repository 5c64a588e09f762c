"""Flash-style attention softmax(scale q k^T + bias) v in Triton: forward, backward, registered op, reference.

Covers the model's attentions (spec/contracts.md "Kernels"): the Swin window attention (many windows of
N = 49 tokens, d = 32, a relative position bias plus the shifted-window mask, with the bias gradient),
the UNet mid attention (N = 100, d = 32) and the VAE mid attention (one head, d = 512, N up to 6,400).

Why it is fast: no N x N matrix is ever stored. The forward streams key blocks through an online softmax
and saves one logsumexp per query; the backward recomputes the probabilities block by block from it
(FlashAttention-2). The many small windows are batched into the grid: one program per
(batch x window x head, query block), so a 49-token window is one program, not one launch.

Numerics: the scores, the softmax statistics and every accumulator are fp32; the probabilities and dS are
rounded to the input dtype before their matmuls (as flash-attention does), and fp32 inputs use IEEE fp32
dots, not TF32. The head dimension is padded to a power of two and masked. Large heads (d > 128, the VAE;
d > 64 in fp32) are tiled over d: q k^T and dO v^T are reduced over d in chunks of BLOCK_D, and the
backward gives each program one BLOCK_DV-wide slice of dq / dk / dv (recomputing the scores once per
slice) so that no program holds a (block, 512) fp32 accumulator pair.

Where it runs: CUDA tensors use the compiled kernels; CPU tensors use them through the Triton
interpreter when TRITON_INTERPRET=1 was set before this module was imported (tests/conftest.py does);
otherwise, on a CPU, `attention` falls back to `attention_ref`.
"""

import math
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

# log2(e): the host's float, and the kernels' copy. A @triton.jit function may read a global only if it is a
# tl.constexpr instance (`LOG2E: tl.constexpr = ...` is not one): compiling for a GPU raises NameError on
# any other global, although the interpreter accepts it (tests/kernels/test_gpu_compile.py checks this).
_LOG2E = 1.4426950408889634
LOG2E = tl.constexpr(_LOG2E)
# Read once: Triton decides interpreter or compiler when the kernels are decorated, at import.
_INTERPRETER = os.environ.get("TRITON_INTERPRET", "0") == "1"


def attention_ref(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: Tensor | None = None,
    scale: float | None = None,
    upcast: bool = True,
) -> Tensor:
    """Softmax(scale q k^T + bias) v with an explicit (..., N, N) softmax: the reference for the kernel.

    q, k, v: (..., N, d); bias broadcastable to (..., N, N); scale defaults to d^-0.5. With `upcast` the
    arithmetic is fp32 and the result is cast back to q's dtype; without it, it runs in q's dtype (the
    "plain PyTorch at this precision" of the tolerance rule).
    """
    dtype = q.dtype
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
        bias = bias.float() if bias is not None else None
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = (q * scale) @ k.transpose(-2, -1)
    if bias is not None:
        logits = logits + bias.to(logits.dtype)
    return (logits.softmax(dim=-1) @ v).to(dtype)


# ---------------------------------------------------------------- Triton kernels


@triton.jit
def _round(x, dtype: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """fp32 x rounded to `dtype` to nearest even, as the GPU's conversion does.

    EMULATE_BF16 (bf16 under the interpreter, which truncates fp32 -> bf16 and multiplies bf16's raw uint16
    storage in tl.dot, triton-lang/triton#11584): round the fp32 bits by hand and keep fp32, which holds
    every bf16 exactly; `_mma` then multiplies in fp32, where a bf16 x bf16 product is exact too.
    """
    if EMULATE_BF16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def _mma(a, b, acc, INPUT_PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """acc + a @ b, fp32 accumulation; with EMULATE_BF16 (see `_round`) on fp32 copies of the operands."""
    if EMULATE_BF16:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=INPUT_PRECISION)


@triton.jit
def _dot_over_d(
    a_ptr,
    a_rows,
    a_stride_n,
    a_stride_d,
    b_ptr,
    b_rows,
    b_stride_n,
    b_stride_d,
    seq_len,
    head_dim,
    BLOCK_D: tl.constexpr,
    NUM_D_CHUNKS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    EMULATE_BF16: tl.constexpr,
):
    """fp32 a[a_rows] @ b[b_rows]^T reduced over the head dim in chunks of BLOCK_D; rows >= seq_len read 0."""
    acc = tl.zeros((a_rows.shape[0], b_rows.shape[0]), dtype=tl.float32)
    a_row_mask = a_rows < seq_len
    b_row_mask = b_rows < seq_len
    # A loop, not tl.static_range: unrolled, every chunk's tiles were live in shared memory at once (d = 512:
    # 150 KB in bf16, up to 300 KB in fp32, over the GPUs' 163-227 KB per block); looped, one chunk's are.
    for chunk in range(NUM_D_CHUNKS):
        offs_d = chunk * BLOCK_D + tl.arange(0, BLOCK_D)
        d_mask = offs_d < head_dim
        a = tl.load(
            a_ptr + a_rows[:, None] * a_stride_n + offs_d[None, :] * a_stride_d,
            mask=a_row_mask[:, None] & d_mask[None, :],
            other=0.0,
        )
        b_t = tl.load(  # (BLOCK_D, rows of b): loaded transposed
            b_ptr + offs_d[:, None] * b_stride_d + b_rows[None, :] * b_stride_n,
            mask=d_mask[:, None] & b_row_mask[None, :],
            other=0.0,
        )
        acc = _mma(a, b_t, acc, INPUT_PRECISION, EMULATE_BF16)
    return acc


@triton.jit
def _lead_offset(bh, lead1, lead2, stride0, stride1, stride2):
    """Offset of slice `bh` of the flattened leading dims (L0, L1, L2) of a tensor with these strides."""
    bh = bh.to(tl.int64)
    return (bh // (lead1 * lead2)) * stride0 + ((bh // lead2) % lead1) * stride1 + (bh % lead2) * stride2


@triton.jit
def _attention_fwd_kernel(
    Q,
    K,
    V,
    Bias,
    Out,
    Lse,
    sq0,
    sq1,
    sq2,
    sqn,
    sqd,
    sk0,
    sk1,
    sk2,
    skn,
    skd,
    sv0,
    sv1,
    sv2,
    svn,
    svd,
    sb0,
    sb1,
    sb2,
    sbm,
    sbn,
    lead1,
    lead2,
    seq_len,
    head_dim,
    scale_log2,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    NUM_D_CHUNKS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    EMULATE_BF16: tl.constexpr,
):
    # One program per (leading index, query block); consecutive programs share the same keys.
    pid = tl.program_id(0)
    num_m_blocks = tl.cdiv(seq_len, BLOCK_M)
    bh = pid // num_m_blocks
    offs_m = (pid % num_m_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < seq_len
    offs_d = tl.arange(0, HEAD_DIM)
    d_mask = offs_d < head_dim
    q_base = Q + _lead_offset(bh, lead1, lead2, sq0, sq1, sq2)
    k_base = K + _lead_offset(bh, lead1, lead2, sk0, sk1, sk2)
    v_base = V + _lead_offset(bh, lead1, lead2, sv0, sv1, sv2)
    b_base = Bias + _lead_offset(bh, lead1, lead2, sb0, sb1, sb2)

    # Scores are kept in base 2 (x log2 e) so the softmax uses exp2.
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
    for start_n in range(0, seq_len, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_mask = offs_n < seq_len
        s = _dot_over_d(
            q_base, offs_m, sqn, sqd, k_base, offs_n, skn, skd, seq_len, head_dim,
            BLOCK_D, NUM_D_CHUNKS, INPUT_PRECISION, EMULATE_BF16,
        )  # fmt: skip
        s = s * scale_log2
        if HAS_BIAS:
            bias = tl.load(
                b_base + offs_m[:, None] * sbm + offs_n[None, :] * sbn,
                mask=m_mask[:, None] & n_mask[None, :],
                other=0.0,
            )
            s += bias.to(tl.float32) * LOG2E
        s = tl.where(n_mask[None, :], s, float("-inf"))
        # Every key block holds at least one real key, so m_new is finite and alpha = 0 on the first block.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(
            v_base + offs_n[:, None] * svn + offs_d[None, :] * svd,
            mask=n_mask[:, None] & d_mask[None, :],
            other=0.0,
        )
        acc = _mma(_round(p, v.dtype, EMULATE_BF16), v, acc * alpha[:, None], INPUT_PRECISION, EMULATE_BF16)
        m_i = m_new

    out = acc / l_i[:, None]
    out_offsets = bh.to(tl.int64) * seq_len * head_dim + offs_m[:, None] * head_dim + offs_d[None, :]
    tl.store(
        Out + out_offsets,
        _round(out, Out.dtype.element_ty, EMULATE_BF16).to(Out.dtype.element_ty),
        mask=m_mask[:, None] & d_mask[None, :],
    )
    tl.store(Lse + bh.to(tl.int64) * seq_len + offs_m, m_i + tl.log2(l_i), mask=m_mask)


@triton.jit
def _attention_bwd_dkdv_kernel(
    Q,
    K,
    V,
    Bias,
    DO,
    Lse,
    Delta,
    DK,
    DV,
    sq0,
    sq1,
    sq2,
    sqn,
    sqd,
    sk0,
    sk1,
    sk2,
    skn,
    skd,
    sv0,
    sv1,
    sv2,
    svn,
    svd,
    sb0,
    sb1,
    sb2,
    sbm,
    sbn,
    so0,
    so1,
    so2,
    son,
    sod,
    lead1,
    lead2,
    seq_len,
    head_dim,
    scale,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    NUM_D_CHUNKS: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    NUM_DV_SLICES: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    EMULATE_BF16: tl.constexpr,
):
    # One program per (leading index, key block, d slice); works on the transposed scores (keys x queries).
    pid = tl.program_id(0)
    num_n_blocks = tl.cdiv(seq_len, BLOCK_N)
    dv_slice = pid % NUM_DV_SLICES
    bh = pid // (NUM_DV_SLICES * num_n_blocks)
    offs_n = ((pid // NUM_DV_SLICES) % num_n_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < seq_len
    offs_dv = dv_slice * BLOCK_DV + tl.arange(0, BLOCK_DV)
    dv_mask = offs_dv < head_dim
    q_base = Q + _lead_offset(bh, lead1, lead2, sq0, sq1, sq2)
    k_base = K + _lead_offset(bh, lead1, lead2, sk0, sk1, sk2)
    v_base = V + _lead_offset(bh, lead1, lead2, sv0, sv1, sv2)
    b_base = Bias + _lead_offset(bh, lead1, lead2, sb0, sb1, sb2)
    do_base = DO + _lead_offset(bh, lead1, lead2, so0, so1, so2)
    row_base = bh.to(tl.int64) * seq_len
    scale_log2 = scale * LOG2E

    dk = tl.zeros((BLOCK_N, BLOCK_DV), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_DV), dtype=tl.float32)
    for start_m in range(0, seq_len, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_mask = offs_m < seq_len
        s_t = _dot_over_d(
            k_base, offs_n, skn, skd, q_base, offs_m, sqn, sqd, seq_len, head_dim,
            BLOCK_D, NUM_D_CHUNKS, INPUT_PRECISION, EMULATE_BF16,
        )  # fmt: skip
        s_t = s_t * scale_log2
        if HAS_BIAS:
            bias_t = tl.load(
                b_base + offs_m[None, :] * sbm + offs_n[:, None] * sbn,
                mask=n_mask[:, None] & m_mask[None, :],
                other=0.0,
            )
            s_t += bias_t.to(tl.float32) * LOG2E
        lse = tl.load(Lse + row_base + offs_m, mask=m_mask, other=0.0)
        p_t = tl.exp2(s_t - lse[None, :])
        p_t = tl.where(n_mask[:, None] & m_mask[None, :], p_t, 0.0)
        do = tl.load(
            do_base + offs_m[:, None] * son + offs_dv[None, :] * sod,
            mask=m_mask[:, None] & dv_mask[None, :],
            other=0.0,
        )
        dv = _mma(_round(p_t, do.dtype, EMULATE_BF16), do, dv, INPUT_PRECISION, EMULATE_BF16)
        dp_t = _dot_over_d(
            v_base, offs_n, svn, svd, do_base, offs_m, son, sod, seq_len, head_dim,
            BLOCK_D, NUM_D_CHUNKS, INPUT_PRECISION, EMULATE_BF16,
        )  # fmt: skip
        delta = tl.load(Delta + row_base + offs_m, mask=m_mask, other=0.0)
        ds_t = p_t * (dp_t - delta[None, :])
        q = tl.load(
            q_base + offs_m[:, None] * sqn + offs_dv[None, :] * sqd,
            mask=m_mask[:, None] & dv_mask[None, :],
            other=0.0,
        )
        dk = _mma(_round(ds_t, q.dtype, EMULATE_BF16), q, dk, INPUT_PRECISION, EMULATE_BF16)

    out_offsets = row_base * head_dim + offs_n[:, None] * head_dim + offs_dv[None, :]
    out_mask = n_mask[:, None] & dv_mask[None, :]
    tl.store(
        DK + out_offsets,
        _round(dk * scale, DK.dtype.element_ty, EMULATE_BF16).to(DK.dtype.element_ty),
        mask=out_mask,
    )
    tl.store(
        DV + out_offsets, _round(dv, DV.dtype.element_ty, EMULATE_BF16).to(DV.dtype.element_ty), mask=out_mask
    )


@triton.jit
def _attention_bwd_dq_kernel(
    Q,
    K,
    V,
    Bias,
    DO,
    Lse,
    Delta,
    DQ,
    DBias,
    sq0,
    sq1,
    sq2,
    sqn,
    sqd,
    sk0,
    sk1,
    sk2,
    skn,
    skd,
    sv0,
    sv1,
    sv2,
    svn,
    svd,
    sb0,
    sb1,
    sb2,
    sbm,
    sbn,
    so0,
    so1,
    so2,
    son,
    sod,
    lead1,
    lead2,
    seq_len,
    head_dim,
    scale,
    HAS_BIAS: tl.constexpr,
    WRITE_DBIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    NUM_D_CHUNKS: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    NUM_DV_SLICES: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    EMULATE_BF16: tl.constexpr,
):
    # One program per (leading index, query block, d slice); the first slice also writes dbias = dS.
    pid = tl.program_id(0)
    num_m_blocks = tl.cdiv(seq_len, BLOCK_M)
    dv_slice = pid % NUM_DV_SLICES
    bh = pid // (NUM_DV_SLICES * num_m_blocks)
    offs_m = ((pid // NUM_DV_SLICES) % num_m_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < seq_len
    offs_dv = dv_slice * BLOCK_DV + tl.arange(0, BLOCK_DV)
    dv_mask = offs_dv < head_dim
    q_base = Q + _lead_offset(bh, lead1, lead2, sq0, sq1, sq2)
    k_base = K + _lead_offset(bh, lead1, lead2, sk0, sk1, sk2)
    v_base = V + _lead_offset(bh, lead1, lead2, sv0, sv1, sv2)
    b_base = Bias + _lead_offset(bh, lead1, lead2, sb0, sb1, sb2)
    do_base = DO + _lead_offset(bh, lead1, lead2, so0, so1, so2)
    row_base = bh.to(tl.int64) * seq_len
    scale_log2 = scale * LOG2E
    lse = tl.load(Lse + row_base + offs_m, mask=m_mask, other=0.0)
    delta = tl.load(Delta + row_base + offs_m, mask=m_mask, other=0.0)

    dq = tl.zeros((BLOCK_M, BLOCK_DV), dtype=tl.float32)
    for start_n in range(0, seq_len, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_mask = offs_n < seq_len
        tile_mask = m_mask[:, None] & n_mask[None, :]
        s = _dot_over_d(
            q_base, offs_m, sqn, sqd, k_base, offs_n, skn, skd, seq_len, head_dim,
            BLOCK_D, NUM_D_CHUNKS, INPUT_PRECISION, EMULATE_BF16,
        )  # fmt: skip
        s = s * scale_log2
        if HAS_BIAS:
            bias = tl.load(b_base + offs_m[:, None] * sbm + offs_n[None, :] * sbn, mask=tile_mask, other=0.0)
            s += bias.to(tl.float32) * LOG2E
        p = tl.where(tile_mask, tl.exp2(s - lse[:, None]), 0.0)
        dp = _dot_over_d(
            do_base, offs_m, son, sod, v_base, offs_n, svn, svd, seq_len, head_dim,
            BLOCK_D, NUM_D_CHUNKS, INPUT_PRECISION, EMULATE_BF16,
        )  # fmt: skip
        ds = p * (dp - delta[:, None])
        if WRITE_DBIAS:
            if dv_slice == 0:
                tl.store(
                    DBias + row_base * seq_len + offs_m[:, None] * seq_len + offs_n[None, :],
                    ds,
                    mask=tile_mask,
                )
        k = tl.load(
            k_base + offs_n[:, None] * skn + offs_dv[None, :] * skd,
            mask=n_mask[:, None] & dv_mask[None, :],
            other=0.0,
        )
        dq = _mma(_round(ds, k.dtype, EMULATE_BF16), k, dq, INPUT_PRECISION, EMULATE_BF16)

    out_offsets = row_base * head_dim + offs_m[:, None] * head_dim + offs_dv[None, :]
    tl.store(
        DQ + out_offsets,
        _round(dq * scale, DQ.dtype.element_ty, EMULATE_BF16).to(DQ.dtype.element_ty),
        mask=m_mask[:, None] & dv_mask[None, :],
    )


# ---------------------------------------------------------------- launchers


def _block_config(head_dim: int, dtype: torch.dtype) -> dict:
    """Tile sizes by head dimension and dtype. Chosen so that every kernel compiles for sm_80 and sm_90 within
    their shared memory (163 / 227 KB per block) and mostly without register spills (ptxas's counts, see
    tests/kernels/test_gpu_compile.py); not tuned for speed on a GPU yet.

    16-bit inputs, d <= 128: one d chunk, 64 x 64 tiles (a 49-token Swin window is one tile); three pipeline
    stages up to d = 64, two at d = 128 (three need 173 KB on sm_80 in the dk/dv kernel). fp32 inputs use
    IEEE fp32 dots, which run on FMA units, not tensor cores: 32 x 32 tiles and d chunks / slices of at most
    64 (64 x 64 fp32 tiles spill hundreds of registers per thread). d > 128 (the VAE's 512), any dtype:
    32 x 32 tiles, scores reduced over d in 128-wide chunks, backward accumulators in 128-wide slices; the
    forward keeps one (32, 512) fp32 accumulator (64 registers per thread at 8 warps).
    """
    padded = max(16, triton.next_power_of_2(head_dim))
    if padded > 128:
        return dict(
            BLOCK_M=32, BLOCK_N=32, BLOCK_D=128, BLOCK_DV=128, HEAD_DIM=padded, num_warps=8, num_stages=2
        )
    if dtype == torch.float32:
        chunk = min(padded, 64)
        return dict(
            BLOCK_M=32, BLOCK_N=32, BLOCK_D=chunk, BLOCK_DV=chunk, HEAD_DIM=padded, num_warps=4, num_stages=2
        )
    stages = 3 if padded <= 64 else 2
    return dict(
        BLOCK_M=64,
        BLOCK_N=64,
        BLOCK_D=padded,
        BLOCK_DV=padded,
        HEAD_DIM=padded,
        num_warps=4,
        num_stages=stages,
    )


def _lead3(t: Tensor) -> Tensor:
    """View (lead..., a, b) as (L0, L1, L2, a, b); only more than three leading dims may need a copy."""
    if t.dim() > 5:
        t = t.reshape(-1, *t.shape[-4:])
    while t.dim() < 5:
        t = t.unsqueeze(0)
    return t


def _new_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Outputs every element of which the kernels write (the tests poison them to check it)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _launch_args(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> tuple[list, dict]:
    """Kernel arguments shared by the three kernels: 5 strides of each (L0, L1, L2, N, d) input."""
    *lead, seq_len, head_dim = q.shape
    q5, k5, v5 = _lead3(q), _lead3(k), _lead3(v)
    # An absent bias is never read (HAS_BIAS is False); q stands in for its pointer.
    b5 = _lead3(bias.expand(*lead, seq_len, seq_len)) if bias is not None else q5
    strides = [s for t in (q5, k5, v5, b5) for s in t.stride()]
    config = _block_config(head_dim, q.dtype)
    interpreted_bf16 = _INTERPRETER and q.dtype == torch.bfloat16
    meta = dict(
        HAS_BIAS=bias is not None,
        INPUT_PRECISION="ieee" if q.dtype == torch.float32 or interpreted_bf16 else "tf32",
        EMULATE_BF16=interpreted_bf16,
        NUM_D_CHUNKS=triton.cdiv(config["HEAD_DIM"], config["BLOCK_D"]),
        **config,
    )
    return [q5, k5, v5, b5, strides, q5.shape[1], q5.shape[2], seq_len, head_dim], meta


def _forward_triton(
    q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, scale: float
) -> tuple[Tensor, Tensor]:
    (q5, k5, v5, b5, strides, lead1, lead2, seq_len, head_dim), meta = _launch_args(q, k, v, bias)
    num_lead = q5.shape[0] * lead1 * lead2
    out = _new_output(q.shape, q.dtype, q.device)
    lse = _new_output(q.shape[:-1], torch.float32, q.device)  # base-2 logsumexp of each query's scores
    del meta["BLOCK_DV"]
    grid = (num_lead * triton.cdiv(seq_len, meta["BLOCK_M"]),)
    _attention_fwd_kernel[grid](
        q5, k5, v5, b5, out, lse, *strides, lead1, lead2, seq_len, head_dim, scale * _LOG2E, **meta
    )
    return out, lse


def _backward_triton(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: Tensor | None,
    out: Tensor,
    lse: Tensor,
    scale: float,
    bias_requires_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    (q5, k5, v5, b5, strides, lead1, lead2, seq_len, head_dim), meta = _launch_args(q, k, v, bias)
    num_lead = q5.shape[0] * lead1 * lead2
    do5 = _lead3(grad_out)
    delta = (
        (grad_out.float() * out.float()).sum(-1).contiguous()
    )  # (lead..., N): rowsum(dO * O) of the softmax backward
    meta.pop("HEAD_DIM")
    meta["NUM_DV_SLICES"] = triton.cdiv(head_dim, meta["BLOCK_DV"])
    common = [*strides, *do5.stride(), lead1, lead2, seq_len, head_dim, scale]
    dq = _new_output(q.shape, q.dtype, q.device)
    dk = _new_output(k.shape, k.dtype, k.device)
    dv = _new_output(v.shape, v.dtype, v.device)
    write_dbias = bias is not None and bias_requires_grad
    # Full per-slice dS in fp32; the autograd formula reduces it to the bias's broadcast shape.
    dbias = _new_output((*q.shape[:-1], seq_len) if write_dbias else (0,), torch.float32, q.device)

    grid = (num_lead * triton.cdiv(seq_len, meta["BLOCK_N"]) * meta["NUM_DV_SLICES"],)
    _attention_bwd_dkdv_kernel[grid](q5, k5, v5, b5, do5, lse, delta, dk, dv, *common, **meta)
    grid = (num_lead * triton.cdiv(seq_len, meta["BLOCK_M"]) * meta["NUM_DV_SLICES"],)
    _attention_bwd_dq_kernel[grid](
        q5, k5, v5, b5, do5, lse, delta, dq, dbias, *common, WRITE_DBIAS=write_dbias, **meta
    )
    return dq, dk, dv, dbias


# ---------------------------------------------------------------- registered ops and autograd


@torch.library.custom_op("irt4::attention_forward", mutates_args=())
def _attention_forward_op(
    q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, scale: float
) -> tuple[Tensor, Tensor]:
    return _forward_triton(q, k, v, bias, scale)


@_attention_forward_op.register_fake
def _(q, k, v, bias, scale):
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(
        q.shape[:-1], dtype=torch.float32
    )


@torch.library.custom_op("irt4::attention_backward", mutates_args=())
def _attention_backward_op(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: Tensor | None,
    out: Tensor,
    lse: Tensor,
    scale: float,
    bias_requires_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _backward_triton(grad_out, q, k, v, bias, out, lse, scale, bias_requires_grad)


@_attention_backward_op.register_fake
def _(grad_out, q, k, v, bias, out, lse, scale, bias_requires_grad):
    def like(t: Tensor) -> Tensor:
        return torch.empty_like(t, memory_format=torch.contiguous_format)

    write_dbias = bias is not None and bias_requires_grad
    dbias = q.new_empty((*q.shape[:-1], q.shape[-2]) if write_dbias else (0,), dtype=torch.float32)
    return like(q), like(k), like(v), dbias


def _setup_context(ctx, inputs, output):
    q, k, v, bias, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, bias, out, lse)
    ctx.scale = scale
    ctx.bias_shape = None if bias is None else bias.shape
    ctx.bias_dtype = None if bias is None else bias.dtype


def _backward(ctx, grad_out, grad_lse):
    q, k, v, bias, out, lse = ctx.saved_tensors
    bias_requires_grad = bias is not None and ctx.needs_input_grad[3]
    dq, dk, dv, dbias_full = _attention_backward_op(
        grad_out, q, k, v, bias, out, lse, ctx.scale, bias_requires_grad
    )
    # dbias as autograd would give it: dS summed over the dims along which the bias was broadcast.
    dbias = dbias_full.sum_to_size(ctx.bias_shape).to(ctx.bias_dtype) if bias_requires_grad else None
    return dq, dk, dv, dbias, None


_attention_forward_op.register_autograd(_backward, setup_context=_setup_context)


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> None:
    if not (q.shape == k.shape == v.shape) or q.dim() < 2:
        raise ValueError(
            f"attention needs q, k, v of one shape (..., N, d), got {q.shape}, {k.shape}, {v.shape}"
        )
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(
            f"attention needs q, k, v of one dtype fp32/bf16/fp16, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if bias is not None:
        target = (*q.shape[:-1], q.shape[-2])
        try:
            broadcast = torch.broadcast_shapes(bias.shape, target)
        except RuntimeError:
            broadcast = None
        if broadcast != target or not bias.is_floating_point():
            raise ValueError(f"attention bias {tuple(bias.shape)} {bias.dtype} must broadcast to {target}")


def attention(
    q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None, scale: float | None = None
) -> Tensor:
    """Softmax(scale q k^T + bias) v, with the Triton kernels where they can run, `attention_ref` elsewhere.

    q, k, v: (..., N, d), one dtype (fp32, bf16 or fp16); bias: floating, broadcastable to (..., N, N), with
    a gradient if it requires one; scale defaults to d^-0.5. Returns (..., N, d), contiguous, in q's dtype.
    """
    _check_inputs(q, k, v, bias)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if not (q.is_cuda or _INTERPRETER):
        return attention_ref(q, k, v, bias, scale)
    return _attention_forward_op(q, k, v, bias, scale)[0]


def attention_flops(shape: tuple[int, ...], mode: str) -> float:
    """FLOPs of attention on q of `shape` (..., N, d): forward 4 N^2 d per slice, backward 2.5x the forward.

    The backward count (dV, dP, dQ, dK: four N^2 d matmuls plus the recomputed q k^T) follows
    flash-attention's benchmark convention; mode is "fwd", "bwd" or "fwd_bwd".
    """
    *lead, seq_len, head_dim = shape
    forward = 4.0 * math.prod(lead) * seq_len * seq_len * head_dim
    return {"fwd": forward, "bwd": 2.5 * forward, "fwd_bwd": 3.5 * forward}[mode]
