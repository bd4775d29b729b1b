"""The one place that uses private APIs of Lightning and jsonargparse, where they offer no public hook.

Each use below is pinned by a test in ``tests/data/test_compat.py`` that fails with a message naming the use when an
upgrade changes or removes what it relies on, instead of the project breaking silently. It sits on the bottom floor
because the conditioning package needs `owned` too; Lightning and jsonargparse are imported only where used.

- `owned`: jsonargparse's ``lazy_instance`` object keeps its class and arguments in ``_lazy_class_type`` /
  ``_lazy_kwargs``; a component needs a private, initialised instance of such a shared default.
- `cli_given_hyperparameters`: LightningCLI hands a module its config (``class_path`` dicts) through the context
  variable ``lightning.pytorch.core.mixins.hparams_mixin._given_hyperparameters``; nothing public says whether a
  module is being built by the CLI.
- `set_max_steps`: the trainer's step limit lives on ``trainer.fit_loop.epoch_loop.max_steps`` (``Trainer.max_steps``
  is read-only); a compute budget known only at ``on_train_start`` sets it so that progress totals are right.
- `without_seeding`: ``LightningCLI.__init__`` calls ``_set_seed`` (``seed_everything``) right after parsing; a
  parse-only CLI must leave the caller's random state alone.
- `uses_distributed_sampler`: the Trainer's ``use_distributed_sampler`` flag is kept only on its private
  ``_accelerator_connector``; a DataModule that splits its stream across ranks itself must refuse the injection.
- `format_summary_table`: ``ModelSummary.summarize`` is public, but the table it prints comes from the private
  ``_format_summary_table``; the CLI's summary reuses it without the FLOPs line (always 0 for a diffusion module).
- `TrainerArgumentsHook`: LightningCLI builds the Trainer in the private ``_instantiate_trainer(config, callbacks)``,
  the only point that sees both the trainer's arguments and the callbacks the CLI adds; the public
  ``instantiate_trainer(**kwargs)`` can only override arguments.
"""

from __future__ import annotations

from typing import Any


def owned(component: Any) -> Any:
    """A real, private instance of a component given as a `jsonargparse.lazy_instance` default; others unchanged.

    A lazy default is one object shared by every call of the constructor and only initialised by a method call, so
    plain attribute reads on it fail; build a fresh instance of the class from its recorded arguments instead.
    """
    lazy_type = getattr(component, "_lazy_class_type", None)
    if lazy_type is None:
        return component
    return lazy_type(**component._lazy_kwargs)


def cli_given_hyperparameters() -> dict[str, Any] | None:
    """The config LightningCLI is instantiating the current module from (plain data), or None outside the CLI."""
    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

    return _given_hyperparameters.get()


def set_max_steps(trainer: Any, steps: int) -> None:
    """Set the running trainer's step limit (what ``trainer.max_steps`` reports and where ``fit`` stops)."""
    trainer.fit_loop.epoch_loop.max_steps = steps


def without_seeding(cli_class: type) -> type:
    """A subclass of a `LightningCLI` class whose construction does not call ``seed_everything``."""

    class _NoSeed(cli_class):
        def _set_seed(self) -> None:  # parsing must not reseed the caller's RNGs
            pass

    _NoSeed.__name__ = _NoSeed.__qualname__ = f"{cli_class.__name__}WithoutSeeding"
    return _NoSeed


def uses_distributed_sampler(trainer: Any) -> bool:
    """Whether the trainer wraps training samplers in a ``DistributedSampler`` (its ``use_distributed_sampler``)."""
    return bool(getattr(getattr(trainer, "_accelerator_connector", None), "use_distributed_sampler", False))


def format_summary_table(
    total_parameters: int,
    trainable_parameters: int,
    model_size: float,
    total_training_modes: dict[str, int],
    total_flops: int,
    *columns: tuple[str, list[str]],
) -> str:
    """Lightning's model-summary table (what ``ModelSummary.summarize`` logs) as a string."""
    from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table

    return _format_summary_table(
        total_parameters, trainable_parameters, model_size, total_training_modes, total_flops, *columns
    )


class TrainerArgumentsHook:
    """Mixin for a `LightningCLI` subclass (list it first): `adjust_trainer` sees, and may change, the Trainer's
    arguments and the extra callbacks right before the Trainer is built."""

    def adjust_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> tuple[dict[str, Any], list[Any]]:
        """The Trainer's keyword arguments and the callbacks added to ``config["callbacks"]``; returns both."""
        return config, callbacks

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        config, callbacks = self.adjust_trainer(config, callbacks)
        return super()._instantiate_trainer(config, callbacks)  # type: ignore[misc]
