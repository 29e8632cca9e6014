"""The guard under a route prefix, bounded readiness, and clean errors, on the gated app (the
real ingress under ``/avatar``, stages steered by :mod:`tests.serve.gate`), plus the guard's and
the builder's rules without Ray."""

from __future__ import annotations

import base64
import io
import json
import re
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.serve.photos import exif_photo, photo

#: What must never reach a client: a traceback, a source line, a server path.
LEAKS = re.compile(r"Traceback|File \"|\.py\b|/srv/|/work/|/home/|/tmp/")


def _no_leak(response: requests.Response) -> None:
    assert not LEAKS.search(response.text), response.text


def _reason(response: requests.Response) -> str:
    return response.json()["detail"]["reason"]


# ---- the guard covers what it protects -------------------------------------------------------
def test_route_prefix_does_not_bypass_the_key_or_the_body_cap(gated):
    base = gated.base
    image = {"image": ("p.png", photo(1), "image/png")}
    no_key = requests.post(f"{base}/v1/track", files=image, timeout=30)
    assert no_key.status_code == 401 and no_key.headers["www-authenticate"].startswith("Bearer"), no_key.text
    bad_key = requests.post(f"{base}/v1/track", files=image, headers={"Authorization": "Bearer nope"}, timeout=30)
    assert bad_key.status_code == 401, bad_key.text
    # Every route but the allowlist needs the key: avatars, unknown paths, the schema (not open here).
    for path in ("/v1/avatars/" + "0" * 20, "/v1/nothing", "/anything", "/openapi.json", "/docs", "/healthz/"):
        r = requests.get(f"{base}{path}", timeout=30)
        assert r.status_code == 401, (path, r.status_code, r.text)
    assert requests.get(f"{base}/openapi.json", headers=gated.auth, timeout=30).json()["paths"]["/v1/track"]
    assert requests.get(f"{base}/healthz", timeout=30).json() == {"status": "ok"}
    assert requests.get(f"{base}/readyz", timeout=30).status_code == 200
    # With the key, a body over max_upload_bytes is 413, declared or streamed (chunked).
    big = b"\0" * (3 * gated.settings.max_upload_bytes)
    declared = requests.post(f"{base}/v1/track", files={"image": ("big.png", big)}, headers=gated.auth, timeout=30)
    assert declared.status_code == 413 and "max_upload_bytes" in declared.json()["detail"], declared.text
    chunks = (big[i : i + 65536] for i in range(0, len(big), 65536))
    streamed = requests.post(f"{base}/v1/track", data=chunks, headers={**gated.auth, "Content-Type": "application/json"}, timeout=30)
    assert streamed.status_code == 413, streamed.text


def test_readyz_asks_the_stages_a_bounded_number_of_times(gated):
    before = gated.counts()["ready_calls"]
    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(lambda _: requests.get(f"{gated.base}/readyz", timeout=30).status_code, range(40)))
    assert codes == [200] * 40
    # At most one check (5 stage handles) per ingress replica within readyz_cache_s, not 40 x 5.
    assert gated.counts()["ready_calls"] - before <= 2 * 5


def test_route_path_is_taken_relative_to_root_path():
    from serve.guard import route_path

    cases = {
        ("/avatar/v1/track", "/avatar"): "/v1/track",
        ("/avatar/healthz", "/avatar/"): "/healthz",
        ("/avatar", "/avatar"): "/",
        ("/avatarx/healthz", "/avatar"): "/avatarx/healthz",  # another prefix: no strip, so no open path
        ("/v1/track", "/avatar"): "/v1/track",  # a server that strips the prefix itself
        ("/healthz", ""): "/healthz",
    }
    for (path, root), expected in cases.items():
        assert route_path({"path": path, "root_path": root}) == expected, (path, root)


def test_every_stage_queue_is_bounded():
    from avatar_ops.types import STAGE_KINDS
    from serve.app import DEFAULT_OPTIONS, build_application
    from serve.config import ServeSettings
    from serve.local import DEFAULT_CONFIG, REPO_CONFIG, load_serve_file

    for kind in STAGE_KINDS:
        assert DEFAULT_OPTIONS[kind]["max_queued_requests"] >= 1, kind
    for path in (REPO_CONFIG, DEFAULT_CONFIG):
        config = load_serve_file(path, {"api_keys": ["k"]})
        for kind in STAGE_KINDS:
            assert config.deployments[kind]["max_queued_requests"] >= 1, (path.name, kind)
    settings = ServeSettings(auth="disabled")
    with pytest.raises(ValueError, match=r"fit deployment's max_queued_requests must be a positive integer .* got -1"):
        build_application(settings, {"fit": {"max_queued_requests": -1}})


