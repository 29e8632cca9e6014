"""Every input and output is a URI read and written through fsspec.

Writes are atomic per object: a local file is written under a temporary name in the same
folder and renamed; object stores (s3://) receive one PUT, which is atomic by itself.
"""

from __future__ import annotations

import hashlib
import os
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


def cache_locally(uri: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return a local path for ``uri``: the path itself when local, else a copy in a node-local
    cache (downloaded once, keyed by the URI)."""
    if is_local(uri):
        _, path = filesystem(uri)
        return Path(path)
    cache_root = Path(cache_dir or os.environ.get("AVATAR_CACHE_DIR", Path.home() / ".cache" / "avatar-forge"))
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    target = cache_root / "downloads" / key / Path(uri.rstrip("/")).name
    if target.exists():
        return target
    fs, path = filesystem(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    if fs.isdir(path):
        tmp = Path(tempfile.mkdtemp(dir=target.parent))
        fs.get(path.rstrip("/") + "/", str(tmp), recursive=True)
        os.replace(tmp, target)
    else:
        fd, tmp = tempfile.mkstemp(dir=target.parent)
        os.close(fd)
        fs.get(path, tmp)
        os.replace(tmp, target)
    return target
