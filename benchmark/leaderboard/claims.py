"""The paper's claims, called from the committed rows by the analysis plan fixed before the study (issue 27).

`docs/analysis-plan.md` is the plan in prose; `COMPARISONS` and `CLAIMS` below are the same plan as data, and
`tests/benchmark/test_claims.py` holds the two together (every comparison's cells, metric and δ). For each primary
comparison (P1-P12): Δ = B − A where lower is better and A − B where higher is better (Δ > 0 is the claim's
direction), its SE paired through the rows' bootstrap replicates with the training-seed variance pooled over the
suite's multi-seed cells (`benchmark.evaluation.stats`), a two-sided z-test, Holm over the whole family of twelve
(a comparison without its rows enters with p = 1, so calling part of the study early is never less strict than
calling all of it), then the plan's rule: tie / supported / contradicted / inconclusive, "not testable at this
budget" for a control comparison whose cells never reach the learning guard, and "pending" while a cell has fewer
seeds than the plan asks.

``ldmbench leaderboard claims`` prints the table; ``--write`` puts it into the README (between the claims markers)
and writes the per-comparison details to ``docs/claims.md``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.evaluation.stats import RowStat, difference_se, holm, pooled_seed_variance, z_of

MIN_SEEDS = 3  # the plan: every compared cell has at least 3 training seeds
LEARNED_CONTROL = 0.10  # guard (b): a control comparison is called only if A or B reaches this disentanglement
BUDGET_TARGET = (0.80, 0.50)  # guard (a): dit of shapes-shared-recipe, class accuracy and its worst class
# Per-class accuracy of each reference row, measured on its own final checkpoint (rows do not record it):
#   python scripts/budget_curve.py evaluate --config leaderboards/shapes/dit.yaml \
#       --protocol leaderboards/shapes/protocol.yaml --output-dir <GUARD_EVALS>/seed<N> <the row's final.ckpt>
GUARD_EVALS = Path("leaderboards") / "shapes-shared-recipe" / "guard"
GUARD_MET = "met (`dit`, shared recipe: mean class accuracy at least 80 %, every class at least 50 % in every seed)"
BEGIN, END = "<!-- claims:begin (ldmbench leaderboard claims --write) -->", "<!-- claims:end -->"


@dataclass(frozen=True)
class Metric:
    """A row metric as the plan reads it: where it is stored, its direction and the smallest effect that counts."""

    key: str  # the key in a row's ``metrics`` (``<key>_sd``, ``<key>_boot`` beside it)
    label: str
    higher_is_better: bool
    delta: float  # δ in the metric's stored unit
    delta_fraction_of_b: float = 0.0  # δ = max(delta, fraction × |mean of B|) (fd_shapes: 10 %)
    scale: float = 1.0  # display only (class accuracy is stored as a fraction, shown in points)

    def smallest_effect(self, mean_b: float) -> float:
        return max(self.delta, self.delta_fraction_of_b * abs(mean_b))


FD = Metric("fd_shapes", "fd_shapes", False, 2.0, 0.10)
ACCURACY = Metric("class_accuracy", "class accuracy (points)", True, 0.05, scale=100.0)
DISENTANGLEMENT = Metric("control_disentanglement", "control disentanglement", True, 0.05)
CLIP = Metric("clip_score", "CLIP score", True, 1.0)


@dataclass(frozen=True)
class Comparison:
    ident: str
    suite: str
    a: str  # the cell the claim says is better
    b: str
    metric: Metric
    control_guard: bool = False  # guard (b): called only when the controls were learned


COMPARISONS: tuple[Comparison, ...] = (
    Comparison("P1", "shapes-ablations", "scheduled", "class_adaln", FD),
    Comparison("P2", "shapes-ablations", "scheduled", "additive", FD),
    Comparison("P3", "shapes-ablations", "scheduled", "control_none", FD),
    Comparison("P4", "shapes-ablations", "scheduled", "additive", DISENTANGLEMENT, control_guard=True),
    Comparison("P5", "shapes-ablations", "padding_noisy", "padding_zero", CLIP),
    Comparison("P6", "shapes-ablations", "control_cfg_on", "control_cfg_off", DISENTANGLEMENT, control_guard=True),
    Comparison("P7", "shapes-transfer-res", "interpolate", "scratch", FD),
    Comparison("P8", "shapes-transfer-res", "interpolate", "extend", FD),
    Comparison("P9", "shapes-transfer-res", "interpolate", "interpolate_noshift", FD),
    Comparison("P10", "shapes-transfer-res", "interpolate", "interpolate_randomcrop", FD),
    Comparison("P11", "shapes-transfer-data", "transfer_text", "scratch_text", FD),
    Comparison("P12", "shapes-transfer-data", "transfer_text", "scratch_text", CLIP),
)


@dataclass(frozen=True)
class Claim:
    text: str
    suite: str
    cells: str
    primary: tuple[str, ...]


CLAIMS: tuple[Claim, ...] = (
    Claim(
        "class only through attention, nothing semantic in adaLN",
        "shapes-ablations",
        "`scheduled` vs `class_adaln`",
        ("P1",),
    ),
    Claim(
        "scheduled control embedding improves quality (vs additive, vs none)",
        "shapes-ablations",
        "`scheduled` vs `additive`, `control_none`",
        ("P2", "P3"),
    ),
    Claim(
        "scheduled control disentangles the controls from the content (vs additive)",
        "shapes-ablations",
        "`scheduled` vs `additive`",
        ("P4",),
    ),
    Claim("noisy replicate text padding", "shapes-ablations", "`padding_noisy` vs `padding_zero`", ("P5",)),
    Claim("separate control guidance scale", "shapes-ablations", "`control_cfg_on` vs `control_cfg_off`", ("P6",)),
    Claim(
        "resolution transfer 32 → 64 px beats training at 64 px from scratch",
        "shapes-transfer-res",
        "`interpolate` vs `scratch`",
        ("P7",),
    ),
    Claim("position table resampled, not extended", "shapes-transfer-res", "`interpolate` vs `extend`", ("P8",)),
    Claim(
        "noise-schedule shift at the higher resolution",
        "shapes-transfer-res",
        "`interpolate` vs `interpolate_noshift`",
        ("P9",),
    ),
    Claim(
        "crop policy per resolution (whole canvases at 64 px)",
        "shapes-transfer-res",
        "`interpolate` vs `interpolate_randomcrop`",
        ("P10",),
    ),
    Claim(
        "dataset transfer, class labels → captions",
        "shapes-transfer-data",
        "`transfer_text` vs `scratch_text`",
        ("P11", "P12"),
    ),
)


@dataclass
class Result:
    comparison: Comparison
    seeds: tuple[int, int] = (0, 0)
    delta: float = math.nan
    se: float = math.nan
    paired: bool = False
    p: float = 1.0
    p_holm: float = 1.0
    smallest: float = math.nan
    call: str = "pending"
    note: str = ""

    @property
    def interval(self) -> tuple[float, float]:
        half = z_of(0.95) * self.se
        return self.delta - half, self.delta + half


# ----------------------------------------------------------------------------------------------- rows
def current_cells(suite_path: Path) -> dict[str, list[dict[str, Any]]]:
    """The current, finished rows of a suite per entry (what `render` shows without the stale mark)."""
    from benchmark.leaderboard import results as res
    from benchmark.leaderboard.render import current_keys
    from benchmark.leaderboard.suite import load_suite

    suite = load_suite(suite_path)
    rows = res.read_results(suite.root)
    shown = res.latest_rows(rows, current_keys(suite, rows))
    cells: dict[str, list[dict[str, Any]]] = {}
    for row in shown:
        if row.get("source", "trained") == "trained" and not row.get("stale") and row.get("status") == "ok":
            cells.setdefault(row["entry"], []).append(row)
    return cells


def row_stat(name: str, rows: list[dict[str, Any]], key: str) -> RowStat | None:
    """A cell's per-seed values of ``key`` (from each row's ``metrics``, else the row), with SDs and replicates."""

    def field(row: dict[str, Any], name: str) -> Any:
        metrics = row.get("metrics") or {}
        return metrics[name] if name in metrics else row.get(name)

    kept = [r for r in rows if isinstance(field(r, key), (int, float)) and math.isfinite(field(r, key))]
    if not kept:
        return None
    kept.sort(key=lambda r: r.get("seed", 0))
    return RowStat(
        name,
        [field(r, key) for r in kept],
        [field(r, f"{key}_sd") for r in kept],
        [field(r, f"{key}_boot") for r in kept],
    )


# ----------------------------------------------------------------------------------------------- calls
def decide(delta: float, se: float, p_holm: float, smallest: float, alpha: float = 0.05) -> str:
    """The plan's decision rule, in its order: tie, supported, contradicted, else inconclusive."""
    half = z_of(0.95) * se
    if -smallest < delta - half and delta + half < smallest:
        return "tie"
    if p_holm < alpha and delta > 0 and delta >= smallest:
        return "supported"
    if p_holm < alpha and delta < 0 and -delta >= smallest:
        return "contradicted"
    return "inconclusive"


