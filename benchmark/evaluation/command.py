"""``ldmbench evaluate``: evaluate a checkpoint under a protocol, print a table and write the metrics JSON.

    ldmbench evaluate --config leaderboards/shapes/dit.yaml --ckpt_path runs/shapes/dit/checkpoints/last.ckpt \\
        [--protocol leaderboards/shapes/protocol.yaml] [--output metrics.json] [--device cpu]

The model and data are built from the config exactly as ``fit`` builds them (any further ``--model.*`` / ``--data.*``
override works too), the checkpoint's weights (EMA included) are loaded, and `benchmark.evaluation.evaluate` runs.
Without ``--protocol`` a Shapes config uses ``leaderboards/shapes/protocol.yaml`` and any other data
``EvalProtocol(feature_extractor="inception-v3-compat", reference="data:val")``.
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmark.evaluation.metrics import MetricUnavailable
from benchmark.evaluation.protocol import EvalProtocol

__all__ = ["default_protocol", "evaluate_command", "load_weights", "print_table"]

log = logging.getLogger(__name__)
SHAPES_PROTOCOL = Path(__file__).resolve().parents[2] / "leaderboards" / "shapes" / "protocol.yaml"


def default_protocol(datamodule: Any) -> EvalProtocol:
    """The suite protocol for this data.

    Shapes: the Shapes protocol. ImageNet: FID against the val split (Inception). Any other labelled image folder:
    the ``data-classifier`` evaluator trained on its own train split (offline), against its train split.
    """
    from data.imagefolder import ImageFolderDataModule
    from data.imagenet import ImageNetDataModule
    from data.shapes import ShapesDataModule

    if isinstance(datamodule, ShapesDataModule) and SHAPES_PROTOCOL.exists():
        return EvalProtocol.from_yaml(SHAPES_PROTOCOL)
    if isinstance(datamodule, ImageFolderDataModule) and not isinstance(datamodule, ImageNetDataModule):
        return EvalProtocol(
            name="data-classifier",
            feature_extractor="data-classifier",
            reference="data:train",
            num_samples=1000,
            precision_recall=True,
        )
    return EvalProtocol(name="fid", feature_extractor="inception-v3-compat", reference="data:val")


def newest_checkpoint_of(config: Any) -> str:
    """``--ckpt_path last``: the newest checkpoint of the config's run folder, as ``fit --ckpt_path last`` resumes."""
    from benchmark.cli import _root_and_entry
    from benchmark.runs import CheckpointError, newest_checkpoint

    root, entry = _root_and_entry(config)
    found = newest_checkpoint(root, entry)
    if found is None:
        raise CheckpointError(f"--ckpt_path last: no checkpoint of {entry} under {root}")
    log.warning("evaluating the newest checkpoint of %s: %s", entry, found)
    return str(found)


