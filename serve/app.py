"""The online API: a FastAPI ingress over one Serve deployment per operator stage.

``build_app`` is the typed application builder used by ``serve/config.yaml``
(``import_path: serve.app:build_app``); ``build_application`` also takes per-deployment options
(the ``deployments`` section of that file) and is what ``avatar-forge serve`` calls.

Endpoints (every one but ``/healthz`` and ``/readyz``, and the docs with ``open_docs``, needs
``Authorization: Bearer KEY`` unless ``auth: disabled``, under any route prefix):

- ``POST /v1/track``: one photo -> body parameters, camera, keypoints, quality.
- ``POST /v1/avatars``: one photo and options -> 202 and an avatar id; the work runs in the
  background on the stage deployments (200 when that photo and config already finished).
- ``GET /v1/avatars/{id}``: status, reason, timings, files; ``GET /v1/avatars/{id}/files/{name}``;
  ``GET /v1/avatars/{id}/viewer``: the avatar's self-contained viewer page.
- ``POST /v1/avatars/{id}/animate``: a bundled clip or an uploaded SMPL-X ``.npz`` -> GIF or MP4.
- ``GET /healthz`` (liveness), ``GET /readyz`` (every stage answers; cached for
  ``readyz_cache_s``), ``/openapi.json``, ``/docs``.

Photos come in the request (multipart field ``image``, or JSON ``{"image": base64}``); the
server never fetches a URL a client sends.

Avatars belong to the tenant of the API key that made them (:mod:`serve.store`). A client gets a
reason and a short detail, never a traceback or a server path: those go to the replica's log
under the request id that every answer carries (``X-Request-ID`` and ``request_id``).

Avatar jobs: the pending slot is reserved before the handler awaits anything, so concurrent
POSTs of one photo start one job; the replica that creates the job's lease in the store runs it,
so two ingress replicas never both do; a running job refreshes its status every ``heartbeat_s``.
Every stage call has a timeout and is cancelled (``DeploymentResponse.cancel``) past it; it also
carries that deadline, and the stage cancels it itself should the cancel be lost.
"""

import asyncio
import base64
import binascii
import dataclasses
import json
import logging
import struct
import time
import uuid
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve import Application
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from avatar_forge.metrics import ServeMetrics
from avatar_ops.io.image import DecodedImage, decode_image
from avatar_ops.stages.codec import payload_from_bytes, payload_to_bytes
from avatar_ops.stages.config import avatar_id
from avatar_ops.stages.payload import Payload
from avatar_ops.stages.stage import chain
from avatar_ops.types import PRESETS, STAGE_KINDS, SYNTHESIS_MODES, Rejected
from serve.adapter import StageDeployment
from serve.config import ServeSettings
from serve.guard import GuardMiddleware, configure_guard, request_id, tenant
from serve.store import CONTENT_TYPES, FINAL, VIEWER_HEADERS, AvatarStore, valid_id

log = logging.getLogger("ray.serve")

API_VERSION = "v1"
#: Decoder rejections that mean "this is not a photo we take" (415); the rest are 422.
UNSUPPORTED_TYPE = ("not_an_image", "unsupported_format")
#: What image decoders raise on malformed data or metadata (PIL raises all of these); a 422
#: ``unreadable``, the traceback in the log. Anything else is a bug: a 500, without a traceback.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError, ZeroDivisionError, OverflowError, struct.error)
#: A queued or running job whose status is older than this many heartbeats is taken as dead.
STALE_HEARTBEATS = 4
#: Longest wait for a stage's ``ready`` in /readyz.
READY_TIMEOUT_S = 5.0
#: A stage call's own deadline (``serve.adapter.within``) falls this long after the ingress's
#: timeout: the ingress cancels first, and clocks a little apart across nodes cut no call short.
DEADLINE_GRACE_S = 1.0
OPTION_FIELDS = {"preset", "synthesis_mode", "keypoints", "clip", "format", "frames", "size"}
#: Default Serve options per deployment (the ingress, then one per stage, named by its kind);
#: ``serve/config.yaml`` or ``build_application`` override them.
#: Every stage's queue is bounded (``max_queued_requests``, per calling ingress replica): a full
#: queue answers a synchronous call with 503 at once, and a job's call retries until its timeout.
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "AvatarAPI": {"max_ongoing_requests": 32, "max_queued_requests": 64, "ray_actor_options": {"num_cpus": 0.1}},
    "track": {"max_ongoing_requests": 8, "max_queued_requests": 64, "ray_actor_options": {"num_cpus": 0.25}},
    "reconstruct": {"max_ongoing_requests": 4, "max_queued_requests": 16, "ray_actor_options": {"num_cpus": 0.25}},
    "synthesize": {"max_ongoing_requests": 2, "max_queued_requests": 16, "ray_actor_options": {"num_cpus": 0.25}},
    "fit": {"max_ongoing_requests": 2, "max_queued_requests": 16, "ray_actor_options": {"num_cpus": 0.25}},
    "export": {"max_ongoing_requests": 4, "max_queued_requests": 64, "ray_actor_options": {"num_cpus": 0.25}},
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
    """What a client sees of a rejection's detail: its first line, at most 300 characters."""
    return detail.split("\n", 1)[0][:300]


