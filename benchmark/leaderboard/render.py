"""Render a suite's rows into its README (tables, plot, grids) and ``results.csv``, with no training.

The rows are the results folder's row files merged with an older ``results.jsonl`` (`results.read_results`); the
README's lines come from `benchmark.leaderboard.tables`.

The layout is the written contract of ``leaderboards/README.md``: a main table in the spirit of Table 1 of the
conditioning-mechanisms paper (one line per entry, mean with a 95 % interval, ranks from Holm-corrected pairwise tests:
`benchmark.evaluation.stats`), a
"compute to reach target" table when the suite defines a target, the metric against training compute, one sample
grid per entry, literature rows with their citations, and every failed, stale or missing row stated as such.
"""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path
from typing import Any

from benchmark.leaderboard import results as res
from benchmark.leaderboard.suite import Suite, load_suite
from benchmark.leaderboard.tables import (  # noqa: F401 - re-exported: their import path before the split
    _LITERATURE_COLUMNS,
    _LOADED,
    _throughput,
    compute_to_target,
    fmt_flops,
    fmt_interval,
    fmt_num,
    fmt_params,
    fmt_stat,
    interval_stats,
    md_table,
    rank_with_ties,
    readme_lines,
    spread_stats,
)
from data.sources import source_hash

README = "README.md"
CSV_COLUMNS = (
    "entry",
    "seed",
    "source",
    "status",
    "stale",
    "model",
    "objective",
    "eval_sampler",
    "params",
    "gmacs_per_forward",
    "train_gflops_per_image",
    "train_flops",
    "images_seen",
    "steps",
    "global_batch",
    "metric",
    "metric_sd",
    "metric_noguidance",
    "class_accuracy",
    "class_accuracy_sd",
    "class_accuracy_noguidance",
    "clip_score",
    "control_disentanglement",
    "cut_object_rate_uncropped",
    "cut_object_rate_train_crops",
    "train_images_per_s",
    "train_load1",
    "train_cpu_per_wall",
    "train_throughput_flag",
    "sampling_images_per_s",
    "sampling_load1",
    "sampling_cpu_per_wall",
    "sampling_throughput_flag",
    "peak_memory_gb",
    "peak_memory_kind",
    "train_seconds",
    "eval_seconds",
    "wall_seconds",
    "hardware",
    "threads",
    "precision",
    "commit",
    "code_diff",
    "code",
    "key",
    "training_key",
    "error",
)


# ----------------------------------------------------------------------------------------------- keys
def current_keys(suite: Suite, rows: list[dict[str, Any]]) -> set[str]:
    """The keys this checkout computes for the trained rows' (entry, seed, preset); unparseable entries give none."""
    from benchmark.leaderboard.plan import entry_keys

    entries = {e.name: e for e in suite.entries()}
    keys = set()
    # Keyed for the thread count each row recorded: a row is current for the threads it ran with.
    wanted = {
        (r.get("entry"), r.get("seed"), r.get("preset"), r.get("threads"))
        for r in rows
        if r.get("source", "trained") == "trained"
    }
    for name, seed, preset_name, threads in sorted(wanted, key=str):
        if name not in entries or preset_name not in suite.presets:
            continue
        preset = suite.presets[preset_name]
        budget, protocol = suite.budget_for(preset), suite.protocol_for(preset)
        try:
            keys.add(entry_keys(entries[name], int(seed), budget, protocol, threads=threads or -1, preset=preset)[0])
        except Exception:  # noqa: BLE001 - an entry that no longer parses makes its rows stale, not render fail
            continue
    return keys


SIZES = "sizes.json"  # `describe_entries`' numbers, kept so that a plain render shows them without rebuilding models
_SIZE_FIELDS = ("params", "gmacs_per_forward", "objective", "sampler")


