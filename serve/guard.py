"""Request guard of the online API: API keys on every route but an explicit allowlist (401),
admission control (503 at once when ``max_inflight_requests`` are being handled), a cap on
request bodies (413), a request id on every answer, and the last line for unexpected errors (a
500 with a reason and the request id; the traceback goes to the log, never to the client).

Paths are taken relative to the app's ``root_path``: under a route prefix (``/avatar``), Serve
keeps the full path (``/avatar/v1/track``) and sets ``root_path`` to the prefix. Anything not on
the allowlist needs the key, so an unknown path, a docs page not configured open or a path
spelled another way is a 401, never a way around the check.

Serve's own ``max_queued_requests`` is enforced best-effort (a simultaneous burst overshoots it),
so the exact bound lives here, in the ingress replica; Serve's queue limits stay as a second line.

A pure ASGI middleware, configured once per ingress replica with :func:`configure_guard` (Serve
runs a copy of the FastAPI app, so the settings live here, not on the app object).
"""

from __future__ import annotations

import hmac
import json
import logging
import uuid

from serve.store import ANONYMOUS, tenant_id

#: Serve's replica logger: records land in the replica's log file with Serve's request context.
log = logging.getLogger("ray.serve")

#: Routes that never need a key: liveness, and readiness (answered from a short cache).
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
#: The schema and its pages, open only with ``open_docs``.
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
#: Serve's proxy puts the request id in this header (taken from the client's or generated) and
#: answers it as ``X-Request-ID``.
REQUEST_ID_HEADER = b"x-request-id"

_STATE: dict = {"keys": {}, "auth": False, "open": OPEN_PATHS, "max_bytes": 0, "max_inflight": 0, "inflight": 0, "metrics": None}


def configure_guard(keys: tuple[str, ...] | None, max_bytes: int, max_inflight: int, metrics=None, open_docs: bool = False) -> None:
    """``keys``: accepted bearer tokens (each its own tenant, :func:`serve.store.tenant_id`), or
    None for an open API with one anonymous tenant (local development); ``metrics``: a
    :class:`avatar_forge.metrics.ServeMetrics` (in-flight gauge, rejections); ``open_docs``: the
    docs pages and schema need no key."""
    if keys is not None and not keys:
        raise ValueError("`keys` must hold at least one API key, or be None for an open API; got an empty tuple.")
    tenants = {k.encode(): tenant_id(k) for k in keys or ()}
    open_paths = OPEN_PATHS | DOCS_PATHS if open_docs else OPEN_PATHS
    _STATE.update(keys=tenants, auth=keys is not None, open=open_paths, max_bytes=max_bytes, max_inflight=max_inflight, inflight=0, metrics=metrics)


def route_path(scope) -> str:
    """The path inside the app: ``scope["path"]`` less the ``root_path`` (the route prefix) when
    it starts with it."""
    path, root = scope["path"], scope.get("root_path", "").rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root) :] or "/"
    return path


def request_id(scope) -> str:
    """This request's id (set by :class:`GuardMiddleware`)."""
    return scope["state"]["request_id"]


def tenant(scope) -> str:
    """The tenant of this request's API key (``anonymous`` without auth); set by the guard on
    every route that needs a key."""
    return scope["state"]["tenant"]


def _rejected(reason: str) -> None:
    if _STATE["metrics"] is not None:
        _STATE["metrics"].rejected.inc(1, tags={"reason": reason})


def _in_flight(value: int) -> None:
    _STATE["inflight"] = value
    if _STATE["metrics"] is not None:
        _STATE["metrics"].in_flight.set(value)


def _key_tenant(scope) -> str | None:
    """The tenant of the request's bearer token, or None when it is missing or unknown."""
    auth = dict(scope["headers"]).get(b"authorization", b"")
    scheme, _, token = auth.partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    token = token.strip()
    found = None
    for key, name in _STATE["keys"].items():  # compare with every key: the time says nothing about which matched
        if hmac.compare_digest(token, key):
            found = name
    return found


class BodyTooLarge(Exception):
    pass


class GuardMiddleware:
    """Pure ASGI middleware: request id; API keys (401) on every path but the allowlist;
    in-flight bound (503) on keyed paths; body cap (413, on the declared length and again on the
    bytes received) on all; unexpected exceptions answered as a 500 without a traceback."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        guard = _STATE
        headers = dict(scope["headers"])
        rid = headers.get(REQUEST_ID_HEADER, b"").decode("latin-1")
        if not rid:  # not behind Serve's proxy: make one and answer it ourselves
            rid = uuid.uuid4().hex
            send = _with_header(send, b"x-request-id", rid.encode())
        state = scope["state"] = {**scope.get("state", {}), "request_id": rid}  # a copy: never a dict shared between requests
        if scope["type"] == "websocket":  # no websocket routes: refuse before anything runs
            _rejected("auth")
            return await send({"type": "websocket.close", "code": 1008})
        path = route_path(scope)
        if path in guard["open"]:
            return await self._limited(scope, receive, send, guard["max_bytes"], rid)
        if guard["auth"]:
            if not headers.get(b"authorization"):
                _rejected("auth")
                return await _send_json(send, 401, "missing API key: send `Authorization: Bearer KEY`", rid, {"www-authenticate": "Bearer"})
            name = _key_tenant(scope)
            if name is None:
                _rejected("auth")
                return await _send_json(send, 401, "invalid API key", rid, {"www-authenticate": 'Bearer error="invalid_token"'})
            state["tenant"] = name
        else:
            state["tenant"] = ANONYMOUS
        if guard["inflight"] >= guard["max_inflight"]:
            _rejected("overload")
            detail = f"busy: {guard['inflight']} requests in flight, max_inflight_requests={guard['max_inflight']}; retry later"
            return await _send_json(send, 503, detail, rid, {"retry-after": "1"})
        _in_flight(guard["inflight"] + 1)
        try:
            await self._limited(scope, receive, send, guard["max_bytes"], rid)
        finally:
            _in_flight(guard["inflight"] - 1)

    async def _limited(self, scope, receive, send, limit: int, rid: str) -> None:
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            _rejected("too_large")
            return await _send_json(send, 413, f"request body has {int(declared)} bytes, more than max_upload_bytes={limit}", rid)
        received = 0
        started = False

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            _rejected("too_large")
            if not started:
                await _send_json(send, 413, f"request body is larger than max_upload_bytes={limit}", rid)
        except Exception as err:  # the last line: the client gets a reason and the id, the log the traceback
            log.error("request %s: %s %s raised", rid, scope.get("method", ""), scope["path"], exc_info=err)
            if started:  # half an answer sent: let the server drop the connection
                raise
            detail = {"reason": "exception", "detail": f"internal error; the server log has the details under request id {rid}"}
            await _send_json(send, 500, detail, rid)


def _with_header(send, name: bytes, value: bytes):
    async def sending(message):
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (name, value)]}
        await send(message)

    return sending


async def _send_json(send, status: int, detail, rid: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail, "request_id": rid}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
