import pytest

from irt4.config import (
    Config,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    preset_names,
    save_config,
)
from irt4.errors import ConfigError


def test_every_preset_loads_and_validates():
    assert {"irt4-radiodiff", "irt4-radiodiff-256", "small", "tiny"} <= set(preset_names())
    for name in preset_names():
        assert load_config(name).name == name


def test_reference_preset_has_the_spec_numbers():
    cfg = load_config("irt4-radiodiff")
    assert (cfg.image_size, cfg.latent_size) == (320, 80)
    assert cfg.vae.channel_mults == (1, 2, 4) and cfg.vae.base_channels == 128
    assert cfg.swin.depths == (2, 2, 18, 2) and cfg.swin.num_heads == (4, 8, 16, 32)
    assert cfg.unet.dim_mults == (1, 2, 4, 4) and cfg.unet.fourier_scale == 16.0
    t = cfg.trainer
    assert (t.batch_size, t.lr, t.min_lr, t.train_num_steps, t.weight_decay) == (32, 5e-5, 5e-6, 50000, 1e-4)
    assert (t.ema_beta, t.ema_update_after_step, t.ema_update_every) == (0.999, 10000, 10)
    d = cfg.diffusion
    assert (d.sampling_steps, d.eps, d.timesteps, d.scale_factor) == (50, 1e-4, 1000, 0.3)
    assert load_config("irt4-radiodiff-256").latent_size == 64


def test_unknown_key_is_an_error_naming_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nunet:\n  dimm: 3\n")
    with pytest.raises(ConfigError, match=r"unet\.dimm"):
        load_config(path)
    path.write_text("nmae: x\n")
    with pytest.raises(ConfigError, match="nmae"):
        load_config(path)


def test_wrong_type_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"unet\.dim: expected an integer"):
        config_from_dict({"unet": {"dim": "wide"}})
    with pytest.raises(ConfigError, match=r"diffusion\.denoise: expected true or false"):
        config_from_dict({"diffusion": {"denoise": 1}})


def test_overrides_change_fields_and_reject_unknown_keys():
    cfg = apply_overrides(load_config("tiny"), ["trainer.lr=1e-4", "unet.window_sizes1=[2, 2, 1, 1]"])
    assert cfg.trainer.lr == 1e-4 and cfg.unet.window_sizes1 == (2, 2, 1, 1)
    with pytest.raises(ConfigError, match=r"trainer\.lrr"):
        apply_overrides(cfg, ["trainer.lrr=1"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(cfg, ["trainer.lr"])


def test_cross_field_validation_names_the_fields():
    with pytest.raises(ConfigError, match="window_sizes1"):
        config_from_dict({"unet": {"window_sizes1": [8, 4]}})
    with pytest.raises(ConfigError, match="image_size"):
        config_from_dict({"image_size": 322})
    with pytest.raises(ConfigError, match="data.tx_field"):
        config_from_dict({"data": {"tx_field": "dot"}})
    with pytest.raises(ConfigError, match="cars"):
        config_from_dict({"data": {"tx_field": "log_distance", "simulation": "carsIRT4"}})
    with pytest.raises(ConfigError, match=r"unknown channel.*'walls2'"):
        config_from_dict({"data": {"condition": ["buildings", "walls2"]}})
    with pytest.raises(ConfigError, match="empty"):
        config_from_dict({"data": {"condition": []}})
    with pytest.raises(ConfigError, match="legacy"):
        config_from_dict({"data": {"tx_field": "log_distance", "condition": ["buildings", "walls"]}})


def test_condition_list_sizes_the_swin_input_and_absorbs_the_legacy_tx_field():
    cfg = config_from_dict({"data": {"condition": ["buildings", "transmitter", "free_space", "walls"]}})
    assert cfg.swin.in_channels == 4
    assert config_from_dict({}).data.condition == ("buildings", "transmitter", "buildings")
    legacy = config_from_dict({"data": {"tx_field": "log_distance"}})
    assert legacy.data.condition == ("buildings", "transmitter", "log_distance")
    assert legacy.data.tx_field == "none" and legacy.swin.in_channels == 3
    assert config_from_dict(config_to_dict(legacy)) == legacy  # round-trips in its new form


def test_missing_preset_lists_the_presets():
    with pytest.raises(ConfigError, match="presets: .*tiny"):
        load_config("no-such-preset")


def test_save_then_load_round_trips(tmp_path):
    cfg = load_config("small")
    save_config(cfg, tmp_path / "cfg.yaml")
    assert load_config(tmp_path / "cfg.yaml") == cfg
    assert config_from_dict(config_to_dict(Config())) == Config()
