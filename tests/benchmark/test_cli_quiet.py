"""What a user reads: the command list, and none of the known noise on stderr or as warnings of a short run."""

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from benchmark.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[2]
SHAPES = str(ROOT / "leaderboards/shapes/dit.yaml")
FAST = [
    "--trainer.limit_val_batches=1",
    "--data.init_args.batch_size=4",
    "--data.init_args.num_workers=0",
    "--model.init_args.sampler.init_args.steps=2",
    "--trainer.enable_progress_bar=false",
]
# Each was printed by a plain run before issue 22 (the command that printed it in the comment).
NOISE = (
    "intended to run from within Python",  # sample
    "The dirpath has changed",  # predict
    "`max_epochs` was not set",  # leaderboard rows
    "litlogger",  # every command
    "Total FLOPs",  # model summary (rich)
    "Total Flops",  # model summary (plain)
    "`weights_only` was not set",  # leaderboard rows (Lightning, at the final checkpoint)
    "Loading weights",  # leaderboard rows (transformers' bar over the Shapes CLIP's tensors)
)


def _noise(text: str) -> list[str]:
    return [n for n in NOISE if n in text]


def test_help_lists_one_command_per_line_with_a_sentence_and_not_test(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    lines = [line.split() for line in out.splitlines() if line.startswith("  ")]
    listed = [words[0] for words in lines]
    assert listed == [name for name, _ in COMMANDS] and "test" not in listed
    for name in ("fit", "validate", "predict", "sample", "describe", "cache-latents", "evaluate", "leaderboard"):
        assert name in listed
    assert all(len(words) >= 5 for words in lines)  # a sentence each, not a bare name


def test_a_short_fit_predict_and_sample_print_none_of_the_noise_and_write_metrics(tmp_path, monkeypatch, capfd, caplog):
    monkeypatch.chdir(tmp_path)
    commands = [
        ["fit", "--config", SHAPES, *FAST, "--trainer.max_steps=3"],
        ["predict", "--config", SHAPES, *FAST, "--ckpt_path=last", "--trainer.limit_predict_batches=1"],
        ["sample", "--config", SHAPES, "--ckpt_path=last", "--classes=1", "--n=1", *FAST[-2:-1]],
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for command in commands:
            monkeypatch.setattr(sys, "argv", ["ldmbench", *command])  # as the console script runs it
            main()
    captured = capfd.readouterr()
    # Lightning's messages go through logging (pytest's caplog while testing, stderr otherwise).
    text = captured.out + captured.err + caplog.text + "\n".join(str(w.message) for w in caught)
    assert _noise(text) == []
    assert "Trainable params" in text  # the summary is still there, without its FLOPs
    # A run shorter than log_every_n_steps (25 in the entry) still writes its metrics.
    metrics = (tmp_path / "runs/dit-DiTModule/version_0/metrics.csv").read_text().splitlines()
    assert len(metrics) >= 2 and "train/loss" in metrics[0]


@pytest.mark.slow
def test_a_smoke_leaderboard_row_prints_none_of_the_noise(tmp_path):
    out = tmp_path / "board"
    result = subprocess.run(
        [sys.executable, "-m", "benchmark", "leaderboard", "run", str(ROOT / "leaderboards/shapes")]
        + ["--preset", "smoke", "--entries", "dit", "--output", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert _noise(result.stdout + result.stderr) == []
    assert list((out / "rows").glob("*.json"))
