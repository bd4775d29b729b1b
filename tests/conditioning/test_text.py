"""TextEncoder against tiny CLIP / T5 checkpoints written to a tmp folder (no hub access)."""

import copy
import pickle

import huggingface_hub.constants
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
)

from conditioning.text import TextEncoder

WORDS = "a photo of cat dog on the red blue mat sitting under tree".split()
PAD, UNK, BOS, EOS = 0, 1, 2, 3
CLIP_KW = dict(
    vocab_size=1000,
    hidden_size=32,
    intermediate_size=37,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    projection_dim=16,
    pad_token_id=PAD,
    bos_token_id=BOS,
    eos_token_id=EOS,
)


def _tokenizer(template: str) -> PreTrainedTokenizerFast:
    vocab = {"<pad>": PAD, "<unk>": UNK, "<s>": BOS, "</s>": EOS, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single=template, special_tokens=[("<s>", BOS), ("</s>", EOS)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The encoders are tiny: thread start-up dominates, and the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("text-encoders")
    torch.manual_seed(0)
    out = {}
    for name, model, template in [
        ("clip", CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_KW)), "<s> $A </s>"),
        ("clip_noproj", CLIPTextModel(CLIPTextConfig(**CLIP_KW)), "<s> $A </s>"),
        (
            "t5",
            T5EncoderModel(
                T5Config(vocab_size=1000, d_model=24, d_kv=8, d_ff=37, num_layers=2, num_heads=4, pad_token_id=PAD)
            ),
            "$A </s>",
        ),
    ]:
        model.save_pretrained(root / name)
        _tokenizer(template).save_pretrained(root / name)
        out[name] = str(root / name)
    return out


CAPTIONS = ["a photo of a cat", "a red dog sitting on the blue mat under a tree", ""]


@pytest.mark.parametrize(
    "kind, max_length, dtype, width, pooled_width",
    [
        ("clip", 77, "float32", 32, 16),
        ("clip", 12, "bfloat16", 32, 16),
        ("t5", 120, "float32", 24, None),
        ("t5", 20, "bfloat16", 24, None),
    ],
)
def test_shapes_dtypes_and_widths(folders, kind, max_length, dtype, width, pooled_width):
    enc = TextEncoder(folders[kind], kind=kind, max_length=max_length, dtype=dtype)
    assert (enc.width, enc.pooled_width) == (width, pooled_width)
    assert not enc.loaded  # widths come from the config alone
    tokens, mask, pooled = enc.encode(CAPTIONS)
    assert enc.loaded
    assert tokens.shape == (3, max_length, width) and tokens.dtype == getattr(torch, dtype)
    assert mask.shape == (3, max_length) and mask.dtype == torch.bool
    assert not tokens.requires_grad and torch.isfinite(tokens.float()).all()
    if pooled_width is None:
        assert pooled is None
    else:
        assert pooled.shape == (3, pooled_width) and pooled.dtype == getattr(torch, dtype)


def test_clip_without_projection_falls_back_to_pooler_output(folders):
    enc = TextEncoder(folders["clip_noproj"])
    assert enc.pooled_width == 32
    tokens, _, pooled = enc.encode(CAPTIONS)
    assert pooled.shape == (3, 32)
    assert isinstance(enc.__dict__["_model"], CLIPTextModel)


@pytest.mark.parametrize("kind", ["clip", "t5"])
def test_mask_marks_real_tokens(folders, kind):
    _, mask, _ = TextEncoder(folders[kind], kind=kind, max_length=20).encode(CAPTIONS)
    counts = mask.sum(1).tolist()
    specials = 2 if kind == "clip" else 1  # <s> ... </s> vs ... </s>
    assert counts == [5 + specials, 11 + specials, specials]  # empty caption = null prompt: specials only
    assert (mask[:, :-1].int() >= mask[:, 1:].int()).all()  # real tokens first, then padding


