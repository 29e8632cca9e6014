"""Every input and output is a URI read and written through fsspec.

Writes are atomic per object: a local file is written under a temporary name in the same
folder and renamed; object stores (s3://) receive one PUT, which is atomic by itself.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import fsspec


def filesystem(uri: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of ``uri`` and the path within it."""
    fs, path = fsspec.core.url_to_fs(str(uri))
    return fs, path


def is_local(uri: str | os.PathLike) -> bool:
    """True when ``uri`` is a plain path or a ``file://`` URI."""
    fs, _ = filesystem(uri)
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def absolute(uri: str | os.PathLike, base: str | os.PathLike | None = None) -> str:
    """``uri`` with a local path made absolute (against ``base``, default the working directory;
    ``file://`` dropped); URIs of other filesystems unchanged."""
    uri = str(uri)
    if not is_local(uri):
        return uri
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    return os.path.abspath(os.path.join(os.fspath(base), path) if base is not None else path)


def read_bytes(uri: str | os.PathLike) -> bytes:
    """Read a whole object.

    Raises:
        FileNotFoundError: when ``uri`` does not exist.
    """
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def read_bytes_at_most(uri: str | os.PathLike, limit: int) -> bytes:
    """The first ``limit`` bytes of an object (all of it when smaller): a caller that refuses
    anything over N bytes reads N + 1 and never holds a larger file (or an endless one).

    Raises:
        FileNotFoundError: when ``uri`` does not exist.
    """
    if limit < 0:
        raise ValueError(f"`limit` must be at least 0 bytes, got {limit}.")
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return f.read(limit)


def file_mode() -> int:
    """The mode a new file gets under this process's umask (0o666 & ~umask): temporary files are
    created 0600 and take it before they are published."""
    with open("/proc/self/status") as status:  # read, not set: os.umask() would race other threads
        for line in status:
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    raise RuntimeError("/proc/self/status has no Umask line (Linux 4.7 or later is needed).")


def write_bytes(uri: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` to ``uri`` atomically and return the URI written."""
    uri = str(uri)
    fs, path = filesystem(uri)
    if is_local(uri):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, file_mode())
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return uri
    # Object stores: one PUT is atomic; no rename exists there.
    with fs.open(path, "wb") as f:
        f.write(data)
    return uri


def exists(uri: str | os.PathLike) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def join(base: str, *parts: str) -> str:
    """Join URI parts with ``/`` (works for local paths and object-store prefixes)."""
    out = str(base).rstrip("/")
    for part in parts:
        out += "/" + str(part).strip("/")
    return out


def _version(fs, path: str) -> str:
    """What identifies the current content of an object or folder: each file's ETag (or
    modification time) and size, so changed files at the same URI are a different version."""
    entries = fs.find(path, detail=True) if fs.isdir(path) else {path: fs.info(path)}
    stamp = sorted((name, str(info.get("ETag") or info.get("etag") or info.get("LastModified") or info.get("mtime") or info.get("created")), info.get("size")) for name, info in entries.items())
    return hashlib.sha256(repr(stamp).encode()).hexdigest()[:16]


def cache_locally(uri: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return a local path for ``uri``: the path itself when local, else a copy in a node-local
    cache, keyed by the URI and its content's version (ETags or modification times and sizes):
    changed weights at the same URI are fetched again. Concurrent fetches of one version (threads
    or processes) each download to a temporary name; the first to finish publishes, the others
    drop theirs."""
    if is_local(uri):
        _, path = filesystem(uri)
        return Path(path)
    cache_root = Path(cache_dir or os.environ.get("AVATAR_CACHE_DIR", Path.home() / ".cache" / "avatar-forge"))
    fs, path = filesystem(uri)
    key = hashlib.sha256(uri.encode()).hexdigest()[:16] + "-" + _version(fs, path)
    target = cache_root / "downloads" / key / Path(uri.rstrip("/")).name
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if fs.isdir(path):
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".fetch-"))
        fs.get(path.rstrip("/") + "/", str(tmp), recursive=True)
    else:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=".fetch-")
        os.close(fd)
        tmp = Path(name)
        fs.get(path, str(tmp))
        os.chmod(tmp, file_mode())
    try:
        os.rename(tmp, target)  # a folder onto an existing one fails instead of merging
    except OSError:
        if not target.exists():
            raise
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()  # another fetch published it first
    return target
