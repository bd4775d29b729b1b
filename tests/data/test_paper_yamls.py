"""Every paper-scale entry YAML parses, describes on the meta device without the data, and names the missing path."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SUITES = ("imagenet-256", "imagenet-512", "cc12m-256", "cc12m-512")
ENTRIES = sorted(p for s in SUITES for p in (ROOT / "leaderboards" / s).glob("*.yaml") if p.name != "suite.yaml")
IDS = [f"{p.parent.name}/{p.stem}" for p in ENTRIES]


def test_every_suite_has_its_entries():
    names = {s: sorted(p.stem for p in ENTRIES if p.parent.name == s) for s in SUITES}
    classes = {"dit_xl_2", "mdt_v2_xl_2", "pixart_alpha_xl_2", "mmdit_xl_2", "ldm_g4", "sdxl_unet", "proposed"}
    texts = {"pixart_alpha_xl_2", "mmdit_xl_2", "ldm_g4", "sdxl_unet", "proposed"}  # DiT and MDT are class-only
    assert set(names["imagenet-256"]) == set(names["imagenet-512"]) == classes
    assert set(names["cc12m-256"]) == set(names["cc12m-512"]) == texts


@pytest.mark.parametrize("suite", SUITES)
def test_data_is_set_in_one_place_per_suite(suite):
    """Every entry of a suite carries the same data block, and none names a dataset path (one variable sets it)."""
    blocks = [yaml.safe_load(p.read_text())["data"] for p in ENTRIES if p.parent.name == suite]
    assert all(b == blocks[0] for b in blocks[1:])
    assert blocks[0]["init_args"]["root"] is None
    assert str(blocks[0]["init_args"]["resolution"]) == suite.rsplit("-", 1)[1]


@pytest.mark.parametrize("path", ENTRIES, ids=IDS)
def test_entry_parses(path):
    from benchmark.leaderboard.runner import parse_entry

    config = parse_entry(yaml.safe_load(path.read_text()))
    semantic = config["model"]["init_args"]["conditioner"]["init_args"]["semantic"]
    assert semantic == ("class" if "imagenet" in path.parent.name else "caption")


@pytest.mark.slow
@pytest.mark.parametrize("path", ENTRIES, ids=IDS)
def test_entry_describes_without_data(path, monkeypatch):
    from benchmark.cli import describe

    monkeypatch.delenv("IMAGENET_ROOT", raising=False)
    monkeypatch.delenv("CC12M_ROOT", raising=False)
    info = describe(["--config", str(path)])
    assert info["params"] > 1e8 and info["gmacs_per_forward"] > 10
    assert info["resolution"] == int(path.parent.name.rsplit("-", 1)[1])
    assert info["semantic"] == ("class" if "imagenet" in path.parent.name else "caption")


@pytest.mark.parametrize("suite", ["imagenet-256", "cc12m-256"])
def test_training_without_the_dataset_names_the_missing_path(suite, monkeypatch, tmp_path):
    """The DataModule is built without touching the disk; its setup (training start) names what is missing."""
    import jsonargparse
    from lightning.pytorch import LightningDataModule

    entry = next(p for p in ENTRIES if p.parent.name == suite)
    data = yaml.safe_load(entry.read_text())["data"]
    parser = jsonargparse.ArgumentParser()
    parser.add_subclass_arguments(LightningDataModule, "data")
    monkeypatch.delenv("IMAGENET_ROOT", raising=False)
    monkeypatch.delenv("CC12M_ROOT", raising=False)
    datamodule = parser.instantiate_classes(parser.parse_object({"data": data})).data
    with pytest.raises(FileNotFoundError, match=r"root not set: export (IMAGENET|CC12M)_ROOT"):
        datamodule.setup("fit")
    missing = tmp_path / "no-such-dataset"
    monkeypatch.setenv("IMAGENET_ROOT", str(missing))
    monkeypatch.setenv("CC12M_ROOT", str(missing))
    with pytest.raises(FileNotFoundError, match=str(missing)):
        datamodule.setup("fit")
