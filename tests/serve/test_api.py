"""The online API end to end over HTTP: tracking, avatar jobs, files, animation; parity with the
batch job's tracking stage; bad inputs; overload."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from serve.store import tenant_id
from tests.inputs import bad_files
from tests.serve.conftest import FAST_PIPELINE, KEY, MAX_INFLIGHT

REPO = Path(__file__).resolve().parents[2]

TERMINAL = ("ok", "rejected", "failed")


def _wait_for(api, avatar: str, limit_s: float = 600) -> dict:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        r = requests.get(f"{api.base}/v1/avatars/{avatar}", headers=api.auth, timeout=30)
        assert r.status_code == 200, r.text
        if r.json()["status"] in TERMINAL:
            return r.json()
        time.sleep(1)
    pytest.fail(f"avatar {avatar} did not finish within {limit_s} s")


def _track_arrays(body: dict) -> dict[str, torch.Tensor]:
    keys = ("shape", "pose", "transl", "projected_keypoints")
    out = {k: torch.tensor(body[k]) for k in keys}
    out["intrinsics"] = torch.tensor(body["camera"]["intrinsics"])
    return out


def test_openapi_and_health(api):
    assert requests.get(f"{api.base}/openapi.json", timeout=30).status_code == 401  # open_docs is off by default
    schema = requests.get(f"{api.base}/openapi.json", headers=api.auth, timeout=30).json()
    assert {"/v1/track", "/v1/avatars", "/v1/avatars/{avatar}", "/v1/avatars/{avatar}/files/{name}", "/v1/avatars/{avatar}/animate"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/v1/track"]["post"]["requestBody"]["content"]
    assert requests.get(f"{api.base}/healthz", timeout=30).json() == {"status": "ok"}
    ready = requests.get(f"{api.base}/readyz", timeout=30)
    assert ready.status_code == 200 and ready.json()["stages"] == {"track": True, "reconstruct": True, "synthesize": True, "fit": True, "export": True}


def test_track_sample_photo_multipart_and_json(api, samples_dir):
    photo = (samples_dir / "elder_fruit_halfbody.jpg").read_bytes()
    r = requests.post(f"{api.base}/v1/track", files={"image": ("photo.jpg", photo, "image/jpeg")}, headers=api.auth, timeout=300)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["body_model"] == "anny"
    assert np.asarray(body["pose"]).shape == (55, 3)
    assert body["camera"]["width"] == Image.open(io.BytesIO(photo)).width
    assert len(body["keypoints"]) == len(body["keypoint_names"]) == len(body["projected_keypoints"])
    assert body["quality"]["mask_iou"] > 0.7 and body["quality"]["reprojection_error_ratio"] < 0.1
    # The same photo as base64 JSON gives the same fit.
    r2 = requests.post(f"{api.base}/v1/track", json={"image": base64.b64encode(photo).decode()}, headers=api.auth, timeout=300)
    assert r2.status_code == 200, r2.text
    torch.testing.assert_close(_track_arrays(r2.json()), _track_arrays(body))


@pytest.mark.slow  # the nightly run (`make test-all`); ~12 s. The default run has the stages' parity without Serve (tests/test_parity.py) and POST /v1/track (test_track_sample_photo_multipart_and_json).
def test_track_matches_batch_tracking_stage(api, samples_dir, tmp_path):
    """Parity: POST /v1/track and the batch job's tracking stage give the same parameters."""
    from avatar_ops.stages.codec import payload_from_bytes
    from avatar_ops.stages.config import PipelineConfig
    from jobs.stages import PayloadStages, decode_batch

    source = samples_dir / "man_hoodie_masked.png"
    r = requests.post(f"{api.base}/v1/track", files={"image": source.read_bytes()}, headers=api.auth, timeout=300)
    assert r.status_code == 200, r.text
    config_json = PipelineConfig.model_validate(FAST_PIPELINE).model_dump_json()
    batch = {"row_index": np.array([0]), "id": np.array(["hoodie"], dtype=object), "source_uri": np.array([str(source)], dtype=object), "options": np.array(["{}"], dtype=object)}
    decoded = decode_batch(batch, config_json, str(tmp_path))
    tracked = PayloadStages(["track"], [1], config_json, str(tmp_path))(decoded)
    assert tracked["status"][0] == "pending", tracked["detail"][0]
    from_batch = payload_from_bytes(tracked["payload"][0]).track.to_json()
    torch.testing.assert_close(_track_arrays(r.json()), _track_arrays(from_batch))


