"""Latency and throughput of POST /v1/track over real HTTP (Ray Serve on a local Ray) at
concurrency 1, 4 and 16, next to the in-process latency of the same operator call. Prints JSON.

Run it in a loopback-only network namespace (Ray binds every interface):

    unshare -n sh -c 'ip link set lo up; exec "$0" "$@"' .venv/bin/python bench/serve.py [--requests 16]

The figure to read is ``overhead_ratio``: HTTP p50 at concurrency 1 over the in-process p50
(both on the same photo, batch of one). At higher concurrency the tracking replica batches
requests (``track_batch.max_batch_size``), which trades latency for requests/s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]

    return {"p50_s": round(statistics.median(ordered), 4), "p95_s": round(q(0.95), 4), "p99_s": round(q(0.99), 4), "n": len(ordered)}


def in_process(photo: bytes, repeats: int) -> dict:
    import torch

    from avatar_ops.io.image import decode_image
    from avatar_ops.tracking.operator import TrackingConfig, TrackingOperator, TrackInput

    torch.set_num_threads(os.cpu_count() or 1)
    op = TrackingOperator.from_config(TrackingConfig(device="cpu"))
    op([TrackInput(decode_image(photo))])  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        op([TrackInput(decode_image(photo))])  # decode + track, as the endpoint does
        times.append(time.perf_counter() - t)
    del op
    return _quantiles(times)


def over_http(photo: bytes, concurrencies: list[int], requests_per_level: int) -> dict:
    import ray
    import requests
    from ray import serve

    from serve.app import build_application
    from serve.config import ServeSettings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = ServeSettings(auth="api_key", api_keys=("bench",), storage=tempfile.mkdtemp(), max_inflight_requests=max(concurrencies))
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    out = {}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_application(settings), name="avatar", route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}/v1/track"
        headers = {"Authorization": "Bearer bench"}

        def call(_):
            t = time.perf_counter()
            r = requests.post(url, files={"image": photo}, headers=headers, timeout=600)
            return r.status_code, time.perf_counter() - t

        for _ in range(2):  # warm-up (first batch, connection setup)
            assert call(0)[0] == 200
        for c in concurrencies:
            n = max(requests_per_level, c)
            t0 = time.perf_counter()
            with ThreadPoolExecutor(c) as pool:
                results = list(pool.map(call, range(n)))
            wall = time.perf_counter() - t0
            codes = sorted({code for code, _ in results})
            out[str(c)] = {**_quantiles([s for _, s in results]), "requests_per_s": round(n / wall, 3), "status_codes": codes}
    finally:
        serve.shutdown()
        ray.shutdown()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photo", default=str(REPO / "samples" / "elder_fruit_halfbody.jpg"), help="photo to track")
    parser.add_argument("--requests", type=int, default=16, help="requests per concurrency level (at least the concurrency)")
    parser.add_argument("--repeats", type=int, default=5, help="in-process timed calls")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    photo = Path(args.photo).read_bytes()
    with contextlib.redirect_stdout(sys.stderr):  # libraries print banners; stdout is for the JSON
        local = in_process(photo, args.repeats)
        http = over_http(photo, [1, 4, 16], args.requests)
    report = {
        "photo": Path(args.photo).name,
        "machine": {"cpus": os.cpu_count()},
        "in_process": local,
        "http": http,
        "overhead_ratio": round(http["1"]["p50_s"] / local["p50_s"], 3),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
