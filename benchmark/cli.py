"""The `ldmbench` command (also installed as `lightning`): LightningCLI with the benchmark's defaults.

    ldmbench fit --config leaderboards/shapes/dit.yaml [--config more.yaml] [--trainer.max_steps 100]
    ldmbench fit --config ... --ckpt_path last        # resume: weights, optimizer, EMA, step, data position
    ldmbench validate|test|predict --config ... --ckpt_path path/to.ckpt
    ldmbench describe --config leaderboards/imagenet-256/dit_xl_2.yaml   # params / GMACs as JSON, no data
    ldmbench sample --config ... --ckpt_path C --classes 3,7 [--protocol P.yaml]   # see benchmark/sample_cli.py
    ldmbench cache-latents --config leaderboards/shapes/dit.yaml [--output DIR]   # latents of the train split
    ldmbench perf --models dit,mdt --size tiny [--precision fp32,bf16] [--output leaderboards/perf/README.md]
    ldmbench evaluate --config ... --ckpt_path C [--protocol P.yaml] [--output metrics.json]   # metrics table + JSON

Models and DataModules are chosen by ``class_path`` in YAML (subclass mode), so any importable subclass of
`DiffusionModule` / `LightningDataModule` works without registering it anywhere.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Must be set before jsonargparse is imported: lightning 2.6 still calls APIs that jsonargparse >= 4.49 deprecates.
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

import torch  # noqa: E402
import yaml  # noqa: E402
from jsonargparse import Namespace, lazy_instance  # noqa: E402
from lightning.pytorch import LightningDataModule  # noqa: E402
from lightning.pytorch.callbacks import BasePredictionWriter, ModelSummary  # noqa: E402
from lightning.pytorch.callbacks import ProgressBar as ProgressBarBase  # noqa: E402
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI  # noqa: E402
from lightning.pytorch.utilities import rank_zero_info  # noqa: E402

import baselines.dit  # noqa: E402, F401  (imported so that short names like `--model DiTModule` resolve)
import data.imagefolder  # noqa: E402, F401
import data.shapes  # noqa: E402, F401
from benchmark.callbacks import ImageWriter  # noqa: E402
from benchmark.checkpoint_io import with_atomic_io  # noqa: E402
from benchmark.module import DiffusionModule  # noqa: E402
from benchmark.runs import (  # noqa: E402
    DEFAULT_ROOT,
    CheckpointError,
    PlacementError,
    RunLogger,
    checkpoint_step,
    entry_name,
    newest_checkpoint,
    refuse_fixed_paths,
    run_of_checkpoint,
)
from data.compat import TrainerArgumentsHook, format_summary_table  # noqa: E402
from data.folder_scan import FolderError  # noqa: E402

# The frozen autoencoder and the EMA copy are in eval mode on purpose; Lightning warns about any such module.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
# lightning 2.6 + torch 2.14: an internal deprecation inside Lightning's pytree handling, not ours.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
# Lightning advertises its cloud logger on every Trainer it builds (not advice for this benchmark's users), and says
# it keeps the model summary the CLI gives it (`SummaryWithoutFlops`).
_QUIET = ("litlogger", "Trainer already configured with model summary callbacks")
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: not any(text in record.getMessage() for text in _QUIET)
)

TRAINER_DEFAULTS = {
    # Placed (save_dir, name, version) by LDMBenchCLI.place_run; see benchmark/runs.py for the layout.
    "logger": lazy_instance(RunLogger),
    "default_root_dir": DEFAULT_ROOT,
    # Our DataModules shard the training stream per rank themselves (resumable sampler); Lightning must not
    # wrap their sampler in a DistributedSampler a second time.
    "use_distributed_sampler": False,
}

# `ldmbench`, `ldmbench -h` and `ldmbench --help` print this list (LightningCLI's own reflows any epilog into one
# paragraph). LightningCLI's `test` still runs (it is `validate` on the test loader, which is the validation set in
# every DataModule here), but it is not listed: it measures nothing `validate` does not.
COMMANDS = (
    ("fit", "train an entry from its config (ldmbench fit --config leaderboards/shapes/dit.yaml)"),
    ("validate", "EMA loss at fixed noise on the validation set of a checkpoint (--ckpt_path C | last)"),
    ("predict", "one generated image per validation item: PNGs and an ADM-style samples.npz"),
    ("sample", "images of chosen classes from a checkpoint, PNGs and a grid (--classes 3,7 --n 8 [--protocol P])"),
    ("describe", "params, GMACs and shapes of a config's model as JSON; no data, no weights, no network"),
    ("cache-latents", "encode a dataset's training split once; every later run trains on the stored latents"),
    ("evaluate", "fd_shapes / FID and related metrics of a checkpoint under a suite's protocol"),
    ("leaderboard", "run / render / eval a suite: every entry under one budget and one protocol"),
    ("perf", "training and sampling speed of ours vs the reference implementations, side by side"),
)


def command_help() -> str:
    """The top-level help: one line per command."""
    width = max(len(name) for name, _ in COMMANDS) + 2
    lines = [f"  {name:<{width}}{text}" for name, text in COMMANDS]
    return (
        "usage: ldmbench <command> [options]   (the same CLI is installed as `lightning`)\n\n"
        "commands:\n" + "\n".join(lines) + "\n\n"
        "ldmbench <command> --help lists a command's options; configs stack left to right (--config a.yaml "
        "--config b.yaml)\nand any key can be overridden (--trainer.max_steps 100).\n"
    )


_OUR_PACKAGES = tuple(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), name) + os.sep
    for name in ("baselines", "benchmark", "conditioning", "data")
)


class ConfigError(Exception):
    """A configuration that cannot run, reported as one message (no traceback) by `main`."""


def _our_error(error: BaseException) -> BaseException | None:
    """The innermost exception in ``error``'s chain raised by this project's code (e.g. an unknown size), if any."""
    found, seen = None, set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        frames = traceback.extract_tb(error.__traceback__)
        if isinstance(error, ValueError | TypeError | KeyError | FileNotFoundError) and frames:
            if frames[-1].filename.startswith(_OUR_PACKAGES):
                found = error
        error = error.__cause__ or error.__context__
    return found


def _get(namespace: Any, dotted: str, default: Any = None) -> Any:
    value = namespace
    for key in dotted.split("."):
        value = value.get(key) if hasattr(value, "get") else getattr(value, key, None)
        if value is None:
            return default
    return value


def _root_and_entry(config: Any) -> tuple[Path, str]:
    """``default_root_dir`` (absolute) and the entry's folder name, from a parsed config."""
    # Absolute, as `run_of_checkpoint` gives it: ModelCheckpoint restores its state (and keeps writing last.ckpt
    # rather than last-v1.ckpt) only when a resumed run's checkpoint folder is spelled as the original's.
    root = Path(_get(config, "trainer.default_root_dir") or DEFAULT_ROOT).absolute()
    configs = [str(c) for c in (config.get("config") or [])]
    return root, entry_name(str(_get(config, "model.class_path", "model")), configs, config.get("run_name"))


