"""Score diffusion models that have a regressor prior with other ways of turning samples into a map,
through `python -m bench.ablation` (same pairs, protocol and tables; its options pass through):

  --decode model   the model's own decoding (with --average: of the averaged latents)

  --decode delta   regressor's map + D(sample) - D(E(regressor's map)): the diffusion model's change to
                   the regressor's map, with the VAE's error on that map cancelled (E = posterior mean,
                   D = decoder); a zero change gives the regressor's map exactly
  --decode vae     D(E(regressor's map)) alone: the regressor seen through the VAE, what the residual
                   design (diffusion.residual) returns for a zero residual

  python scripts/prior-delta-decode.py --decode delta --model shipped=irt4/assets/default-small.safetensors \\
      --steps 3 --name ablation-delta

--average K samples each pair K times (the given noise, then K - 1 other draws) and decodes the mean
latents: how much of the error is the samples' spread around the model's own mean.

Neither is an option of the product: this measures whether they would be worth one
(irt4/assets/README.md, phase 7).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import ablation  # noqa: E402
from irt4.models.radiodiff import RadioDiff  # noqa: E402


def prior_map_01(model: RadioDiff, cond: torch.Tensor) -> torch.Tensor:
    """The frozen regressor's map in [0, 1] (B, 1, H, W)."""
    return (model.unet.prior_map(model.unet.adapt_condition(cond)).float() + 1) / 2


def install(decode: str) -> None:
    """Make RadioDiff's decoding (which irt4-infer's sampler calls after mean_latents(cond)) use `decode`."""
    mean_latents, decode_latents = RadioDiff.mean_latents, RadioDiff.decode_latents

    def remembering_mean_latents(self, cond):
        self._last_cond = cond  # decode_latents is called right after, for the same batch
        return mean_latents(self, cond)

    def prior_decode_latents(self, latents, mean=None):
        if self.unet.prior is None:
            raise SystemExit("prior-delta-decode: a model without a regressor prior (diffusion.prior)")
        prior = prior_map_01(self, self._last_cond)
        # E(regressor's map): a residual model's mean latents already are it
        prior_latents = mean if mean is not None else self.vae.encode(prior * 2 - 1).mean
        prior_seen = decode_latents(self, torch.zeros_like(latents), prior_latents)  # D(E(...)) in [0, 1]
        if decode == "vae":
            return prior_seen
        return (prior + decode_latents(self, latents, mean) - prior_seen).clamp(0.0, 1.0)

    RadioDiff.mean_latents = remembering_mean_latents
    RadioDiff.decode_latents = prior_decode_latents


def average_samples(count: int) -> None:
    """Make irt4-infer's sampler return the mean latents of `count` samples per pair."""
    from irt4 import infer
    from irt4.diffusion.sampler import SamplerNoise, sample_latents

    def averaged(*args, noise: SamplerNoise, **kwargs):
        generator = torch.Generator().manual_seed(12345)
        total = sample_latents(*args, noise=noise, **kwargs)
        for _ in range(count - 1):
            other = SamplerNoise(
                torch.randn(noise.initial.shape, generator=generator),
                torch.randn(noise.steps.shape, generator=generator),
            )
            total = total + sample_latents(*args, noise=other, **kwargs)
        return total / count

    infer.sample_latents = averaged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False
    )
    parser.add_argument("--decode", choices=["model", "delta", "vae"], default="model", help="see above")
    parser.add_argument("--average", type=int, default=1, metavar="K", help="see above (default: 1)")
    if {"-h", "--help"} & set(sys.argv[1:] if argv is None else argv):
        parser.print_help()
        print("\nThe other options are bench.ablation's:\n")
        return ablation.main(["--help"])
    args, rest = parser.parse_known_args(argv)
    if args.decode != "model":
        install(args.decode)
    if args.average > 1:
        average_samples(args.average)
    return ablation.main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
