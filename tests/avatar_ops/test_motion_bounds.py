"""Motion uploads are bounded before loading: the zip directory and the .npy headers are checked
first, unused keys are never decompressed, malformed fields are ValueErrors, and a seeded fuzz of
mutated clips and hostile files never gets another exception, nor much time or memory."""

from __future__ import annotations

import io
import json
import math
import random
import re
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib import format as npy_format

from avatar_ops.motion import CLIPS_DIR, Motion, load_motion

REPO = Path(__file__).resolve().parents[2]
WALK = (CLIPS_DIR / "walk.npz").read_bytes()
WAVE = (CLIPS_DIR / "wave.npz").read_bytes()
BOMB_BYTES = 2**30  # the unused key's uncompressed size
BOMB_FRAMES = 3_300_000
MAX_FRAMES = 10_000  # avatar_ops.motion.MAX_FRAMES


# ---- building hostile archives ---------------------------------------------------------------
def _npz(compressed: bool = True, **arrays) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def _npy_header(shape: tuple[int, ...], dtype: str, fortran_order: bool = False) -> bytes:
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"shape": shape, "fortran_order": fortran_order, "descr": dtype})  # magic included
    return buf.getvalue()


def _deflated(data: bytes) -> tuple[bytes, int, int]:
    """(raw deflate, CRC-32, uncompressed size) of ``data``."""
    co = zlib.compressobj(6, zlib.DEFLATED, -15)
    return co.compress(data) + co.flush(), zlib.crc32(data), len(data)


def _deflated_zeros(header: bytes, zeros: int, chunk: int) -> tuple[bytes, int, int]:
    """``header`` then ``zeros`` zero bytes, deflated (~1000x) without compressing them all: after
    a full flush the compressor forgets its history, so every chunk of zeros deflates to the same
    bytes, and one block stands for all."""
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = co.compress(header) + co.flush(zlib.Z_FULL_FLUSH)
    block = co.compress(bytes(chunk)) + co.flush(zlib.Z_FULL_FLUSH)
    count, rest = divmod(zeros, chunk)
    tail = co.compress(bytes(rest)) + co.flush()
    crc, zero_chunk = zlib.crc32(header), bytes(chunk)
    for _ in range(count):
        crc = zlib.crc32(zero_chunk, crc)
    return head + block * count + tail, zlib.crc32(bytes(rest), crc), len(header) + zeros


