"""The batch job's machinery at scale: the real job (listing, decode tasks, the actor pool, the
per-row records, the streamed manifest) over N cheap rows, and a rerun that must skip them all.

Rows are distinct small photos with nobody in them (``--kind no_person``: each is decoded and
goes through the tracker's detector, then is rejected) or too small to use (``--kind too_small``:
rejected at decode), so the figures are the job's, not the models'. Each run is its own driver
process, whose peak RSS (VmHWM) is reported. Prints one JSON object:

    {"runs": [{"rows": N, "rows_per_second": .., "driver_peak_rss_mb": .., "manifest_rows": ..,
               "manifest_unique_sources": .., "resume_seconds": .., "resume_ratio": ..}, ...],
     "driver_rss_growth_mb": <peak at the largest N minus peak at the smallest>}

Targets (issue 16): RSS growth < 300 MB from 2,000 to 20,000 rows; every row in the manifest
exactly once; a rerun under a tenth of the first run's time.

Must run where Ray may bind (``unshare -n sh -c 'ip link set lo up; exec python bench/scale.py'``).

    python bench/scale.py --rows 2000 20000 [--kind no_person] [--work DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_photos(folder: Path, count: int, kind: str) -> None:
    """``count`` distinct PNGs (a gradient with a per-photo colour: a few hundred bytes each)."""
    import numpy as np
    from PIL import Image

    side = 160 if kind == "no_person" else 64
    y, x = np.mgrid[0:side, 0:side]
    base = np.stack([x * 255 // side, y * 255 // side, np.zeros_like(x)], -1).astype(np.uint8)
    for i in range(count):
        name = folder / f"{i // 1000:03d}" / f"p{i:06d}.png"
        if name.exists():
            continue
        name.parent.mkdir(parents=True, exist_ok=True)
        image = base.copy()
        image[..., 2] = i % 251
        image[: 8, : 8] = (i // 251 % 256, i // 64256 % 256, 255)
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        name.write_bytes(buf.getvalue())


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/self/status has no VmHWM line: this benchmark needs Linux.")


def driver(input_uri: str, output: str, limit: int) -> None:
    """One job in this process (the driver), then its own figures as JSON on stdout."""
    from jobs.batch import run_job
    from jobs.config import JobConfig

    config = JobConfig.model_validate({"ray": {"num_cpus": 2}, "stages": {"track": {"batch_size": 32}, "decode": {"batch_size": 64}}})
    started = time.perf_counter()
    summary = run_job(input_uri, output, config, limit=limit, progress=False)
    print(json.dumps({"seconds": time.perf_counter() - started, "driver_peak_rss_mb": _peak_rss_mb(), "summary": summary}))


def _run_driver(folder: Path, out: Path, rows: int) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--driver", str(folder), str(out), str(rows)], capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"the job over {rows} rows exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(folder: Path, work: Path, rows: int) -> dict:
    import pyarrow.parquet as pq

    out = work / f"out-{rows}"
    first = _run_driver(folder, out, rows)
    manifest = pq.read_table(out / "manifest" / "manifest.parquet", columns=["source_uri", "status", "resumed"])
    sources = manifest.column("source_uri").to_pylist()
    again = _run_driver(folder, out, rows)
    rerun = pq.read_table(out / "manifest" / "manifest.parquet", columns=["source_uri", "resumed"])
    return {
        "rows": rows, "seconds": round(first["seconds"], 1), "rows_per_second": round(rows / first["seconds"], 1),
        "driver_peak_rss_mb": round(first["driver_peak_rss_mb"], 1), "statuses": first["summary"]["statuses"],
        "manifest_rows": manifest.num_rows, "manifest_unique_sources": len(set(sources)),
        "resume_seconds": round(again["seconds"], 1), "resume_ratio": round(again["seconds"] / first["seconds"], 3),
        "resume_manifest_rows": rerun.num_rows, "resume_all_skipped": all(rerun.column("resumed").to_pylist()),
        "resume_driver_peak_rss_mb": round(again["driver_peak_rss_mb"], 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[2000, 20000], help="row counts, one job (and one rerun) each (default: 2000 20000)")
    parser.add_argument("--kind", choices=["no_person", "too_small"], default="no_person", help="what the rows are (default: no_person)")
    parser.add_argument("--work", default=None, help="folder for the photos and outputs (default: a temporary folder, removed)")
    parser.add_argument("--driver", nargs=3, metavar=("INPUT", "OUTPUT", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver:
        driver(args.driver[0], args.driver[1], int(args.driver[2]))
        return
    if any(n < 1 for n in args.rows):
        parser.error(f"--rows must be positive, got {args.rows}")
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        folder = work / "photos"
        runs = []
        for rows in sorted(args.rows):
            # Each size lists its own folder, so the listing is part of what is measured.
            sized = folder / f"{rows}"
            make_photos(sized, rows, args.kind)
            runs.append(measure(sized, work, rows))
    report = {"kind": args.kind, "cpus": os.cpu_count(), "runs": runs}
    if len(runs) > 1:
        report["driver_rss_growth_mb"] = round(runs[-1]["driver_peak_rss_mb"] - runs[0]["driver_peak_rss_mb"], 1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
