"""A seed gives the reference's initial weights: per-tensor statistics against facebookresearch/DiT at ed81ce2.

The fixture ``fixtures/dit_init_stats.json`` was produced once from the reference code, which is not part of this
repository (its ``models.py`` needs timm)::

    git clone https://github.com/facebookresearch/DiT /tmp/dit_ref && cd /tmp/dit_ref && git checkout ed81ce2
    python - > tests/baselines/fixtures/dit_init_stats.json <<'PY'
    import json, torch
    from models import DiT
    cfg = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=128, depth=2, num_heads=4, num_classes=10)
    torch.manual_seed(0)
    sd = DiT(**cfg, learn_sigma=True).state_dict()
    rows = {k: [v.double().mean().item(), v.double().std().item(), v.double().sum().item()] for k, v in sd.items()}
    body = ",\\n".join(f'  "{k}": {json.dumps(r)}' for k, r in rows.items())
    head = {"reference": "facebookresearch/DiT@ed81ce2 models.py", "seed": 0, "config": cfg, "torch": torch.__version__}
    print(json.dumps(head)[:-1] + ', "stats": {\\n' + body + "\\n}}")
    PY

(run from /tmp/dit_ref, redirecting into this repository's fixture path; torch 2.14.1, timm 1.0.31).
"""

import json
from pathlib import Path

import pytest
import torch

from baselines.dit import DiT

FIXTURE = json.loads((Path(__file__).parent / "fixtures/dit_init_stats.json").read_text())


def _stats(model: DiT) -> dict[str, list[float]]:
    return {
        k.replace("adaLN_modulation.linear.", "adaLN_modulation.1."): [
            v.double().mean().item(),
            v.double().std().item(),
            v.double().sum().item(),
        ]
        for k, v in model.state_dict().items()
    }


def test_seed_gives_the_reference_initial_weights():
    torch.manual_seed(FIXTURE["seed"])
    ours = _stats(DiT(**FIXTURE["config"], learn_sigma=True))
    reference = FIXTURE["stats"]
    assert sorted(ours) == sorted(reference)
    for name, expected in reference.items():
        assert ours[name] == pytest.approx(expected, rel=1e-6, abs=1e-7), name


def test_patch_embedding_bias_starts_at_zero():
    """The reference's "Fix patchify bias init": the Conv2d bias is zeroed, not left at PyTorch's default."""
    torch.manual_seed(0)
    assert DiT(**FIXTURE["config"]).x_embedder.proj.bias.abs().max() == 0
