"""The one preemption path of a row running as a submitit job: finish the step, write ``last.ckpt``, requeue.

Lightning's own SLURM requeue (SIGUSR1, ``hpc_ckpt_*.ckpt``) is off (`plan.training_config`): the runner resumes a row
from its ``last.ckpt`` with an explicit ``ckpt_path``, which would never read Lightning's file.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import submitit
from lightning.pytorch import Callback


class PreemptionCheckpoint(Callback):
    """The one preemption path: on submitit's signal (USR2), finish the running step, write ``last.ckpt``, then let
    submitit requeue the job.

    The signal arrives anywhere in a step; a checkpoint written there would hold half an optimizer update. So the
    handler only takes note during training; at the end of the step every rank agrees (one all-reduce) and writes
    the checkpoint the runner resumes from (the ``ModelCheckpoint``'s ``last.ckpt``, replaced atomically), and rank 0
    calls submitit's handler, which requeues and exits. Outside training (evaluation, set-up) submitit's handler runs
    at once: the requeued row re-evaluates its final weights or resumes from its last checkpoint.
    """

    def __init__(self) -> None:
        self.requested = False
        self.training = False
        self._signal: int | None = None
        self._submitit_handler: Any = None

    def install(self) -> None:
        """Stand in front of submitit's handler of its preemption signal (installed before a job's function runs)."""
        self._signal = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
        handler = signal.getsignal(self._signal)
        if callable(handler):
            self._submitit_handler = handler
            signal.signal(self._signal, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.training:
            self.requested = True
            print(f"preemption signal {signal.Signals(signum).name}: checkpoint at the end of this step", flush=True)
        else:
            self._hand_over()

    def _hand_over(self) -> None:
        self.training = False
        if self._submitit_handler is not None:
            self._submitit_handler(self._signal, None)  # rank 0: checkpoint() + requeue + exit

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.training = True

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        decision = self.requested
        if trainer.world_size > 1:
            decision = trainer.strategy.reduce_boolean_decision(decision, all=False)
        if not decision:
            return
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and checkpoint.dirpath:
            last = Path(checkpoint.dirpath) / f"{checkpoint.CHECKPOINT_NAME_LAST}{checkpoint.FILE_EXTENSION}"
            partial = last.with_name(f".preempted-{last.name}")
            trainer.save_checkpoint(partial, weights_only=False)
            if trainer.is_global_zero:
                _replace(partial, last)
            trainer.strategy.barrier()
        self._hand_over()
        if not trainer.is_global_zero:  # rank 0 requeues the whole job, which stops this task too
            time.sleep(60)
        raise SystemExit(f"preempted at step {trainer.global_step}: requeued")

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.training = False
        if self.requested:
            self._hand_over()


def _replace(new: Path, old: Path) -> None:
    """``os.replace`` for a checkpoint file, or for a sharded checkpoint's folder (FSDP), which cannot replace a folder
    in one rename: the old one is moved aside first, then deleted."""
    if not old.is_dir():
        os.replace(new, old)
        return
    aside = old.with_name(f".replaced-{old.name}")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(old, aside)
    os.replace(new, old)
    shutil.rmtree(aside, ignore_errors=True)
