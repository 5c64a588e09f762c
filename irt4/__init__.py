"""irt4: train and serve RadioDiff-style diffusion models for pathloss radio maps."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("irt4")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"


def __getattr__(name: str):
    # irt4.Engine, irt4.load and irt4.Model are imported on first use, so `import irt4` stays cheap
    if name == "Engine":
        from irt4.engine.runtime import Engine

        return Engine
    if name in ("load", "Model"):
        from irt4 import api

        return getattr(api, name)
    raise AttributeError(f"module 'irt4' has no attribute {name!r}")
