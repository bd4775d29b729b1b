"""FID, Inception score and precision / recall with torch-fidelity's Inception (``inception-v3-compat``).

torch-fidelity's ``inception-v3-compat`` is the TensorFlow FID Inception (``inception-2015-12-05``) ported to PyTorch
with TF1's bilinear resize to 299 pixels; its ``2048`` feature is TF's ``pool_3``, so FID computed from it against
ADM's reference ``mu`` / ``sigma`` matches the ADM evaluator's tables closely. Features are extracted here, through
torch-fidelity's own extractor class, and the Fréchet distance is `benchmark.evaluation.frechet.frechet_distance`.

**Weights.** Where the machine can reach GitHub, torch-fidelity downloads them once into the torch hub cache
(``$TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth``, about 96 MB). Offline clusters copy that
file over and pass it as ``weights_path`` (``EvalProtocol.inception_weights``), or place it in the hub cache. Before
torch-fidelity unpickles the file (it uses ``torch.load(weights_only=False)``), it is opened here with
``weights_only=True``, which refuses pickled code, and its keys are checked against the network; a file whose name
carries a hash prefix (``...-6726825d.pth``, torch hub's convention) must also match that SHA-256 prefix. Without
weights and without network access the metric raises an error saying how to provide them; it never falls back to
random weights.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from benchmark.evaluation.metrics import MetricUnavailable

__all__ = ["INCEPTION_FILE", "InceptionMetrics", "check_inception_weights", "resolve_inception_weights"]

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
HOW_TO = (
    f"FID needs torch-fidelity's Inception weights {INCEPTION_FILE} (96 MB): put them in "
    "$TORCH_HOME/hub/checkpoints/ or pass inception_weights: PATH in the protocol, or use feature_extractor: "
    "data-classifier (an evaluator trained on your data, offline; docs/evaluation.md)"
)
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")


def _offline() -> bool:
    return any(os.environ.get(k, "0") not in ("", "0", "false") for k in ("HF_HUB_OFFLINE", "LDMBENCH_OFFLINE"))


def check_inception_weights(path: str | os.PathLike) -> None:
    """Open ``path`` safely and check it is the state dict of torch-fidelity's Inception (raises otherwise).

    Args:
        path: A ``.pth`` state dict.
    """
    path = Path(path)
    match = _HASH_IN_NAME.search(path.name)
    if match:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if not digest.startswith(match.group(1)):
            raise ValueError(f"{path}: SHA-256 {digest[:16]}... does not match the {match.group(1)} in its name")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (any failure means the file is not a plain state dict)
        raise ValueError(f"{path} is not a plain tensor state dict (refused by weights_only=True): {e}") from e
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    expected = _expected_keys()
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ValueError(
            f"{path} is not torch-fidelity's Inception state dict: {len(missing)} keys missing "
            f"(e.g. {sorted(missing)[:3]}), {len(unexpected)} unexpected (e.g. {sorted(unexpected)[:3]})"
        )


def _expected_keys() -> set[str]:
    """The state-dict keys of ``FeatureExtractorInceptionV3``, built on the meta device without any weights."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with torch.device("meta"):
        module = FeatureExtractorInceptionV3.__new__(FeatureExtractorInceptionV3)
        try:
            FeatureExtractorInceptionV3.__init__(
                module, "inception-v3-compat", ["2048"], feature_extractor_weights_path=_NoLoad
            )
        except _Built:
            pass
    return set(module.state_dict())


class _Built(Exception):
    """Raised by `_NoLoad` to stop the constructor right after the layers are built."""


class _NoLoadType:
    def __fspath__(self) -> str:
        raise _Built


_NoLoad = _NoLoadType()


