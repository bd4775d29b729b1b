"""The README of a suite as lines of Markdown: its tables (mean with a 95 % interval, ranks, compute to target,
literature, other rows), from the rows `render` shows; and the number formatting they use. Writes nothing.

The layout is the written contract of ``leaderboards/README.md`` (`benchmark.leaderboard.render` writes the files).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmark.leaderboard import results as res
from benchmark.leaderboard.suite import Suite

_LITERATURE_COLUMNS = (
    ("entry", "model"),
    ("params", "params"),
    ("gmacs", "GMACs/fwd"),
    ("fid", "FID, no guidance"),
    ("fid_guided", "FID, guidance"),
    ("clip", "CLIP score"),
    ("training", "training"),
    ("citation", "source"),
)


# ----------------------------------------------------------------------------------------------- numbers
def spread_stats(values: list[float]) -> tuple[float, float] | None:
    """(mean, spread) of a metric over seeds; spread = half the range (0 for one seed)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None
    return sum(values) / len(values), (max(values) - min(values)) / 2


def rank_with_ties(stats: list[tuple[str, float, float]], higher_is_better: bool = False) -> dict[str, str]:
    """Ranks ``1, =1, 3, ...`` from intervals: 1 + the number of entries whose interval lies wholly better.

    No chaining: in a ≈ b ≈ c with a clearly better than c, c ranks below a. The tables rank with
    `benchmark.evaluation.stats.pairwise_ranks` (a named test, Holm-corrected); this is its interval-only form.
    """
    ranks: dict[str, str] = {}
    numbers = {}
    for name, mean, spread in stats:
        if higher_is_better:
            better = sum(1 for _, m, s in stats if m - s > mean + spread)
        else:
            better = sum(1 for _, m, s in stats if m + s < mean - spread)
        numbers[name] = 1 + better
    for name, number in numbers.items():
        ranks[name] = f"={number}" if sum(1 for v in numbers.values() if v == number) > 1 else str(number)
    return ranks


def compute_to_target(curve: list[list[float]], target: float, higher_is_better: bool = False) -> float | None:
    """Training FLOPs of the first curve point that reaches the target (None if never)."""
    for flops, value in sorted(curve):
        if (value >= target) if higher_is_better else (value <= target):
            return flops
    return None


# ----------------------------------------------------------------------------------------------- formatting
def fmt_num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 1000):
        return f"{int(value):,}"
    return f"{value:.{digits}g}"


def fmt_params(value: Any) -> str:
    if value is None:
        return ""
    return f"{value / 1e6:.1f}M" if value >= 1e5 else f"{value / 1e3:.0f}K"


def fmt_flops(value: Any) -> str:
    if value is None:
        return ""
    for unit, scale in (("EFLOPs", 1e18), ("PFLOPs", 1e15), ("TFLOPs", 1e12), ("GFLOPs", 1e9)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g} FLOPs"


def interval_stats(groups: dict[str, list[dict[str, Any]]], key: str) -> dict[str, tuple[float, float, int] | None]:
    """Per entry: (mean over seeds, 95 % CI half-width, seeds) of column ``key`` (`benchmark.evaluation.stats`).

    The half-width combines each seed's evaluation-noise SD (``<key>_sd``, a bootstrap over the samples) with the
    training-seed variance pooled over the table's multi-seed entries.
    """
    from benchmark.evaluation.stats import combine, pooled_seed_variance

    rows = {name: _row_stat(name, g, key) for name, g in groups.items()}
    seed_var = pooled_seed_variance([r for r in rows.values() if r is not None])
    out: dict[str, tuple[float, float, int] | None] = {}
    for name, row in rows.items():
        if row is None:
            out[name] = None
            continue
        mean, _, half = combine(row, seed_var)
        out[name] = (mean, half, row.n)
    return out


def _row_stat(name: str, g: list[dict[str, Any]], key: str) -> Any:
    from benchmark.evaluation.stats import RowStat

    kept = [r for r in g if r.get(key) is not None and math.isfinite(r[key])]
    if not kept:
        return None
    # Bootstrap replicates (when the rows recorded them) pair entries evaluated on the same noise and labels.
    boots = [r.get(f"{key}_boot") for r in kept]
    return RowStat(name, [r[key] for r in kept], [r.get(f"{key}_sd") for r in kept], boots)


