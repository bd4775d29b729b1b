import pytest
import torch

from conditioning.conditioner import CONTROL_NAMES, Conditioner, control_matrix
from conditioning.types import Cond


def _batch(n=4000):
    return {
        "image": torch.zeros(n, 3, 8, 8),
        "class_label": torch.arange(n) % 10,
        "control": {
            "orig_size": torch.tensor([[40.0, 48.0]]).repeat(n, 1),
            "crop_coords": torch.tensor([[3.0, 5.0]]).repeat(n, 1),
            "crop_size": torch.tensor([[30.0, 31.0]]).repeat(n, 1),
            "flip": (torch.arange(n) % 2).float(),
        },
    }


def test_control_matrix_orders_columns_by_name():
    m = control_matrix(_batch(3)["control"], CONTROL_NAMES)
    assert m.shape == (3, 7)
    assert m[1].tolist() == [40.0, 48.0, 3.0, 5.0, 30.0, 31.0, 1.0]
    assert control_matrix(_batch(2)["control"], ["flip", "crop_w"]).tolist() == [[0.0, 31.0], [1.0, 31.0]]
    with pytest.raises(KeyError, match="aspect"):
        control_matrix(_batch(2)["control"], ["aspect"])


def test_dropout_rates_are_right_and_independent():
    cond = Conditioner(control_names=list(CONTROL_NAMES), semantic_dropout=0.3, control_dropout=0.5)
    g = torch.Generator().manual_seed(0)
    c = cond(_batch(), train=True, generator=g)
    sem, ctl = c.semantic_null.float(), c.control_null.float()
    assert abs(sem.mean().item() - 0.3) < 0.03
    assert abs(ctl.mean().item() - 0.5) < 0.03
    # Independent groups: P(both) = P(sem) P(ctl).
    assert abs((sem * ctl).mean().item() - sem.mean().item() * ctl.mean().item()) < 0.03
    # Values are untouched: dropping is a mask, the embedders own the null values.
    assert torch.equal(c.label, _batch()["class_label"])


def test_no_dropout_at_eval_and_unconditional_batch_size():
    cond = Conditioner(semantic_dropout=1.0)
    c = cond(_batch(8), train=False)
    assert not c.semantic_null.any()
    unc = Conditioner(semantic="none")(_batch(8), train=True)
    assert unc.batch_size == 8 and unc.label is None


def test_missing_fields_fail_with_names():
    with pytest.raises(KeyError, match="class_label"):
        Conditioner()({"image": torch.zeros(2, 3, 8, 8)}, train=False)
    with pytest.raises(KeyError, match="control"):
        Conditioner(control_names=["flip"])({"class_label": torch.zeros(2, dtype=torch.long)}, train=False)
    with pytest.raises(ValueError, match="probability"):
        Conditioner(semantic_dropout=1.5)


def test_cond_drop_and_cat():
    c = Cond(label=torch.tensor([1, 2]))
    d = c.drop(semantic=True)
    assert d.semantic_null.tolist() == [True, True] and d.control_null.tolist() == [False, False]
    both = Cond.cat([c, d])
    assert both.label.tolist() == [1, 2, 1, 2]
    assert both.semantic_null.tolist() == [False, False, True, True]
    partial = c.drop(control=torch.tensor([True, False]))
    assert partial.control_null.tolist() == [True, False]


class _FakeTextEncoder:
    """Stands in for conditioning.text.TextEncoder: one token per word, width 3, pooled = mean."""

    def encode(self, captions, device=None):
        n, length = len(captions), 5
        mask = torch.zeros(n, length, dtype=torch.bool)
        for i, caption in enumerate(captions):
            mask[i, : min(len(caption.split()), length)] = True
        tokens = torch.randn(n, length, 3) * mask[..., None]
        return tokens, mask, tokens.mean(1)


def test_caption_conditioning_uses_the_text_encoder():
    batch = {"image": torch.zeros(2, 3, 8, 8), "caption": ["a red star", "a blue heart on white"]}
    cond = Conditioner(semantic="caption", semantic_dropout=1.0)(batch, train=True, text_encoder=_FakeTextEncoder())
    assert cond.tokens.shape == (2, 5, 3) and cond.pooled.shape == (2, 3)
    assert cond.token_mask.sum(1).tolist() == [3, 5]
    assert cond.semantic_null.all() and cond.label is None
    with pytest.raises(ValueError, match="text_encoder"):
        Conditioner(semantic="caption")(batch, train=False)
    with pytest.raises(KeyError, match="caption"):
        Conditioner(semantic="caption")(
            {"image": torch.zeros(1, 3, 8, 8)}, train=False, text_encoder=_FakeTextEncoder()
        )
