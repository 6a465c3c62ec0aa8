"""minivl: InternVL 2.5 rebuilt from the ground up.

The package is the single source of truth of the book: every chapter imports from here.
See ``notebooks/00_introduction.ipynb`` for a map of chapters to modules.
"""

from importlib.metadata import PackageNotFoundError, version

from minivl.scale import SCALES, cache_dir, get_scale, pick, print_environment

try:
    __version__ = version("minivl")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["SCALES", "__version__", "cache_dir", "get_scale", "pick", "print_environment"]
