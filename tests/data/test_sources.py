"""What `data.sources.source_hash` reads: project code and a user's own modules, never an installed library's."""

import sys

from data.sources import REPO_ROOT, source_files, source_hash


def test_installed_libraries_do_not_count():
    # Their bytes differ between installs of one version (a CUDA and a CPU torch wheel), so sizes.json idents and
    # cache keys made on one machine would not match on the CI's.
    assert source_files(["torch.optim", "lightning.pytorch.callbacks", "json"]) == []
    assert source_hash(["torch.optim"]) == source_hash([])


def test_a_users_module_counts_by_its_own_file(tmp_path, monkeypatch):
    mod = tmp_path / "my_folder_data.py"
    mod.write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_folder_data", None)
    assert source_files(["my_folder_data"]) == [mod.resolve()]
    before = source_hash(["my_folder_data"])
    mod.write_text("X = 2\n")
    assert source_hash(["my_folder_data"]) != before


def test_project_modules_count_with_what_they_import():
    files = source_files(["data.shapes"])
    assert REPO_ROOT / "data" / "shapes.py" in files
    assert all(f.is_relative_to(REPO_ROOT) for f in files)