# ---- clean errors ------------------------------------------------------------------------------
def _server_log_has(request_id: str, text: str, limit_s: float = 20) -> bool:
    """Whether a Serve log file of this Ray session holds a line with ``request_id`` and, in the
    same record, ``text`` (polled: the replica writes its log asynchronously)."""
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"  # no public accessor in Ray 2.60
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        for path in logs.glob("replica_*.log"):
            content = path.read_text(errors="replace")
            at = content.find(f"request {request_id}")
            if at >= 0 and text in content[at : at + 20000]:
                return True
        time.sleep(0.5)
    return False


def test_unexpected_errors_are_500_with_request_id_and_no_traceback(gated):
    import ray

    ray.get(gated.gate.set_mode.remote("garbage"), timeout=30)  # the stage answers bytes that are no payload
    r = requests.post(f"{gated.base}/v1/track", files={"image": photo(2)}, headers=gated.auth, timeout=60)
    assert r.status_code == 500, r.text
    _no_leak(r)
    body = r.json()
    assert body["detail"]["reason"] == "exception" and body["request_id"] in body["detail"]["detail"]
    assert r.headers["x-request-id"] == body["request_id"]
    assert _server_log_has(body["request_id"], "Traceback"), "the traceback is not in the server log under the request id"
    # A client's own request id is kept (Serve's proxy takes it) and answered in both places.
    mine = requests.post(f"{gated.base}/v1/track", files={"image": photo(2)}, headers={**gated.auth, "X-Request-ID": "client-id-42"}, timeout=60)
    assert mine.status_code == 500 and mine.headers["x-request-id"] == mine.json()["request_id"] == "client-id-42"
    # Every error answer carries the id too.
    not_found = requests.get(f"{gated.base}/v1/avatars/{'0' * 20}", headers=gated.auth, timeout=30)
    assert not_found.status_code == 404 and not_found.json()["request_id"] == not_found.headers["x-request-id"]
    # A stage that raises inside a job: the job fails with a reason; no traceback, no path, in the
    # answer or in status.json.
    ray.get(gated.gate.set_mode.remote("raise"), timeout=30)
    created = requests.post(f"{gated.base}/v1/avatars", files={"image": photo(3)}, headers=gated.auth, timeout=60)
    assert created.status_code == 202, created.text
    avatar = created.json()["id"]
    status = _wait_final(gated, avatar)
    assert (status["status"], status["reason"]) == ("failed", "exception"), status
    assert not LEAKS.search(json.dumps(status)), status
    (stored,) = gated.store.glob(f"tenants/*/avatars/{avatar}/status.json")
    assert not LEAKS.search(stored.read_text()), stored.read_text()
    track = requests.post(f"{gated.base}/v1/track", files={"image": photo(3)}, headers=gated.auth, timeout=60)
    assert track.status_code == 500 and _reason(track) == "exception", track.text
    _no_leak(track)


def _wait_final(gated, avatar: str, key: dict | None = None, limit_s: float = 60) -> dict:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        r = requests.get(f"{gated.base}/v1/avatars/{avatar}", headers=key or gated.auth, timeout=30)
        assert r.status_code == 200, r.text
        if r.json()["status"] in ("ok", "rejected", "failed"):
            return r.json()
        time.sleep(0.2)
    pytest.fail(f"avatar {avatar} did not finish within {limit_s} s")


def test_photo_whose_exif_breaks_pillow_is_never_a_500(gated):
    from PIL import Image, ImageOps

    data = exif_photo()
    with pytest.raises(struct.error):  # the finding: Pillow's transpose raises on this EXIF
        ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    for path in ("/v1/track", "/v1/avatars"):
        r = requests.post(f"{gated.base}{path}", files={"image": ("exif.jpg", data, "image/jpeg")}, headers=gated.auth, timeout=60)
        assert r.status_code in (200, 202, 422), (path, r.status_code, r.text)
        _no_leak(r)
        if r.status_code == 202:
            assert _wait_final(gated, r.json()["id"])["status"] == "rejected"  # the gate finds nobody


