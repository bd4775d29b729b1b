"""Numerical parity of baselines.dit.DiT with diffusers' DiTTransformer2DModel and the official checkpoint format."""

import argparse

import pytest
import torch

from baselines.dit import DiT
from baselines.dit_convert import (
    diffusers_config,
    from_diffusers_state_dict,
    load_official_checkpoint,
    to_diffusers_state_dict,
)
from conditioning import Cond

diffusers = pytest.importorskip("diffusers")

KW = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4, num_classes=10)
STEPS = torch.tensor([0, 10, 500, 999])
LABELS = torch.tensor([1, 2, 9, 10])  # 10 = the null class in the diffusers / official convention


def _random_dit(seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    model = DiT(**KW).eval()
    with torch.no_grad():  # move away from the zero init, which would make every comparison trivially 0 == 0
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p) * 0.02)
    return model


def _ours(model: DiT, x: torch.Tensor) -> torch.Tensor:
    null = LABELS == model.num_classes
    cond = Cond(label=torch.where(null, 0, LABELS), semantic_null=null)
    with torch.no_grad():
        return model(x, STEPS / 1000, cond)


def _official_names(sd: dict) -> dict:
    return {k.replace("adaLN_modulation.linear.", "adaLN_modulation.1."): v for k, v in sd.items()}


def test_matches_diffusers_dit_transformer():
    ours = _random_dit()
    ref = diffusers.DiTTransformer2DModel(**diffusers_config(ours)).eval()
    ref.load_state_dict(to_diffusers_state_dict(ours.state_dict()), strict=True)
    x = torch.randn(4, 4, 8, 8)
    with torch.no_grad():
        want = ref(x, timestep=STEPS, class_labels=LABELS).sample
    # diffusers' DiT spaces its timestep frequencies by half - 1 (downscale_freq_shift=1), the official by half.
    official_convention = _ours(ours, x)
    assert (official_convention - want).abs().max() > 1e-5
    ours.t_embedder.downscale_freq_shift = 1.0
    got = _ours(ours, x)
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_diffusers_round_trip_is_identity():
    ours = _random_dit()
    sd = ours.state_dict()
    back = from_diffusers_state_dict(to_diffusers_state_dict(sd), input_size=8)
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    assert "pos_embed" not in from_diffusers_state_dict(to_diffusers_state_dict(sd))


def test_diffusers_conversion_errors():
    sd = to_diffusers_state_dict(_random_dit().state_dict())
    diverged = dict(sd)
    key = "transformer_blocks.1.norm1.emb.timestep_embedder.linear_1.weight"
    diverged[key] = sd[key] + 1
    with pytest.raises(ValueError, match="differs from block 0"):
        from_diffusers_state_dict(diverged)
    incomplete = {k: v for k, v in sd.items() if "proj_out_2" not in k}
    with pytest.raises(ValueError, match="missing.*proj_out_2"):
        from_diffusers_state_dict(incomplete)
    with pytest.raises(ValueError, match="control embedder"):
        to_diffusers_state_dict(DiT(**KW, control_names=["flip"]).state_dict())


def test_official_checkpoint_imports_to_identical_outputs(tmp_path):
    reference, other = _random_dit(0), _random_dit(1)
    x = torch.randn(4, 4, 8, 8)
    ema = _official_names(reference.state_dict())
    # A training checkpoint: the EMA weights must win over "model"; "args" is an argparse.Namespace.
    path = tmp_path / "0400000.pt"
    torch.save({"model": _official_names(other.state_dict()), "ema": ema, "args": argparse.Namespace(lr=1e-4)}, path)
    model = DiT(**KW).eval()
    model.load_state_dict(load_official_checkpoint(path))
    assert torch.equal(_ours(model, x), _ours(reference, x))
    # A released file: a plain state dict.
    plain = tmp_path / "DiT-tiny.pt"
    torch.save(ema, plain)
    model = DiT(**KW).eval()
    model.load_state_dict(load_official_checkpoint(str(plain)))
    assert torch.equal(_ours(model, x), _ours(reference, x))


def test_official_checkpoint_key_errors():
    ema = _official_names(_random_dit().state_dict())
    with pytest.raises(ValueError, match=r"unknown.*module\.pos_embed"):
        load_official_checkpoint({**ema, "module.pos_embed": ema["pos_embed"]})
    with pytest.raises(ValueError, match=r"missing.*blocks\.1\.mlp\.fc2\.bias"):
        load_official_checkpoint({k: v for k, v in ema.items() if k != "blocks.1.mlp.fc2.bias"})


def test_dit_module_initialises_from_an_official_checkpoint(tmp_path):
    from baselines.dit import DiTModule
    from data.autoencoder import Autoencoder

    reference = DiTModule(size="DiT-tiny/2", num_classes=10, resolution=32, autoencoder=Autoencoder())
    for p in reference.backbone.parameters():
        torch.nn.init.normal_(p, std=0.02)
    path = tmp_path / "DiT-tiny-2.pt"
    torch.save(_official_names(reference.backbone.state_dict()), path)
    loaded = DiTModule(size="DiT-tiny/2", num_classes=10, resolution=32, autoencoder=Autoencoder(), init_from=str(path))
    for name, value in reference.backbone.state_dict().items():
        torch.testing.assert_close(loaded.backbone.state_dict()[name], value)
        torch.testing.assert_close(loaded.ema.shadow.state_dict()[name], value)
