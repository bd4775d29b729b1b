"""Train the embedded Shapes CLIP ("shapes-clip") shipped in ``data/weights/shapes-clip/``.

A ``transformers.CLIPModel`` with tiny text and vision towers, trained contrastively on Shapes images and their
captions, plus linear heads on the pooled image feature for the attributes a caption states (shape kind, the
direction an asymmetric kind faces, size word, shape colour, background colour). It is the embedded evaluator of the
Shapes suites (``fd_shapes``, class accuracy, flip obeyed, CLIP score; see ``benchmark.evaluation.shapes_clip``) and
its text tower is the embedded text encoder of caption-conditioned Shapes models
(``conditioning.text.TextEncoder("embedded:shapes-clip", kind="clip")``).

The tokenizer is a CLIP byte-pair tokenizer whose merges are learned from the Shapes caption vocabulary with
``tokenizers``' BPE trainer, so every caption word is one token; unseen words fall back to single characters. It
loads with ``CLIPTokenizer`` and ``CLIPTokenizerFast``.

The vision tower is trained at 32 pixels (patch 4, 8x8 patches). The images come from a pool rendered once, at 32
pixels (``--every-64 0``) or at 64 pixels whose 2x2 area averages are the 32-pixel inputs; the evaluator reads
64-pixel images the same way, and states the accuracies at both sizes. Since Shapes renders originals at their own
pixel size, a 64-px render averaged to 32 is sharper than a 32-px render: the 32-px pool matches the 32-px suites.
``--every-64 K`` additionally trains every K-th step on the 64-pixel images with interpolated position embeddings
(four times the cost per step on a shared CPU).
Rendering fresh images every step would cost more than the training, so the pool is reused.

Deterministic for a given thread count: fixed seeds, a fixed data order, CPU only.

Usage (from the repository root)::

    python scripts/train_shapes_clip.py --out data/weights/shapes-clip
"""

from __future__ import annotations

import argparse
import json
import string
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

# Run as a plain script from a checkout: make the repository root importable for ``data.shapes``.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.shapes import _CAPTION_NAMES, COLOURS, Shapes  # noqa: E402

