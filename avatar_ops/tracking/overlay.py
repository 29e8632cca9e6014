"""Mask IoU and the overlay picture people look at (silhouettes come from :mod:`avatar_ops.render.mesh`)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from avatar_ops.body.base import KEYPOINT_NAMES
from avatar_ops.render.mesh import rasterize_silhouette
from avatar_ops.tracking.hands import SEGMENTS as HAND_SEGMENTS

_SKELETON = [
    ("left_shoulder", "right_shoulder"), ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"),
    ("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"), ("left_shoulder", "left_hip"),
    ("right_shoulder", "right_hip"), ("left_hip", "right_hip"), ("left_hip", "left_knee"),
    ("left_knee", "left_ankle"), ("right_hip", "right_knee"), ("right_knee", "right_ankle"),
    ("nose", "left_eye"), ("nose", "right_eye"), ("left_eye", "left_ear"), ("right_eye", "right_ear"),
    ("left_ankle", "left_heel"), ("left_ankle", "left_big_toe"), ("right_ankle", "right_heel"), ("right_ankle", "right_big_toe"),
]  # fmt: skip


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask to (h, w)."""
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.NEAREST)) > 0


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks of the same shape (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def draw_overlay(
    rgb: np.ndarray, uv: np.ndarray, faces: np.ndarray, keypoints: np.ndarray, projected: np.ndarray, min_confidence: float = 0.3, label: str | None = None,
    hands: dict[str, dict] | None = None, face: dict | None = None,
) -> Image.Image:
    """The photo with the fitted mesh (translucent), detected keypoints (green), the body's
    projected keypoints (red), each tracked hand's landmarks (yellow, detected) and fitted
    landmarks (magenta; ``TrackResult.hands``), the face's landmarks likewise (yellow and magenta
    dots; ``TrackResult.face``) and ``label`` (e.g. which way the person faces) in the top left."""
    h, w = rgb.shape[:2]
    base = Image.fromarray(rgb).convert("RGBA")
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    step = max(1, len(faces) // 6000)
    for t in uv[faces[::step]].reshape(-1, 6).tolist():
        draw.polygon(t, outline=(80, 160, 255, 90))
    sil = rasterize_silhouette(uv, faces, w, h, max_side=max(w, h))
    tint = np.zeros((h, w, 4), np.uint8)
    tint[sil] = (40, 120, 255, 70)
    composed = Image.alpha_composite(Image.alpha_composite(base, Image.fromarray(tint, "RGBA")), layer)
    draw = ImageDraw.Draw(composed)
    idx = {n: i for i, n in enumerate(KEYPOINT_NAMES)}
    r = max(2, round(max(w, h) / 200))
    for a, b in _SKELETON:
        if keypoints[idx[a], 2] > min_confidence and keypoints[idx[b], 2] > min_confidence:
            draw.line([tuple(keypoints[idx[a], :2]), tuple(keypoints[idx[b], :2])], fill=(0, 220, 0, 255), width=max(1, r // 2))
        draw.line([tuple(projected[idx[a]]), tuple(projected[idx[b]])], fill=(255, 40, 40, 255), width=max(1, r // 2))
    for k in range(len(KEYPOINT_NAMES)):
        if keypoints[k, 2] > min_confidence:
            x, y = keypoints[k, :2]
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(0, 220, 0, 255))
        x, y = projected[k]
        draw.ellipse([x - r, y - r, x + r, y + r], outline=(255, 40, 40, 255))
    small = max(1, r // 2)
    for hand in (hands or {}).values():
        for points, colour in ((hand["keypoints"], (255, 220, 0, 255)), (hand.get("projected"), (255, 0, 255, 255))):
            if points is None:
                continue
            points = np.asarray(points)
            for a, b in HAND_SEGMENTS:
                draw.line([tuple(points[a, :2]), tuple(points[b, :2])], fill=colour, width=1)
            for x, y in points[:, :2]:
                draw.ellipse([x - small, y - small, x + small, y + small], fill=colour)
    if face:
        # 468 landmarks on a face a few dozen pixels high: single pixels, detected then fitted.
        for points, colour in ((face["keypoints"], (255, 220, 0, 255)), (face.get("projected"), (255, 0, 255, 255))):
            if points is not None:
                draw.point([tuple(p) for p in np.asarray(points)[:, :2].tolist()], fill=colour)
    if label:
        box = draw.textbbox((r, r), label)
        draw.rectangle([box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2], fill=(0, 0, 0, 255))
        draw.text((r, r), label, fill=(255, 255, 255, 255))
    return composed.convert("RGB")
