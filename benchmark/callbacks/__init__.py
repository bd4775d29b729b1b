"""Training callbacks: one per file, named after what it produces."""

from benchmark.callbacks.evaluation import Evaluation
from benchmark.callbacks.predictions import ImageWriter
from benchmark.callbacks.samples import SampleGrid
from benchmark.callbacks.throughput import Throughput

__all__ = ["Evaluation", "ImageWriter", "SampleGrid", "Throughput"]
