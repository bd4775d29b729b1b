"""baselines.proposed and its primitives: control schedules, noisy replicate padding, independent dropout, class
via attention, a short fit, and the control-disentanglement metric."""

import math

import pytest
import torch

from baselines.mmdit import mmdit_size
from baselines.proposed import ProposedMMDiT, ProposedModule
from conditioning import Cond
from conditioning.conditioner import CONTROL_NAMES, Conditioner, control_matrix, default_control
from conditioning.control_schedule import ControlSchedule, schedule_weight
from conditioning.padding import pad_text

CLASS = dict(input_size=8, in_channels=4, num_classes=10, **mmdit_size("mmDiT-tiny/2"))


def _randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():  # away from the zero init, which would make every comparison 0 == 0
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    return model.eval()


def _control(n: int, flip: float = 0.0, crop: float = 32.0) -> torch.Tensor:
    c = default_control(n, 32)
    c["flip"] = torch.full((n,), flip)
    c["crop_size"] = torch.full((n, 2), crop)
    return control_matrix(c, CONTROL_NAMES)


def _cond(labels, control) -> Cond:
    return Cond(label=torch.as_tensor(labels), control=control, control_names=CONTROL_NAMES).fill_masks()


# ------------------------------------------------------------------------------------------------ w(t)


@pytest.mark.parametrize("kind", ["cosine", "cosine2", "truncated"])
def test_schedules_go_from_one_at_clean_to_zero_at_noise_and_decrease(kind):
    t = torch.linspace(0, 1, 101)
    w = schedule_weight(t, kind, t_max=0.6)
    assert w[0] == pytest.approx(1.0) and w[-1] == pytest.approx(0.0, abs=1e-6)
    assert bool((w[1:] <= w[:-1] + 1e-7).all()) and bool((w[1:50] < w[:49]).all())  # strictly falls early on
    if kind == "truncated":
        assert bool((w[t >= 0.6] < 1e-6).all()) and w[30] == pytest.approx(math.cos(math.pi / 4), abs=1e-5)
    if kind == "cosine":
        assert w[50] == pytest.approx(math.cos(math.pi / 4), abs=1e-6)


def test_constant_zero_and_per_group_schedules():
    t = torch.tensor([0.0, 0.5, 1.0])
    assert torch.equal(schedule_weight(t, "constant"), torch.ones(3))
    assert torch.equal(schedule_weight(t, "zero"), torch.zeros(3))
    schedule = ControlSchedule("per_group")
    groups = schedule.split(CONTROL_NAMES)
    assert groups == {"geometric": ["crop_top", "crop_left", "crop_h", "crop_w", "flip"],
                      "photometric": ["orig_h", "orig_w"]}  # fmt: skip
    assert torch.equal(schedule.weight(t, "geometric"), torch.ones(3))
    assert schedule.weight(t, "photometric")[-1] < 1e-6
    assert ControlSchedule("cosine").split(["flip"]) == {"all": ["flip"]}
    with pytest.raises(ValueError, match="unknown control schedule"):
        ControlSchedule("linear")


# ------------------------------------------------------------------------------------------------ the backbone


def test_with_w_zero_the_control_path_has_no_effect_and_otherwise_it_does():
    x, n = torch.randn(2, 4, 8, 8), 2
    t = torch.tensor([0.3, 0.7])
    a, b = _cond([1, 2], _control(n, 0.0, 32.0)), _cond([1, 2], _control(n, 1.0, 26.0))
    off = _randomised(
        ProposedMMDiT(control_names=list(CONTROL_NAMES), control_schedule=ControlSchedule("zero"), **CLASS)
    )
    with torch.no_grad():
        torch.testing.assert_close(off(x, t, a), off(x, t, b), rtol=0, atol=0)
        cosine = ControlSchedule("cosine")  # the default is per_group, whose crop and flip act at every t
        on = _randomised(ProposedMMDiT(control_names=list(CONTROL_NAMES), control_schedule=cosine, **CLASS))
        assert not torch.allclose(on(x, t, a), on(x, t, b))
        # The cosine weight vanishes at pure noise: there the control changes nothing (up to cos(π/2) ≈ 6e-17).
        ones = torch.ones(2)
        torch.testing.assert_close(on(x, ones, a), on(x, ones, b), rtol=0, atol=1e-6)