def test_avatar_job_files_and_animation(api, samples_dir):
    photo = (samples_dir / "man_hoodie_masked.png").read_bytes()
    r = requests.post(f"{api.base}/v1/avatars", files={"image": photo}, data={"preset": "preview"}, headers=api.auth, timeout=60)
    assert r.status_code == 202, r.text
    avatar = r.json()["id"]
    assert r.json()["status"] in ("queued", "running", "ok")
    status = _wait_for(api, avatar)
    assert status["status"] == "ok", status
    assert {"avatar.ply", "preview.png", "avatar.safetensors", "turntable.gif"} <= set(status["files"])
    assert set(status["seconds"]) == {"track", "reconstruct", "fit", "export"}
    assert status["quality"]["fit_psnr"] > 10
    # Files stream back, and they are what they claim to be.
    ply = requests.get(f"{api.base}{status['links']['files']['avatar.ply']}", headers=api.auth, timeout=60)
    assert ply.status_code == 200 and ply.content.startswith(b"ply\nformat binary_little_endian")
    header = ply.content[: ply.content.index(b"end_header")].decode()
    assert f"element vertex {FAST_PIPELINE['num_gaussians']}" in header
    preview = requests.get(f"{api.base}/v1/avatars/{avatar}/files/preview.png", headers=api.auth, timeout=60)
    assert preview.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(preview.content)).size == (FAST_PIPELINE["export"]["preview_size"],) * 2
    # Results live in the store, under the key's tenant, in the layout the batch job writes.
    assert (api.store / "tenants" / tenant_id(KEY) / "avatars" / avatar / "avatar.ply").read_bytes() == ply.content
    # The same photo again: already done, same id, no new job.
    again = requests.post(f"{api.base}/v1/avatars", files={"image": photo}, headers=api.auth, timeout=60)
    assert again.status_code == 200 and again.json()["id"] == avatar and again.json()["status"] == "ok"
    # Animate with a bundled clip (GIF, the requested frames and size) and as MP4.
    gif = requests.post(f"{api.base}/v1/avatars/{avatar}/animate", data={"clip": "walk", "frames": "3", "size": "64"}, headers=api.auth, timeout=300)
    assert gif.status_code == 200, gif.text
    assert gif.headers["content-type"] == "image/gif"
    image = Image.open(io.BytesIO(gif.content))
    assert image.n_frames == 3 and image.size == (64, 64)
    mp4 = requests.post(f"{api.base}/v1/avatars/{avatar}/animate", json={"clip": "wave", "frames": 2, "size": 48, "format": "mp4"}, headers=api.auth, timeout=300)
    assert mp4.status_code == 200 and mp4.headers["content-type"] == "video/mp4" and mp4.content[4:8] == b"ftyp"
    # An uploaded SMPL-X motion (.npz, no pickle) drives it too; a pickled one is refused.
    buf = io.BytesIO()
    poses = np.zeros((4, 165), np.float32)
    poses[:, 3 * 16 + 2] = np.linspace(0, -1.2, 4)  # raise the left arm
    np.savez(buf, poses=poses, trans=np.zeros((4, 3), np.float32), mocap_framerate=np.array(30.0))
    uploaded = requests.post(f"{api.base}/v1/avatars/{avatar}/animate", files={"motion": ("clip.npz", buf.getvalue())}, data={"size": "32"}, headers=api.auth, timeout=300)
    assert uploaded.status_code == 200, uploaded.text
    assert Image.open(io.BytesIO(uploaded.content)).n_frames == 4
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"poses": 1}], dtype=object), allow_pickle=True)
    refused = requests.post(f"{api.base}/v1/avatars/{avatar}/animate", files={"motion": ("clip.npz", pickled.getvalue())}, headers=api.auth, timeout=60)
    assert refused.status_code == 422 and refused.json()["detail"]["reason"] == "bad_motion"
    unknown = requests.post(f"{api.base}/v1/avatars/{avatar}/animate", data={"clip": "/etc/passwd"}, headers=api.auth, timeout=60)
    assert unknown.status_code == 422 and unknown.json()["detail"]["reason"] == "unknown_clip"
    missing = requests.get(f"{api.base}/v1/avatars/{avatar}/files/status.json", headers=api.auth, timeout=60)
    assert missing.status_code == 404 and missing.json()["detail"]["reason"] == "unknown_file"


