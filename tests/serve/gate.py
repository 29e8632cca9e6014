"""A stage the tests steer: every stage handle of a second Serve app (the real ingress) points at
:class:`GateStage`, whose calls wait at a :class:`Gate` actor until a test opens it, so a test can
hold jobs pending, see which calls started, and see which were cancelled."""

from __future__ import annotations

import asyncio
import uuid

import ray

from serve.adapter import within


@ray.remote(num_cpus=0)
class Gate:
    """Where :class:`GateStage` calls wait. ``mode``: ``pass`` (answer ``rejected: no_person``
    for a pending payload, pass a finished one on), ``raise`` (the stage raises) or ``garbage``
    (the stage answers bytes that are no payload).

    A stage call that is cancelled while it waits here is counted once, whichever way the
    cancellation arrives: Ray Serve cancels a timed-out request with ``ray.cancel``, which also
    cancels the tasks the request submitted (this :meth:`enter`, and a ``note_cancelled`` the
    stage sends as it unwinds, if that was already submitted: a race); the stage's own deadline
    (:func:`serve.adapter.within`) cancels only the stage's side, which then sends
    ``note_cancelled``. Calls are told apart by a token per call."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.opened.set()
        self.changed = asyncio.Event()  # set on every change; waiters clear it before waiting
        self.mode = "pass"
        self.entered: list[str] = []  # ids of pending payloads that reached the stage
        self.cancelled: list[str] = []
        self.cancelled_tokens: set[str] = set()
        self.ready_calls = 0

    def hold(self) -> None:
        self.opened.clear()

    def release(self) -> None:
        self.opened.set()

    def set_mode(self, mode: str) -> None:
        if mode not in ("pass", "raise", "garbage"):
            raise ValueError(f"`mode` must be pass, raise or garbage, got {mode!r}.")
        self.mode = mode

    def counts(self) -> dict:
        return {"entered": list(self.entered), "cancelled": list(self.cancelled), "ready_calls": self.ready_calls}

    def reset(self) -> None:
        self.entered.clear()
        self.cancelled.clear()
        self.cancelled_tokens.clear()
        self.mode = "pass"
        self.opened.set()

    async def enter(self, ident: str, token: str) -> str:
        self.entered.append(ident)
        self.changed.set()
        try:
            await self.opened.wait()
        except asyncio.CancelledError:
            self.note_cancelled(ident, token)
            raise
        return self.mode

    def note_cancelled(self, ident: str, token: str) -> None:
        if token not in self.cancelled_tokens:
            self.cancelled_tokens.add(token)
            self.cancelled.append(ident)
            self.changed.set()

    def note_ready(self) -> None:
        self.ready_calls += 1

    async def wait_for(self, what: str, count: int, timeout_s: float) -> int:
        """Wait until ``what`` (entered, cancelled) holds ``count`` ids, at most ``timeout_s``."""
        where = {"entered": self.entered, "cancelled": self.cancelled}[what]
        deadline = asyncio.get_running_loop().time() + timeout_s
        while len(where) < count:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return len(where)


class GateStage:
    """Stands in for every stage deployment (``ready``, payload bytes and a deadline in, bytes
    out)."""

    def __init__(self, gate) -> None:
        import avatar_ops.stages.codec  # noqa: F401 - imported (torch and all) before the first call, not during it

        self.gate = gate

    async def ready(self) -> str:
        await self.gate.note_ready.remote()
        return "gate"

    async def __call__(self, data: bytes, deadline: float | None = None) -> bytes:
        from avatar_ops.stages.codec import payload_from_bytes, payload_to_bytes

        payload = payload_from_bytes(data)
        if not payload.pending:
            return data
        ident = payload.id or payload.source
        # As the stage deployment does: the call is cancelled past its deadline, here, too.
        mode = await within(deadline, self._enter(ident, uuid.uuid4().hex))
        if mode == "raise":
            raise RuntimeError("gate stage told to raise, in /srv/secret/stage.py")
        if mode == "garbage":
            return b"not a payload"
        payload.update({"status": "rejected", "reason": "no_person", "detail": "the gate stage finds nobody"})
        return payload_to_bytes(payload)

    async def _enter(self, ident: str, token: str) -> str:
        try:
            return await self.gate.enter.remote(ident, token)
        except asyncio.CancelledError:
            self.gate.note_cancelled.remote(ident, token)  # sent before this task ends; nothing to wait for
            raise
