"""A missing data root explains how to set TIEDLAB_DATA and what layout it expects."""

import pytest

from tiedlab.paradigms.paths import DataNotFoundError, cache_dir, data_path, data_root


def test_unset_data_root_explains_the_variable_and_layout(monkeypatch):
    monkeypatch.delenv("TIEDLAB_DATA", raising=False)
    with pytest.raises(DataNotFoundError, match=r"(?s)\$TIEDLAB_DATA is not set.*export TIEDLAB_DATA=.*cifar10-jpeg"):
        data_root()


def test_data_root_that_is_not_a_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("TIEDLAB_DATA", str(tmp_path / "nope"))
    with pytest.raises(DataNotFoundError, match="is not a directory"):
        data_root()


def test_missing_file_names_the_path_and_root(monkeypatch, tmp_path):
    monkeypatch.setenv("TIEDLAB_DATA", str(tmp_path))
    with pytest.raises(DataNotFoundError, match=rf"missing {tmp_path}/mnist/mnist.npz \(data root"):
        data_path("mnist", "mnist.npz")


def test_cache_dir_is_created_under_tiedlab_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TIEDLAB_CACHE", str(tmp_path / "c"))
    path = cache_dir("vision", "x")
    assert path.is_dir() and path == tmp_path / "c" / "vision" / "x"
