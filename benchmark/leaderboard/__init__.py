"""Leaderboards: train every entry of a suite under one compute budget and compare them under one protocol.

ldmbench leaderboard run leaderboards/shapes [--entries dit,dit_ddpm] [--preset smoke] [--seeds 0,1]
ldmbench leaderboard render leaderboards/shapes
ldmbench leaderboard eval leaderboards/imagenet-256 --entry dit_xl_2 --ckpt_path DiT-XL-2-256x256.pt
"""

from benchmark.leaderboard.suite import Budget, Entry, Preset, Suite, load_suite

__all__ = ["Budget", "Entry", "Preset", "Suite", "load_suite"]
