"""One typed configuration for the whole pipeline, loaded from YAML.

Every number of the spec is a field here (never a constant in code). Presets live in
`irt4/configs/*.yaml`; `load_config("small")` finds a preset by name, any other string is a path.
Unknown keys and wrong types are errors that name the key (`ConfigError`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from irt4.errors import ConfigError

PRESET_DIR = Path(__file__).parent / "configs"


@dataclass
class VAEConfig:
    """First-stage KL autoencoder (spec: "First stage"). Field names are AutoencoderKL's arguments."""

    in_channels: int = 1
    out_channels: int = 1
    base_channels: int = 128
    channel_mults: tuple[int, ...] = (1, 2, 4)  # len - 1 downsamplings: 320 -> 80
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = ()
    z_channels: int = 3
    embed_dim: int = 3
    double_z: bool = True
    dropout: float = 0.0
    resolution: int = 320


@dataclass
class VAELossConfig:
    kl_weight: float = 1e-6
    perceptual_weight: float = 0.0  # LPIPS needs downloaded weights: off unless a user supplies them
    disc_start: int = 50001
    disc_weight: float = 0.5
    disc_in_channels: int = 1


@dataclass
class SwinConfig:
    """Swin conditioning backbone (torchvision swin_b layout in the reference)."""

    # the condition's channels: Config.validate() sets it (len(data.condition), + 1 with a prior)
    in_channels: int = 3
    patch_size: int = 4
    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 7
    mlp_ratio: float = 4.0
    stochastic_depth: float = 0.5
    keep_classifier: bool = False  # the reference builds an ImageNet head it never uses


@dataclass
class UNetConfig:
    """Conditional UNet with RelationNet conditioning and two decoders (C and noise)."""

    dim: int = 128
    dim_mults: tuple[int, ...] = (1, 2, 4, 4)
    channels: int = 3  # latent channels
    resnet_groups: int = 8
    fourier_features: int = 64  # frozen Gaussian frequencies of the time embedding
    fourier_scale: float = 16.0
    window_sizes1: tuple[int, ...] = (8, 4, 2, 1)  # RelationNet query pooling per level
    window_sizes2: tuple[int, ...] = (8, 4, 2, 1)  # RelationNet key/value pooling per level
    relation_heads: int = 8
    relation_dropout: float = 0.1
    attn_heads: int = 4
    attn_dim_head: int = 32
    # A 1x1 conv that maps a condition with this many channels (the cars variants: 5) to the
    # backbone's 3; the reference always builds it. 0 = not built.
    cond_adapter_channels: int = 5


@dataclass
class DiffusionConfig:
    """Decoupled diffusion, continuous t in (0, 1] (spec: "Decoupled diffusion")."""

    objective: str = "pred_KC"
    timesteps: int = 1000  # labels the continuous schedule only
    sampling_steps: int = 50
    eps: float = 1e-4
    denoise: bool = True  # split the last step into (1/N - eps) and eps
    loss_type: str = "l2"
    use_l1: bool = True
    weighting_loss: bool = True
    weight_clamp: float = 100.0
    loss_clamp: float = 1000.0
    scale_factor: float = 0.3  # initial value; replaced by 1/std(z) on the first batch
    scale_by_std: bool = True
    # training timesteps t = eps + (1 - eps) u^(1/t_power), u ~ U(0, 1): 1 is the reference's uniform t;
    # above 1 more steps land near t = 1, where x_t is noise and the network must predict the map from
    # the condition alone (the part a short run learns last; irt4/assets/README.md, phase 4)
    t_power: float = 1.0
    # "regressor": the UNet also reads a frozen RadioUNet-style regressor's prediction (built from the
    # `baseline` section, weights from `irt4-train ldm --prior`) as one more condition channel, so the
    # diffusion model starts from what the regressor knows of the mean; "none": the reference
    prior: str = "none"
    # with prior "regressor": diffuse the residual over the regressor, in latent space (the design of
    # CorrDiff, arXiv 2309.15214, regression for the mean and diffusion for what it misses): the target
    # is z(map) - z(regressor's map), z the VAE posterior mean, and a sample decodes z(regressor's map)
    # + the sampled residual. false: the diffusion model reads the prior as a channel only
    residual: bool = False
    # the sampler's time walk: "float64", or "float32" to reproduce the reference code's float32
    # accumulation call for call (irt4.diffusion.schedule.sampling_schedule; C++ engines walk in float64)
    schedule_dtype: str = "float64"