def fmt_interval(stat: tuple[float, float, int] | None, scale: float = 1.0, digits: int = 3) -> str:
    """``mean ± half-width`` of the 95 % CI (``mean`` alone when no part of the interval was measured)."""
    if stat is None:
        return ""
    mean, half, _ = stat
    if not half or not math.isfinite(half):
        return f"{mean * scale:.{digits}g}"
    return f"{mean * scale:.{digits}g} ± {half * scale:.2g}"


def fmt_stat(stat: tuple[float, float] | None, n: int, scale: float = 1.0, digits: int = 3) -> str:
    if stat is None:
        return ""
    mean, spread = stat[0] * scale, stat[1] * scale
    return f"{mean:.{digits}g} ± {spread:.2g}" if n > 1 else f"{mean:.{digits}g}"


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return out


def _group(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row["entry"]].append(row)
    return groups


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if isinstance(r.get(key), int | float)]
    return sum(values) / len(values) if values else None


_LOADED = "†"


def _throughput(rows: list[dict[str, Any]], key: str) -> str:
    """Mean throughput of an entry's rows from a free machine; rows measured under load (flagged by the runner) count
    only when no other exists, and are then marked."""
    flag = f"{res.THROUGHPUTS[key]}_throughput_flag"
    free = [r for r in rows if not r.get(flag)]
    value = _mean(free, key)
    if value is not None or _mean(rows, key) is None:
        return fmt_num(value)
    return f"{fmt_num(_mean(rows, key))} {_LOADED}"


def _same(rows: list[dict[str, Any]], key: str) -> str:
    values = sorted({str(r.get(key)) for r in rows if r.get(key) is not None})
    return ", ".join(values)


def _budget_line(suite: Suite, preset_name: str) -> str:
    preset = suite.preset(preset_name)
    budget = suite.budget_for(preset)
    parts = []
    if budget.train_flops is not None:
        text = f"**{fmt_flops(budget.train_flops)}** of training compute per entry ({budget.train_flops:.3g} FLOPs"
        steps = suite.reference_steps(budget.train_flops)
        if steps is not None:
            ref = suite.reference_step
            text += f"; ≈ {steps:,.0f} {ref.get('name', 'reference')} steps at batch {ref['batch']}"
        parts.append(text + ")")
    if budget.images is not None:
        parts.append(f"**{budget.images:,} images** seen")
    if budget.seconds is not None:
        parts.append(f"**{budget.seconds:g} s** of training")
    return "Budget: " + ", or ".join(parts) + f", whichever comes first (preset `{preset.name}`)."


