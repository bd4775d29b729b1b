"""``python -m benchmark.perf``: the same as ``ldmbench perf`` (as when perf was one module)."""

from benchmark.perf.command import main

main()
