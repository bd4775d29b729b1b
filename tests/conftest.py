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

# Under pytest-xdist every worker would start torch with one thread per core: with `-n 2` on 2 cores that is 4 busy
# threads (more while a test spawns its own processes), and oversubscribed OpenMP threads spin against each other
# (a test of 10 s alone took 86 s). Each worker gets its share of the cores; child processes inherit it.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    _threads = str(max(1, (os.cpu_count() or 1) // _workers))
    os.environ.setdefault("OMP_NUM_THREADS", _threads)
    os.environ.setdefault("MKL_NUM_THREADS", _threads)

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_torch_state():
    """Tests may change the default dtype or seed; give every test the same starting state."""
    dtype = torch.get_default_dtype()
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(dtype)


@pytest.fixture(scope="session")
def tiny_vae(tmp_path_factory):
    """A tiny random diffusers AutoencoderKL saved to a folder (f=8, 4 latent channels): offline stand-in for a VAE."""
    from diffusers import AutoencoderKL

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
