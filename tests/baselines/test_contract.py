"""The engine contract, checked for every entry of ``baselines/`` automatically.

Entries are discovered, not listed: every ``DiffusionModule`` subclass defined in a ``baselines`` module, with the
sizes of the ``SIZES`` table of its module (or of the nearest base class's module that has one, e.g. the proposed
model's mmDiT sizes). A new baseline, or a new row of a size table, is covered without editing this file.

- Every size builds on the meta device; parameter counts grow with the paper's size names (tiny < mini < S < B < L
  < XL); unknown sizes are rejected with the valid ones named. The exact reference counts and GMACs are pinned in the
  per-model tests.
- ``describe`` (the CLI's size and cost report) runs at the tiny sizes in the default run and at every paper size
  under ``-m slow`` (5-15 s each on a 2-core CPU), as does the check that GMACs grow with the size name and fall
  with the patch size; it agrees with the meta counts.
- At the tiny and S sizes, on the CPU with the embedded Shapes latents (8 x 8 x 4): output shapes, a gradient for
  every trainable parameter, and the same loss from the same seed.
- Every entry has a Shapes leaderboard YAML (that every shipped YAML parses is ``tests/benchmark/test_cli.py``'s).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
import re
import sys
import warnings
from pathlib import Path

import pytest
import torch

import baselines
from benchmark.flops import backbone_macs, latent_batch
from benchmark.module import DiffusionModule
from conditioning.conditioner import Conditioner
from data.autoencoder import Autoencoder

ROOT = Path(__file__).resolve().parents[2]
SCALES = ("tiny", "mini", "S", "B", "L", "XL")  # the paper's size names, smallest first; tiny and mini are CPU sizes


def _entry_classes() -> list[type[DiffusionModule]]:
    found = []
    for info in sorted(pkgutil.iter_modules(baselines.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"baselines.{info.name}")
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, DiffusionModule) and obj.__module__ == module.__name__:
                found.append(obj)
    return found


def _size_table(cls: type[DiffusionModule]) -> dict:
    for klass in cls.__mro__:
        table = getattr(sys.modules[klass.__module__], "SIZES", None)
        if isinstance(table, dict):
            return table
    raise AssertionError(f"{cls.__name__}: no SIZES table in its module or its bases' modules")


def _default_size(cls: type[DiffusionModule]) -> str:
    return inspect.signature(cls.__init__).parameters["size"].default


def _scale(size: str) -> str | None:
    """The paper's size name in a size (``DiT-XL/2`` → ``XL``), None for names without one (``SD3-medium``)."""
    tokens = [t for t in re.split(r"[-/]", size) if t in SCALES]
    return tokens[0] if len(tokens) == 1 else None


def _patch(size: str) -> int | None:
    match = re.search(r"/(\d+)$", size)
    return int(match.group(1)) if match else None


ENTRIES = _entry_classes()
ALL_SIZES = [(cls, size) for cls in ENTRIES for size in _size_table(cls)]
# Trained on the CPU: the tiny sizes and the smallest-patch S size of each entry.
CPU_SIZES = [(cls, size) for cls, size in ALL_SIZES if _scale(size) == "tiny"] + [
    (cls, min((s for s in _size_table(cls) if _scale(s) == "S"), key=lambda s: _patch(s) or 0))
    for cls in ENTRIES
    if any(_scale(s) == "S" for s in _size_table(cls))
]


def _id(item: tuple[type, str]) -> str:
    return f"{item[0].__name__}-{item[1]}"


def _build(cls: type[DiffusionModule], size: str, **kwargs) -> DiffusionModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(size=size, **kwargs)


@functools.cache
def _meta_module(cls: type[DiffusionModule], size: str) -> DiffusionModule:
    """The entry at ``size`` with its recipe defaults, on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        return _build(cls, size)


def _params(cls: type[DiffusionModule], size: str) -> int:
    return sum(p.numel() for p in _meta_module(cls, size).backbone.parameters())


@functools.cache
def _gmacs(cls: type[DiffusionModule], size: str) -> float:
    """GMACs of one backbone forward per image, counted on the meta device as ``describe`` counts them."""
    return round(backbone_macs(_meta_module(cls, size)) / 1e9, 4)


def _families(cls: type[DiffusionModule]) -> list[list[str]]:
    """The entry's sizes by family (the size name with its scale replaced, e.g. ``DiT-*/2``), smallest first."""
    families: dict[str, list[tuple[int, str]]] = {}
    for size in _size_table(cls):
        scale = _scale(size)
        if scale is not None:
            family = re.sub(rf"(?<![A-Za-z]){re.escape(scale)}(?![A-Za-z])", "*", size, count=1)
            families.setdefault(family, []).append((SCALES.index(scale), size))
    return [[size for _, size in sorted(members)] for members in families.values() if len(members) > 1]