def compare(comparison: Comparison, cells: dict[str, list[dict[str, Any]]]) -> Result:
    """Δ, its SE and the raw p of one comparison (the call waits for Holm over the family: `call_all`)."""
    metric = comparison.metric
    result = Result(comparison)
    a, b = (row_stat(n, cells.get(n, []), metric.key) for n in (comparison.a, comparison.b))
    result.seeds = (a.n if a else 0, b.n if b else 0)
    if a is None or b is None or min(result.seeds) < MIN_SEEDS:
        result.note = f"current seeds: {result.seeds[0]} of A, {result.seeds[1]} of B; {MIN_SEEDS} each needed"
        return result
    stats = [s for s in (row_stat(n, rows, metric.key) for n, rows in cells.items()) if s is not None]
    seed_var = pooled_seed_variance(stats)
    se, result.paired = difference_se(a, b, seed_var)
    result.delta = (a.mean - b.mean) if metric.higher_is_better else (b.mean - a.mean)
    result.se = se
    result.p = (
        0.0 if se == 0 and result.delta != 0 else (1.0 if se == 0 else math.erfc(abs(result.delta / se) / 2**0.5))
    )
    result.smallest = metric.smallest_effect(b.mean)
    result.call = "computed"
    if comparison.control_guard and max(a.mean, b.mean) < LEARNED_CONTROL:
        result.call, result.note = "not testable at this budget", f"neither cell reaches {LEARNED_CONTROL}"
    return result


