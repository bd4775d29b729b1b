"""Shapes dataset and ShapesDataModule: batch contract, determinism, truthful captions/control, resumable stream."""

import re
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from data.shapes import COLOURS, Shapes, ShapesDataModule
from data.transforms import CONTROL_NAMES, control_to_tensor

RES = 32
ASYMMETRIC = {Shapes.CLASS_NAMES.index(name) for name in ("arrow", "crescent", "L shape")}


@pytest.fixture(scope="module")
def shapes() -> Shapes:
    return Shapes(resolution=RES, length=1000)


def swap_left_right(text: str) -> str:
    return re.sub(r"\b(left|right)\b", lambda m: "right" if m.group(1) == "left" else "left", text)


def test_item_contract(shapes):
    item = shapes[3]
    assert set(item) == {"image", "class_label", "caption", "control"}
    image = item["image"]
    assert image.shape == (3, RES, RES) and image.dtype == torch.float32
    assert image.min() >= -1 and image.max() <= 1
    assert item["class_label"].dtype == torch.int64 and item["class_label"].shape == ()
    assert isinstance(item["caption"], str)
    control = item["control"]
    assert {k: tuple(v.shape) for k, v in control.items()} == {
        "orig_size": (2,),
        "crop_coords": (2,),
        "crop_size": (2,),
        "flip": (),
    }
    assert all(v.dtype == torch.float32 for v in control.values())


def test_deterministic_per_index_split_and_seed(shapes):
    a, b = shapes[11], Shapes(resolution=RES, length=1000)[11]
    assert torch.equal(a["image"], b["image"]) and a["caption"] == b["caption"]
    assert all(torch.equal(a["control"][k], b["control"][k]) for k in a["control"])
    val = Shapes("val", resolution=RES, length=1000)[11]
    other_seed = Shapes(resolution=RES, length=1000, seed=1)[11]
    assert not torch.equal(a["image"], val["image"]) and not torch.equal(a["image"], other_seed["image"])


def test_identical_in_worker_processes(shapes):
    main = torch.stack([shapes[i]["image"] for i in range(8)])
    batch = next(iter(DataLoader(shapes, batch_size=8, num_workers=2)))
    assert torch.equal(batch["image"], main)


def test_invalid_split_and_index():
    with pytest.raises(ValueError, match="split"):
        Shapes("test")
    with pytest.raises(IndexError):
        Shapes(length=5)[5]


def test_classes_balanced_and_include_asymmetric(shapes):
    assert len(shapes.class_names) == 10 and shapes.class_names == list(Shapes.CLASS_NAMES)
    assert {"arrow", "crescent", "L shape"} <= set(shapes.class_names)
    assert [shapes[i]["class_label"].item() for i in range(20)] == [i % 10 for i in range(20)]


def test_forced_flip_mirrors_image_and_caption(shapes):
    swapped = 0
    for i in range(60):
        plain, flipped = shapes.sample(i, flip=False), shapes.sample(i, flip=True)
        assert torch.equal(flipped["image"], torch.flip(plain["image"], dims=[-1]))
        assert flipped["caption"] == swap_left_right(plain["caption"])
        swapped += flipped["caption"] != plain["caption"]
        assert flipped["control"]["flip"] == 1 and plain["control"]["flip"] == 0
        for key in ("orig_size", "crop_coords", "crop_size"):
            assert torch.equal(plain["control"][key], flipped["control"][key])
        assert torch.equal(shapes[i]["image"], shapes.sample(i, flip=bool(shapes[i]["control"]["flip"]))["image"])
    assert swapped == sum(shapes[i]["class_label"].item() in ASYMMETRIC for i in range(60))  # only names change


def test_crop_control_is_within_canvas_and_scale(shapes):
    flips = []
    for i in range(200):
        control = shapes[i]["control"]
        canvas_h, canvas_w = control["orig_size"].tolist()
        top, left = control["crop_coords"].tolist()
        crop_h, crop_w = control["crop_size"].tolist()
        assert canvas_h == canvas_w and RES // 4 <= canvas_h <= RES
        assert 0 <= top and top + crop_h <= canvas_h and 0 <= left and left + crop_w <= canvas_w
        # Integer crop sides on canvases down to 8 px round the area by up to a pixel per side.
        assert (crop_h + 1) * (crop_w + 1) >= shapes.min_scale * canvas_h * canvas_w
        assert 3 / 4 * 0.8 <= crop_w / crop_h <= 4 / 3 * 1.25
        flips.append(control["flip"].item())
    assert 60 < sum(flips) < 140