def test_class_via_attention_leaves_the_adaln_vector_independent_of_the_class():
    t, control = torch.tensor([0.2, 0.9]), _control(2)
    attention = _randomised(ProposedMMDiT(control_names=list(CONTROL_NAMES), **CLASS))
    both = _randomised(ProposedMMDiT(semantic_path="both", control_names=list(CONTROL_NAMES), **CLASS))
    adaln = _randomised(ProposedMMDiT(semantic_path="adaln", control_names=list(CONTROL_NAMES), **CLASS))
    a, b = _cond([1, 2], control), _cond([7, 3], control)
    with torch.no_grad():
        assert attention.y_embedder is None
        torch.testing.assert_close(attention.embed_vector(t, a), attention.embed_vector(t, b), rtol=0, atol=0)
        assert not torch.allclose(attention.embed_context(a)[0], attention.embed_context(b)[0])  # the class is there
        assert not torch.allclose(both.embed_vector(t, a), both.embed_vector(t, b))  # SD3: also in adaLN
        # adaln: the class is only in the vector; the context token is the same null row for every class.
        assert not torch.allclose(adaln.embed_vector(t, a), adaln.embed_vector(t, b))
        torch.testing.assert_close(adaln.embed_context(a)[0], adaln.embed_context(b)[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="class-conditional"):
        ProposedMMDiT(semantic_path="adaln", input_size=8, context_dim=16, **mmdit_size("mmDiT-tiny/2"))


def test_per_group_schedule_builds_one_embedder_per_group():
    model = ProposedMMDiT(control_names=list(CONTROL_NAMES), control_schedule=ControlSchedule("per_group"), **CLASS)
    assert set(model.control_embedders) == {"geometric", "photometric"}
    assert model.control_embedders["photometric"].names == ("orig_h", "orig_w")
    out = model(torch.randn(2, 4, 8, 8), torch.tensor([0.1, 0.5]), _cond([0, 1], _control(2)))
    assert out.shape == (2, 4, 8, 8)


# ------------------------------------------------------------------------------------------------ padding


def test_noisy_replicate_padding_keeps_real_tokens_and_fills_every_slot():
    torch.manual_seed(0)
    tokens = torch.randn(3, 7, 5) + 3.0
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    tokens[~mask] = 0.0  # what a zero-padded encoder would leave
    out, out_mask = pad_text(tokens, mask, "noisy_replicate", sigma=0.1)
    assert torch.equal(out[mask], tokens[mask]) and bool(out_mask.all())
    rep, _ = pad_text(tokens, mask, "replicate")
    # Padding slot j of a row with n real tokens holds real token j mod n (cyclic copies).
    assert torch.equal(rep[0, 3:], tokens[0, [0, 1, 2, 0]]) and torch.equal(rep[2, 2:], tokens[2, [0, 1, 0, 1, 0]])
    assert bool((out[~mask].abs().sum(-1) > 0).all())  # no slot left empty
    noise = out[~mask] - rep[~mask]
    rms = rep[~mask].pow(2).mean(-1, keepdim=True).sqrt()
    assert 0.03 < float((noise / rms).std()) < 0.3  # σ = 0.1 × the copied token's RMS
    zero, zero_mask = pad_text(tokens + 1, mask, "zero")
    assert bool((zero[~mask] == 0).all()) and torch.equal(zero_mask, mask)
    assert pad_text(tokens, mask, "encoder")[0] is tokens


def test_the_conditioner_pads_text_tokens(tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from conditioning.text import TextEncoder
    from tests.conditioning.test_text import CLIP_KW, _tokenizer

    torch.manual_seed(0)
    CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_KW)).save_pretrained(tmp_path / "clip")
    _tokenizer("<s> $A </s>").save_pretrained(tmp_path / "clip")
    encoder = TextEncoder(str(tmp_path / "clip"), kind="clip", max_length=8)
    captions = ["a red circle", "a blue square on a white background"]
    plain = Conditioner(semantic="caption", text_encoders={"clip": encoder}).make(captions=captions)
    padded = Conditioner(semantic="caption", text_encoders={"clip": encoder}, padding="noisy_replicate").make(
        captions=captions
    )
    real = plain.token_mask
    assert not bool(real.all()) and bool(padded.token_mask.all())
    assert torch.equal(padded.tokens[real], plain.tokens[real])
    assert not torch.allclose(padded.tokens[~real], plain.tokens[~real])


# ------------------------------------------------------------------------------------------------ dropout


def test_semantic_and_control_dropout_are_independent_at_their_rates():
    n = 40_000
    conditioner = Conditioner(semantic="class", control_names=["flip"], semantic_dropout=0.3, control_dropout=0.1)
    conditioner.num_classes = 10
    batch = {"class_label": torch.zeros(n, dtype=torch.long), "control": {"flip": torch.zeros(n)}}
    cond = conditioner(batch, train=True, generator=torch.Generator().manual_seed(0))
    sem, ctl = cond.semantic_null.float(), cond.control_null.float()
    assert sem.mean() == pytest.approx(0.3, abs=0.01) and ctl.mean() == pytest.approx(0.1, abs=0.01)
    assert (sem * ctl).mean() == pytest.approx(0.03, abs=0.005)  # P(both) = product: independent draws
    assert not bool(conditioner(batch, train=False).semantic_null.any())


