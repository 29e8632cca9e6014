"""Bounded reading of ``.npz`` uploads.

``numpy.load`` trusts an archive: it decompresses a member whatever its size and allocates the
array its ``.npy`` header asks for before reading a byte of data. Here the zip directory is checked
first (member count, each member's and the total uncompressed size, compression method), then
the header of each array the caller names (version, dtype, shape) without touching array data,
and only then are the named arrays read, in bounded chunks. Members nobody asks for are never
decompressed. Every refusal is a ``ValueError`` naming the upload, the limit and what was found.
"""

from __future__ import annotations

import dataclasses
import io
import math
import struct
import tokenize
import zipfile
import zlib
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np
from numpy.lib import format as npy_format

#: Largest archive accepted, compressed (the upload, or the file on disk).
MAX_ARCHIVE_BYTES = 64 * 2**20
#: Most members in the zip directory (AMASS files hold about 16 arrays).
MAX_MEMBERS = 64
#: Largest uncompressed member, as the zip directory states it (a 10,000-frame float64 ``poses``
#: of 64 joints is 15.4 MB).
MAX_MEMBER_BYTES = 32 * 2**20
#: Largest sum of all members' uncompressed sizes, read or not.
MAX_TOTAL_BYTES = 128 * 2**20
#: Largest ``.npy`` header (numpy's own default for untrusted files).
MAX_HEADER_BYTES = 10_000

_NPY_MAGIC = b"\x93NUMPY"
_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # what numpy.savez writes
_CHUNK = 2**20
# What zipfile, zlib and numpy's header parser raise on damaged or hostile input (numpy retries an
# unparsable header through the tokenize module, which raises its own TokenError).
_ARCHIVE_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, struct.error, NotImplementedError)
_HEADER_ERRORS = (ValueError, TypeError, SyntaxError, RecursionError, OverflowError, tokenize.TokenError)


@dataclasses.dataclass(frozen=True)
class NpzLimits:
    """Limits on an ``.npz`` archive; the defaults are this module's constants."""

    archive_bytes: int = MAX_ARCHIVE_BYTES
    members: int = MAX_MEMBERS
    member_bytes: int = MAX_MEMBER_BYTES
    total_bytes: int = MAX_TOTAL_BYTES


@dataclasses.dataclass(frozen=True)
class ArrayHeader:
    """One member's ``.npy`` header: what reading it would allocate."""

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    data_offset: int  # bytes of magic and header before the data

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class _Capped(io.RawIOBase):
    """A read-only view of ``stream`` that yields at most ``limit`` bytes, at most ``_CHUNK`` per
    read: zipfile decompresses as much as one read asks for, so asking little bounds memory."""

    def __init__(self, stream: io.BufferedIOBase, limit: int) -> None:
        super().__init__()
        self._stream = stream
        self._left = limit

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = self._left if size is None or size < 0 else min(size, self._left)
        data = self._stream.read(min(size, _CHUNK)) if size > 0 else b""
        self._left -= len(data)
        return data


