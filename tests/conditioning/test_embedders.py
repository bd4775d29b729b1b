import math

import pytest
import torch

from conditioning import ClassEmbedder, Cond, ControlEmbedder, TimestepEmbedder, timestep_frequencies
from conditioning.embedders import normalise_controls


def _direct(t: torch.Tensor, dim: int, flip: bool, shift: float, max_period: float = 10000.0) -> torch.Tensor:
    half = dim // 2
    rows = []
    for value in t.tolist():
        freqs = [math.exp(-math.log(max_period) * i / (half - shift)) for i in range(half)]
        cos = [math.cos(value * f) for f in freqs]
        sin = [math.sin(value * f) for f in freqs]
        row = cos + sin if flip else sin + cos
        rows.append(row + [0.0] * (dim % 2))
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("flip", [True, False])
@pytest.mark.parametrize("shift", [0.0, 1.0])
@pytest.mark.parametrize("dim", [16, 17])
def test_timestep_frequencies_match_the_formula(flip, shift, dim):
    t = torch.tensor([0.0, 1.0, 3.5, 250.0, 999.0])
    got = timestep_frequencies(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
    assert got.shape == (5, dim) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), _direct(t, dim, flip, shift), atol=2e-4, rtol=0)


def test_timestep_frequencies_dit_order_is_cos_then_sin():
    emb = timestep_frequencies(torch.tensor([0.0]), 8)
    assert emb[0, :4].eq(1).all() and emb[0, 4:].eq(0).all()


def test_timestep_frequencies_rejects_non_vector():
    with pytest.raises(ValueError, match="1-D"):
        timestep_frequencies(torch.zeros(2, 1), 8)


def test_timestep_embedder_unit_time_reproduces_integer_steps():
    emb = TimestepEmbedder(32)
    with torch.no_grad():
        # k / 1000 * 1000 == k in float32 for these (and for 991 of the 1001 steps); exact features, exact output.
        k = torch.tensor([0, 1, 10, 250, 500, 999, 1000])
        assert torch.equal(emb(k.float() / 1000), emb.mlp(timestep_frequencies(k.float(), 256)))
        # For the rest, within float32 rounding of the step (<= 3e-5 steps).
        k = torch.arange(0, 1001)
        torch.testing.assert_close(
            emb(k.float() / 1000), emb.mlp(timestep_frequencies(k.float(), 256)), atol=1e-5, rtol=0
        )


def test_timestep_embedder_keeps_dit_state_dict_names_and_checks_shape():
    emb = TimestepEmbedder(32)
    assert set(emb.state_dict()) == {"mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"}
    assert emb(torch.rand(3)).shape == (3, 32)
    with pytest.raises(ValueError, match=r"\(N,\)"):
        emb(torch.rand(3, 1))


def test_class_embedder_uses_the_null_row_exactly_where_dropped():
    emb = ClassEmbedder(num_classes=5, hidden_size=8)
    assert emb.embedding_table.weight.shape == (6, 8)
    label = torch.tensor([0, 4, 2, 3])
    null = torch.tensor([False, True, False, True])
    out = emb(Cond(label=label, semantic_null=null))
    table = emb.embedding_table.weight
    torch.testing.assert_close(out, table[torch.tensor([0, 5, 2, 5])])
    torch.testing.assert_close(emb(Cond(label=label)), table[label])


def test_class_embedder_errors():
    emb = ClassEmbedder(num_classes=5, hidden_size=8)
    with pytest.raises(ValueError, match="cond.label"):
        emb(Cond(control=torch.zeros(2, 1)))
    # A dropped entry may hold any placeholder: only its mask matters.
    emb(Cond(label=torch.tensor([-1, 2]), semantic_null=torch.tensor([True, False])))


def test_control_embedder_features_and_null():
    names = ["orig_h", "orig_w", "flip"]
    emb = ControlEmbedder(names, hidden_size=16, frequency_size=8)
    with torch.no_grad():
        emb.null.copy_(torch.randn(16))
    control = torch.tensor([[256.0, 320.0, 0.0], [512.0, 512.0, 1.0]])
    normalised = torch.stack([control[:, 0].log2(), control[:, 1].log2(), 2 * control[:, 2] - 1], dim=1)
    centred = [timestep_frequencies(normalised[:, i], 8) - torch.tensor([1.0] * 4 + [0.0] * 4) for i in range(3)]
    manual = emb.mlp(0.1 * torch.cat(centred, dim=1))  # cos - 1 and sin, times feature_scale 0.1
    cond = Cond(control=control, control_names=tuple(names))
    torch.testing.assert_close(emb(cond), manual)
    dropped = emb(Cond(control=control, control_null=torch.tensor([True, False])))
    torch.testing.assert_close(dropped[0], emb.null)
    torch.testing.assert_close(dropped[1], manual[1])


