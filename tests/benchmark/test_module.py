"""DiffusionModule behaviour on a tiny DiT, independent of the CLI."""

from types import SimpleNamespace

import pytest
import torch

from baselines.dit import DiTModule
from benchmark.guidance import ClassifierFreeGuidance
from benchmark.objectives import DDPM, RectifiedFlow
from benchmark.samplers import DDIMSampler, EulerSampler
from conditioning.conditioner import CONTROL_NAMES, Conditioner
from data.autoencoder import Autoencoder
from data.shapes import Shapes

# The tests call training_step outside a Trainer on purpose; Lightning warns that self.log has nowhere to go.
pytestmark = pytest.mark.filterwarnings("ignore:.*self.trainer. reference is not registered")


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


def test_each_micro_batch_of_an_accumulated_step_draws_its_own_randomness(tiny_vae):
    module = _module(tiny_vae)
    module._trainer = SimpleNamespace(accumulate_grad_batches=2, global_step=5, global_rank=0)
    seeds = [module.step_seed(module._micro_batch(i)) for i in range(4)]
    assert seeds[0] != seeds[1] and seeds == [seeds[0], seeds[1]] * 2  # batch_idx 2 starts the next step
    batch = _batch()
    losses = []
    for i in range(2):
        with module.seeded(module.step_seed(module._micro_batch(i))):
            losses.append(module.training_loss(batch)["loss"])
    assert losses[0] != losses[1]  # different t / noise / dropout / posterior sample on the same images
    module._trainer = SimpleNamespace(accumulate_grad_batches=2, global_step=5, global_rank=1)
    # Not the rank: every rank seeds alike and keeps its rows of the global batch's draws (`benchmark.batch_draws`).
    assert module.step_seed(0) == seeds[0]
    module._trainer = None


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
    # At initialisation adaLN-Zero makes the output independent of every condition: perturb the weights first.
    torch.manual_seed(0)
    for p in module.backbone.parameters():
        torch.nn.init.normal_(p, std=0.05)
    batch = _batch()
    flipped = {**batch, "control": {**batch["control"], "flip": 1 - batch["control"]["flip"]}}
    x, t = torch.randn(4, 4, 8, 8), torch.full((4,), 0.5)
    with torch.no_grad():
        a = module.backbone(x, t, module.conditioner(batch, train=False))
        b = module.backbone(x, t, module.conditioner(flipped, train=False))
        dropped = module.backbone(x, t, module.conditioner(batch, train=False).drop(control=True))
    assert not torch.allclose(a, b, atol=1e-4), "changing the control metadata did not change the prediction"
    assert not torch.allclose(a, dropped, atol=1e-4), "dropping the control group did not change the prediction"


def test_objective_sampler_mismatch_is_refused_when_built(tiny_vae):
    with pytest.raises(ValueError, match=r"EulerSampler.*DDPM.*DDPMSampler or DDIMSampler"):
        _module(tiny_vae, objective=DDPM(), sampler=EulerSampler(steps=2))
    with pytest.raises(ValueError, match=r"DDIMSampler.*RectifiedFlow.*EulerSampler"):
        _module(tiny_vae, objective=RectifiedFlow(), sampler=DDIMSampler(steps=2))


def test_guidance_on_an_untrained_dropped_branch_is_refused(tiny_vae):
    control = Conditioner(control_names=list(CONTROL_NAMES), control_dropout=0.0)
    for guidance in (ClassifierFreeGuidance(semantic_scale=2.0, control_scale=2.0), ClassifierFreeGuidance(2, 3)):
        with pytest.raises(ValueError, match=r"control_dropout is 0.*control_dropout > 0.*control_scale: 1.0"):
            _module(tiny_vae, conditioner=control, guidance=guidance)
    _module(tiny_vae, conditioner=control, guidance=ClassifierFreeGuidance(semantic_scale=2.0))  # semantic only
    with pytest.raises(ValueError, match="semantic_dropout is 0"):
        _module(tiny_vae, conditioner=Conditioner(semantic_dropout=0.0), guidance=ClassifierFreeGuidance(1.5))


def test_describe_counts_the_backbone(tiny_vae):
    info = _module(tiny_vae).describe()
    assert info["params"] == sum(p.numel() for p in _module(tiny_vae).backbone.parameters())
    assert info["tokens"] == 16 and info["latent_shape"] == [4, 8, 8] and info["gmacs_per_forward"] > 0
    # One denoiser pass: forward + backward is about 3x the forward's 2 x MACs FLOPs (a few loss ops on top).
    assert info["train_gflops_per_image"] == pytest.approx(6 * info["gmacs_per_forward"], rel=0.05)
    assert info["autoencoder_gflops_per_image"] > 0 and info["text_gflops_per_image"] == 0


