"""Where the end-to-end training step of a suite entry goes, against the bare backbone step (`ldmbench perf`'s
companion): a short ``fit`` with Lightning's ``SimpleProfiler`` plus interleaved timings of the step's layers.

    python -c "from benchmark.perf.profile import profile_entry, render_profile as r; \\
               print(r(profile_entry('leaderboards/shapes/dit.yaml'), 'leaderboards/shapes/dit.yaml'))"

Run it with ``torch.set_num_threads(1)`` and ``LDMBENCH_CACHE`` pointing at a built latent cache to profile the
cached-latent step (without a cache the configs encode images with the VAE every step).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["profile_entry", "render_profile"]


class _StepClock:
    """Lightning callback: wall time of every training batch, from one batch's end to the next one's end.

    Its medians over the steps after ``warmup`` are the end-to-end step (data, forward, backward, optimizer, EMA,
    logging, progress bar).
    """

    def __init__(self, warmup: int) -> None:
        import lightning.pytorch as pl

        class Clock(pl.Callback):
            def __init__(self) -> None:
                self.ends: list[float] = []

            def on_train_batch_end(self, *args: object) -> None:
                self.ends.append(time.perf_counter())

        self.callback, self.warmup = Clock(), warmup

    def median_step(self) -> float:
        ends = self.callback.ends[self.warmup :]
        return statistics.median(b - a for a, b in zip(ends, ends[1:], strict=False))


def profile_entry(config: str, steps: int = 60, warmup: int = 10, repeats: int = 7) -> dict[str, object]:
    """Where the end-to-end training step of a suite entry goes, against the bare backbone step at the same batch.

    Runs ``fit`` of ``config`` for ``steps`` steps (in a temporary directory, so logs and checkpoints go there;
    the latent cache is the one ``$LDMBENCH_CACHE`` points at, or is built there first) with Lightning's
    ``SimpleProfiler``, then times in one interleaved loop, on the same module and a batch of the same shape:

    - ``bare``: backbone forward + mean-square loss + backward + AdamW step (what :func:`measure` times);
    - ``loss``: the module's own ``training_loss`` (posterior sample of the cached moments, conditioner, the
      objective's time / noise draws and loss) + backward + the recipe's optimizer step, no EMA;
    - ``loss_ema``: the same plus the EMA update.

    Returns:
        The medians in seconds (``end_to_end`` from the fit, the three above), the SimpleProfiler's median per
        action (seconds) and the batch size.
    """
    import tempfile

    from benchmark.cli import build_cli

    config = str(Path(config).resolve())
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            clock = _StepClock(warmup)
            cli = build_cli(
                [
                    "--config",
                    config,
                    "--trainer.max_steps",
                    str(steps),
                    "--trainer.profiler",
                    "simple",
                    "--trainer.val_check_interval",
                    str(10 * steps),
                    "--trainer.limit_val_batches",
                    "0",
                ],
                run=False,
            )
            cli.trainer.callbacks.append(clock.callback)
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
            sections = {
                action: statistics.median(durations[warmup:] or durations)
                for action, durations in cli.trainer.profiler.recorded_durations.items()
                if len(durations) >= steps // 2
            }
            module = cli.model
            batch = next(iter(cli.datamodule.train_dataloader()))
        finally:
            os.chdir(cwd)
    end_to_end = clock.median_step()
    n = next(v.shape[0] for v in batch.values() if isinstance(v, Tensor))
    module.train()
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    x0 = module.encode(batch).detach()
    cond = module.conditioner(batch, train=True)
    t = torch.rand(n)
    backbone = module.backbone
    bare_opt = torch.optim.AdamW(backbone.parameters(), lr=1e-4)

    def bare() -> None:
        backbone(x0, t, cond).square().mean().backward()
        bare_opt.step()
        bare_opt.zero_grad(set_to_none=True)

    def loss() -> None:
        module.training_loss(batch)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def loss_ema() -> None:
        loss()
        module.ema.update(module.backbone)

    fns = {"bare": bare, "loss": loss, "loss_ema": loss_ema}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {
        "batch": n,
        "end_to_end": end_to_end,
        **{k: statistics.median(v) for k, v in times.items()},
        "sections": sections,
    }


def render_profile(result: dict[str, object], config: str) -> str:
    """Markdown of :func:`profile_entry`: the step decomposition and the SimpleProfiler's per-action medians."""
    bare = result["bare"]
    rows = [
        ("bare backbone step (forward + loss + backward + AdamW)", result["bare"]),
        ("+ the module's training_loss (posterior sample, conditioner, objective)", result["loss"]),
        ("+ EMA update", result["loss_ema"]),
        ("end-to-end Lightning step (data, hooks, logging, progress bar)", result["end_to_end"]),
    ]
    lines = [
        f"Profile of `{config}` (batch {result['batch']}): median seconds per step, and relative to the bare step.",
        "",
        "| step | ms | / bare |",
        "|---|---:|---:|",
        *(f"| {name} | {1e3 * sec:.1f} | {sec / bare:.2f} |" for name, sec in rows),
        "",
        "Lightning SimpleProfiler, median ms per call of the actions called every step:",
        "",
        "| action | ms |",
        "|---|---:|",
        *(
            f"| `{action}` | {1e3 * sec:.2f} |"
            for action, sec in sorted(result["sections"].items(), key=lambda kv: -kv[1])
            if sec >= 1e-4  # the dozens of empty hooks are noise
        ),
    ]
    return "\n".join(lines) + "\n"
