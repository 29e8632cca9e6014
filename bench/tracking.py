"""Tracking throughput and peak memory per backend, batch 1 and 8, for three settings: the body
alone, with the hands (MediaPipe Hands on the wrist crops, then the hand fit), and with the hands
and the face (Face Mesh on the head crop, then the head, jaw and expression fit). The synthetic
SMPL-X model has no face Face Mesh recognises, so it runs without the face. Prints JSON.

    python bench/tracking.py [--repeats 2] [--settings body hands hands+face]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SETTINGS = ("body", "hands", "hands+face")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per setting (default: 2)")
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS), help="what is tracked besides the body (default: all three)")
    args = parser.parse_args()

    import torch

    from avatar_ops.body import BodyModelConfig, build_body_model
    from avatar_ops.body.synthetic_smplx import make_synthetic_smplx
    from avatar_ops.io.image import load_image
    from avatar_ops.tracking.detector import MediaPipeDetector
    from avatar_ops.tracking.face import FaceDetector
    from avatar_ops.tracking.hands import HandDetector
    from avatar_ops.tracking.operator import TrackingConfig, TrackingOperator, TrackInput

    torch.set_num_threads(2)
    photos = sorted(str(p) for p in (REPO / "samples").glob("*.[jp][pn]g"))
    images = [load_image(p) for p in photos]
    detector = MediaPipeDetector()
    hand_detector, face_detector = HandDetector(), FaceDetector()
    smplx_path = make_synthetic_smplx(Path(tempfile.mkdtemp()) / "SMPLX_NEUTRAL.npz")
    report = {"machine": {"cpus": torch.get_num_threads(), "cuda": torch.cuda.is_available()}, "results": []}
    for backend in ("anny", "smplx"):
        body = build_body_model(BodyModelConfig(kind=backend, smplx_path=str(smplx_path) if backend == "smplx" else None))
        for setting in args.settings:
            if setting == "hands+face" and backend == "smplx":
                continue
            hands = hand_detector if "hands" in setting else None
            op = TrackingOperator(TrackingConfig(device="cpu"), body, detector, hands, face_detector if "face" in setting else None)
            for batch in (1, 8):
                items = [TrackInput(images[i % len(images)]) for i in range(batch)]
                op(items[:1])  # warm-up
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    results = op(items)
                    times.append(time.perf_counter() - t0)
                best = min(times)
                report["results"].append({
                    "backend": backend + (" (synthetic model)" if backend == "smplx" else ""), "tracked": setting, "batch": batch,
                    "photos_per_second": round(batch / best, 3), "seconds_per_batch": round(best, 3),
                    "ok": sum(1 for r in results if not hasattr(r, "reason")),
                    "hands_tracked": sum(int(r.quality.get("hands_tracked", 0)) for r in results if not hasattr(r, "reason")),
                    "faces_tracked": sum(int(r.quality.get("face_tracked", 0)) for r in results if not hasattr(r, "reason")),
                    "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                })  # fmt: skip
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
