"""Initialising a backbone from one of our checkpoints: position tables, shape checks, class → text, resume."""

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from baselines.dit import DiT, DiTModule
from baselines.layers import get_2d_sincos_pos_embed
from baselines.mdt import MDTv2
from baselines.mmdit import MMDiT
from baselines.pixart_alpha import PixArt
from benchmark.transfer import (
    InitFrom,
    format_report,
    load_source_state,
    resolve_checkpoint,
    sincos_scale,
    transfer_weights,
)
from conditioning.types import Cond
from data.autoencoder import Autoencoder
from data.shapes import Shapes

SMALL = dict(patch_size=2, in_channels=4, hidden_size=32, num_heads=2, learn_sigma=False)


def _dit(latent: int, **kwargs) -> DiT:
    return DiT(input_size=latent, depth=2, **{**SMALL, "num_classes": 10, **kwargs})


def _mdt(latent: int) -> MDTv2:
    return MDTv2(input_size=latent, depth=4, decode_layer=1, num_classes=10, **SMALL)


def _sincos(side: int, scale: float = 1.0) -> torch.Tensor:
    return torch.from_numpy(get_2d_sincos_pos_embed(32, side, scale=scale)).float()[None]


def _grid(table: torch.Tensor, side: int) -> torch.Tensor:
    return table.reshape(side, side, -1)


def _rows(rows):
    return {r.name: r for r in rows}


def _assert_rest_bit_equal(source, target, skip):
    for name, value in target.state_dict().items():
        if name not in skip:
            assert torch.equal(value, source[name]), name


# ------------------------------------------------------------------------------- 8x8 latents → 16x16 latents
@pytest.mark.parametrize("strategy", ["extend", "interpolate", "resample"])
def test_fixed_sincos_table_of_8x8_latents_loads_into_16x16(strategy):
    source = _dit(8).state_dict()  # a 4x4 token grid
    target = _dit(16)  # an 8x8 token grid
    rows = _rows(transfer_weights(source, target, strategy))
    assert rows["pos_embed"].action == "resized" and rows["pos_embed"].source_shape == (1, 16, 32)
    table = target.pos_embed.detach()
    if strategy == "extend":  # same frequencies, positions 0..7
        torch.testing.assert_close(table, _sincos(8, 1.0))
    elif strategy == "interpolate":  # positions 0, 0.5, ..., 3.5: the old range
        torch.testing.assert_close(table, _sincos(8, 2.0))
        assert sincos_scale(table) == pytest.approx(2.0)
    else:  # bilinear, corners onto corners
        old, new = _grid(source["pos_embed"], 4), _grid(table, 8)
        for (i, j), (k, m) in {(0, 0): (0, 0), (0, 7): (0, 3), (7, 0): (3, 0), (7, 7): (3, 3)}.items():
            torch.testing.assert_close(new[i, j], old[k, m])
        assert sincos_scale(table) is None  # a resampled table is no longer a sin-cos table
    _assert_rest_bit_equal(source, target, {"pos_embed"})


def test_crop_needs_a_larger_table_and_names_it():
    with pytest.raises(ValueError, match="pos_embed.*crop.*4 x 4"):
        transfer_weights(_dit(8).state_dict(), _dit(16), "crop")


def test_crop_of_sd3_table_reproduces_the_source_model_at_the_new_size():
    kwargs = dict(depth=2, num_classes=10, **SMALL)
    source_model = MMDiT(input_size=8, pos_embed_max_size=16, **kwargs).eval()  # 16x16 table, 4x4 crop at 8x8
    for p in source_model.parameters():  # non-zero outputs, so that the comparison below means something
        p.data.normal_(0, 0.05)
    target = MMDiT(input_size=16, **kwargs).eval()  # the exact 8x8 grid
    rows = _rows(transfer_weights(source_model.state_dict(), target, "crop"))
    assert rows["pos_embed"].action == "resized" and "centre crop 16x16 → 8x8" in rows["pos_embed"].note
    torch.testing.assert_close(_grid(target.pos_embed, 8), _grid(source_model.pos_embed, 16)[4:12, 4:12])
    # SD3's source model crops the same table at 16x16 latents: the transferred model is that model exactly.
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([0.3, 0.8])
    cond = Cond(label=torch.tensor([1, 2]), semantic_null=torch.tensor([False, True]))
    with torch.no_grad():
        torch.testing.assert_close(target(x, t, cond), source_model(x, t, cond))


