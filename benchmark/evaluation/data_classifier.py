"""An evaluator for any labelled dataset, offline: a small classifier trained once on the data's own train split.

The Shapes CLIP judges Shapes; Inception needs a download. For a user's labelled ImageFolder on a machine without
network access, `DataClassifier.for_data(datamodule)` trains a small CNN on the train split (a few seconds to
minutes on a CPU, once), caches it under a key made from the file list, sizes and modification times of the train
and val images (as `data.latent_cache` keys its caches) plus the training settings and this file's code, and gives:

- ``evaluator_val_accuracy``: its own accuracy on the val split. A judge that cannot tell the classes apart on real
  images cannot tell them apart on samples either: read the other numbers only when this is well above chance.
- ``class_accuracy``: the fraction of samples it assigns to the class they were asked for.
- ``fd_data``: the Fréchet distance of its penultimate features (64-d), generated vs the reference split. Not FID:
  it compares only with other ``fd_data`` numbers of the same data (and the same cached classifier).
- ``precision`` / ``recall`` in the same features, when the protocol asks.

Use it with ``feature_extractor: data-classifier`` in a protocol (``ldmbench evaluate`` picks it for an
ImageFolder that is not ImageNet); see docs/evaluation.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.evaluation.metrics import MetricUnavailable

__all__ = ["DataClassifier", "classifier_key"]

log = logging.getLogger(__name__)
_CODE = Path(__file__)
INPUT_SIZE = 32  # images are area-resized to at most this side: cheap to train, enough for class and layout


class _Net(nn.Module):
    def __init__(self, num_classes: int, width: int = 32, feature_dim: int = 64) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU())

        self.body = nn.Sequential(
            block(3, width), nn.AvgPool2d(2), block(width, 2 * width), nn.AvgPool2d(2), block(2 * width, feature_dim)
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x).mean((2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _files_of(dataset: Any) -> list[tuple[str, int, int, int]]:
    """(path, label, size, mtime_ns) of every file of an ImageFolder-like dataset (``samples``)."""
    samples = getattr(dataset, "samples", None)
    if samples is None:
        raise MetricUnavailable(
            f"data-classifier needs an image-folder dataset with a file list; {type(dataset).__name__} has none"
        )
    out = []
    for path, label in samples:
        st = os.stat(path)
        out.append((str(path), int(label), st.st_size, st.st_mtime_ns))
    return out


def classifier_key(datamodule: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """What determines the trained classifier: both splits' files (path, label, size, mtime), settings, code."""
    digest = hashlib.sha256()
    for split in ("train_set", "val_set"):
        digest.update(json.dumps(_files_of(getattr(datamodule, split)), separators=(",", ":")).encode())
    return {
        "files_sha256": digest.hexdigest(),
        "resolution": int(datamodule.resolution),
        "num_classes": int(datamodule.num_classes),
        "settings": settings,
        "code_sha256": hashlib.sha256(_CODE.read_bytes()).hexdigest()[:16],
    }


def _classifier_root() -> Path:
    from benchmark.evaluation.frechet import cache_dir

    return cache_dir().parent / "classifiers"


def _to_input(images: Tensor) -> Tensor:
    """uint8 (N, 3, H, W) -> float in [-1, 1] at most INPUT_SIZE px (area-averaged)."""
    x = images.float() / 127.5 - 1
    if x.shape[-1] > INPUT_SIZE or x.shape[-2] > INPUT_SIZE:
        x = F.adaptive_avg_pool2d(x, (min(INPUT_SIZE, x.shape[-2]), min(INPUT_SIZE, x.shape[-1])))
    return x


def _load_split(dataset: Any, limit: int) -> tuple[Tensor, Tensor]:
    from benchmark.evaluation.generate import to_uint8

    n = min(len(dataset), limit)
    if n == 0:
        raise MetricUnavailable(f"data-classifier: the {getattr(dataset, 'split', '')} split has no images")
    items = [dataset[i] for i in range(n)]
    images = to_uint8(torch.stack([it["image"] for it in items]))
    return images, torch.tensor([int(it["class_label"]) for it in items])


