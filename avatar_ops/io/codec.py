"""Operator inputs and outputs as bytes (``.npz`` / JSON / safetensors; never pickle).

The batch job's rows and the online API's deployments hand these bytes from one stage to the
next, so both paths carry exactly the same state between operators.
"""

from __future__ import annotations

import json

import numpy as np

from avatar_ops.io.arrays import pack, unpack
from avatar_ops.io.image import DecodedImage, to_uint8


def _json_array(value) -> np.ndarray:
    return np.frombuffer(json.dumps(value).encode(), dtype=np.uint8)


def _from_json_array(array: np.ndarray):
    return json.loads(array.tobytes())


def image_to_bytes(image: DecodedImage) -> bytes:
    arrays = {"rgb": image.rgb}
    if image.alpha is not None:
        arrays["alpha"] = image.alpha
    return pack(**arrays)


def image_from_bytes(data: bytes) -> DecodedImage:
    arrays = unpack(data)
    return DecodedImage(rgb=arrays["rgb"], alpha=arrays.get("alpha"), format="", mode="")


def track_to_bytes(result) -> bytes:
    """A :class:`~avatar_ops.tracking.operator.TrackResult` -> bytes (mask bit-packed)."""
    return pack(meta=_json_array(result.to_json()), mask=np.packbits(result.mask), shape=np.array(result.mask.shape))


def track_from_bytes(data: bytes):
    from avatar_ops.tracking.operator import TrackResult

    arrays = unpack(data)
    mask = np.unpackbits(arrays["mask"])[: int(np.prod(arrays["shape"]))].reshape(arrays["shape"]).astype(bool)
    return TrackResult.from_json(_from_json_array(arrays["meta"]), mask)


def reconstruction_to_bytes(result) -> bytes:
    """A :class:`~avatar_ops.avatar.reconstruct.ReconstructResult` -> bytes."""
    from avatar_ops.avatar.export import avatar_to_bytes

    bundle, _ = avatar_to_bytes(result.avatar)
    extra = {"neighbours": result.neighbours.cpu().numpy(), "seen": result.seen.cpu().numpy()}
    if result.mask is not None:
        extra["mask"] = result.mask.cpu().numpy()
    return pack(avatar=np.frombuffer(bundle, dtype=np.uint8), quality=_json_array(result.quality), **extra)


def reconstruction_from_bytes(data: bytes, device):
    import torch

    from avatar_ops.avatar.export import avatar_from_bytes
    from avatar_ops.avatar.reconstruct import ReconstructResult

    arrays = unpack(data)
    mask = torch.from_numpy(arrays["mask"]).to(device) if "mask" in arrays else None
    return ReconstructResult(
        avatar=avatar_from_bytes(arrays["avatar"].tobytes()).to(device), neighbours=torch.from_numpy(arrays["neighbours"]).to(device),
        seen=torch.from_numpy(arrays["seen"]).to(device), mask=mask, quality=_from_json_array(arrays["quality"]),
    )  # fmt: skip


def synthesis_to_bytes(result) -> bytes:
    """A :class:`~avatar_ops.synthesis.operator.SynthesisResult`'s frames and targets -> bytes
    (frames and masks as uint8)."""
    meta = {"modes": result.modes, "weights": result.weights, "refined": result.refined, "width": result.cameras.width, "height": result.cameras.height}
    return pack(
        frames=to_uint8(result.frames), mask=to_uint8(result.mask), viewmats=result.cameras.viewmats.cpu().numpy(), Ks=result.cameras.Ks.cpu().numpy(),
        pose=result.pose.cpu().numpy(), transl=result.transl.cpu().numpy(), meta=_json_array(meta),
    )  # fmt: skip


def synthesis_from_bytes(data: bytes, device):
    """Inverse of :func:`synthesis_to_bytes` (without the hints, which stay with the synthesis
    stage); :func:`avatar_ops.pipeline.fit_labels` turns it into the fit's pseudo-labels."""
    import torch

    from avatar_ops.render.gaussians import Cameras
    from avatar_ops.synthesis.operator import SynthesisResult

    arrays = unpack(data)
    meta = _from_json_array(arrays["meta"])
    t = lambda key: torch.from_numpy(arrays[key]).to(device)  # noqa: E731
    return SynthesisResult(
        frames=t("frames").float() / 255, hints={}, mask=t("mask").float() / 255, cameras=Cameras(t("viewmats"), t("Ks"), int(meta["width"]), int(meta["height"])),
        pose=t("pose"), transl=t("transl"), modes=meta["modes"], refined=meta["refined"], weights=meta["weights"],
    )  # fmt: skip