CLI_KWARGS = {
    "model_class": DiffusionModule,
    "datamodule_class": LightningDataModule,
    # Any subclass by class_path: baselines and users' own modules alike, with no registry.
    "subclass_mode_model": True,
    "subclass_mode_data": True,
    "auto_configure_optimizers": False,  # each recipe's optimizer is a constructor argument of its module
}


class LDMBenchCLI(TrainerArgumentsHook, LightningCLI):
    """LightningCLI that links data facts into the model, places every run's outputs, and checks early.

    Before anything is built: the data root is checked when fitting, a GPU config on a machine without CUDA is named,
    ``--ckpt_path last`` is resolved to the entry's newest checkpoint, and the logger is pointed at the run's folder
    (`benchmark.runs`). Errors raised by this project's code while the model and data are built end as one line.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Resolution and number of classes are facts of the dataset; the model reads them from the instantiated
        # DataModule, so a config never states them twice (and can never disagree with itself).
        parser.link_arguments("data.resolution", "model.init_args.resolution", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.add_argument(
            "--run_name",
            type=str | None,
            default=None,
            help="Folder name of this entry's runs under trainer.default_root_dir; default: "
            "<first config's stem>-<model class>.",
        )

    def before_instantiate_classes(self) -> None:
        if self.subcommand is None:  # describe: nothing runs, nothing is written
            return
        config = self.config[self.subcommand]
        if self.subcommand in ("fit", "validate", "test", "predict"):
            check_data_root(config)  # first: the most likely mistake on a new machine, before any GPU question
        check_accelerator(config)
        self.place_run(config)

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        check_class_paths(args)  # before jsonargparse, whose refusal is a usage dump with the reason inside it
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        # Lightning reads the checkpoint's hyper-parameters here, before anything else: resolve `last` to the entry's
        # newest checkpoint first, and refuse a file that is not a checkpoint by name (never via torch's advice).
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else None
        ckpt = config.get("ckpt_path") if config is not None else None
        if ckpt == "last":
            root, entry = _root_and_entry(config)
            found = newest_checkpoint(root, entry)
            if found is None:
                rank_zero_info(f"ldmbench: no checkpoint of {entry} under {root}; starting a new run")
            else:
                what = "resuming" if subcommand == "fit" else f"{subcommand}: the newest checkpoint of"
                rank_zero_info(f"ldmbench: {what} {entry}, {found}")
            config.ckpt_path = ckpt = None if found is None else str(found)
        if ckpt:
            checkpoint_step(ckpt)
        super()._parse_ckpt_path()

    def _weights_only_by_default(self) -> None:
        # Our checkpoints hold tensors and plain data only; loading them weights-only refuses pickled code and keeps
        # torch's "weights_only was not set" warning out of every resumed run. `--weights_only false` still wins.
        kwargs = self.config_init[self.subcommand]
        if kwargs.get("ckpt_path") and kwargs.get("weights_only") is None:
            kwargs["weights_only"] = True

    before_fit = before_validate = before_test = before_predict = _weights_only_by_default

    def place_run(self, config: Any) -> None:
        """Decide where this run writes (a new version, the resumed run, or under the evaluated run)."""
        try:
            refuse_fixed_paths(config)  # benchmark.runs alone decides the folders
        except PlacementError as error:
            raise ConfigError(str(error)) from None
        root, entry = _root_and_entry(config)
        ckpt = config.get("ckpt_path")
        step = checkpoint_step(ckpt) if ckpt else None
        run = run_of_checkpoint(ckpt) if ckpt else None
        if self.subcommand == "fit":
            # A new run takes the next version; a resumed one continues its own folder and log.
            save_dir, name, version = run if run else (root, entry, None)
            resume = step if run else None
        else:
            # Evaluations go under the run they evaluate: <run>/<validate|test|predict>/<checkpoint stem>/.
            base = run[0] / run[1] / f"version_{run[2]}" if run else root / entry
            save_dir, name, version, resume = base, self.subcommand, Path(ckpt).stem if ckpt else "init", None
        self.run_placement = {"save_dir": str(save_dir), "name": name, "version": version, "resume_step": resume}
        config.trainer.logger = self._placed_logger(_get(config, "trainer.logger"))

    def _placed_logger(self, logger: Any) -> Any:
        placement = self.run_placement
        if logger is False:
            return False
        class_path = getattr(logger, "class_path", None) if isinstance(logger, Namespace) else None
        if class_path is None or class_path in _CSV_LOGGERS:
            # The default, or a CSV logger from the config: ours, which continues a resumed run's metrics.csv.
            prefix = _get(logger, "init_args.prefix", "") if class_path else ""
            return Namespace(class_path="benchmark.runs.RunLogger", init_args=Namespace(**placement, prefix=prefix))
        init_args = logger.get("init_args") or Namespace()
        if class_path.endswith("TensorBoardLogger"):
            init_args.update({k: placement[k] for k in ("save_dir", "name", "version")})
        elif "save_dir" in init_args or class_path.endswith("WandbLogger"):
            init_args.save_dir = placement["save_dir"]
        logger.init_args = init_args
        return logger

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as error:
            ours = _our_error(error)
            if ours is None:
                raise
            raise ConfigError(str(ours).strip("'\"")) from None

    def adjust_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> tuple[dict[str, Any], list[Any]]:
        if config.get("enable_progress_bar") is False and isinstance(config.get("callbacks"), list):
            # `--trainer.enable_progress_bar false` switches off a bar the config lists, instead of refusing both.
            config["callbacks"] = [c for c in config["callbacks"] if not isinstance(c, ProgressBarBase)]
        if self.subcommand in ("validate", "test", "predict"):
            # An evaluation writes under <run>/<command>/ and saves no checkpoint, so the config's ModelCheckpoint,
            # restored from the training run's state, would warn that its folder changed. (Leaving it out instead
            # makes Lightning warn that the checkpoint's callbacks are missing.)
            warnings.filterwarnings("ignore", message=r".*The dirpath has changed from.*")
        max_steps, every = config.get("max_steps") or -1, config.get("log_every_n_steps")
        if 0 < max_steps < (every or 50):
            # A run shorter than the logging interval would write no metrics.csv at all: log its last step.
            config["log_every_n_steps"] = max_steps
        configured = list(config.get("callbacks") or []) + list(callbacks)
        if config.get("enable_model_summary") is not False and not any(isinstance(c, ModelSummary) for c in configured):
            callbacks = [*callbacks, SummaryWithoutFlops()]
        if self.subcommand == "predict" and not any(isinstance(c, BasePredictionWriter) for c in configured):
            callbacks = [*callbacks, ImageWriter()]  # predict writes PNGs and samples.npz unless told otherwise
        config["plugins"] = with_atomic_io(config.get("plugins"))  # a kill or full disk never damages last.ckpt
        return config, callbacks


class SummaryWithoutFlops(ModelSummary):
    """Lightning's model summary without its FLOPs column and total.

    Lightning counts FLOPs only through ``example_input_array``, which a diffusion module (noised latents, time,
    condition) has none of, so it printed "Total FLOPs: 0". The real cost is in `ldmbench describe`
    (``gmacs_per_forward``, ``train_gflops_per_image``).
    """

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        columns = [column for column in summary_data if column[0] != "FLOPs"]
        table = format_summary_table(
            total_parameters, trainable_parameters, model_size, total_training_modes, 0, *columns
        )
        rank_zero_info("\n" + table.rsplit("\n", 1)[0])  # the last line is the FLOPs total


_CSV_LOGGERS = (
    "benchmark.runs.RunLogger",
    "lightning.pytorch.loggers.CSVLogger",
    "lightning.pytorch.loggers.csv_logs.CSVLogger",
    "CSVLogger",
)


def _data_class(config: Any) -> type | None:
    class_path = str(_get(config, "data.class_path") or "")
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name) if module else None
    except (ImportError, AttributeError):
        return None  # jsonargparse has already named a class that does not import


def _given_configs(args: ArgsType) -> list[tuple[str, Any]]:
    """``(where, config)`` for a config given as a dict and for each ``--config`` file of an argument list."""
    if isinstance(args, dict):
        return [("", args)] + [(k, v) for k, v in args.items() if isinstance(v, dict)]
    argv, found = list(args or sys.argv[1:]), []
    for i, arg in enumerate(argv):
        path = arg.split("=", 1)[1] if arg.startswith("--config=") else None
        if arg in ("--config", "-c") and i + 1 < len(argv):
            path = argv[i + 1]
        if path and Path(path).is_file():
            try:
                found.append((path, yaml.safe_load(Path(path).read_text())))
            except yaml.YAMLError:
                pass  # the parser reports it
    return found


def check_class_paths(args: ArgsType) -> None:
    """Refuse, in one line naming it, a ``model`` or ``data`` ``class_path`` that imports no class."""
    for where, config in _given_configs(args):
        for key in ("model", "data"):
            class_path = _get(config, f"{key}.class_path") if isinstance(config, dict) else None
            if not isinstance(class_path, str) or "." not in class_path:
                continue
            module, _, name = class_path.rpartition(".")
            try:
                getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError) as error:
                raise ConfigError(
                    f"{where + ': ' if where else ''}{key}.class_path {class_path} names no class that imports "
                    f"({error})"
                ) from None


def check_data_root(config: Any) -> None:
    """Fail in one line when the DataModule's data root is not there, naming the path or variable that sets it.

    A DataModule whose root may come from the environment declares the variable as ``root_env`` (ImageNet:
    ``IMAGENET_ROOT``); an unset root and an unset variable are then named together.
    """
    root = _get(config, "data.init_args.root")
    env = getattr(_data_class(config), "root_env", None)
    if root is None and env:
        root = os.environ.get(env) or None
        if root is None:
            raise ConfigError(
                f"data root not set: export {env}=/path/to/data or pass --data.init_args.root /path/to/data"
            )
    if root is not None and not Path(str(root)).exists():
        source = f"${env}" if env and _get(config, "data.init_args.root") is None else "data.init_args.root"
        raise ConfigError(
            f"data root {root} ({source}) does not exist; set data.init_args.root in the config "
            "or pass --data.init_args.root /path/to/data" + (f" (or export {env}=/path/to/data)" if env else "")
        )


def check_accelerator(config: Any) -> None:
    """Say plainly when a config wants GPUs on a machine without CUDA, and how to run it on the CPU instead."""
    accelerator = str(_get(config, "trainer.accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        devices = _get(config, "trainer.devices", "auto")
        raise ConfigError(
            f"this config wants GPUs (trainer.accelerator: {accelerator}, trainer.devices: {devices}) but this "
            "machine has no CUDA device; run it on a GPU machine, or override --trainer.accelerator cpu "
            "--trainer.devices 1 --trainer.strategy auto --trainer.precision 32-true"
        )


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


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Within the block, the Hugging Face Hub is not asked for anything: configs come from the local cache or the copies
    shipped in ``data/weights/configs`` (text encoders) and ``data.autoencoder.KNOWN_CONFIGS`` (VAEs).

    ``HF_HUB_OFFLINE`` is read by huggingface_hub once, at import, so its module constant is switched as well.
    """
    from huggingface_hub import constants

    before_env, before_constant = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"], constants.HF_HUB_OFFLINE = "1", True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before_constant
        if before_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before_env


