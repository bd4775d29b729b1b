"""`ldmbench sample --protocol`: the images a user looks at are the very samples a leaderboard row measured."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from benchmark.cli import _model_cli, main
from benchmark.evaluation import EvalProtocol, generate
from benchmark.evaluation.generate import protocol_controls, to_uint8
from benchmark.sample_cli import protocol_indices, sample_protocol_images

ROOT = Path(__file__).resolve().parents[2]
SHAPES_PROTOCOL = ROOT / "leaderboards/shapes/protocol.yaml"


def _entry(name: str):
    module = _model_cli(["--config", str(ROOT / f"leaderboards/shapes/{name}.yaml")]).model.eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # an untrained entry's zero-initialised output layer would make every class look alike
        for p in module.ema.shadow.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return module


def test_protocol_indices_are_the_balanced_indices_of_each_class():
    assert protocol_indices([3, 7], 3, 10) == [3, 13, 23, 7, 17, 27]
    labels = EvalProtocol(num_samples=30).labels(10)
    assert all(labels[i] == c for c, i in zip([3, 3, 3, 7, 7, 7], protocol_indices([3, 7], 3, 10)))


# dit: class-conditional, rectified flow. proposed: control-conditioned too (each index asks for the control of the
# reference's item at that index, flip included, as `evaluate` does).
@pytest.mark.parametrize("entry", ["dit", "proposed"])
def test_protocol_samples_equal_the_evaluation_set_at_the_same_indices(entry):
    module = _entry(entry)
    protocol = EvalProtocol.from_yaml(SHAPES_PROTOCOL).replace(num_samples=24, flow_steps=2, batch_size=5)
    indices = protocol_indices([2, 9], 2, 10)  # 2, 12, 9, 19
    controls = protocol_controls(module, protocol, None, protocol.num_samples)
    assert (controls is None) == (entry == "dit")
    for scale in (protocol.guidance_scale, 1.0):
        evaluated = generate(module, protocol, scale, data_controls=controls)
        ours = sample_protocol_images(module, protocol.replace(batch_size=3), indices, scale, flips=True)
        assert torch.equal(to_uint8(ours), evaluated.images[indices])
    assert not torch.equal(evaluated.images[2], evaluated.images[12])  # distinct seeds per index


def test_sample_command_with_a_protocol_writes_the_evaluated_images(tmp_path, capsys):
    config = str(ROOT / "leaderboards/shapes/dit.yaml")
    module = _entry("dit")
    ckpt = tmp_path / "weights.ckpt"
    torch.save({"state_dict": module.state_dict(), "global_step": 0}, ckpt)
    protocol_file = tmp_path / "protocol.yaml"
    protocol = EvalProtocol.from_yaml(SHAPES_PROTOCOL).replace(num_samples=20, flow_steps=2)
    protocol_file.write_text(yaml.safe_dump(protocol.to_dict()))
    out = tmp_path / "images"
    main(
        ["sample", "--config", config, f"--ckpt_path={ckpt}", "--classes=4", "--n=2", "--protocol", str(protocol_file)]
        + ["--output", str(out)]
    )
    assert f"protocol {protocol.name} ({protocol.id()})" in capsys.readouterr().out

    evaluated = generate(module, protocol, protocol.guidance_scale)
    for index in (4, 14):
        png = np.asarray(Image.open(next(out.glob(f"class0004_*_index{index:06d}.png"))))
        expected = evaluated.images[index].permute(1, 2, 0).numpy()
        # The same float image; the PNG writer and the evaluation round to 8 bits each their own way (at most 1).
        assert np.abs(png.astype(int) - expected.astype(int)).max() <= 1
    assert len(list(out.glob("*.png"))) == 3  # two images and the grid
    with pytest.raises(SystemExit):  # the protocol decides EMA or raw weights
        main(
            ["sample", "--config", config, f"--ckpt_path={ckpt}", "--classes=4", "--raw", f"--protocol={protocol_file}"]
        )
