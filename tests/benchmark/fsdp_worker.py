"""Train a tiny DiT under `benchmark.sharding.FSDPStrategy` on CPU processes (run by tests/benchmark/test_sharding.py).

``python fsdp_worker.py OUT VAE DEVICES MAX_STEPS PRECISION CHECKPOINTING [CKPT_PATH]`` writes ``OUT/final.pt`` (the
gathered backbone and EMA weights, rank 0) and ``OUT/losses_rank<R>.json``; checkpoints every 2 steps under
``OUT/ckpts/step=<N>.ckpt/`` (sharded folders). Lightning relaunches this script once per extra process.
"""

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from baselines.dit import DiTModule  # noqa: E402
from benchmark.objectives import RectifiedFlow  # noqa: E402
from benchmark.samplers import EulerSampler  # noqa: E402
from benchmark.sharding import FSDPStrategy  # noqa: E402
from data.autoencoder import Autoencoder  # noqa: E402

SEED, ITEMS, BATCH = 7, 16, 4  # 2 steps per epoch on 2 processes


def build(vae: str) -> DiTModule:
    pl.seed_everything(SEED, verbose=False)
    return DiTModule(
        size="DiT-tiny/2",
        num_classes=10,
        resolution=32,
        autoencoder=Autoencoder(vae),
        objective=RectifiedFlow(),
        sampler=EulerSampler(steps=2),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3),
        ema_decay=0.5,
    )


def items(latent_shape: tuple[int, ...]) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(ITEMS, *latent_shape, generator=generator)
    return [{"latent": latents[i], "class_label": torch.tensor(i % 10)} for i in range(ITEMS)]


class Losses(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def main() -> None:
    out, vae, devices, max_steps, precision, checkpointing = sys.argv[1:7]
    ckpt_path = sys.argv[7] if len(sys.argv) > 7 else None
    out = Path(out)
    module = build(vae)
    loader = torch.utils.data.DataLoader(items(module.latent_shape), batch_size=BATCH, shuffle=False)
    losses = Losses()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=int(devices),
        strategy=FSDPStrategy(mixed_precision=precision, activation_checkpointing=checkpointing == "1"),
        precision="32-true",
        max_steps=int(max_steps),
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        callbacks=[
            losses,
            pl.callbacks.ModelCheckpoint(
                dirpath=out / "ckpts", filename="{step}", every_n_train_steps=2, save_top_k=-1, save_last=False
            ),
        ],
    )
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    rank = trainer.global_rank
    (out / f"losses_rank{rank}.json").write_text(json.dumps(losses.losses))
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = {
        "backbone": get_model_state_dict(module.backbone, options=options),
        "ema": get_model_state_dict(module.ema.shadow, options=options),
        "dtypes": sorted({str(p.dtype) for p in module.backbone.parameters()}),
    }
    if rank == 0:
        torch.save(state, out / "final.pt")


if __name__ == "__main__":
    main()
