"""The avatar bundle: ``avatar.safetensors`` + ``avatar.json``.

The safetensors file holds every tensor of a :class:`~avatar_ops.avatar.model.GaussianAvatar`
(bindings, Gaussian parameters, body shape, the photo's pose and camera) and, in its header, the
JSON metadata needed to rebuild it; no pickle anywhere. ``avatar.json`` repeats that metadata next
to it for people and tools, with the package versions that made it.
"""

from __future__ import annotations

import json

from avatar_ops.avatar.model import GaussianAvatar

FORMAT_VERSION = 1


def avatar_to_bytes(avatar: GaussianAvatar) -> tuple[bytes, dict]:
    from safetensors.torch import save

    tensors = {k: getattr(avatar, k).detach().cpu().contiguous() for k in GaussianAvatar.TENSORS}
    meta = {"format_version": FORMAT_VERSION, "body_model": avatar.body_model, "width": avatar.width, "height": avatar.height, "num_gaussians": len(avatar)}
    return save(tensors, metadata={"avatar": json.dumps(meta)}), meta


def avatar_from_bytes(data: bytes) -> GaussianAvatar:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(data)  # validates the file; its header is then safe to read
    except SafetensorError as err:
        raise ValueError(f"not an avatar bundle (safetensors): {err}") from err
    missing = [k for k in GaussianAvatar.TENSORS if k not in tensors]
    if missing:
        raise ValueError(f"not an avatar bundle: tensors {missing} are missing.")
    # safetensors layout: 8-byte little-endian header length, then the JSON header.
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    try:
        meta = json.loads(header.get("__metadata__", {}).get("avatar", "{}"))
    except (ValueError, RecursionError) as err:  # malformed, nested too deeply, over-long integers
        raise ValueError(f"avatar bundle metadata `avatar` is not valid JSON: {err}") from err
    if not isinstance(meta, dict):
        raise ValueError(f"avatar bundle metadata `avatar` must be a JSON object, got {type(meta).__name__}.")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"avatar format_version must be {FORMAT_VERSION}, got {meta.get('format_version')!r}.")
    sizes_ok = all(type(meta.get(k)) is int and meta[k] > 0 for k in ("width", "height"))
    if not (isinstance(meta.get("body_model"), str) and sizes_ok):
        raise ValueError(f"avatar bundle metadata needs `body_model` (a string), `width` and `height` (positive integers), got {str(meta)[:200]}.")
    return GaussianAvatar(body_model=meta["body_model"], width=int(meta["width"]), height=int(meta["height"]), **tensors)


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("avatar-forge", "torch", "gsplat", "anny", "smplx", "diffusers"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found