def resolve_inception_weights(weights_path: str | None) -> str | None:
    """The checked weights file to use, or None to let torch-fidelity download it (raises offline without one)."""
    if weights_path:
        if not Path(weights_path).is_file():
            raise FileNotFoundError(f"Inception weights {weights_path} do not exist. {HOW_TO}")
        check_inception_weights(weights_path)
        return str(weights_path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if cached.is_file():
        check_inception_weights(cached)
        return str(cached)
    if _offline():
        raise MetricUnavailable(f"no Inception weights and the machine is offline (HF_HUB_OFFLINE). {HOW_TO}")
    return None


class InceptionMetrics:
    """torch-fidelity's Inception on the CPU or a GPU, with FID / IS / precision-recall from its features.

    Args:
        weights_path: torch-fidelity's Inception state dict; None uses the hub cache or downloads it.
        device: Where the network runs.
    """

    def __init__(self, weights_path: str | None = None, device: torch.device | str = "cpu") -> None:
        from torch_fidelity.utils import create_feature_extractor

        self.weights_path = resolve_inception_weights(weights_path)
        self.device = torch.device(device)
        try:
            self.extractor = create_feature_extractor(
                "inception-v3-compat",
                ["2048", "logits_unbiased"],
                cuda=False,
                feature_extractor_weights_path=self.weights_path,
                verbose=False,
            ).to(self.device)
        except (OSError, RuntimeError) as e:  # URLError is an OSError: no network
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise MetricUnavailable(f"the Inception weights could not be downloaded ({reason}). {HOW_TO}") from None
        self._weights_id = (
            hashlib.sha256(Path(self.weights_path).read_bytes()).hexdigest()[:16] if self.weights_path else "6726825d"
        )

    def spec(self) -> dict[str, Any]:
        """What the features depend on (recorded with cached reference statistics)."""
        return {"extractor": "inception-v3-compat", "layer": "2048", "weights_sha256": self._weights_id}

    @torch.no_grad()
    def outputs(self, images: Tensor, batch_size: int = 64) -> dict[str, Tensor]:
        """``2048`` pool features and ``logits_unbiased`` of uint8 (N, 3, H, W) images (any size: resized to 299)."""
        if images.dtype != torch.uint8:
            raise TypeError(f"Inception reads uint8 images in [0, 255], got {images.dtype}")
        pool, logits = [], []
        for lo in range(0, images.shape[0], batch_size):
            f, lg = self.extractor(images[lo : lo + batch_size].to(self.device))
            pool.append(f.double().cpu())
            logits.append(lg.double().cpu())
        return {"2048": torch.cat(pool), "logits_unbiased": torch.cat(logits)}

    def features(self, images: Tensor) -> Tensor:
        """(N, 2048) pool features."""
        return self.outputs(images)["2048"]

    def metrics(
        self,
        generated: Any,
        reference: tuple[np.ndarray, np.ndarray],
        protocol: Any,
        real: Tensor | None = None,
        *,
        real_features: Tensor | None = None,
    ) -> dict[str, float]:
        """``fid`` and, as the protocol asks, ``inception_score`` and ``precision`` / ``recall``, each with ``_sd``.

        Precision / recall need the real images (``real``) or their pool features (``real_features``); asked for
        without either, they raise instead of being left out.
        """
        from benchmark.evaluation import metrics as M

        out = self.outputs(generated.images)
        reps = {"bootstrap_reps": int(getattr(protocol, "bootstrap_reps", 200))}
        labels = None if generated.labels is None else generated.labels.cpu().reshape(-1)
        updates: list[tuple[M.FeatureMetric, Any, Any]] = [
            (M.FrechetDistance(reference, name="fid", **reps), out["2048"], labels)
        ]
        if getattr(protocol, "precision_recall", False):
            if real_features is None and real is None:
                raise ValueError(
                    "precision / recall need the real images: the protocol's reference gives statistics only "
                    "(use reference: data:<split> or an ADM .npz holding arr_0 images)"
                )
            if real_features is None:
                real_features = self.features(real)
            updates.append((M.PrecisionRecall(real_features.double(), **reps), out["2048"], None))
        if getattr(protocol, "inception_score", False):
            updates.append((M.InceptionScore(**reps), out["logits_unbiased"], None))
        return M.measure_all(updates)
