"""The measuring tools, apart from the engine: `ldmbench perf` (ours against the reference implementations, side by
side) and the profile of a suite entry's end-to-end training step.

- :mod:`benchmark.perf.timing`: the timing primitives (matmul ceiling, peak memory, a training step, the
  interleaved loop, the profiler's time split);
- :mod:`benchmark.perf.impls`: our backbone and its reference at the same configuration;
- :mod:`benchmark.perf.command`: the measurement, its table and the ``ldmbench perf`` command line;
- :mod:`benchmark.perf.profile`: where a suite entry's training step goes (``profile_entry``).

Every name ``benchmark.perf`` had as one module is re-exported here, so its imports keep working.
"""

from benchmark.perf.command import hardware, main, measure, render, render_split
from benchmark.perf.impls import (
    MODELS,
    SDXL_CONTROLS,
    SIZE_DEFAULTS,
    UNET_SIZES,
    NotMeasured,
    build_impls,
    unet_kwargs,
)
from benchmark.perf.timing import (
    ATTENTION_MARKS,
    GEMM_OPS,
    SPLIT_BUCKETS,
    Impl,
    MatmulProbe,
    Trainer,
    matmul_ceiling,
    peak_memory,
    ratio_quartiles,
    time_interleaved,
    time_split,
)

__all__ = [
    "ATTENTION_MARKS",
    "GEMM_OPS",
    "MODELS",
    "SDXL_CONTROLS",
    "SIZE_DEFAULTS",
    "SPLIT_BUCKETS",
    "UNET_SIZES",
    "Impl",
    "MatmulProbe",
    "NotMeasured",
    "Trainer",
    "build_impls",
    "hardware",
    "main",
    "matmul_ceiling",
    "measure",
    "peak_memory",
    "ratio_quartiles",
    "render",
    "render_split",
    "time_interleaved",
    "time_split",
    "unet_kwargs",
]
