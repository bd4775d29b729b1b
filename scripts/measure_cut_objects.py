"""Cut-object rate of trained control-conditioned entries: uncropped reference control against training crops.

    python scripts/measure_cut_objects.py \\
        --entry additive=leaderboards/shapes-ablations/additive.yaml:<row>/final.ckpt [--entry ...] [--n 100]

For each entry, `benchmark.evaluation.cut_objects.cut_object_rates` (what a leaderboard row reports) draws ``n``
samples through the protocol (its sampler, steps, semantic guidance and noise) with the uncropped, largest-original
control and the labels or captions of ``n`` reference-view training items, and ``n`` with the same noise and the
real crops, labels or captions of ``n`` training items (unflipped); it counts the samples whose object touches the
border. An entry that
learned the crop control draws whole objects for the first and cuts for the second (on real renders: 0 % of
reference views and about 42 % of training items are cut). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entry", action="append", required=True, help="name=config.yaml:checkpoint.ckpt")
    parser.add_argument("--n", type=int, default=100, help="samples per condition")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--protocol", default="leaderboards/shapes/protocol.yaml")
    args = parser.parse_args(argv)

    from benchmark.evaluation import EvalProtocol
    from benchmark.evaluation.cut_objects import cut_object_rates
    from data.shapes import ShapesDataModule
    from scripts.control_sweep_figure import load

    protocol = EvalProtocol.from_yaml(args.protocol)
    report = {}
    for spec in args.entry:
        name, rest = spec.split("=", 1)
        config, ckpt = rest.rsplit(":", 1)
        module = load(config, ckpt)
        data = ShapesDataModule(resolution=module.resolution)
        report[name] = cut_object_rates(module, protocol.replace(seed=args.seed), data, num_samples=args.n)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
