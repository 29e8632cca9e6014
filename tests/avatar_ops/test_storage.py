"""Storage: files published with the mode the umask gives, and the node-local cache of remote
folders safe under concurrent fetches and refreshed when the content at a URI changes."""

from __future__ import annotations

import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor

import fsspec
import pytest

from avatar_ops.io import storage


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_outputs_respect_the_umask(tmp_path, umask_027):
    from jobs.manifest import ManifestWriter

    storage.write_bytes(str(tmp_path / "a" / "file.json"), b"{}")
    with ManifestWriter(str(tmp_path / "manifest.parquet")):
        pass
    for path in (tmp_path / "a" / "file.json", tmp_path / "manifest.parquet"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path  # 0666 & ~027, not mkstemp's 0600


def test_the_cache_survives_concurrent_fetches_and_refetches_changed_content(tmp_path, monkeypatch):
    memory = fsspec.filesystem("memory")
    memory.pipe({"/weights/model/config.json": b'{"v": 1}', "/weights/model/unet.bin": b"\1" * 1000})
    # Every fetch downloads before any publishes: the race that made a second rename of a folder
    # fail with "Directory not empty". The downloads themselves take turns: fsspec's memory
    # filesystem hands every reader one shared file object (object stores do not).
    barrier = threading.Barrier(4, timeout=30)
    turns = threading.Lock()
    get = type(memory).get

    def synchronised_get(self, *args, **kwargs):
        with turns:
            out = get(self, *args, **kwargs)
        barrier.wait()
        return out

    monkeypatch.setattr(type(memory), "get", synchronised_get)
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: storage.cache_locally("memory://weights/model", tmp_path), range(4)))
    assert len(set(paths)) == 1 and (paths[0] / "config.json").read_bytes() == b'{"v": 1}'
    leftovers = [p.name for p in paths[0].parent.iterdir() if p != paths[0]]
    assert leftovers == []  # the losers' downloads are gone
    monkeypatch.setattr(type(memory), "get", get)
    memory.pipe("/weights/model/config.json", b'{"v": 22}')  # new weights at the same URI
    fresh = storage.cache_locally("memory://weights/model", tmp_path)
    assert fresh != paths[0] and (fresh / "config.json").read_bytes() == b'{"v": 22}'
    assert storage.cache_locally("memory://weights/model", tmp_path) == fresh  # and cached again