# ------------------------------------------------------------------------------------------------ module and fit


def test_the_module_fits_a_few_steps():
    import lightning.pytorch as pl

    from data.autoencoder import Autoencoder
    from data.shapes import Shapes

    module = ProposedModule(size="mmDiT-tiny/2", resolution=32, num_classes=10, autoencoder=Autoencoder())
    backbone = module.backbone
    assert module.conditioner.control_names == CONTROL_NAMES and module.conditioner.control_dropout == 0.1
    assert backbone.y_embedder is None and set(backbone.control_embedders) == {"geometric", "photometric"}
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    loader = torch.utils.data.DataLoader([Shapes(resolution=32)[i] for i in range(8)], batch_size=4)
    trainer = pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")  # fmt: skip
    trainer.fit(module, loader)
    assert trainer.global_step == 3
    after = backbone.state_dict()
    for group in ("geometric", "photometric"):  # both control paths learn
        key = f"control_embedders.{group}.mlp.0.weight"
        assert not torch.equal(after[key], before[key])
    assert all(torch.isfinite(v).all() for v in after.values())


# ------------------------------------------------------------------------------------------------ the metric


def test_foreground_extent_measures_the_object():
    from benchmark.evaluation.disentanglement import foreground_extent

    images = -torch.ones(2, 3, 32, 32)
    images[0, :, 8:24, 10:22] = 1.0  # 16 x 12 box
    assert foreground_extent(images).tolist() == pytest.approx([0.5, 0.0])


def test_disentanglement_of_a_trivial_model_lies_in_the_unit_interval():
    from benchmark.evaluation import EvalProtocol
    from benchmark.evaluation.disentanglement import control_disentanglement
    from benchmark.evaluation.shapes_clip import ShapesCLIP
    from data.autoencoder import Autoencoder

    module = ProposedModule(size="mmDiT-tiny/2", resolution=32, num_classes=10, autoencoder=Autoencoder())
    protocol = EvalProtocol(num_samples=10, flow_steps=2, batch_size=10, guidance_scale=2.0)
    metrics = control_disentanglement(module, protocol, ShapesCLIP.load(), num_samples=10)
    keys = ["semantic_kept", "control_obeyed", "flip_obeyed", "crop_obeyed", "semantic_kept_size"]
    for key in ["control_disentanglement"] + [f"disentanglement_{k}" for k in keys]:
        assert 0.0 <= metrics[key] <= 1.0, key
    # The untrained model predicts 0 whatever the control: the images do not change, so the content is kept and
    # no control is obeyed.
    assert metrics["disentanglement_semantic_kept"] == 1.0 and metrics["disentanglement_control_obeyed"] == 0.0
    assert metrics["control_disentanglement"] == 0.0


# ------------------------------------------------------------------------------------------------ the study's YAMLs


def test_each_ablation_cell_changes_its_axis_only():
    import contextlib
    import warnings
    from pathlib import Path

    from benchmark.cli import CLI_KWARGS, _DescribeCLI

    root = Path(__file__).resolve().parents[2] / "leaderboards" / "shapes-ablations"

    def build(name: str):
        with torch.device("meta"), warnings.catch_warnings(), contextlib.redirect_stdout(None):
            warnings.simplefilter("ignore")
            args = ["--config", str(root / f"{name}.yaml")]
            return _DescribeCLI(**CLI_KWARGS, save_config_callback=None, args=args, run=False).model

    def axes(m) -> tuple:
        c = m.conditioner
        return (m.semantic_path, m.control_schedule.kind, c.control_names, c.control_dropout,
                m.guidance.control_scale, c.semantic, c.padding)  # fmt: skip

    base = ("attention", "per_group", CONTROL_NAMES, 0.1, 1.0, "class", "encoder")
    expected = {
        "scheduled": base,
        "class_adaln": ("adaln", *base[1:]),
        "additive": ("attention", "constant", *base[2:]),
        "schedule_cosine": ("attention", "cosine", *base[2:]),
        "schedule_cosine2": ("attention", "cosine2", *base[2:]),
        "control_none": ("attention", "per_group", (), 0.0, 1.0, "class", "encoder"),
        "control_cfg_off": ("attention", "per_group", CONTROL_NAMES, 0.0, 1.0, "class", "encoder"),
        "control_cfg_on": ("attention", "per_group", CONTROL_NAMES, 0.1, 2.0, "class", "encoder"),
        "padding_zero": ("attention", "per_group", CONTROL_NAMES, 0.1, 1.0, "caption", "zero"),
    }
    for name, want in expected.items():
        assert axes(build(name)) == want, name
    assert build("padding_noisy").conditioner.padding == "noisy_replicate"
