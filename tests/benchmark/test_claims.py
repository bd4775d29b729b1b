"""The claims table: the analysis plan's decision rule, its data matching the committed plan, the README's copy."""

from __future__ import annotations

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