# the condition's third channel (DataConfig.tx_field; irt4.data.condition draws them)
TX_FIELDS = ("none", "log_distance")
# the channels a condition can name (DataConfig.condition; irt4.data.channels computes them)
CONDITION_CHANNELS = (
    "buildings",
    "transmitter",
    "log_distance",
    "los",
    "free_space",
    "walls",
    "building_metres",
)
REFERENCE_CONDITION = ("buildings", "transmitter", "buildings")
DIFFUSION_PRIORS = ("none", "regressor")  # DiffusionConfig.prior


@dataclass
class DataConfig:
    simulation: str = "IRT4"
    split: str = "auto"  # radiounet on RadioMapSeer (maps 1..700), a seeded split by map otherwise
    num_workers: int = 2
    # the training split's items (before augmentation) are read once and held in memory when they fit
    # in this many GB (irt4.train.data.in_memory); 0 reads every item from disk each time
    memory_cache_gb: float = 2.0
    target_divisor: float = 255.0  # the reference IRT4 loader used 256
    gain_db_range: tuple[float, float] = (-147.0, -47.0)
    # training-set augmentation: "none", or "dihedral" = every sample in its 8 flips/90-degree
    # rotations (buildings, transmitter and gain map together; irt4.train.augment)
    augment: str = "none"
    # the model's condition: named channels (irt4.data.channels), as many as the Swin patch embedding
    # and the regressor's first layer read (validate() sets swin.in_channels to match); the reference
    # presets keep [buildings, transmitter, buildings]; the cars simulations put the cars map third
    condition: tuple[str, ...] = REFERENCE_CONDITION
    # legacy (bundles made before data.condition): "log_distance" = the condition
    # [buildings, transmitter, log_distance]; validate() moves it into `condition` and resets it to "none"
    tx_field: str = "none"


@dataclass
class BaselineConfig:
    """The RadioUNet-style one-pass regressor (irt4.baseline): a conv UNet, `dim * dim_mults[i]`
    channels at level i, `convs_per_level` 3x3 convs per block; it trains with the `trainer` recipe."""

    dim: int = 32
    dim_mults: tuple[int, ...] = (1, 2, 4, 8, 8)
    convs_per_level: int = 2
    groups: int = 8  # GroupNorm groups


@dataclass
class TrainerConfig:
    batch_size: int = 32
    lr: float = 5e-5
    min_lr: float = 5e-6
    lr_schedule: str = "cosine_restarts"  # or "poly_reference"
    restart_period: int = 10000
    weight_decay: float = 1e-4
    train_num_steps: int = 50000
    gradient_accumulate_every: int = 1
    ema_beta: float = 0.999
    ema_update_after_step: int = 10000
    ema_update_every: int = 10
    save_every: int = 1000
    log_every: int = 500
    precision: str = "fp32"  # the recipe; irt4-train records here what it ran with
    warmup_steps: int = 0  # linear warm-up before the schedule (the reference has none)
    keep_checkpoints: int = 3  # ckpt-*.pt files kept in a run folder (the newest ones)
    nan_policy: str = "skip"  # non-finite loss: "skip" the batch or "stop" with the last good state
    seed: int = 0
    sample_maps: int = 4  # maps in the sample grid written at each checkpoint


