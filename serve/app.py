"""The online API: a FastAPI ingress over one Serve deployment per operator stage.

``build_app`` is the typed application builder used by ``serve/config.yaml``
(``import_path: serve.app:build_app``); ``build_application`` also takes per-deployment options
(the ``deployments`` section of that file) and is what ``avatar-forge serve`` calls.

Endpoints (all under ``/v1`` need ``Authorization: Bearer KEY`` unless ``auth: disabled``):

- ``POST /v1/track``: one photo -> body parameters, camera, keypoints, quality.
- ``POST /v1/avatars``: one photo and options -> 202 and an avatar id; the work runs in the
  background on the stage deployments (200 when that photo and config already finished).
- ``GET /v1/avatars/{id}``: status, reason, timings, files; ``GET /v1/avatars/{id}/files/{name}``.
- ``POST /v1/avatars/{id}/animate``: a bundled clip or an uploaded SMPL-X ``.npz`` -> GIF or MP4.
- ``GET /healthz`` (liveness), ``GET /readyz`` (every stage answers), ``/openapi.json``, ``/docs``.

Photos come in the request (multipart field ``image``, or JSON ``{"image": base64}``); the
server never fetches a URL a client sends.
"""

import asyncio
import base64
import binascii
import json
import time
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import UploadFile

from avatar_forge.metrics import ServeMetrics
from avatar_ops.io.image import DecodedImage, decode_image
from avatar_ops.stages.codec import payload_from_bytes, payload_to_bytes
from avatar_ops.stages.config import avatar_id
from avatar_ops.stages.payload import Payload
from avatar_ops.stages.stage import chain
from avatar_ops.types import PRESETS, STAGE_KINDS, SYNTHESIS_MODES, Rejected
from serve.adapter import StageDeployment
from serve.config import ServeSettings
from serve.guard import GuardMiddleware, configure_guard
from serve.store import CONTENT_TYPES, FINAL, AvatarStore, valid_id

API_VERSION = "v1"
#: Decoder rejections that mean "this is not a photo we take" (415); the rest are 422.
UNSUPPORTED_TYPE = ("not_an_image", "unsupported_format")
OPTION_FIELDS = {"preset", "synthesis_mode", "keypoints", "clip", "format", "frames", "size"}
#: Default Serve options per deployment (the ingress, then one per stage, named by its kind);
#: ``serve/config.yaml`` or ``build_application`` override them.
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "AvatarAPI": {"max_ongoing_requests": 32, "max_queued_requests": 64, "ray_actor_options": {"num_cpus": 0.1}},
    "track": {"max_ongoing_requests": 8, "ray_actor_options": {"num_cpus": 0.25}},
    "reconstruct": {"max_ongoing_requests": 4, "ray_actor_options": {"num_cpus": 0.25}},
    "synthesize": {"max_ongoing_requests": 2, "ray_actor_options": {"num_cpus": 0.25}},
    "fit": {"max_ongoing_requests": 2, "ray_actor_options": {"num_cpus": 0.25}},
    "export": {"max_ongoing_requests": 4, "ray_actor_options": {"num_cpus": 0.25}},
}


api = FastAPI(
    title="avatar-forge",
    version=API_VERSION,
    description="Photos of people -> animatable 3D Gaussian avatars. Send photos as multipart `image` or JSON base64; URLs are never fetched.",
)
api.add_middleware(GuardMiddleware)

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {"image": {"type": "string", "format": "binary"}, "preset": {"type": "string", "enum": list(PRESETS)}, "keypoints": {"type": "string", "description": "COCO-17 or OpenPose BODY_25 JSON"}}}},
            "application/json": {"schema": {"type": "object", "required": ["image"], "properties": {"image": {"type": "string", "format": "byte"}, "preset": {"type": "string", "enum": list(PRESETS)}, "keypoints": {}}}},
        },
    }
}
_ANIMATE_BODY = {
    "requestBody": {
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {"clip": {"type": "string"}, "motion": {"type": "string", "format": "binary", "description": "SMPL-X .npz"}, "format": {"type": "string", "enum": ["gif", "mp4"]}, "frames": {"type": "integer"}, "size": {"type": "integer"}}}},
            "application/json": {"schema": {"type": "object", "properties": {"clip": {"type": "string"}, "motion": {"type": "string", "format": "byte"}, "format": {"type": "string", "enum": ["gif", "mp4"]}, "frames": {"type": "integer"}, "size": {"type": "integer"}}}},
        }
    }
}


