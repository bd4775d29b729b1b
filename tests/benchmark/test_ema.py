import pytest
import torch
from torch import nn

from benchmark.ema import BackboneEMA


def test_ema_starts_as_copy_and_moves_by_decay():
    net = nn.Linear(3, 2)
    ema = BackboneEMA(net, decay=0.9)
    assert all(torch.equal(a, b) for a, b in zip(ema.shadow.parameters(), net.parameters()))
    before = ema.shadow.weight.clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)
    torch.testing.assert_close(ema.shadow.weight, 0.9 * before + 0.1 * net.weight)
    assert int(ema.num_updates) == 1
    assert not any(p.requires_grad for p in ema.shadow.parameters())


def test_ema_warmup_ramps_decay_and_state_round_trips():
    net = nn.Linear(3, 2)
    ema = BackboneEMA(net, decay=0.999, warmup=True)
    assert ema.current_decay() == pytest.approx(0.1)
    for _ in range(5):
        ema.update(net)
    assert ema.current_decay() == pytest.approx(6 / 15)
    other = BackboneEMA(nn.Linear(3, 2), decay=0.999, warmup=True)
    other.load_state_dict(ema.state_dict())
    assert int(other.num_updates) == 5 and torch.equal(other.shadow.weight, ema.shadow.weight)


def test_ema_stays_in_eval_mode():
    ema = BackboneEMA(nn.Dropout(0.5))
    ema.train()
    assert not ema.shadow.training
    with pytest.raises(ValueError):
        BackboneEMA(nn.Linear(1, 1), decay=1.0)
