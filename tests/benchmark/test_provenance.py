"""What keys and rows record about the code: reference-statistics keys, library versions and threads in row keys,
one commit helper, and no rows of uncommitted code in a committed suite folder."""

import importlib
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import data.sources as sources
from benchmark.evaluation.frechet import stats_code
from benchmark.evaluation.generate import to_uint8
from benchmark.evaluation.inception import InceptionMetrics
from benchmark.evaluation.protocol import EvalProtocol
from benchmark.leaderboard import results as res
from data.shapes import Shapes

ROOT = Path(__file__).resolve().parents[2]
ev = importlib.import_module("benchmark.evaluation.evaluate")  # the module (the package exports a function of its name)


@pytest.fixture
def source_copy(tmp_path, monkeypatch):
    """A copy of the project's packages that `data.sources` hashes instead of the checkout."""
    root = tmp_path / "src"
    for package in sources.PACKAGES:
        shutil.copytree(ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__", "weights"))
    monkeypatch.setattr(sources, "REPO_ROOT", root)
    return root


def test_reference_statistics_are_keyed_by_the_code_that_draws_and_extracts_them(source_copy):
    producers = (Shapes("val", 32, length=2), InceptionMetrics, to_uint8)
    key = stats_code(*producers)
    (source_copy / "baselines/dit.py").write_text("# a baseline draws no reference image\n")
    assert stats_code(*producers) == key
    for changed in ("data/shapes.py", "benchmark/evaluation/inception.py", "benchmark/evaluation/frechet.py"):
        path = source_copy / changed
        original = path.read_text()
        path.write_text(original + "\n# changed\n")
        assert stats_code(*producers)["source"] != key["source"], changed
        path.write_text(original)
    assert {"scipy", "torch-fidelity", "Pillow", "transformers"} <= set(key["versions"])


def test_cached_reference_statistics_name_their_code(monkeypatch):
    specs = []

    def cached(spec, compute, root=None):
        specs.append(spec)
        return (np.zeros(2), np.eye(2)), True

    class Extractor:
        def spec(self):
            return {"extractor": "fake"}

    monkeypatch.setattr(ev, "cached_stats", cached)
    protocol = EvalProtocol(reference="shapes:val", reference_samples=4)
    ev.reference_stats(protocol, 32, None, extractor=Extractor())
    (spec,) = specs
    assert spec["code"] == stats_code(Shapes("val", 32, length=4), Extractor(), to_uint8)


def test_row_keys_hold_the_libraries_that_move_numbers_and_the_thread_count(monkeypatch):
    assert {"transformers", "numpy", "scipy", "Pillow", "torch-fidelity", "torch", "lightning", "diffusers"} <= set(
        res.library_versions()
    )
    fingerprint = {"model": {"class_path": "baselines.dit.DiTModule"}}
    base = res.row_key(fingerprint, 0, None, {}, threads=2)
    assert res.row_key(fingerprint, 0, None, {}, threads=1) != base
    assert res.row_key(fingerprint, 0, None, {}) == res.row_key(
        fingerprint, 0, None, {}, threads=torch.get_num_threads()
    )
    versions = dict(res.library_versions(), transformers="0.0.1")
    monkeypatch.setattr(res, "library_versions", lambda: versions)
    assert res.row_key(fingerprint, 0, None, {}, threads=2) != base


def test_one_commit_helper_and_it_names_a_commit_that_exists():
    defined = [
        path.relative_to(ROOT).as_posix()
        for package in sources.PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if "def git_commit(" in path.read_text()
    ]
    assert defined == ["data/sources.py"]
    commit = sources.git_commit()
    assert commit and not commit.endswith("-dirty")
    subprocess.run(["git", "cat-file", "-e", commit], cwd=ROOT, check=True)


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_rows_of_uncommitted_code_never_go_into_a_committed_suite_folder(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "suite").mkdir(parents=True)
    (repo / "code.py").write_text("A = 1\n")
    (repo / "other.py").write_text("B = 1\n")
    (repo / "suite/results.jsonl").write_text("")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "x")
    monkeypatch.setattr(sources, "REPO_ROOT", repo)
    files = [repo / "code.py"]
    res.check_clean_for(repo / "suite", files)  # clean
    assert sources.diff_hash(files) is None
    (repo / "other.py").write_text("B = 2\n")  # a change outside the rows' keys: their code is still the commit's
    res.check_clean_for(repo / "suite", files)
    (repo / "code.py").write_text("A = 2\n")
    with pytest.raises(ValueError, match=r"suite is committed, and files in these rows' keys differ.*code\.py"):
        res.check_clean_for(repo / "suite", files)
    res.check_clean_for(tmp_path / "elsewhere", files)  # --output outside git: written, with the diff's hash
    first = sources.diff_hash(files)
    (repo / "code.py").write_text("A = 3\n")
    assert first and sources.diff_hash(files) not in (None, first)
    (repo / "new.py").write_text("C = 1\n")  # a file in the key that was never committed counts too
    assert sources.dirty_files([repo / "new.py"]) == ["new.py"]
