"""The patch-transformer layers before and after ``baselines.layers`` took timm's (issue 25), side by side.

"Before" is the plain-torch PatchEmbed, Mlp and Attention that ``baselines/layers.py`` held until then, kept here as
the reference; "after" is ``baselines.layers`` (timm's layers under our signatures). Two checks, in one run:

- **parity**: each of the three layers, and a whole DiT-tiny/2, with the same state dict loaded strictly into both
  (so the keys match too); max abs forward difference, expected <= 1e-5;
- **speed**: a DiT training step (forward + loss + backward + AdamW) with each set of layers, timed in rotation by
  ``ldmbench perf``'s loop (:func:`benchmark.perf.timing.time_interleaved`, with its matmul probe), at the Shapes
  toy size (DiT-tiny/2, 8x8 latent, batch 64) and at DiT-XL/2 width on 256 tokens (two blocks, batch 2, so that a
  CPU finishes). The ratio is after / before (> 1: timm slower), with the quartiles of the per-round ratios;
  ``--runs`` repeats the whole measurement.

    OMP_NUM_THREADS=1 nice python scripts/timm_layers_perf.py --runs 3 --repeats 15
"""

from __future__ import annotations

import argparse
import copy
import statistics
from collections.abc import Sequence

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baselines.dit import DiT, dit_size
from baselines.layers import Attention, Mlp, PatchEmbed
from conditioning import Cond

# name: (DiT keyword arguments, latent side, batch)
CASES = {
    "tiny/2 (Shapes)": ({**dit_size("DiT-tiny/2")}, 8, 64),
    "XL/2 width 2 blocks": ({**dit_size("DiT-XL/2"), "depth": 2}, 32, 2),
}


# The layers as they were before timm's (baselines/layers.py at commit 696e172), the reference of both checks.
class BeforeAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).view(n, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(x.transpose(1, 2).reshape(n, t, d))


class BeforeMlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class BeforePatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_channels: int, embed_dim: int, bias: bool = True) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2).contiguous()


def before_twin(layer: nn.Module) -> nn.Module:
    """The before-layer of the same configuration as ``layer`` (of ``baselines.layers``), with the same weights."""
    if isinstance(layer, Attention):
        twin = BeforeAttention(layer.num_heads * layer.head_dim, layer.num_heads, layer.qkv.bias is not None)
    elif isinstance(layer, Mlp):
        twin = BeforeMlp(layer.fc1.in_features, layer.fc1.out_features, layer.fc2.out_features)
    elif isinstance(layer, PatchEmbed):
        conv = layer.proj
        twin = BeforePatchEmbed(conv.kernel_size[0], conv.in_channels, conv.out_channels, conv.bias is not None)
    else:
        raise TypeError(f"no before-twin for {type(layer).__name__}")
    twin.load_state_dict(layer.state_dict())  # strict: the keys must match
    return twin


def with_before_layers(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every PatchEmbed, Mlp and Attention replaced by its before-twin."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in (Attention, Mlp, PatchEmbed):
                setattr(parent, name, before_twin(child))
    return model


@torch.no_grad()
def layer_parity(seed: int = 0) -> dict[str, float]:
    """Max abs forward difference between the layers after and before, per layer and for a whole DiT-tiny/2."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x_tokens = torch.randn(4, 64, 96, generator=gen)
    x_image = torch.randn(4, 4, 16, 16, generator=gen)
    layers = {
        "Attention": (Attention(96, 6), x_tokens),
        "Mlp": (Mlp(96, 384), x_tokens),
        "PatchEmbed": (PatchEmbed(2, 4, 96), x_image),
    }
    diffs = {}
    for name, (after, x) in layers.items():
        for p in after.parameters():  # non-zero biases too
            p.normal_(0, 0.2, generator=gen)
        diffs[name] = (after(x) - before_twin(after)(x)).abs().max().item()
    model = _randomised_dit(dit_size("DiT-tiny/2"), 8).eval()
    x, t, cond = _inputs(4, 8)
    diffs["DiT-tiny/2 (all three)"] = (model(x, t, cond) - with_before_layers(model)(x, t, cond)).abs().max().item()
    return diffs


def _randomised_dit(kw: dict[str, int], side: int) -> DiT:
    """A DiT with every parameter drawn (the zero-initialised adaLN gates would hide the blocks)."""
    model = DiT(input_size=side, num_classes=10, **kw)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return model


def _inputs(batch: int, side: int) -> tuple[torch.Tensor, torch.Tensor, Cond]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, side, side, generator=gen)
    t = torch.rand(batch, generator=gen)
    return x, t, Cond(label=torch.arange(batch) % 10)


def measure(case: str, repeats: int) -> dict[str, float]:
    """One interleaved timing of a DiT training step with the layers before and after; seconds and after / before."""
    # Here, not at the top: benchmark.perf loads diffusers, which the parity check (and its test) does not need.
    from benchmark.perf.timing import Impl, MatmulProbe, Trainer, ratio_quartiles, time_interleaved

    kw, side, batch = CASES[case]
    after = _randomised_dit(kw, side)  # baselines.layers, i.e. timm's
    before = with_before_layers(after)
    x, t, cond = _inputs(batch, side)
    trainers = [
        Trainer(Impl("before", before, lambda: [before(x, t, cond)]), "fp32", torch.device("cpu")),
        Trainer(Impl("after", after, lambda: [after(x, t, cond)]), "fp32", torch.device("cpu")),
    ]
    d = kw["hidden_size"]
    tokens = batch * (side // kw["patch_size"]) ** 2
    (b, a), _ = time_interleaved(trainers, MatmulProbe(tokens, d, 4 * d, torch.device("cpu")), repeats)
    q1, q3 = ratio_quartiles(b["train_rounds"], a["train_rounds"])  # per round: second / first = after / before
    return {"before_s": b["train_s"], "after_s": a["train_s"], "ratio": a["train_s"] / b["train_s"], "q1": q1, "q3": q3}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="whole measurements per case")
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds per measurement")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of: " + ", ".join(CASES))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, timm {timm.__version__}, {args.threads} thread(s)")
    print("\nforward parity, max abs diff (same weights):")
    for name, diff in layer_parity().items():
        print(f"  {name:24s} {diff:.2e}  {'ok' if diff <= 1e-5 else 'FAIL (> 1e-5)'}")
    print(
        "\ntraining step (fwd + bwd + AdamW), median ms; ratio = after / before (> 1: timm slower) [round quartiles]:"
    )
    for case in args.cases.split(","):
        ratios = []
        for run in range(args.runs):
            m = measure(case, args.repeats)
            ratios.append(m["ratio"])
            print(
                f"  {case:22s} run {run + 1}: before {m['before_s'] * 1e3:8.1f}  after {m['after_s'] * 1e3:8.1f}  "
                f"ratio {m['ratio']:.3f} [{m['q1']:.3f}, {m['q3']:.3f}]",
                flush=True,
            )
        print(f"  {case:22s} median ratio over runs: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
