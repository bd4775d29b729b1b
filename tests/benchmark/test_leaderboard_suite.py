"""Suite entries: every YAML of the folder, shared parts (``_*.yaml``) that are never entries, and entries stacked from
several config files exactly as stacked ``--config`` files are."""

import copy
import shutil
from pathlib import Path

import pytest
import yaml

from benchmark.leaderboard import runner
from benchmark.leaderboard.suite import load_suite, merge_configs

ROOT = Path(__file__).resolve().parents[2]
SHAPES = ROOT / "leaderboards" / "shapes"


def _suite(tmp_path, entries=None):
    suite = tmp_path / "suite"
    suite.mkdir(parents=True)
    raw = yaml.safe_load((SHAPES / "suite.yaml").read_text())
    raw.pop("entries", None)
    if entries is not None:
        raw["entries"] = entries
    (suite / "suite.yaml").write_text(yaml.safe_dump(raw))
    for name in ("dit.yaml", "mdt.yaml", "protocol.yaml"):
        shutil.copy(SHAPES / name, suite / name)
    # A shared part: one data setting for every entry on "your own data".
    (suite / "_mydata.yaml").write_text("data:\n  init_args:\n    batch_size: 16\n    num_workers: 0\n")
    return suite


def _parse_stacked(paths):
    """The resolved config LightningCLI gives for ``--config A --config B ...`` (parse only)."""
    from benchmark.cli import CLI_KWARGS, LDMBenchCLI

    class _ParseOnly(LDMBenchCLI):
        def _set_seed(self):
            pass

        def instantiate_classes(self):
            pass

    args = [a for p in paths for a in ("--config", str(p))]
    with runner._quiet_cli():
        cli = _ParseOnly(**CLI_KWARGS, args=args, run=False, save_config_callback=None)
    return yaml.safe_load(cli.parser.dump(cli.config, skip_check=True))


def test_every_yaml_but_shared_parts_is_an_entry(tmp_path):
    suite = load_suite(_suite(tmp_path))
    assert suite.entry_names == ["dit", "mdt"]  # not _mydata, suite or protocol


def test_an_entry_stacks_config_files_as_stacked_config_flags_do(tmp_path):
    stacked = {"name": "dit_mydata", "configs": ["dit.yaml", "_mydata.yaml"]}
    root = _suite(tmp_path, entries=["dit", stacked])
    suite = load_suite(root)
    assert suite.entry_names == ["dit", "dit_mydata", "mdt"]  # listed first, then the folder's others
    plain, mine = suite.entries(["dit", "dit_mydata"])
    assert mine.paths == [root / "dit.yaml", root / "_mydata.yaml"] and mine.path == root / "_mydata.yaml"
    assert mine.config_args() == ["--config", str(root / "dit.yaml"), "--config", str(root / "_mydata.yaml")]
    assert mine.config["data"]["init_args"]["batch_size"] == 16
    assert plain.config["data"]["init_args"]["batch_size"] == 64
    # Everything else is dit.yaml's, and the whole resolved config is what `--config dit.yaml --config _mydata.yaml`
    # gives the command line.
    expected = _parse_stacked(mine.paths)
    assert runner.parse_entry(copy.deepcopy(mine.config)) == expected
    assert expected["data"]["init_args"]["latent_cache"] == "auto" and expected["model"]["init_args"]["size"]
    # The shared part is among the files a row's key holds (a committed row must not have it dirty).
    (job,) = runner.plan(suite, suite.preset(), ["dit_mydata"], [0], tmp_path / "out", threads=1)
    assert job.entry.paths == mine.paths and root / "_mydata.yaml" in job.code_files


def test_merging_replaces_lists_and_a_node_whose_class_changes():
    base = {"model": {"class_path": "a.A", "init_args": {"x": 1, "y": 2}}, "trainer": {"callbacks": [1, 2], "n": 1}}
    same = merge_configs([base, {"model": {"init_args": {"y": 3}}, "trainer": {"callbacks": [3]}}])
    assert same["model"] == {"class_path": "a.A", "init_args": {"x": 1, "y": 3}}
    assert same["trainer"] == {"callbacks": [3], "n": 1}
    other = merge_configs([base, {"model": {"class_path": "b.B", "init_args": {"z": 0}}}])
    assert other["model"] == {"class_path": "b.B", "init_args": {"z": 0}}


def test_a_malformed_stacked_entry_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"dit_x.*do not exist"):
        load_suite(_suite(tmp_path, entries=[{"name": "dit_x", "configs": ["dit.yaml", "_missing.yaml"]}]))
    with pytest.raises(ValueError, match="give name and configs"):
        load_suite(_suite(tmp_path / "b", entries=[{"name": "dit_x", "config": ["dit.yaml"]}]))
