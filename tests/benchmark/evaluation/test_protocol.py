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


class _Recorder:
    """The few module attributes `generate` reads, recording the control every sample was asked for."""

    def __init__(self, semantic="class", control_names=("orig_h",)):
        self.conditioner = type("C", (), {"semantic": semantic, "control_names": control_names})()
        self.resolution, self.latent_shape, self.num_classes, self.device = 16, (4, 2, 2), 10, torch.device("cpu")
        self.asked = []

    def default_control(self, n):
        from conditioning.conditioner import default_control

        return default_control(n, self.resolution)

    def sample_images(self, labels=None, captions=None, control=None, num_samples=None, **_):
        self.asked.append(control)
        return torch.zeros(num_samples, 3, self.resolution, self.resolution)


def test_control_conditioned_entries_on_shapes_ask_for_the_references_own_controls(monkeypatch):
    from contextlib import nullcontext

    from benchmark.evaluation.generate import protocol_controls
    from data.shapes import Shapes, ShapesDataModule

    protocol = EvalProtocol(num_samples=6, batch_size=4)
    monkeypatch.setattr(EvalProtocol, "apply", lambda self, module, scale=None: nullcontext())
    data = ShapesDataModule(resolution=16, batch_size=2)
    module = _Recorder()
    controls = protocol_controls(module, protocol, data, 6)
    reference = Shapes("train", resolution=16, length=6)
    for i in range(6):  # the control of the reference's item i, crop and flip included
        for name, value in reference.control(i).items():
            assert torch.equal(controls[name][i], value), (i, name)
    assert len({tuple(c.tolist()) for c in controls["crop_size"]}) > 1  # not the one default control
    generated = generate(module, protocol, 1.0, data_controls=controls)
    asked = torch.cat([c["crop_size"] for c in module.asked])
    assert torch.equal(asked, controls["crop_size"]) and torch.equal(generated.control, controls["flip"])
    # No control input, or a reference that is not Shapes: nothing to match (the default control stays).
    assert protocol_controls(_Recorder(control_names=()), protocol, data, 6) is None
    assert protocol_controls(module, protocol.replace(reference="data:train"), data, 6) is None
