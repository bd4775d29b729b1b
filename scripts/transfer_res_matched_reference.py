"""P10's secondary analysis: `interpolate_randomcrop` measured against the same reference as `interpolate`.

The plan's P10 (docs/analysis-plan.md) compares each entry's row as the suite measured it: `interpolate` against
whole 64 px canvases, `interpolate_randomcrop` against randomly cropped 64 px Shapes (the reference follows each
entry's data). That asks how well each models its own training distribution. This script asks the other question
on the same images: it evaluates each seed's final checkpoint of `interpolate_randomcrop` again under the suite's
protocol with `--data.init_args.augment false` (the reference becomes whole canvases, as for `interpolate`), writes
the metrics to ``leaderboards/shapes-transfer-res/secondary/``, and prints Δ = fd(randomcrop, whole) − fd(interpolate)
with the same SE as the claims (paired bootstrap replicates plus the suite's pooled training-seed variance). It is
secondary: it reports, it does not call, and it does not enter the Holm family.

    python scripts/transfer_res_matched_reference.py            # evaluates the seeds not yet measured (~3 min each)
    python scripts/transfer_res_matched_reference.py --summary  # only the comparison, from the written files
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmark.evaluation.stats import difference_se, pooled_seed_variance, z_of  # noqa: E402
from benchmark.leaderboard.claims import current_cells, row_stat  # noqa: E402

SUITE = REPO / "leaderboards" / "shapes-transfer-res"
OUT = SUITE / "secondary"
ENTRY, BASELINE, METRIC = "interpolate_randomcrop", "interpolate", "fd_shapes"


def checkpoint_of(row: dict) -> Path:
    """The final checkpoint of a row's training: runs/leaderboards/<suite>/<preset>/<entry>/seed<N>-<training key>."""
    folder = REPO / "runs" / "leaderboards" / SUITE.name / row["preset"] / row["entry"]
    path = folder / f"seed{row['seed']}-{row['training_key'][:12]}" / "final.ckpt"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: train the row first (ldmbench leaderboard run {SUITE.relative_to(REPO)})")
    return path


def evaluate_whole_canvas(row: dict, output: Path) -> None:
    command = [
        sys.executable, "-m", "benchmark.cli", "evaluate",
        "--config", str(SUITE / f"{ENTRY}.yaml"),
        "--data.init_args.augment", "false",
        "--ckpt_path", str(checkpoint_of(row)),
        "--protocol", str(SUITE / "protocol.yaml"),
        "--device", "cpu",
        "--output", str(output),
    ]  # fmt: skip
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO)
    measured = json.loads(output.read_text())
    measured["source_row"] = {"key": row["key"], "training_key": row["training_key"], "seed": row["seed"]}
    measured["command"] = " ".join(["ldmbench", *command[3:]])
    measured["date"] = datetime.date.today().isoformat()
    output.write_text(json.dumps(measured, indent=2, default=str))


def whole_canvas_rows(rows: list[dict], evaluate: bool) -> list[dict]:
    measured = []
    for row in sorted(rows, key=lambda r: r["seed"]):
        output = OUT / f"{ENTRY}-whole-canvas-s{row['seed']}.json"
        recorded = json.loads(output.read_text()) if output.is_file() else None
        if not recorded or recorded.get("source_row", {}).get("key") != row["key"]:
            if not evaluate:
                continue
            evaluate_whole_canvas(row, output)
            recorded = json.loads(output.read_text())
        measured.append({"seed": row["seed"], "metrics": recorded})
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--summary", action="store_true", help="do not evaluate; compare what is written")
    args = parser.parse_args()
    cells = current_cells(SUITE)
    if not cells.get(ENTRY) or not cells.get(BASELINE):
        raise SystemExit(f"no current rows of {ENTRY} and {BASELINE}: run the suite first")
    OUT.mkdir(exist_ok=True)
    whole = row_stat(f"{ENTRY} (whole canvases)", whole_canvas_rows(cells[ENTRY], not args.summary), METRIC)
    base = row_stat(BASELINE, cells[BASELINE], METRIC)
    own = row_stat(ENTRY, cells[ENTRY], METRIC)
    if whole is None or base is None:
        raise SystemExit("nothing to compare yet")
    seed_var = pooled_seed_variance([s for s in (row_stat(n, r, METRIC) for n, r in cells.items()) if s is not None])
    se, paired = difference_se(whole, base, seed_var)
    delta = whole.mean - base.mean  # > 0: keeping the random crops costs fd_shapes on whole canvases
    half = z_of(0.95) * se
    p = math.erfc(abs(delta / se) / math.sqrt(2)) if se else float(delta == 0)
    print(f"{BASELINE:40s} {METRIC} per seed {[round(v, 2) for v in base.values]} mean {base.mean:.2f}")
    print(f"{ENTRY + ' (own reference)':40s} {METRIC} per seed {[round(v, 2) for v in own.values]} mean {own.mean:.2f}")
    print(f"{whole.name:40s} {METRIC} per seed {[round(v, 2) for v in whole.values]} mean {whole.mean:.2f}")
    print(
        f"Δ (whole-canvas randomcrop − interpolate) = {delta:.2f},"
        f" 95 % interval [{delta - half:.2f}, {delta + half:.2f}], SE {se:.2f}"
        f" ({'paired' if paired else 'unpaired'}), p {p:.2g}; seeds {whole.n}, {base.n}"
    )


if __name__ == "__main__":
    main()