@dataclass
class Config:
    name: str = "irt4-radiodiff"
    image_size: int = 320  # model resolution; maps on disk are 256 and are resized on load
    kernels: str = "torch"  # "triton" on GPUs once the kernels land
    vae: VAEConfig = field(default_factory=VAEConfig)
    vae_loss: VAELossConfig = field(default_factory=VAELossConfig)
    swin: SwinConfig = field(default_factory=SwinConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    vae_trainer: TrainerConfig = field(default_factory=TrainerConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.vae.channel_mults) - 1)

    def validate(self) -> None:
        """Cross-field checks, each naming the fields involved."""
        down = 2 ** (len(self.vae.channel_mults) - 1)
        if self.image_size % down:
            raise ConfigError(
                f"image_size {self.image_size} is not divisible by the VAE's downsampling {down}"
            )
        levels = len(self.unet.dim_mults)
        mid_down = 2 ** (levels - 1)
        if self.latent_size % mid_down:
            raise ConfigError(
                f"latent size {self.latent_size} (image_size / {down}) is not divisible by {mid_down}, "
                f"the UNet's downsampling for {levels} dim_mults"
            )
        for key in ("window_sizes1", "window_sizes2"):
            if len(getattr(self.unet, key)) != levels:
                raise ConfigError(
                    f"unet.{key} needs one window per level ({levels}), got {getattr(self.unet, key)}"
                )
        if len(self.swin.depths) != levels or len(self.swin.num_heads) != levels:
            raise ConfigError(f"swin.depths and swin.num_heads need {levels} stages to match unet.dim_mults")
        if self.diffusion.objective != "pred_KC":
            raise ConfigError(
                f"diffusion.objective: only 'pred_KC' is implemented, got {self.diffusion.objective!r}"
            )
        if self.diffusion.schedule_dtype not in ("float64", "float32"):
            raise ConfigError(
                "diffusion.schedule_dtype must be 'float64' or 'float32', "
                f"got {self.diffusion.schedule_dtype!r}"
            )
        if self.diffusion.loss_type not in ("l1", "l2"):
            raise ConfigError(f"diffusion.loss_type must be 'l1' or 'l2', got {self.diffusion.loss_type!r}")
        if self.data.augment not in ("none", "dihedral"):
            raise ConfigError(f"data.augment must be 'none' or 'dihedral', got {self.data.augment!r}")
        self._validate_condition()
        baseline_down = 2 ** (len(self.baseline.dim_mults) - 1)
        if self.image_size % baseline_down:
            raise ConfigError(
                f"image_size {self.image_size} is not divisible by {baseline_down}, the baseline's "
                f"downsampling for {len(self.baseline.dim_mults)} baseline.dim_mults"
            )
        if any(self.baseline.dim * m % self.baseline.groups for m in self.baseline.dim_mults):
            raise ConfigError(
                "baseline.dim * every baseline.dim_mults entry must be divisible by baseline.groups"
            )
        if self.kernels not in ("torch", "triton"):
            raise ConfigError(f"kernels must be 'torch' or 'triton', got {self.kernels!r}")
        if not 0.0 < self.diffusion.eps < 1.0 / self.diffusion.sampling_steps:
            raise ConfigError("diffusion.eps must lie in (0, 1/diffusion.sampling_steps)")
        if not self.diffusion.t_power > 0:
            raise ConfigError(f"diffusion.t_power must be positive, got {self.diffusion.t_power}")
        for key in ("trainer", "vae_trainer"):
            trainer = getattr(self, key)
            if trainer.precision not in ("fp32", "bf16", "fp16"):
                raise ConfigError(f"{key}.precision must be fp32, bf16 or fp16")
            if trainer.lr_schedule not in ("cosine_restarts", "poly_reference"):
                raise ConfigError(f"{key}.lr_schedule must be cosine_restarts or poly_reference")
            if trainer.nan_policy not in ("skip", "stop"):
                raise ConfigError(f"{key}.nan_policy must be skip or stop, got {trainer.nan_policy!r}")
            positive = ("batch_size", "gradient_accumulate_every", "restart_period", "save_every")
            for name in (*positive, "keep_checkpoints", "log_every", "ema_update_every"):
                if getattr(trainer, name) < 1:
                    raise ConfigError(f"{key}.{name} must be at least 1")

    def _validate_condition(self) -> None:
        """data.condition's names; the legacy data.tx_field moved into it; swin.in_channels to match."""
        data = self.data
        if data.tx_field not in TX_FIELDS:
            raise ConfigError(f"data.tx_field must be one of {list(TX_FIELDS)}, got {data.tx_field!r}")
        if data.tx_field != "none":
            if data.condition != REFERENCE_CONDITION:
                raise ConfigError(
                    "data.tx_field is the legacy form of data.condition: set data.condition alone, e.g. "
                    "[buildings, transmitter, log_distance]"
                )
            data.condition = (*REFERENCE_CONDITION[:2], data.tx_field)
            data.tx_field = "none"
        if not data.condition:
            raise ConfigError(
                "data.condition is empty: name at least one of " + ", ".join(CONDITION_CHANNELS)
            )
        unknown = [name for name in data.condition if name not in CONDITION_CHANNELS]
        if unknown:
            raise ConfigError(
                f"data.condition: unknown channel(s) {unknown}; known: {', '.join(CONDITION_CHANNELS)}"
            )
        if data.simulation.startswith("cars") and data.condition != REFERENCE_CONDITION:
            raise ConfigError(
                f"data.simulation {data.simulation} puts the cars map third: data.condition must stay "
                f"{list(REFERENCE_CONDITION)}"
            )
        if self.diffusion.prior not in DIFFUSION_PRIORS:
            raise ConfigError(
                f"diffusion.prior must be one of {list(DIFFUSION_PRIORS)}, got {self.diffusion.prior!r}"
            )
        if self.diffusion.residual and self.diffusion.prior != "regressor":
            raise ConfigError(
                "diffusion.residual is the residual over a regressor's prediction: it needs "
                "diffusion.prior=regressor"
            )
        self.swin.in_channels = len(data.condition) + (self.diffusion.prior == "regressor")


