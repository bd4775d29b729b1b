"""EvalProtocol: identity, labels, applying it to an entry, and sets that do not depend on the batch size."""

from collections import Counter

import pytest
import torch

from benchmark.evaluation import EvalProtocol, generate
from benchmark.guidance import ClassifierFreeGuidance
from benchmark.samplers import DDIMSampler, DDPMSampler, EulerSampler
from tests.benchmark.evaluation.conftest import tiny_ddpm_dit, tiny_dit


def test_labels_are_class_balanced():
    counts = Counter(EvalProtocol(num_samples=200).labels(10).tolist())
    assert sorted(counts) == list(range(10)) and set(counts.values()) == {20}
    uneven = Counter(EvalProtocol(num_samples=25).labels(10).tolist())
    assert max(uneven.values()) - min(uneven.values()) == 1
    with pytest.raises(ValueError):
        EvalProtocol().labels(0)


def test_id_is_stable_and_changes_only_with_what_changes_the_numbers(tmp_path):
    p = EvalProtocol.from_yaml("leaderboards/shapes/protocol.yaml")
    assert p.id() == EvalProtocol.from_dict(p.to_dict()).id()
    assert p.replace(batch_size=7).id() == p.id()  # batch size never changes a sample
    assert p.replace(flow_steps=21).id() != p.id()
    assert p.replace(num_samples=10).id() != p.id()
    with pytest.raises(ValueError, match="valid fields"):
        EvalProtocol.from_dict({"num_sample": 3})
    path = tmp_path / "p.yaml"
    path.write_text("protocol:\n  num_samples: 30\n  guidance_scale: 2.0\n")
    assert EvalProtocol.from_yaml(path).num_samples == 30


def test_apply_overrides_sampler_and_guidance_and_restores_them(tiny_vae):
    module = tiny_dit(tiny_vae, guidance=ClassifierFreeGuidance(semantic_scale=4.0, guided_channels=3))
    own = module.sampler, module.guidance
    protocol = EvalProtocol(flow_steps=7, guidance_scale=2.0)
    with protocol.apply(module):
        assert isinstance(module.sampler, EulerSampler) and module.sampler.steps == 7
        assert module.guidance.semantic_scale == 2.0 and module.guidance.guided_channels == 3
    assert (module.sampler, module.guidance) == own
    ddpm = tiny_ddpm_dit(tiny_vae)
    with EvalProtocol(ddpm_sampler="ddim", ddpm_steps=5).apply(ddpm):
        assert isinstance(ddpm.sampler, DDIMSampler) and ddpm.sampler.steps == 5
    with EvalProtocol(ddpm_sampler="ddpm", ddpm_steps=5).apply(ddpm):
        assert isinstance(ddpm.sampler, DDPMSampler)


@pytest.mark.parametrize("family", ["flow", "ddpm-ancestral"])
def test_a_sample_depends_on_its_index_not_on_the_batch(tiny_vae, family):
    if family == "flow":
        module, protocol = tiny_dit(tiny_vae), EvalProtocol(num_samples=7, flow_steps=3, guidance_scale=2.0)
    else:  # ancestral sampling injects noise every step: drawn per sample from the sample's own generator too
        module = tiny_ddpm_dit(tiny_vae)
        protocol = EvalProtocol(num_samples=7, ddpm_sampler="ddpm", ddpm_steps=3, guidance_scale=2.0)
    torch.nn.init.normal_(module.ema.shadow.final_layer.linear.weight, std=0.2)  # zero-init would hide differences
    a = generate(module, protocol.replace(batch_size=2), 2.0)
    b = generate(module, protocol.replace(batch_size=7), 2.0)
    head = generate(module, protocol.replace(num_samples=3, batch_size=3), 2.0)
    assert torch.equal(a.images, b.images)
    assert torch.equal(head.images, a.images[:3])
    assert a.labels.tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert not torch.equal(a.images[0], a.images[1])
    other_seed = generate(module, protocol.replace(seed=1), 2.0)
    assert not torch.equal(other_seed.images, a.images)
