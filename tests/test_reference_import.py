"""irt4-import radiodiff: the reference RadioDiff code's checkpoints as irt4 bundles.

tests/data/radiodiff-reference/ was made by scripts/make-radiodiff-fixture.py with the reference
code itself (its classes at a reduced width, random weights): checkpoints in its trainers' layout and
its outputs. Importing them must give the same outputs within 1e-5 relative.
"""

import pickle
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from irt4.cli.importer import main as import_main
from irt4.diffusion.sampler import SamplerNoise
from irt4.diffusion.schedule import sampling_schedule
from irt4.errors import InputError
from irt4.models.bundle import load_model
from irt4.models.reference_import import import_reference, reference_unet_key

FIXTURE = Path(__file__).parent / "data" / "radiodiff-reference"
LDM, VAE = FIXTURE / "model-ldm.pt", FIXTURE / "model-vae.pt"


def relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm().clamp_min(1e-12))


@pytest.fixture(scope="module")
def reference() -> tuple[dict, dict]:
    inputs = {k: v.float() for k, v in load_file(str(FIXTURE / "inputs.safetensors")).items()}
    return inputs, load_file(str(FIXTURE / "outputs.safetensors"))


@pytest.fixture(scope="module")
def imported():
    return import_reference(LDM, VAE, weights="ema")


def test_imported_vae_matches_the_reference_decode_and_encode(imported, reference):
    model, info = imported
    inputs, outputs = reference
    assert info == {"weights": "raw", "vae_weights": "ema"}  # the LDM file has raw weights only
    with torch.no_grad():
        assert relative(model.vae.decode(inputs["latent"]), outputs["decode"]) < 1e-5
        assert relative(model.vae.encode(inputs["image"]).mean, outputs["encode_mean"]) < 1e-5


@pytest.mark.parametrize("index", [0, 1, 2])
def test_imported_unet_matches_the_reference_calls(imported, reference, index):
    model, _ = imported
    inputs, outputs = reference
    t = torch.full((2,), float(inputs["times"][index]))
    with torch.no_grad():
        c_pred, noise_pred = model.unet(inputs["x"], t, inputs["cond"])[:2]
    assert relative(c_pred, outputs[f"unet_c_{index}"]) < 1e-5
    assert relative(noise_pred, outputs[f"unet_noise_{index}"]) < 1e-5  # at t = 1: x_t itself, in both


@pytest.mark.parametrize("schedule_dtype", ["float64", "float32"])
def test_imported_model_samples_the_reference_maps_from_the_same_draws(imported, reference, schedule_dtype):
    from dataclasses import replace

    model, _ = imported
    inputs, outputs = reference
    model.cfg = replace(model.cfg, diffusion=replace(model.cfg.diffusion, schedule_dtype=schedule_dtype))
    noise = SamplerNoise(inputs["sample_initial"], inputs["sample_steps"])
    with torch.no_grad():
        maps = model.sample(inputs["cond"][:1], steps=3, noise=noise)
    assert relative(maps, outputs["sample"]) < 1e-5


def test_imported_config_is_read_from_the_tensors(imported):
    cfg = imported[0].cfg
    assert cfg.image_size == 256 and cfg.latent_size == 64
    assert (cfg.unet.dim, cfg.unet.dim_mults, cfg.unet.fourier_features) == (8, (1, 2, 4, 4), 4)
    assert (cfg.swin.embed_dim, cfg.swin.depths, cfg.swin.num_heads) == (8, (1, 1, 2, 1), (1, 2, 2, 4))
    assert (cfg.vae.base_channels, cfg.vae.channel_mults, cfg.vae.num_res_blocks) == (32, (1, 1, 1), 1)
    assert float(imported[0].scale_factor) == pytest.approx(0.7) and not cfg.swin.keep_classifier


def test_without_the_vae_file_the_ldm_first_stage_is_used(imported):
    alone, info = import_reference(LDM)
    stored = torch.load(LDM, weights_only=True)["model"]
    assert info == {"weights": "raw", "vae_weights": "raw"}
    weight = "decoder.conv_out.weight"
    assert torch.equal(alone.vae.state_dict()[weight], stored[f"first_stage_model.{weight}"].float())
    assert not torch.equal(alone.vae.state_dict()[weight], imported[0].vae.state_dict()[weight])
    assert torch.equal(
        alone.unet.state_dict()["init_conv.0.weight"], imported[0].unet.state_dict()["init_conv.0.weight"]
    )


