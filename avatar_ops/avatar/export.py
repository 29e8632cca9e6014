"""Writing an avatar's files under one folder (local path or URI):

* ``avatar.safetensors`` + ``avatar.json``: the animatable bundle (:mod:`avatar_ops.avatar.bundle`).
* ``avatar.ply`` and ``avatar_canonical.ply``: standard 3DGS PLY in the photo's pose and the
  T-pose (:mod:`avatar_ops.avatar.ply`).
* ``preview.png``, ``turntable.gif``, ``animation.gif`` and ``contact_sheet.png``
  (:mod:`avatar_ops.avatar.previews`).
"""

from __future__ import annotations

import json

import numpy as np

from avatar_ops.avatar.bundle import avatar_to_bytes, package_versions
from avatar_ops.avatar.model import GaussianAvatar
from avatar_ops.avatar.ply import ply_bytes
from avatar_ops.avatar.previews import render_previews
from avatar_ops.body.base import BodyModel
from avatar_ops.io import storage


def export_avatar(
    avatar: GaussianAvatar, body: BodyModel, out_dir: str, extra: dict | None = None, photo: np.ndarray | None = None,
    turntable_views: int = 24, preview_size: int = 256, clip: str = "wave", animation_frames: int = 30,
) -> dict[str, str]:
    """Write every export file under ``out_dir`` (local path or URI); returns name -> URI."""
    bundle, meta = avatar_to_bytes(avatar)
    files = {
        "avatar.safetensors": bundle,
        "avatar.json": json.dumps({**meta, "versions": package_versions(), **(extra or {})}, indent=2, default=float).encode(),
        "avatar.ply": ply_bytes(avatar, body, "photo"),
        "avatar_canonical.ply": ply_bytes(avatar, body, "canonical"),
        **render_previews(avatar, body, photo, turntable_views, preview_size, clip, animation_frames),
    }
    uris = {}
    for name, data in files.items():
        uri = storage.join(out_dir, name)
        storage.write_bytes(uri, data)
        uris[name] = uri
    return uris
