"""Request guard of the online API: API keys on ``/v1`` (401), admission control (503 at once
when ``max_inflight_requests`` are being handled) and a cap on request bodies (413).

Serve's own ``max_queued_requests`` is enforced best-effort (a simultaneous burst overshoots it),
so the exact bound lives here, in the ingress replica; Serve's queue limits stay as a second line.

A pure ASGI middleware, configured once per ingress replica with :func:`configure_guard` (Serve
runs a copy of the FastAPI app, so the settings live here, not on the app object).
"""

from __future__ import annotations

import hmac
import json

_STATE: dict = {"keys": (), "max_bytes": 0, "max_inflight": 0, "inflight": 0, "metrics": None}


def configure_guard(keys: tuple[str, ...] | None, max_bytes: int, max_inflight: int, metrics=None) -> None:
    """``keys``: accepted bearer tokens, or None for an open API (local development);
    ``metrics``: a :class:`avatar_forge.metrics.ServeMetrics` (in-flight gauge, rejections)."""
    _STATE.update(keys=keys, max_bytes=max_bytes, max_inflight=max_inflight, inflight=0, metrics=metrics)


def _rejected(reason: str) -> None:
    if _STATE["metrics"] is not None:
        _STATE["metrics"].rejected.inc(1, tags={"reason": reason})


def _in_flight(value: int) -> None:
    _STATE["inflight"] = value
    if _STATE["metrics"] is not None:
        _STATE["metrics"].in_flight.set(value)


class BodyTooLarge(Exception):
    pass


class GuardMiddleware:
    """Pure ASGI middleware on ``/v1``: API keys (401), in-flight bound (503), body cap (413,
    enforced on the declared length and again on the bytes actually received)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        guard = _STATE
        if not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        if guard["keys"] is not None:
            headers = dict(scope["headers"])
            auth = headers.get(b"authorization", b"").decode("latin-1")
            if not auth:
                _rejected("auth")
                return await _send_json(send, 401, "missing API key: send `Authorization: Bearer KEY`", {"www-authenticate": "Bearer"})
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not any(hmac.compare_digest(token.strip().encode(), k.encode()) for k in guard["keys"]):
                _rejected("auth")
                return await _send_json(send, 401, "invalid API key", {"www-authenticate": 'Bearer error="invalid_token"'})
        if guard["inflight"] >= guard["max_inflight"]:
            _rejected("overload")
            return await _send_json(send, 503, f"busy: {guard['inflight']} requests in flight, max_inflight_requests={guard['max_inflight']}; retry later", {"retry-after": "1"})
        _in_flight(guard["inflight"] + 1)
        try:
            await self._limited(scope, receive, send, guard["max_bytes"])
        finally:
            _in_flight(guard["inflight"] - 1)

    async def _limited(self, scope, receive, send, limit: int) -> None:
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            _rejected("too_large")
            return await _send_json(send, 413, f"request body has {int(declared)} bytes, more than max_upload_bytes={limit}")
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
                await _send_json(send, 413, f"request body is larger than max_upload_bytes={limit}")


async def _send_json(send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


