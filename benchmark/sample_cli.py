"""``ldmbench sample``: images of chosen classes from a checkpoint, as PNGs and one grid (rows = classes).

    ldmbench sample --config X.yaml --ckpt_path C --classes 3,7 --n 8 [--output DIR]
    ldmbench sample --config X.yaml --ckpt_path C --classes 3,7 --n 8 --protocol leaderboards/shapes/protocol.yaml

Without ``--protocol`` the entry samples with its own sampler and guidance, and columns share their starting noise,
so rows differ only by class. With ``--protocol`` every image is exactly one sample of the suite's evaluation: image
``j`` of class ``c`` is evaluation sample ``c + j * num_classes`` (the ``j``-th index the balanced label scheme gives
to class ``c``), drawn with that index's seed, the protocol's sampler, steps, guidance scale, EMA choice and
requested flip (`benchmark.evaluation.generate`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmark.cli import ConfigError, _model_cli, _root_and_entry
from benchmark.runs import newest_checkpoint, read_checkpoint, run_of_checkpoint

__all__ = ["protocol_indices", "sample", "sample_protocol_images"]


def protocol_indices(classes: list[int], n: int, num_classes: int) -> list[int]:
    """Evaluation sample indices of ``n`` images per class under the balanced label scheme (class ``i % K``)."""
    return [c + j * num_classes for c in classes for j in range(n)]


@torch.no_grad()
def sample_protocol_images(
    module: Any, protocol: Any, indices: list[int], guidance_scale: float, flips: bool, datamodule: Any = None
) -> Any:
    """Images in [-1, 1] of evaluation samples ``indices``, as `benchmark.evaluation.generate.generate` draws them.

    Args:
        module: The entry (its own sampler and guidance are replaced by the protocol's while sampling).
        protocol: The suite's `EvalProtocol`.
        indices: Global sample indices.
        guidance_scale: Semantic guidance scale (the protocol's, or 1.0 for its ``_noguidance`` measurement).
        flips: Whether the data was trained with flips (control-conditioned entries then ask for the index's flip).
        datamodule: The entry's data: on Shapes a control-conditioned entry asks for the control of the
            reference's item at each index, as the evaluation does (`generate.protocol_controls`).
    """
    from benchmark.evaluation.generate import _requested_flips, per_sample_noise, protocol_controls
    from benchmark.evaluation.protocol import sample_seed

    num_classes = int(getattr(module, "num_classes", 0) or 0)
    labels = protocol.replace(num_samples=max(indices) + 1).labels(num_classes)[indices]
    control = None
    data_controls = protocol_controls(module, protocol, datamodule, max(indices) + 1)
    if data_controls is not None:
        control = {k: v[indices].to(module.device) for k, v in data_controls.items()}
        if not flips:
            control["flip"] = torch.zeros_like(control["flip"])
    elif getattr(module.conditioner, "control_names", ()) and flips:
        control = module.default_control(len(indices))
        control["flip"] = _requested_flips(max(indices) + 1, protocol.seed)[indices].to(module.device)
    chunks = []
    with protocol.apply(module, guidance_scale):
        for lo in range(0, len(indices), protocol.batch_size):
            part = slice(lo, lo + protocol.batch_size)
            generators = [torch.Generator().manual_seed(sample_seed(protocol.seed, i)) for i in indices[part]]
            noise = torch.stack([torch.randn(module.latent_shape, generator=g) for g in generators])
            with per_sample_noise(generators):
                chunks.append(
                    module.sample_images(
                        labels=labels[part],
                        control=None if control is None else {k: v[part] for k, v in control.items()},
                        use_ema=protocol.use_ema,
                        noise=noise,
                        generators=generators,
                    )
                )
    return torch.cat(chunks)


def sample(args: list[str]) -> Path:
    """``ldmbench sample``: see the module docstring.

    The model is built from the config (and overrides) exactly as ``fit`` builds it, then loads the checkpoint's
    weights. Output goes to ``--output``, else to ``<run>/sample/<checkpoint stem>/`` beside the checkpoint's run.
    """
    from torchvision.utils import make_grid, save_image

    from benchmark.callbacks.samples import label_rows

    parser = argparse.ArgumentParser(
        prog="ldmbench sample",
        description="Generate images of chosen classes from a checkpoint. Any other option (--config, "
        "--model.init_args..., --run_name) is read as by `ldmbench fit`.",
    )
    parser.add_argument("--ckpt_path", required=True, help="checkpoint file, or `last` for the entry's newest")
    parser.add_argument("--classes", required=True, help="comma-separated class indices, e.g. 3,7")
    parser.add_argument("--n", type=int, default=8, help="images per class (default 8)")
    parser.add_argument("--output", default=None, help="output folder (default: beside the checkpoint's run)")
    parser.add_argument(
        "--seed", type=int, default=0, help="noise seed (default 0); --protocol seeds each image by its index"
    )
    parser.add_argument("--raw", action="store_true", help="sample with the raw weights instead of the EMA")
    parser.add_argument(
        "--protocol",
        default=None,
        help="a suite's protocol.yaml: sample exactly as its leaderboard measured (sampler, steps, guidance, EMA, "
        "and each image's seed by its evaluation index)",
    )
    parser.add_argument(
        "--no_guidance", action="store_true", help="with --protocol: its unguided measurement (scale 1.0)"
    )
    ours, rest = parser.parse_known_args(args)
    try:
        classes = [int(c) for c in ours.classes.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--classes must be comma-separated integers, got {ours.classes!r}")
    if not classes or ours.n < 1:
        parser.error("give at least one class and --n >= 1")
    if ours.protocol and ours.raw:
        parser.error("--raw and --protocol disagree: the protocol says whether the EMA samples (use_ema)")
    if ours.no_guidance and not ours.protocol:
        parser.error("--no_guidance goes with --protocol")
    protocol = None
    if ours.protocol:
        from benchmark.evaluation.protocol import EvalProtocol

        try:
            protocol = EvalProtocol.from_yaml(ours.protocol)
        except (OSError, ValueError, TypeError, yaml.YAMLError) as error:  # missing, unknown field, bad YAML
            raise ConfigError(f"--protocol {ours.protocol}: {error}") from None

    cli = _model_cli(rest)
    model, config = cli.model, cli.config
    root, entry = _root_and_entry(config)
    ckpt = newest_checkpoint(root, entry) if ours.ckpt_path == "last" else Path(ours.ckpt_path)
    if ckpt is None:
        raise ConfigError(f"no checkpoint of {entry} under {root}")
    state = read_checkpoint(ckpt)
    if not isinstance(state, dict) or "state_dict" not in state:
        raise ConfigError(f"{ckpt} is not a Lightning checkpoint of a DiffusionModule (no state_dict)")
    model.load_state_dict(state["state_dict"])
    num_classes = getattr(model, "num_classes", None)
    bad = [c for c in classes if c < 0 or (num_classes is not None and c >= num_classes)]
    if bad:
        raise ConfigError(f"classes {bad} are outside [0, {num_classes}) of this model")

    model = model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    labels = torch.tensor(classes).repeat_interleave(ours.n)
    names = [f"class{label:04d}_{i % ours.n:03d}" for i, label in enumerate(labels.tolist())]
    if protocol is not None:
        from benchmark.evaluation.evaluate import flips_trained

        indices = protocol_indices(classes, ours.n, int(num_classes or 0))
        scale = 1.0 if ours.no_guidance else protocol.guidance_scale
        images = sample_protocol_images(model, protocol, indices, scale, flips_trained(cli.datamodule), cli.datamodule)
        names = [f"{name}_index{i:06d}" for name, i in zip(names, indices)]
        how = f"protocol {protocol.name} ({protocol.id()}), guidance {scale:g}"
    else:
        generator = torch.Generator().manual_seed(ours.seed)
        columns = torch.randn((ours.n, *model.latent_shape), generator=generator)
        images = model.sample_images(
            labels=labels, noise=columns.repeat(len(classes), 1, 1, 1), seed=ours.seed, use_ema=not ours.raw
        )
        how = "the entry's own sampler and guidance"
    images = ((images.float().cpu() + 1) / 2).clamp(0, 1)

    run = run_of_checkpoint(ckpt)
    base = run[0] / run[1] / f"version_{run[2]}" if run else root / entry
    out = Path(ours.output) if ours.output else base / "sample" / ckpt.stem
    out.mkdir(parents=True, exist_ok=True)
    for name, image in zip(names, images):
        save_image(image, out / f"{name}.png")
    grid = make_grid(images, nrow=ours.n, padding=2, pad_value=1.0)
    try:
        row_names = [str(cli.datamodule.class_names[c]) for c in classes]
    except Exception:  # noqa: BLE001 - names are a nicety; data that cannot list them (e.g. no root here) has none
        row_names = [str(c) for c in classes]
    save_image(label_rows(grid, row_names), out / "grid.png")
    print(f"ldmbench sample: {len(images)} images of classes {classes} from {ckpt} with {how}, written to {out}")
    return out