def _ok_avatar(gated, seed: int) -> str:
    """An avatar id the key's tenant has, status ok (written into the store as a finished job would)."""
    from serve.store import tenant_id
    from tests.serve.conftest import KEY

    avatar = f"{seed:020x}"
    folder = gated.store / "tenants" / tenant_id(KEY) / "avatars" / avatar
    folder.mkdir(parents=True)
    (folder / "status.json").write_text(json.dumps({"id": avatar, "status": "ok", "reason": "", "detail": "", "files": [], "updated_at": time.time()}))
    return avatar


def test_malformed_json_keypoints_and_motion_are_422(gated):
    def post(path, **kwargs):
        r = requests.post(f"{gated.base}{path}", headers={**gated.auth, **kwargs.pop("headers", {})}, timeout=60, **kwargs)
        _no_leak(r)
        return r

    image_b64 = base64.b64encode(photo(4)).decode()
    json_type = {"Content-Type": "application/json"}
    cases = {
        "nested": ('{"keypoints": ' + "[" * 30000 + "]" * 30000 + "}", "bad_json"),
        "long_int": ('{"image": "' + image_b64 + '", "frames": ' + "9" * 5000 + "}", "bad_json"),
        "nan": ('{"image": "' + image_b64 + '", "keypoints": [[NaN, 1, 1]]}', "bad_json"),
        "not_utf8": (b'{"image": "\xff\xfe"}', "bad_json"),
        "people_of_numbers": (json.dumps({"image": image_b64, "keypoints": {"people": [1]}}), "bad_keypoints"),
        "keypoints_list_of_numbers": (json.dumps({"image": image_b64, "keypoints": [1, 2, 3]}), "bad_keypoints"),
    }
    for name, (body, reason) in cases.items():
        r = post("/v1/track", data=body, headers=json_type)
        assert (r.status_code, _reason(r)) == (422, reason), (name, r.text[:300])
    for text in ("[" * 30000 + "]" * 30000, "[[NaN, 1, 1]]", '{"people": [{"pose_keypoints_2d": "x"}]}', "9" * 5000):
        r = post("/v1/track", files={"image": photo(4)}, data={"keypoints": text})
        assert (r.status_code, _reason(r)) == (422, "bad_keypoints"), (text[:40], r.text[:300])
    # Animation options and motion uploads, on an avatar that is ok.
    avatar = _ok_avatar(gated, 5)
    animate = f"/v1/avatars/{avatar}/animate"
    for body, reason in (({"frames": True}, "bad_frames"), ({"size": 1e300}, "bad_size"), ({"clip": ["walk"]}, "unknown_clip"), ({"frames": "9" * 5000}, "bad_frames")):
        r = post(animate, json=body)
        assert (r.status_code, _reason(r)) == (422, reason), (body, r.text[:300])
    r = post(animate, data=('{"size": 1e999}'), headers=json_type)  # Infinity
    assert (r.status_code, _reason(r)) == (422, "bad_size"), r.text[:300]

    def npz(**arrays) -> bytes:
        out = io.BytesIO()
        np.savez(out, **arrays)
        return out.getvalue()

    poses = np.zeros((4, 165), np.float32)
    bare_npy = io.BytesIO()
    np.save(bare_npy, poses)
    motions = {
        "bare_npy": bare_npy.getvalue(),
        "two_framerates": npz(poses=poses, trans=np.zeros((4, 3), np.float32), mocap_framerate=np.array([30.0, 60.0])),
        "zero_framerate": npz(poses=poses, trans=np.zeros((4, 3), np.float32), mocap_framerate=np.array(0.0)),
        "nan_framerate": npz(poses=poses, trans=np.zeros((4, 3), np.float32), mocap_framerate=np.array(np.nan)),
        "not_a_zip": b"PK\x03\x04 this is no archive",
    }
    for name, data in motions.items():
        r = post(animate, files={"motion": ("clip.npz", data)})
        assert (r.status_code, _reason(r)) == (422, "bad_motion"), (name, r.text[:300])