def describe_entries(
    suite: Suite, names: list[str], cache: Path | None = None, refresh: bool = True
) -> dict[str, dict[str, Any]]:
    """Params, GMACs and recipe of entries with no current row, from the config alone (meta device; no weights, no
    data).

    Args:
        suite: The suite.
        names: Entries to describe.
        cache: A ``sizes.json`` holding earlier answers, each under a hash of the entry's config and code; a current
            one is used as is, an outdated one never (the entry's sizes are then blank until ``--describe``). Written
            back when ``refresh`` described anything.
        refresh: Describe the entries the cache has no current answer for (slow for paper-scale models: the models
            are built on the meta device); False answers from the cache alone.
    """
    from benchmark.cli import describe

    cached = json.loads(cache.read_text()) if cache is not None and cache.is_file() else {}
    out, changed = {}, False
    for entry in suite.entries([n for n in names if n in suite.entry_names]):
        # The config and the code that builds its classes (module-level imports: what describe runs).
        modules = sorted({c.rpartition(".")[0] for c in res._class_paths(entry.config)})
        ident = res.stable_hash({"config": entry.config, "code": source_hash(modules)})
        if cached.get(entry.name, {}).get("ident") == ident:
            out[entry.name] = {k: v for k, v in cached[entry.name].items() if k != "ident"}
            continue
        if not refresh:
            continue
        try:
            info = describe(entry.config_args())
        except (Exception, SystemExit):  # noqa: BLE001 - a row for the entry is still shown, with blank sizes
            info = {}
        out[entry.name] = {k: info[k] for k in _SIZE_FIELDS if k in info}
        cached[entry.name], changed = {"ident": ident, **out[entry.name]}, True
    if cache is not None and changed:
        cache.write_text(json.dumps(cached, indent=1, sort_keys=True) + "\n")
    return out


# ----------------------------------------------------------------------------------------------- render
def render_suite(
    suite_path: str | Path,
    *,
    results_dir: str | Path | None = None,
    check_keys: bool = True,
    describe: bool = False,
    write: bool = True,
) -> str:
    """Write ``README.md``, ``results.csv`` and the plot of a suite from its rows; return the README.

    Args:
        suite_path: The suite folder.
        results_dir: Folder holding the rows (``rows/*.json``, or an older ``results.jsonl``) and receiving the
            outputs; default the suite folder.
        check_keys: Recompute every trained row's key with this checkout and mark rows that differ as stale.
        describe: Fill params / GMACs of entries without a current row from their configs, and keep the answers in
            ``sizes.json`` (`describe_entries`); without it, the answers ``sizes.json`` holds for the current configs
            are shown.
        write: Write the files; False only returns the README that would be written (nothing is changed).
    """
    suite = load_suite(suite_path)
    out_dir = Path(results_dir) if results_dir is not None else suite.root
    rows = res.read_results(out_dir)
    keys = current_keys(suite, rows) if check_keys else None
    shown = res.latest_rows(rows, keys)
    plot_path = out_dir / "plots" / f"{suite.metric}_vs_compute.png"
    if write:
        write_csv(out_dir / "results.csv", shown)
        plot = plot_curves(suite, shown, plot_path)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            plot = plot_path if plot_curves(suite, shown, Path(tmp) / plot_path.name) is not None else None
    current = {r["entry"] for r in shown if not r.get("stale") and r.get("status") == "ok"}
    missing = [n for n in suite.entry_names if n not in current]
    described = describe_entries(suite, missing, out_dir / SIZES, refresh=describe and write) if missing else {}
    presets = [r.get("preset") for r in shown if r.get("preset") in suite.presets]
    preset = max(set(presets), key=presets.count) if presets else suite.default_preset
    text = "\n".join(readme_lines(suite, shown, out_dir, plot, described, preset)) + "\n"
    if write:
        (out_dir / README).write_text(text)
        from benchmark.leaderboard.front_page import update_front_page  # the README's copy of a committed table

        update_front_page(out_dir, text)
    return text


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k) for k in CSV_COLUMNS})


def plot_curves(suite: Suite, rows: list[dict[str, Any]], path: Path) -> Path | None:
    """The metric against training FLOPs, one line per entry and seed (None when no row has a curve).

    Entries a suite lists under ``stages`` (pre-training stages of a transfer suite, trained at another resolution
    or on other data) are left out, so the plot is the metric against compute at the target.
    """
    stages = set(getattr(suite, "raw", {}).get("stages") or [])
    curves = [
        (r["entry"], r["seed"], r["curve"])
        for r in rows
        if r.get("curve") and not r.get("stale") and r["entry"] not in stages
    ]
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    colours: dict[str, Any] = {}
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for entry, seed, curve in sorted(curves, key=lambda c: (c[0], c[1])):
        colour = colours.setdefault(entry, cycle[len(colours) % len(cycle)])
        xs, ys = zip(*sorted(curve))
        label = entry if entry not in {line.get_label() for line in ax.lines} else None
        ax.plot(xs, ys, marker="o", markersize=3, color=colour, label=label, alpha=0.9 if seed == 0 else 0.5)
    if suite.target:
        ax.axhline(suite.target["value"], color="grey", linestyle="--", linewidth=1, label="target")
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs at the target" if stages else "training FLOPs")
    ax.set_ylabel(f"{suite.metric} ({'higher' if suite.higher_is_better else 'lower'} is better)")
    ax.set_title(f"{suite.name}: {suite.metric} against training compute" + (" at the target" if stages else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
