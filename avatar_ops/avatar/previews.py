"""Preview renders of an avatar: ``preview.png`` (front view), ``turntable.gif``,
``animation.gif`` (a bundled clip) and ``contact_sheet.png`` (input, fitted render, back view,
animation frames)."""

from __future__ import annotations

import io

import numpy as np

from avatar_ops.avatar.animate import animate, render_frames, turntable
from avatar_ops.avatar.model import GaussianAvatar
from avatar_ops.body.base import BodyModel
from avatar_ops.io.media import gif_bytes, png_bytes
from avatar_ops.motion import load_motion


def contact_sheet(photo: np.ndarray | None, fitted: np.ndarray, back: np.ndarray, animation: np.ndarray, size: int) -> bytes:
    """One row: input photo, fitted render in the photo's camera, back view, animation frames."""
    from PIL import Image

    tiles = []
    for image in ([photo] if photo is not None else []) + [fitted, back] + list(animation):
        im = Image.fromarray(image)
        im.thumbnail((size, size))
        tile = Image.new("RGB", (size, size), "white")
        tile.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
        tiles.append(tile)
    sheet = Image.new("RGB", (size * len(tiles), size), "white")
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (i * size, 0))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def render_previews(
    avatar: GaussianAvatar, body: BodyModel, photo: np.ndarray | None = None,
    turntable_views: int = 24, preview_size: int = 256, clip: str = "wave", animation_frames: int = 30,
) -> dict[str, bytes]:
    """Render the preview files of ``avatar``.

    Args:
        avatar: the fitted avatar.
        body: the body model it is bound to.
        photo: the input photo (RGB uint8, [H, W, 3]) for the contact sheet, or None to leave it out.
        turntable_views: frames of ``turntable.gif``.
        preview_size: side of every preview in pixels.
        clip: bundled clip (or ``.npz`` path) for ``animation.gif``.
        animation_frames: most frames of ``animation.gif``.

    Returns:
        File name -> encoded bytes for ``preview.png``, ``turntable.gif``, ``animation.gif`` and
        ``contact_sheet.png``.
    """
    frames, _ = turntable(avatar, body, n_views=turntable_views, size=preview_size)
    motion = load_motion(clip)
    moving = animate(avatar, body, motion, size=preview_size, max_frames=animation_frames)
    scale = preview_size / max(avatar.width, avatar.height)
    fitted = render_frames(avatar, body, avatar.source_pose[None], avatar.source_transl[None], avatar.source_camera(scale))[0]
    picks = moving[np.linspace(0, len(moving) - 1, 3).round().astype(int)]
    return {
        "preview.png": png_bytes(frames[0]),
        "turntable.gif": gif_bytes(frames),
        "animation.gif": gif_bytes(moving, fps=min(motion.fps, 30.0)),
        "contact_sheet.png": contact_sheet(photo, fitted, frames[len(frames) // 2], picks, preview_size),
    }
