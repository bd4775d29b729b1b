"""ImageFolderDataModule on a tiny on-disk ImageFolder: layout errors, corrupt files, splits, crop metadata."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from data.imagefolder import CorruptImageError, ImageFolderDataModule, ImageFolderDataset
from data.transforms import control_to_tensor

SIZES = {"cat": [(40, 60), (90, 50), (33, 33)], "dog": [(64, 100), (120, 70)], "fish": [(50, 51), (80, 40)]}
RES = 16


def _write(path, height: int, width: int, seed: int) -> None:
    array = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(array).save(path)


def _make_split(root, sizes=SIZES) -> None:
    for c, (name, shapes) in enumerate(sizes.items()):
        (root / name).mkdir(parents=True)
        for i, (h, w) in enumerate(shapes):
            _write(root / name / f"{i}.{'png' if i % 2 else 'jpg'}", h, w, seed=10 * c + i)


@pytest.fixture
def folder(tmp_path):
    _make_split(tmp_path / "train")
    return tmp_path


def _all_items(dataset):
    return [dataset[i] for i in range(len(dataset))]


def test_missing_root_and_missing_train_name_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        ImageFolderDataModule(missing).setup()
    with pytest.raises(FileNotFoundError, match="train"):
        _ = ImageFolderDataModule(tmp_path).num_classes


def test_holdout_split_is_deterministic_disjoint_and_complete(folder):
    dm = ImageFolderDataModule(folder, resolution=RES, batch_size=2, num_workers=0, val_fraction=0.3)
    assert dm.num_classes == 3 and dm.class_names == ["cat", "dog", "fish"]
    dm.setup()
    train, val = [p for p, _ in dm.train_set.samples], [p for p, _ in dm.val_set.samples]
    assert len(val) == 2 and len(train) == 5 and not set(train) & set(val)
    again = ImageFolderDataModule(folder, resolution=RES, val_fraction=0.3)
    again.setup()
    assert [p for p, _ in again.val_set.samples] == val


def test_val_folder_is_used_with_train_class_indices(folder):
    _make_split(folder / "val", {"dog": [(30, 40)], "fish": [(41, 30)]})
    dm = ImageFolderDataModule(folder, resolution=RES, batch_size=2, num_workers=0)
    dm.setup()
    assert len(dm.train_set) == 7
    assert [label for _, label in dm.val_set.samples] == [1, 2]
    assert [item["caption"] for item in _all_items(dm.val_set)] == ["a photo of dog", "a photo of fish"]


def test_val_folder_with_unknown_class_raises(folder):
    _make_split(folder / "val", {"bird": [(30, 40)]})
    with pytest.raises(ValueError, match="bird"):
        ImageFolderDataModule(folder).setup()


def test_items_follow_batch_contract_and_centre_crop_geometry(folder):
    dm = ImageFolderDataModule(folder, resolution=RES, batch_size=2, num_workers=0, val_fraction=0.3)
    dm.setup()
    for item, (path, label) in zip(_all_items(dm.train_set), dm.train_set.samples):
        assert item["image"].shape == (3, RES, RES) and item["image"].dtype == torch.float32
        assert item["image"].min() >= -1 and item["image"].max() <= 1
        assert item["class_label"].item() == label and item["caption"] == f"a photo of {dm.class_names[label]}"
        height, width = Image.open(path).size[::-1]
        control = item["control"]
        assert control["orig_size"].tolist() == [height, width]
        top, left = control["crop_coords"].tolist()
        crop_h, crop_w = control["crop_size"].tolist()
        assert -1e-4 <= top and top + crop_h <= height + 1e-4 and -1e-4 <= left and left + crop_w <= width + 1e-4
        # The short side is kept whole; the other is cut to about the same length (up to resize rounding).
        short_crop, long_crop = (crop_h, crop_w) if height <= width else (crop_w, crop_h)
        assert short_crop == pytest.approx(min(height, width), rel=1e-5)
        assert long_crop == pytest.approx(min(height, width), rel=0.05)
        assert control["flip"].item() in (0.0, 1.0)


def test_train_flip_mirrors_and_val_never_flips(folder):
    dm = ImageFolderDataModule(folder, resolution=RES, batch_size=2, num_workers=0, val_fraction=0.3)
    dm.setup()
    fixed = ImageFolderDataset(dm.train_set.samples, dm.class_names, RES, flip_p=0.0)
    flips = 0
    torch.manual_seed(1)
    for _ in range(4):
        for i in range(len(dm.train_set)):
            item, reference = dm.train_set[i], fixed[i]
            flipped = bool(item["control"]["flip"])
            expected = torch.flip(reference["image"], dims=[-1]) if flipped else reference["image"]
            assert torch.equal(item["image"], expected)
            flips += flipped
    assert 0 < flips < 20
    assert all(item["control"]["flip"] == 0 for item in _all_items(dm.val_set))


def test_dataloader_batches(folder):
    dm = ImageFolderDataModule(folder, resolution=RES, batch_size=2, num_workers=0, val_fraction=0.3)
    batches = list(dm.train_dataloader())
    assert len(batches) == 2  # 5 training images, whole batches only
    assert control_to_tensor(batches[0]["control"]).shape == (2, 7)
    assert batches[0]["class_label"].dtype == torch.int64 and len(batches[0]["caption"]) == 2
    assert sum(len(b["caption"]) for b in dm.val_dataloader()) == 2


def test_corrupt_image_raises_naming_the_file(folder):
    bad = folder / "train" / "dog" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    dm = ImageFolderDataModule(folder, resolution=RES, val_fraction=0.1)
    dm.setup()
    samples = dm.train_set.samples + dm.val_set.samples
    dataset = ImageFolderDataset(samples, dm.class_names, RES)
    with pytest.raises(CorruptImageError, match="broken.jpg"):
        _all_items(dataset)


def test_truncated_image_raises(tmp_path):
    path = tmp_path / "truncated.png"
    _write(path, 40, 40, seed=0)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CorruptImageError, match="truncated.png"):
        ImageFolderDataset([(str(path), 0)], ["x"], RES)[0]


def test_skip_corrupt_counts_and_logs(folder, caplog):
    bad = folder / "train" / "cat" / "broken.jpg"
    bad.write_bytes(b"garbage")
    dm = ImageFolderDataModule(folder, resolution=RES, val_fraction=0.1, skip_corrupt=True)
    dm.setup()
    dataset = ImageFolderDataset(dm.train_set.samples + dm.val_set.samples, dm.class_names, RES, skip_corrupt=True)
    with caplog.at_level(logging.WARNING, logger="data.imagefolder"):
        items = _all_items(dataset)
    assert len(items) == len(dataset) == 8
    assert dataset.num_skipped == 1
    assert "broken.jpg" in caplog.text and "1 skipped" in caplog.text


def test_declared_num_classes_needs_no_disk_and_is_checked(tmp_path):
    assert ImageFolderDataModule(tmp_path / "absent", num_classes=1000).num_classes == 1000
    root = tmp_path / "tiny"
    for cls in ("a", "b"):
        (root / "train" / cls).mkdir(parents=True)
        Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "train" / cls / "x.png")
    with pytest.raises(ValueError, match="num_classes=3"):
        ImageFolderDataModule(root, num_classes=3).setup()
