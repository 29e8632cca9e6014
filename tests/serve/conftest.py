"""The online API on a real local Ray (2 CPUs), bound to 127.0.0.1, spoken to over real HTTP."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.net import free_port, wait_ready

KEY = "test-key-123"
#: Small enough for 2 cores: few Gaussians and iterations, tiny previews.
FAST_PIPELINE = {
    "num_gaussians": 800,
    "fit": {"iters": 2, "resolution": 64},
    "export": {"turntable_views": 2, "preview_size": 48, "animation_frames": 2},
}
#: A tiny random SVD pipeline (built by the fixture) and few small frames per mode.
SYNTHESIS = {"size": 32, "view": {"num_frames": 2, "steps": 2, "window": 4}, "pose": {"num_frames": 2, "steps": 2, "window": 4}}
#: The ingress admits few requests at once so that the overload test can exceed it.
MAX_INFLIGHT = 4


@dataclasses.dataclass
class Api:
    base: str
    store: Path
    settings: object

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="package")
def api(tmp_path_factory) -> Api:
    import ray
    from ray import serve

    from avatar_ops.synthesis.tiny_svd import make_tiny_svd
    from serve.app import build_application
    from serve.config import ServeSettings

    store = tmp_path_factory.mktemp("avatar-store")
    port = free_port()
    synthesis = {"model": str(make_tiny_svd(tmp_path_factory.mktemp("svd") / "tiny")), **SYNTHESIS}
    pipeline = {**FAST_PIPELINE, "synthesis": synthesis}
    settings = ServeSettings(auth="api_key", api_keys=(KEY,), storage=str(store), max_upload_bytes=2_000_000, max_inflight_requests=MAX_INFLIGHT, pipeline=pipeline)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_application(settings), name="avatar", route_prefix="/", blocking=False)
        base = f"http://127.0.0.1:{port}"
        if not wait_ready(f"{base}/readyz", 300):
            pytest.fail("the Serve app did not become ready within 300 s")
        yield Api(base, store, settings)
    finally:
        serve.shutdown()
        ray.shutdown()
