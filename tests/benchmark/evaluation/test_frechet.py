"""Fréchet distance: agreement with torch-fidelity and scipy, cached reference statistics, ADM reference batches."""

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

from benchmark.evaluation.frechet import (
    cached_stats,
    frechet_distance,
    frechet_distance_of_features,
    load_npz_stats,
    stats_from_features,
)


def _scipy_fd(a: np.ndarray, b: np.ndarray) -> float:
    """Textbook Fréchet distance, written independently: symmetric form tr(S1 + S2 - 2 (S1^½ S2 S1^½)^½)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root1 = scipy.linalg.sqrtm(s1).real
    cross = scipy.linalg.sqrtm(root1 @ s2 @ root1).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(cross))


def test_fd_matches_torch_fidelity_and_scipy_on_the_same_features():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 24))
    b = rng.normal(size=(300, 24)) @ rng.normal(scale=0.4, size=(24, 24)) + 0.3
    ours = frechet_distance(*stats_from_features(a), *stats_from_features(b))
    fa = fid_features_to_statistics(torch.from_numpy(a))
    fb = fid_features_to_statistics(torch.from_numpy(b))
    theirs = fid_statistics_to_metric(fa, fb, verbose=False)["frechet_inception_distance"]
    direct = _scipy_fd(a, b)
    assert ours > 1.0
    assert ours == pytest.approx(theirs, rel=1e-6)
    assert ours == pytest.approx(direct, rel=1e-6)
    assert frechet_distance(*stats_from_features(a), *stats_from_features(a)) == pytest.approx(0, abs=1e-8)
    # The SVD form for few samples of wide features agrees, with more dims than samples too.
    assert frechet_distance_of_features(a, b) == pytest.approx(ours, rel=1e-6)
    narrow, wide = a[:10], b[:12]
    assert frechet_distance_of_features(narrow, wide) == pytest.approx(_scipy_fd(narrow, wide), rel=1e-6)


def test_cached_stats_are_reused_and_recomputed_when_the_protocol_changes(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        x = np.random.default_rng(len(calls)).normal(size=(50, 4))
        return stats_from_features(x)

    spec = {"dataset": "shapes", "split": "train", "resolution": 32, "extractor": "x", "count": 50}
    (mu1, _), hit1 = cached_stats(spec, compute, root=tmp_path)
    (mu2, _), hit2 = cached_stats(spec, compute, root=tmp_path)
    assert (hit1, hit2) == (False, True) and len(calls) == 1
    np.testing.assert_array_equal(mu1, mu2)
    sidecar = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert sidecar["spec"] == spec
    _, hit3 = cached_stats({**spec, "count": 60}, compute, root=tmp_path)
    assert not hit3 and len(calls) == 2
    # A sidecar that no longer states the requested protocol (edited, or another version) is not trusted.
    stem = next(p for p in tmp_path.glob("*.json") if json.loads(p.read_text())["spec"] == spec)
    stem.write_text(json.dumps({"spec": {**spec, "resolution": 64}}))
    _, hit4 = cached_stats(spec, compute, root=tmp_path)
    assert not hit4 and len(calls) == 3


def test_adm_reference_batch_loads(tmp_path):
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(40, 8))
    mu, sigma = feats.mean(0), np.cov(feats, rowvar=False)
    path = tmp_path / "VIRTUAL_tiny.npz"
    np.savez(path, arr_0=np.zeros((4, 8, 8, 3), np.uint8), mu=mu, sigma=sigma, mu_s=mu[:2], sigma_s=sigma[:2, :2])
    got_mu, got_sigma = load_npz_stats(path)
    assert got_mu.dtype == np.float64 and got_sigma.shape == (8, 8)
    np.testing.assert_allclose(got_mu, mu)
    assert frechet_distance(got_mu, got_sigma, *stats_from_features(feats)) == pytest.approx(0, abs=1e-8)
    np.savez(tmp_path / "images_only.npz", arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    with pytest.raises(KeyError, match="mu"):
        load_npz_stats(tmp_path / "images_only.npz")
