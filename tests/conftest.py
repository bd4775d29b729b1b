"""Hermetic test environment: no network, no hub downloads, caches in a temporary folder."""

import os
import tempfile

_cache = tempfile.mkdtemp(prefix="ldmbench-test-cache-")
for key, value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HOME": os.path.join(_cache, "hf"),
    "TORCH_HOME": os.path.join(_cache, "torch"),
    # Latent caches and reference statistics: never under the checkout's runs/ or the user's ~/.cache.
    "LDMBENCH_CACHE": os.path.join(_cache, "ldmbench"),
    "WANDB_MODE": "disabled",
    "WANDB_SILENT": "true",
    "JSONARGPARSE_DEPRECATION_WARNINGS": "off",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ[key] = value

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_torch_state():
    """Tests may change the default dtype or seed; give every test the same starting state."""
    dtype = torch.get_default_dtype()
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(dtype)
