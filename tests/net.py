"""Loopback helpers for tests that start servers."""

from __future__ import annotations

import socket
import subprocess
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, limit_s: float, proc: subprocess.Popen | None = None) -> bool:
    """Poll ``url`` until it answers 200 (bounded); False on timeout or if ``proc`` exited."""
    import requests

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and (proc is None or proc.poll() is None):
        try:
            if requests.get(url, timeout=10).status_code == 200:
                return True
        except (requests.ConnectionError, requests.Timeout):
            pass
        time.sleep(1)
    return False
