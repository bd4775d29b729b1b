"""Each private Lightning / jsonargparse API that `data.compat` isolates still does what the project relies on.

One test per use: an upgrade that renames or changes one fails here, naming it, instead of breaking silently.
"""

import random

import lightning.pytorch as pl
import numpy as np
import torch
from jsonargparse import lazy_instance
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.demos.boring_classes import BoringModel

from data.compat import (
    TrainerArgumentsHook,
    cli_given_hyperparameters,
    format_summary_table,
    owned,
    set_max_steps,
    uses_distributed_sampler,
    without_seeding,
)


class _Part:
    def __init__(self, width: int = 2, name: str = "p") -> None:
        self.width, self.name = width, name


def test_owned_builds_a_private_instance_of_a_lazy_default():
    lazy = lazy_instance(_Part, width=5)
    assert hasattr(lazy, "_lazy_class_type") and hasattr(lazy, "_lazy_kwargs"), (
        "jsonargparse's lazy_instance no longer records _lazy_class_type/_lazy_kwargs: update data.compat.owned"
    )
    first, second = owned(lazy), owned(lazy)
    assert type(first) is _Part and (first.width, first.name) == (5, "p")
    assert first is not second and first is not lazy  # every constructor call gets its own
    plain = _Part()
    assert owned(plain) is plain


class _Recorder(BoringModel):
    seen: list = []

    def __init__(self, width: int = 3) -> None:
        super().__init__()
        _Recorder.seen.append(cli_given_hyperparameters())


class _NoParameters(pl.LightningModule):
    """Draws nothing from the RNGs when built, so the test sees only what the CLI itself draws."""


def _cli(cli_class, *args, model=_Recorder):
    return cli_class(
        model,
        args=list(args),
        run=False,
        save_config_callback=None,
        trainer_defaults={"logger": False, "enable_checkpointing": False, "enable_progress_bar": False},
    )


def test_cli_given_hyperparameters_is_the_config_under_the_cli_only():
    _Recorder.seen.clear()
    _Recorder()
    _cli(LightningCLI, "--model.width=7", "--seed_everything=false")
    assert _Recorder.seen[0] is None, "outside LightningCLI a module must see no given hyperparameters"
    given = _Recorder.seen[1]
    assert given is not None and given.get("width") == 7, (
        "LightningCLI no longer passes the config through lightning.pytorch.core.mixins.hparams_mixin."
        f"_given_hyperparameters (saw {given!r}): update data.compat.cli_given_hyperparameters"
    )


def _rng_state():
    return random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state().tolist()


def test_without_seeding_leaves_the_callers_random_state_alone():
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    before = _rng_state()
    _cli(without_seeding(LightningCLI), "--seed_everything=123", model=_NoParameters)
    assert _rng_state() == before
    # The hook it overrides is still the one that seeds: a plain LightningCLI reseeds with the config's seed.
    _cli(LightningCLI, "--seed_everything=123", model=_NoParameters)
    reseeded = _rng_state()[2]
    torch.manual_seed(123)
    assert reseeded == torch.get_rng_state().tolist(), (
        "LightningCLI no longer seeds through _set_seed: update data.compat.without_seeding"
    )
    assert hasattr(LightningCLI, "_set_seed"), "LightningCLI._set_seed is gone: update data.compat.without_seeding"


def test_set_max_steps_moves_the_running_trainers_stop():
    class SetAtStart(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            set_max_steps(trainer, 2)
            assert trainer.max_steps == 2, "trainer.fit_loop.epoch_loop.max_steps no longer is trainer.max_steps"

    trainer = pl.Trainer(
        max_epochs=1,
        callbacks=[SetAtStart()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(BoringModel())
    assert trainer.global_step == 2, "setting the epoch loop's max_steps no longer stops fit there"


def test_uses_distributed_sampler_reads_the_trainers_flag():
    quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    assert uses_distributed_sampler(pl.Trainer(**quiet)) is True, (
        "Trainer(use_distributed_sampler=True) is no longer visible on trainer._accelerator_connector: "
        "update data.compat.uses_distributed_sampler"
    )
    assert uses_distributed_sampler(pl.Trainer(use_distributed_sampler=False, **quiet)) is False


def test_format_summary_table_ends_with_the_flops_line():
    """The CLI's summary drops the table's last line, which must be the FLOPs total."""
    columns = [("Name", ["backbone"]), ("Type", ["DiT"]), ("Params", ["1.0 M"])]
    table = format_summary_table(1_000_000, 1_000_000, 4.0, {"train": 1, "eval": 0}, 0, *columns)
    assert "backbone" in table and "Total params" in table
    assert "flops" in table.splitlines()[-1].lower(), (
        f"Lightning's summary table no longer ends with the FLOPs total: {table.splitlines()[-1]!r}"
    )


def test_trainer_arguments_hook_sees_and_changes_what_builds_the_trainer():
    seen = {}

    class Marker(pl.Callback):
        pass

    class HookedCLI(TrainerArgumentsHook, LightningCLI):
        def adjust_trainer(self, config, callbacks):
            seen["config"], seen["callbacks"] = dict(config), list(callbacks)
            return {**config, "max_steps": 3}, [*callbacks, Marker()]

    cli = _cli(HookedCLI, "--trainer.max_steps=7", "--seed_everything=false", model=_NoParameters)
    assert seen, "LightningCLI no longer builds its Trainer through _instantiate_trainer: update data.compat"
    assert seen["config"]["max_steps"] == 7 and "callbacks" in seen["config"]
    assert cli.trainer.max_steps == 3
    assert any(isinstance(c, Marker) for c in cli.trainer.callbacks)
