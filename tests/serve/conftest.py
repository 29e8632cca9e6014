"""The online API on a real local Ray (2 CPUs), bound to 127.0.0.1, spoken to over real HTTP."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.net import free_port, wait_ready

KEY = "test-key-123"
#: A second client (another tenant) of the gated app.
KEY_B = "test-key-b-456"
#: The gated app's route prefix: the guard must hold under it too.
PREFIX = "/avatar"
#: Small enough for 2 cores: few Gaussians and iterations, tiny previews.
FAST_PIPELINE = {
    "num_gaussians": 800,
    "fit": {"iters": 2, "resolution": 64},
    # The API's wiring is what these tests check: hands and face off (tests/test_parity.py runs
    # them) and a short body fit (tests/avatar_ops/test_tracking.py checks the fit's quality).
    "tracking": {"hands": {"enabled": False}, "face": {"enabled": False}, "fit": {"orient_iters": 5, "keypoint_iters": 5, "iters": 5}},
    "export": {"turntable_views": 2, "preview_size": 48, "animation_frames": 2, "glb_texture_size": 256, "glb_max_frames": 8},
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


@dataclasses.dataclass
class Gated:
    """The real ingress under :data:`PREFIX`, every stage a :class:`tests.serve.gate.GateStage`."""

    base: str  # with the prefix
    store: Path
    settings: object
    gate: object  # the Gate actor

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {KEY}"}

    @property
    def auth_b(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {KEY_B}"}

    def counts(self) -> dict:
        import ray

        return ray.get(self.gate.counts.remote(), timeout=30)


@pytest.fixture(scope="package")
def gated_app(api, tmp_path_factory) -> Gated:
    """A second app in the same Serve instance (no model loads, no CPU reserved): two ingress
    replicas, small limits (2 pending jobs per replica, 2 s stage timeout, 0.5 s heartbeats), the
    stage queue bounded at 2 ongoing + 2 queued."""
    import ray
    from ray import serve

    from serve.app import AvatarAPI
    from serve.config import ServeSettings
    from tests.serve.gate import Gate, GateStage

    store = tmp_path_factory.mktemp("gated-store")
    settings = ServeSettings(
        auth="api_key", api_keys=(KEY, KEY_B), storage=str(store), max_upload_bytes=100_000, max_inflight_requests=16,
        request_timeout_s=2.0, max_pending_avatars=2, max_concurrent_avatars=2, heartbeat_s=0.5, readyz_cache_s=30.0, pipeline=FAST_PIPELINE,
    )  # fmt: skip
    gate = Gate.remote()
    stage = serve.deployment(GateStage).options(name="gate", max_ongoing_requests=2, max_queued_requests=2, ray_actor_options={"num_cpus": 0}).bind(gate)
    ingress = AvatarAPI.options(num_replicas=2, max_ongoing_requests=32, max_queued_requests=32, ray_actor_options={"num_cpus": 0})
    serve.run(ingress.bind(settings.model_dump_json(), *[stage] * 5), name="gated", route_prefix=PREFIX, blocking=False)
    base = f"{api.base}{PREFIX}"
    if not wait_ready(f"{base}/readyz", 120):
        pytest.fail("the gated Serve app did not become ready within 120 s")
    yield Gated(base, store, settings, gate)
    serve.delete("gated")
    ray.kill(gate)


@pytest.fixture
def gated(gated_app) -> Gated:
    """The gated app with its gate open, in ``pass`` mode and its counts cleared, and left so."""
    import ray

    ray.get(gated_app.gate.reset.remote(), timeout=30)
    yield gated_app
    ray.get(gated_app.gate.reset.remote(), timeout=30)
