"""Write the held-out captions of a webdataset entry's data, one per line: the prompts of the CC12M protocols.

    CC12M_ROOT=/data/cc12m python scripts/write_val_captions.py --config leaderboards/cc12m-256/pixart_alpha_xl_2.yaml

The output defaults to the protocol's ``captions`` path (``runs/<suite>/val_captions.txt``). Only the config's ``data``
section is built (no model, no weights). Empty captions are left out (the evaluation cycles through the list).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import jsonargparse
import yaml
from lightning.pytorch import LightningDataModule


def main(argv: list[str] | None = None) -> Path:
    """Parse the arguments, read the held-out captions and write them; returns the output path."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="an entry YAML whose data is a WebDatasetDataModule")
    parser.add_argument("--output", default=None, help="default: runs/<suite folder>/val_captions.txt")
    args = parser.parse_args(argv)
    data = yaml.safe_load(Path(args.config).read_text())["data"]
    section = jsonargparse.ArgumentParser()
    section.add_subclass_arguments(LightningDataModule, "data")
    datamodule = section.instantiate_classes(section.parse_object({"data": data})).data
    captions = [c for c in datamodule.val_captions() if c]
    output = Path(args.output or Path("runs") / Path(args.config).resolve().parent.name / "val_captions.txt")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("".join(c.replace("\n", " ") + "\n" for c in captions))
    print(f"{len(captions)} held-out captions -> {output}")
    return output


if __name__ == "__main__":
    main()
