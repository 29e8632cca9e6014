"""The Ray Data batch job against a plain in-process loop over the same operators, the same photos
and the same cores, in one run. Prints JSON; the figure is ``ratio`` (job rows/s over loop rows/s,
both from wall time including model loading; target >= 0.85 on a 2-core machine).

Must run where Ray may bind (e.g. ``unshare -n sh -c 'ip link set lo up; exec python bench/batch.py'``).

    python bench/batch.py [--copies 2] [--preset preview] [--fit-iters N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    from avatar_ops.types import PRESETS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=2, help="variants of each sample photo (default: 2, so 6 photos)")
    parser.add_argument("--preset", default="preview", choices=PRESETS)
    parser.add_argument("--fit-iters", type=int, default=None, help="override the preset's fitting iterations")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs for both runs (default: 2)")
    args = parser.parse_args()

    import torch
    from PIL import Image

    from avatar_ops.avatar.fit import FitConfig
    from avatar_ops.pipeline import AvatarPipeline
    from avatar_ops.stages.config import PipelineConfig
    from jobs.batch import run_job
    from jobs.config import JobConfig

    torch.set_num_threads(args.cpus)
    pipeline_config = PipelineConfig(preset=args.preset, fit=FitConfig(iters=args.fit_iters))
    job_config = JobConfig(pipeline=pipeline_config, ray={"num_cpus": args.cpus})
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        for sample in sorted((REPO / "samples").glob("*.[jp][pn]g")):
            image = Image.open(sample).convert("RGB")
            for i in range(args.copies):
                image.rotate(0, translate=(2 * i, 0)).save(photos / f"{sample.stem}_{i}.png")
        paths = sorted(str(p) for p in photos.iterdir())

        t0 = time.perf_counter()
        loop = AvatarPipeline(pipeline_config)
        statuses = [loop.run(p, os.path.join(tmp, "loop", Path(p).stem)).status for p in paths]
        loop_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        summary = run_job(str(photos), os.path.join(tmp, "job"), job_config, progress=False)
        job_s = time.perf_counter() - t0
    loop_rate, job_rate = len(paths) / loop_s, len(paths) / job_s
    print(json.dumps({
        "photos": len(paths), "cpus": args.cpus, "preset": args.preset, "fit_iters": pipeline_config.fit_config().settings["iters"],
        "loop": {"wall_s": round(loop_s, 1), "rows_per_s": round(loop_rate, 4), "ok": statuses.count("ok")},
        "ray_job": {"wall_s": round(job_s, 1), "rows_per_s": round(job_rate, 4), "statuses": summary["statuses"]},
        "actor_pools": summary["actor_pools"], "ratio": round(job_rate / loop_rate, 3),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
