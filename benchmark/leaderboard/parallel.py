"""Old import path of the process pool that ran several rows at once; submitit jobs replaced it
(`benchmark.leaderboard.launch`, ``ldmbench leaderboard run --launcher local|slurm``)."""

from benchmark.leaderboard.plan import available_cores

__all__ = ["available_cores"]
