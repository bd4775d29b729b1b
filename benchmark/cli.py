"""The `ldmbench` command (also installed as `lightning`): LightningCLI with the benchmark's defaults.

    ldmbench fit --config leaderboards/shapes/dit.yaml [--config more.yaml] [--trainer.max_steps 100]
    ldmbench fit --config ... --ckpt_path last        # resume: weights, optimizer, EMA, step, data position
    ldmbench validate|test|predict --config ... --ckpt_path path/to.ckpt
    ldmbench describe --config leaderboards/imagenet-256/dit_xl_2.yaml   # params / GMACs as JSON, no data
    ldmbench cache-latents --config leaderboards/shapes/dit.yaml [--output DIR]   # latents of the train split
    ldmbench perf --models dit,mdt --size tiny [--precision fp32,bf16] [--output leaderboards/perf/README.md]
    ldmbench evaluate --config ... --ckpt_path C [--protocol P.yaml] [--output metrics.json]   # metrics table + JSON

Models and DataModules are chosen by ``class_path`` in YAML (subclass mode), so any importable subclass of
`DiffusionModule` / `LightningDataModule` works without registering it anywhere.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

# Must be set before jsonargparse is imported: lightning 2.6 still calls APIs that jsonargparse >= 4.49 deprecates.
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

import torch  # noqa: E402
from jsonargparse import lazy_instance  # noqa: E402
from lightning.pytorch import LightningDataModule  # noqa: E402
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

import baselines.dit  # noqa: E402, F401  (imported so that short names like `--model DiTModule` resolve)
import data.imagefolder  # noqa: E402, F401
import data.shapes  # noqa: E402, F401
from benchmark.module import DiffusionModule  # noqa: E402

# The frozen autoencoder and the EMA copy are in eval mode on purpose; Lightning warns about any such module.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
# lightning 2.6 + torch 2.14: an internal deprecation, not ours (see reference/ecosystem.md §1.2).
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")

TRAINER_DEFAULTS = {
    "logger": lazy_instance(CSVLogger, save_dir="runs"),
    # Our DataModules shard the training stream per rank themselves (resumable sampler); Lightning must not
    # wrap their sampler in a DistributedSampler a second time.
    "use_distributed_sampler": False,
}


CLI_KWARGS = {
    "model_class": DiffusionModule,
    "datamodule_class": LightningDataModule,
    # Any subclass by class_path: baselines and users' own modules alike, with no registry.
    "subclass_mode_model": True,
    "subclass_mode_data": True,
    "auto_configure_optimizers": False,  # each recipe's optimizer is a constructor argument of its module
}


class LDMBenchCLI(LightningCLI):
    """LightningCLI that links the values the data determines into the model instead of repeating them."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Resolution and number of classes are facts of the dataset; the model reads them from the instantiated
        # DataModule, so a config never states them twice (and can never disagree with itself).
        parser.link_arguments("data.resolution", "model.init_args.resolution", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")


def build_cli(args: ArgsType = None, run: bool = True) -> LDMBenchCLI:
    torch.set_float32_matmul_precision("high")  # TF32 on Ampere+ GPUs (DiT#22: +60%); no effect on CPUs
    return LDMBenchCLI(
        **CLI_KWARGS,
        save_config_kwargs={"overwrite": True},
        trainer_defaults=TRAINER_DEFAULTS,
        seed_everything_default=0,
        args=args,
        run=run,
    )


class _DescribeCLI(LDMBenchCLI):
    """Parses and instantiates model and data exactly like `fit`, but builds no Trainer."""

    def instantiate_trainer(self, **kwargs):
        return None


def describe(args: list[str]) -> dict:
    """Build the configured model on the meta device (no weights, no data) and return its size and cost."""
    with torch.device("meta"), warnings.catch_warnings():
        # `describe` passes the arguments after the word "describe" while sys.argv still holds the whole command
        # line; that is intended, so LightningCLI's "both args and command line arguments" warning is noise here.
        warnings.filterwarnings("ignore", message=r".*intended to run from within Python like if it were from.*")
        cli = _DescribeCLI(
            **CLI_KWARGS,
            save_config_callback=None,
            args=args,
            run=False,
        )
    return cli.model.describe()


def main(args: ArgsType = None) -> None:
    # Like `python -m`, put the working directory first on sys.path, so that `class_path: mymodel.MyDiT` finds
    # mymodel.py next to the config without PYTHONPATH (the `ldmbench` console script does not do it by itself).
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    argv = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else None
    if argv and argv[0] == "describe":
        print(json.dumps(describe(argv[1:]), indent=2))
        return
    if argv and argv[0] == "cache-latents":  # encode a config's training split once (data/latent_cache.py)
        from benchmark.cache_cli import cache_latents

        cache_latents(argv[1:])
        return
    if argv and argv[0] == "leaderboard":  # run / render / eval a suite (benchmark.leaderboard.command)
        from benchmark.leaderboard.command import main as leaderboard_main

        leaderboard_main(argv[1:])
        return
    if argv and argv[0] == "perf":  # ours vs reference implementations, interleaved (benchmark/perf.py)
        from benchmark.perf import main as perf_main

        perf_main(argv[1:])
        return
    if argv and argv[0] == "evaluate":
        from benchmark.evaluation.command import evaluate_command

        evaluate_command(argv[1:])
        return
    build_cli(args)


if __name__ == "__main__":
    main()
