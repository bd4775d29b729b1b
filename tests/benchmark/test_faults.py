"""Faults with real processes and real files: a `fit` killed by SIGKILL (between steps and inside the checkpoint
write) resumes to the uninterrupted weights; a full disk at a checkpoint write names the file and keeps the previous
checkpoint; a corrupt latent-cache shard is refused by name; bad inputs end in one clear error or a counted event."""

import errno
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import data.latent_cache as lc
from benchmark.checkpoint_io import AtomicCheckpointIO
from benchmark.cli import main
from conditioning.text import TextEncoder
from data.autoencoder import Autoencoder
from data.shapes import Shapes

ROOT = Path(__file__).resolve().parents[2]
SHAPES = str(ROOT / "leaderboards/shapes/dit.yaml")
MMDIT = str(ROOT / "leaderboards/shapes/mmdit.yaml")
EVERY_2 = """
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {save_last: true, every_n_train_steps: 2, save_top_k: 0}
"""
FIT = [
    "--trainer.limit_val_batches=0",
    "--data.init_args.batch_size=4",
    "--data.init_args.num_workers=0",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.deterministic=true",
]
# Runs `ldmbench` in a child that SIGKILLs itself: after optimizer step KILL_AFTER_STEP, or halfway through writing the
# checkpoint of step KILL_IN_SAVE (the bytes written so far are cut to half, then the process dies).
KILLER = """
import os, signal, sys, torch
from benchmark.module import DiffusionModule
after, in_save = int(os.environ.get("KILL_AFTER_STEP", -1)), int(os.environ.get("KILL_IN_SAVE", -1))
step = DiffusionModule.optimizer_step
def optimizer_step(self, *args, **kwargs):
    step(self, *args, **kwargs)
    if self.global_step == after:
        os.kill(os.getpid(), signal.SIGKILL)
DiffusionModule.optimizer_step = optimizer_step
save = torch.save
def killing_save(obj, f, *args, **kwargs):
    save(obj, f, *args, **kwargs)
    if isinstance(obj, dict) and obj.get("global_step") == in_save and hasattr(f, "flush"):
        f.flush()
        os.truncate(f.fileno(), os.fstat(f.fileno()).st_size // 2)
        os.kill(os.getpid(), signal.SIGKILL)
torch.save = killing_save
from benchmark.cli import main
main(sys.argv[1:])
"""


def _fit(root: Path, *extra: str) -> None:
    main(["fit", "--config", SHAPES, "--config", str(root / "every2.yaml"), *FIT, *extra])