def _short(err: BaseException) -> str:
    return _client_detail(str(err))


def _http_error(status: int, reason: str, detail: str, headers: dict[str, str] | None = None) -> HTTPException:
    return HTTPException(status_code=status, detail={"reason": reason, "detail": detail}, headers=headers)


def _decode_error(rejected: Rejected) -> HTTPException:
    return _http_error(415 if rejected.reason in UNSUPPORTED_TYPE else 422, rejected.reason, rejected.detail)


@api.exception_handler(StarletteHTTPException)
async def _http_exception(request: Request, exc: StarletteHTTPException) -> Response:
    """Every HTTP error as ``{"detail", "request_id"}``."""
    if exc.status_code < 200 or exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return JSONResponse({"detail": exc.detail, "request_id": request_id(request.scope)}, status_code=exc.status_code, headers=exc.headers)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"JSON constant {name} is not allowed: numbers must be finite")


def _json_body(raw: bytes) -> Any:
    """The request's JSON; 422 ``bad_json`` for anything malformed (bad syntax or encoding, NaN
    or Infinity, integers past Python's digit limit, nesting past the parser's depth)."""
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError as err:
        raise _http_error(422, "bad_json", "the body is nested too deeply") from err
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError and over-long integers are ValueErrors
        raise _http_error(422, "bad_json", f"the body is not valid JSON: {_short(err)}") from err


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
        body = _json_body(await request.body())
        if not isinstance(body, dict):
            raise _http_error(422, "bad_json", f"the body must be a JSON object, got {type(body).__name__}")
        for key, value in body.items():
            if key in file_fields:
                if not isinstance(value, str):
                    raise _http_error(422, "bad_base64", f"`{key}` must be a base64 string, got {type(value).__name__}")
                try:
                    files[key] = base64.b64decode(value, validate=True)
                except (binascii.Error, ValueError) as err:
                    raise _http_error(422, "bad_base64", f"`{key}` is not valid base64: {_short(err)}") from err
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
        raise _http_error(422, f"bad_{key}", f"`{key}` must be one of {list(allowed)}, got {_client_detail(repr(value))}")
    return value


def _int_option(options: dict, key: str, default: int, low: int, high: int) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _http_error(422, f"bad_{key}", f"`{key}` must be an integer, got {type(value).__name__}")
    try:
        number = int(value)
    except ValueError as err:  # not digits, or more digits than Python converts
        raise _http_error(422, f"bad_{key}", f"`{key}` must be an integer, got {_client_detail(repr(value))[:40]}") from err
    if not low <= number <= high:
        raise _http_error(422, f"bad_{key}", f"`{key}` must be in [{low}, {high}], got {_client_detail(str(number))[:40]}")
    return number


def _keypoints(value: Any) -> list | None:
    """Keypoints given with a photo (JSON text, or already parsed from a JSON body); the parser
    in :mod:`avatar_ops.tracking.keypoints` says what is wrong with a ValueError (422)."""
    from avatar_ops.tracking.keypoints import parse_keypoints_json

    if value is None:
        return None
    try:
        return parse_keypoints_json(value if isinstance(value, str) else json.dumps(value))
    except ValueError as err:
        raise _http_error(422, "bad_keypoints", _short(err)) from err


class StageTimeout(Exception):
    """A stage call took longer than its timeout (and was cancelled)."""