class DataClassifier:
    """The trained classifier and its metrics. Build with `DataClassifier.for_data`.

    Args:
        net: The network (eval mode).
        key: Its cache key (recorded in the reference statistics' spec).
        val_accuracy: Its accuracy on the val split.
    """

    def __init__(self, net: nn.Module, key: dict[str, Any], val_accuracy: float) -> None:
        self.net = net.eval().requires_grad_(False)
        self.key = key
        self.val_accuracy = float(val_accuracy)

    @classmethod
    def for_data(
        cls,
        datamodule: Any,
        *,
        steps: int = 1500,
        batch_size: int = 64,
        max_images: int = 20_000,
        seed: int = 0,
        root: str | Path | None = None,
    ) -> DataClassifier:
        """The classifier of this data: loaded from the cache, or trained on its train split and cached.

        Args:
            datamodule: A labelled DataModule with ``train_set`` / ``val_set`` image-folder datasets.
            steps: Optimizer steps (at most 30 passes over the train images).
            batch_size: Images per step.
            max_images: At most this many train (and val) images are read.
            seed: Seed of the initialisation and the batch order.
            root: Cache folder (default ``<LDMBENCH_CACHE or ~/.cache/ldmbench>/classifiers``).
        """
        if getattr(datamodule, "train_set", None) is None and hasattr(datamodule, "setup"):
            datamodule.setup("fit")
        if getattr(datamodule, "train_set", None) is None or getattr(datamodule, "val_set", None) is None:
            raise MetricUnavailable(
                f"data-classifier needs labelled train and val splits; {type(datamodule).__name__} has none"
            )
        settings = {"steps": steps, "batch_size": batch_size, "max_images": max_images, "seed": seed}
        flip = bool(getattr(datamodule, "random_flip", False))
        settings["flip"] = flip
        key = classifier_key(datamodule, settings)
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        folder = Path(root) if root is not None else _classifier_root()
        folder = folder / f"classifier-{digest}"
        num_classes = int(datamodule.num_classes)
        net = _Net(num_classes)
        meta_path = folder / "meta.json"
        if meta_path.exists():
            from safetensors.torch import load_file

            meta = json.loads(meta_path.read_text())
            if meta.get("key") == json.loads(json.dumps(key)):
                net.load_state_dict(load_file(folder / "model.safetensors"))
                log.info("data-classifier: cached (%s), val accuracy %.3f", folder, meta["val_accuracy"])
                return cls(net, key, meta["val_accuracy"])
        start = time.perf_counter()
        train_x, train_y = _load_split(datamodule.train_set, max_images)
        val_x, val_y = _load_split(datamodule.val_set, max_images)
        _train(net, _to_input(train_x), train_y, steps, batch_size, seed, flip)
        net.eval()
        with torch.no_grad():
            val_acc = float((net(_to_input(val_x)).argmax(1) == val_y).float().mean())
        seconds = time.perf_counter() - start
        log.info("data-classifier: trained in %.1f s on %d images, val accuracy %.3f", seconds, len(train_y), val_acc)
        folder.mkdir(parents=True, exist_ok=True)
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, folder / "model.safetensors")
        meta = {"key": key, "val_accuracy": val_acc, "train_images": len(train_y), "seconds": seconds}
        tmp = meta_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, meta_path)  # the meta file is written last: a half-written cache is never read
        return cls(net, key, val_acc)

    # ------------------------------------------------------------------------------------------ extractor
    @torch.no_grad()
    def outputs(self, images: Tensor) -> dict[str, Tensor]:
        """``features`` (N, 64) and ``logits`` (N, K) of uint8 images."""
        if images.dtype != torch.uint8:
            raise TypeError(f"DataClassifier reads uint8 images in [0, 255], got {images.dtype}")
        feats, logits = [], []
        for lo in range(0, images.shape[0], 512):
            f = self.net.features(_to_input(images[lo : lo + 512]))
            feats.append(f.double())
            logits.append(self.net.head(f).double())
        return {"features": torch.cat(feats), "logits": torch.cat(logits)}

    def features(self, images: Tensor) -> Tensor:
        return self.outputs(images)["features"]

    def spec(self) -> dict[str, Any]:
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:16]
        return {"extractor": "data-classifier", "layer": "features", "weights_sha256": digest}

    def metrics(
        self,
        generated: Any,
        reference: tuple[Any, Any],
        *,
        real_features: Tensor | None = None,
        bootstrap_reps: int = 200,
    ) -> dict[str, float]:
        """``fd_data``, ``class_accuracy`` (when labels were asked for), ``precision`` / ``recall`` (with real
        features) with their ``_sd``, and ``evaluator_val_accuracy``."""
        from benchmark.evaluation import metrics as M

        out = self.outputs(generated.images)
        labels = None if generated.labels is None else generated.labels.cpu().reshape(-1)
        reps = {"bootstrap_reps": bootstrap_reps}
        updates: list[tuple[M.FeatureMetric, Any, Any]] = [
            (M.FrechetDistance(reference, name="fd_data", **reps), out["features"], labels)
        ]
        if labels is not None:
            updates.append((M.ClassAccuracy(**reps), out["logits"], labels))
        if real_features is not None:
            updates.append((M.PrecisionRecall(real_features, **reps), out["features"], None))
        metrics = M.measure_all(updates)
        metrics["evaluator_val_accuracy"] = self.val_accuracy
        return metrics


def _train(net: nn.Module, x: Tensor, y: Tensor, steps: int, batch_size: int, seed: int, flip: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # a seeded initialisation that leaves the caller's RNG alone
        torch.manual_seed(seed)
        for m in net.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                m.reset_parameters()
    steps = min(steps, max(1, 30 * int(np.ceil(len(y) / batch_size))))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (min(batch_size, len(y)),), generator=gen)
        xb = x[idx]
        if flip:  # the data's own augmentation: the classifier must not read a flip as a class
            mask = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(mask[:, None, None, None], xb.flip(-1), xb)
        loss = F.cross_entropy(net(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