def load_weights(module: torch.nn.Module, ckpt_path: str) -> int | None:
    """Load a Lightning checkpoint's ``state_dict`` (backbone and EMA) into ``module``; returns its global step."""
    from benchmark.runs import CheckpointError, read_checkpoint  # the CLI reports CheckpointError in one line

    # Tensors and plain data only (never the file's pickled code): an error that names the file otherwise.
    ckpt = read_checkpoint(ckpt_path)

    trained = str((ckpt.get("hyper_parameters") or {}).get("_class_path", "?")).rsplit(".", 1)[-1]
    misfit = f"{ckpt_path} does not fit this config: it holds a {trained}, the config builds a {type(module).__name__}"
    try:
        missing, unexpected = module.load_state_dict(ckpt["state_dict"], strict=False)
    except RuntimeError as error:  # same names, other shapes
        raise CheckpointError(f"{misfit} ({str(error).splitlines()[1].strip()[:200]})") from None
    if unexpected or [k for k in missing if not k.startswith(("autoencoder.", "text_encoder."))]:
        raise CheckpointError(f"{misfit} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return ckpt.get("global_step")


def print_table(metrics: dict[str, Any]) -> None:
    """A two-column table of the scalar metrics (rich if installed, plain text otherwise)."""
    rows = [
        (k, f"{v:.4g}" if isinstance(v, float) else str(v))
        for k, v in metrics.items()
        if k != "protocol" and not k.endswith("_boot")  # bootstrap replicates: in the JSON, not the table
    ]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        for key, value in rows:
            print(f"{key:30s} {value}")
        return
    table = Table(title=f"evaluation ({metrics.get('protocol', {}).get('name', '')} / {metrics.get('protocol_id')})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)


def evaluate_parser() -> argparse.ArgumentParser:
    """The options of ``ldmbench evaluate`` itself; every other argument goes to the config's CLI."""
    parser = argparse.ArgumentParser(
        prog="ldmbench evaluate",
        add_help=False,
        usage="ldmbench evaluate --config CONFIG.yaml [--config ...] --ckpt_path C|last [options] [--model.* --data.*]",
        description="Sample a checkpoint under an evaluation protocol, print its metrics and optionally write them.",
    )
    parser.add_argument(
        "--ckpt_path",
        default=None,
        help="checkpoint to evaluate; 'last' is the newest checkpoint of the config's run folder; "
        "without it the untrained model is evaluated (with a warning)",
    )
    parser.add_argument(
        "--protocol",
        default=None,
        help="protocol YAML (e.g. leaderboards/shapes/protocol.yaml); default: the Shapes protocol for Shapes, "
        "the data-classifier protocol for an image folder, FID against val for ImageNet",
    )
    parser.add_argument("--output", default=None, help="write the metrics (bootstrap replicates included) as JSON here")
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where to sample and extract features (default: cuda if available, else cpu)",
    )
    parser.add_argument(
        "--stats_root",
        default=None,
        help="folder of cached reference statistics (default: ~/.cache/ldmbench/stats, which the suites share)",
    )
    return parser


def evaluate_command(argv: list[str]) -> dict[str, Any]:
    """Run ``ldmbench evaluate`` with the arguments after the word ``evaluate``; returns the metrics."""
    from benchmark.cli import CLI_KWARGS, ConfigError, _DescribeCLI
    from benchmark.evaluation import evaluate

    parser = evaluate_parser()
    ours, rest = parser.parse_known_args(argv)
    if any(a in ("-h", "--help") for a in rest):
        # Our options first, then the config's (model, data, trainer) from the same CLI that `fit` uses.
        parser.print_help()
        print("\nthe config's options (as for `ldmbench fit`):\n")
    protocol = None
    if ours.protocol:  # read before the model is built: a typo fails in one line, at once
        try:
            protocol = EvalProtocol.from_yaml(ours.protocol)
        except (OSError, ValueError, TypeError, yaml.YAMLError) as error:  # missing, unknown field, bad YAML
            raise ConfigError(f"--protocol {ours.protocol}: {error}") from None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*intended to run from within Python like if it were from.*")
        cli = _DescribeCLI(**CLI_KWARGS, save_config_callback=None, args=rest, run=False)
    module, datamodule = cli.model, cli.datamodule
    if ours.ckpt_path == "last":
        ours.ckpt_path = newest_checkpoint_of(cli.config)
    if ours.ckpt_path:
        load_weights(module, ours.ckpt_path)
    else:
        log.warning("no --ckpt_path: evaluating the untrained model")
    protocol = protocol or default_protocol(datamodule)
    try:
        metrics = evaluate(
            module, protocol, datamodule, device=ours.device, ckpt_path=ours.ckpt_path, stats_root=ours.stats_root
        )
    except MetricUnavailable as e:  # an extractor that does not fit the data: one line, no traceback
        raise SystemExit(f"ldmbench evaluate: {e}") from None
    print_table(metrics)
    if ours.output:
        Path(ours.output).parent.mkdir(parents=True, exist_ok=True)
        Path(ours.output).write_text(json.dumps(metrics, indent=2, default=str))
        print(f"metrics written to {ours.output}")
    return metrics
