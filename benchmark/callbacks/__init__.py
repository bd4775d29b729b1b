"""Training callbacks: one per file, named after what it produces."""

from benchmark.callbacks.predictions import ImageWriter
from benchmark.callbacks.progress import ProgressBar
from benchmark.callbacks.samples import SampleGrid

__all__ = ["ImageWriter", "ProgressBar", "SampleGrid"]
