"""Caption conditioning end to end: several named text encoders, a tiny caption backbone, describe and grids."""

import huggingface_hub.constants
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, PreTrainedTokenizerFast, T5Config, T5EncoderModel

from benchmark.callbacks.samples import SampleGrid
from benchmark.module import DiffusionModule
from benchmark.samplers import EulerSampler
from conditioning.conditioner import Conditioner
from conditioning.embedders import TimestepEmbedder
from conditioning.text import TextEncoder
from data.autoencoder import Autoencoder

pytestmark = pytest.mark.filterwarnings("ignore:.*self.trainer. reference is not registered")

WORDS = "a red circle on white background photo of cat sitting mat blue square next to green triangle".split()


def _tokenizer(template: str) -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single=template, special_tokens=[("<s>", 2), ("</s>", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny CLIP-L-like (width 32, pooled 16), bigG-like (width 24, pooled 8) and T5-like (width 40) encoders."""
    root = tmp_path_factory.mktemp("encoders")
    torch.manual_seed(0)
    clip = dict(vocab_size=64, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    specs = {
        "clip_l": (
            CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=32, projection_dim=16, **clip)),
            "<s> $A </s>",
        ),
        "clip_g": (
            CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=24, projection_dim=8, **clip)),
            "<s> $A </s>",
        ),
        "t5": (
            T5EncoderModel(T5Config(vocab_size=64, d_model=40, d_kv=8, d_ff=37, num_layers=2, num_heads=4)),
            "$A </s>",
        ),
    }
    out = {}
    for name, (model, template) in specs.items():
        model.save_pretrained(root / name)
        _tokenizer(template).save_pretrained(root / name)
        out[name] = str(root / name)
    return out


def _encoders(folders):
    return {
        "clip_l": TextEncoder(folders["clip_l"], max_length=8, hidden_state="penultimate"),
        "clip_g": TextEncoder(folders["clip_g"], max_length=8, hidden_state="penultimate"),
        "t5": TextEncoder(folders["t5"], kind="t5", max_length=12),
    }


class TinyCaptionNet(nn.Module):
    """Per-pixel tokens that cross-attend to the text tokens (with their mask) and add the pooled vector."""

    def __init__(self, channels: int, context_dim: int, pooled_dim: int | None, width: int = 32) -> None:
        super().__init__()
        self.in_channels = self.out_channels = channels
        self.patch_size = 1
        self.inp, self.out = nn.Conv2d(channels, width, 1), nn.Conv2d(width, channels, 1)
        self.time = TimestepEmbedder(width)
        self.context = nn.Linear(context_dim, width)
        self.pooled = nn.Linear(pooled_dim, width) if pooled_dim else None
        self.attn = nn.MultiheadAttention(width, 4, batch_first=True)

    def forward(self, x, t, cond):
        n, _, h, w = x.shape
        tokens = self.inp(x).flatten(2).transpose(1, 2) + self.time(t)[:, None]
        if self.pooled is not None:
            tokens = tokens + self.pooled(cond.pooled.float())[:, None]
        context = self.context(cond.tokens.float())
        attended, _ = self.attn(tokens, context, context, key_padding_mask=~cond.token_mask)
        return self.out((tokens + attended).transpose(1, 2).reshape(n, -1, h, w))


class CaptionModule(DiffusionModule):
    def build_backbone(self) -> nn.Module:
        c, _, _ = self.latent_shape
        return TinyCaptionNet(c, self.conditioner.context_dim, self.conditioner.pooled_dim)


def _module(folders, **conditioner):
    conditioner = Conditioner(semantic="caption", text_encoders=_encoders(folders), **conditioner)
    return CaptionModule(
        conditioner=conditioner, autoencoder=Autoencoder(), resolution=32, sampler=EulerSampler(steps=2)
    )


CAPTIONS = ["a red circle on white background", "a photo of a cat sitting on a mat", "blue square", "green"]


def _batch():
    return {"image": torch.zeros(4, 3, 32, 32), "caption": CAPTIONS}


def test_sd3_style_combination_widths_and_training(folders):
    module = _module(folders, semantic_dropout=0.1)
    c = module.conditioner
    # CLIPs side by side in width (32 + 24), padded to max(56, 40); T5's 12 tokens after the CLIPs' 8.
    assert (c.context_dim, c.context_length, c.pooled_dim) == (56, 20, 24)
    assert not any(e.loaded for e in c.text_encoders.values())  # the widths came from the configs
    cond = c(_batch(), train=False)
    assert cond.tokens.shape == (4, 20, 56) and cond.token_mask.shape == (4, 20) and cond.pooled.shape == (4, 24)
    clip_l, _, pooled_l = c.text_encoders["clip_l"].encode(CAPTIONS)
    t5, t5_mask, _ = c.text_encoders["t5"].encode(CAPTIONS)
    torch.testing.assert_close(cond.tokens[:, :8, :32], clip_l)
    torch.testing.assert_close(cond.tokens[:, 8:, :40], t5)
    assert cond.tokens[:, 8:, 40:].abs().sum() == 0  # T5 zero-padded to the common width
    assert torch.equal(cond.token_mask[:, 8:], t5_mask)
    torch.testing.assert_close(cond.pooled[:, :16], pooled_l)
    loss = module.training_step(_batch(), 0)
    assert torch.isfinite(loss) and loss.requires_grad


def test_each_encoder_is_dropped_independently_to_its_null(folders):
    c = _module(folders, semantic_dropout=0.0, text_dropout={"t5": 1.0}).conditioner
    cond = c(_batch(), train=True)
    assert cond.text_names == ("clip_l", "clip_g", "t5")
    assert cond.text_null.tolist() == [[False, False, True]] * 4 and not cond.semantic_null.any()
    assert cond.tokens[:, 8:].abs().sum() == 0 and cond.token_mask[:, 8:].all()  # "zeros" null, attended
    assert cond.tokens[:, :8].abs().sum() > 0
    every = _module(folders, semantic_dropout=0.0, text_dropout={"clip_l": 1.0, "clip_g": 1.0, "t5": 1.0})
    assert every.conditioner(_batch(), train=True).semantic_null.all()  # nothing left: semantically dropped
    empty = _module(folders, semantic_dropout=1.0, text_null="empty").conditioner
    dropped = empty(_batch(), train=True)
    null_t5, null_mask, _ = empty.text_encoders["t5"].encode([""] * 4)
    torch.testing.assert_close(dropped.tokens[:, 8:, :40], null_t5)  # the encoded empty prompt
    assert torch.equal(dropped.token_mask[:, 8:], null_mask) and dropped.semantic_null.all()


def test_precomputed_text_skips_the_encoders(folders):
    c = _module(folders).conditioner
    online = c(_batch(), train=False)
    states = c.encode_text(CAPTIONS)
    fresh = _module(folders).conditioner
    text = {name: {"tokens": t, "mask": m} | ({} if p is None else {"pooled": p}) for name, (t, m, p) in states.items()}
    cached = fresh({"latent": torch.zeros(4, 4, 8, 8), "text": text}, train=False)
    assert not any(e.loaded for e in fresh.text_encoders.values())
    torch.testing.assert_close(cached.tokens, online.tokens)
    torch.testing.assert_close(cached.pooled, online.pooled)


def test_caption_model_describes_on_meta_and_draws_a_grid(folders):
    with torch.device("meta"):
        meta = _module(folders)
    info = meta.describe()
    assert info["semantic"] == "caption" and info["train_gflops_per_image"] > 3 * info["gmacs_per_forward"] * 0.9
    assert info["text_gflops_per_image"] > 0 and info["autoencoder_gflops_per_image"] > 0
    assert not any(e.loaded for e in meta.conditioner.text_encoders.values())  # zero states on meta
    example = meta.conditioner.example(3, "meta")
    assert example.tokens.shape == (3, 20, 56) and example.tokens.is_meta
    module = _module(folders)
    grid = SampleGrid(num_classes=2, samples_per_class=2, upscale=1).render(module)
    assert grid.shape[0] == 3 and grid.shape[1] > 2 * 32 and torch.isfinite(grid).all()


def test_sample_grid_of_a_shapes_caption_model_asks_for_shapes_captions():
    from data.shapes import Shapes, ShapesDataModule

    class _Captioned:  # only what `SampleGrid.captions` reads
        conditioner = type("C", (), {"semantic": "caption"})()

    datamodule = ShapesDataModule(resolution=16, batch_size=2)
    grid = SampleGrid(num_classes=3, samples_per_class=2)
    captions = grid.captions(_Captioned(), datamodule)
    expected = [datamodule.val_set.describe(i)["caption"] for i in range(3)]
    assert captions == [c for c in expected for _ in range(2)]
    assert all(any(kind.replace("_", " ") in c for kind in Shapes.CLASS_NAMES) for c in expected)
    assert not any("cat" in c for c in captions)
    assert "a photo of a cat sitting on a mat" in grid.captions(_Captioned(), None)  # data that cannot tell: examples
