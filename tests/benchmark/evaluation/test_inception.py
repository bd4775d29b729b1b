"""FID through torch-fidelity's real ``inception-v3-compat`` code, with re-initialised weights in a temporary file."""

import pickle

import pytest
import torch
import torch_fidelity.feature_extractor_inceptionv3 as tfi
from torch import nn

from benchmark.evaluation.frechet import frechet_distance, stats_from_features
from benchmark.evaluation.inception import InceptionMetrics, check_inception_weights


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """A re-initialised Inception state dict (the real one is a 96 MB download): kaiming convs keep features alive."""
    original = tfi.load_state_dict_from_url
    tfi.load_state_dict_from_url = lambda *a, **k: None
    original_load = tfi.FeatureExtractorInceptionV3.load_state_dict
    tfi.FeatureExtractorInceptionV3.load_state_dict = lambda self, sd, *a, **k: None
    try:
        net = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        tfi.load_state_dict_from_url = original
        tfi.FeatureExtractorInceptionV3.load_state_dict = original_load
    gen = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=gen)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01, generator=gen)
    path = tmp_path_factory.mktemp("inception") / "inception-reinit.pth"
    torch.save(net.state_dict(), path)
    return path


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise(inception_weights):
    metrics = InceptionMetrics(weights_path=str(inception_weights))
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(6, 3, 32, 32, generator=gen)
    noise = torch.randn(6, 3, 32, 32, generator=gen)

    def uint8(x):
        return (x.clamp(0, 1) * 255).round().to(torch.uint8)

    feats = {s: metrics.features(uint8(base + s * noise)) for s in (0.0, 0.1, 0.4)}
    ref = stats_from_features(feats[0.0])
    fids = [frechet_distance(*stats_from_features(feats[s]), *ref) for s in (0.0, 0.1, 0.4)]
    assert abs(fids[0]) < 1e-3 * fids[2]  # rank-deficient covariances (6 images, 2048-d): sqrtm is approximate
    assert 0 < fids[1] < fids[2]


def test_weights_are_checked_before_torch_fidelity_unpickles_them(tmp_path, inception_weights):
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps(print))  # a pickled callable: weights_only=True refuses it
    with pytest.raises(ValueError, match="weights_only"):
        check_inception_weights(evil)
    partial = tmp_path / "partial.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, partial)
    with pytest.raises(ValueError, match="keys missing"):
        check_inception_weights(partial)
    renamed = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    renamed.write_bytes(inception_weights.read_bytes())
    with pytest.raises(ValueError, match="SHA-256"):
        check_inception_weights(renamed)


def test_without_weights_offline_the_error_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(RuntimeError, match="inception_weights"):
        InceptionMetrics()
    with pytest.raises(FileNotFoundError, match="hub/checkpoints"):
        InceptionMetrics(weights_path=str(tmp_path / "missing.pth"))
