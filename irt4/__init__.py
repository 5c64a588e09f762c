"""irt4: train and serve RadioDiff-style diffusion models for pathloss radio maps."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("irt4")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