@pytest.mark.parametrize("strategy", ["extend", "interpolate", "resample", "crop"])
def test_learned_tables_of_mdt_load_into_16x16(strategy):
    source_model = _mdt(8)
    with torch.no_grad():  # "trained": no longer sin-cos
        for name, p in source_model.named_parameters():
            if "pos_embed" in name or "relative_position_bias_table" in name:
                p.add_(torch.randn_like(p) * 0.1)
    source = source_model.state_dict()
    torch.manual_seed(1)
    target = _mdt(16)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    if strategy == "crop":
        with pytest.raises(ValueError, match="pos_embed"):
            transfer_weights(source, target, strategy)
        return
    rows = _rows(transfer_weights(source, target, strategy))
    tables = [n for n in fresh if n.endswith("pos_embed") or n.endswith("relative_position_bias_table")]
    assert len(tables) == 2 + 4 and all(rows[n].action == "resized" for n in tables)
    old, new = _grid(source["pos_embed"], 4), _grid(target.pos_embed.detach(), 8)
    rel = "en_inblocks.0.attn.rel_pos_bias.relative_position_bias_table"
    old_rel, new_rel = _grid(source[rel][:-3], 7), _grid(target.state_dict()[rel][:-3], 15)
    assert torch.equal(target.state_dict()[rel][-3:], source[rel][-3:])  # BEiT's extra rows are carried
    if strategy == "extend":
        torch.testing.assert_close(new[:4, :4], old)
        torch.testing.assert_close(new[4:, 4:], _grid(fresh["pos_embed"], 8)[4:, 4:])
        torch.testing.assert_close(new_rel[4:11, 4:11], old_rel)  # the offsets ±3 it had, at the centre
        torch.testing.assert_close(new_rel[0, 0], _grid(fresh[rel][:-3], 15)[0, 0])
    else:  # a learned table is resampled bilinearly by both
        expect = F.interpolate(old.permute(2, 0, 1)[None], size=(8, 8), mode="bilinear", align_corners=True)
        torch.testing.assert_close(new, expect[0].permute(1, 2, 0))
        torch.testing.assert_close(new_rel[14, 14], old_rel[6, 6])
    _assert_rest_bit_equal(source, target, set(tables))


def test_sincos_scale_reads_pixart_tables_and_rejects_learned_ones():
    assert sincos_scale(_sincos(8, 0.0625)) == pytest.approx(0.0625, rel=1e-6)
    assert sincos_scale(_sincos(8) + 0.01 * torch.randn(1, 64, 32)) is None


# ------------------------------------------------------------------------------- shapes outside position tables
def test_a_shape_mismatch_outside_position_tables_fails_naming_the_tensor():
    source = _dit(8).state_dict()
    with pytest.raises(ValueError, match=r"y_embedder\.embedding_table\.weight: shape \(11, 32\).*\(13, 32\)"):
        transfer_weights(source, _dit(8, num_classes=12), "interpolate")
    with pytest.raises(ValueError, match=r"final_layer\.linear\.weight"):
        transfer_weights(source, _dit(8, learn_sigma=True), "interpolate")
    rows = _rows(transfer_weights(source, _dit(8, num_classes=12), "interpolate", strict_shapes=False))
    assert rows["y_embedder.embedding_table.weight"].action == "reinit"
    assert rows["final_layer.linear.weight"].action == "kept"


def test_reinit_patterns_leave_tensors_at_their_fresh_values():
    source = _dit(8).state_dict()
    target = _dit(8)
    fresh = target.final_layer.adaLN_modulation.linear.weight.detach().clone()
    rows = _rows(transfer_weights(source, target, reinit=["final_layer.*"]))
    assert rows["final_layer.adaLN_modulation.linear.weight"].action == "reinit"
    assert torch.equal(target.final_layer.adaLN_modulation.linear.weight, fresh)


