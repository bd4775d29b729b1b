"""Errors a user makes reach them as one `ldmbench: error:` line and exit status 2, however the CLI is started."""

import runpy
import sys

import pytest


def _run_as_main(monkeypatch, argv):
    # `python -m benchmark.cli` runs the module as `__main__`: a second copy of its classes (ConfigError) that the
    # modules it calls do not raise.
    monkeypatch.setattr(sys, "argv", ["benchmark/cli.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("benchmark.cli", run_name="__main__")
    return exit_info.value.code


def test_python_m_benchmark_cli_reports_a_config_error_of_another_module(monkeypatch, capsys, tmp_path):
    missing = tmp_path / "nothere.yaml"
    code = _run_as_main(monkeypatch, ["sample", "--protocol", str(missing), "--ckpt_path", "last", "--classes", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("ldmbench: error: --protocol") and str(missing) in err
    assert "Traceback" not in err


def test_a_missing_checkpoint_is_one_error_line(monkeypatch, capsys, tmp_path):
    from benchmark.cli import main

    missing = tmp_path / "none.ckpt"
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--config", "leaderboards/shapes/dit.yaml", "--ckpt_path", str(missing), "--classes", "1"])
    assert exit_info.value.code == 2
    assert f"ldmbench: error: checkpoint {missing} does not exist" in capsys.readouterr().err


def test_a_missing_checkpoint_is_still_a_file_not_found_error():
    from benchmark.runs import CheckpointError, MissingCheckpointError

    assert issubclass(MissingCheckpointError, FileNotFoundError) and issubclass(MissingCheckpointError, CheckpointError)
