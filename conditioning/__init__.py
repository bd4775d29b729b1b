"""Shared conditioning primitives: every way of getting time, class, text and control metadata into a network."""

from conditioning.embedders import ClassEmbedder, ControlEmbedder, TimestepEmbedder, timestep_frequencies
from conditioning.modulation import AdaLNZero, FinalAdaLN, ShiftScale, modulate
from conditioning.text import TextEncoder
from conditioning.types import Cond, Mod

__all__ = [
    "AdaLNZero",
    "ClassEmbedder",
    "Cond",
    "ControlEmbedder",
    "FinalAdaLN",
    "Mod",
    "ShiftScale",
    "TextEncoder",
    "TimestepEmbedder",
    "modulate",
    "timestep_frequencies",
]