# ------------------------------------------------------------------------------- class → text
def test_class_to_text_mmdit_keeps_the_trunk_bit_equal():
    kwargs = dict(input_size=8, depth=2, **SMALL)
    source_model = MMDiT(num_classes=10, **kwargs)
    for p in source_model.parameters():
        p.data.normal_()
    source = source_model.state_dict()
    target = MMDiT(context_dim=24, pooled_dim=16, **kwargs)
    rows = _rows(transfer_weights(source, target, "interpolate"))
    new = {n for n, r in rows.items() if r.action == "new"}
    assert new == {"context_embedder.weight", "context_embedder.bias"} | {
        n for n in target.state_dict() if n.startswith("y_embedder.")
    }
    dropped = {n for n, r in rows.items() if r.action == "dropped"}
    assert dropped == {"class_embedder.embedder.embedding_table.weight", "y_embedder.embedding_table.weight"}
    trunk = [n for n in target.state_dict() if n not in new]
    assert any(n.startswith("joint_blocks.0.context_block.") for n in trunk)  # the context stream carries over
    for name in trunk:
        assert torch.equal(target.state_dict()[name], source[name]), name
    assert "new" in format_report(list(rows.values())) and "context_embedder.weight" in format_report(
        list(rows.values())
    )


def test_class_to_text_pixart_reinitialises_the_text_projection():
    kwargs = dict(input_size=8, depth=2, **SMALL)
    source_model = PixArt(num_classes=10, context_dim=32, **kwargs)
    for p in source_model.parameters():
        p.data.normal_()
    source = source_model.state_dict()
    torch.manual_seed(3)
    target = PixArt(context_dim=32, **kwargs)  # same width: the projection would fit, but it read class vectors
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    rows = _rows(transfer_weights(source, target, "interpolate"))
    projection = [n for n in fresh if n.startswith("caption_projection.")]
    assert projection and all(rows[n].action == "reinit" for n in projection)
    assert all(torch.equal(target.state_dict()[n], fresh[n]) for n in projection)
    assert rows["class_embedder.embedding_table.weight"].action == "dropped"
    _assert_rest_bit_equal(source, target, set(projection))


def test_class_to_text_unet_reinitialises_cross_attention_keys_and_values():
    from baselines.ldm_unet import LDMUNet

    kwargs = dict(in_channels=4, model_channels=16, channel_mult=(1, 2), num_res_blocks=1, transformer_depth=(0, 1))
    kwargs |= dict(head_dim=16, norm_groups=8)
    source = LDMUNet(context_dim=32, num_classes=10, **kwargs).state_dict()
    target = LDMUNet(context_dim=24, num_classes=None, **kwargs)
    rows = _rows(transfer_weights(source, target, "interpolate"))
    kv = [n for n in rows if ".attn2.to_k." in n or ".attn2.to_v." in n]
    assert kv and all(rows[n].action == "reinit" for n in kv)  # they read the 24-wide text, not the class token
    assert rows["class_embedder.embedding_table.weight"].action == "dropped"
    _assert_rest_bit_equal(source, target, set(kv))


def test_an_official_dit_file_loads_into_another_resolution(tmp_path):
    source = _dit(8)
    for p in source.parameters():
        p.data.normal_()
    official = {k.replace("adaLN_modulation.linear.", "adaLN_modulation.1."): v for k, v in source.state_dict().items()}
    path = tmp_path / "DiT-official.pt"
    torch.save(official, path)  # the facebookresearch/DiT layout: a plain state dict of the EMA weights
    init = InitFrom(str(path), pos_embed="interpolate", source_format="dit")
    target = _dit(16)
    rows = _rows(transfer_weights(load_source_state(path, "dit"), target, init.pos_embed))
    assert rows["pos_embed"].action == "resized"
    _assert_rest_bit_equal(source.state_dict(), target, {"pos_embed"})
    with pytest.raises(ValueError, match="source_format"):
        InitFrom(str(path), source_format="sd3")


# ------------------------------------------------------------------------------- the callback, fit and resume
class _Snapshot(pl.Callback):
    """The backbone and EMA weights when training starts (after any InitFrom or checkpoint restore)."""

    def on_train_start(self, trainer, pl_module):
        self.backbone = {k: v.clone() for k, v in pl_module.backbone.state_dict().items()}
        self.ema = {k: v.clone() for k, v in pl_module.ema.shadow.state_dict().items()}