def test_vae_raw_weights_are_taken_when_asked(imported):
    raw, info = import_reference(LDM, VAE, weights="raw")
    assert info["vae_weights"] == "raw"
    assert not torch.equal(
        raw.vae.state_dict()["encoder.conv_in.weight"], imported[0].vae.state_dict()["encoder.conv_in.weight"]
    )


def test_swin_head_is_kept_on_request():
    model, _ = import_reference(LDM, VAE, keep_classifier=True)
    assert model.cfg.swin.keep_classifier and "unet.cond_backbone.head.weight" in model.state_dict()


def test_cli_writes_a_bundle_that_loads_and_computes_the_same(imported, reference, tmp_path, capsys):
    out = tmp_path / "radiodiff.safetensors"
    config = tmp_path / "radio_train.yaml"
    config.write_text(yaml.safe_dump(reference_yaml()))
    assert (
        import_main(
            ["radiodiff", "--ldm", str(LDM), "--vae", str(VAE), "--config", str(config), "--out", str(out)]
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    bundle, info = load_model(out)
    inputs, outputs = reference
    with torch.no_grad():
        c_pred = bundle.unet(inputs["x"], torch.full((2,), 0.5), inputs["cond"])[0]
    assert relative(c_pred, outputs["unet_c_1"]) < 1e-5
    assert info["weights"] == "raw" and bundle.cfg.diffusion.schedule_dtype == "float64"
    assert import_main(["radiodiff", "--ldm", str(LDM), "--out", str(out)]) == 2  # exists, no --force
    assert "exists" in capsys.readouterr().err


def reference_yaml(dim: int = 8) -> dict:
    """The model section of a reference YAML for the fixture's model."""
    windows = [[8, 8], [4, 4], [2, 2], [1, 1]]
    return {
        "model": {
            "objective": "pred_KC",
            "first_stage": {"embed_dim": 3, "ddconfig": {"ch": 32, "ch_mult": [1, 1, 1], "z_channels": 3}},
            "unet": {
                "dim": dim,
                "dim_mults": [1, 2, 4, 4],
                "channels": 3,
                "cond_net": "swin",
                "window_sizes1": windows,
                "window_sizes2": windows,
                "fourier_scale": 16,
            },
        }
    }


def _bad_files(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (extra arguments, expected words of the message)."""
    stored = torch.load(LDM, weights_only=True)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(LDM.read_bytes()[: LDM.stat().st_size // 2])
    missing = tmp_path / "missing.pt"
    torch.save(
        {"model": {k: v for k, v in stored["model"].items() if k != "model.final_conv2.weight"}}, missing
    )
    misshaped = tmp_path / "misshaped.pt"
    model = dict(stored["model"])
    model["model.final_conv.bias"] = torch.zeros(4)
    torch.save({"model": model}, misshaped)
    stray = tmp_path / "stray.pt"
    torch.save({"model": {**stored["model"], "model.extra_layer.weight": torch.zeros(1)}}, stray)
    with_code = tmp_path / "with-code.pt"
    with_code.write_bytes(pickle.dumps({"model": stored["model"], "hook": Path("x")}))
    wrong_config = tmp_path / "wrong.yaml"
    wrong_config.write_text(yaml.safe_dump(reference_yaml(dim=16)))
    return {
        "truncated": (["--ldm", str(truncated)], "not a readable PyTorch checkpoint"),
        "missing tensor": (["--ldm", str(missing)], "final_conv"),
        "misshaped tensor": (["--ldm", str(misshaped)], "unet.c_decoder.final_conv.bias"),
        "stray tensor": (["--ldm", str(stray)], "model.extra_layer.weight"),
        "code in the pickle": (["--ldm", str(with_code)], "weights_only=False"),
        "wrong config": (["--ldm", str(LDM), "--config", str(wrong_config)], "model.unet.dim is 16"),
        "vae file as ldm": (["--ldm", str(VAE)], "is it a VAE checkpoint"),
        "no file": (["--ldm", str(tmp_path / "nothing.pt")], "no such file"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "truncated",
        "missing tensor",
        "misshaped tensor",
        "stray tensor",
        "code in the pickle",
        "wrong config",
        "vae file as ldm",
        "no file",
    ],
)
def test_bad_checkpoints_exit_2_naming_the_problem_and_write_nothing(case, tmp_path, capsys):
    arguments, words = _bad_files(tmp_path)[case]
    out = tmp_path / "out.safetensors"
    assert import_main(["radiodiff", *arguments, "--out", str(out)]) == 2
    message = capsys.readouterr().err
    assert words in message and message.startswith("irt4-import: error:")
    assert not out.exists() and not list(tmp_path.glob("out.safetensors*"))


@pytest.mark.parametrize(
    "reference_key, irt4_key",
    [
        ("init_conv_mask.first_coonv.0.weight", "unet.cond_backbone.patch_conv.weight"),
        ("init_conv_mask.features.4.1.mlp.3.bias", "unet.cond_backbone.stages.2.1.mlp.2.bias"),
        ("init_conv_mask.features.5.reduction.weight", "unet.cond_backbone.merges.2.reduction.weight"),
        ("init_conv_mask.features.0.0.attn.relative_position_index", None),
        ("init_conv_mask.head.weight", None),
        ("time_mlp.0.W", "unet.time_embedding.frequencies"),
        ("downs.1.0.mlp.1.weight", "unet.down_levels.1.block1.time_proj.weight"),
        ("downs.2.2.fn.fn.to_qkv.weight", "unet.down_levels.2.attn.fn.to_qkv.weight"),
        ("downs.2.2.fn.norm.g", "unet.down_levels.2.attn.norm.g"),
        ("downs.0.3.weight", "unet.down_levels.0.downsample.weight"),
        ("ups2.1.3.1.bias", "unet.noise_decoder.levels.1.upsample.1.bias"),
        (
            "relation_layers_up.2.input_conv1.1.running_var",
            "unet.c_decoder.levels.2.relation.cond_proj.1.running_var",
        ),
        (
            "relation_layers_down.0.attentions.0.mlp.fc2.weight",
            "unet.down_levels.0.relation.layers.0.mlp.3.weight",
        ),
        (
            "relation_layers_up2.3.attentions.0.gn.bias",
            "unet.noise_decoder.levels.3.relation.layers.0.norm.bias",
        ),
        ("mid_attn.fn.fn.to_out.weight", "unet.mid_attn.fn.to_out.weight"),
        ("decouple2.2.complex_weight", "unet.decouple_noise.2.complex_weight"),
        ("final_res_block2.mlp.1.bias", "unet.noise_decoder.final_block.time_proj.bias"),
        ("init_conv_carK.weight", "unet.cond_adapter.weight"),
        ("projects.3.bias", "unet.cond_projections.3.bias"),
    ],
)
def test_reference_unet_keys_are_renamed_by_their_structure(reference_key, irt4_key):
    assert reference_unet_key(reference_key) == irt4_key


def test_float32_schedule_accumulates_as_the_reference_does():
    t_last64, s_last64 = sampling_schedule(50)[-1]
    t_last32, s_last32 = sampling_schedule(50, dtype="float32")[-1]
    assert t_last64 == pytest.approx(1e-4, rel=1e-9) and s_last64 == t_last64
    assert t_last32 == pytest.approx(1.00387e-4, rel=1e-5) and s_last32 == t_last32  # spec: the reference's t
    assert [t for t, _ in sampling_schedule(3, dtype="float32")][:2] == pytest.approx([1.0, 2 / 3], rel=1e-7)
    with pytest.raises(ValueError, match="schedule dtype"):
        sampling_schedule(3, dtype="float16")


def test_import_reference_refuses_an_ema_entry_without_weights(tmp_path):
    stored = torch.load(VAE, weights_only=True)
    broken = tmp_path / "vae.pt"
    torch.save({**stored, "ema": {"initted": torch.tensor(True)}}, broken)
    with pytest.raises(InputError, match="no ema_model weights"):
        import_reference(LDM, broken)
