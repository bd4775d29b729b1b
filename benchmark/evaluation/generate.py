"""Generating an evaluation set: every sample a pure function of (protocol seed, global index).

Sample ``i`` draws its starting noise, and any noise a stochastic sampler injects along the way, from its own
generator ``torch.Generator().manual_seed(seed * 1_000_003 + i)``. Its class is ``protocol.labels(K)[i]`` (or its
caption ``protocol.caption_list()[i]``). So the set is the same whatever the batch size, and whatever the number of
ranks: under ``torch.distributed`` rank ``r`` of ``W`` generates the contiguous slice ``[r*N//W, (r+1)*N//W)``.
`benchmark.evaluation.evaluate` keeps each rank's slice local (``gather=False``): its metrics gather per-sample
features, never images. ``gather=True`` (the default of this function) gathers the images once, in index order,
without padding or repeats, for callers that want the images themselves (grids, tests).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor

from benchmark.evaluation.protocol import EvalProtocol, sample_seed, shapes_val_descriptions

if TYPE_CHECKING:
    from benchmark.module import DiffusionModule

__all__ = ["GeneratedSet", "generate", "protocol_controls", "rank_slice", "to_uint8"]


@dataclass
class GeneratedSet:
    """A generated evaluation set, in global index order.

    Attributes:
        images: (N, 3, H, W) uint8.
        labels: (N,) long class of each sample: the class asked for, or the kind its Shapes caption names; else None.
        captions: N captions for caption-conditioned entries, else None.
        control: (N,) float flip flag each sample was asked for (0 = as drawn, 1 = mirrored), or None.
        seconds: Wall time of the generation (the slowest rank's, under DDP).
        total: Number of samples of the whole set (all ranks); the rows held here are ``images.shape[0]``, all of
            them unless the set was generated with ``gather=False`` under DDP.
    """

    images: Tensor
    labels: Tensor | None
    captions: list[str] | None
    control: Tensor | None
    seconds: float
    total: int | None = None

    @property
    def images_per_s(self) -> float:
        return (self.total or self.images.shape[0]) / max(self.seconds, 1e-9)


def to_uint8(images: Tensor) -> Tensor:
    """Images in [-1, 1] to uint8 [0, 255] on the CPU (the format torch-fidelity reads)."""
    return ((images.float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def rank_slice(n: int, rank: int, world: int) -> range:
    """The contiguous, disjoint slice of ``range(n)`` that rank ``rank`` of ``world`` generates."""
    return range(rank * n // world, (rank + 1) * n // world)


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def per_sample_noise(generators: list[torch.Generator]) -> Iterator[None]:
    """Within the block, noise a stochastic sampler injects is drawn row by row from the samples' own generators.

    The samplers draw their per-step noise through ``benchmark.samplers._randn_like(x, generator)`` for the whole
    batch; replacing it makes row ``j`` come from ``generators[j]``, so an ancestral (DDPM) sample does not depend
    on which other samples share its batch.
    """
    import benchmark.samplers as samplers

    original = getattr(samplers, "_randn_like", None)

    def randn_like(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if x.shape[0] != len(generators):  # not a batch of our samples (should not happen): keep the old rule
            return original(x, generator)
        rows = [torch.randn(x.shape[1:], generator=g, dtype=x.dtype) for g in generators]
        return torch.stack(rows).to(x.device)

    if original is None:  # the samplers no longer draw through this hook; deterministic samplers are unaffected
        yield
        return
    samplers._randn_like = randn_like
    try:
        yield
    finally:
        samplers._randn_like = original


@torch.no_grad()
def generate(
    module: DiffusionModule,
    protocol: EvalProtocol,
    guidance_scale: float,
    *,
    num_samples: int | None = None,
    progress: bool = False,
    gather: bool = True,
    ask_flips: bool = True,
    data_controls: dict[str, Tensor] | None = None,
) -> GeneratedSet:
    """Generate the protocol's set with the entry (all ranks take part; every rank gets the whole set).

    Args:
        module: The entry (on its device).
        protocol: Sampler, steps, seeds, labels.
        guidance_scale: Semantic guidance scale of this set.
        num_samples: Overrides ``protocol.num_samples``.
        progress: Show a progress bar over batches (rank 0).
        gather: Gather every rank's images (True), or keep this rank's slice and its labels, captions and controls
            (False: what evaluation does, so no rank holds every image).
        ask_flips: Ask control-conditioned entries for flipped samples (a fair coin per sample); False when the
            data was trained without flips, so no sample asks for a control the model never saw (then ``control`` is
            None and no flip metric is computed).
        data_controls: For control-conditioned entries, the control of every sample, ``{name: (n, ...)}`` drawn
            from the data the reference statistics come from (`protocol_controls`), so that a model obeying its
            controls draws the reference's distribution; its flips are the ones asked for. None: the default
            control (whole canvas) with a fair flip coin.
    """
    from tqdm.auto import tqdm

    n = protocol.num_samples if num_samples is None else num_samples
    rank, world = _dist()
    indices = rank_slice(n, rank, world)
    semantic = getattr(module.conditioner, "semantic", "none")
    num_classes = int(getattr(module, "num_classes", None) or getattr(module.backbone, "num_classes", 0) or 0)
    all_labels = protocol.replace(num_samples=n).labels(num_classes) if semantic == "class" else None
    all_captions = protocol.replace(num_samples=n).caption_list(module.resolution) if semantic == "caption" else None
    control_conditioned = bool(getattr(module.conditioner, "control_names", ()))
    flips = _requested_flips(n, protocol.seed) if control_conditioned and ask_flips else None
    if control_conditioned and data_controls is not None:
        flips = data_controls["flip"].float() if ask_flips else None
    measured_labels = all_labels
    if all_captions is not None and protocol.captions == "shapes-val":
        # The kind and direction each caption names: what class accuracy and flip obeyed check. A flip control, if
        # the model has one, asks for the same direction as the caption.
        items = shapes_val_descriptions(n, module.resolution)
        measured_labels = torch.tensor([item["label"] for item in items])
        if flips is not None and data_controls is None:
            flips = torch.tensor([item["flip"] for item in items])

    chunks: list[Tensor] = []
    start = time.perf_counter()
    with protocol.apply(module, guidance_scale):
        batches = range(indices.start, indices.stop, protocol.batch_size)
        for lo in tqdm(batches, desc=f"sampling (cfg {guidance_scale:g})", disable=not progress or rank != 0):
            hi = min(lo + protocol.batch_size, indices.stop)
            generators = [torch.Generator().manual_seed(sample_seed(protocol.seed, i)) for i in range(lo, hi)]
            noise = torch.stack([torch.randn(module.latent_shape, generator=g) for g in generators])
            control = None
            if control_conditioned and data_controls is not None:
                control = {k: v[lo:hi].to(module.device) for k, v in data_controls.items()}
                control["flip"] = (flips[lo:hi] if flips is not None else torch.zeros(hi - lo)).to(module.device)
            elif flips is not None:
                control = module.default_control(hi - lo)
                control["flip"] = flips[lo:hi].to(module.device)
            with per_sample_noise(generators):
                images = module.sample_images(
                    labels=None if all_labels is None else all_labels[lo:hi],
                    captions=None if all_captions is None else all_captions[lo:hi],
                    control=control,
                    num_samples=hi - lo,
                    use_ema=protocol.use_ema,
                    noise=noise,
                    generators=generators,
                )
            chunks.append(to_uint8(images))
    c, h, w = 3, module.resolution, module.resolution
    local = torch.cat(chunks) if chunks else torch.zeros(0, c, h, w, dtype=torch.uint8)
    seconds = time.perf_counter() - start
    if not gather:
        part = slice(indices.start, indices.stop)
        return GeneratedSet(
            images=local,
            labels=None if measured_labels is None else measured_labels[part],
            captions=None if all_captions is None else all_captions[part],
            control=None if flips is None else flips[part],
            seconds=_slowest(seconds, world),
            total=n,
        )
    images, seconds = _gather(local, seconds, world)
    return GeneratedSet(
        images=images, labels=measured_labels, captions=all_captions, control=flips, seconds=seconds, total=n
    )


def protocol_controls(module: DiffusionModule, protocol: EvalProtocol, datamodule: object, n: int) -> dict | None:
    """The control of each of the ``n`` samples of a control-conditioned entry on Shapes, or None.

    The reference statistics are Shapes images drawn with every augmentation of the data (random original size, crop
    and flip): real reference views (whole canvas, what the default control asks for) lie at fd_shapes 44 from them,
    held-out augmented items at 0.9 (1,000 items each, 2026-12-07). Sampled at the default control, an entry that
    obeys its controls would be measured against a distribution it was told not to draw. So sample ``i`` asks for
    the control of the reference's item ``i`` (for shapes-val captions: of the val item whose caption it draws),
    and fd compares like with like; what the default control buys (whole objects) is the cut-object rate's to show.
    Other data keeps the default control (None): a real dataset's reference images are whole views.
    """
    from benchmark.evaluation.shapes_reference import is_shapes, shapes_reference_dataset

    on_shapes = is_shapes(datamodule) and str(protocol.reference).startswith("shapes")
    if not getattr(module.conditioner, "control_names", ()) or not on_shapes:
        return None
    if getattr(module.conditioner, "semantic", "none") == "caption" and protocol.captions == "shapes-val":
        from data.shapes import Shapes

        source = Shapes("val", resolution=module.resolution, length=max(n, 1))  # the captions' own items
    else:
        source = shapes_reference_dataset(protocol.reference, module.resolution, datamodule, max(n, 1))
    controls = [source.control(i) for i in range(n)]
    return {name: torch.stack([c[name] for c in controls]) for name in controls[0]}


def _requested_flips(n: int, seed: int) -> Tensor:
    """(n,) float: whether sample ``i`` asks for a horizontal flip, a fair coin hashed from (seed, i).

    About half the samples are mirrored, as in the augmented training data, and the coin is independent of the
    balanced labels (an alternating pattern would tie the flip to the class when the number of classes is even).
    """
    bits = [(sample_seed(seed, i) * 0x9E3779B97F4A7C15 >> 40) & 1 for i in range(n)]
    return torch.tensor(bits, dtype=torch.float32)


def _slowest(seconds: float, world: int) -> float:
    if world == 1:
        return seconds
    t = torch.tensor([seconds], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def _gather(local: Tensor, seconds: float, world: int) -> tuple[Tensor, float]:
    """Concatenate every rank's slice in rank (= index) order, once; the time is the slowest rank's."""
    if world == 1:
        return local, seconds
    gathered: list[tuple[Tensor, float] | None] = [None] * world
    dist.all_gather_object(gathered, (local.cpu(), seconds))
    return torch.cat([g[0] for g in gathered]), max(g[1] for g in gathered)
