"""Lung segmentation entry point named in DESIGN.md; the code lives in benchmark.lungseg."""
from .lungseg import *  # noqa: F401,F403
from .lungseg import __all__  # noqa: F401
