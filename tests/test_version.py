import tomllib
from pathlib import Path

import irt4

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_package_version_matches_pyproject():
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["version"]
    assert irt4.__version__ == declared
