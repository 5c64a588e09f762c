import argparse
import re

import pytest
from PIL import Image
from test_radiomapseer import corrupt_middle, write_root

from irt4.cli.data import build_parser, main


def test_show_writes_a_png(tmp_path, capsys):
    write_root(tmp_path / "root", map_ids=(7,))
    out = tmp_path / "out" / "7_1.png"
    assert main(["show", str(tmp_path / "root"), "--map", "7", "--tx", "1", "-o", str(out)]) == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > image.size[1] > 200
    assert f"wrote {out}" in capsys.readouterr().out


def test_show_of_a_missing_transmitter_exits_2_naming_it(tmp_path, capsys):
    write_root(tmp_path, map_ids=(7,))
    assert main(["show", str(tmp_path), "--map", "7", "--tx", "5", "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "map 7 has no transmitter 5" in err and err.count("\n") == 1


def test_check_prints_counts_on_a_good_root(tmp_path, capsys):
    write_root(tmp_path, map_ids=(1, 2, 3))
    assert main(["check", str(tmp_path)]) == 0
    assert "3 maps, 6 samples decoded OK, 0 bad samples skipped" in capsys.readouterr().out


def test_check_decodes_every_file_and_exits_2_with_one_line_naming_the_bad_one(tmp_path, capsys):
    write_root(tmp_path, map_ids=(1, 2, 3))
    bad = tmp_path / "gain" / "IRT4" / "2_1.png"
    corrupt_middle(bad)  # only a full decode sees it
    assert main(["check", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("irt4-data: error: ") and f"{bad}: unreadable" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_check_skip_bad_counts_the_bad_samples(tmp_path, capsys):
    write_root(tmp_path, map_ids=(1, 2, 3))
    bad = tmp_path / "gain" / "IRT4" / "2_1.png"
    bad.write_bytes(bad.read_bytes()[:100])
    assert main(["check", str(tmp_path), "--skip-bad"]) == 0
    assert "5 samples decoded OK, 1 bad samples skipped" in capsys.readouterr().out


@pytest.mark.parametrize(
    "command, options",
    [
        ([], ["show", "check", "synth"]),
        (["show"], ["--map", "--tx", "--simulation", "--gain-db-range", "--output", "--building-value"]),
        (["check"], ["--simulation", "--split", "--split-scheme", "--skip-bad", "--building-value"]),
        (["synth"], []),
    ],
)
def test_help_explains_each_subcommand(command, options, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: irt4-data")
    assert all(re.search(rf"{option}\b(?!-)", out) for option in options)


@pytest.mark.parametrize("command", ["show", "check"])
def test_every_option_has_a_help_text(command):
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for action in subparsers.choices[command]._actions:
        assert action.help and action.help != argparse.SUPPRESS, action.dest
