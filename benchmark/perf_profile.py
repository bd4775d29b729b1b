"""Old import path of :mod:`benchmark.perf.profile` (the measuring tools moved into `benchmark.perf`); kept so that
``from benchmark.perf_profile import profile_entry`` keeps working."""

from benchmark.perf.profile import profile_entry, render_profile

__all__ = ["profile_entry", "render_profile"]
