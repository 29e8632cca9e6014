"""Writing and reading avatars.

* ``avatar.safetensors`` + ``avatar.json``: the animatable bundle (bindings, Gaussian parameters,
  body shape, the photo's pose and camera; no pickle anywhere).
* ``avatar.ply`` (the photo's pose) and ``avatar_canonical.ply`` (the T-pose): standard 3D Gaussian
  Splatting PLY (x y z nx ny nz f_dc_0..2 f_rest_0..44 opacity scale_0..2 rot_0..3; logit opacity,
  log scales, rotation w x y z, degree-3 SH layout with zero rest coefficients) in the canonical
  frame (y up, facing +z, metres).
* ``preview.png`` (front view), ``turntable.gif``, ``animation.gif`` (a bundled clip) and
  ``contact_sheet.png`` (input, fitted render, back view, animation frames).
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
    from safetensors.torch import load

    tensors = load(data)  # validates the file; its header is then safe to read
    missing = [k for k in GaussianAvatar.TENSORS if k not in tensors]
    if missing:
        raise ValueError(f"not an avatar bundle: tensors {missing} are missing.")
    # safetensors layout: 8-byte little-endian header length, then the JSON header.
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    meta = json.loads(header.get("__metadata__", {}).get("avatar", "{}"))
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"avatar format_version must be {FORMAT_VERSION}, got {meta.get('format_version')!r}.")
    return GaussianAvatar(body_model=meta["body_model"], width=int(meta["width"]), height=int(meta["height"]), **tensors)


def ply_bytes(avatar: GaussianAvatar, body: BodyModel, pose: str = "photo") -> bytes:
    """The avatar as a standard 3DGS binary PLY, in the photo's pose (``photo``) or the T-pose
    (``canonical``), upright in the canonical frame."""
    if pose not in ("photo", "canonical"):
        raise ValueError(f"`pose` must be 'photo' or 'canonical', got {pose!r}.")
    body_pose = canonical_pose(avatar).to(avatar.shape.device)
    if pose == "canonical":
        body_pose = torch.zeros_like(body_pose)
    with torch.no_grad():
        g = avatar.posed(body, body_pose)
    means = g["means"][0].cpu().numpy().astype(np.float32)
    quats = g["quats"][0].cpu().numpy().astype(np.float32)
    n = len(means)
    fields = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", *(f"f_rest_{i}" for i in range(45))]
    fields += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    col = {f: i for i, f in enumerate(fields)}
    data = np.zeros((n, len(fields)), np.float32)
    data[:, 0:3] = means
    data[:, col["f_dc_0"] : col["f_dc_2"] + 1] = (avatar.color.detach().cpu().numpy() - 0.5) / SH_C0
    data[:, col["opacity"]] = avatar.opacity_logit.detach().cpu().numpy()
    data[:, col["scale_0"] : col["scale_2"] + 1] = avatar.log_scale.detach().cpu().numpy()
    data[:, col["rot_0"] : col["rot_3"] + 1] = quats
    header = "ply\nformat binary_little_endian 1.0\nelement vertex %d\n%send_header\n" % (n, "".join(f"property float {f}\n" for f in fields))
    return header.encode("ascii") + data.tobytes()


def png_bytes(frame: np.ndarray) -> bytes:
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


def mp4_bytes(frames: np.ndarray, fps: float = 12.0) -> bytes:
    """H.264 MP4 of [T, H, W, 3] uint8 frames (PyAV); odd sides are padded to even."""
    import av

    frames = np.asarray(frames)
    t, h, w = frames.shape[:3]
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=max(1, round(fps)))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue()


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("avatar-forge", "torch", "gsplat", "anny", "smplx", "diffusers"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


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


def export_avatar(
    avatar: GaussianAvatar, body: BodyModel, out_dir: str, extra: dict | None = None, photo: np.ndarray | None = None,
    turntable_views: int = 24, preview_size: int = 256, clip: str = "wave", animation_frames: int = 30,
) -> dict[str, str]:
    """Write every export file under ``out_dir`` (local path or URI); returns name -> URI."""
    from avatar_ops.avatar.animate import animate, render_frames
    from avatar_ops.motion import load_motion

    bundle, meta = avatar_to_bytes(avatar)
    frames, _ = turntable(avatar, body, n_views=turntable_views, size=preview_size)
    motion = load_motion(clip)
    moving = animate(avatar, body, motion, size=preview_size, max_frames=animation_frames)
    scale = preview_size / max(avatar.width, avatar.height)
    fitted = render_frames(avatar, body, avatar.source_pose[None], avatar.source_transl[None], avatar.source_camera(scale))[0]
    picks = moving[np.linspace(0, len(moving) - 1, 3).round().astype(int)]
    files = {
        "avatar.safetensors": bundle,
        "avatar.json": json.dumps({**meta, "versions": package_versions(), **(extra or {})}, indent=2, default=float).encode(),
        "avatar.ply": ply_bytes(avatar, body, "photo"),
        "avatar_canonical.ply": ply_bytes(avatar, body, "canonical"),
        "preview.png": png_bytes(frames[0]),
        "turntable.gif": gif_bytes(frames),
        "animation.gif": gif_bytes(moving, fps=min(motion.fps, 30.0)),
        "contact_sheet.png": contact_sheet(photo, fitted, frames[len(frames) // 2], picks, preview_size),
    }
    uris = {}
    for name, data in files.items():
        uri = storage.join(out_dir, name)
        storage.write_bytes(uri, data)
        uris[name] = uri
    return uris
