"""The CLI end to end, in-process: configs parse, training runs, resume is exact, bad input fails clearly."""

from pathlib import Path

import pytest
import torch

from benchmark.cli import describe, main

ROOT = Path(__file__).resolve().parents[2]
SHAPES = str(ROOT / "leaderboards/shapes/dit.yaml")
RUN = Path("runs/dit-DiTModule")  # relative to the test's working directory (tmp_path)
ALL_YAMLS = sorted(
    str(p.relative_to(ROOT))
    for p in (ROOT / "leaderboards").rglob("*.yaml")
    if p.name not in ("suite.yaml", "protocol.yaml") and not p.name.startswith("_")  # _*: parts entries stack
)

# A fast variant of the Shapes entry: few steps, tiny batch, no workers, no progress bar, checkpoint dir in tmp.
FAST = [
    "--trainer.limit_val_batches=1",
    "--data.init_args.batch_size=8",
    "--data.init_args.num_workers=0",
    "--model.init_args.sampler.init_args.steps=4",
]


# The toy suites' entries (Shapes) are built and counted by default; the paper-scale and reference configs, whose
# FLOP count traces an XL model (5-16 s each), are parsed and validated against the classes' signatures by default
# and built and counted under `-m slow` (their exact reference counts are pinned by the per-model tests).
TOY_YAMLS = [p for p in ALL_YAMLS if p.startswith("leaderboards/shapes")]
PAPER_YAMLS = [p for p in ALL_YAMLS if p not in TOY_YAMLS]


@pytest.mark.parametrize("path", TOY_YAMLS)
def test_every_toy_yaml_parses_and_builds(path):
    info = describe(["--config", str(ROOT / path)])
    assert info["params"] > 0 and info["gmacs_per_forward"] > 0


@pytest.mark.parametrize("path", PAPER_YAMLS)
def test_every_paper_scale_yaml_parses_against_the_signatures(path):
    import yaml

    from benchmark.leaderboard.runner import parse_entry

    resolved = parse_entry(yaml.safe_load((ROOT / path).read_text()))
    assert resolved["model"]["class_path"] and resolved["data"]["class_path"]


@pytest.mark.slow
@pytest.mark.parametrize("path", PAPER_YAMLS)
def test_every_paper_scale_yaml_builds_and_counts(path):
    info = describe(["--config", str(ROOT / path)])
    assert info["params"] > 0 and info["gmacs_per_forward"] > 0


SUITE_FILES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "leaderboards").rglob("suite.yaml"))
PROTOCOL_FILES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "leaderboards").rglob("protocol.yaml"))


@pytest.mark.parametrize("path", SUITE_FILES)
def test_every_shipped_suite_parses_with_its_presets_protocols_and_entries(path):
    """The suite and protocol files the test above leaves out: every preset's protocol is a valid EvalProtocol, and
    every entry's YAML names an importable model class."""
    import importlib

    from benchmark.evaluation.protocol import EvalProtocol
    from benchmark.leaderboard.suite import load_suite

    suite = load_suite(ROOT / path)
    assert suite.default_preset in suite.presets
    for name in suite.presets:
        EvalProtocol.from_dict(suite.protocol_for(suite.preset(name)))
    for entry in suite.entries():
        module, _, cls = entry.model_class.rpartition(".")
        assert hasattr(importlib.import_module(module), cls), f"{entry.path}: no class {entry.model_class}"


@pytest.mark.parametrize("path", PROTOCOL_FILES)
def test_every_shipped_protocol_file_parses(path):
    from benchmark.evaluation.protocol import EvalProtocol

    assert EvalProtocol.from_yaml(ROOT / path).num_samples > 0


def test_describe_dit_xl_2_reference_config():
    info = describe(["--config", str(ROOT / "leaderboards/imagenet-256/dit_xl_2.yaml")])
    assert info["params"] == 675_129_632
    assert info["trainable_params"] == 674_834_720
    assert info["gmacs_per_forward"] == pytest.approx(118.6, abs=0.1)
    assert info["tokens"] == 256 and info["resolution"] == 256