def _fit(vae, resolution, callbacks, max_steps, ckpt_path=None):
    module = DiTModule(size="DiT-tiny/2", num_classes=10, resolution=resolution, autoencoder=Autoencoder(vae))
    items = [Shapes(resolution=resolution, length=4)[i] for i in range(4)]
    loader = torch.utils.data.DataLoader(items, batch_size=2)
    trainer = pl.Trainer(
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_path)
    return module, trainer


def test_init_from_loads_ema_weights_into_backbone_and_ema_and_resume_does_not_reapply(tiny_vae, tmp_path):
    source_module = DiTModule(size="DiT-tiny/2", num_classes=10, resolution=32, autoencoder=Autoencoder(tiny_vae))
    with torch.no_grad():
        for p in source_module.ema.shadow.parameters():
            p.normal_(0, 0.02)
    source_path = tmp_path / "source.ckpt"
    torch.save({"state_dict": source_module.state_dict()}, source_path)
    source_ema = {k.removeprefix("ema.shadow."): v for k, v in source_module.state_dict().items() if "shadow" in k}

    init, snap = InitFrom(str(source_path), pos_embed="extend"), _Snapshot()
    module, trainer = _fit(tiny_vae, 64, [init, snap], max_steps=1)  # 32 px → 64 px: 4x4 → 8x8 tokens
    assert _rows(init.report)["pos_embed"].action == "resized"
    for name, value in snap.backbone.items():
        if name != "pos_embed":
            assert torch.equal(value, source_ema[name]), name  # the EMA weights, not the raw ones
        assert torch.equal(snap.ema[name], value), name  # the EMA copy was refreshed
    resumed_path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(resumed_path)
    saved = {k.removeprefix("backbone."): v for k, v in torch.load(resumed_path)["state_dict"].items()}

    init2, snap2 = InitFrom(str(source_path), pos_embed="extend"), _Snapshot()
    _fit(tiny_vae, 64, [init2, snap2], max_steps=2, ckpt_path=str(resumed_path))
    assert init2.report is None  # not re-applied
    assert all(torch.equal(v, saved[k]) for k, v in snap2.backbone.items())  # the run's own trained weights
    assert not torch.equal(snap2.backbone["final_layer.linear.weight"], source_ema["final_layer.linear.weight"])


def test_entry_references_resolve_in_the_runner_layout(tmp_path):
    final = tmp_path / "pretrain" / "seed1-abcdef12" / "final.ckpt"
    final.parent.mkdir(parents=True)
    final.write_bytes(b"x")
    (tmp_path / "pretrain" / "seed0-abcdef12").mkdir()
    run_dir = tmp_path / "transfer" / "seed1-12345678"
    assert resolve_checkpoint("entry:pretrain", run_dir) == final
    with pytest.raises(FileNotFoundError, match="run the entry 'pretrain' first"):
        resolve_checkpoint("entry:pretrain", tmp_path / "transfer" / "seed0-12345678")
    with pytest.raises(ValueError, match="leaderboard runner"):
        resolve_checkpoint("entry:pretrain", tmp_path / "plain-run")


def test_a_module_built_in_python_records_the_transfer_as_plain_data(tiny_vae, tmp_path):
    from benchmark.transfer_entries import TransferDiTModule

    init = InitFrom("entry:pretrain", pos_embed="extend")
    module = TransferDiTModule(
        transfer=init, size="DiT-tiny/2", num_classes=10, resolution=32, autoencoder=Autoencoder(tiny_vae)
    )
    assert module.configure_callbacks() == [init]
    assert module.hparams["transfer"]["init_args"]["pos_embed"] == "extend"
    torch.save({"hyper_parameters": dict(module.hparams)}, tmp_path / "h.ckpt")
    loaded = torch.load(tmp_path / "h.ckpt", weights_only=True)  # no pickled callback
    assert loaded["hyper_parameters"]["transfer"]["class_path"] == "benchmark.transfer.InitFrom"