def test_avatar_glb_and_viewer_page_in_a_browser(api, samples_dir):
    """The job's avatar.glb streams as glTF; GET /v1/avatars/{id}/viewer serves viewer.html under
    the API key, with a policy that lets it load nothing else, and a real Chromium draws the avatar
    from it (the page's own checks: tests/avatar_ops/test_viewer.py)."""
    from tests.browser import chromium_page, screenshot_array, wait_ready

    photo = (samples_dir / "man_hoodie_masked.png").read_bytes()
    r = requests.post(f"{api.base}/v1/avatars", files={"image": photo}, data={"preset": "preview"}, headers=api.auth, timeout=60)
    assert r.status_code in (200, 202), r.text
    status = _wait_for(api, r.json()["id"])
    assert status["status"] == "ok", status
    assert {"avatar.glb", "viewer.html"} <= set(status["files"])
    glb = requests.get(f"{api.base}{status['links']['files']['avatar.glb']}", headers=api.auth, timeout=60)
    assert glb.status_code == 200 and glb.headers["content-type"] == "model/gltf-binary" and glb.content[:4] == b"glTF"
    url = f"{api.base}{status['links']['viewer']}"
    assert requests.get(url, timeout=60).status_code == 401  # same auth as the rest of the API
    page = requests.get(url, headers=api.auth, timeout=60)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.content == (api.store / "tenants" / tenant_id(KEY) / "avatars" / status["id"] / "viewer.html").read_bytes()
    with chromium_page(640, 400) as browser:
        requests_seen: list[str] = []
        browser.on("request", lambda request: requests_seen.append(request.url))
        browser.set_extra_http_headers(api.auth)
        browser.goto(url)
        state = wait_ready(browser)
        assert state["splatCount"] == FAST_PIPELINE["num_gaussians"] and set(state["clips"]) == {"walk", "wave"}
        browser.evaluate("() => window.viewerSettle()")
        shot = screenshot_array(browser).astype(int)
        browser.screenshot(path=str(api.store.parent / "served_viewer.png"))
    background = shot[-5:, :5].reshape(-1, 3).mean(0)
    centre = shot[100:300, 100:540]
    assert (np.abs(centre - background).sum(-1) > 60).mean() > 0.01  # the avatar is drawn in the middle
    # It fetched nothing but the page (its workers and assets come from blob:/data: URLs it makes itself).
    assert [u for u in requests_seen if not u.startswith((url, "blob:", "data:"))] == []


def test_avatar_job_with_synthesis_modes(api, samples_dir):
    """synthesis_mode=both runs the synthesis deployment (tiny SVD) and the fit uses its frames;
    it is another avatar than the plain one (the mode is part of the id)."""
    photo = (samples_dir / "man_hoodie_masked.png").read_bytes()
    r = requests.post(f"{api.base}/v1/avatars", files={"image": photo}, data={"synthesis_mode": "both"}, headers=api.auth, timeout=60)
    assert r.status_code == 202, r.text
    status = _wait_for(api, r.json()["id"])
    assert status["status"] == "ok", status
    assert status["synthesis_mode"] == "both" and "synthesize" in status["seconds"]
    assert status["quality"]["synthesis_refined"] == 1.0 and status["quality"]["fit_pseudo_labels"] == 4.0
    plain = requests.post(f"{api.base}/v1/avatars", files={"image": photo}, headers=api.auth, timeout=60).json()
    assert plain["id"] != status["id"]
    bad = requests.post(f"{api.base}/v1/avatars", files={"image": photo}, data={"synthesis_mode": "dream"}, headers=api.auth, timeout=60)
    assert bad.status_code == 422 and bad.json()["detail"]["reason"] == "bad_synthesis_mode"


