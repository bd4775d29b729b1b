"""The embedded Shapes evaluator: its stated accuracies, and fd_shapes sanity (real data, noise, (un)trained models)."""

import json
from pathlib import Path

import pytest
import torch

from baselines.dit import DiTModule
from benchmark.evaluation import EvalProtocol, generate
from benchmark.evaluation.frechet import frechet_distance, stats_from_features
from benchmark.evaluation.generate import to_uint8
from benchmark.evaluation.shapes_clip import ShapesCLIP
from benchmark.guidance import ClassifierFreeGuidance
from benchmark.objectives import RectifiedFlow
from benchmark.samplers import EulerSampler
from data.autoencoder import Autoencoder
from data.shapes import Shapes

WEIGHTS = Path(__file__).resolve().parents[3] / "data" / "weights" / "shapes-clip"
STEPS = 80  # 45 steps were not enough to pass the bar below (fd_shapes 144.5 -> 127.0 on the earlier Shapes)


@pytest.fixture(scope="module")
def clip():
    return ShapesCLIP.load()


def _real(split: str, n: int, resolution: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    shapes = Shapes(split, resolution=resolution, length=n)
    items = [shapes[i] for i in range(n)]
    return to_uint8(torch.stack([it["image"] for it in items])), torch.tensor([int(it["class_label"]) for it in items])


@pytest.fixture(scope="module")
def train_stats(clip):
    return stats_from_features(clip.features(_real("train", 600)[0]))


def _fd(clip, images, reference) -> float:
    return frechet_distance(*stats_from_features(clip.features(images)), *reference)


@pytest.mark.parametrize("resolution", [32, 64])
def test_class_accuracy_on_real_val_images_is_what_the_weights_state(clip, resolution):
    stated = json.loads((WEIGHTS / "stated_accuracies.json").read_text())[f"val_{resolution}px"]
    assert stated["class_accuracy"] >= 0.98  # an evaluator of class accuracy must read real images almost perfectly
    images, labels = _real("val", 500, resolution)
    predicted = clip.predict(images)
    accuracy = float((predicted["class"] == labels).float().mean())
    assert accuracy >= stated["class_accuracy"] - 0.02  # 500 of the 1,000 images the figure was stated on
    # Colour is what the evaluator reads best; a broken preprocessing path (range, resize) would lose it first.
    assert stated["colour_accuracy"] >= 0.95


def test_fd_shapes_of_real_val_is_far_below_noise_and_an_untrained_model(clip, train_stats):
    real = _fd(clip, _real("val", 200)[0], train_stats)
    noise = _fd(
        clip,
        torch.randint(0, 256, (200, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8),
        train_stats,
    )
    torch.manual_seed(0)
    untrained = DiTModule(
        size="DiT-tiny/2",
        num_classes=10,
        resolution=32,
        autoencoder=Autoencoder("embedded:shapes-vae"),
        objective=RectifiedFlow(),
        sampler=EulerSampler(steps=4),
        guidance=ClassifierFreeGuidance(semantic_scale=1.0),
    )
    torch.nn.init.normal_(untrained.ema.shadow.final_layer.linear.weight, std=0.02)  # not the zero-init identity
    samples = generate(untrained, EvalProtocol(num_samples=200, batch_size=200, flow_steps=4), 1.0).images
    model = _fd(clip, samples, train_stats)
    assert real < 0.1 * noise
    assert real < 0.5 * model, (real, model, noise)


def test_a_briefly_trained_tiny_model_beats_its_initialisation(clip, train_stats):
    torch.manual_seed(0)
    module = DiTModule(
        size="DiT-tiny/2",
        num_classes=10,
        resolution=32,
        autoencoder=Autoencoder("embedded:shapes-vae"),
        objective=RectifiedFlow(),
        sampler=EulerSampler(steps=4),
        guidance=ClassifierFreeGuidance(semantic_scale=1.0),
    )
    protocol = EvalProtocol(num_samples=100, batch_size=100, flow_steps=8, use_ema=False)

    def fd_now() -> float:
        module.eval()
        return _fd(clip, generate(module, protocol, 1.0).images, train_stats)

    before = fd_now()
    shapes = Shapes("train", resolution=32, length=32 * STEPS)
    optimizer = torch.optim.AdamW(module.backbone.parameters(), lr=3e-3, weight_decay=0.0)
    module.train()
    for step in range(STEPS):
        items = [shapes[i] for i in range(32 * step, 32 * (step + 1))]
        batch = {
            "image": torch.stack([it["image"] for it in items]),
            "class_label": torch.stack([it["class_label"] for it in items]),
        }
        loss = module.training_loss(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = fd_now()
    # Photograph-like Shapes (issue 24: soft small originals, cut objects) are harder to learn in 80 steps: fd_shapes
    # 143.5 -> 107.5 (0.75x; 0.7x needed about 140 steps, too slow for this suite).
    assert after < 0.8 * before, (before, after)