class BoundedNpz:
    """An ``.npz`` archive whose zip directory passed ``limits``; read headers, then arrays.

    Args:
        source: the archive's bytes (an upload) or a local path.
        name: the argument's name, used in every error message (``motion``).
        limits: the limits to enforce; None: this module's constants.

    Raises:
        ValueError: the source is not a zip archive (a bare ``.npy`` included), is damaged, or
            exceeds a limit.

    Example:
        >>> with BoundedNpz(data, "motion") as npz:
        ...     header = npz.header("poses")  # reads only the header
        ...     poses = npz.read(header)
    """

    def __init__(self, source: bytes | Path, name: str, limits: NpzLimits | None = None) -> None:
        self.name = name
        self.limits = limits = limits or NpzLimits()
        if isinstance(source, bytes):
            size, head = len(source), source[: len(_NPY_MAGIC)]
        else:
            if not source.is_file():
                raise ValueError(f"`{name}` must be a regular .npz file, got {str(source)!r}.")
            size = source.stat().st_size
            with source.open("rb") as probe:
                head = probe.read(len(_NPY_MAGIC))
        if size > limits.archive_bytes:
            raise ValueError(f"`{name}` must be at most {limits.archive_bytes} bytes, got {size}.")
        if head == _NPY_MAGIC:
            raise ValueError(f"`{name}` is a bare .npy array; expected an .npz archive (numpy.savez) of named arrays.")
        self._handle = io.BytesIO(source) if isinstance(source, bytes) else source.open("rb")
        try:
            self._zip = zipfile.ZipFile(self._handle)
        except _ARCHIVE_ERRORS as err:
            self._handle.close()
            raise ValueError(f"`{name}` is not a readable .npz (zip) archive: {err}") from err
        try:
            self._members = self._check_directory()
        except ValueError:
            self.close()
            raise

    def _check_directory(self) -> dict[str, zipfile.ZipInfo]:
        """Key -> member, after the directory's counts, sizes and methods passed the limits."""
        infos, limits, name = self._zip.infolist(), self.limits, self.name
        if len(infos) > limits.members:
            raise ValueError(f"`{name}` must hold at most {limits.members} arrays, got {len(infos)} members.")
        members: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            if info.file_size > limits.member_bytes:
                raise ValueError(
                    f"`{name}` member {info.filename!r} must be at most {limits.member_bytes} bytes uncompressed, got {info.file_size}."
                )
            if info.compress_type not in _METHODS:
                raise ValueError(f"`{name}` member {info.filename!r} must be stored or deflated, got zip method {info.compress_type}.")
            if info.flag_bits & 0x1:
                raise ValueError(f"`{name}` member {info.filename!r} is encrypted.")
            key = info.filename.removesuffix(".npy")
            if key in members:
                raise ValueError(f"`{name}` holds the array {key!r} twice.")
            members[key] = info
        total = sum(info.file_size for info in infos)
        if total > limits.total_bytes:
            raise ValueError(f"`{name}` must be at most {limits.total_bytes} bytes uncompressed in all, got {total}.")
        return members

    @property
    def keys(self) -> list[str]:
        return sorted(self._members)

    def __contains__(self, key: str) -> bool:
        return key in self._members

    def header(self, key: str) -> ArrayHeader:
        """The ``.npy`` header of ``key``, read without its data; object arrays are refused."""
        info = self._members[key]
        try:
            with self._zip.open(info) as member:
                stream = _Capped(member, min(info.file_size, len(_NPY_MAGIC) + 2 + 4 + MAX_HEADER_BYTES))
                version = npy_format.read_magic(stream)
                if version == (1, 0):
                    shape, fortran_order, dtype = npy_format.read_array_header_1_0(stream, max_header_size=MAX_HEADER_BYTES)
                elif version == (2, 0):
                    shape, fortran_order, dtype = npy_format.read_array_header_2_0(stream, max_header_size=MAX_HEADER_BYTES)
                else:
                    raise ValueError(f"npy format version must be 1.0 or 2.0, got {version[0]}.{version[1]}")
                offset = member.tell()
        except _ARCHIVE_ERRORS + _HEADER_ERRORS as err:
            raise ValueError(f"`{self.name}` array {key!r} has no readable .npy header: {err}") from err
        if dtype.hasobject or dtype.itemsize == 0:
            raise ValueError(f"`{self.name}` array {key!r} must hold plain values (pickled objects are refused), got dtype {dtype}.")
        if any(n < 0 for n in shape):
            raise ValueError(f"`{self.name}` array {key!r} has a negative dimension: {list(shape)}.")
        return ArrayHeader(key, tuple(shape), dtype, fortran_order, offset)

    def read(self, header: ArrayHeader) -> np.ndarray:
        """The array ``header`` describes; its size must match the zip directory's, and the
        member's CRC is checked."""
        info = self._members[header.key]
        if header.data_offset + header.nbytes != info.file_size:
            raise ValueError(
                f"`{self.name}` array {header.key!r}: its header ({list(header.shape)} {header.dtype}) needs "
                f"{header.data_offset + header.nbytes} bytes, the zip directory says {info.file_size}."
            )
        data = np.empty(header.nbytes, np.uint8)
        try:
            with self._zip.open(info) as member:
                stream = _Capped(member, info.file_size)
                if len(stream.read(header.data_offset)) != header.data_offset:
                    raise ValueError("the header ends early")
                done = 0
                while done < header.nbytes:  # the last chunk ends the member: zipfile then checks its CRC
                    chunk = stream.read(header.nbytes - done)
                    if not chunk:
                        raise ValueError(f"the data ends after {done} of {header.nbytes} bytes")
                    data[done : done + len(chunk)] = np.frombuffer(chunk, np.uint8)
                    done += len(chunk)
        except _ARCHIVE_ERRORS as err:
            raise ValueError(f"`{self.name}` array {header.key!r} is damaged: {err}") from err
        array = data.view(header.dtype)
        if header.fortran_order:  # stored column-major: as numpy.lib.format.read_array does
            return array.reshape(header.shape[::-1]).transpose()
        return array.reshape(header.shape)

    def close(self) -> None:
        self._zip.close()
        self._handle.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
