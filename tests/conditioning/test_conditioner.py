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


class _FakeTextEncoder(torch.nn.Module):
    """Stands in for conditioning.text.TextEncoder: one token per word, width 3, pooled = mean."""

    kind, max_length, width, pooled_width, dtype = "clip", 5, 3, 3, torch.float32

    def encode(self, captions, device=None):
        n, length = len(captions), 5
        mask = torch.zeros(n, length, dtype=torch.bool)
        for i, caption in enumerate(captions):
            mask[i, : min(len(caption.split()), length)] = True
        tokens = (torch.randn(n, length, 3) + 1) * mask[..., None]
        return tokens, mask, tokens.mean(1)


def test_caption_conditioning_uses_the_text_encoders():
    batch = {"image": torch.zeros(2, 3, 8, 8), "caption": ["a red star", "a blue heart on white"]}
    conditioner = Conditioner(semantic="caption", semantic_dropout=1.0, text_encoders={"fake": _FakeTextEncoder()})
    assert (conditioner.context_dim, conditioner.context_length, conditioner.pooled_dim) == (3, 5, 3)
    cond = conditioner(batch, train=False)
    assert cond.tokens.shape == (2, 5, 3) and cond.pooled.shape == (2, 3)
    assert cond.token_mask.sum(1).tolist() == [3, 5] and cond.tokens.abs().sum() > 0
    dropped = conditioner(batch, train=True)
    assert dropped.semantic_null.all() and dropped.label is None
    # Dropped text is replaced by the stated null (zeros, every token attended).
    assert dropped.tokens.abs().sum() == 0 and dropped.pooled.abs().sum() == 0 and dropped.token_mask.all()
    with pytest.raises(ValueError, match="text encoders"):
        Conditioner(semantic="caption")(batch, train=False)
    with pytest.raises(KeyError, match="caption"):
        Conditioner(semantic="caption", text_encoders={"fake": _FakeTextEncoder()})(
            {"image": torch.zeros(1, 3, 8, 8)}, train=False
        )


def test_labels_are_range_checked_once_per_batch_by_the_conditioner():
    conditioner = Conditioner()
    conditioner.num_classes = 5
    conditioner({"class_label": torch.tensor([0, 4])}, train=False)
    for bad in ([0, 5], [-1, 2]):
        with pytest.raises(ValueError, match=r"\[0, 5\)"):
            conditioner({"class_label": torch.tensor(bad)}, train=True)


def test_noisy_padding_of_a_sample_comes_from_its_own_generator_whatever_its_batch():
    conditioner = Conditioner(semantic="caption", text_encoders={"fake": _FakeTextEncoder()}, padding="noisy_replicate")
    tokens = torch.arange(4 * 5 * 3, dtype=torch.float32).reshape(4, 5, 3) / 10 + 1
    mask = torch.arange(5) < torch.tensor([[1], [2], [3], [2]])
    text = {"fake": {"tokens": tokens, "mask": mask, "pooled": tokens.mean(1)}}

    def padded(rows, seeds):
        part = {"fake": {k: v[rows] for k, v in text["fake"].items()}}
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        return conditioner.make(precomputed_text=part, batch_size=len(rows), generators=generators).tokens

    together = padded([0, 1, 2, 3], [10, 11, 12, 13])
    torch.manual_seed(0)
    alone = padded([2], [12])
    torch.manual_seed(1)  # the global RNG plays no part
    assert torch.equal(together[2:3], alone) and torch.equal(padded([2], [12]), alone)
    assert not torch.equal(padded([2], [99]), alone)  # the noise is there, and it is the sample's own
    assert torch.equal(together[:, 0], tokens[:, 0])  # real tokens untouched