def test_originals_below_resolution_reference_share_and_deep_crops(shapes):
    """Sizes span 8-32 px at 32 px; >= 10 % are the reference view; crops reach inside and cut the object."""
    controls = [shapes[i]["control"] for i in range(400)]
    sizes = np.array([c["orig_size"][0].item() for c in controls])
    crop_fraction = np.array([(c["crop_size"][1] / c["orig_size"][1]).item() for c in controls])
    reference = [
        c["orig_size"].tolist() == [RES, RES] and c["crop_size"].tolist() == [RES, RES] and c["crop_coords"].sum() == 0
        for c in controls
    ]
    assert sizes.min() <= RES // 4 + 2 and sizes.max() == RES and np.mean(sizes < RES / 2) > 0.25
    assert 0.10 <= np.mean(reference) <= 0.25
    assert crop_fraction.min() < 0.6 and np.mean(crop_fraction < 0.8) > 0.3
    visible = np.array([shapes.visible_fraction(i) for i in range(200)])
    assert 0.2 < np.mean(visible < 0.99) < 0.7 and visible.min() >= 0.4  # cut often, never beyond recognition


def _sharpness(image: torch.Tensor) -> float:
    return (image[..., 1:] - image[..., :-1]).abs().amax().item()


def test_small_originals_are_soft_and_the_reference_is_sharp(shapes):
    soft, sharp = [], []
    for i in range(300):
        item = shapes[i]
        crop_side = item["control"]["crop_size"].min().item()
        if crop_side <= RES / 3:
            soft.append(_sharpness(item["image"]))
        elif crop_side == RES:
            sharp.append(_sharpness(item["image"]))
    assert len(soft) > 20 and len(sharp) > 20
    assert np.median(soft) < 0.6 * np.median(sharp), (np.median(soft), np.median(sharp))


def test_flip_changes_every_kind(shapes):
    """The light comes from the upper left; mirrored, from the upper right: visible on symmetric kinds too."""
    for i in range(40):
        image = shapes.sample(i, flip=False)["image"]
        assert (image - torch.flip(image, dims=[-1])).abs().mean() > 0.03, shapes.class_names[i % 10]
        control = shapes[i]["control"]
        if torch.equal(control["crop_size"], control["orig_size"]):  # whole canvas: the corners are background
            assert image[:, 0, 0].mean() > image[:, 0, -1].mean() > image[:, -1, -1].mean()


def test_visible_fraction_is_one_for_whole_canvases(shapes):
    for i in range(60):
        control = shapes[i]["control"]
        if torch.equal(control["crop_size"], control["orig_size"]):
            assert shapes.visible_fraction(i) == pytest.approx(1.0, abs=1e-3)


def test_no_augment_is_full_canvas_unflipped():
    shapes = Shapes(resolution=RES, length=50, augment=False)
    for i in range(20):
        control = shapes[i]["control"]
        assert torch.equal(control["crop_size"], control["orig_size"])
        assert control["orig_size"].tolist() == [RES, RES]
        assert control["crop_coords"].tolist() == [0, 0] and control["flip"] == 0


def _parse(caption: str) -> dict:
    pattern = r"a (small|medium|large) (\w+) (.+) on an? (\w+) background"
    size, colour, name, background = re.fullmatch(pattern, caption).groups()
    return {"size": size, "colour": colour, "name": name, "background": background}


def _foreground_box(image: torch.Tensor, background: str) -> tuple[float, float, float, float]:
    """Bounding box ``(x0, y0, x1, y1)`` (fractions of the side) of pixels far from the background colour."""
    rgb = (image + 1) * 127.5
    distance = (rgb - torch.tensor(COLOURS[background], dtype=torch.float32)[:, None, None]).abs().amax(0)
    ys, xs = torch.nonzero(distance > 60, as_tuple=True)
    side = image.shape[-1]
    return xs.min().item() / side, ys.min().item() / side, (xs.max().item() + 1) / side, (ys.max().item() + 1) / side


def test_caption_describes_the_final_image(shapes):
    """Parse each caption and check it against the pixels: colours, kind, size words."""
    tol = 2 / RES  # antialiased edge pixels
    sizes = Counter()
    for i in range(120):
        item = shapes[i]
        fields = _parse(item["caption"])
        assert fields["colour"] != fields["background"] and fields["colour"] in COLOURS
        assert fields["name"].split()[0] == shapes.class_names[item["class_label"]].split()[0]
        x0, y0, x1, y1 = _foreground_box(item["image"], fields["background"])
        area = (x1 - x0) * (y1 - y0)
        sizes[fields["size"]] += 1
        # Upsampled small originals blur the edge over up to 4 output pixels: a looser tolerance than the bounds.
        if fields["size"] == "small":
            assert area < 0.50 + 8 * tol
        if fields["size"] == "large":
            assert area > 0.64 - 8 * tol
    assert min(sizes.values()) > 20, sizes  # every size word is in use


def test_asymmetric_names_state_direction():
    shapes = Shapes(resolution=RES, length=100)
    arrow = shapes.class_names.index("arrow")
    assert "arrow pointing right" in shapes.sample(arrow, flip=False)["caption"]
    assert "arrow pointing left" in shapes.sample(arrow, flip=True)["caption"]


