"""Does a diffusion model use the transmitter? Three measurements on the demo's held-out pairs
(tests/data/synth-irt4, two transmitters per map), as quoted in irt4/assets/README.md:

1. from the maps `python -m irt4.demo` wrote: for each model in DEMO_OUT, in how many pairs its map is
   closer (RMSE) to its own ray-traced truth than to the other transmitter's truth on the same map (a
   model that ignores the transmitter scores about half);
2. from the bundle: how much the UNet's first-step C prediction (t = 0.999, one fixed x_t) and the
   Swin condition features move when the transmitter moves, against another city, and per Swin stage
   how much the token that changes most changes (does the stage still carry the transmitter?);
3. from the bundle: the network's x0 estimate (reconstructed from its C and noise predictions) at
   t = 0.999, 0.7 and 0.4, as mean squared error against the true scaled latent, beside the error of
   the mean of the map's two transmitters' latents (what knowing the city but not the transmitter
   can reach). Near t = 1, x_t is noise and the estimate comes from the condition alone: it sets the
   sampler's course, and a model that learned the transmitter scores well below the city mean there.

    .venv/bin/python scripts/transmitter-sensitivity.py [BUNDLE] [DEMO_OUT]

BUNDLE `random:PRESET` (e.g. random:small) measures 2 on a freshly initialized network (seed 0) instead:
what training has done to the transmitter's path.
"""

import sys
from pathlib import Path

import numpy as np
import torch

from irt4.config import load_config
from irt4.data.pngio import read_grey
from irt4.data.radiomapseer import RadioMapSeer, model_inputs
from irt4.diffusion.ddm import q_sample, reconstruct_x0
from irt4.models.bundle import load_model
from irt4.models.radiodiff import RadioDiff

ROOT = Path("tests/data/synth-irt4")


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((b - a).norm() / a.norm()).item()


def closer_to_own_truth(demo_out: Path) -> None:
    truth = ROOT / "gain" / "IRT4"
    for model in sorted(p for p in demo_out.iterdir() if p.is_dir()):
        preds = sorted(model.glob("*_*.png"))
        closer = 0
        for pred_path in preds:
            map_id, tx = pred_path.stem.split("_")
            pred = read_grey(pred_path).astype(np.float64)
            own = read_grey(truth / pred_path.name).astype(np.float64)
            other = read_grey(truth / f"{map_id}_{1 - int(tx)}.png").astype(np.float64)
            closer += np.sqrt(((pred - own) ** 2).mean()) < np.sqrt(((pred - other) ** 2).mean())
        print(f"{model.name}: closer to its own transmitter's truth in {closer} of {len(preds)} pairs")


def held_out_pairs(model) -> dict[tuple[int, int], dict]:
    """The demo's pairs at the model's resolution, keyed by (map id, transmitter index)."""
    data = RadioMapSeer(ROOT, split="all", **model_inputs(model.cfg))
    return {(int(item["map_id"]), int(item["tx_index"])): item for item in data}


def most_changed_token(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest per-token change between two (1, C, H, W) feature maps, relative to the token's norm: a
    transmitter move touches a few tokens, so the overall change says little about whether a stage
    still carries it."""
    return ((a - b).norm(dim=1) / a.norm(dim=1)).max().item()


@torch.no_grad()
def network_sensitivity(bundle: Path, model, items: dict) -> None:
    conds = {key: item["cond"][None] for key, item in items.items()}
    maps = sorted({m for m, _ in conds})
    x = torch.randn(1, *model.latent_shape, generator=torch.Generator().manual_seed(0))
    t = torch.full((1,), 0.999)
    tx_moved, other_city, first_stage, deepest, token_change = [], [], [], [], []
    for i, m in enumerate(maps):
        here, moved, elsewhere = conds[(m, 0)], conds[(m, 1)], conds[(maps[(i + 1) % len(maps)], 0)]
        c_here = model.unet(x, t, here)[0]
        tx_moved.append(relative(c_here, model.unet(x, t, moved)[0]))
        other_city.append(relative(c_here, model.unet(x, t, elsewhere)[0]))
        f_here, f_moved = model.unet.encode_condition(here), model.unet.encode_condition(moved)
        first_stage.append(relative(f_here[0], f_moved[0]))
        deepest.append(relative(f_here[-1], f_moved[-1]))
        stages_here, stages_moved = model.unet.cond_backbone(here), model.unet.cond_backbone(moved)
        token_change.append([most_changed_token(a, b) for a, b in zip(stages_here, stages_moved)])
    print(
        f"{bundle}: first-step C prediction moves {100 * np.mean(tx_moved):.2f} % with the transmitter, "
        f"{100 * np.mean(other_city):.1f} % with another city; condition features: first stage "
        f"{100 * np.mean(first_stage):.2f} %, deepest {100 * np.mean(deepest):.3f} % "
        f"(means over {len(maps)} maps)"
    )
    by_stage = ", ".join(
        f"{100 * change:.1f} % at {side}x{side}"
        for change, side in zip(np.mean(token_change, axis=0), (f.shape[-1] for f in stages_here))
    )
    print(f"{bundle}: the Swin token that changes most when the transmitter moves changes by {by_stage}")


@torch.no_grad()
def x0_error_by_t(bundle: Path, model, items: dict, noises: int = 4) -> None:
    g = torch.Generator().manual_seed(0)
    latents = {
        key: model.vae.encode(item["image"][None]).mean * model.scale_factor for key, item in items.items()
    }
    city_mean = np.mean(
        [((latents[(m, k)] - (latents[(m, 0)] + latents[(m, 1)]) / 2) ** 2).mean().item() for m, k in items]
    )
    parts = []
    for t_value in (0.999, 0.7, 0.4):
        t = torch.full((noises,), t_value)
        errors = []
        for key, item in items.items():
            z = latents[key]
            x_t = q_sample(z, t, torch.randn(noises, *z.shape[1:], generator=g))
            c, noise = model.unet(x_t, t, item["cond"][None].expand(noises, -1, -1, -1))
            errors.append(((reconstruct_x0(x_t, t, c, noise) - z) ** 2).mean().item())
        parts.append(f"t = {t_value}: {np.mean(errors):.3f}")
    print(
        f"{bundle}: x0 estimate's squared error, {', '.join(parts)}; the city mean of the two "
        f"transmitters scores {city_mean:.3f}"
    )


if __name__ == "__main__":
    bundle = Path(sys.argv[1] if len(sys.argv) > 1 else "irt4/assets/default-small.safetensors")
    demo_out = Path(sys.argv[2] if len(sys.argv) > 2 else "demo-out")
    if demo_out.is_dir():
        closer_to_own_truth(demo_out)
    if str(bundle).startswith("random:"):
        torch.manual_seed(0)
        model = RadioDiff(load_config(str(bundle).removeprefix("random:"))).eval()
        network_sensitivity(bundle, model, held_out_pairs(model))
        sys.exit()
    model, _ = load_model(bundle)
    items = held_out_pairs(model)
    network_sensitivity(bundle, model, items)
    x0_error_by_t(bundle, model, items)
