"""Precision / recall end to end, one-line refusals, the data-trained evaluator and the disentanglement stand-ins."""

import time

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.evaluation import EvalProtocol, GeneratedSet, evaluate
from benchmark.evaluation.evaluate import flips_trained
from benchmark.evaluation.metrics import MetricUnavailable
from tests.benchmark.evaluation.conftest import tiny_dit
from tests.benchmark.evaluation.test_inception import inception_weights  # noqa: F401  (the re-initialised fixture)


# ------------------------------------------------------------------------------------------------ precision / recall
def test_precision_recall_through_inception_when_asked_and_an_error_when_impossible(inception_weights):  # noqa: F811
    from benchmark.evaluation.inception import InceptionMetrics

    inception = InceptionMetrics(weights_path=str(inception_weights))
    gen = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (4, 3, 32, 32), generator=gen, dtype=torch.uint8)
    fake = GeneratedSet(images=real.flip(-1), labels=None, captions=None, control=None, seconds=1.0)
    feats = inception.features(real)
    reference = (feats.mean(0).numpy(), np.cov(feats.numpy(), rowvar=False))
    protocol = EvalProtocol(precision_recall=True, bootstrap_reps=2)
    out = inception.metrics(fake, reference, protocol, real=real)
    assert {"fid", "precision", "recall", "precision_sd", "recall_sd"} <= set(out)
    assert 0 <= out["precision"] <= 1 and 0 <= out["recall"] <= 1
    with pytest.raises(ValueError, match="real images"):
        inception.metrics(fake, reference, protocol)  # asked for, and no real images: an error, not silence


@pytest.mark.slow  # 6 s: Inception at 299 px on the CPU; the unit test above covers the metric itself
def test_evaluate_reports_precision_recall_with_inception_offline(tiny_vae, inception_weights, tmp_path):  # noqa: F811
    torch.manual_seed(0)
    module = tiny_dit(tiny_vae)
    protocol = EvalProtocol(
        num_samples=4,
        batch_size=4,
        flow_steps=1,
        guidance_scale=1.0,
        feature_extractor="inception-v3-compat",
        inception_weights=str(inception_weights),
        reference="shapes:val",
        reference_samples=6,
        precision_recall=True,
        bootstrap_reps=2,
    )
    metrics = evaluate(module, protocol, progress=False, stats_root=str(tmp_path))
    assert {"fid", "precision", "recall"} <= set(metrics)


def test_precision_recall_from_statistics_only_is_an_error(tiny_vae, tmp_path):
    np.savez(tmp_path / "ref.npz", mu=np.zeros(64), sigma=np.eye(64))
    protocol = EvalProtocol(num_samples=2, reference=str(tmp_path / "ref.npz"), precision_recall=True)
    with pytest.raises(ValueError, match="statistics only"):
        evaluate(tiny_dit(tiny_vae), protocol, progress=False)


