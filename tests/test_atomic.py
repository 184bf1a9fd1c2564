"""Results appear whole or not at all: files and folders built beside their destination, then renamed."""
import os

import pytest

from cosi_imaging_plugin._atomic import atomic_directory, atomic_path


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "a.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("first")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError
    assert target.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    with pytest.raises(FileExistsError):
        with atomic_path(target, overwrite=False):
            pass


def test_atomic_directory_replaces_a_folder_whole(tmp_path):
    target = tmp_path / "shards"
    with atomic_directory(target) as tmp:
        (tmp / "0.npy").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(target, overwrite=True) as tmp:
            (tmp / "0.npy").write_text("new")
            raise KeyboardInterrupt
    assert (target / "0.npy").read_text() == "old"
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "1.npy").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["1.npy"]
    assert [p.name for p in tmp_path.iterdir()] == ["shards"]  # no temporary or old folder left
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o777 & ~mask  # the usual permissions, not mkdtemp's owner-only
    with pytest.raises(FileExistsError):
        with atomic_directory(target):
            pass