def _client_detail(detail: str) -> str:
    """What a client sees of a failure's detail: its first line (the traceback stays in the log)."""
    return detail.split("\n", 1)[0]


def _http_error(status: int, reason: str, detail: str) -> HTTPException:
    return HTTPException(status_code=status, detail={"reason": reason, "detail": detail})


def _decode_error(rejected: Rejected) -> HTTPException:
    return _http_error(415 if rejected.reason in UNSUPPORTED_TYPE else 422, rejected.reason, rejected.detail)


async def read_request(request: Request, file_fields: tuple[str, ...]) -> tuple[dict[str, bytes], dict[str, Any]]:
    """(files, options) of a multipart or JSON request; anything else is 415. In JSON, file
    fields are base64 strings."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    files: dict[str, bytes] = {}
    options: dict[str, Any] = {}
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form(max_files=len(file_fields), max_fields=len(OPTION_FIELDS) + len(file_fields))
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key not in file_fields:
                    raise _http_error(422, "unexpected_field", f"file field {key!r} is not one of {list(file_fields)}")
                files[key] = await value.read()
            else:
                options[key] = value
    elif content_type == "application/json":
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise _http_error(422, "bad_json", f"the body is not valid JSON: {err}") from err
        if not isinstance(body, dict):
            raise _http_error(422, "bad_json", f"the body must be a JSON object, got {type(body).__name__}")
        for key, value in body.items():
            if key in file_fields:
                if not isinstance(value, str):
                    raise _http_error(422, "bad_base64", f"`{key}` must be a base64 string, got {type(value).__name__}")
                try:
                    files[key] = base64.b64decode(value, validate=True)
                except (binascii.Error, ValueError) as err:
                    raise _http_error(422, "bad_base64", f"`{key}` is not valid base64: {err}") from err
            else:
                options[key] = value
    else:
        raise _http_error(415, "unsupported_media_type", f"Content-Type must be multipart/form-data, application/x-www-form-urlencoded or application/json, got {content_type or 'none'!r}")
    unknown = set(options) - OPTION_FIELDS
    if unknown & {"url", "uri", "image_url", "source"}:
        raise _http_error(422, "urls_not_fetched", "this API never fetches URLs: send the image's bytes (multipart `image` or base64 JSON)")
    if unknown:
        raise _http_error(422, "unexpected_field", f"unknown fields {sorted(unknown)}; accepted: {sorted(OPTION_FIELDS | set(file_fields))}")
    return files, options


def _choice(options: dict, key: str, allowed: tuple[str, ...], default: str | None) -> str | None:
    value = options.get(key, default)
    if value is not None and value not in allowed:
        raise _http_error(422, f"bad_{key}", f"`{key}` must be one of {list(allowed)}, got {value!r}")
    return value


def _int_option(options: dict, key: str, default: int, low: int, high: int) -> int:
    value = options.get(key, default)
    try:
        number = int(value)
    except (TypeError, ValueError) as err:
        raise _http_error(422, f"bad_{key}", f"`{key}` must be an integer, got {value!r}") from err
    if not low <= number <= high:
        raise _http_error(422, f"bad_{key}", f"`{key}` must be in [{low}, {high}], got {number}")
    return number


@serve.deployment
@serve.ingress(api)
class AvatarAPI:
    """The ingress: validates requests, calls the stage deployments, keeps avatar jobs' status."""

    def __init__(self, settings_json: str, *stages: DeploymentHandle) -> None:
        """``stages``: one handle per stage kind, in :data:`~avatar_ops.types.STAGE_KINDS` order."""
        if len(stages) != len(STAGE_KINDS):
            raise ValueError(f"AvatarAPI needs one deployment per stage {STAGE_KINDS}, got {len(stages)}.")
        self.settings = ServeSettings.model_validate_json(settings_json)
        keys = self.settings.all_api_keys() if self.settings.auth == "api_key" else None
        self.metrics = ServeMetrics()
        configure_guard(keys, self.settings.max_upload_bytes, self.settings.max_inflight_requests, self.metrics)
        self.stages: dict[str, DeploymentHandle] = dict(zip(STAGE_KINDS, stages))
        self.store = AvatarStore(self.settings.storage)
        self.jobs: dict[str, asyncio.Task] = {}
        self.slots = asyncio.Semaphore(self.settings.max_concurrent_avatars)

    def check_health(self) -> None:
        from avatar_ops.io import storage

        storage.exists(self.settings.storage)  # raises when the store cannot be reached

    # ---- helpers -------------------------------------------------------------------------
    async def _decode(self, data: bytes | None) -> DecodedImage:
        if data is None:
            raise _http_error(422, "missing_image", "send the photo in the field `image`")
        decoded = await asyncio.to_thread(decode_image, data, self.settings.pipeline.decode)
        if isinstance(decoded, Rejected):
            raise _decode_error(decoded)
        return decoded

    async def _call(self, response, what: str) -> dict:
        try:
            return await asyncio.wait_for(response, timeout=self.settings.request_timeout_s)
        except asyncio.TimeoutError as err:
            raise _http_error(504, "timeout", f"{what} took longer than request_timeout_s={self.settings.request_timeout_s}") from err

    def _status_body(self, status: dict) -> dict:
        base = f"/{API_VERSION}/avatars/{status['id']}"
        files = sorted(status.get("files") or [])
        stale = status["status"] in ("queued", "running") and status["id"] not in self.jobs and time.time() - status.get("updated_at", 0) > self.settings.request_timeout_s * 10
        if stale:
            status = {**status, "status": "failed", "reason": "interrupted", "detail": "the job stopped updating (its replica restarted?); POST the photo again to redo it"}
        return {**{k: v for k, v in status.items() if k != "files"}, "files": files, "links": {"self": base, "files": {n: f"{base}/files/{n}" for n in files}, "animate": f"{base}/animate"}}

    async def _status(self, avatar: str) -> dict:
        if not valid_id(avatar):
            raise _http_error(404, "unknown_avatar", f"no avatar {avatar!r}: ids are 20 lowercase hex digits")
        status = await asyncio.to_thread(self.store.read_status, avatar)
        if status is None:
            raise _http_error(404, "unknown_avatar", f"no avatar {avatar!r}")
        return status

    # ---- health --------------------------------------------------------------------------
    @api.get("/healthz", tags=["health"])
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/readyz", tags=["health"])
    async def readyz(self) -> JSONResponse:
        ready = {}
        for name, handle in self.stages.items():
            try:
                await asyncio.wait_for(handle.ready.remote(), timeout=5)
                ready[name] = True
            except Exception:  # noqa: BLE001 - any failure means "not ready"
                ready[name] = False
        return JSONResponse({"ready": all(ready.values()), "stages": ready}, status_code=200 if all(ready.values()) else 503)

    # ---- tracking ------------------------------------------------------------------------
    @api.post(f"/{API_VERSION}/track", tags=["tracking"], openapi_extra=_UPLOAD_BODY)
    async def track(self, request: Request) -> dict:
        """One photo -> the fitted body (SMPL-X pose convention), camera, keypoints, quality."""
        files, options = await read_request(request, ("image",))
        decoded = await self._decode(files.get("image"))
        keypoints = options.get("keypoints")
        if keypoints is not None:
            from avatar_ops.tracking.keypoints import parse_keypoints_json

            try:
                keypoints = parse_keypoints_json(keypoints if isinstance(keypoints, str) else json.dumps(keypoints))
            except ValueError as err:
                raise _http_error(422, "bad_keypoints", str(err)) from err
        payload = Payload("upload", image=decoded, keypoints=keypoints)
        result = payload_from_bytes(await self._call(self.stages["track"].remote(payload_to_bytes(payload)), "tracking"))
        if result.status == "rejected":
            raise _http_error(422, result.reason, result.detail)
        if result.status != "pending":
            raise _http_error(500, result.reason, _client_detail(result.detail))
        return result.track.to_json()

    # ---- avatars -------------------------------------------------------------------------
    @api.post(f"/{API_VERSION}/avatars", status_code=202, tags=["avatars"], openapi_extra=_UPLOAD_BODY)
    async def create_avatar(self, request: Request) -> JSONResponse:
        """Start an avatar job; 202 with its id (200 when the same photo and options already finished)."""
        files, options = await read_request(request, ("image",))
        preset = _choice(options, "preset", PRESETS, self.settings.pipeline.preset)
        mode = _choice(options, "synthesis_mode", SYNTHESIS_MODES, self.settings.pipeline.synthesis_mode)
        data = files.get("image")
        decoded = await self._decode(data)
        config = self.settings.pipeline_for(preset, mode)
        avatar = avatar_id(data, config.digest())
        existing = await asyncio.to_thread(self.store.read_status, avatar)
        if existing is not None and (existing["status"] in ("ok", "rejected") or avatar in self.jobs):
            return JSONResponse(self._status_body(existing), status_code=200 if existing["status"] in FINAL else 202)
        if len(self.jobs) >= self.settings.max_pending_avatars:
            self.metrics.rejected.inc(1, tags={"reason": "overload"})
            raise _http_error(503, "busy", f"{len(self.jobs)} avatar jobs pending, max_pending_avatars={self.settings.max_pending_avatars}; retry later")
        status = {"id": avatar, "status": "queued", "reason": "", "detail": "", "preset": preset, "synthesis_mode": mode, "seconds": {}, "quality": {}, "files": [], "created_at": time.time()}
        status = await asyncio.to_thread(self.store.write_status, status)
        self.jobs[avatar] = asyncio.create_task(self._make_avatar(status, decoded))
        self.metrics.jobs.inc(1, tags={"status": "queued"})
        self.metrics.pending.set(len(self.jobs))
        return JSONResponse(self._status_body(status), status_code=202)

    async def _make_avatar(self, status: dict, decoded: DecodedImage) -> None:
        """The stage chain on one photo, through the stage deployments, as payload bytes."""
        avatar, preset, mode = status["id"], status["preset"], status["synthesis_mode"]
        payload = Payload(f"upload:{avatar}", id=avatar, out_dir=self.store.folder(avatar), preset=preset, synthesis_mode=mode, image=decoded)
        try:
            async with self.slots:
                status = await asyncio.to_thread(self.store.write_status, {**status, "status": "running"})
                data = payload_to_bytes(payload)
                for kind in chain(self.settings.pipeline_for(preset, mode)):
                    data = await self.stages[kind].remote(data)
                payload = payload_from_bytes(data)
            if payload.status == "ok":
                final = {"status": "ok", "quality": payload.quality, "files": sorted(n.rsplit("/", 1)[-1] for n in payload.files.values())}
            else:
                final = {"status": payload.status, "reason": payload.reason, "detail": _client_detail(payload.detail)}
        except Exception as err:  # noqa: BLE001 - a job's failure is its status, never the replica's
            final = {"status": "failed", "reason": "exception", "detail": f"{type(err).__name__}: {err}"}
        finally:
            self.jobs.pop(avatar, None)
            self.metrics.pending.set(len(self.jobs))
        await asyncio.to_thread(self.store.write_status, {**status, **final, "seconds": payload.seconds})
        self.metrics.jobs.inc(1, tags={"status": final["status"]})

    @api.get(f"/{API_VERSION}/avatars/{{avatar}}", tags=["avatars"])
    async def get_avatar(self, avatar: str) -> dict:
        """Status (queued, running, ok, rejected, failed), reason, timings, quality and files."""
        return self._status_body(await self._status(avatar))

    @api.get(f"/{API_VERSION}/avatars/{{avatar}}/files/{{name}}", tags=["avatars"])
    async def get_file(self, avatar: str, name: str) -> StreamingResponse:
        """Stream one of the avatar's files (names as listed by GET /v1/avatars/{id})."""
        status = await self._status(avatar)
        if name not in (status.get("files") or []):
            raise _http_error(404, "unknown_file", f"avatar {avatar} has no file {name!r}; it has {sorted(status.get('files') or [])}")
        suffix = "." + name.rsplit(".", 1)[-1]
        return StreamingResponse(self.store.iter_file(avatar, name), media_type=CONTENT_TYPES.get(suffix, "application/octet-stream"))

    @api.post(f"/{API_VERSION}/avatars/{{avatar}}/animate", tags=["avatars"], openapi_extra=_ANIMATE_BODY)
    async def animate(self, avatar: str, request: Request) -> Response:
        """Render the avatar following a bundled clip (``clip``) or an uploaded SMPL-X ``.npz``
        (``motion``) as GIF (default) or MP4."""
        from avatar_ops.motion import bundled_clips, load_motion

        status = await self._status(avatar)
        if status["status"] != "ok":
            raise _http_error(409, "not_ready", f"avatar {avatar} is {status['status']}, not ok")
        files, options = await read_request(request, ("motion",))
        fmt = _choice(options, "format", ("gif", "mp4"), "gif")
        size = _int_option(options, "size", 256, 16, self.settings.max_animation_size)
        frames = _int_option(options, "frames", 60, 1, self.settings.max_animation_frames)
        if "motion" in files:
            motion: str | bytes = files["motion"]
            try:
                await asyncio.to_thread(load_motion, motion)
            except ValueError as err:
                raise _http_error(422, "bad_motion", str(err)) from err
        else:
            motion = options.get("clip", "wave")
            if motion not in bundled_clips():
                raise _http_error(422, "unknown_clip", f"`clip` must be one of {bundled_clips()} (or upload `motion`), got {motion!r}")
        uri = self.store.file_uri(avatar, "avatar.safetensors")
        data = await self._call(self.stages["export"].animate.remote(uri, motion, fmt, size, frames), "animation")
        return Response(data, media_type="image/gif" if fmt == "gif" else "video/mp4")