def test_discovery_finds_every_baseline():
    names = {cls.__name__ for cls in ENTRIES}
    assert {"DiTModule", "MDTModule", "PixArtModule", "MMDiTModule", "LDMModule", "ProposedModule"} <= names
    for cls in ENTRIES:
        assert _default_size(cls) in _size_table(cls), f"{cls.__name__}'s default size is not in its table"
        assert any(_scale(s) == "tiny" for s in _size_table(cls)), f"{cls.__name__} has no tiny CPU size"


@pytest.mark.parametrize("cls", ENTRIES, ids=lambda c: c.__name__)
def test_unknown_size_is_rejected_with_the_valid_ones(cls):
    with torch.device("meta"), pytest.raises(ValueError, match=r"unknown .*size 'no-such-size'.*valid sizes: .+"):
        _build(cls, "no-such-size")


@pytest.mark.parametrize("entry", ALL_SIZES, ids=_id)
def test_every_size_builds_on_meta(entry):
    module = _meta_module(*entry)
    assert _params(*entry) > 0
    assert all(p.is_meta for p in module.backbone.parameters())


@pytest.mark.parametrize("cls", ENTRIES, ids=lambda c: c.__name__)
def test_counts_grow_with_the_named_size(cls):
    families = _families(cls)
    assert families, f"{cls.__name__}: no two sizes of one family to compare"
    for ordered in families:
        for smaller, larger in zip(ordered, ordered[1:], strict=False):
            p0, p1 = _params(cls, smaller), _params(cls, larger)
            assert p1 > p0, f"{larger} has {p1:,} parameters, not more than {smaller}'s {p0:,}"


@pytest.mark.slow
@pytest.mark.parametrize("cls", ENTRIES, ids=lambda c: c.__name__)
def test_gmacs_grow_with_the_named_size_and_fall_with_the_patch(cls):
    """Larger scale, more MACs; same scale and a larger patch, fewer tokens and fewer MACs (DiT's Table 1)."""
    for ordered in _families(cls):
        for smaller, larger in zip(ordered, ordered[1:], strict=False):
            assert _gmacs(cls, larger) > _gmacs(cls, smaller) > 0, f"{larger} does not cost more than {smaller}"
    by_scale: dict[str, list[tuple[int, str]]] = {}
    for size in _size_table(cls):
        if _patch(size) is not None and _scale(size) is not None:
            by_scale.setdefault(re.sub(r"/\d+$", "", size), []).append((_patch(size), size))
    for members in by_scale.values():
        ordered = [size for _, size in sorted(members)]
        for finer, coarser in zip(ordered, ordered[1:], strict=False):
            assert _gmacs(cls, coarser) < _gmacs(cls, finer), f"{coarser} is not cheaper than {finer}"


