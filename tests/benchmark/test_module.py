"""DiffusionModule behaviour on a tiny DiT, independent of the CLI."""

import pytest
import torch
from diffusers import AutoencoderKL

from baselines.dit import DiTModule
from benchmark.objectives import DDPM, RectifiedFlow
from benchmark.samplers import DDIMSampler, EulerSampler
from conditioning.conditioner import CONTROL_NAMES, Conditioner
from data.autoencoder import Autoencoder
from data.shapes import Shapes

# The tests call training_step outside a Trainer on purpose; Lightning warns that self.log has nowhere to go.
pytestmark = pytest.mark.filterwarnings("ignore:.*self.trainer. reference is not registered")


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    path = tmp_path_factory.mktemp("vae")
    AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    ).save_pretrained(path)
    return str(path)


def _module(vae, **kwargs):
    kwargs.setdefault("sampler", DDIMSampler(steps=3))
    return DiTModule(size="DiT-tiny/2", num_classes=10, resolution=32, autoencoder=Autoencoder(vae), **kwargs)


def _batch(n=4):
    items = [Shapes(resolution=32)[i] for i in range(n)]
    return torch.utils.data.default_collate(items)


def test_training_step_is_finite_and_ema_follows(tiny_vae):
    module = _module(tiny_vae, ema_decay=0.5)
    loss = module.training_step(_batch(), 0)
    assert torch.isfinite(loss) and loss.requires_grad
    loss.backward()
    opt = module.configure_optimizers()
    opt.step()
    module.ema.update(module.backbone)
    w, e = module.backbone.final_layer.linear.weight, module.ema.shadow.final_layer.linear.weight
    torch.testing.assert_close(e, 0.5 * w.detach())  # the EMA started at the (zero) init: halfway to the weights
    assert int(module.ema.num_updates) == 1


def test_step_randomness_is_a_function_of_the_step(tiny_vae):
    module = _module(tiny_vae)
    batch = _batch()
    a = module.training_step(batch, 0)
    torch.rand(10)  # whatever happens to the global RNG in between
    b = module.training_step(batch, 0)
    assert torch.equal(a, b)


def test_sampling_is_seeded_and_shaped(tiny_vae):
    module = _module(tiny_vae)
    labels = torch.tensor([0, 1, 2])
    a = module.sample_images(labels=labels, seed=3)
    b = module.sample_images(labels=labels, seed=3)
    c = module.sample_images(labels=labels, seed=4)
    assert a.shape == (3, 3, 32, 32) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_objective_and_backbone_must_agree_on_sigma(tiny_vae):
    with pytest.raises(ValueError, match="learn_sigma"):
        _module(tiny_vae, learn_sigma=False, objective=DDPM(learn_sigma=True))
    flow = _module(tiny_vae, objective=RectifiedFlow(), sampler=EulerSampler(steps=2))  # learn_sigma follows
    assert flow.backbone.out_channels == 4 and _module(tiny_vae).backbone.out_channels == 8
    assert torch.isfinite(flow.training_step(_batch(), 0))
    assert flow.sample_images(labels=torch.tensor([1])).shape == (1, 3, 32, 32)


def test_control_conditioning_reaches_the_backbone(tiny_vae):
    module = _module(tiny_vae, conditioner=Conditioner(control_names=list(CONTROL_NAMES), control_dropout=0.5))
    assert module.backbone.control_embedder is not None
    assert torch.isfinite(module.training_step(_batch(), 0))


def test_describe_counts_the_backbone(tiny_vae):
    info = _module(tiny_vae).describe()
    assert info["params"] == sum(p.numel() for p in _module(tiny_vae).backbone.parameters())
    assert info["tokens"] == 16 and info["latent_shape"] == [4, 8, 8] and info["gmacs_per_forward"] > 0