def _model_cli(args: list[str]) -> _DescribeCLI:
    """Model and data built from ``args`` exactly as `fit` builds them, without a Trainer."""
    with warnings.catch_warnings():
        # `describe` and `sample` pass the arguments after their own word while sys.argv still holds the whole
        # command line; that is intended, so LightningCLI's "both args and command line arguments" warning is noise.
        warnings.filterwarnings("ignore", message=r".*intended to run from within Python like if it were from.*")
        # diffusers' config lookup passes an argument huggingface_hub 0.23+ ignores; nothing a user can act on.
        warnings.filterwarnings("ignore", message=r".*local_dir_use_symlinks.*")
        return _DescribeCLI(**CLI_KWARGS, save_config_callback=None, args=args, run=False)


def describe(args: list[str]) -> dict:
    """Build the configured model on the meta device (no weights, no data, no network) and return its size and cost."""
    # Only widths are needed, and every config it reads is shipped: a hub request here only costs retries offline.
    with torch.device("meta"), hub_offline():
        cli = _model_cli(args)
    return cli.model.describe()


def config_files(argv: list[str]) -> list[str]:
    """The files given as ``--config FILE`` or ``--config=FILE`` on a command line, in order."""
    found = []
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            found.append(argv[i + 1])
        elif arg.startswith("--config="):
            found.append(arg.split("=", 1)[1])
    return found


