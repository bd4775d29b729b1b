"""Training callbacks: one per file, named after what it produces."""

from benchmark.callbacks.predictions import ImageWriter
from benchmark.callbacks.samples import SampleGrid

__all__ = ["ImageWriter", "SampleGrid"]