def test_bad_inputs_get_specific_errors_and_replicas_stay_healthy(api, samples_dir):
    expected_status = {"empty_file": 422, "not_an_image": 415, "truncated_image": 422, "too_small": 422, "too_many_pixels": 422, "unsupported_format": 415, "no_person": 422}
    for name, (data, reason) in bad_files(samples_dir).items():
        r = requests.post(f"{api.base}/v1/track", files={"image": (name, data)}, headers=api.auth, timeout=300)
        assert (r.status_code, r.json()["detail"]["reason"]) == (expected_status[reason], reason), (name, r.text)
        assert r.json()["detail"]["detail"], name  # a sentence saying what was wrong
    photo = (samples_dir / "man_hoodie_masked.png").read_bytes()

    def post(path="/v1/track", **kwargs):
        kwargs.setdefault("headers", api.auth)
        return requests.post(f"{api.base}{path}", timeout=60, **kwargs)

    big = post(files={"image": ("big.png", b"\0" * (api.settings.max_upload_bytes + 1))})
    assert big.status_code == 413 and "max_upload_bytes" in big.json()["detail"]
    wrong_type = post(data=photo, headers={**api.auth, "Content-Type": "image/png"})
    assert wrong_type.status_code == 415 and wrong_type.json()["detail"]["reason"] == "unsupported_media_type"
    no_key = post(files={"image": photo}, headers={})
    assert no_key.status_code == 401 and no_key.headers["www-authenticate"].startswith("Bearer")
    bad_key = post(files={"image": photo}, headers={"Authorization": "Bearer not-the-key"})
    assert bad_key.status_code == 401 and bad_key.json()["detail"] == "invalid API key"
    url = post(json={"url": "http://169.254.169.254/latest/meta-data"})
    assert url.status_code == 422 and url.json()["detail"]["reason"] == "urls_not_fetched"
    not_b64 = post(json={"image": "***not base64***"})
    assert not_b64.status_code == 422 and not_b64.json()["detail"]["reason"] == "bad_base64"
    no_image = post(data={"preset": "preview"})
    assert no_image.status_code == 422 and no_image.json()["detail"]["reason"] == "missing_image"
    bad_preset = post("/v1/avatars", files={"image": photo}, data={"preset": "ultra"})
    assert bad_preset.status_code == 422 and bad_preset.json()["detail"]["reason"] == "bad_preset"
    for avatar in ("..", "..%2F..%2Fetc%2Fpasswd", "0" * 19 + "g", "0" * 20):
        r = requests.get(f"{api.base}/v1/avatars/{avatar}", headers=api.auth, timeout=60)
        assert r.status_code == 404, (avatar, r.text)
    traversal = requests.get(f"{api.base}/v1/avatars/{'0' * 20}/files/..%2F..%2Fjob_config.yaml", headers=api.auth, timeout=60)
    assert traversal.status_code == 404
    # Replicas are still healthy and serve a normal request.
    assert requests.get(f"{api.base}/readyz", timeout=30).status_code == 200
    ok = post(files={"image": photo})
    assert ok.status_code == 200, ok.text


def test_overload_sheds_excess_quickly_and_finishes_accepted(api, samples_dir):
    photo = (samples_dir / "man_hoodie_masked.png").read_bytes()
    capacity = MAX_INFLIGHT
    burst = 4 * capacity

    def call(_):
        t = time.monotonic()
        r = requests.post(f"{api.base}/v1/track", files={"image": photo}, headers=api.auth, timeout=600)
        return r.status_code, time.monotonic() - t

    with ThreadPoolExecutor(burst) as pool:
        results = list(pool.map(call, range(burst)))
    codes = [c for c, _ in results]
    assert set(codes) <= {200, 503}, codes
    accepted = [s for c, s in results if c == 200]
    shed = [s for c, s in results if c == 503]
    assert 1 <= len(accepted) <= capacity and len(shed) >= burst - capacity, codes
    # Shed requests are answered before any accepted one finishes: they did not wait in line.
    assert max(shed) < min(accepted), (shed, accepted)
    assert requests.get(f"{api.base}/readyz", timeout=30).status_code == 200


def test_the_api_decodes_at_most_its_own_pixel_limit():
    """A request's decoding is bounded by the API's pixel limit (below the batch job's): a 170 KB
    PNG of 6300 x 6300 would hold 160 MB while it decodes."""
    import yaml

    from avatar_ops.io.image import DecodeConfig, decode_image
    from serve.config import API_MAX_PIXELS, ServeSettings
    from tests.inputs import png_bytes

    assert API_MAX_PIXELS < DecodeConfig().max_pixels
    assert ServeSettings(auth="disabled").pipeline.decode.max_pixels == API_MAX_PIXELS
    for name in ("config.yaml", "local.yaml"):
        app = yaml.safe_load((REPO / "serve" / name).read_text())["applications"][0]["args"]
        assert ServeSettings.model_validate({**app, "auth": "disabled"}).pipeline.decode.max_pixels <= API_MAX_PIXELS, name
    wide = png_bytes(np.zeros((6300, 6300), np.uint8))
    assert len(wide) < 300_000
    out = decode_image(wide, ServeSettings(auth="disabled").pipeline.decode)
    assert out.reason == "too_many_pixels" and "6300x6300" in out.detail