def add_import_paths(argv: list[str] | None) -> None:
    """Put the working directory and each ``--config`` file's folder on ``sys.path`` (after what is there).

    Like `python -m`, the working directory comes first, so that `class_path: mymodel.MyDiT` finds mymodel.py without
    PYTHONPATH (the `ldmbench` console script does not do it by itself); a config's own folder is searched too, so a
    subclass kept beside the user's config is found when the command runs from the repository.
    """
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for config in config_files(argv or []):
        folder = os.path.dirname(os.path.abspath(config))
        if os.path.isfile(config) and folder not in sys.path:
            sys.path.append(folder)  # appended: a module of the same name in the project or cwd keeps precedence


def main(args: ArgsType = None) -> None:
    argv = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else None
    add_import_paths(argv)
    commands = {  # extra commands beside LightningCLI's fit/validate/test/predict; imported only when used
        "cache-latents": ("benchmark.cache_cli", "cache_latents"),
        "sample": ("benchmark.sample_cli", "sample"),
        "leaderboard": ("benchmark.leaderboard.command", "main"),
        "evaluate": ("benchmark.evaluation.command", "evaluate_command"),
        "perf": ("benchmark.perf", "main"),
    }
    if argv is not None and (not argv or argv[0] in ("-h", "--help")):
        print(command_help(), file=sys.stdout if argv else sys.stderr)
        sys.exit(0 if argv else 2)
    try:
        if argv and argv[0] == "describe":
            if not any(a.startswith(("--config", "--model", "-h", "--help")) for a in argv[1:]):
                print(
                    "usage: ldmbench describe --config CONFIG.yaml [--model.init_args.KEY VALUE ...]\n"
                    "e.g.:  ldmbench describe --config leaderboards/shapes/dit.yaml",
                    file=sys.stderr,
                )
                sys.exit(2)
            print(json.dumps(describe(argv[1:]), indent=2))
            return
        if argv and argv[0] in commands:
            module_name, function = commands[argv[0]]
            getattr(importlib.import_module(module_name), function)(argv[1:])
            return
        build_cli(args)
    except (ConfigError, CheckpointError, FolderError) as error:
        print(f"ldmbench: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    # Run the imported module's `main`, not this `__main__` copy: the modules it calls raise
    # `benchmark.cli.ConfigError`, which is another class than `__main__.ConfigError` and would escape the handler.
    from benchmark.cli import main as _main

    _main()
