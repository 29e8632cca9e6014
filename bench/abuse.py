"""Normal traffic while hostile uploads run: p50/p99 latency of ``POST /v1/track`` with a real
photo, alone and then while 8 clients keep uploading hostile files (a JPEG scan bomb, a 170 KB
PNG of 6300 x 6300 pixels, a photo with broken EXIF, an upload far over the size limit), and the
peak RSS of the ingress replica in each phase. Ray Serve on a local Ray, real HTTP. Prints JSON.

Run it in a loopback-only network namespace (Ray binds every interface):

    unshare -n sh -c 'ip link set lo up; exec "$0" "$@"' .venv/bin/python bench/abuse.py [--requests 12]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def hostile_uploads() -> dict[str, bytes]:
    import numpy as np
    from PIL import Image

    from tests.inputs import broken_exif_photo, scan_bomb_jpeg

    buf = io.BytesIO()
    Image.fromarray(np.zeros((6300, 6300), np.uint8)).save(buf, format="PNG", optimize=True)
    return {
        "scan_bomb.jpg": scan_bomb_jpeg(4096, 2000),
        "pixels_6300.png": buf.getvalue(),
        "broken_exif.jpg": broken_exif_photo("JPEG", (1200, 1600)),
        "oversize.bin": b"\xff\xd8" + os.urandom(80 * 1024 * 1024),
    }


def _quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]

    return {"p50_s": round(statistics.median(ordered), 3), "p99_s": round(q(0.99), 3), "max_s": round(ordered[-1], 3), "n": len(ordered)}


def _ingress_pids() -> list[int]:
    import psutil

    pids = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "ServeReplica" in cmdline and "AvatarAPI" in cmdline:
            pids.append(proc.pid)
    return pids


class _PeakRss:
    """Samples the ingress replicas' summed RSS every 0.1 s until stopped."""

    def __init__(self, pids: list[int]) -> None:
        import psutil

        self.procs = [psutil.Process(p) for p in pids]
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(p.memory_info().rss for p in self.procs))
            self._stop.wait(0.1)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def run(photo: bytes, requests_per_phase: int, hostile_clients: int) -> dict:
    import ray
    import requests
    from ray import serve

    from serve.app import build_application
    from serve.config import ServeSettings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = ServeSettings(auth="api_key", api_keys=("bench",), storage=tempfile.mkdtemp(), max_inflight_requests=hostile_clients + 4)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": "Bearer bench"}
    hostile = hostile_uploads()
    report: dict = {"hostile_files": {k: len(v) for k, v in hostile.items()}}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_application(settings), name="avatar", route_prefix="/", blocking=False)

        def normal() -> tuple[int, float]:
            t = time.perf_counter()
            r = requests.post(f"{base}/v1/track", files={"image": photo}, headers=headers, timeout=600)
            return r.status_code, time.perf_counter() - t

        for _ in range(2):  # warm-up
            assert normal()[0] == 200
        with _PeakRss(_ingress_pids()) as rss:
            alone = [normal() for _ in range(requests_per_phase)]
        report["alone"] = {**_quantiles([s for _, s in alone]), "codes": sorted({c for c, _ in alone}), "ingress_peak_rss_mb": round(rss.peak / 2**20, 1)}

        stop = threading.Event()
        hostile_codes: dict[str, set] = {name: set() for name in hostile}
        names = list(hostile)

        def attacker(i: int) -> None:
            n = 0
            while not stop.is_set():
                name = names[(i + n) % len(names)]
                n += 1
                try:
                    r = requests.post(f"{base}/v1/track", files={"image": (name, hostile[name])}, headers=headers, timeout=120)
                    hostile_codes[name].add(r.status_code)
                except requests.RequestException as err:
                    hostile_codes[name].add(type(err).__name__)

        with _PeakRss(_ingress_pids()) as rss, ThreadPoolExecutor(hostile_clients) as pool:
            attackers = [pool.submit(attacker, i) for i in range(hostile_clients)]
            time.sleep(1.0)  # let the hostile uploads get going
            try:
                under = [normal() for _ in range(requests_per_phase)]
            finally:
                stop.set()
                for a in attackers:
                    a.result(timeout=300)
        report["under_attack"] = {
            **_quantiles([s for _, s in under]), "codes": sorted({c for c, _ in under}), "ingress_peak_rss_mb": round(rss.peak / 2**20, 1),
            "hostile_clients": hostile_clients, "hostile_codes": {k: sorted(map(str, v)) for k, v in hostile_codes.items()},
        }  # fmt: skip
        report["p99_ratio"] = round(report["under_attack"]["p99_s"] / report["alone"]["p99_s"], 3)
    finally:
        serve.shutdown()
        ray.shutdown()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photo", default=str(REPO / "samples" / "elder_fruit_halfbody.jpg"), help="the normal requests' photo")
    parser.add_argument("--requests", type=int, default=12, help="normal requests per phase (default: 12)")
    parser.add_argument("--hostile-clients", type=int, default=8, help="concurrent hostile uploaders (default: 8)")
    args = parser.parse_args()
    if args.requests < 1 or args.hostile_clients < 1:
        parser.error(f"--requests and --hostile-clients must be positive, got {args.requests} and {args.hostile_clients}")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    photo = Path(args.photo).read_bytes()
    with contextlib.redirect_stdout(sys.stderr):  # libraries print banners; stdout is for the JSON
        report = run(photo, args.requests, args.hostile_clients)
    print(json.dumps({"photo": Path(args.photo).name, "cpus": os.cpu_count(), **report}, indent=2))


if __name__ == "__main__":
    main()