SIZE_WORDS = ("small", "medium", "large")
DIRECTIONS = ("right", "left")  # index 1 = mirrored (the asymmetric kinds are drawn facing right)
ASYMMETRIC = tuple(_CAPTION_NAMES)
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv: Arguments (defaults to ``sys.argv[1:]``).
    """
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-size", type=int, default=8000, help="training images rendered once (the pool)")
    p.add_argument("--val-size", type=int, default=1000, help="held-out val images for the stated accuracies")
    p.add_argument("--steps", type=int, default=1200, help="optimisation steps")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--every-64", type=int, default=4, help="every this-many steps trains at 64 px (0: never)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (cosine decay to 5%%)")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--width", type=int, default=64, help="hidden size of both towers")
    p.add_argument("--layers", type=int, default=3, help="transformer layers of both towers")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--projection-dim", type=int, default=64)
    p.add_argument("--patch-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("data/weights/shapes-clip"), help="output folder")
    p.add_argument("--init", type=Path, default=None, help="continue from the weights in this folder (same sizes)")
    p.add_argument(
        "--pool-resolution", type=int, default=None, help="render the pool at 32 or 64 px (default: 64 with --every-64)"
    )
    p.add_argument("--evaluate-only", action="store_true", help="only measure the accuracies of the model in --out")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------- data
def caption_attributes(caption: str) -> tuple[int, int, int, int]:
    """(size, colour, background, direction) indices read from a Shapes caption."""
    words = caption.split()
    colours = list(COLOURS)
    direction = 1 if " left" in caption else 0
    return SIZE_WORDS.index(words[1]), colours.index(words[2]), colours.index(words[-2]), direction


def render(split: str, n: int, seed: int, resolution: int = 64) -> dict[str, Tensor | list[str]]:
    """``n`` Shapes items at ``resolution`` (64 or 32) px: uint8 images, captions and attribute labels."""
    return render_at(split, n, seed, resolution)


def render_at(split: str, n: int, seed: int, resolution: int) -> dict[str, Tensor | list[str]]:
    """``n`` Shapes items at ``resolution``: uint8 images, captions and attribute labels."""
    shapes = Shapes(split, resolution=resolution, length=n, seed=seed)
    images, captions, labels = [], [], []
    for i in range(n):
        item = shapes[i]
        images.append(((item["image"] + 1) * 127.5).round().to(torch.uint8))
        captions.append(item["caption"])
        labels.append((int(item["class_label"]), *caption_attributes(item["caption"])))
    lab = torch.tensor(labels)
    kinds = [Shapes.CLASS_NAMES[k] for k in lab[:, 0].tolist()]
    asym = torch.tensor([k in ASYMMETRIC for k in kinds])
    return {
        "images": torch.stack(images),
        "captions": captions,
        "class": lab[:, 0],
        "size": lab[:, 1],
        "colour": lab[:, 2],
        "background": lab[:, 3],
        "direction": lab[:, 4],
        "asymmetric": asym,
    }


def to_input(images: Tensor, size: int) -> Tensor:
    """uint8 images to float [-1, 1] at ``size`` (a 64-px pool is area-averaged to 32; a 32-px pool is used as is).

    Shapes renders its originals at their own pixel size (8-32 px at 32 px, 16-64 at 64), so a 64-px render
    area-averaged to 32 is sharper than the 32-px render of the same item: train at 32 on a 32-px pool.
    """
    x = images.float() / 127.5 - 1
    return F.avg_pool2d(x, x.shape[-1] // size) if x.shape[-1] != size else x


# ---------------------------------------------------------------------------------------------- tokenizer
def caption_corpus() -> list[str]:
    """Every word a Shapes caption (or a class prompt) can contain, in caption-like sentences."""
    names = [_CAPTION_NAMES.get(k, k).format(dir=d) for k in Shapes.CLASS_NAMES for d in DIRECTIONS]
    out = []
    for size in SIZE_WORDS:
        for colour in COLOURS:
            for name in names:
                for bg in ("a", "an"):
                    out.append(f"a {size} {colour} {name} on {bg} {colour} background")
    out += [f"a photo of a {k}" for k in Shapes.CLASS_NAMES]
    return out


def build_tokenizer(folder: Path):
    """Learn BPE merges on the caption vocabulary and write a CLIP tokenizer (vocab.json, merges.txt) to ``folder``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    tk = Tokenizer(models.BPE(unk_token=EOS, end_of_word_suffix="</w>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    alphabet = list(string.ascii_lowercase + string.digits + string.punctuation)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        min_frequency=1,
        special_tokens=[BOS, EOS],
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tk.train_from_iterator(caption_corpus(), trainer)
    tmp = Path(tempfile.mkdtemp())
    tk.model.save(str(tmp))
    vocab = json.loads((tmp / "vocab.json").read_text())
    for ch in alphabet:  # every character also as a word end, so any word can be spelled out
        for token in (ch, ch + "</w>"):
            vocab.setdefault(token, len(vocab))
    (tmp / "vocab.json").write_text(json.dumps(vocab))
    merges = [line for line in (tmp / "merges.txt").read_text().splitlines() if line and not line.startswith("#")]
    (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(
        str(tmp / "vocab.json"), str(tmp / "merges.txt"), bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=EOS
    )
    tokenizer.model_max_length = 77
    tokenizer.save_pretrained(folder)
    for name in ("vocab.json", "merges.txt"):  # the slow CLIPTokenizer's files, next to tokenizer.json
        (folder / name).write_text((tmp / name).read_text())
    return tokenizer


# ---------------------------------------------------------------------------------------------- model
def build_model(args: argparse.Namespace, tokenizer) -> nn.Module:
    """The untrained ``CLIPModel`` described by the CLI arguments."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    common = {
        "hidden_size": args.width,
        "intermediate_size": 2 * args.width,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads,
        "projection_dim": args.projection_dim,
    }
    text = CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **common,
    )
    vision = CLIPVisionConfig(image_size=32, patch_size=args.patch_size, num_channels=3, **common)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=args.projection_dim)
    return CLIPModel(config)


HEAD_NAMES = {
    "class": list(Shapes.CLASS_NAMES),
    "direction": list(DIRECTIONS),
    "size": list(SIZE_WORDS),
    "colour": list(COLOURS),
    "background": list(COLOURS),
}


def text_features(model, input_ids: Tensor) -> Tensor:
    """Projected caption embeddings (spelled out: ``get_text_features``' return type differs across versions)."""
    return model.text_projection(model.text_model(input_ids=input_ids).pooler_output)


def forward(model, heads, images: Tensor, size: int, input_ids: Tensor | None = None, train_64: bool = False):
    """Pooled image feature, head logits, and (with ``input_ids``) the CLIP logits of the batch."""
    x = to_input(images, size if train_64 else 32)
    pool = model.vision_model(pixel_values=x, interpolate_pos_encoding=train_64 and size != 32).pooler_output
    logits = {name: head(pool) for name, head in heads.items()}
    clip_logits = None
    if input_ids is not None:
        img = F.normalize(model.visual_projection(pool), dim=-1)
        txt = F.normalize(text_features(model, input_ids), dim=-1)
        clip_logits = model.logit_scale.exp() * img @ txt.T
    return pool, logits, clip_logits


def head_loss(logits: dict[str, Tensor], data: dict, idx: Tensor) -> Tensor:
    loss = sum(F.cross_entropy(logits[k], data[k][idx]) for k in ("class", "size", "colour", "background"))
    asym = data["asymmetric"][idx]
    if asym.any():
        loss = loss + F.cross_entropy(logits["direction"][asym], data["direction"][idx][asym])
    return loss


@torch.no_grad()
def accuracies(model, heads, data: dict, size: int, tokenizer, train_64: bool = False) -> dict[str, float]:
    """Head accuracies and caption-retrieval accuracy (among 100-caption blocks) on ``data`` at ``size`` px."""
    model.eval()
    n = data["images"].shape[0]
    logits: dict[str, list[Tensor]] = {}
    embeds = []
    for lo in range(0, n, 250):
        pool, out, _ = forward(model, heads, data["images"][lo : lo + 250], size, train_64=train_64)
        embeds.append(F.normalize(model.visual_projection(pool), dim=-1))
        for k, v in out.items():
            logits.setdefault(k, []).append(v)
    res = {}
    for k, v in logits.items():
        pred = torch.cat(v).argmax(-1)
        mask = data["asymmetric"] if k == "direction" else torch.ones(n, dtype=torch.bool)
        res[f"{k}_accuracy"] = float((pred[mask] == data[k][mask]).float().mean())
    ids = tokenizer(data["captions"], padding=True, return_tensors="pt")["input_ids"]
    txt = F.normalize(text_features(model, ids), dim=-1)
    img = torch.cat(embeds)
    hits = []
    for lo in range(0, n - 99, 100):  # image -> its own caption among the 100 captions of its block
        sims = img[lo : lo + 100] @ txt[lo : lo + 100].T
        hits.append((sims.argmax(-1) == torch.arange(sims.shape[0])).float())
    res["retrieval_top1_in_100"] = float(torch.cat(hits).mean())
    model.train()
    return res


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.evaluate_only:
        stated_accuracies(args.out, args.val_size, args.seed)
        return
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    if args.init is not None:  # the init weights' token ids: BPE training breaks frequency ties differently per run
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.init)
        tokenizer.save_pretrained(args.out)
        for name in ("vocab.json", "merges.txt"):
            (args.out / name).write_text((args.init / name).read_text())
    else:
        tokenizer = build_tokenizer(args.out)
    pool = args.pool_resolution or (64 if args.every_64 else 32)
    if pool not in (32, 64) or (args.every_64 and pool != 64):
        raise SystemExit(f"--pool-resolution must be 32 or 64, and 64 with --every-64 (got {pool})")
    train = render("train", args.train_size, args.seed, pool)
    val = render("val", args.val_size, args.seed, pool)
    print(f"rendered {args.train_size} + {args.val_size} images in {time.time() - start:.0f} s", flush=True)
    train_ids = tokenizer(train["captions"], padding=True, return_tensors="pt")["input_ids"]

    model = build_model(args, tokenizer)
    heads = nn.ModuleDict({k: nn.Linear(args.width, len(v)) for k, v in HEAD_NAMES.items()})
    if args.init is not None:  # fine-tune shipped weights on a new pool instead of starting from scratch
        model.load_state_dict(load_file(str(args.init / "model.safetensors")))
        heads.load_state_dict(load_file(str(args.init / "heads.safetensors")))
        print(f"initialised from {args.init}", flush=True)
    params = list(model.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.05)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.05 + 0.95 * 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item())

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    order = torch.Generator().manual_seed(args.seed)
    perm, cursor = torch.randperm(args.train_size, generator=order), 0
    train_start = time.time()
    for step in range(args.steps):
        if cursor + args.batch_size > args.train_size:
            perm, cursor = torch.randperm(args.train_size, generator=order), 0
        idx = perm[cursor : cursor + args.batch_size]
        cursor += args.batch_size
        size = 64 if args.every_64 and step % args.every_64 == args.every_64 - 1 else 32
        ids = train_ids[idx]
        _, logits, clip_logits = forward(model, heads, train["images"][idx], size, ids, train_64=size == 64)
        # Identical captions in a batch are all positives: spread the target over them.
        same = (ids[:, None, :] == ids[None, :, :]).all(-1).float()
        target = same / same.sum(-1, keepdim=True)
        contrastive = 0.5 * (F.cross_entropy(clip_logits, target) + F.cross_entropy(clip_logits.T, target))
        loss = contrastive + head_loss(logits, train, idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)  # at most 100, as CLIP
        if step % args.log_every == 0 or step == args.steps - 1:
            print(
                f"step {step:5d}  {size} px  loss {loss.item():.3f}  contrastive {contrastive.item():.3f}  "
                f"{time.time() - train_start:.0f} s",
                flush=True,
            )
    train_seconds = time.time() - train_start

    model.eval()
    sizes = (32, 64) if pool == 64 else (32,)  # a 32-px pool has no 64-px view (the evaluator's figures have both)
    results = {f"val_{size}px": accuracies(model, heads, val, size, tokenizer, args.every_64 > 0) for size in sizes}
    results["train_seconds"] = round(train_seconds, 1)
    results["total_seconds"] = round(time.time() - start, 1)
    results["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    print(json.dumps(results, indent=2), flush=True)

    model.save_pretrained(args.out)
    save_file({k: v.contiguous() for k, v in heads.state_dict().items()}, str(args.out / "heads.safetensors"))
    (args.out / "heads.json").write_text(json.dumps(HEAD_NAMES, indent=2))
    (args.out / "training_metrics.json").write_text(json.dumps(results, indent=2))
    stated_accuracies(args.out, args.val_size, args.seed)


def stated_accuracies(folder: Path, n: int, seed: int = 0) -> dict:
    """The accuracies the README states, measured through the evaluator itself on val renders at 32 and 64 px."""
    from benchmark.evaluation.shapes_clip import ShapesCLIP

    clip = ShapesCLIP.load(str(folder))
    results = {}
    for resolution in (32, 64):
        data = render_at("val", n, seed, resolution)
        pred = clip.predict(data["images"])
        res = {}
        for head in pred:
            mask = data["asymmetric"] if head == "direction" else torch.ones(n, dtype=torch.bool)
            res[f"{head}_accuracy"] = float((pred[head][mask] == data[head][mask]).float().mean())
        res["clip_score_matched"] = clip.clip_score(data["images"], data["captions"])
        shifted = data["captions"][1:] + data["captions"][:1]
        res["clip_score_mismatched"] = clip.clip_score(data["images"], shifted)
        results[f"val_{resolution}px"] = res
    print(json.dumps(results, indent=2), flush=True)
    (folder / "stated_accuracies.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