def test_train_flops_count_every_denoiser_pass_on_a_real_module(tiny_vae):
    from benchmark.flops import train_gflops_per_image

    one = train_gflops_per_image(_module(tiny_vae))
    two = TwoPassDiT(size="DiT-tiny/2", num_classes=10, resolution=32, autoencoder=Autoencoder(tiny_vae))
    assert train_gflops_per_image(two) == pytest.approx(2 * one, rel=0.02)
    assert all(p.grad is None for p in two.backbone.parameters())  # counting leaves no gradients behind


class TwoPassDiT(DiTModule):
    """A recipe with two denoiser passes at the same t and noise, the second with an extra keyword argument."""

    def training_loss(self, batch):
        x0 = self.encode(batch)
        cond = self.conditioner(batch, train=True)
        t = self.objective.sample_time(x0.shape[0], x0.device)
        noise = torch.randn_like(x0)
        self.calls = []

        def denoiser(x_t, t, cond, **kwargs):
            self.calls.append((x_t, t, kwargs))
            return self._train_forward(x_t, t, cond)

        masked = self.objective.loss(denoiser, x0, cond, noise=noise, t=t, mask_ratio=0.4)
        full = self.objective.loss(denoiser, x0, cond, noise=noise, t=t)
        return {"loss": masked["loss"] + full["loss"], "masked": masked["loss"], "full": full["loss"]}


@pytest.mark.parametrize("flow", [False, True])
def test_a_recipe_overrides_training_loss_with_two_passes(tiny_vae, flow):
    kwargs = dict(objective=RectifiedFlow(), sampler=EulerSampler(steps=2)) if flow else {}
    module = TwoPassDiT(size="DiT-tiny/2", num_classes=10, resolution=32, autoencoder=Autoencoder(tiny_vae), **kwargs)
    loss = module.training_step(_batch(), 0)
    (first_x, first_t, first_kw), (second_x, second_t, second_kw) = module.calls
    assert first_kw == {"mask_ratio": 0.4} and second_kw == {}
    assert torch.equal(first_x, second_x) and torch.equal(first_t, second_t)  # same t and noise in both passes
    assert first_t.dtype == torch.float32 and 0 <= first_t.min() and first_t.max() <= 1
    assert torch.isfinite(loss) and loss.requires_grad


def test_ddpm_sample_time_is_the_training_draw_as_a_float():
    ddpm = DDPM(num_timesteps=1000)
    torch.manual_seed(0)
    t = ddpm.sample_time(5000)
    assert t.dtype == torch.float32 and torch.equal(t, (t * 1000).round() / 1000)  # integer steps k / T
    assert 0 <= t.min() and t.max() <= 0.999 and 0.45 < t.mean() < 0.55
    torch.manual_seed(0)
    k = torch.randint(0, 1000, (5000,))
    torch.testing.assert_close(t, k.float() / 1000)  # the same draw DDPM.loss makes with t=None


def test_a_nan_is_caught_on_a_logging_step_and_the_step_range_is_named(tiny_vae):
    import lightning.pytorch as pl

    class NaNAfterStep1(DiTModule):
        def training_loss(self, batch):
            losses = super().training_loss(batch)
            if self.global_step >= 1:
                losses["loss"] = losses["loss"] * float("nan")
            return losses

    module = NaNAfterStep1(
        size="DiT-tiny/2", num_classes=10, resolution=32, autoencoder=Autoencoder(tiny_vae), sampler=DDIMSampler(3)
    )
    loader = torch.utils.data.DataLoader([Shapes(resolution=32)[i] for i in range(8)], batch_size=2)
    trainer = pl.Trainer(
        max_steps=4,
        log_every_n_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    with pytest.raises(FloatingPointError, match="between steps 1 and 2"):
        trainer.fit(module, loader)


def test_predict_noise_depends_on_the_global_index_only(tiny_vae):
    module = _module(tiny_vae)
    labels = _batch(4)["class_label"]
    whole = module.predict_step({"class_label": labels, "index": torch.arange(10, 14)}, 0)
    halves = [
        module.predict_step({"class_label": labels[i : i + 2], "index": torch.arange(10 + i, 12 + i)}, 0)
        for i in (0, 2)
    ]
    torch.testing.assert_close(torch.cat(halves), whole, atol=1e-4, rtol=1e-4)
    assert torch.equal(module.sample_noise([11]), module.sample_noise([10, 11])[1:])
    assert not torch.equal(module.sample_noise([11]), module.sample_noise([12]))


def test_dit_forward_has_no_graph_break():
    from baselines.dit import DiT, dit_size
    from conditioning.types import Cond

    model = DiT(
        input_size=8, in_channels=4, num_classes=10, control_names=list(CONTROL_NAMES), **dit_size("DiT-tiny/2")
    )
    cond = Cond(label=torch.tensor([1, 2]), control=torch.zeros(2, 7), control_names=CONTROL_NAMES).drop(
        semantic=torch.tensor([True, False])
    )
    explanation = torch._dynamo.explain(model)(torch.randn(2, 4, 8, 8), torch.rand(2), cond)
    assert explanation.graph_break_count == 0, explanation.break_reasons
