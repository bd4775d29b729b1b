"""How far the default control's view lies from the Shapes fd reference (docs/evaluation.md, "Which control").

    OMP_NUM_THREADS=1 python scripts/reference_view_fd.py

The reference is 5,000 training items with every augmentation (random original size, crop, flip), as the protocol
draws it; the script measures fd_shapes (Shapes CLIP features) of 1,000 held-out augmented items and of 1,000
reference views (whole canvas, unflipped: what `default_control` asks a control-conditioned entry for) against it.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmark.evaluation.metrics import FrechetDistance
from benchmark.evaluation.shapes_clip import ShapesCLIP
from data.shapes import Shapes


def features(clip: ShapesCLIP, dataset: Shapes, indices: range) -> np.ndarray:
    out = []
    for lo in range(indices.start, indices.stop, 250):
        images = torch.stack([dataset[i]["image"] for i in range(lo, min(lo + 250, indices.stop))])
        with torch.no_grad():
            out.append(clip.features(((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)).double().numpy())
    return np.concatenate(out)


def main() -> None:
    clip = ShapesCLIP.load()
    train = Shapes("train", 32, 100_000)
    reference = features(clip, train, range(5000))
    fd = FrechetDistance((reference.mean(0), np.cov(reference, rowvar=False)))
    held_out = features(clip, train, range(50_000, 51_000))
    views = features(clip, Shapes("train", 32, 100_000, augment=False), range(50_000, 51_000))
    print(f"fd_shapes, held-out augmented items vs reference: {fd.value(held_out, None):.2f}")
    print(f"fd_shapes, reference views (default control) vs reference: {fd.value(views, None):.2f}")


if __name__ == "__main__":
    main()