def _check_describe(cls: type[DiffusionModule], size: str) -> None:
    module = _meta_module(cls, size)
    info = module.describe()
    params, gmacs = _params(cls, size), info["gmacs_per_forward"]
    assert info["model"] == cls.__name__
    assert info["params"] == params and 0 < info["trainable_params"] <= params
    assert gmacs == _gmacs(cls, size) > 0
    # A training step is at least a forward and a backward of the same size (2 FLOPs per MAC each).
    assert info["train_gflops_per_image"] >= 4 * gmacs
    _, h, w = info["latent_shape"]
    patch = getattr(module.backbone, "patch_size", 1)
    assert info["tokens"] == (h // patch) * (w // patch)
    assert info["autoencoder_gflops_per_image"] > 0


@pytest.mark.parametrize("entry", [e for e in ALL_SIZES if _scale(e[1]) == "tiny"], ids=_id)
def test_describe_at_the_tiny_sizes(entry):
    _check_describe(*entry)


@pytest.mark.slow
@pytest.mark.parametrize("entry", [e for e in ALL_SIZES if _scale(e[1]) != "tiny"], ids=_id)
def test_describe_at_every_paper_size(entry):
    _check_describe(*entry)


# ------------------------------------------------------------------------------------------- on the CPU


@functools.cache
def _shapes_autoencoder() -> Autoencoder:
    return Autoencoder("embedded:shapes-vae", sample_posterior=False)


def _cpu_module(cls: type[DiffusionModule], size: str, seed: int = 0) -> DiffusionModule:
    """The entry with its recipe defaults on the Shapes latents (32 px images, 8 x 8 x 4 latents, 10 classes).

    Caption entries (PixArt-α) take the class conditioner, as on the Shapes leaderboard: their text encoders' weights
    are not available offline.
    """
    kwargs = {}
    if _meta_module(cls, size).conditioner.semantic == "caption":
        kwargs["conditioner"] = Conditioner(semantic="class", semantic_dropout=0.1, text_encoders=None)
    torch.manual_seed(seed)
    return _build(cls, size, autoencoder=_shapes_autoencoder(), resolution=32, num_classes=10, **kwargs)


def _batch(module: DiffusionModule, n: int = 4) -> dict:
    batch = latent_batch(module, n)
    batch["latent"] = torch.randn(batch["latent"].shape, generator=torch.Generator().manual_seed(1))
    return batch


def _loss(module: DiffusionModule, batch: dict, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return module.training_loss(batch)["loss"]


@pytest.mark.parametrize("entry", CPU_SIZES, ids=_id)
def test_cpu_forward_shapes_gradients_and_determinism(entry):
    cls, size = entry
    module = _cpu_module(cls, size)
    backbone = module.backbone
    c, h, w = module.latent_shape
    assert (c, h, w) == (4, 8, 8) and backbone.in_channels == c
    assert backbone.out_channels == (2 * c if module.objective.learn_sigma else c)

    x, t = torch.randn(3, c, h, w), torch.rand(3)
    cond = module.conditioner.example(3, "cpu", num_classes=module.num_classes, resolution=module.resolution)
    out = backbone(x, t, cond)
    assert out.shape == (3, backbone.out_channels, h, w) and out.dtype == x.dtype and torch.isfinite(out).all()

    # Zero-initialised output layers (adaLN-Zero) stop every gradient behind them at init: move all weights off
    # their initial values first, so that a parameter without a gradient is one the loss does not reach.
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = _batch(module)
    loss = _loss(module, batch, seed=3)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    trainable = {name: p for name, p in backbone.named_parameters() if p.requires_grad}
    missing = [name for name, p in trainable.items() if p.grad is None]
    assert not missing, f"{size}: parameters outside the training graph: {missing[:8]}"
    dead = [name for name, p in trainable.items() if not p.grad.abs().sum() > 0]
    assert not dead, f"{size}: parameters with an all-zero gradient: {dead[:8]}"

    # Same seed, same loss (noise, t, condition dropout); another seed, another loss.
    with torch.no_grad():
        first = _loss(module, batch, seed=3)
        assert torch.equal(first, _loss(module, batch, seed=3))
        assert not torch.equal(first, _loss(module, batch, seed=4))


@pytest.mark.parametrize("entry", [e for e in CPU_SIZES if _scale(e[1]) == "tiny"], ids=_id)
def test_same_seed_builds_the_same_model(entry):
    first, second = _cpu_module(*entry, seed=7), _cpu_module(*entry, seed=7)
    second_state = second.backbone.state_dict()
    for name, value in first.backbone.state_dict().items():
        assert torch.equal(value, second_state[name]), name
    batch = _batch(first)
    with torch.no_grad():
        assert torch.equal(_loss(first, batch, seed=5), _loss(second, batch, seed=5))


# ------------------------------------------------------------------------------------------- leaderboards


@pytest.mark.parametrize("cls", ENTRIES, ids=lambda c: c.__name__)
def test_every_entry_has_a_shapes_leaderboard_config(cls):
    class_path = f"class_path: {cls.__module__}.{cls.__name__}"
    configs = [p.name for p in (ROOT / "leaderboards/shapes").glob("*.yaml") if class_path in p.read_text()]
    assert configs, f"no leaderboards/shapes/*.yaml trains {cls.__module__}.{cls.__name__}"