@pytest.mark.parametrize("kind", ["clip", "t5"])
def test_truncation_at_max_length(folders, kind):
    enc = TextEncoder(folders[kind], kind=kind, max_length=6)
    tokens, mask, _ = enc.encode(["a photo of a cat " * 20, "cat"])
    assert tokens.shape[:2] == (2, 6) and mask[0].all() and not mask[1].all()


def test_penultimate_differs_from_last(folders):
    for kind in ("clip", "t5"):
        last = TextEncoder(folders[kind], kind=kind, max_length=10).encode(CAPTIONS)
        pen = TextEncoder(folders[kind], kind=kind, max_length=10, hidden_state="penultimate").encode(CAPTIONS)
        assert last[0].shape == pen[0].shape and not torch.allclose(last[0], pen[0])
        assert torch.equal(last[1], pen[1])
        if kind == "clip":
            torch.testing.assert_close(last[2], pen[2])  # the pooled vector does not depend on the choice


def test_identical_captions_give_identical_outputs(folders):
    enc = TextEncoder(folders["clip"], max_length=16)
    tokens, mask, pooled = enc.encode(["a cat", "a cat", "a dog"])
    assert torch.equal(tokens[0], tokens[1]) and torch.equal(pooled[0], pooled[1])
    assert not torch.equal(pooled[0], pooled[2])
    again = enc.encode(["a cat"])
    torch.testing.assert_close(again[0][0], tokens[0])


def test_constructor_loads_nothing_and_offline_error_is_clear():
    enc = TextEncoder("ldmbench-tests/does-not-exist", kind="t5", max_length=120)  # offline: must not raise
    assert not enc.loaded and "does-not-exist" in repr(enc)
    with torch.device("meta"):
        TextEncoder("ldmbench-tests/does-not-exist")
    with pytest.raises(OSError, match=r"ldmbench-tests/does-not-exist.*HF_HUB_OFFLINE=1.*save_pretrained"):
        enc.encode(["a cat"])
    with pytest.raises(OSError, match="does-not-exist"):
        _ = enc.width


def test_bad_inputs(folders):
    enc = TextEncoder(folders["clip"])
    with pytest.raises(TypeError, match="wrap a single caption"):
        enc.encode("a cat")
    with pytest.raises(TypeError, match="list of str"):
        enc.encode(torch.zeros(2))
    with pytest.raises(TypeError, match="int"):
        enc.encode(["a cat", 3])
    with pytest.raises(ValueError, match="exceeds the 77 positions"):
        TextEncoder(folders["clip"], max_length=120).encode(["a cat"])
    with pytest.raises(ValueError, match="kind='t5'"):
        TextEncoder(folders["clip"], kind="t5").encode(["a cat"])
    with pytest.raises(ValueError, match="kind"):
        TextEncoder(folders["clip"], kind="bert")
    assert not enc.loaded  # none of the above needed weights


def test_frozen_and_outside_the_module_tree(folders):
    outer = torch.nn.Sequential(TextEncoder(folders["clip"], max_length=8))
    enc = outer[0]
    enc.encode(["a cat"])
    outer.train()
    model = enc.__dict__["_model"]
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert list(outer.parameters()) == [] and outer.state_dict() == {}
    assert list(enc.children()) == [] and list(enc.buffers()) == []


def test_copies_share_weights_and_pickles_reload_lazily(folders):
    enc = TextEncoder(folders["clip"], max_length=8)
    ref = enc.encode(["a cat"])
    twin = copy.deepcopy(enc)
    assert twin.__dict__["_model"] is enc.__dict__["_model"]
    restored = pickle.loads(pickle.dumps(enc))
    assert not restored.loaded
    torch.testing.assert_close(restored.encode(["a cat"])[0], ref[0])


def test_device_follows_to(folders):
    enc = TextEncoder(folders["t5"], kind="t5", max_length=8).to(torch.float64)  # dtype moves are ignored
    tokens, mask, _ = enc.encode(["a cat"], device="cpu")
    assert tokens.device.type == "cpu" and mask.device.type == "cpu" and tokens.dtype == torch.float32
    enc.to("meta")
    with pytest.raises(RuntimeError, match="meta"):
        enc.encode(["a cat"])
