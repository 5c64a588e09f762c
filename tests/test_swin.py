"""Tests for irt4.models.swin: counts and shapes of Swin-B, and agreement with torchvision's algorithm.

The reference below restates torchvision's Swin v1 forward (SwinTransformer, SwinTransformerBlock,
shifted_window_attention, PatchMerging) as plain functions over a state dict with torchvision's key
names, so it checks the algorithm and the key mapping together.
"""

import re

import pytest
import torch
import torch.nn.functional as F

from irt4.errors import InputError
from irt4.models.swin import (
    SwinBackbone,
    drop_path,
    load_torchvision_state_dict,
    window_attention,
    window_attention_reference,
)

SWIN_B_PARAMS = 87_768_224
SWIN_B_UNUSED_NORM_AND_HEAD = 1_027_048
TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7)


def tiny_backbone(seed: int, **overrides) -> SwinBackbone:
    torch.manual_seed(seed)
    return SwinBackbone(**(TINY | overrides))


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- torchvision's layout and algorithm, restated -------------------------------------------------


def torchvision_relative_position_index(window: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
    coords_flatten = torch.flatten(coords, 1)
    relative_coords = (coords_flatten[:, :, None] - coords_flatten[:, None, :]).permute(1, 2, 0).contiguous()
    relative_coords[:, :, 0] += window - 1
    relative_coords[:, :, 1] += window - 1
    relative_coords[:, :, 0] *= 2 * window - 1
    return relative_coords.sum(-1).flatten()


def torchvision_swin_keys(depths: tuple[int, ...]) -> set[str]:
    """Parameter names of torchvision's SwinTransformer (relative_position_index buffers left out)."""
    keys = {"features.0.0.weight", "features.0.0.bias", "features.0.2.weight", "features.0.2.bias"}
    block_names = (
        "norm1.weight norm1.bias attn.qkv.weight attn.qkv.bias attn.proj.weight attn.proj.bias "
        "attn.relative_position_bias_table norm2.weight norm2.bias mlp.0.weight mlp.0.bias "
        "mlp.3.weight mlp.3.bias"
    ).split()
    for stage, depth in enumerate(depths):
        for block in range(depth):
            keys |= {f"features.{2 * stage + 1}.{block}.{name}" for name in block_names}
        if stage < len(depths) - 1:
            keys |= {
                f"features.{2 * stage + 2}.{name}"
                for name in ("norm.weight", "norm.bias", "reduction.weight")
            }
    return keys | {"norm.weight", "norm.bias", "head.weight", "head.bias"}


def to_torchvision_state_dict(module: SwinBackbone) -> dict[str, torch.Tensor]:
    """The inverse of the loader's renaming, written independently, plus torchvision's index buffers."""
    state = {}
    for key, value in module.state_dict().items():
        key = re.sub(r"^patch_conv\.", "features.0.0.", key)
        key = re.sub(r"^patch_norm\.", "features.0.2.", key)
        key = re.sub(r"^stages\.(\d+)\.", lambda m: f"features.{2 * int(m[1]) + 1}.", key)
        key = re.sub(r"^merges\.(\d+)\.", lambda m: f"features.{2 * int(m[1]) + 2}.", key)
        state[re.sub(r"\.mlp\.2\.", ".mlp.3.", key)] = value
    for key, value in list(state.items()):
        if key.endswith("relative_position_bias_table"):
            window = (int(round(value.shape[0] ** 0.5)) + 1) // 2
            index_key = key.replace("relative_position_bias_table", "relative_position_index")
            state[index_key] = torchvision_relative_position_index(window).to(value.device)
    return state


def torchvision_shifted_window_attention(x, sd, prefix, num_heads, window, shift):
    """torchvision's shifted_window_attention (without dropout), window and shift square."""
    B, H, W, C = x.shape
    pad_r = (window - W % window) % window
    pad_b = (window - H % window) % window
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    _, pad_H, pad_W, _ = x.shape
    shift_size = [0 if window >= pad_H else shift, 0 if window >= pad_W else shift]
    if sum(shift_size) > 0:
        x = torch.roll(x, shifts=(-shift_size[0], -shift_size[1]), dims=(1, 2))
    num_windows = (pad_H // window) * (pad_W // window)
    x = x.view(B, pad_H // window, window, pad_W // window, window, C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B * num_windows, window * window, C)

    qkv = F.linear(x, sd[prefix + "qkv.weight"], sd[prefix + "qkv.bias"])
    qkv = qkv.reshape(x.size(0), x.size(1), 3, num_heads, C // num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q = q * (C // num_heads) ** -0.5
    attn = q.matmul(k.transpose(-2, -1))
    N = window * window
    table, index = sd[prefix + "relative_position_bias_table"], sd[prefix + "relative_position_index"]
    attn = attn + table[index].view(N, N, -1).permute(2, 0, 1).contiguous().unsqueeze(0)

    if sum(shift_size) > 0:
        attn_mask = x.new_zeros((pad_H, pad_W))
        h_slices = ((0, -window), (-window, -shift_size[0]), (-shift_size[0], None))
        w_slices = ((0, -window), (-window, -shift_size[1]), (-shift_size[1], None))
        count = 0
        for h in h_slices:
            for w in w_slices:
                attn_mask[h[0] : h[1], w[0] : w[1]] = count
                count += 1
        attn_mask = attn_mask.view(pad_H // window, window, pad_W // window, window)
        attn_mask = attn_mask.permute(0, 2, 1, 3).reshape(num_windows, N)
        attn_mask = attn_mask.unsqueeze(1) - attn_mask.unsqueeze(2)
        attn_mask = attn_mask.masked_fill(attn_mask != 0, -100.0).masked_fill(attn_mask == 0, 0.0)
        attn = attn.view(x.size(0) // num_windows, num_windows, num_heads, N, N)
        attn = attn + attn_mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, num_heads, N, N)

    attn = F.softmax(attn, dim=-1)
    x = attn.matmul(v).transpose(1, 2).reshape(x.size(0), x.size(1), C)
    x = F.linear(x, sd[prefix + "proj.weight"], sd[prefix + "proj.bias"])
    x = x.view(B, pad_H // window, pad_W // window, window, window, C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, pad_H, pad_W, C)
    if sum(shift_size) > 0:
        x = torch.roll(x, shifts=(shift_size[0], shift_size[1]), dims=(1, 2))
    return x[:, :H, :W, :].contiguous()


def torchvision_swin_features(sd, image, depths, num_heads, window, patch=4):
    """torchvision SwinTransformer in eval mode, returning the stage outputs as the reference does."""

    def layer_norm(x, prefix):
        return F.layer_norm(x, x.shape[-1:], sd[prefix + "weight"], sd[prefix + "bias"], eps=1e-5)

    x = F.conv2d(image, sd["features.0.0.weight"], sd["features.0.0.bias"], stride=patch)
    x = layer_norm(x.permute(0, 2, 3, 1), "features.0.2.")
    features = []
    for stage, depth in enumerate(depths):
        for block in range(depth):
            p = f"features.{2 * stage + 1}.{block}."
            shift = 0 if block % 2 == 0 else window // 2
            attn_in = layer_norm(x, p + "norm1.")
            x = x + torchvision_shifted_window_attention(
                attn_in, sd, p + "attn.", num_heads[stage], window, shift
            )
            hidden = F.gelu(
                F.linear(layer_norm(x, p + "norm2."), sd[p + "mlp.0.weight"], sd[p + "mlp.0.bias"])
            )
            x = x + F.linear(hidden, sd[p + "mlp.3.weight"], sd[p + "mlp.3.bias"])
        features.append(x.permute(0, 3, 1, 2).contiguous())
        if stage < len(depths) - 1:
            p = f"features.{2 * stage + 2}."
            H, W = x.shape[1], x.shape[2]
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
            x = torch.cat(
                [x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], x[..., 0::2, 1::2, :], x[..., 1::2, 1::2, :]],
                -1,
            )
            x = F.linear(layer_norm(x, p + "norm."), sd[p + "reduction.weight"])
    return features


# --- Swin-B at the reference configuration (meta device: nothing allocated) ----------------------


def test_swin_b_with_classifier_has_torchvision_parameter_count():
    with torch.device("meta"):
        model = SwinBackbone(keep_classifier=True)
    assert parameter_count(model) == SWIN_B_PARAMS


def test_swin_b_without_classifier_drops_exactly_the_unused_norm_and_head():
    with torch.device("meta"):
        model = SwinBackbone()
    assert parameter_count(model) == SWIN_B_PARAMS - SWIN_B_UNUSED_NORM_AND_HEAD == 86_741_176
    assert not hasattr(model, "head") and not hasattr(model, "norm")


@pytest.mark.parametrize("size, maps", [(320, (80, 40, 20, 10)), (256, (64, 32, 16, 8))])
def test_swin_b_returns_four_nchw_stage_maps_at_model_resolutions(size, maps):
    with torch.device("meta"):
        model = SwinBackbone()
        features = model(torch.empty(2, 3, size, size))
    assert model.stage_channels == (128, 256, 512, 1024)
    assert [tuple(f.shape) for f in features] == [(2, c, m, m) for c, m in zip(model.stage_channels, maps)]


def test_swin_b_state_dict_names_map_onto_torchvision_layout():
    with torch.device("meta"):
        model = SwinBackbone(keep_classifier=True)
        tv_state = to_torchvision_state_dict(model)
        load_torchvision_state_dict(model, tv_state)
        load_torchvision_state_dict(SwinBackbone(), tv_state)  # ImageNet dict into the head-less model
    assert {k for k in tv_state if not k.endswith("relative_position_index")} == torchvision_swin_keys(
        (2, 2, 18, 2)
    )


# --- attention -------------------------------------------------------------------------------------


def test_window_attention_sdpa_matches_explicit_softmax_for_output_and_gradients():
    torch.manual_seed(0)
    heads, n, d = 4, 49, 8
    q, k, v = (torch.randn(2, 3, heads, n, d) for _ in range(3))
    mask = torch.where(torch.rand(3, 1, n, n) < 0.3, -100.0, 0.0)
    bias = torch.randn(heads, n, n) * 0.5 + mask  # (windows, heads, N, N) as in a shifted block
    inputs32 = [t.clone().requires_grad_() for t in (q, k, v, bias)]
    inputs_ref32 = [t.clone().requires_grad_() for t in (q, k, v, bias)]
    inputs64 = [t.double().requires_grad_() for t in (q, k, v, bias)]
    out_grad = torch.randn(2, 3, heads, n, d)

    results = []
    for fn, inputs in (
        (window_attention, inputs32),
        (window_attention_reference, inputs_ref32),
        (window_attention_reference, inputs64),
    ):
        out = fn(*inputs)
        out.backward(out_grad.to(out.dtype))
        results.append([out.detach().double()] + [t.grad.double() for t in inputs])
    for fast, ref32, ref64 in zip(*results):
        fast_error = (fast - ref64).abs().max()
        plain_error = (ref32 - ref64).abs().max()
        assert fast_error <= 2 * plain_error + 1e-6, (fast_error, plain_error)


@pytest.mark.parametrize(
    "batch, height, width",
    [
        (1, 64, 64),  # shifted windows with padding in stages 1 and 2
        (1, 72, 88),  # odd sizes: padding to the window and to even sizes for merging
        (2, 64, 128),  # stage 3 is 4 x 8 -> 7 x 14 padded: shifted along W only
    ],
)
def test_tiny_backbone_matches_torchvision_swin_algorithm(batch, height, width):
    model = tiny_backbone(seed=0).double().eval()
    image = torch.randn(batch, 3, height, width, dtype=torch.float64)
    with torch.no_grad():
        features = model(image)
        expected = torchvision_swin_features(
            to_torchvision_state_dict(model), image, TINY["depths"], TINY["num_heads"], TINY["window_size"]
        )
    assert len(features) == 4
    for got, want in zip(features, expected):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


# --- stochastic depth and gradients ------------------------------------------------------------------


def test_drop_path_zeroes_whole_samples_and_rescales_the_rest():
    torch.manual_seed(0)
    out = drop_path(torch.ones(4000, 3, 2, 2), prob=0.25, training=True)
    per_sample = out.flatten(1)
    assert torch.all(per_sample == per_sample[:, :1])
    kept = per_sample[:, 0] != 0
    assert 0 < kept.sum() < len(kept)
    torch.testing.assert_close(per_sample[kept, 0], torch.full((int(kept.sum()),), 4.0 / 3.0))
    assert abs(per_sample.mean().item() - 1.0) < 0.05
    assert torch.equal(drop_path(torch.ones(3, 2), prob=0.25, training=False), torch.ones(3, 2))


def test_swin_b_drop_path_probability_rises_linearly_from_zero_to_stochastic_depth():
    with torch.device("meta"):
        model = SwinBackbone(stochastic_depth=0.5)
    probs = [block.drop_prob for stage in model.stages for block in stage]
    assert probs == pytest.approx(torch.linspace(0.0, 0.5, 24).tolist())


def test_eval_is_deterministic_and_train_mode_drops_paths():
    model = tiny_backbone(seed=0, stochastic_depth=0.5)
    image = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        model.eval()
        eval_a, eval_b = model(image), model(image)
        model.train()
        train_runs = []
        for seed in (1, 2, 1):
            torch.manual_seed(seed)
            train_runs.append(model(image))
    assert all(torch.equal(a, b) for a, b in zip(eval_a, eval_b))
    assert not torch.equal(train_runs[0][-1], train_runs[1][-1])
    assert all(torch.equal(a, b) for a, b in zip(train_runs[0], train_runs[2]))


def test_train_mode_without_stochastic_depth_equals_eval():
    model = tiny_backbone(seed=0, stochastic_depth=0.0)
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        train_features = model.train()(image)
        eval_features = model.eval()(image)
    assert all(torch.equal(a, b) for a, b in zip(train_features, eval_features))


def test_gradients_reach_every_parameter():
    model = tiny_backbone(seed=0, stochastic_depth=0.0)
    features = model(torch.randn(1, 3, 64, 64))
    sum((f * torch.randn_like(f)).sum() for f in features).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


# --- torchvision state dicts -------------------------------------------------------------------------


@pytest.mark.parametrize("keep_classifier", [False, True])
def test_torchvision_state_dict_round_trip_gives_identical_outputs(keep_classifier):
    source = tiny_backbone(seed=0, keep_classifier=True).eval()
    target = tiny_backbone(seed=1, keep_classifier=keep_classifier).eval()
    image = torch.randn(1, 3, 72, 88)
    load_torchvision_state_dict(target, to_torchvision_state_dict(source))
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(source(image), target(image)))
    if keep_classifier:
        assert torch.equal(source.head.weight, target.head.weight)


def test_torchvision_loader_names_unexpected_missing_and_misshaped_keys():
    model = tiny_backbone(seed=0)
    state = to_torchvision_state_dict(model)

    with pytest.raises(InputError, match=r"unexpected keys: features\.9\.0\.norm1\.weight"):
        load_torchvision_state_dict(model, state | {"features.9.0.norm1.weight": torch.zeros(16)})
    with pytest.raises(InputError, match=r"unexpected keys: features\.0\.1\.weight"):
        load_torchvision_state_dict(model, state | {"features.0.1.weight": torch.zeros(16)})
    incomplete = {k: v for k, v in state.items() if k != "features.3.1.mlp.3.bias"}
    with pytest.raises(InputError, match=r"missing keys: stages\.1\.1\.mlp\.2\.bias"):
        load_torchvision_state_dict(model, incomplete)
    misshaped = state | {"features.1.0.attn.relative_position_bias_table": torch.zeros(81, 1)}
    with pytest.raises(InputError, match=r"wrong shapes: features\.1\.0\.attn\.relative_position_bias_table"):
        load_torchvision_state_dict(model, misshaped)
    with pytest.raises(InputError, match=r"missing keys: head\.bias, head\.weight, norm\.bias, norm\.weight"):
        load_torchvision_state_dict(tiny_backbone(seed=0, keep_classifier=True), state)