def test_fast_dev_run_writes_a_sample_grid(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", SHAPES, *FAST, "--trainer.fast_dev_run=2", f"--trainer.default_root_dir={tmp_path}"])
    grids = list(tmp_path.rglob("samples/*.png"))
    assert grids, "the SampleGrid callback wrote no PNG"


CHECKPOINT_EVERY_2 = """
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {save_last: true, every_n_train_steps: 2, save_top_k: 0}
"""


def _fit(tmp_path, *extra):
    override = tmp_path / "every2.yaml"
    override.write_text(CHECKPOINT_EVERY_2)
    main(["fit", "--config", SHAPES, "--config", str(override), *FAST, "--trainer.val_check_interval=2", *extra])


def test_resume_continues_exactly(tmp_path, monkeypatch):
    """4 steps + resume to 6 gives the same weights, EMA and optimizer state as 6 uninterrupted steps."""
    monkeypatch.chdir(tmp_path)
    _fit(tmp_path, "--trainer.max_steps=6")
    straight = torch.load(RUN / "version_0/checkpoints/last.ckpt", weights_only=True)
    _fit(tmp_path, "--trainer.max_steps=4")  # a new run: version_1
    _fit(tmp_path, "--trainer.max_steps=6", "--ckpt_path=last")  # resumes the newest run, in its own folder
    assert sorted(p.name for p in RUN.iterdir()) == ["version_0", "version_1"]
    resumed = torch.load(RUN / "version_1/checkpoints/last.ckpt", weights_only=True)
    assert not (RUN / "version_1/checkpoints/last-v1.ckpt").exists()
    assert resumed["global_step"] == straight["global_step"] == 6
    for key, value in straight["state_dict"].items():
        torch.testing.assert_close(
            resumed["state_dict"][key], value, msg=lambda m, key=key: f"{key} differs after resume: {m}"
        )
    assert int(resumed["state_dict"]["ema.num_updates"]) == 6
    s_opt, r_opt = straight["optimizer_states"][0]["state"], resumed["optimizer_states"][0]["state"]
    for i in s_opt:
        torch.testing.assert_close(r_opt[i]["exp_avg"], s_opt[i]["exp_avg"])


def test_unknown_key_wrong_type_and_missing_file_are_named(tmp_path, capsys):
    cases = [
        (["--model.init_args.not_a_key=1"], "not_a_key"),
        (["--model.init_args.ema_decay=fast"], "ema_decay"),
        (["--data.init_args.batch_size=many"], "batch_size"),
    ]
    for extra, needle in cases:
        with pytest.raises(SystemExit):
            main(["fit", "--config", SHAPES, *extra, "--print_config"])
        assert needle in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(tmp_path / "nope.yaml")])
    assert "nope.yaml" in capsys.readouterr().err


def test_help_documents_constructor_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--model.help", "baselines.dit.DiTModule"])
    out = capsys.readouterr().out
    assert "A row of ``SIZES``" in out or "SIZES" in out
    assert "ema_decay" in out and "EMA decay" in out