def _two_sided_p(delta: float, se: float) -> float:
    if se == 0:
        return 0.0 if delta != 0 else 1.0
    return math.erfc(abs(delta / se) / math.sqrt(2))


def call_all(root: Path) -> list[Result]:
    """Every primary comparison of the plan, called from the suites' current rows under ``root``/leaderboards."""
    cells_of: dict[str, dict[str, list[dict[str, Any]]]] = {}
    results = []
    for comparison in COMPARISONS:
        if comparison.suite not in cells_of:
            cells_of[comparison.suite] = current_cells(root / "leaderboards" / comparison.suite)
        results.append(compare(comparison, cells_of[comparison.suite]))
    for result, adjusted in zip(results, holm([r.p for r in results]), strict=True):
        result.p_holm = adjusted
        if result.call == "computed":
            result.call = decide(result.delta, result.se, adjusted, result.smallest)
    return results


def claim_call(calls: list[str]) -> str:
    """A claim with several primary comparisons: all supported, any contradicted, all ties, else inconclusive."""
    if any(c == "pending" for c in calls):
        return "pending"
    if any(c == "contradicted" for c in calls):
        return "contradicted"
    for agreed in ("supported", "tie", "not testable at this budget"):
        if all(c == agreed for c in calls):
            return agreed
    return "inconclusive"