def test_normalise_controls_scales():
    names = ("orig_h", "orig_w", "crop_top", "crop_left", "crop_h", "crop_w", "flip")
    raw = torch.tensor([[32.0, 16.0, 8.0, 4.0, 16.0, 8.0, 1.0], [8.0, 8.0, 0.0, 2.0, 4.0, 4.0, 0.0]])
    # Crop sides relative to the original side (log2 16/32 = -1), original sides in log2 pixels.
    expected = torch.tensor([[5.0, 4.0, 0.25, 0.25, -1.0, -1.0, 1.0], [3.0, 3.0, 0.0, 0.25, -1.0, -1.0, -1.0]])
    torch.testing.assert_close(normalise_controls(raw, names), expected)
    # A per-group embedder that sees only the crop box: offsets as fractions of the crop side.
    crop_only = normalise_controls(raw[:, 2:6], names[2:6])
    torch.testing.assert_close(crop_only[:, :2], torch.tensor([[0.5, 0.5], [0.0, 0.5]]))
    torch.testing.assert_close(crop_only[:, 2:], torch.tensor([[4.0, 3.0], [2.0, 2.0]]))  # log2 pixels
    raw_emb = ControlEmbedder(list(names), 8, frequency_size=4, normalise=False, centre=False, feature_scale=1.0)
    torch.testing.assert_close(
        raw_emb.features(raw), torch.cat([timestep_frequencies(raw[:, i], 4) for i in range(7)], 1)
    )


def _probe_r2(embedding: torch.Tensor, target: torch.Tensor, n_fit: int) -> torch.Tensor:
    x = torch.cat([embedding.double(), torch.ones(len(embedding), 1, dtype=torch.float64)], 1)
    w = torch.linalg.lstsq(x[:n_fit], target[:n_fit].double()).solution
    residual = x[n_fit:] @ w - target[n_fit:].double()
    held = target[n_fit:].double()
    return 1 - (residual**2).sum(0) / ((held - held.mean(0)) ** 2).sum(0)


@pytest.mark.parametrize(
    "columns",
    [
        ("orig_h", "orig_w", "crop_top", "crop_left", "crop_h", "crop_w", "flip"),  # one embedder (SDXL, additive)
        ("crop_top", "crop_left", "crop_h", "crop_w", "flip"),  # the per_group schedule's geometric embedder
        ("orig_h", "orig_w"),  # and its photometric one
    ],
)
def test_linear_probe_recovers_every_shapes_control_from_its_embedding(columns):
    """Issue 24: each control must be linearly readable from the (untrained) embedding, R² >= 0.99."""
    from data.shapes import Shapes
    from data.transforms import CONTROL_NAMES, control_to_tensor

    shapes = Shapes("train", 32, length=600)
    control = torch.stack([control_to_tensor(shapes[i]["control"]) for i in range(600)])
    control = control[:, [CONTROL_NAMES.index(c) for c in columns]]
    torch.manual_seed(0)
    emb = ControlEmbedder(list(columns), hidden_size=128)
    with torch.no_grad():
        r2 = _probe_r2(emb(Cond(control=control, control_names=columns)), control, n_fit=400)
    assert (r2 >= 0.99).all(), dict(zip(columns, r2.tolist()))


def _shapes_controls(n: int) -> torch.Tensor:
    from data.shapes import Shapes
    from data.transforms import control_to_tensor

    shapes = Shapes("train", 32, length=n)
    return torch.stack([control_to_tensor(shapes[i]["control"]) for i in range(n)])


@pytest.mark.parametrize(("centre", "feature_scale", "bound"), [(True, 0.1, 0.12), (False, 1.0, None)])
def test_one_adamw_step_moves_the_hidden_units_by_little(centre, feature_scale, bound):
    """Issue 24: with plain Fourier features one AdamW step at lr 3e-3 moved every hidden pre-activation by about 3
    (70 % of the columns are constant cosines, a bias with a ~1000x learning rate), and training killed every unit of
    the additive cell's control embedder within a few hundred steps. Centred, scaled features move them by < 0.1."""
    from data.transforms import CONTROL_NAMES

    control = _shapes_controls(200)
    torch.manual_seed(0)
    emb = ControlEmbedder(list(CONTROL_NAMES), 128, centre=centre, feature_scale=feature_scale)
    cond = Cond(control=control, control_names=CONTROL_NAMES)
    features = emb.features(control)
    before = emb.mlp[0](features).detach()
    opt = torch.optim.AdamW(emb.parameters(), lr=3e-3, weight_decay=0.0)
    emb.mlp[0](features).sum().backward()  # any gradient of one sign per unit
    opt.step()
    moved = (emb.mlp[0](features).detach() - before).abs().max()
    if bound is None:  # the plain features: the step that killed the units
        assert moved > 2.0
    else:
        assert moved < bound
    assert emb(cond).shape == (200, 128)


def test_control_embedder_null_starts_at_zero():
    assert ControlEmbedder(["a"], 8).null.abs().sum() == 0


def test_control_embedder_errors_name_both_sides():
    emb = ControlEmbedder(["orig_h", "orig_w"], hidden_size=8, frequency_size=4)
    with pytest.raises(ValueError, match=r"\(2, 3\).*orig_h"):
        emb(Cond(control=torch.zeros(2, 3)))
    with pytest.raises(ValueError, match=r"crop_top.*orig_h"):
        emb(Cond(control=torch.zeros(2, 2), control_names=("crop_top", "orig_w")))
    with pytest.raises(ValueError, match="None"):
        emb(Cond(label=torch.zeros(2, dtype=torch.long)))
    with pytest.raises(ValueError, match="unique"):
        ControlEmbedder(["a", "a"], 8)


def test_embedders_build_and_run_on_meta():
    with torch.device("meta"):
        cond = Cond(label=torch.zeros(2, dtype=torch.long), control=torch.zeros(2, 1))
        assert ClassEmbedder(10, 8)(cond).shape == (2, 8)
        assert ControlEmbedder(["a"], 8)(cond).shape == (2, 8)
        assert TimestepEmbedder(8)(torch.zeros(2)).shape == (2, 8)
