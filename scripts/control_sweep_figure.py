"""Draw the control sweep picture: same seed and class, flip and crop swept, one row block per trained entry.

    python scripts/control_sweep_figure.py --out docs/images/control_sweep.png \\
        --entry additive=leaderboards/shapes-ablations/additive.yaml:runs/.../additive/last.ckpt \\
        --entry scheduled=leaderboards/shapes-ablations/scheduled.yaml:runs/.../scheduled/last.ckpt

Each entry gets one row per class in ``--classes``; the columns are the reference control (whole canvas, no flip),
flip, and centred crops of 0.75 and 0.625 of the side, all from the same starting noise. Under the image the script
prints each entry's control-disentanglement figures (`benchmark.evaluation.disentanglement`) under the Shapes
protocol, as JSON.
"""

from __future__ import annotations

import argparse
import json
import warnings

import torch
from torchvision.utils import make_grid, save_image


def load(config: str, ckpt: str):
    """The entry's module built from its YAML (as ``describe`` builds it), with the checkpoint's weights."""
    from benchmark.cli import CLI_KWARGS, _DescribeCLI

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = _DescribeCLI(**CLI_KWARGS, save_config_callback=None, args=["--config", config], run=False).model
    from benchmark.runs import read_checkpoint

    state = read_checkpoint(ckpt)["state_dict"]  # tensors and plain data only
    module.load_state_dict(state, strict=False)
    return module.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entry", action="append", required=True, help="name=config.yaml:checkpoint.ckpt")
    parser.add_argument("--out", required=True)
    parser.add_argument("--classes", default="0,4,7", help="comma-separated class indices")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--metrics", action="store_true", help="also measure control disentanglement")
    parser.add_argument("--upscale", type=int, default=4, help="nearest-neighbour upscaling of the saved picture")
    args = parser.parse_args()

    from benchmark.evaluation import EvalProtocol
    from benchmark.evaluation.disentanglement import control_disentanglement, sweep_controls
    from benchmark.evaluation.shapes_clip import ShapesCLIP

    classes = torch.tensor([int(c) for c in args.classes.split(",")])
    protocol = EvalProtocol.from_yaml("leaderboards/shapes/protocol.yaml").replace(flow_steps=args.steps)
    rows, report = [], {}
    for spec in args.entry:
        name, rest = spec.split("=", 1)
        config, ckpt = rest.rsplit(":", 1)
        module = load(config, ckpt)
        n = len(classes)
        sweeps = sweep_controls(n, module.resolution, crop_scales=(1.0, 0.75, 0.625), size_scales=())
        controls = sweeps["reference"] + sweeps["flip"] + sweeps["crop"]
        generator = torch.Generator().manual_seed(args.seed)
        noise = torch.randn(1, *module.latent_shape, generator=generator).expand(n, -1, -1, -1).contiguous()
        columns = []
        with protocol.apply(module, args.guidance):
            for control in controls:
                columns.append(module.sample_images(labels=classes, control=control, noise=noise).cpu())
        rows += [torch.stack([c[i] for c in columns]) for i in range(n)]
        if args.metrics:
            report[name] = control_disentanglement(module, protocol, ShapesCLIP.load())
    images = torch.nn.functional.interpolate(torch.cat(rows), scale_factor=args.upscale, mode="nearest")
    grid = make_grid(images, nrow=len(columns), padding=2, normalize=True, value_range=(-1, 1), pad_value=1.0)
    save_image(grid, args.out)
    print(json.dumps({"columns": ["reference", "flip", "crop 0.75", "crop 0.625"], "metrics": report}, indent=1))


if __name__ == "__main__":
    main()