def readme_lines(
    suite: Suite,
    rows: list[dict[str, Any]],
    out_dir: Path,
    plot: Path | None,
    described: dict[str, dict[str, Any]],
    preset: str | None = None,
) -> list[str]:
    preset = preset or suite.default_preset
    metric = suite.metric
    arrow = "↑" if suite.higher_is_better else "↓"
    lines = [f"# {suite.title}", ""]
    if suite.description:
        lines += [suite.description, ""]
    contract = (
        "[leaderboards/README.md](../README.md)"
        if out_dir.resolve() == suite.root.resolve()
        else "`leaderboards/README.md`"
    )
    command = f"ldmbench leaderboard render {_rel(suite.root)}" + (
        "" if out_dir.resolve() == suite.root.resolve() else f" --results {_rel(out_dir)}"
    )
    lines += [
        f"_Generated from the rows (`rows/*.json`) by `{command}`; do not edit by hand."
        f" The columns are defined in {contract}._",
        "",
        _budget_line(suite, preset),
        "",
    ]
    current = [r for r in rows if not r.get("stale") and r.get("source", "trained") == "trained"]
    ok = [r for r in current if r.get("status") == "ok"]
    groups = _group(ok)
    stats = interval_stats(groups, "metric")
    # Pre-training stages of a transfer suite (suite.yaml `stages`) are measured on other data or at another
    # resolution: listed last, without a rank.
    stages = set(suite.raw.get("stages") or [])
    from benchmark.evaluation.stats import pairwise_ranks

    ranked_rows = [_row_stat(n, g, "metric") for n, g in groups.items() if n not in stages]
    ranks = pairwise_ranks([r for r in ranked_rows if r is not None], higher_is_better=suite.higher_is_better)
    ranks.update({n: "stage" for n in stages if n in groups})
    guided = suite.protocol.get("guidance_scale")
    header = [
        "rank",
        "entry",
        "recipe (objective, sampler)",
        "params",
        "GMACs/fwd",
        "train GFLOPs/img",
        "budget",
        "images seen",
        f"{metric} {arrow}" + (f" (CFG {guided:g})" if isinstance(guided, int | float) else ""),
        f"{metric} no CFG",
        "class acc. (%)",
        "CLIP",
        "control disent.",
        "cut objects (%)",
        "train img/s",
        "sample img/s",
        "peak mem (GB)",
        "seeds",
        "hardware",
        "commit",
    ]
    table = []
    columns = {
        key: interval_stats(groups, key)
        for key in (
            "metric_noguidance",
            "class_accuracy",
            "clip_score",
            "control_disentanglement",
            "cut_object_rate_uncropped",
        )
    }
    order = sorted(
        groups, key=lambda n: (n in stages, stats[n] is None, _rank_number(ranks.get(n)), stats[n] and stats[n][0], n)
    )
    for name in order:
        g = groups[name]
        mem_kind = _same(g, "peak_memory_kind")
        table.append(
            [
                ranks.get(name, ""),
                name,
                f"{_same(g, 'objective')}, {_same(g, 'eval_sampler')}",
                fmt_params(_mean(g, "params")),
                fmt_num(_mean(g, "gmacs_per_forward"), 4),
                fmt_num(_mean(g, "train_gflops_per_image")),
                fmt_flops(_mean(g, "budget_train_flops") or _mean(g, "train_flops")),
                fmt_num(_mean(g, "images_seen")),
                fmt_interval(stats[name]),
                fmt_interval(columns["metric_noguidance"][name]),
                fmt_interval(columns["class_accuracy"][name], scale=100),
                fmt_interval(columns["clip_score"][name]),
                fmt_interval(columns["control_disentanglement"][name]),
                fmt_interval(columns["cut_object_rate_uncropped"][name], scale=100),
                _throughput(g, "train_images_per_s"),
                _throughput(g, "sampling_images_per_s"),
                fmt_num(_mean(g, "peak_memory_gb")) + (" (RSS)" if mem_kind == "rss" else ""),
                ",".join(str(r["seed"]) for r in sorted(g, key=lambda r: r["seed"])),
                _same(g, "hardware"),
                _same(g, "commit"),
            ]
        )
    not_run = [n for n in suite.entry_names if n not in groups]
    for name in not_run:
        info = described.get(name, {})
        status = _status_text([r for r in rows if r["entry"] == name])
        table.append(
            ["", name, _recipe_of(info), fmt_params(info.get("params")), fmt_num(info.get("gmacs_per_forward"), 4)]
            + [""] * 3
            + [status]
            + [""] * (len(header) - 9)
        )
    lines += ["## Results", ""]
    lines += md_table(header, table) if table else ["No entries yet."]
    lines += [""]
    if any(_LOADED in cell for row in table for cell in row):
        lines += [f"{_LOADED} measured on a loaded machine (1-minute load above the cores, or CPU time below 0.9 x the "
                  "torch threads): no figure of this entry from a free machine exists.", ""]  # fmt: skip
    if groups:
        from benchmark.evaluation.stats import METHOD

        reps = suite.protocol_for(suite.preset(preset)).get("bootstrap_reps", 200)
        lines += [METHOD.format(reps=reps), ""]
        if not any(len(g) > 1 for g in groups.values()):
            lines += ["One seed per entry: the training-seed variance is not measured, so no entry is ranked "
                      "(`--seeds 0,1` adds one).", ""]  # fmt: skip
    if stages & set(groups):
        lines += [
            "Rows ranked `stage` are pre-training stages (trained at another resolution or on other data and read by "
            "the transferred entries); they are not ranked with the others and not on the plot.",
            "",
        ]
    lines += _target_lines(suite, groups)
    if plot is not None:
        lines += [
            f"## {metric} against training compute",
            "",
            f"![{metric} against training FLOPs]({plot.relative_to(out_dir).as_posix()})",
            "",
        ]
    grids = [(name, r.get("grid")) for name in order for r in sorted(groups[name], key=lambda r: r["seed"])[:1]]
    grids = [(n, g) for n, g in grids if g and (out_dir / g).is_file()]
    if grids:
        lines += [
            "## Sample grids",
            "",
            "One row per class, fixed noise per column, drawn with the protocol's sampler.",
            "",
        ]
        for name, grid in grids:
            lines += [f"**{name}**", "", f"![{name} samples]({grid})", ""]
    lines += _other_rows(rows)
    if suite.literature:
        lines += ["## Literature", "", "Published numbers, as reported by their authors (not rerun here).", ""]
        cols = [(k, t) for k, t in _LITERATURE_COLUMNS if any(k in lit for lit in suite.literature)]
        lines += md_table([t for _, t in cols], [[_lit(lit.get(k)) for k, _ in cols] for lit in suite.literature])
        lines += [""]
    if suite.notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in suite.notes] + [""]
    lines += ["## Protocol", "", "```yaml"] + _yaml(suite.protocol_for(suite.preset(preset))) + ["```"]
    return lines


