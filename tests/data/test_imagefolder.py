"""ImageFolderDataModule on a tiny on-disk ImageFolder: layout errors, corrupt files, splits, crop metadata."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from data.folder_scan import FolderError
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


def _own_folder(root, extra=None) -> None:
    """A user's folder of 8 px images: class a (one unreadable), class b (one 1x1, one 3x3), and a stray text file."""
    for name, count in (("a", 3), ("b", 3)):
        (root / "train" / name).mkdir(parents=True)
        for i in range(count):
            _write(root / "train" / name / f"{i}.png", 8, 8, seed=i + 10 * len(name))
    (root / "train" / "a" / "bad.png").write_bytes(b"\x89PNG not really")
    _write(root / "train" / "b" / "tiny.png", 1, 1, seed=5)
    _write(root / "train" / "b" / "small.png", 3, 3, seed=6)
    (root / "train" / "b" / "notes.txt").write_text("not an image")


def test_the_scan_prints_one_summary_of_classes_skipped_unreadable_and_small_files(tmp_path, capsys):
    _own_folder(tmp_path)
    dm = ImageFolderDataModule(tmp_path, resolution=8, batch_size=2, num_workers=0, val_fraction=0.2)
    dm.setup("fit")
    out = capsys.readouterr().out
    assert "9 images in 2 classes (4-5 per class: a: 4, b: 5)" in out
    assert "skipped 1 file(s) that are not images" in out and "notes.txt" in out
    assert "1 unreadable file(s)" in out and "bad.png" in out
    assert "1 image(s) with a side below 2 px" in out and "tiny.png" in out  # min side: max(2, 8 // 8)
    assert "1 image(s) below 4 px on their shorter side" in out and "small.png" in out
    assert len(dm.train_set) + len(dm.val_set) == 9  # nothing dropped: the policy replaces at read time


def test_unreadable_and_tiny_images_are_replaced_counted_and_reported_once(tmp_path, capsys, caplog):
    _own_folder(tmp_path)
    truncated = tmp_path / "train" / "a" / "trunc.jpg"  # a header the scan reads; the pixels fail later
    _write(truncated, 8, 8, seed=9)
    truncated.write_bytes(truncated.read_bytes()[:-20])
    dm = ImageFolderDataModule(tmp_path, resolution=8, num_workers=0, min_items_before_stop=0, max_bad_fraction=0.5)
    dm.setup("fit")
    assert "trunc.jpg" not in capsys.readouterr().out
    # Every file once per epoch, in one process (as one persistent loader worker reads them), with the scan's record.
    train = dm.train_set
    dataset = ImageFolderDataset(train.samples + dm.val_set.samples, dm.class_names, 8, 0.0, counter=train.counter)
    dataset.min_side = train.min_side
    with caplog.at_level(logging.WARNING, logger="data.bad_input"):
        for _epoch in range(3):
            items = _all_items(dataset)
    assert len(items) == len(dataset) == 10 and all(item["image"].shape == (3, 8, 8) for item in items)
    assert sum(int(item["bad_input"]) for item in items) == 3
    # Every bad read is counted: per epoch bad.png, then trunc.jpg as bad.png's substitute, then trunc.jpg itself.
    assert dataset.counter.reasons == {"corrupt_image": 9, "too_small": 3}
    assert caplog.text.count("trunc.jpg") == 1  # found while training: warned once, not once per epoch
    assert "bad.png" not in caplog.text and "tiny.png" not in caplog.text  # in the scan's summary already


def test_an_empty_class_folder_is_named_in_one_error(tmp_path):
    _own_folder(tmp_path)
    (tmp_path / "train" / "c").mkdir()
    (tmp_path / "train" / "d").mkdir()
    (tmp_path / "train" / "d" / "readme.txt").write_text("no images here")
    with pytest.raises(FolderError, match=r"2 class folder\(s\) of .* hold no image \(c, d\)"):
        _ = ImageFolderDataModule(tmp_path, resolution=8).num_classes


def test_too_much_bad_input_stops_before_training_naming_the_limit(tmp_path):
    _own_folder(tmp_path)
    dm = ImageFolderDataModule(tmp_path, resolution=8, num_workers=0, max_bad_fraction=0.1, min_items_before_stop=5)
    with pytest.raises(FolderError, match=r"2 of 9 items were bad .*max_bad_fraction"):
        dm.setup("fit")
    fine = ImageFolderDataModule(tmp_path, resolution=8, num_workers=0, max_bad_fraction=0.25, min_items_before_stop=5)
    fine.setup("fit")  # 2 of 9 is under 25%


def test_listing_matches_torchvision_imagefolder(folder):
    from torchvision.datasets import ImageFolder

    from data.folder_scan import list_class_folders

    (folder / "train" / "cat" / "nested").mkdir()
    _write(folder / "train" / "cat" / "nested" / "deep.JPG", 9, 9, seed=3)
    reference = ImageFolder(str(folder / "train"))
    listing = list_class_folders(folder / "train")
    assert listing.samples == reference.samples and listing.classes == reference.classes


def test_declared_num_classes_needs_no_disk_and_is_checked(tmp_path):
    assert ImageFolderDataModule(tmp_path / "absent", num_classes=1000).num_classes == 1000
    root = tmp_path / "tiny"
    for cls in ("a", "b"):
        (root / "train" / cls).mkdir(parents=True)
        Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "train" / cls / "x.png")
    with pytest.raises(ValueError, match="num_classes=3"):
        ImageFolderDataModule(root, num_classes=3).setup()


def test_a_large_folders_scan_is_stored_and_read_back_until_a_file_changes(tmp_path, monkeypatch):
    import data.folder_scan as folder_scan

    _own_folder(tmp_path / "data")
    listing = folder_scan.list_class_folders(tmp_path / "data" / "train")
    first = folder_scan.scan_images(listing, cache_root=tmp_path / "cache", store_from=1)
    assert len(list((tmp_path / "cache" / "folder-scans").glob("*.json"))) == 1

    def no_reads(path):
        raise AssertionError(f"read {path} again")

    monkeypatch.setattr(folder_scan, "_header", no_reads)
    again = folder_scan.scan_images(listing, cache_root=tmp_path / "cache", store_from=1)
    assert (again.counts, again.sizes, again.unreadable) == (first.counts, first.sizes, first.unreadable)
    _write(tmp_path / "data" / "train" / "a" / "0.png", 9, 9, seed=1)  # same path, new content: scanned again
    with pytest.raises(AssertionError, match="read"):
        folder_scan.scan_images(listing, cache_root=tmp_path / "cache", store_from=1)
