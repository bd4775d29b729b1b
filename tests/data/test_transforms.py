"""Control-recording transforms: column packing, ADM centre crop fidelity and geometry, random crops and flips."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate

from data.transforms import (
    CONTROL_NAMES,
    CenterCropFlip,
    CropBox,
    RandomResizedCropFlip,
    RecordedFlip,
    center_crop_arr,
    center_crop_geometry,
    control_to_tensor,
    make_control,
    sample_resized_crop,
    to_tensor,
)


def adm_center_crop_arr(pil_image: Image.Image, image_size: int) -> Image.Image:
    """Verbatim logic of guided-diffusion's ``center_crop_arr`` (the reference we must match pixel for pixel)."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size])


def noise_image(height: int, width: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def gradient_image(height: int, width: int) -> Image.Image:
    """Red encodes the column and green the row, so a crop's position can be read back from its pixels."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, np.zeros_like(x)], -1).round().astype(np.uint8))


def test_control_to_tensor_column_order_batched_and_single():
    item = make_control((40.0, 50.0), CropBox(1.0, 2.0, 30.0, 35.0), True)
    assert set(item) == {"orig_size", "crop_coords", "crop_size", "flip"}
    assert all(v.dtype == torch.float32 for v in item.values())
    assert item["orig_size"].shape == (2,) and item["flip"].shape == ()
    expected = torch.tensor([40.0, 50.0, 1.0, 2.0, 30.0, 35.0, 1.0])
    assert torch.equal(control_to_tensor(item), expected)
    batch = default_collate([item, make_control((8.0, 9.0), CropBox(0, 0, 8, 9), False)])
    packed = control_to_tensor(batch)
    assert packed.shape == (2, len(CONTROL_NAMES)) and packed.dtype == torch.float32
    assert torch.equal(packed[0], expected)
    assert packed[1, CONTROL_NAMES.index("orig_w")] == 9 and packed[1, CONTROL_NAMES.index("flip")] == 0


def test_control_to_tensor_names_missing_key():
    control = make_control((4.0, 4.0), CropBox(0, 0, 4, 4), False)
    del control["crop_size"]
    with pytest.raises(KeyError, match="crop_size"):
        control_to_tensor(control)


def test_to_tensor_is_exact_affine_map():
    image = noise_image(5, 7)
    expected = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 127.5 - 1
    out = to_tensor(image)
    assert out.dtype == torch.float32 and out.shape == (3, 5, 7)
    assert torch.equal(out, expected)
    assert out.min() >= -1 and out.max() <= 1


@pytest.mark.parametrize(("height", "width", "size"), [(300, 517, 64), (517, 300, 64), (50, 80, 64), (64, 64, 64)])
def test_center_crop_arr_matches_adm_reference(height, width, size):
    image = noise_image(height, width)
    out = center_crop_arr(image, size)
    assert out.size == (size, size)
    assert np.array_equal(np.array(out), np.array(adm_center_crop_arr(image, size)))


@pytest.mark.parametrize(("height", "width", "size"), [(300, 517, 64), (517, 301, 32), (50, 80, 64), (97, 97, 32)])
def test_center_crop_geometry_is_inside_centred_and_square(height, width, size):
    _, crop = center_crop_geometry(height, width, size)
    eps = 1e-6
    assert crop.top >= -eps and crop.left >= -eps
    assert crop.top + crop.height <= height + eps and crop.left + crop.width <= width + eps
    short = min(height, width)
    # The short side is kept whole (exactly); the long side is cut to the same length up to resize rounding.
    short_crop, long_crop = (crop.height, crop.width) if height <= width else (crop.width, crop.height)
    assert short_crop == pytest.approx(short)
    assert long_crop == pytest.approx(short, rel=0.02)
    assert crop.top + crop.height / 2 == pytest.approx(height / 2, abs=short / size)
    assert crop.left + crop.width / 2 == pytest.approx(width / 2, abs=short / size)


def test_center_crop_box_matches_pixels():
    """Read the crop position back from a coordinate-encoding image: the recorded box is where pixels came from."""
    height, width, size = 180, 420, 48
    tensor, control = CenterCropFlip(size, flip_p=0.0)(gradient_image(height, width))
    top, left = control["crop_coords"].tolist()
    crop_h, crop_w = control["crop_size"].tolist()
    cols = left + (np.arange(size) + 0.5) * crop_w / size
    rows = top + (np.arange(size) + 0.5) * crop_h / size
    red = (tensor[0, size // 2].numpy() + 1) * 127.5
    green = (tensor[1, :, size // 2].numpy() + 1) * 127.5
    assert np.abs(red - cols * 255 / (width - 1))[2:-2].max() < 3
    assert np.abs(green - rows * 255 / (height - 1))[2:-2].max() < 3
    assert control["orig_size"].tolist() == [height, width]


def test_center_crop_flip_mirrors_and_records():
    image = noise_image(70, 90)
    plain, c0 = CenterCropFlip(32, flip_p=0.0)(image)
    flipped, c1 = CenterCropFlip(32, flip_p=1.0)(image)
    assert torch.equal(flipped, torch.flip(plain, dims=[-1]))
    assert c0["flip"] == 0 and c1["flip"] == 1
    assert all(torch.equal(c0[k], c1[k]) for k in ("orig_size", "crop_coords", "crop_size"))


def test_recorded_flip_probability_and_generator():
    x = torch.arange(6.0).reshape(1, 2, 3)
    assert RecordedFlip(0.0)(x)[1] is False
    out, flipped = RecordedFlip(1.0)(x)
    assert flipped and torch.equal(out, torch.flip(x, dims=[-1]))
    draws = [RecordedFlip(0.5)(x, torch.Generator().manual_seed(s))[1] for s in range(40)]
    assert 5 < sum(draws) < 35
    with pytest.raises(ValueError):
        RecordedFlip(1.5)


def test_sample_resized_crop_bounds_and_determinism():
    for seed in range(200):
        crop = sample_resized_crop(50, 70, np.random.default_rng(seed), scale=(0.3, 1.0))
        assert 0 <= crop.top and crop.top + crop.height <= 50
        assert 0 <= crop.left and crop.left + crop.width <= 70
        assert crop.height * crop.width >= 0.3 * 50 * 70 * 0.9  # rounding of the sides
    a = sample_resized_crop(50, 70, np.random.default_rng(7))
    b = sample_resized_crop(50, 70, np.random.default_rng(7))
    assert a == b


def test_random_resized_crop_flip_forced_flip_keeps_crop():
    image = noise_image(40, 60)
    transform = RandomResizedCropFlip(16, scale=(0.5, 1.0))
    plain, c0 = transform(image, np.random.default_rng(3), flip=False)
    mirrored, c1 = transform(image, np.random.default_rng(3), flip=True)
    assert plain.size == (16, 16)
    assert np.array_equal(np.array(mirrored), np.array(plain)[:, ::-1])
    assert torch.equal(c0["crop_coords"], c1["crop_coords"]) and c1["flip"] == 1
    assert c0["orig_size"].tolist() == [40, 60]