def worst_classes(guard_dir: Path, rows: list[dict[str, Any]]) -> list[tuple[int, str, float]] | None:
    """``(seed, class, accuracy)`` of each row's worst class, from the per-class evaluation of that row's own final
    checkpoint in ``guard_dir/seed<N>/final.json``; None when a row has none, or one of another training or of other
    samples (its overall class accuracy differs from the row's)."""
    found = []
    for row in sorted(rows, key=lambda r: r.get("seed", 0)):
        seed = row.get("seed", 0)
        path = guard_dir / f"seed{seed}" / "final.json"
        if not path.is_file():
            return None
        evaluation = json.loads(path.read_text())
        run_folder = f"seed{seed}-{row.get('training_key', '')[:12]}"  # runs/.../<entry>/<run_folder>/final.ckpt
        same_training = run_folder in str(evaluation.get("checkpoint"))
        same_samples = abs(evaluation.get("class_accuracy", math.nan) - row.get("class_accuracy", math.nan)) < 1e-9
        if not (same_training and same_samples):
            return None
        classes = evaluation["per_class_accuracy"]
        name = min(classes, key=lambda c: classes[c]["accuracy"])
        found.append((seed, name, classes[name]["accuracy"]))
    return found


def budget_guard(root: Path) -> str | None:
    """Guard (a): a note when the reference row misses the budget target or it is not checked (None when met)."""
    cells = current_cells(root / "leaderboards" / "shapes-shared-recipe").get("dit", [])
    accuracy = row_stat("dit", cells, "class_accuracy")
    if accuracy is None:
        return "the budget target is not checked yet (shapes-shared-recipe's `dit` has no current row)"
    if accuracy.mean < BUDGET_TARGET[0]:
        return f"below the budget target (`dit`, shared recipe: {100 * accuracy.mean:.1f} % class accuracy < 80 %)"
    worst = worst_classes(root / GUARD_EVALS, cells)
    if worst is None:
        return (
            "the per-class half of the budget target is not checked"
            f" (no evaluation of every current `dit` row in {GUARD_EVALS.as_posix()})"
        )
    below = [f"seed {seed}: {name} {100 * value:.0f} %" for seed, name, value in worst if value < BUDGET_TARGET[1]]
    if below:
        return f"below the budget target (`dit`, shared recipe, a class under 50 %: {', '.join(below)})"
    return None


def guard_details(root: Path) -> str:
    """The figures behind guard (a) for ``docs/claims.md``: the mean class accuracy and each seed's worst class."""
    cells = current_cells(root / "leaderboards" / "shapes-shared-recipe").get("dit", [])
    accuracy = row_stat("dit", cells, "class_accuracy")
    if accuracy is None:
        return "No current reference row."
    worst = worst_classes(root / GUARD_EVALS, cells)
    text = f"Reference `dit` (shared recipe): mean class accuracy {100 * accuracy.mean:.1f} % over seeds"
    text += f" {', '.join(str(r['seed']) for r in sorted(cells, key=lambda r: r['seed']))}"
    if worst is None:
        return text + "; per-class accuracy not measured on every current row."
    per_seed = ", ".join(f"{100 * value:.0f} % ({name}, seed {seed})" for seed, name, value in worst)
    return (
        f"{text}; worst class {per_seed}, measured on each row's final checkpoint with the same samples"
        f" (`{GUARD_EVALS.as_posix()}`, `scripts/budget_curve.py evaluate`)."
    )