def _convert(value: Any, annotation: Any, key: str) -> Any:
    """Check `value` against a field annotation and convert lists to tuples; errors name `key`."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return _from_dict(annotation, value, key + ".")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(annotation)
        item_types = [args[0]] * len(value) if (len(args) == 2 and args[1] is Ellipsis) else list(args)
        if len(item_types) != len(value):
            raise ConfigError(f"{key}: expected {len(item_types)} items, got {len(value)}")
        return tuple(_convert(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, item_types)))
    if origin in (typing.Union, types.UnionType):
        raise AssertionError(f"unions are not used in the config ({key})")
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise AssertionError(f"unsupported annotation {annotation!r} for {key}")


def _from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]!s} (known: {', '.join(sorted(names))})")
    kwargs = {name: _convert(value, hints[name], prefix + name) for name, value in data.items()}
    return cls(**kwargs)


def config_from_dict(data: dict) -> Config:
    cfg = _from_dict(Config, data)
    cfg.validate()
    return cfg


def config_to_dict(cfg: Config) -> dict:
    """Plain dict (tuples as lists) that `config_from_dict` reads back to an equal config."""

    def plain(value: Any) -> Any:
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(cfg))


def _set_path(data: dict, dotted_key: str, value: Any) -> None:
    parts = dotted_key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            raise ConfigError(f"unknown config key {dotted_key} (no section {part!r})")
        node = child
    if parts[-1] not in node:
        raise ConfigError(f"unknown config key {dotted_key}")
    node[parts[-1]] = value


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply `section.key=value` strings (values parsed as YAML) and re-validate."""
    data = config_to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        _set_path(data, key.strip(), yaml.safe_load(raw))
    return config_from_dict(data)


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if not preset.is_file():
        raise ConfigError(
            f"no config file or preset named {name_or_path!r} (presets: {', '.join(preset_names())})"
        )
    return preset


def load_config(name_or_path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load a preset by name or a YAML file by path; fields it leaves out keep their defaults."""
    path = resolve_config_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        cfg = config_from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
    return apply_overrides(cfg, overrides or [])


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