def _zip(members: list[tuple[str, tuple[bytes, int, int]]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip archive of (name, (data as stored, CRC-32, uncompressed size)) members; the sizes are
    written as given, so a test can make the directory claim anything."""
    out, central = io.BytesIO(), b""
    for name, (data, crc, size) in members:
        offset = out.tell()
        fields = struct.pack("<HHHHHIII", 20, 0, method, 0, 0x21, crc, len(data), size)
        out.write(b"PK\x03\x04" + fields + struct.pack("<HH", len(name), 0) + name.encode() + data)
        central += (
            b"PK\x01\x02" + struct.pack("<H", 20) + fields + struct.pack("<HHHHHII", len(name), 0, 0, 0, 0, 0, offset) + name.encode()
        )
    start = out.tell()
    out.write(central + b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, len(members), len(members), len(central), start, 0))
    return out.getvalue()


def _clip_members(clip: bytes) -> list[tuple[str, tuple[bytes, int, int]]]:
    with zipfile.ZipFile(io.BytesIO(clip)) as archive:
        return [(info.filename, _deflated(archive.read(info))) for info in archive.infolist()]


def _expanding_bomb() -> bytes:
    """The walk clip plus an unused key ``junk`` whose ~1 MB expands to 1 GiB of zeros."""
    junk = _deflated_zeros(_npy_header((BOMB_BYTES,), "|u1"), BOMB_BYTES, 2**20)
    return _zip([*_clip_members(WALK), ("junk.npy", junk)])


def _frames_bomb() -> bytes:
    """``poses`` [3.3 M, 66] float32 (871 MB of zeros) in ~0.85 MB."""
    header = _npy_header((BOMB_FRAMES, 66), "<f4")
    return _zip([("poses.npy", _deflated_zeros(header, BOMB_FRAMES * 66 * 4, 1000 * 66 * 4))])


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return {"expanding": _expanding_bomb(), "frames": _frames_bomb()}


# ---- the 1 GB bomb, measured alone in a subprocess --------------------------------------------
_MEASURE = """
import json, resource, sys
from pathlib import Path
from avatar_ops.motion import load_motion  # imports (torch) before the baseline

def peak_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

results = {}
for path in sys.argv[1:]:
    for kind, source in (("bytes", Path(path).read_bytes()), ("path", path)):
        before = peak_kib()
        try:
            load_motion(source)
            outcome = "loaded"
        except ValueError as err:
            outcome = "refused: " + str(err)
        results[f"{Path(path).stem} {kind}"] = {"outcome": outcome, "peak_rss_growth_mib": (peak_kib() - before) / 1024}
print(json.dumps(results))
"""


def test_expanding_and_long_archives_are_refused_with_little_memory(bombs, tmp_path):
    paths = []
    for name, data in bombs.items():
        # A small upload: 1.06 MB and 0.91 MB with this machine's zlib (another deflate's blocks
        # may be a few percent larger); what matters is the ratio to what they expand to.
        assert len(data) < 2e6, (name, len(data))
        (tmp_path / f"{name}.npz").write_bytes(data)
        paths.append(str(tmp_path / f"{name}.npz"))
    with zipfile.ZipFile(io.BytesIO(bombs["expanding"])) as archive:
        assert archive.getinfo("junk.npy").file_size > BOMB_BYTES  # what numpy.load would expand
    done = subprocess.run([sys.executable, "-c", _MEASURE, *paths], capture_output=True, text=True, cwd=REPO, timeout=120, check=True)
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(results) == 4, results
    for label, result in results.items():
        assert result["outcome"].startswith("refused"), (label, result)
        assert result["peak_rss_growth_mib"] < 300, (label, result)
    for label in results:  # both refused from the zip directory, before any header
        assert "bytes uncompressed" in results[label]["outcome"], results[label]


def test_frame_count_is_refused_from_the_header(bombs, monkeypatch):
    from avatar_ops.motion.npz import BoundedNpz, NpzLimits

    def no_data(self, header):
        raise AssertionError(f"array data of {header.key!r} read before the headers were checked")

    monkeypatch.setattr(BoundedNpz, "read", no_data)
    # With the directory limits lifted, the header alone refuses the 871 MB `poses`.
    with pytest.raises(ValueError, match=rf"1 to {MAX_FRAMES} frames, `poses` has {BOMB_FRAMES} \(shape \[{BOMB_FRAMES}, 66\]\)"):
        load_motion(bombs["frames"], limits=NpzLimits(member_bytes=2**30, total_bytes=2**30))
    with pytest.raises(ValueError, match="1 to 10 frames, `poses` has 60"):
        load_motion(WALK, max_frames=10)


# ---- malformed archives and fields: clear ValueErrors ----------------------------------------
def _walk_arrays() -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(WALK)) as archive:
        return {key: archive[key] for key in archive.files}


def _walk_with(**changes) -> bytes:
    arrays = {k: v for k, v in {**_walk_arrays(), **changes}.items() if v is not None}
    return _npz(**arrays)


def _bare_npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, _walk_arrays()["poses"])
    return buf.getvalue()


def _lying_directory(**sizes: int) -> bytes:
    members = _clip_members(WALK)
    members += [(f"{name}.npy", (b"\x03\x00", 0, size)) for name, size in sizes.items()]  # never decompressed
    return _zip(members)


MALFORMED = {
    "bare .npy": (_bare_npy(), r"bare \.npy array; expected an \.npz"),
    "not a zip": (b"hello, world" * 10, r"not a readable \.npz \(zip\) archive"),
    "empty": (b"", r"not a readable \.npz"),
    "truncated zip": (WALK[: len(WALK) // 2], r"not a readable \.npz"),
    "framerate of two numbers": (
        _walk_with(mocap_framerate=np.array([30.0, 60.0])),
        r"`mocap_framerate` must be one finite positive number of frames per second, got an array of shape \[2\]",
    ),
    "framerate 0": (
        _walk_with(mocap_framerate=np.float32(0)),
        r"`mocap_framerate` must be one finite number from 1 to 1000 frames per second, got 0\.0",
    ),
    "framerate NaN": (_walk_with(mocap_framerate=np.float64("nan")), r"`mocap_framerate` must be .*, got nan"),
    "framerate negative": (_walk_with(mocap_framerate=np.int64(-30)), r"`mocap_framerate` must be .*, got -30\.0"),
    "framerate infinite": (_walk_with(mocap_framerate=np.float64("inf")), r"`mocap_framerate` must be .*, got inf"),
    "framerate a string": (_walk_with(mocap_framerate=np.str_("30")), r"`mocap_framerate` must hold numbers, got dtype <U2"),
    "up axis x": (_walk_with(up_axis=np.str_("x")), r"`up_axis` must be 'y' or 'z', got 'x'"),
    "up axis two strings": (
        _walk_with(up_axis=np.array(["y", "z"])),
        r"`up_axis` must be one string, 'y' or 'z', got an array of shape \[2\]",
    ),
    "poses of 65 joints": (
        _walk_with(poses=np.zeros((60, 195), np.float32)),
        r"`poses` must be \[T, 3 \* J\] with 22 <= J <= 64, got \[60, 195\]",
    ),
    "poses of no frames": (_walk_with(poses=np.zeros((0, 165), np.float32), trans=None), r"1 to 10000 frames, `poses` has 0"),
    "poses as text": (_walk_with(poses=np.full((60, 165), "a")), r"`poses` must hold numbers, got dtype <U1"),
    "poses NaN": (_walk_with(poses=np.full((60, 165), np.nan, np.float32)), r"`poses` must hold finite float32 values"),
    "poses beyond float32": (_walk_with(poses=np.full((60, 165), 1e300)), r"`poses` must hold finite float32 values"),
    "trans of other length": (_walk_with(trans=np.zeros((59, 3), np.float32)), r"`trans` must be \[T, 3\] = \[60, 3\], got \[59, 3\]"),
    "body_pose of 20 joints": (
        _npz(global_orient=np.zeros((5, 3), np.float32), body_pose=np.zeros((5, 60), np.float32)),
        r"`body_pose` must be \[T, 63\] = \[5, 63\], got \[5, 60\]",
    ),
    "no pose keys": (_npz(trans=np.zeros((5, 3), np.float32)), r"needs `poses` or `global_orient` \+ `body_pose`; it has \['trans'\]"),
    "member over the limit": (
        _lying_directory(dmpls=33 * 2**20),
        r"member 'dmpls\.npy' must be at most 33554432 bytes uncompressed, got 34603008",
    ),
    "total over the limit": (
        _lying_directory(a=30 * 2**20, b=30 * 2**20, c=30 * 2**20, d=30 * 2**20, e=30 * 2**20),
        r"at most 134217728 bytes uncompressed in all",
    ),
    "too many members": (_lying_directory(**{f"k{i}": 8 for i in range(61)}), r"at most 64 arrays, got 65 members"),
    "duplicate member": (_zip([*_clip_members(WALK), _clip_members(WALK)[0]]), r"holds the array 'poses' twice"),
    "header larger than data": (
        _zip([("poses.npy", _deflated(_npy_header((60, 165), "<f8") + bytes(60 * 165 * 4)))]),
        r"array 'poses': its header \(\[60, 165\] float64\) needs 79328 bytes, the zip directory says 39728",
    ),
    "header of 3.3 M frames, data of 60": (
        _zip([("poses.npy", _deflated(_npy_header((BOMB_FRAMES, 165), "<f4") + bytes(60 * 165 * 4)))]),
        r"`poses` has 3300000",
    ),
    "header with a negative dimension": (
        _zip([("poses.npy", _deflated(_npy_header((-60, 165), "<f4")))]),
        r"negative dimension: \[-60, 165\]",
    ),
    "pickled poses": (_npz(poses=np.array([{"evil": 1}], dtype=object)), r"pickled objects are refused"),
    "bzip2 member": (None, r"must be stored or deflated, got zip method 12"),
}


def _bzip2_clip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_BZIP2) as archive:
        archive.writestr("poses.npy", _bare_npy())
    return buf.getvalue()


MALFORMED["bzip2 member"] = (_bzip2_clip(), MALFORMED["bzip2 member"][1])


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_motion_is_a_clear_value_error(name):
    data, message = MALFORMED[name]
    with pytest.raises(ValueError, match=message):
        load_motion(data)


def test_unused_keys_are_never_decompressed():
    # `betas` is a deflate stream that cannot be decompressed; numpy.load would fail on it.
    broken = (b"\xff" * 64, 0, 128)
    motion = load_motion(_zip([*_clip_members(WALK), ("betas.npy", broken)]))
    assert len(motion) == 60
    assert torch.equal(motion.pose, load_motion("walk").pose)


def test_a_damaged_member_fails_its_crc():
    members = _clip_members(WALK)
    name, (data, crc, size) = members[0]
    members[0] = (name, (data, crc ^ 1, size))
    with pytest.raises(ValueError, match=r"array 'poses' is damaged: Bad CRC-32"):
        load_motion(_zip(members))


@pytest.mark.parametrize("compressed", [True, False])
def test_bounded_reader_matches_numpy(compressed):
    """Every dtype and layout a clip may use reads as numpy.load reads it."""
    rng = np.random.default_rng(0)
    frames = 7
    poses = rng.normal(size=(frames, 156))
    arrays = {
        "poses": np.asfortranarray(poses.astype(">f8")),
        "trans": rng.normal(size=(frames, 3)).astype(np.float16),
        "mocap_framerate": np.array([120], np.int32),
        "up_axis": np.bytes_(b"z"),
    }
    motion = load_motion(_npz(compressed, **arrays))
    assert len(motion) == frames and motion.fps == 120.0
    reference = load_motion(
        _npz(
            compressed,
            poses=poses.astype(np.float32),
            trans=arrays["trans"].astype(np.float32),
            mocap_framerate=np.float32(120),
            up_axis=np.str_("z"),
        )
    )
    assert torch.equal(motion.pose, reference.pose) and torch.equal(motion.transl, reference.transl)
    # and the bundled clips as numpy reads them
    with np.load(CLIPS_DIR / "wave.npz") as archive:
        expected = torch.from_numpy(archive["poses"].reshape(-1, 55, 3))
    assert torch.equal(load_motion("wave").pose, expected) and torch.equal(load_motion(CLIPS_DIR / "wave.npz").pose, expected)


# ---- seeded fuzz -----------------------------------------------------------------------------
FUZZ_INPUTS = 300
SECONDS_PER_INPUT = 2.0  # generous: a bounded input takes milliseconds
BYTES_PER_INPUT = 16 * 2**20  # traced allocations; a bundled clip needs well under 1 MB


def _hostile_header(rng: random.Random) -> bytes:
    """A valid zip whose ``poses`` header is hostile: huge, negative or odd shapes and dtypes."""
    shape = rng.choice([(BOMB_FRAMES, 165), (60, 10**12), (2**62, 2**62), (-1, 66), (), (60,), (60, 165, 1), (10**30, 3), (60, 0), (1, 66)])
    dtype = rng.choice(["<f4", "<f8", "|O", "<U1000000", "|V8", "<M8[s]", "<c16", "|b1", "<i8"])
    header = _npy_header(shape, dtype, fortran_order=rng.random() < 0.3)
    if rng.random() < 0.3:  # a header length field that lies
        header = header[:8] + struct.pack("<H", rng.choice([0, 1, 65535])) + header[10:]
    body = bytes(rng.choice([0, 64, 4 * 66, 60 * 165 * 4]))
    return _zip([("poses.npy", _deflated(header + body)), *_clip_members(WALK)[1:]])


def _mutate(rng: random.Random, seeds: list[bytes]) -> tuple[str, bytes]:
    data = bytearray(rng.choice(seeds))
    kind = rng.choice(["bit flips", "truncation", "overwrite", "directory flips", "splice", "hostile header", "header digits"])
    if kind == "bit flips":
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif kind == "truncation":
        data = data[: rng.randrange(len(data))]
    elif kind == "overwrite":
        i = rng.randrange(len(data))
        data[i : i + rng.randint(1, 16)] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif kind == "directory flips":  # the central directory and end record sit at the end
        for _ in range(rng.randint(1, 4)):
            i = len(data) - 1 - rng.randrange(min(len(data), 300))
            data[i] = rng.randrange(256)
    elif kind == "splice":
        other = rng.choice(seeds)
        data = data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1) :]
    elif kind == "hostile header":
        return kind, _hostile_header(rng)
    else:  # digits in a stored member's header (shape, version, lengths)
        stored = bytearray(rng.choice(SEEDS_STORED))
        digits = [m.start() for m in re.finditer(rb"\d", bytes(stored[:2000]))]
        for i in rng.sample(digits, min(len(digits), rng.randint(1, 3))):
            stored[i] = ord(str(rng.randrange(10)))
        return kind, bytes(stored)
    return kind, bytes(data)


SEEDS_STORED = [
    _npz(False, **_walk_arrays()),
    _npz(
        False,
        global_orient=np.zeros((5, 3), np.float32),
        body_pose=np.zeros((5, 63), np.float32),
        trans=np.zeros((5, 3)),
        up_axis=np.str_("z"),
    ),
]


def test_fuzz_motion_loader_returns_a_clip_or_a_value_error(bombs):
    rng = random.Random(18)
    seeds = [WALK, WAVE, *SEEDS_STORED, _bare_npy(), bombs["expanding"], bombs["frames"], _bzip2_clip()]
    inputs = [("seed", s) for s in seeds] + [_mutate(rng, seeds) for _ in range(FUZZ_INPUTS)]
    outcomes: dict[str, int] = {}
    tracemalloc.start()
    try:
        for n, (kind, data) in enumerate(inputs):
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            start = time.perf_counter()
            try:
                motion = load_motion(data)
            except ValueError:
                outcome = "refused"
            except Exception as err:  # noqa: BLE001 - the assertion below reports it
                pytest.fail(f"input {n} ({kind}, {len(data)} bytes) raised {type(err).__name__}: {err}")
            else:
                outcome = "loaded"
                assert isinstance(motion, Motion) and 1 <= len(motion) <= MAX_FRAMES
                assert (
                    motion.pose.shape == (len(motion), 55, 3) and torch.isfinite(motion.pose).all() and torch.isfinite(motion.transl).all()
                )
                assert math.isfinite(motion.fps) and motion.fps > 0
            seconds = time.perf_counter() - start
            peak = tracemalloc.get_traced_memory()[1] - base
            assert seconds < SECONDS_PER_INPUT, f"input {n} ({kind}) took {seconds:.2f} s"
            assert peak < BYTES_PER_INPUT, f"input {n} ({kind}) allocated {peak / 2**20:.0f} MiB"
            outcomes[f"{kind} {outcome}"] = outcomes.get(f"{kind} {outcome}", 0) + 1
    finally:
        tracemalloc.stop()
    assert outcomes.get("seed loaded") == 4, outcomes  # the clips load; the hostile seeds do not
    assert sum(outcomes.values()) == len(inputs)
