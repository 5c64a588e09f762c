"""`irt4-data`: look at, check and generate RadioMapSeer-layout data.

  irt4-data show ROOT --map M --tx K -o sample.png   buildings + transmitter beside the radio map in dB
  irt4-data check ROOT [--simulation S] [--skip-bad]  decode every file of a root, print counts
  irt4-data synth ...                                 ray-traced data generator (irt4.data.synth)
  irt4-data merge SHARD... --out ROOT                 join the roots of `synth --shard I/N` runs
  irt4-data pack ROOT / unpack ROOT                   store a generated root's gains compactly, or
                                                      back as PNG + raw .npy (irt4.data.gainpack)

Bad data (InputError) prints one line on stderr and exits with code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from irt4.config import DataConfig
from irt4.data.radiomapseer import SIMULATIONS, RadioMapSeer
from irt4.data.splits import SCHEMES, SPLITS
from irt4.errors import InputError

PROG = "irt4-data"


def show(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dataset = RadioMapSeer(
        args.root,
        split="all",
        simulation=args.simulation,
        map_ids=[args.map_id],
        building_value=args.building_value,
    )
    if (args.map_id, args.tx) not in dataset.samples:
        have = sorted(k for m, k in dataset.samples)
        raise InputError(f"{dataset.gain_dir}: map {args.map_id} has no transmitter {args.tx} (has {have})")
    item = dataset[dataset.samples.index((args.map_id, args.tx))]
    row, col = item["tx_rowcol"].tolist()
    buildings = (item["cond"][0].numpy() + 1) / 2  # 1 = building, whatever the root's polarity
    lo, hi = args.gain_db_range
    gain_db = lo + (hi - lo) * item["gain"][0].numpy()  # spec: dB = lo + (hi - lo) p / 255

    figure, (ax_city, ax_radio) = plt.subplots(1, 2, figsize=(11, 4.8), constrained_layout=True)
    ax_city.imshow(buildings, cmap="Greys", vmin=0, vmax=1.5)
    ax_city.set_title("buildings (dark) and transmitter")
    radio = ax_radio.imshow(gain_db, cmap="viridis", vmin=lo, vmax=hi)
    ax_radio.set_title(f"{args.simulation} radio map")
    for ax in (ax_city, ax_radio):
        ax.plot(col, row, marker="*", color="red", markersize=14, markeredgecolor="white")
        ax.set_xlabel("col (m)")
        ax.set_ylabel("row (m)")
    figure.colorbar(radio, ax=ax_radio, label=f"path gain (dB; grey 0 = {lo:g} and weaker)")
    figure.suptitle(f"map {args.map_id}, transmitter {args.tx} at (row {row}, col {col}) - {args.root}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output, dpi=100)
    plt.close(figure)
    print(f"wrote {args.output}")
    return 0


def check(args: argparse.Namespace) -> int:
    dataset = RadioMapSeer(
        args.root,
        split=args.split,
        split_scheme=args.split_scheme,
        simulation=args.simulation,
        skip_bad=args.skip_bad,
        building_value=args.building_value,
    )
    dataset.validate(full=True)
    maps = len({m for m, _ in dataset.samples})
    print(
        f"{args.root}: {args.simulation}, split {args.split} ({dataset.split_scheme}): {maps} maps, "
        f"{len(dataset)} samples decoded OK, {dataset.skipped} bad samples skipped"
    )
    return 0


def merge(args: argparse.Namespace) -> int:
    from irt4.data import synth

    missing = [str(source) for source in args.sources if not source.is_dir()]
    if missing:
        raise InputError(f"no such folder: {', '.join(missing)}")
    report = synth.merge_roots(args.sources, args.out)
    print(
        f"{args.out}: {report['copied']} maps copied, {report['already_there']} already there, "
        f"{report['maps']} maps in all; check it with `irt4-data check {args.out}`"
    )
    return 0


def convert(args: argparse.Namespace) -> int:
    from irt4.data.gainpack import convert_root

    if not args.root.is_dir():
        raise InputError(f"{args.root}: no such folder")
    report = convert_root(args.root, pack=args.command == "pack", progress=not args.no_progress)
    done = "packed" if args.command == "pack" else "unpacked"
    print(
        f"{args.root}: {report['samples_converted']} samples {done}, {report['maps']} finished maps in all; "
        f"check it with `irt4-data check {args.root}`"
    )
    return 0


def add_synth(subparsers: argparse._SubParsersAction) -> None:
    """Wire `synth` to irt4.data.synth, which imports nothing heavy at module level (Sionna only
    inside its functions), so building this parser stays cheap."""
    from irt4.data import synth

    summary = (synth.__doc__ or "ray-traced data generator").strip().splitlines()[0]
    parser = subparsers.add_parser("synth", help=summary, description=synth.__doc__)
    synth.add_arguments(parser)
    parser.set_defaults(func=synth.run)


def add_root_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", type=Path, help="a folder in the RadioMapSeer layout (png/, gain/, antenna/)")
    parser.add_argument(
        "--simulation",
        choices=SIMULATIONS,
        default=DataConfig().simulation,
        help="which gain/ subfolder to read (default: %(default)s)",
    )
    parser.add_argument(
        "--building-value",
        type=int,
        choices=(255, 0),
        default=255,
        help="pixel value of buildings in png/buildings_complete; verified against the gain maps "
        "(default: %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Look at, check and generate radio-map data in the RadioMapSeer layout.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    show_parser = subparsers.add_parser(
        "show",
        help="plot one sample: buildings + transmitter beside the radio map in dB",
        description="Plot one sample: the buildings with the transmitter marked, beside the radio map in "
        "dB with a colorbar (grey p -> dB = LO + (HI - LO) p / 255).",
    )
    add_root_options(show_parser)
    show_parser.add_argument("--map", type=int, required=True, dest="map_id", help="map id m")
    show_parser.add_argument("--tx", type=int, required=True, help="transmitter index k of that map")
    show_parser.add_argument(
        "--gain-db-range",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        default=DataConfig().gain_db_range,
        help="dB of grey 0 and grey 255 (default: %(default)s, see radiomapseer.md)",
    )
    show_parser.add_argument("-o", "--output", type=Path, required=True, help="the PNG to write")
    show_parser.set_defaults(func=show)

    check_parser = subparsers.add_parser(
        "check",
        help="decode every file of a root and print counts; exit 2 on bad data",
        description="Validate a root fully: folders, every PNG decoded (256x256, 8-bit grey, complete), "
        "transmitter pixels, building polarity. Prints map and sample counts; bad data exits 2 with a "
        "message naming the file, unless --skip-bad.",
    )
    add_root_options(check_parser)
    check_parser.add_argument(
        "--split", choices=SPLITS, default="all", help="which split's samples to check (default: %(default)s)"
    )
    check_parser.add_argument(
        "--split-scheme",
        choices=SCHEMES,
        default="auto",
        help="radiounet | radiodiff (RadioMapSeer's fixed splits), generated (seeded split by map), "
        "auto (radiounet on a root with maps 1..700, else generated; default)",
    )
    check_parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="log each bad sample as a warning and count it instead of stopping at the first",
    )
    check_parser.set_defaults(func=check)

    add_synth(subparsers)
    merge_parser = subparsers.add_parser(
        "merge",
        help="join the roots of `irt4-data synth --shard I/N` runs into one root",
        description="Copy the finished maps of shard roots (made by `irt4-data synth --shard I/N` with the "
        "same seed and settings) into one root. Roots with other settings, or a map whose files differ "
        "between roots, exit 2 with a message. Then run `irt4-data check ROOT`.",
    )
    merge_parser.add_argument("sources", type=Path, nargs="+", metavar="SHARD", help="a shard root")
    merge_parser.add_argument("--out", type=Path, required=True, metavar="ROOT", help="the root to fill")
    merge_parser.set_defaults(func=merge)

    for name, summary, description in (
        (
            "pack",
            "store each sample of a generated root as one small .npz (raw gain + exact grey)",
            "Replace each finished sample's gain PNG and raw .npy of a root made by `irt4-data synth` "
            "with gain/IRT4/{m}_{k}.npz: the raw float16 gain and the difference between the PNG and "
            "the grey rendered from the raw, which gives back the PNG's exact pixels (about 5 kB against "
            "21 kB). Each sample is switched over only after its round trip is verified; resumable. The "
            "loader, `check` and `merge` read both forms; `unpack` restores the plain layout.",
        ),
        (
            "unpack",
            "write a packed root's samples back as gain PNGs and raw .npy files",
            "Write every packed sample (gain/IRT4/{m}_{k}.npz) back as gain/IRT4/{m}_{k}.png and "
            "gain_db/IRT4/{m}_{k}.npy, pixel for pixel and byte for byte as `irt4-data synth` wrote "
            "them, for tools that read the RadioMapSeer layout directly; resumable.",
        ),
    ):
        convert_parser = subparsers.add_parser(name, help=summary, description=description)
        convert_parser.add_argument("root", type=Path, help="a root written by `irt4-data synth`")
        convert_parser.add_argument("--no-progress", action="store_true", help="no progress bar")
        convert_parser.set_defaults(func=convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"{PROG}: %(levelname)s: %(message)s")
    try:
        return args.func(args)
    except InputError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
