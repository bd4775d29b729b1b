"""N ranks draw for each sample what one process draws for it (`benchmark.batch_draws`)."""

import pytest
import torch

from benchmark.batch_draws import global_batch_draws


def _draws(n: int) -> list[torch.Tensor]:
    # The draws the training step makes: logit-normal t, uniform t, DDPM steps, noise like the latents, dropout,
    # MDT's per-token mask scores, a scalar mask ratio, and a randint with a keyword size.
    x0 = torch.empty(n, 4, 8, 8)
    return [
        torch.randn(n),
        torch.rand(n, device="cpu"),
        torch.randint(0, 1000, (n,)),
        torch.randn_like(x0),
        torch.rand((n, 16)),
        torch.rand(()),
        torch.randint(5, size=(n, 2)),
        torch.rand_like(x0[:, 0]),
        torch.randn_like(x0.to(memory_format=torch.channels_last)),  # a VAE's latents are channels-last
    ]


@pytest.mark.parametrize("world", [2, 3])
def test_each_rank_gets_one_processs_draws_for_its_rows(world):
    local = 4
    torch.manual_seed(7)
    whole = _draws(local * world)
    for rank in range(world):
        torch.manual_seed(7)  # every rank enters with the same state
        with global_batch_draws(local, rank, world):
            mine = _draws(local)
        for one, part in zip(whole, mine, strict=True):
            expected = one if one.dim() == 0 else one[rank::world]
            assert torch.equal(part, expected)
        # The RNG advanced as in one process: the next draw outside agrees too.
        after_rank = torch.rand(3)
        torch.manual_seed(7)
        _draws(local * world)
        assert torch.equal(after_rank, torch.rand(3))


def test_one_process_is_untouched_and_other_sizes_draw_whole():
    torch.manual_seed(1)
    plain = [torch.randn(5), torch.randn(3, 2)]
    torch.manual_seed(1)
    with global_batch_draws(5, 0, 1):
        same = [torch.randn(5), torch.randn(3, 2)]
    assert all(torch.equal(a, b) for a, b in zip(plain, same, strict=True))
    torch.manual_seed(1)
    with global_batch_draws(5, 1, 2):
        other = torch.randn(3, 2)  # not shaped by the batch: drawn whole, as one process draws it
    torch.manual_seed(1)
    assert torch.equal(other, torch.randn(3, 2))


def test_two_ranks_average_to_one_processs_gradient(tiny_vae):
    # A DiT-tiny step on images (the posterior sample, condition dropout, t and noise are all drawn): the mean of the
    # two ranks' gradients (what DDP all-reduces) is one process's gradient.
    from baselines.dit import DiTModule
    from data.autoencoder import Autoencoder
    from data.shapes import Shapes

    torch.manual_seed(0)
    module = DiTModule(size="DiT-tiny/2", num_classes=10, resolution=32, autoencoder=Autoencoder(tiny_vae))
    batch = torch.utils.data.default_collate([Shapes(resolution=32)[i] for i in range(8)])

    def grads(sub: dict, rank: int, world: int) -> list[torch.Tensor]:
        module.zero_grad()
        with module.seeded(123), global_batch_draws(8 // world, rank, world):
            module.training_loss(sub)["loss"].backward()
        return [p.grad.clone() for p in module.backbone.parameters() if p.grad is not None]

    def rows(rank: int) -> dict:
        return {k: v[rank::2] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    one = grads(batch, 0, 1)
    halves = [grads(rows(r), r, 2) for r in range(2)]
    assert len(one) > 10
    for g, a, b in zip(one, *halves, strict=True):
        torch.testing.assert_close((a + b) / 2, g, rtol=1e-4, atol=1e-6)