@dataclasses.dataclass
class _Job:
    """An avatar job of this replica: its last written status, the lock its writers take, its
    task, and whether a later attempt (another replica) took it over."""

    status: dict
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    done: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    lost: bool = False


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
        configure_guard(keys, self.settings.max_upload_bytes, self.settings.max_inflight_requests, self.metrics, open_docs=self.settings.open_docs)
        self.stages: dict[str, DeploymentHandle] = dict(zip(STAGE_KINDS, stages))
        self.store = AvatarStore(self.settings.storage)
        self.replica = uuid.uuid4().hex  # lease owner
        self.jobs: dict[tuple[str, str], _Job] = {}  # (tenant, avatar id) -> job
        self.slots = asyncio.Semaphore(self.settings.max_concurrent_avatars)
        self._ready_lock = asyncio.Lock()
        self._ready: dict[str, bool] = {}
        self._ready_until = 0.0

    def check_health(self) -> None:
        from avatar_ops.io import storage

        storage.exists(self.settings.storage)  # raises when the store cannot be reached

    # ---- helpers -------------------------------------------------------------------------
    async def _decode(self, data: bytes | None, rid: str) -> DecodedImage:
        if data is None:
            raise _http_error(422, "missing_image", "send the photo in the field `image`")
        try:
            decoded = await asyncio.to_thread(decode_image, data, self.settings.pipeline.decode)
        except DECODE_ERRORS as err:
            log.warning("request %s: decoding the upload raised", rid, exc_info=err)
            raise _http_error(422, "unreadable", "the image's data or metadata could not be decoded") from err
        if isinstance(decoded, Rejected):
            raise _decode_error(decoded)
        return decoded

    async def _call(self, response: DeploymentResponse, what: str, timeout_s: float, setting: str) -> Any:
        """A stage call's result; past ``timeout_s``, or when this request is cancelled (the client
        went away), the call is cancelled on the stage too."""
        try:
            return await asyncio.wait_for(response, timeout=timeout_s)
        except asyncio.TimeoutError as err:
            response.cancel()
            raise StageTimeout(f"{what} took longer than {setting}={timeout_s:g} s") from err
        except asyncio.CancelledError:
            response.cancel()
            raise

    def _deadline(self, timeout_s: float) -> float:
        """The ``deadline`` a stage call made now with ``timeout_s`` carries (``time.time()``
        epoch): past it the stage cancels the call itself, should the ingress's cancel be lost."""
        return time.time() + timeout_s + DEADLINE_GRACE_S

    async def _sync_call(self, response: DeploymentResponse, what: str) -> Any:
        """A stage call a client waits for: 504 past ``request_timeout_s``, 503 when the stage's
        queue is full."""
        try:
            return await self._call(response, what, self.settings.request_timeout_s, "request_timeout_s")
        except StageTimeout as err:
            raise _http_error(504, "timeout", str(err)) from err
        except BackPressureError as err:
            self.metrics.rejected.inc(1, tags={"reason": "overload"})
            raise _http_error(503, "busy", f"{what}: the stage's queue is full; retry later", {"Retry-After": "1"}) from err

    async def _job_call(self, kind: str, data: bytes) -> bytes:
        """One stage call of an avatar job: cancelled after ``job_stage_timeout_s``; a full stage
        queue is retried (backing off) within that time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.job_stage_timeout_s
        delay = 0.25
        while True:
            try:
                left = max(deadline - loop.time(), 0.0)
                return await self._call(self.stages[kind].remote(data, deadline=self._deadline(left)), f"the {kind} stage", left, "job_stage_timeout_s")
            except BackPressureError as err:
                if loop.time() + delay >= deadline:
                    raise StageTimeout(f"the {kind} stage's queue stayed full for job_stage_timeout_s={self.settings.job_stage_timeout_s:g} s") from err
                await asyncio.sleep(delay)
                delay = min(2 * delay, 5.0)

    def _stale(self, status: dict) -> bool:
        """A queued or running job that stopped heartbeating (its replica died)."""
        silent = time.time() - status.get("updated_at", 0)
        return status["status"] in ("queued", "running") and silent > STALE_HEARTBEATS * self.settings.heartbeat_s

    def _status_body(self, request: Request, status: dict) -> dict:
        base = f"{request.scope.get('root_path', '').rstrip('/')}/{API_VERSION}/avatars/{status['id']}"
        files = sorted(status.get("files") or [])
        if (tenant(request.scope), status["id"]) not in self.jobs and self._stale(status):
            status = {**status, "status": "failed", "reason": "interrupted", "detail": "the job stopped updating (its replica restarted?); POST the photo again to redo it"}
        return {**{k: v for k, v in status.items() if k != "files"}, "files": files, "links": {"self": base, "files": {n: f"{base}/files/{n}" for n in files}, "animate": f"{base}/animate", "viewer": f"{base}/viewer"}}

    async def _status(self, request: Request, avatar: str) -> dict:
        if not valid_id(avatar):
            raise _http_error(404, "unknown_avatar", f"no avatar {_client_detail(repr(avatar))[:60]}: ids are 20 lowercase hex digits")
        status = await asyncio.to_thread(self.store.read_status, tenant(request.scope), avatar)
        if status is None:
            raise _http_error(404, "unknown_avatar", f"no avatar {avatar!r}")
        return status

    async def _write(self, owner: str, job: _Job, changes: dict) -> bool:
        """Write the job's status with ``changes`` (and a fresh ``updated_at``), unless a later
        attempt has taken the job over: then nothing, and False."""
        async with job.lock:
            if job.lost:
                return False
            avatar, attempt = job.status["id"], job.status["attempt"]
            if await asyncio.to_thread(self.store.lease_superseded, owner, avatar, attempt):
                job.lost = True
                log.warning("avatar %s/%s: attempt %d was taken over by a later one; this replica stops it", owner, avatar, attempt)
                return False
            job.status = await asyncio.to_thread(self.store.write_status, owner, {**job.status, **changes})
            return True

    async def _heartbeat(self, owner: str, job: _Job) -> None:
        """Refresh the job's ``updated_at`` every ``heartbeat_s`` until it is done; stop the job
        when another replica took it over."""
        while not job.done.is_set():
            try:
                await asyncio.wait_for(job.done.wait(), timeout=self.settings.heartbeat_s)
                return
            except asyncio.TimeoutError:
                pass
            try:
                kept = await self._write(owner, job, {})
            except OSError as err:  # the store is unreachable for now: the next beat tries again
                log.warning("avatar %s/%s: heartbeat not written: %s", owner, job.status["id"], err)
                continue
            if not kept and job.task is not None:
                job.task.cancel()
                return

    # ---- health --------------------------------------------------------------------------
    @api.get("/healthz", tags=["health"])
    async def healthz(self) -> dict:
        return {"status": "ok"}

    async def _stage_ready(self, name: str, handle: DeploymentHandle) -> bool:
        try:
            await self._call(handle.ready.remote(), f"the {name} stage's ready", READY_TIMEOUT_S, "READY_TIMEOUT_S")
        except BackPressureError:
            return True  # its replicas are up and answering, with a full queue: busy, not down
        except Exception as err:  # noqa: BLE001 - any failure means "not ready"
            log.info("readiness: the %s stage is not ready: %s", name, _short(err))
            return False
        return True

    @api.get("/readyz", tags=["health"])
    async def readyz(self) -> JSONResponse:
        """Every stage answers. One check at a time, its answer reused for ``readyz_cache_s`` (a
        not-ready one for at most 1 s), so probes cost the stages a bounded number of calls."""
        async with self._ready_lock:
            if time.monotonic() >= self._ready_until:
                results = await asyncio.gather(*(self._stage_ready(name, h) for name, h in self.stages.items()))
                self._ready = dict(zip(self.stages, results))
                ttl = self.settings.readyz_cache_s if all(results) else min(1.0, self.settings.readyz_cache_s)
                self._ready_until = time.monotonic() + ttl
            ready = dict(self._ready)
        return JSONResponse({"ready": all(ready.values()), "stages": ready}, status_code=200 if all(ready.values()) else 503)

    # ---- tracking ------------------------------------------------------------------------
    @api.post(f"/{API_VERSION}/track", tags=["tracking"], openapi_extra=_UPLOAD_BODY)
    async def track(self, request: Request) -> dict:
        """One photo -> the fitted body (SMPL-X pose convention), camera, keypoints, quality."""
        rid = request_id(request.scope)
        files, options = await read_request(request, ("image",))
        decoded = await self._decode(files.get("image"), rid)
        payload = Payload("upload", image=decoded, keypoints=_keypoints(options.get("keypoints")))
        result = payload_from_bytes(await self._sync_call(self.stages["track"].remote(payload_to_bytes(payload), deadline=self._deadline(self.settings.request_timeout_s)), "tracking"))
        if result.status == "rejected":
            raise _http_error(422, result.reason, _client_detail(result.detail))
        if result.status != "pending":
            log.error("request %s: tracking %s: %s: %s", rid, result.status, result.reason, result.detail)
            raise _http_error(500, result.reason, f"tracking failed; the server log has the details under request id {rid}")
        return result.track.to_json()

    # ---- avatars -------------------------------------------------------------------------
    @api.post(f"/{API_VERSION}/avatars", status_code=202, tags=["avatars"], openapi_extra=_UPLOAD_BODY)
    async def create_avatar(self, request: Request) -> JSONResponse:
        """Start an avatar job; 202 with its id (200 when the same photo and options already finished)."""
        owner, rid = tenant(request.scope), request_id(request.scope)
        files, options = await read_request(request, ("image",))
        preset = _choice(options, "preset", PRESETS, self.settings.pipeline.preset)
        mode = _choice(options, "synthesis_mode", SYNTHESIS_MODES, self.settings.pipeline.synthesis_mode)
        data = files.get("image")
        decoded = await self._decode(data, rid)
        config = self.settings.pipeline_for(preset, mode)
        avatar = avatar_id(data, config.digest())
        key = (owner, avatar)
        existing = await asyncio.to_thread(self.store.read_status, owner, avatar)
        # From here until the job is reserved nothing awaits: of concurrent POSTs of one photo,
        # the first reserves the job and the others see it.
        if key in self.jobs:
            return JSONResponse(self._status_body(request, self.jobs[key].status), status_code=202)
        if existing is not None and (existing["status"] in ("ok", "rejected") or (existing["status"] in ("queued", "running") and not self._stale(existing))):
            return JSONResponse(self._status_body(request, existing), status_code=200 if existing["status"] in FINAL else 202)
        if len(self.jobs) >= self.settings.max_pending_avatars:
            self.metrics.rejected.inc(1, tags={"reason": "overload"})
            raise _http_error(503, "busy", f"{len(self.jobs)} avatar jobs pending, max_pending_avatars={self.settings.max_pending_avatars}; retry later", {"Retry-After": "1"})
        attempt, now = int((existing or {}).get("attempt", 0)) + 1, time.time()
        status = {"id": avatar, "status": "queued", "reason": "", "detail": "", "preset": preset, "synthesis_mode": mode, "seconds": {}, "quality": {}, "files": [], "created_at": now, "updated_at": now, "attempt": attempt}
        job = self.jobs[key] = _Job(status)
        self.metrics.pending.set(len(self.jobs))
        try:
            leased = await asyncio.to_thread(self.store.take_lease, owner, avatar, attempt, self.replica)
            if leased:
                await self._write(owner, job, {})
        except BaseException:
            self._forget(key)
            raise
        if not leased or job.lost:  # another replica runs this attempt (its status may not be written yet)
            self._forget(key)
            current = await asyncio.to_thread(self.store.read_status, owner, avatar)
            if current is None or int(current.get("attempt", 0)) < attempt:
                current = status
            return JSONResponse(self._status_body(request, current), status_code=202)
        job.task = asyncio.create_task(self._make_avatar(owner, job, decoded, rid))
        self.metrics.jobs.inc(1, tags={"status": "queued"})
        return JSONResponse(self._status_body(request, job.status), status_code=202)

    def _forget(self, key: tuple[str, str]) -> None:
        self.jobs.pop(key, None)
        self.metrics.pending.set(len(self.jobs))

    async def _make_avatar(self, owner: str, job: _Job, decoded: DecodedImage, rid: str) -> None:
        """The stage chain on one photo, through the stage deployments, as payload bytes."""
        avatar, preset, mode = job.status["id"], job.status["preset"], job.status["synthesis_mode"]
        payload = Payload(f"upload:{avatar}", id=avatar, out_dir=self.store.folder(owner, avatar), preset=preset, synthesis_mode=mode, image=decoded)
        heartbeat = asyncio.create_task(self._heartbeat(owner, job))
        where = f"the server log has the details under request id {rid}"
        try:
            async with self.slots:
                if await self._write(owner, job, {"status": "running"}):
                    data = payload_to_bytes(payload)
                    for kind in chain(self.settings.pipeline_for(preset, mode)):
                        data = await self._job_call(kind, data)
                    payload = payload_from_bytes(data)
            if payload.status == "ok":
                final = {"status": "ok", "quality": payload.quality, "files": sorted(n.rsplit("/", 1)[-1] for n in payload.files.values())}
            elif payload.status == "rejected":
                final = {"status": "rejected", "reason": payload.reason, "detail": _client_detail(payload.detail)}
            else:
                log.error("request %s: avatar %s/%s %s: %s: %s", rid, owner, avatar, payload.status, payload.reason, payload.detail)
                final = {"status": "failed", "reason": payload.reason or "exception", "detail": f"the avatar job failed; {where}"}
        except StageTimeout as err:
            log.warning("request %s: avatar %s/%s: %s", rid, owner, avatar, err)
            final = {"status": "failed", "reason": "timeout", "detail": str(err)}
        except asyncio.CancelledError:
            if not job.lost:  # the replica is shutting down: the status goes stale, a POST redoes it
                raise
            final = None
        except Exception as err:  # a job's failure is its status, never the replica's
            log.error("request %s: avatar %s/%s raised", rid, owner, avatar, exc_info=err)
            final = {"status": "failed", "reason": "exception", "detail": f"the avatar job failed ({type(err).__name__}); {where}"}
        finally:
            job.done.set()
            await heartbeat
            self._forget((owner, avatar))
        if final is not None and await self._write(owner, job, {**final, "seconds": payload.seconds}):
            self.metrics.jobs.inc(1, tags={"status": final["status"]})

    @api.get(f"/{API_VERSION}/avatars/{{avatar}}", tags=["avatars"])
    async def get_avatar(self, avatar: str, request: Request) -> dict:
        """Status (queued, running, ok, rejected, failed), reason, timings, quality and files."""
        return self._status_body(request, await self._status(request, avatar))

    @api.get(f"/{API_VERSION}/avatars/{{avatar}}/files/{{name}}", tags=["avatars"])
    async def get_file(self, avatar: str, name: str, request: Request) -> StreamingResponse:
        """Stream one of the avatar's files (names as listed by GET /v1/avatars/{id})."""
        status = await self._status(request, avatar)
        if name not in (status.get("files") or []):
            raise _http_error(404, "unknown_file", f"avatar {avatar} has no file {_client_detail(repr(name))[:80]}; it has {sorted(status.get('files') or [])}")
        suffix = "." + name.rsplit(".", 1)[-1]
        headers = VIEWER_HEADERS if suffix == ".html" else None
        return StreamingResponse(self.store.iter_file(tenant(request.scope), avatar, name), media_type=CONTENT_TYPES.get(suffix, "application/octet-stream"), headers=headers)

    @api.get(f"/{API_VERSION}/avatars/{{avatar}}/viewer", tags=["avatars"])
    async def viewer(self, avatar: str, request: Request) -> StreamingResponse:
        """The avatar's viewer page: its splat with orbit controls beside its glTF playing a clip
        (``viewer.html``, self-contained: it loads nothing else)."""
        status = await self._status(request, avatar)
        if status["status"] != "ok":
            raise _http_error(409, "not_ready", f"avatar {avatar} is {status['status']}, not ok")
        if "viewer.html" not in (status.get("files") or []):
            raise _http_error(404, "no_viewer", f"avatar {avatar} was exported without viewer.html (export.viewer was false)")
        return StreamingResponse(self.store.iter_file(tenant(request.scope), avatar, "viewer.html"), media_type=CONTENT_TYPES[".html"], headers=VIEWER_HEADERS)

    @api.post(f"/{API_VERSION}/avatars/{{avatar}}/animate", tags=["avatars"], openapi_extra=_ANIMATE_BODY)
    async def animate(self, avatar: str, request: Request) -> Response:
        """Render the avatar following a bundled clip (``clip``) or an uploaded SMPL-X ``.npz``
        (``motion``) as GIF (default) or MP4."""
        from avatar_ops.motion import bundled_clips, load_motion

        status = await self._status(request, avatar)
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
                raise _http_error(422, "bad_motion", _short(err)) from err
        else:
            motion = options.get("clip", "wave")
            if not isinstance(motion, str) or motion not in bundled_clips():
                raise _http_error(422, "unknown_clip", f"`clip` must be one of {bundled_clips()} (or upload `motion`), got {_client_detail(repr(motion))[:60]}")
        uri = self.store.file_uri(tenant(request.scope), avatar, "avatar.safetensors")
        data = await self._sync_call(self.stages["export"].animate.remote(uri, motion, fmt, size, frames, deadline=self._deadline(self.settings.request_timeout_s)), "animation")
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
    for kind in STAGE_KINDS:
        queued = merged(kind).get("max_queued_requests", -1)
        if not isinstance(queued, int) or queued < 1:
            raise ValueError(f"the {kind} deployment's max_queued_requests must be a positive integer (every stage queue is bounded), got {queued!r}.")
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
