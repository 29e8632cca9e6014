"""Shared fixtures: offline environment, body models built once per session, sample photos."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Ray adds a warnings filter of its own for its deprecations when first imported. Imported here,
# before any test, it sits behind the filters pyproject.toml sets for each test, so those decide
# (deprecations reported at our call sites are errors there).
import ray.util.annotations  # noqa: F401

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("ANNY_CACHE_DIR", str(Path.home() / ".cache" / "anny"))

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"


def pytest_sessionfinish(session, exitstatus) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config) -> None:
    """Leave with pytest's own exit status once the run is reported, skipping the interpreter's
    teardown of native objects (MediaPipe graphs, torch and warp thread pools, Playwright's
    driver). Once in a while one of them crashed there (SIGSEGV, exit 139) after every test had
    passed and the summary was printed; nothing of ours runs in that teardown (fixtures have
    stopped every server and Ray they started), so the status a run reports is its tests' own."""
    status = config.stash.get(_EXIT_STATUS, None)
    if status is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


_EXIT_STATUS = pytest.StashKey[int]()


@pytest.fixture(scope="module")
def s3_endpoint():
    """A real S3 API (moto's server) on loopback, with credentials in the environment."""
    import s3fs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    # fsspec keeps S3 filesystems by their arguments, not by the environment: one made for an
    # earlier module's server would still point at it.
    s3fs.S3FileSystem.clear_instance_cache()
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("moto server did not start")
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)
    s3fs.S3FileSystem.clear_instance_cache()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    return SAMPLES


@pytest.fixture(scope="session")
def anny_body():
    """The default Anny body (first build ~1-2 min, then cached under ANNY_CACHE_DIR)."""
    from avatar_ops.body import BodyModelConfig, build_body_model

    return build_body_model(BodyModelConfig(kind="anny"))


@pytest.fixture(scope="session")
def smplx_file(tmp_path_factory) -> Path:
    """A synthetic SMPL-X-format model written by the test itself (never committed)."""
    from avatar_ops.body.synthetic_smplx import make_synthetic_smplx

    return make_synthetic_smplx(tmp_path_factory.mktemp("smplx") / "SMPLX_NEUTRAL.npz")


@pytest.fixture(scope="session")
def smplx_body(smplx_file):
    from avatar_ops.body import BodyModelConfig, build_body_model

    return build_body_model(BodyModelConfig(kind="smplx", smplx_path=str(smplx_file)))


@pytest.fixture(scope="session")
def detector():
    from avatar_ops.tracking.detector import MediaPipeDetector

    det = MediaPipeDetector()
    yield det
    det.close()


@pytest.fixture(scope="session")
def tracker(anny_body, detector):
    from avatar_ops.tracking.operator import TrackingConfig, TrackingOperator

    return TrackingOperator(TrackingConfig(device="cpu"), anny_body, detector)


#: The bundled sample photos the tests track.
SAMPLE_PHOTOS = ("man_hoodie_masked.png", "woman_dress_fullbody.jpg", "elder_fruit_halfbody.jpg")


@pytest.fixture(scope="session")
def tracked_samples(tracker, samples_dir) -> dict:
    """``{name: (TrackResult, rgb [H, W, 3] uint8)}``: every sample photo decoded and tracked by the
    session's tracker, all of them in one batch. Tracking is the costly step, and the modules that
    start from the tracked samples (avatars, tracking quality, synthesis) share this one run."""
    from avatar_ops.io.image import decode_image
    from avatar_ops.tracking.operator import TrackInput

    images = [decode_image((samples_dir / name).read_bytes()) for name in SAMPLE_PHOTOS]
    results = tracker([TrackInput(image) for image in images])
    return {name: (result, image.rgb) for name, result, image in zip(SAMPLE_PHOTOS, results, images)}
