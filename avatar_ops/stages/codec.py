"""Payloads as bytes (``.npz`` of numeric arrays, JSON and safetensors inside; never pickle).

The batch job's rows and the online API's deployments carry these bytes from one stage to the
next, so both paths hand exactly the same state between operators. Everything round-trips
exactly except synthesized frames and their masks, which travel as uint8 (the fit's pseudo-labels
are 8-bit images anyway) and without their hints (which stay with the synthesis stage).
"""

from __future__ import annotations

import json

import numpy as np
import torch

from avatar_ops.avatar.bundle import avatar_from_bytes, avatar_to_bytes
from avatar_ops.avatar.reconstruct import ReconstructResult
from avatar_ops.io.arrays import pack, unpack
from avatar_ops.io.image import DecodedImage, to_uint8
from avatar_ops.render.camera import Cameras
from avatar_ops.stages.payload import Payload
from avatar_ops.synthesis.operator import SynthesisResult
from avatar_ops.tracking.operator import TrackResult

_META_FIELDS = ("source", "id", "out_dir", "preset", "synthesis_mode", "status", "reason", "detail", "quality", "files", "seconds")


def _json_array(value) -> np.ndarray:
    return np.frombuffer(json.dumps(value).encode(), dtype=np.uint8)


def _from_json_array(array: np.ndarray):
    return json.loads(array.tobytes())


def _bundle_array(avatar) -> np.ndarray:
    return np.frombuffer(avatar_to_bytes(avatar)[0], dtype=np.uint8)


def payload_to_bytes(payload: Payload) -> bytes:
    """A :class:`Payload` -> bytes (what it holds: a finished payload is small)."""
    meta = {k: getattr(payload, k) for k in _META_FIELDS}
    arrays: dict[str, np.ndarray] = {}
    if payload.keypoints is not None:
        arrays["keypoints"] = np.stack(payload.keypoints) if payload.keypoints else np.zeros((0, 0, 3), np.float32)
    if payload.image is not None:
        meta["image"] = {"format": payload.image.format, "mode": payload.image.mode, "scale": payload.image.scale, "notes": list(payload.image.notes)}
        arrays["image.rgb"] = payload.image.rgb
        if payload.image.alpha is not None:
            arrays["image.alpha"] = payload.image.alpha
    if payload.track is not None:
        meta["track"] = payload.track.to_json()
        arrays["track.mask"] = np.packbits(payload.track.mask)
        arrays["track.mask_shape"] = np.array(payload.track.mask.shape)
    if payload.reconstruction is not None:
        rec = payload.reconstruction
        meta["reconstruction"] = {"quality": rec.quality}
        arrays.update({"reconstruction.avatar": _bundle_array(rec.avatar), "reconstruction.neighbours": rec.neighbours.cpu().numpy(), "reconstruction.seen": rec.seen.cpu().numpy()})
        if rec.placed is not None:
            arrays["reconstruction.placed"] = rec.placed.cpu().numpy()
        if rec.mask is not None:
            arrays["reconstruction.mask"] = rec.mask.cpu().numpy()
        if rec.unread is not None:
            arrays["reconstruction.unread"] = rec.unread.cpu().numpy()
    if payload.synthesis is not None:
        syn = payload.synthesis
        meta["synthesis"] = {"modes": syn.modes, "weights": syn.weights, "refined": syn.refined, "width": syn.cameras.width, "height": syn.cameras.height}
        arrays.update({
            "synthesis.frames": to_uint8(syn.frames), "synthesis.mask": to_uint8(syn.mask), "synthesis.viewmats": syn.cameras.viewmats.cpu().numpy(),
            "synthesis.Ks": syn.cameras.Ks.cpu().numpy(), "synthesis.pose": syn.pose.cpu().numpy(), "synthesis.transl": syn.transl.cpu().numpy(),
        })  # fmt: skip
    if payload.avatar is not None:
        arrays["avatar"] = _bundle_array(payload.avatar)
    return pack(meta=_json_array(meta), **arrays)


def payload_from_bytes(data: bytes, device: torch.device | str = "cpu") -> Payload:
    """Inverse of :func:`payload_to_bytes`, tensors on ``device``."""
    arrays = unpack(data)
    meta = _from_json_array(arrays["meta"])
    payload = Payload(**{k: meta[k] for k in _META_FIELDS})
    tensor = lambda key: torch.from_numpy(arrays[key]).to(device)  # noqa: E731
    if "keypoints" in arrays:
        payload.keypoints = list(arrays["keypoints"])
    if "image" in meta:
        image_meta = {**meta["image"], "notes": tuple(meta["image"].get("notes", ()))}
        payload.image = DecodedImage(rgb=arrays["image.rgb"], alpha=arrays.get("image.alpha"), **image_meta)
    if "track" in meta:
        shape = arrays["track.mask_shape"]
        mask = np.unpackbits(arrays["track.mask"])[: int(np.prod(shape))].reshape(shape).astype(bool)
        payload.track = TrackResult.from_json(meta["track"], mask)
    if "reconstruction" in meta:
        payload.reconstruction = ReconstructResult(
            avatar=avatar_from_bytes(arrays["reconstruction.avatar"].tobytes()).to(device), neighbours=tensor("reconstruction.neighbours"),
            seen=tensor("reconstruction.seen"), mask=tensor("reconstruction.mask") if "reconstruction.mask" in arrays else None,
            quality=meta["reconstruction"]["quality"], placed=tensor("reconstruction.placed") if "reconstruction.placed" in arrays else None,
            unread=tensor("reconstruction.unread") if "reconstruction.unread" in arrays else None,
        )  # fmt: skip
    if "synthesis" in meta:
        syn = meta["synthesis"]
        payload.synthesis = SynthesisResult(
            frames=tensor("synthesis.frames").float() / 255, hints={}, mask=tensor("synthesis.mask").float() / 255,
            cameras=Cameras(tensor("synthesis.viewmats"), tensor("synthesis.Ks"), int(syn["width"]), int(syn["height"])),
            pose=tensor("synthesis.pose"), transl=tensor("synthesis.transl"), modes=syn["modes"], refined=syn["refined"], weights=syn["weights"],
        )  # fmt: skip
    if "avatar" in arrays:
        payload.avatar = avatar_from_bytes(arrays["avatar"].tobytes()).to(device)
    return payload