# ----------------------------------------------------------------------------------------------- text
def fmt_result(result: Result) -> str:
    c, m = result.comparison, result.comparison.metric
    if result.call == "pending":
        return f"{c.ident} ({m.label}): pending, {result.note}"
    lo, hi = result.interval
    s = m.scale
    return (
        f"{c.ident} ({m.label}): Δ = {result.delta * s:.3g} [{lo * s:.3g}, {hi * s:.3g}], p_Holm = {result.p_holm:.2g}"
    )


def claims_table(results: list[Result], guard: str | None = None) -> list[str]:
    """The README's table: one line per claim, its suite and cells, the primary comparisons' results and the call."""
    by_id = {r.comparison.ident: r for r in results}
    lines = [
        "| claim | suite: cells (command) | result (Δ > 0 is the claim's direction; 95 % interval) | call |",
        "|---|---|---|---|",
    ]
    marked = False
    for claim in CLAIMS:
        parts = [by_id[i] for i in claim.primary]
        call = claim_call([p.call for p in parts])
        mark = " †" if guard and call != "pending" else ""
        marked |= bool(mark)
        link = f"[{claim.suite}](leaderboards/{claim.suite}/README.md)"
        command = f"`ldmbench leaderboard run leaderboards/{claim.suite}`"
        result_text = "; ".join(fmt_result(p) for p in parts)
        lines.append(f"| {claim.text} | {link}: {claim.cells} ({command}) | {result_text} | **{call}**{mark} |")
    if marked:
        lines += ["", f"† Guard (a) of the plan: {guard}."]
    return lines


def details_lines(results: list[Result], guard: str | None, details: str = "") -> list[str]:
    """``docs/claims.md``: every comparison with its seeds, SE, raw and adjusted p, δ and call."""
    lines = [
        "# The paper's claims: every primary comparison",
        "",
        "Generated by `ldmbench leaderboard claims --write` from the suites' current rows, by the plan fixed before",
        "the study ([analysis-plan.md](analysis-plan.md)); do not edit by hand. Δ > 0 is the claim's direction; the",
        "interval is Δ ± 1.96 SE; p is the two-sided z-test's, p_Holm adjusted over all twelve comparisons; δ is the",
        "smallest effect that counts.",
        "",
        f"Budget guard (a): {guard or GUARD_MET}.",
        details,
        "",
        "| id | suite | A | B | metric | seeds (A, B) | Δ | 95 % interval | SE (paired) | p | p_Holm | δ | call |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c, s = r.comparison, r.comparison.metric.scale
        if r.call == "pending":
            numbers = ["", "", "", "", "", ""]
        else:
            lo, hi = r.interval
            numbers = [
                f"{r.delta * s:.3g}",
                f"[{lo * s:.3g}, {hi * s:.3g}]",
                f"{r.se * s:.2g} ({'yes' if r.paired else 'no'})",
                f"{r.p:.2g}",
                f"{r.p_holm:.2g}",
                f"{r.smallest * s:.3g}",
            ]
        call = r.call + (f" ({r.note})" if r.note else "")
        lines.append(
            f"| {c.ident} | {c.suite} | `{c.a}` | `{c.b}` | {c.metric.label} | {r.seeds[0]}, {r.seeds[1]} | "
            + " | ".join(numbers)
            + f" | {call} |"
        )
    return lines + [""]


def replace_block(text: str, block: list[str]) -> str:
    """``text`` with the lines between the claims markers replaced by ``block``."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"the README has no claims markers ({BEGIN!r} ... {END!r})")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + BEGIN + "\n" + "\n".join(block) + "\n" + END + tail


def run(root: Path, write: bool = False) -> str:
    """The claims table of the checkout at ``root``; with ``write``, into README.md and docs/claims.md."""
    results = call_all(root)
    guard = budget_guard(root)
    table = claims_table(results, guard)
    if write:
        readme = root / "README.md"
        readme.write_text(replace_block(readme.read_text(), table))
        (root / "docs" / "claims.md").write_text("\n".join(details_lines(results, guard, guard_details(root))))
    return "\n".join(table)
