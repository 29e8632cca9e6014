"""Writing an avatar's files under one folder (local path or URI):

* ``avatar.safetensors`` + ``avatar.json``: the animatable bundle (:mod:`avatar_ops.avatar.bundle`).
* ``avatar.ply`` and ``avatar_canonical.ply``: standard 3DGS PLY, the photo's pose in the photo's
  camera and the T-pose, both in OpenCV axes (y down) (:mod:`avatar_ops.avatar.ply`).
* ``avatar_canonical.splat``: the T-pose as a ``.splat`` file web viewers load directly, same frame
  (:mod:`avatar_ops.avatar.splat`); the canonical one, since that is the avatar a viewer shows.
* ``avatar.glb``: the body mesh with the avatar's colours baked into a texture, skinned, with one
  animation per motion clip (:mod:`avatar_ops.avatar.gltf`).
* ``viewer.html``: a page that shows both, with orbit controls and the clips, and loads nothing
  else (:mod:`avatar_ops.viewer`).
* ``preview.png``, ``turntable.gif``, ``animation.gif`` and ``contact_sheet.png``
  (:mod:`avatar_ops.avatar.previews`).
"""

from __future__ import annotations

import json

import numpy as np

from avatar_ops.avatar.bundle import avatar_to_bytes, package_versions
from avatar_ops.avatar.gltf import avatar_glb, clip_name
from avatar_ops.avatar.model import GaussianAvatar
from avatar_ops.avatar.ply import avatar_splats, splats_to_ply
from avatar_ops.avatar.previews import render_previews
from avatar_ops.avatar.splat import splat_bytes
from avatar_ops.body.base import BodyModel
from avatar_ops.io import storage
from avatar_ops.viewer import viewer_html


def export_avatar(
    avatar: GaussianAvatar, body: BodyModel, out_dir: str, extra: dict | None = None, photo: np.ndarray | None = None,
    turntable_views: int = 24, preview_size: int = 256, clip: str = "wave", animation_frames: int = 30,
    glb_clips: tuple[str, ...] = ("walk", "wave"), glb_texture_size: int = 1024, glb_max_frames: int = 300, viewer: bool = True,
) -> dict[str, str]:
    """Write every export file under ``out_dir`` (local path or URI); returns name -> URI."""
    bundle, meta = avatar_to_bytes(avatar)
    versions = package_versions()
    canonical = avatar_splats(avatar, body, "canonical")
    splat = splat_bytes(canonical)
    glb = avatar_glb(avatar, body, glb_clips, glb_texture_size, glb_max_frames, generator=f"avatar-forge {versions.get('avatar-forge', '')}".strip())
    files = {
        "avatar.safetensors": bundle,
        "avatar.json": json.dumps({**meta, "versions": versions, **(extra or {})}, indent=2, default=float).encode(),
        "avatar.ply": splats_to_ply(avatar_splats(avatar, body, "photo")),
        "avatar_canonical.ply": splats_to_ply(canonical),
        "avatar_canonical.splat": splat,
        "avatar.glb": glb,
        **render_previews(avatar, body, photo, turntable_views, preview_size, clip, animation_frames),
    }
    if viewer:
        title = f"avatar {(extra or {}).get('id', '')}".strip()
        files["viewer.html"] = viewer_html(splat, glb, title, [clip_name(c, i) for i, c in enumerate(glb_clips)])
    uris = {}
    for name, data in files.items():
        uri = storage.join(out_dir, name)
        storage.write_bytes(uri, data)
        uris[name] = uri
    return uris