def test_bf16_mixed_precision_trains_on_cpu(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", SHAPES, *FAST, "--trainer.fast_dev_run=2", "--trainer.precision=bf16-mixed"])
    grid = next(tmp_path.rglob("samples/*.png"))
    assert grid.stat().st_size > 0


def test_cli_checkpoint_rebuilds_the_model_with_weights_only(tmp_path, monkeypatch):
    from baselines.dit import DiTModule

    monkeypatch.chdir(tmp_path)
    _fit(tmp_path, "--trainer.max_steps=2")
    path = RUN / "version_0/checkpoints/last.ckpt"
    state = torch.load(path, weights_only=True)
    assert not any(k.startswith(("autoencoder.", "_train_forward.")) for k in state["state_dict"])
    model = DiTModule.load_from_checkpoint(path, weights_only=True)
    assert model.autoencoder.pretrained == "embedded:shapes-vae" and model.latent_shape == (4, 8, 8)
    # Every component comes back as the YAML configured it, not as DiTModule's defaults (DDPM, DDPM-250, CFG 1.5).
    assert model.guidance.semantic_scale == 3.0 and type(model.sampler).__name__ == "EulerSampler"
    assert type(model.objective).__name__ == "RectifiedFlow" and model.backbone.out_channels == 4
    torch.testing.assert_close(
        model.ema.shadow.final_layer.linear.weight, state["state_dict"]["ema.shadow.final_layer.linear.weight"]
    )


def test_predict_writes_pngs_and_an_adm_npz(tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.chdir(tmp_path)
    writer = tmp_path / "writer.yaml"
    writer.write_text(
        "trainer:\n  callbacks:\n    - class_path: benchmark.callbacks.ImageWriter\n"
        f"      init_args: {{output_dir: {tmp_path / 'generated'}}}\n"
    )
    main(["predict", "--config", SHAPES, "--config", str(writer), *FAST, "--trainer.limit_predict_batches=1"])
    arr = np.load(tmp_path / "generated/samples.npz")["arr_0"]
    assert arr.shape == (8, 32, 32, 3) and arr.dtype == np.uint8
    assert len(list((tmp_path / "generated").glob("*.png"))) == 8


MYMODEL = '''
"""DiT with SwiGLU MLPs: a new entry written as a subclass of an existing one."""

from typing import Any

from torch import Tensor, nn

from baselines.dit import DiTModule


class SwiGLU(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(width, 2 * hidden)
        self.down = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(nn.functional.silu(gate) * up)


class SwiGLUDiT(DiTModule):
    """DiT whose MLPs are SwiGLU.

    Args:
        mlp_hidden_ratio: SwiGLU hidden width as a multiple of the model width (8/3 keeps DiT's parameter count).
    """

    def __init__(self, mlp_hidden_ratio: float = 8 / 3, **kwargs: Any) -> None:
        self.mlp_hidden_ratio = mlp_hidden_ratio
        super().__init__(**kwargs)

    def build_backbone(self) -> nn.Module:
        dit = super().build_backbone()
        for block in dit.blocks:
            block.mlp = SwiGLU(dit.hidden_size, int(dit.hidden_size * self.mlp_hidden_ratio))
        return dit
'''


def test_a_subclass_in_the_working_directory_trains_from_yaml(tmp_path, monkeypatch):
    """mymodel.py next to the config resolves from class_path without PYTHONPATH; the EMA has the new blocks."""
    import os
    import sys

    (tmp_path / "mymodel.py").write_text(MYMODEL)
    (tmp_path / "mine.yaml").write_text(
        "model:\n  class_path: mymodel.SwiGLUDiT\n  init_args:\n    mlp_hidden_ratio: 2.0\n"
    )
    # Nothing on sys.path points at the working directory: the CLI must add it, as `python -m` would.
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", os.getcwd(), str(tmp_path))])
    monkeypatch.delitem(sys.modules, "mymodel", raising=False)
    monkeypatch.chdir(tmp_path)
    _fit(tmp_path, "--config", str(tmp_path / "mine.yaml"), "--trainer.max_steps=2")
    monkeypatch.delitem(sys.modules, "mymodel", raising=False)  # the module is tmp_path's; do not leak it
    path = next(tmp_path.rglob("last.ckpt"))
    state = torch.load(path, weights_only=True)
    assert state["hyper_parameters"]["_class_path"] == "mymodel.SwiGLUDiT"
    assert state["hyper_parameters"]["mlp_hidden_ratio"] == 2.0 and state["hyper_parameters"]["size"] == "DiT-tiny/2"
    weights = state["state_dict"]
    assert weights["ema.shadow.blocks.0.mlp.gate_up.weight"].shape == (2 * 256, 128)  # hidden = 2.0 x 128
    assert not any(k.startswith("ema.shadow.") and ".mlp.fc1." in k for k in weights)
    assert not torch.equal(weights["ema.shadow.blocks.0.mlp.gate_up.weight"], torch.zeros(512, 128))