def _rank_number(rank: str | None) -> int:
    number = (rank or "").lstrip("=")
    return int(number) if number.isdigit() else 10**9  # unranked: no metric, or a pre-training stage


def _recipe_of(info: dict[str, Any]) -> str:
    if not info:
        return ""
    sampler = str(info.get("sampler", "")).removesuffix("Sampler")
    return f"{info.get('objective', '')}, {sampler}".strip(", ")


def _status_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "not run"
    latest = rows[-1]
    if latest.get("stale"):
        return "stale (rerun)"
    return latest.get("status", "not run")


def _target_lines(suite: Suite, groups: dict[str, list[dict[str, Any]]]) -> list[str]:
    target = suite.target
    if not target:
        return []
    higher = bool(target.get("higher_is_better", suite.higher_is_better))
    relation = "≥" if higher else "≤"
    lines = [
        "## Compute to reach target",
        "",
        f"Training FLOPs at the first evaluation where `{target['metric']}` {relation} {target['value']:g} "
        "(from the in-training evaluations and the final one).",
        "",
    ]
    table = []
    for name, g in sorted(groups.items()):
        reached = [compute_to_target(r.get("curve") or [], target["value"], higher) for r in g]
        hits = [x for x in reached if x is not None]
        budget = _mean(g, "budget_train_flops")
        text = fmt_flops(sum(hits) / len(hits)) if hits else "not reached"
        fraction = f"{sum(hits) / len(hits) / budget:.0%}" if hits and budget else ""
        table.append([name, text, fraction, f"{len(hits)}/{len(g)}"])
    if not table:
        return lines + ["No rows yet.", ""]
    lines += md_table(["entry", "FLOPs to target", "of the budget", "seeds reaching it"], table) + [""]
    return lines


def _other_rows(rows: list[dict[str, Any]]) -> list[str]:
    others = [r for r in rows if r.get("stale") or r.get("status") != "ok" or r.get("source", "trained") != "trained"]
    if not others:
        return []
    lines = ["## Other rows", "", "Failed, stale (made with other code, config or protocol) and checkpoint rows.", ""]
    table = [
        [
            r["entry"],
            str(r.get("seed")),
            r.get("source", "trained"),
            "stale" if r.get("stale") else r.get("status", ""),
            fmt_num(r.get("metric")),
            fmt_num(r.get("metric_noguidance")),
            (r.get("error") or r.get("weights") or "").replace("\n", " ")[:160],
            str(r.get("commit") or ""),
        ]
        for r in rows
        if r in others
    ]
    return lines + md_table(["entry", "seed", "source", "status", "metric", "no CFG", "note", "commit"], table) + [""]


def _lit(value: Any) -> str:
    return "" if value is None else str(value)


def _yaml(data: dict[str, Any]) -> list[str]:
    import yaml

    return yaml.safe_dump(data, sort_keys=False).rstrip().splitlines()


def _rel(path: Path) -> str:
    try:
        return path.resolve().relative_to(res.REPO_ROOT).as_posix()
    except ValueError:
        return str(path)
