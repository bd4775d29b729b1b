"""Gradient checkpointing and channels-last for every backbone, as callbacks (`benchmark.callbacks.fast_paths`)."""

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmark.callbacks.fast_paths import ChannelsLast, GradientCheckpointing, checkpoint_units
from benchmark.cli import main
from benchmark.perf import build_impls

pytest.importorskip("diffusers")  # build_impls builds the reference beside ours

ROOT = Path(__file__).resolve().parents[2]
MODELS = ["dit", "mdt", "pixart", "mmdit", "ldm", "sdxl"]


def _ours(name: str):
    impls, _ = build_impls(name, "tiny", 2, 16, torch.device("cpu"))
    return impls[0]


def _loss_and_grads(impl) -> tuple[torch.Tensor, list[torch.Tensor]]:
    impl.module.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # MDT's masked pass draws its kept tokens
    loss = sum(out.square().mean() for out in impl.forward())
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in impl.module.parameters() if p.grad is not None]


def _count_unit_calls(units: list[nn.Module], monkeypatch) -> list[int]:
    """Count runs of the units' own ``forward`` (a recompute calls it directly, not through ``__call__``'s hooks)."""
    calls, ids = [0], {id(unit) for unit in units}
    for cls in {type(unit) for unit in units}:

        def counting(self, *args, _forward=cls.forward, **kwargs):
            calls[0] += id(self) in ids
            return _forward(self, *args, **kwargs)

        monkeypatch.setattr(cls, "forward", counting)
    return calls


@pytest.mark.parametrize("name", MODELS)
def test_checkpointing_recomputes_every_block_and_changes_no_number(name, monkeypatch):
    impl = _ours(name)
    backbone = impl.module
    units = list(checkpoint_units(backbone))
    assert len(units) >= 4  # the blocks (transformers) or ResBlocks and spatial transformers (UNets)
    calls = _count_unit_calls(units, monkeypatch)
    plain_loss, plain_grads = _loss_and_grads(impl)
    plain_calls, calls[0] = calls[0], 0

    callback = GradientCheckpointing()
    wrapped = callback.enable(backbone)
    assert wrapped == (0 if name == "dit" else len(units))  # DiT has its own switch, which is used instead
    loss, grads = _loss_and_grads(impl)
    assert calls[0] == 2 * plain_calls  # each block ran again in the backward pass
    assert torch.equal(loss, plain_loss)
    assert len(grads) == len(plain_grads) and all(torch.equal(a, b) for a, b in zip(grads, plain_grads, strict=True))

    calls[0] = 0
    with torch.no_grad():
        impl.forward()
    assert calls[0] == plain_calls  # no gradients: one forward, nothing kept or recomputed
    callback.disable()
    assert not any("forward" in unit.__dict__ for unit in units) and not getattr(backbone, "gradient_checkpointing", 0)
    calls[0] = 0
    _loss_and_grads(impl)
    assert calls[0] == plain_calls


def test_a_deep_copy_of_a_checkpointed_backbone_runs_its_own_blocks():
    backbone = _ours("pixart").module
    GradientCheckpointing().enable(backbone)
    twin = copy.deepcopy(backbone)
    for original, copied in zip(checkpoint_units(backbone), checkpoint_units(twin), strict=True):
        assert copied.forward.__self__ is copied and original.forward.__self__ is original


def test_the_unet_units_are_its_resblocks_and_transformers():
    backbone = _ours("ldm").module
    kinds = {type(unit).__name__ for unit in checkpoint_units(backbone)}
    assert kinds == {type(backbone.down[0].res[0]).__name__, type(backbone.down[-1].attn[0]).__name__}
    mid = set(map(id, (*backbone.mid.res, *backbone.mid.attn)))
    assert mid <= set(map(id, checkpoint_units(backbone)))  # the middle level is not in a list, and still counted


def test_channels_last_stores_the_unet_convolutions_nhwc_and_computes_the_same():
    impl = _ours("ldm")
    with torch.no_grad():
        before = impl.forward()[0]

    class Module(nn.Module):  # what the callback reads of a DiffusionModule: the backbone and its EMA shadow
        def __init__(self, backbone: nn.Module) -> None:
            super().__init__()
            self.backbone = backbone
            self.ema = type("EMA", (), {"shadow": copy.deepcopy(backbone)})()

    module = Module(impl.module)
    ChannelsLast().setup(None, module, "fit")
    convs = [m for m in module.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert module.ema.shadow.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        after = impl.forward()[0]
    assert after.is_contiguous(memory_format=torch.channels_last)  # the layout follows through the network
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-4)


def test_both_callbacks_train_a_shapes_unet_from_the_cli(tmp_path, monkeypatch):
    """Appended to the entry's own callbacks with jsonargparse's ``+=`` (a ``callbacks:`` list in a second YAML
    would replace them, checkpointing included)."""
    monkeypatch.chdir(tmp_path)
    config = str(ROOT / "leaderboards/shapes/ldm_g4.yaml")
    fast = ["--data.init_args.batch_size=4", "--data.init_args.num_workers=0", "--trainer.limit_val_batches=0"]
    fast += ["--trainer.enable_progress_bar=false", "--data.init_args.latent_cache=null"]
    fast += ["--model.init_args.sampler.init_args.steps=2"]  # the entry's end-of-training sample grid
    extra = [
        f"--trainer.callbacks+=benchmark.callbacks.fast_paths.{name}"
        for name in ("GradientCheckpointing", "ChannelsLast")
    ]
    main(["fit", "--config", config, *fast, *extra, "--trainer.max_steps=2"])
    (ckpt,) = tmp_path.glob("runs/**/last.ckpt")  # the entry's own ModelCheckpoint wrote it
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["global_step"] == 2
    names = {type(cb).__name__ for cb in state.get("callbacks", {})} | set(map(str, state.get("callbacks", {})))
    assert any("ModelCheckpoint" in name for name in names)  # the entry's own callbacks are still there
    assert not any(".forward" in key for key in state["state_dict"])  # the wrapping is not part of the weights
