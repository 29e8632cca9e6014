"""Writing and reading avatars.

* ``avatar.safetensors`` + ``avatar.json``: the animatable bundle (bindings, Gaussian parameters,
  body shape, the photo's pose and camera; no pickle anywhere).
* ``avatar.ply``: standard 3D Gaussian Splatting PLY (x, y, z, nx, ny, nz, f_dc_0..2, opacity
  logit, log scales, rotation w x y z) in the canonical frame (y up, facing +z).
* ``preview.png`` (front view) and ``turntable.gif``.
"""

from __future__ import annotations

import io
import json

import numpy as np
import torch

from avatar_ops.avatar.animate import canonical_pose, turntable
from avatar_ops.avatar.model import GaussianAvatar
from avatar_ops.body.base import BodyModel
from avatar_ops.io import storage

SH_C0 = 0.28209479177387814
FORMAT_VERSION = 1


def avatar_to_bytes(avatar: GaussianAvatar) -> tuple[bytes, dict]:
    from safetensors.torch import save

    tensors = {k: getattr(avatar, k).detach().cpu().contiguous() for k in GaussianAvatar.TENSORS}
    meta = {"format_version": FORMAT_VERSION, "body_model": avatar.body_model, "width": avatar.width, "height": avatar.height, "num_gaussians": len(avatar)}
    return save(tensors, metadata={"avatar": json.dumps(meta)}), meta


def avatar_from_bytes(data: bytes) -> GaussianAvatar:
    from safetensors import safe_open
    from safetensors.torch import load

    tensors = load(data)
    missing = [k for k in GaussianAvatar.TENSORS if k not in tensors]
    if missing:
        raise ValueError(f"not an avatar bundle: tensors {missing} are missing.")
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".safetensors") as tmp:
        tmp.write(data)
        tmp.flush()
        with safe_open(tmp.name, framework="pt") as handle:
            meta = json.loads(handle.metadata()["avatar"])
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"avatar format_version must be {FORMAT_VERSION}, got {meta.get('format_version')!r}.")
    return GaussianAvatar(body_model=meta["body_model"], width=int(meta["width"]), height=int(meta["height"]), **tensors)


def ply_bytes(avatar: GaussianAvatar, body: BodyModel) -> bytes:
    """The avatar in its photo pose, canonical frame, as a standard 3DGS binary PLY."""
    with torch.no_grad():
        g = avatar.posed(body, canonical_pose(avatar).to(avatar.shape.device))
    means = g["means"][0].cpu().numpy().astype(np.float32)
    quats = g["quats"][0].cpu().numpy().astype(np.float32)
    n = len(means)
    fields = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    data = np.zeros((n, len(fields)), np.float32)
    data[:, 0:3] = means
    data[:, 6:9] = (avatar.color.detach().cpu().numpy() - 0.5) / SH_C0
    data[:, 9] = avatar.opacity_logit.detach().cpu().numpy()
    data[:, 10:13] = avatar.log_scale.detach().cpu().numpy()
    data[:, 13:17] = quats
    header = "ply\nformat binary_little_endian 1.0\nelement vertex %d\n%send_header\n" % (n, "".join(f"property float {f}\n" for f in fields))
    return header.encode("ascii") + data.tobytes()


def _png(frame: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def gif_bytes(frames: np.ndarray, fps: float = 12.0) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    images = [Image.fromarray(f) for f in frames]
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return buf.getvalue()


def export_avatar(avatar: GaussianAvatar, body: BodyModel, out_dir: str, extra: dict | None = None, turntable_views: int = 24, preview_size: int = 256) -> dict[str, str]:
    """Write every export file under ``out_dir`` (local path or URI); returns name -> URI."""
    bundle, meta = avatar_to_bytes(avatar)
    frames, _ = turntable(avatar, body, n_views=turntable_views, size=preview_size)
    files = {
        "avatar.safetensors": bundle,
        "avatar.json": json.dumps({**meta, **(extra or {})}, indent=2, default=float).encode(),
        "avatar.ply": ply_bytes(avatar, body),
        "preview.png": _png(frames[0]),
        "turntable.gif": gif_bytes(frames),
    }
    uris = {}
    for name, data in files.items():
        uri = storage.join(out_dir, name)
        storage.write_bytes(uri, data)
        uris[name] = uri
    return uris
