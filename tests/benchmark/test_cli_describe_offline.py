"""`ldmbench describe` answers from the shipped configs: no hub request, no retries, even when the network is down."""

import json
import socket
from pathlib import Path

import pytest

from benchmark.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_network(monkeypatch):
    """Every connection (and name lookup) is refused and recorded; HF_HUB_OFFLINE is unset as on a user's machine."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] or args)
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    return attempts


@pytest.mark.parametrize(
    ("config", "size", "semantic"),
    [
        # SD-VAE from the hub, and three hub text encoders (two CLIPs and T5-XXL) besides it.
        ("leaderboards/imagenet-256/dit_xl_2.yaml", "DiT-tiny/2", "class"),
        ("leaderboards/cc12m-256/mmdit_xl_2.yaml", "mmDiT-tiny/2", "caption"),
    ],
)
def test_describe_of_a_paper_scale_config_attempts_no_connection(config, size, semantic, no_network, capsys):
    # A tiny backbone keeps the test fast; the VAE and text encoders, which are what used to go to the hub, are the
    # config's own.
    main(["describe", "--config", str(ROOT / config), f"--model.init_args.size={size}"])
    captured = capsys.readouterr()
    info = json.loads(captured.out)
    assert no_network == []
    assert "Retrying" not in captured.err and "huggingface.co" not in captured.err
    assert info["semantic"] == semantic and info["latent_shape"] == [4, 32, 32]
    if semantic == "caption":
        assert info["text_gflops_per_image"] > 100  # the T5-XXL and CLIP widths came from the shipped configs


def test_describe_leaves_the_offline_switch_as_it_found_it(no_network, capsys):
    import os

    from huggingface_hub import constants

    main(["describe", "--config", str(ROOT / "leaderboards/shapes/dit.yaml")])
    assert constants.HF_HUB_OFFLINE is False and "HF_HUB_OFFLINE" not in os.environ