def test_datamodule_batch_contract_and_properties():
    dm = ShapesDataModule(resolution=RES, batch_size=8, train_length=64, val_length=20)
    assert dm.num_classes == 10 and dm.resolution == RES and dm.control_names == CONTROL_NAMES
    assert dm.class_names == list(Shapes.CLASS_NAMES)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 3, RES, RES) and batch["image"].dtype == torch.float32
    assert batch["class_label"].shape == (8,) and batch["class_label"].dtype == torch.int64
    assert isinstance(batch["caption"], list) and len(batch["caption"]) == 8
    assert batch["control"]["orig_size"].shape == (8, 2) and batch["control"]["flip"].shape == (8,)
    assert control_to_tensor(batch["control"]).shape == (8, 7)


def test_datamodule_min_scale_reaches_both_splits_and_crops():
    def smallest_crop_fraction(shapes: Shapes) -> float:
        fractions = []
        for i in range(100):
            control = shapes[i]["control"]
            fractions.append((control["crop_size"].prod() / control["orig_size"].prod()).item())
        return min(fractions)

    weak = ShapesDataModule(resolution=RES, train_length=100, val_length=100, min_scale=0.8)
    assert weak.train_set.min_scale == weak.val_set.min_scale == 0.8
    assert smallest_crop_fraction(ShapesDataModule().train_set) < 0.6 < smallest_crop_fraction(weak.train_set)


def test_val_loader_is_fixed_order_and_complete():
    dm = ShapesDataModule(resolution=RES, batch_size=8, train_length=64, val_length=20)
    batches = list(dm.val_dataloader())
    assert [len(b["caption"]) for b in batches] == [8, 8, 4]
    expected = [dm.val_set[i]["caption"] for i in range(20)]
    assert sum((b["caption"] for b in batches), []) == expected
    assert [b["caption"] for b in dm.test_dataloader()][0] == expected[:8]


def test_datamodule_state_resumes_stream_without_trainer():
    dm = ShapesDataModule(resolution=RES, batch_size=4, train_length=24, val_length=8)
    loader = dm.train_dataloader()
    reference = [b["caption"] for b in loader] + [b["caption"] for b in loader]  # two epochs, 12 batches
    dm = ShapesDataModule(resolution=RES, batch_size=4, train_length=24, val_length=8)
    iterator = iter(dm.train_dataloader())
    head = [next(iterator)["caption"] for _ in range(4)]
    state = dm.state_dict()
    assert state["position"] == 16
    resumed = ShapesDataModule(resolution=RES, batch_size=4, train_length=24, val_length=8)
    resumed.load_state_dict(state)
    loader = resumed.train_dataloader()
    tail = [b["caption"] for b in loader] + [b["caption"] for b in loader]
    assert head + tail[:8] == reference


def test_datamodule_splits_ranks_disjointly():
    def rank_indices(rank: int) -> list[int]:
        dm = ShapesDataModule(resolution=RES, batch_size=2, train_length=16, val_length=4)
        dm.trainer = SimpleNamespace(
            global_rank=rank,
            world_size=2,
            global_step=0,
            accumulate_grad_batches=1,
            _accelerator_connector=SimpleNamespace(use_distributed_sampler=False),
        )
        return list(dm.train_dataloader().sampler)

    first, second = rank_indices(0), rank_indices(1)
    assert len(first) == len(second) == 8 and sorted(first + second) == list(range(16))


def test_val_loader_shards_ranks_in_fixed_order():
    dm = ShapesDataModule(resolution=RES, batch_size=2, train_length=16, val_length=6)
    dm.trainer = SimpleNamespace(global_rank=1, world_size=2)
    assert list(dm.val_dataloader().sampler) == [1, 3, 5]


class _Recorder(LightningModule):
    """Records a fingerprint of every training batch."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[tuple[float, ...]] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.seen.append(tuple(np.round(batch["image"].sum(dim=(1, 2, 3)).tolist(), 3)))
        return (self.weight**2).sum() + batch["image"].mean() * 0

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(tmp_path, max_steps: int, ckpt_path=None, num_workers=0) -> list:
    model = _Recorder()
    dm = ShapesDataModule(resolution=8, batch_size=4, train_length=20, val_length=4, num_workers=num_workers)
    trainer = Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1, save_top_k=0)],
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model.seen


@pytest.mark.parametrize("num_workers", [0, 2])
def test_lightning_resume_continues_data_stream(tmp_path, num_workers):
    """`fit --ckpt_path last` after a kill at step 3 sees exactly the batches of an uninterrupted run.

    5 batches per epoch, so both runs cross an epoch boundary; with workers, prefetching runs the sampler ahead.
    """
    uninterrupted = _fit(tmp_path / "a", max_steps=12, num_workers=num_workers)
    head = _fit(tmp_path / "b", max_steps=3, num_workers=num_workers)
    tail = _fit(tmp_path / "b", max_steps=12, ckpt_path=tmp_path / "b" / "last.ckpt", num_workers=num_workers)
    assert len(uninterrupted) == 12
    assert head + tail == uninterrupted


def test_describe_matches_the_rendered_item(shapes):
    for i in range(30):
        item, text = shapes[i], shapes.describe(i)
        assert text["caption"] == item["caption"] and text["label"] == item["class_label"].item()
        assert text["flip"] == item["control"]["flip"].item()
