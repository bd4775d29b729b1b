"""The claims table: the analysis plan's decision rule, its data matching the committed plan, the README's copy."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from benchmark.leaderboard import claims as cl

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("delta", "se", "p_holm", "call"),
    [
        (0.1, 0.2, 0.6, "tie"),  # interval [-0.29, 0.49] inside (-2, 2)
        (5.0, 1.0, 1e-6, "supported"),
        (-5.0, 1.0, 1e-6, "contradicted"),
        (1.0, 0.1, 1e-6, "tie"),  # significant, but the whole interval is below δ = 2: an effect that does not count
        (3.0, 2.0, 0.3, "inconclusive"),  # too wide to call
        (2.5, 0.5, 0.2, "inconclusive"),  # large, but not significant after Holm
    ],
)
def test_decision_rule(delta, se, p_holm, call):
    assert cl.decide(delta, se, p_holm, smallest=2.0) == call


def test_a_claim_with_two_comparisons():
    assert cl.claim_call(["supported", "supported"]) == "supported"
    assert cl.claim_call(["supported", "contradicted"]) == "contradicted"
    assert cl.claim_call(["tie", "tie"]) == "tie"
    assert cl.claim_call(["supported", "tie"]) == "inconclusive"
    assert cl.claim_call(["supported", "pending"]) == "pending"


def _rows(entry, values, sd=0.5, key="fd_shapes"):
    return [{"entry": entry, "seed": s, "metrics": {key: v, f"{key}_sd": sd}} for s, v in enumerate(values)]


def test_direction_pending_and_the_control_guard():
    fd = cl.Comparison("X", "s", "a", "b", cl.FD)
    better = cl.compare(fd, {"a": _rows("a", [10, 11, 10.5]), "b": _rows("b", [20, 21, 19])})
    assert better.delta == pytest.approx(20 - 10.5) and better.call == "computed" and better.p < 1e-6
    assert better.smallest == pytest.approx(2.0)  # max(2, 10 % of 20)
    assert cl.compare(fd, {"a": _rows("a", [10, 11]), "b": _rows("b", [20, 21, 19])}).call == "pending"
    clip = cl.Comparison("Y", "s", "a", "b", cl.CLIP)
    higher = cl.compare(
        clip, {"a": _rows("a", [80, 81, 82], key="clip_score"), "b": _rows("b", [70] * 3, key="clip_score")}
    )
    assert higher.delta == pytest.approx(11.0)  # higher is better: A − B
    guard = cl.Comparison("Z", "s", "a", "b", cl.DISENTANGLEMENT, control_guard=True)
    key = "control_disentanglement"
    flat = cl.compare(guard, {"a": _rows("a", [0.02, 0.03, 0.0], 0.01, key), "b": _rows("b", [0.0] * 3, 0.01, key)})
    assert flat.call == "not testable at this budget"
    learned = cl.compare(guard, {"a": _rows("a", [0.5, 0.6, 0.55], 0.01, key), "b": _rows("b", [0.1] * 3, 0.01, key)})
    assert learned.call == "computed"


def test_the_plan_as_data_matches_the_committed_plan():
    plan = (REPO / "docs" / "analysis-plan.md").read_text()
    sections = re.split(r"\n### ", plan)
    for c in cl.COMPARISONS:
        [section] = [s for s in sections if f"**{c.ident}**" in s]
        assert f"`{c.a}`" in section and f"`{c.b}`" in section and c.suite in section, c.ident
        after = " ".join(section.split()).split(f"**{c.ident}**", 1)[1]
        said = re.sub(r"^ \([^)]*\)", "", after)[:40].lower()  # what P<n> names first, after its gloss
        assert c.metric.key in said or c.metric.label.lower() in said, (c.ident, said)
    assert sorted(c.ident for c in cl.COMPARISONS) == sorted(set(re.findall(r"\*\*(P\d+)\*\*", plan)))
    for claim in cl.CLAIMS:
        assert set(claim.primary) <= {c.ident for c in cl.COMPARISONS}


def test_readme_claims_table_is_the_generated_one():
    readme = (REPO / "README.md").read_text()
    block = readme.split(cl.BEGIN, 1)[1].split(cl.END, 1)[0].strip("\n")
    results = cl.call_all(REPO)
    assert block == "\n".join(cl.claims_table(results, cl.budget_guard(REPO))), (
        "README's claims table is not what the rows give: run `ldmbench leaderboard claims --write`"
    )
    details = cl.details_lines(results, cl.budget_guard(REPO), cl.guard_details(REPO))
    assert (REPO / "docs" / "claims.md").read_text() == "\n".join(details), (
        "docs/claims.md is not what the rows give: run `ldmbench leaderboard claims --write`"
    )


def _guard_eval(folder, seed, training_key, accuracy, classes):
    path = folder / f"seed{seed}" / "final.json"
    path.parent.mkdir(parents=True)
    checkpoint = f"runs/leaderboards/shapes/default/dit/seed{seed}-{training_key[:12]}/final.ckpt"
    per_class = {name: {"accuracy": value, "n": 100} for name, value in classes.items()}
    path.write_text(json.dumps({"checkpoint": checkpoint, "class_accuracy": accuracy, "per_class_accuracy": per_class}))


def test_the_per_class_guard_reads_each_rows_own_evaluation_and_refuses_another(tmp_path):
    rows = [
        {"seed": 0, "training_key": "a" * 16, "class_accuracy": 0.84},
        {"seed": 1, "training_key": "b" * 16, "class_accuracy": 0.81},
    ]
    _guard_eval(tmp_path, 0, "a" * 16, 0.84, {"arrow": 0.65, "circle": 0.99})
    assert cl.worst_classes(tmp_path, rows) is None  # seed 1 has no evaluation: not checked, not met
    _guard_eval(tmp_path, 1, "b" * 16, 0.81, {"star": 0.45, "circle": 0.9})
    assert cl.worst_classes(tmp_path, rows) == [(0, "arrow", 0.65), (1, "star", 0.45)]
    retrained = [rows[0], {**rows[1], "training_key": "c" * 16}]  # the row was trained again: its evaluation is stale
    assert cl.worst_classes(tmp_path, retrained) is None
    other_samples = [rows[0], {**rows[1], "class_accuracy": 0.8}]  # same training, other samples (another protocol)
    assert cl.worst_classes(tmp_path, other_samples) is None


def test_the_committed_reference_rows_meet_the_per_class_target():
    cells = cl.current_cells(REPO / "leaderboards" / "shapes-shared-recipe").get("dit", [])
    worst = cl.worst_classes(REPO / cl.GUARD_EVALS, cells)
    assert worst is not None and len(worst) == len(cells) >= cl.MIN_SEEDS
    assert cl.budget_guard(REPO) is None  # the README's calls carry no guard mark
