"""Files written whole or not at all."""

import numpy as np
import pytest

from perfusion.files import atomic_savez


def test_atomic_savez_writes_the_named_file_and_leaves_nothing_beside_it(tmp_path):
    path = tmp_path / "store.npz"
    atomic_savez(path, images=np.arange(6).reshape(2, 3), captions="[]")
    with np.load(path) as data:
        assert data["images"].tolist() == [[0, 1, 2], [3, 4, 5]] and str(data["captions"]) == "[]"
    assert [item.name for item in tmp_path.iterdir()] == ["store.npz"]


def test_atomic_savez_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "store.npz"
    atomic_savez(path, images=np.zeros(2))
    with pytest.raises(Exception, match="pickle"):
        atomic_savez(path, images=np.ones(2), broken=lambda: 0)  # a function cannot be stored
    with np.load(path) as data:
        assert data["images"].tolist() == [0.0, 0.0]
    assert [item.name for item in tmp_path.iterdir()] == ["store.npz"]