# ------------------------------------------------------------------------------------------------ refusals
def _image_folder(root, n_per_class: int = 24, size: int = 16, seed: int = 0):
    """Two classes at 16 px: a bright square on dark noise, and a dark disc on bright noise (train and val)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for split, count in (("train", n_per_class), ("val", n_per_class // 2)):
        for name in ("disc", "square"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                img = (
                    rng.integers(0, 60, (size, size, 3))
                    if name == "square"
                    else rng.integers(170, 255, (size, size, 3))
                )
                c, r = rng.integers(5, size - 5, 2), rng.integers(3, 5)
                mask = (
                    (np.abs(yy - c[0]) <= r) & (np.abs(xx - c[1]) <= r)
                    if name == "square"
                    else ((yy - c[0]) ** 2 + (xx - c[1]) ** 2 <= r * r)
                )
                img[mask] = (230, 200, 40) if name == "square" else (20, 40, 160)
                Image.fromarray(img.astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture
def folder_data(tmp_path):
    from data.imagefolder import ImageFolderDataModule

    dm = ImageFolderDataModule(_image_folder(tmp_path / "data"), resolution=16, batch_size=4, num_workers=0)
    dm.setup("fit")
    return dm


def _one_line(error: BaseException) -> bool:
    return "\n" not in str(error) and len(str(error)) < 600


def test_the_shapes_clip_refuses_other_data_in_one_line(tiny_vae, folder_data):
    with pytest.raises(MetricUnavailable, match="Shapes CLIP judges Shapes images only") as info:
        evaluate(tiny_dit(tiny_vae), EvalProtocol(num_samples=2), folder_data, progress=False)
    assert _one_line(info.value)


def test_inception_without_weights_offline_refuses_in_one_line(tmp_path, monkeypatch):
    import torch_fidelity.utils

    from benchmark.evaluation.inception import InceptionMetrics

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(MetricUnavailable) as info:
        InceptionMetrics()
    assert _one_line(info.value) and "inception_weights" in str(info.value)
    # Online but unreachable: the download fails inside torch-fidelity; still one line, no traceback chain.
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def unreachable(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torch_fidelity.utils, "create_feature_extractor", unreachable)
    with pytest.raises(MetricUnavailable, match="could not be downloaded") as info:
        InceptionMetrics()
    assert _one_line(info.value) and info.value.__cause__ is None


def test_flip_metrics_are_refused_for_data_trained_without_flips(tmp_path):
    from data.imagefolder import ImageFolderDataModule
    from data.shapes import ShapesDataModule

    assert flips_trained(ShapesDataModule()) and not flips_trained(ShapesDataModule(augment=False))
    assert not flips_trained(ImageFolderDataModule(tmp_path, resolution=16, random_flip=False))
    assert flips_trained(None)


# ------------------------------------------------------------------------------------------------ data classifier
def test_the_data_classifier_trains_fast_judges_and_is_cached(folder_data, tmp_path):
    from benchmark.evaluation.data_classifier import DataClassifier
    from benchmark.evaluation.frechet import stats_from_features
    from benchmark.evaluation.generate import to_uint8

    start = time.perf_counter()
    judge = DataClassifier.for_data(folder_data, steps=150, root=tmp_path / "cls")
    assert time.perf_counter() - start <= 5.0
    assert judge.val_accuracy >= 0.9  # it can tell the two classes apart on real val images
    again = DataClassifier.for_data(folder_data, steps=150, root=tmp_path / "cls")
    assert again.val_accuracy == judge.val_accuracy
    assert len(list((tmp_path / "cls").iterdir())) == 1  # the same key: loaded, not retrained

    def images(split):
        items = [split[i] for i in range(len(split))]
        return to_uint8(torch.stack([it["image"] for it in items])), torch.tensor([it["class_label"] for it in items])

    train_x, _ = images(folder_data.train_set)
    val_x, val_y = images(folder_data.val_set)
    reference = stats_from_features(judge.features(train_x))
    n = len(val_y) // 2
    halves = [GeneratedSet(val_x[i::2], val_y[i::2], None, None, 1.0) for i in (0, 1)]  # both classes in each
    floor = judge.metrics(halves[0], reference, bootstrap_reps=0)["fd_data"]  # real val vs the reference at n
    pos = judge.metrics(halves[1], reference, real_features=judge.features(train_x), bootstrap_reps=10)
    assert pos["fd_data"] <= 2 * floor
    assert abs(pos["class_accuracy"] - judge.val_accuracy) <= 0.1  # 12 images: one image is 8 points
    assert pos["recall"] >= 0.5 and pos["evaluator_val_accuracy"] == judge.val_accuracy
    gen = torch.Generator().manual_seed(0)
    negatives = {
        "noise": torch.randint(0, 256, (n, 3, 16, 16), generator=gen, dtype=torch.uint8),
        "constant": torch.full((n, 3, 16, 16), 128, dtype=torch.uint8),
    }
    for name, x in negatives.items():
        neg = judge.metrics(GeneratedSet(x, val_y[1::2], None, None, 1.0), reference, bootstrap_reps=0)
        assert neg["fd_data"] >= 10 * floor, name
        assert neg["class_accuracy"] <= 0.5 + 0.05, name


def test_the_data_classifier_key_follows_the_files(folder_data, tmp_path):
    import os

    from benchmark.evaluation.data_classifier import classifier_key

    before = classifier_key(folder_data, {"steps": 1})
    path = folder_data.train_set.samples[0][0]
    os.utime(path, ns=(1, 1))
    assert classifier_key(folder_data, {"steps": 1}) != before


def test_an_image_folder_gets_the_data_classifier_protocol(folder_data):
    from benchmark.evaluation.command import default_protocol

    assert default_protocol(folder_data).feature_extractor == "data-classifier"


def test_evaluate_on_an_image_folder_uses_the_data_classifier(tiny_vae, folder_data):
    from baselines.dit import DiTModule
    from benchmark.evaluation.command import default_protocol
    from benchmark.objectives import RectifiedFlow
    from benchmark.samplers import EulerSampler
    from data.autoencoder import Autoencoder

    torch.manual_seed(0)
    module = DiTModule(
        size="DiT-tiny/2",
        num_classes=2,
        resolution=16,
        autoencoder=Autoencoder(tiny_vae),
        objective=RectifiedFlow(),
        sampler=EulerSampler(steps=1),
    )
    protocol = default_protocol(folder_data).replace(
        num_samples=8, batch_size=8, flow_steps=1, bootstrap_reps=2, reference_samples=48, no_guidance=False
    )
    metrics = evaluate(module, protocol, folder_data, progress=False)
    assert {"fd_data", "class_accuracy", "precision", "recall", "evaluator_val_accuracy"} <= set(metrics)
    assert metrics["evaluator_val_accuracy"] >= 0.9 and "fd_data_sd" in metrics
