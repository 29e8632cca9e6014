"""The stage side of a call's deadline (``serve.adapter.within``): the backstop for a cancel the
ingress sent and Ray Serve lost."""

from __future__ import annotations

import asyncio
import time

import pytest

from serve.adapter import within


def test_a_call_past_its_deadline_is_cancelled_on_the_stage():
    started, cancelled = [], []

    async def work(seconds: float) -> str:
        started.append(seconds)
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            cancelled.append(seconds)
            raise
        return "done"

    async def main() -> None:
        assert await within(None, work(0.0)) == "done"
        assert await within(time.time() + 30.0, work(0.0)) == "done"
        # Running when its deadline passes: cancelled there, and the caller told so.
        with pytest.raises(TimeoutError):
            await within(time.time() + 0.2, work(30.0))
        assert cancelled == [30.0]
        # Reaching the stage after its deadline: it never starts.
        with pytest.raises(TimeoutError, match="deadline passed"):
            await within(time.time() - 1.0, work(5.0))
        assert started == [0.0, 0.0, 30.0]

    asyncio.run(asyncio.wait_for(main(), 20))
