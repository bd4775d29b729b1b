"""Crop policies record what they applied; ImageNet substitutes, counts and limits bad images; balanced val labels."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.bad_input import BadInputCounter, BadInputMonitor, TooManyBadInputs
from data.crop_policy import CropPolicy
from data.imagenet import ImageNetDataModule, balanced_subset, eval_policy
from data.transforms import CenterCropFlip

sys.path.insert(0, str(Path(__file__).parent))
from realdata_fixtures import make_imagefolder  # noqa: E402


def _photo(h=30, w=50, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _crop_from_control(photo, control, size):
    """Re-render the recorded crop box from the original photo: must match what the policy returned."""
    top, left = control["crop_coords"].tolist()
    h, w = control["crop_size"].tolist()
    out = photo.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + w, top + h))
    if float(control["flip"]):
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.asarray(out).astype(np.float32) / 127.5 - 1).permute(2, 0, 1)


@pytest.mark.parametrize("policy", ["center", "random_crop", "random_resized_crop"])
def test_recorded_crop_box_reproduces_the_output(policy):
    photo = _photo()
    for seed in range(4):
        image, control = CropPolicy(policy)(photo, 16, np.random.default_rng(seed))
        assert control["orig_size"].tolist() == [30, 50]
        # the box in original pixels, re-rendered, gives the same picture (up to resampling differences)
        assert (image - _crop_from_control(photo, control, 16)).abs().mean() < 0.08


def test_adm_center_is_the_reference_transform_and_random_crop_moves():
    photo = _photo()
    image, control = CropPolicy("adm_center")(photo, 16, flip=False)
    ref, ref_control = CenterCropFlip(16, 0.0)(photo)
    assert torch.equal(image, ref) and all(torch.equal(control[k], ref_control[k]) for k in control)
    lefts = {
        CropPolicy("random_crop", 0.0)(photo, 16, np.random.default_rng(s))[1]["crop_coords"][1].item()
        for s in range(8)
    }
    assert len(lefts) > 3  # offsets along the long side vary
    assert all(0 <= v <= 50 - 30 + 1 for v in lefts)  # in original pixels


def test_aspect_preserving_keeps_the_whole_image():
    image, control = CropPolicy("aspect_preserving", 0.0)(_photo(30, 60), 20, flip=False)
    top, left = control["crop_coords"].tolist()
    assert left == 0 and top < 0  # the square around the image extends above and below it
    assert control["crop_size"].tolist() == [60, 60]
    assert image.shape == (3, 20, 20) and image[:, 0].abs().max() < 0.01  # grey band on top


def test_policy_per_resolution_and_validation():
    policy = CropPolicy("center", by_resolution={256: "random_crop"})
    assert policy.policy_at(256) == "random_crop" and policy.policy_at(512) == "center"
    assert policy.is_random(256) and not policy.is_random(512)
    assert eval_policy(policy).policy_at(256) == "center" and eval_policy(policy).flip_p == 0
    with pytest.raises(ValueError, match="unknown crop policy 'zoom'"):
        CropPolicy("zoom")


def test_counter_stops_above_the_fraction_only_after_min_items():
    counter = BadInputCounter(max_fraction=0.25, min_items=4, name="x")
    counter.add_bad("corrupt_image", "a.jpg")  # 1 of 1, but fewer than min_items
    counter.good(2)
    with pytest.raises(TooManyBadInputs, match=r"2 of 4 items were bad \(50\.00% > 25\.00%.*last: empty_caption at b"):
        counter.add_bad("empty_caption", "b")  # 2 of 4 = 50%: stop
    assert counter.reasons == {"corrupt_image": 1, "empty_caption": 1}
    monitor = BadInputMonitor(BadInputCounter(max_fraction=0.5, min_items=0))
    assert monitor.update({"bad_input": torch.tensor([0, 1, 0, 0])}) == 1
    assert monitor.metrics() == {"data/bad_inputs": 1.0, "data/bad_fraction": 0.25}


@pytest.fixture
def folder(tmp_path):
    return make_imagefolder(tmp_path / "imagenet")


def test_imagenet_substitutes_counts_and_resumes_identically(folder):
    dm = ImageNetDataModule(
        root=str(folder), resolution=16, batch_size=2, num_workers=0, num_classes=3,
        crop_policy=CropPolicy("random_crop"), max_bad_fraction=0.9, min_items_before_stop=2,
    )  # fmt: skip
    dm.setup("fit")
    train = dm.train_set
    bad = next(i for i, (p, _) in enumerate(train.samples) if p.endswith("c1/img2.jpg"))
    item = train[(bad, 7)]
    assert int(item["bad_input"]) == 1 and int(item["class_label"]) == 1  # the next readable image (c1/img3)
    assert train.counter.reasons == {"corrupt_image": 1}
    again = train[(bad, 7)]
    assert torch.equal(item["image"], again["image"])  # a pure function of (seed, position, index)
    other = train[(bad + 1, 7)]
    assert torch.equal(item["image"], other["image"])  # the substitute is exactly the next item
    # every batch is full and the main process counts the substitutes it trains on
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 16, 16) and "bad_input" in batch


def test_imagenet_stops_with_a_clear_message(folder):
    dm = ImageNetDataModule(root=str(folder), resolution=16, num_workers=0, num_classes=3, max_bad_fraction=0.01,
                            min_items_before_stop=1)  # fmt: skip
    dm.setup("fit")
    with pytest.raises(TooManyBadInputs, match=r"ImageNet train: 1 of .* items were bad.*c1/img2\.jpg"):
        [dm.train_set[i] for i in range(len(dm.train_set))]


def test_balanced_val_and_fid_labels(folder):
    dm = ImageNetDataModule(root=str(folder), resolution=16, num_workers=0, num_classes=3, val_per_class=1)
    dm.setup("validate")
    assert [label for _, label in dm.val_set.samples] == [0, 1, 2]
    assert dm.fid_labels(7).tolist() == [0, 1, 2, 0, 1, 2, 0]
    val = dm.val_set[0]
    assert float(val["control"]["flip"]) == 0
    with pytest.raises(ValueError, match="fewer images"):
        balanced_subset([("a", 0), ("b", 1), ("c", 1)], 2)


def test_random_crop_refuses_a_latent_cache(folder):
    dm = ImageNetDataModule(root=str(folder), resolution=16, num_workers=0, num_classes=3,
                            crop_policy=CropPolicy("random_resized_crop"))  # fmt: skip
    dm.setup("validate")
    with pytest.raises(ValueError, match="latent cache would freeze"):
        dm.train_set.cache_key()