def _killed_fit(root: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    args = ["fit", "--config", SHAPES, "--config", str(root / "every2.yaml"), *FIT, *extra]
    full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", KILLER, *args], cwd=root, env=full_env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """6 uninterrupted steps (deterministic): the weights every resumed run must end with."""
    root = tmp_path_factory.mktemp("straight")
    (root / "every2.yaml").write_text(EVERY_2)
    _fit(root, "--trainer.max_steps=6", f"--trainer.default_root_dir={root / 'runs'}")
    return torch.load(root / "runs/dit-DiTModule/version_0/checkpoints/last.ckpt", weights_only=True)


def _assert_same_weights(resumed: dict, straight: dict) -> None:
    assert resumed["global_step"] == straight["global_step"] == 6
    for key, value in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=0, msg=f"{key} differs")


def _kill_then_resume(tmp_path: Path, env: dict[str, str]) -> tuple[dict, int]:
    (tmp_path / "every2.yaml").write_text(EVERY_2)
    root = f"--trainer.default_root_dir={tmp_path / 'runs'}"
    killed = _killed_fit(tmp_path, env, "--trainer.max_steps=6", root)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    last = tmp_path / "runs/dit-DiTModule/version_0/checkpoints/last.ckpt"
    step_at_kill = torch.load(last, weights_only=True)["global_step"]  # whole and loadable
    _fit(tmp_path, "--trainer.max_steps=6", root, "--ckpt_path=last")
    return torch.load(last, weights_only=True), step_at_kill


def test_sigkill_inside_the_checkpoint_write_leaves_the_previous_one_and_resumes_exactly(tmp_path, straight):
    resumed, step_at_kill = _kill_then_resume(tmp_path, {"KILL_IN_SAVE": "4"})
    assert step_at_kill == 2  # the half-written step-4 file never replaced last.ckpt
    leftovers = [p.name for p in (tmp_path / "runs/dit-DiTModule/version_0/checkpoints").iterdir()]
    assert [n for n in leftovers if n.startswith(".last.ckpt.tmp-")], leftovers  # the killed write, set apart
    _assert_same_weights(resumed, straight)


@pytest.mark.slow
def test_sigkill_between_steps_resumes_exactly(tmp_path, straight):
    resumed, step_at_kill = _kill_then_resume(tmp_path, {"KILL_AFTER_STEP": "3"})
    assert step_at_kill == 2
    _assert_same_weights(resumed, straight)


def test_a_full_disk_at_a_checkpoint_write_names_the_file_and_keeps_the_previous_one(tmp_path, monkeypatch):
    target = tmp_path / "checkpoints/last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 2, "w": torch.ones(3)}, target)
    before = target.read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"x" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=r"could not write checkpoint .*last\.ckpt .*No space left") as info:
        io.save_checkpoint({"global_step": 4, "w": torch.zeros(3)}, target)
    assert info.value.errno == errno.ENOSPC
    assert target.read_bytes() == before and sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]


@pytest.mark.parametrize("damage", ["truncate", "header", "bytes"])
def test_a_corrupt_latent_cache_shard_is_refused_by_name(tmp_path, damage):
    shapes = Shapes("train", 32, length=12, seed=3)
    manifest = lc.build_cache(
        shapes, Autoencoder("embedded:shapes-vae"), tmp_path / "c", shard_size=6, batch_size=6, progress=False
    )
    shard = tmp_path / "c" / manifest["shards"][1]["file"]
    data = bytearray(shard.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "header":
        data[10:20] = b"\x00" * 10
    else:
        data[-200:] = b"\xff" * 200  # inside the stored moments: only the hash tells
    shard.write_bytes(bytes(data))
    with pytest.raises(lc.CacheCorruptError, match=f"latent cache shard {shard} is corrupt"):
        lc.LatentCacheDataset(tmp_path / "c")[0]


def _one_line_error(capsys, args) -> str:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ldmbench: error:") and "Traceback" not in err and "usage:" not in err, err[-2000:]
    return err


def test_evaluating_a_checkpoint_of_another_architecture_is_one_error(tmp_path, capsys):
    from baselines.dit import DiTModule

    dit = DiTModule(size="DiT-tiny/2", num_classes=10, resolution=32, autoencoder=Autoencoder("embedded:shapes-vae"))
    ckpt = tmp_path / "dit.ckpt"
    hparams = {"_class_path": "baselines.dit.DiTModule"}
    torch.save({"state_dict": dit.state_dict(), "global_step": 0, "hyper_parameters": hparams}, ckpt)
    err = _one_line_error(capsys, ["evaluate", "--config", MMDIT, "--ckpt_path", str(ckpt)])
    assert "holds a DiTModule, the config builds a MMDiTModule" in err


def test_an_entry_naming_a_missing_class_is_one_error(tmp_path, capsys):
    suite = tmp_path / "suite"
    suite.mkdir()
    for name in ("suite.yaml", "protocol.yaml"):
        shutil.copy(ROOT / "leaderboards/shapes" / name, suite / name)
    (suite / "nope.yaml").write_text(Path(SHAPES).read_text().replace("baselines.dit.DiTModule", "baselines.no.Pe"))
    err = _one_line_error(capsys, ["fit", "--config", str(suite / "nope.yaml"), "--print_config"])
    assert f"{suite / 'nope.yaml'}: model.class_path baselines.no.Pe names no class" in err
    run = ["leaderboard", "run", str(suite), "--preset", "smoke", "--entries", "nope", "--dry-run"]
    err = _one_line_error(capsys, [*run, "--output", str(tmp_path / "out")])
    assert "model.class_path baselines.no.Pe names no class that imports" in err


def test_an_empty_caption_is_the_null_prompt_and_over_long_ones_are_counted():
    encoder = TextEncoder("embedded:shapes-clip", max_length=16)
    tokens, mask, _ = encoder.encode(["", "a red circle"])
    assert mask[0].sum() == 2  # start and end tokens only: the prompt CFG's unconditional branch uses
    assert encoder.truncated == 0
    with pytest.warns(UserWarning, match="longer than max_length=16 tokens are truncated"):
        encoder.encode(["a red circle " * 10, "a blue square"])
    encoder.encode(["a green star " * 10])
    assert encoder.truncated == 2