def build_application(settings: ServeSettings, options: dict[str, dict] | None = None) -> Application:
    """The app: the ingress and one deployment per stage (named by its kind: track, reconstruct,
    synthesize, fit, export), each made by the one adapter. ``options`` maps deployment names to Serve options (replicas, autoscaling,
    ``ray_actor_options``, queue limits) over :data:`DEFAULT_OPTIONS`."""
    options = options or {}
    unknown = set(options) - set(DEFAULT_OPTIONS)
    if unknown:
        raise ValueError(f"deployment options for unknown deployments {sorted(unknown)}; known: {sorted(DEFAULT_OPTIONS)}")

    def merged(name: str) -> dict:
        return {**DEFAULT_OPTIONS[name], **options.get(name, {})}

    ongoing = merged("AvatarAPI").get("max_ongoing_requests", 5)
    if ongoing < settings.max_inflight_requests:
        raise ValueError(
            f"AvatarAPI max_ongoing_requests ({ongoing}) must be at least max_inflight_requests ({settings.max_inflight_requests}), "
            "or the excess would wait in Serve's queue instead of getting 503 at once."
        )
    stage = serve.deployment(StageDeployment)
    pipeline_json = settings.pipeline.model_dump_json()
    batching = {"track": settings.track_batch, "reconstruct": settings.reconstruct_batch}

    def bind(kind: str):
        batch = batching.get(kind)
        return stage.options(name=kind, **merged(kind)).bind(kind, pipeline_json, batch.model_dump_json() if batch else None, settings.threads)

    return AvatarAPI.options(**merged("AvatarAPI")).bind(settings.model_dump_json(), *(bind(kind) for kind in STAGE_KINDS))


def build_app(args: ServeSettings) -> Application:
    """Typed builder for ``serve run`` / ``serve deploy`` (``import_path: serve.app:build_app``):
    Serve validates the config's ``args`` against :class:`ServeSettings`."""
    return build_application(args if isinstance(args, ServeSettings) else ServeSettings.model_validate(args))
