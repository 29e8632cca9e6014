"""``avatar.glb``: the avatar as a skinned glTF 2.0 binary that Blender, three.js and game engines
animate.

* **Mesh.** The avatar's body mesh (its body model, its fitted shape) in the body's own rest pose,
  Anny's A-pose or SMPL-X's T-pose: skinning starts from it, as in the body model.
* **Texture.** The Gaussians' colours (completed where the photo saw nothing) rendered into the
  body's UV layout: MakeHuman's for Anny, which ships with it; for a body without one (SMPL-X's
  ``.npz`` has none) an atlas of one cell per pair of triangles. Each texel's point on the body
  takes the opacity-weighted colours of the Gaussians anchored nearest to it on the surface; texels
  outside every triangle take their nearest covered texel's colour, so filtering never pulls in
  black at a seam.
* **Skeleton.** One node per joint of the body model's own skeleton (Anny's 104 bones, SMPL-X's 55
  joints), inverse bind matrices from the rest pose, and per-vertex joints and weights from the
  body model's skinning weights, every influence kept: ``JOINTS_0``/``WEIGHTS_0`` hold each
  vertex's four largest weights, further sets the rest (Anny has up to 9), so a reader that takes
  every set skins exactly as the body model does. Three.js reads the first set only and
  renormalises it (about 1.5 mm at the 99th percentile of Anny's vertices, 1.6 cm at the worst).
  The joints' own transforms are the canonical T-pose: without an animation the avatar stands in
  it.
* **Animations.** One glTF animation per motion clip (the bundled ``walk`` and ``wave``, or clips
  given by the user), named after it: every joint's rotation and translation per frame, linear, at
  the clip's frame rate. Hands keep the photo's pose, as in ``animation.gif``. SMPL-X's pose
  corrective blendshapes have no glTF counterpart and are left out.

Frame: glTF's, which is the body's canonical one: metres, +y up, the avatar facing +z.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from avatar_ops.avatar.animate import played_motion
from avatar_ops.avatar.model import GaussianAvatar
from avatar_ops.body.base import BindPose, BodyModel, zero_pose
from avatar_ops.body.rotations import matrix_to_quaternion
from avatar_ops.motion import load_motion
from avatar_ops.render.mesh import rasterize_triangles

#: Influences per ``JOINTS_n``/``WEIGHTS_n`` set (glTF's VEC4).
SET_SIZE = 4
#: Most frames of one clip written into the file (10 s at 30 fps); longer clips are cut.
MAX_CLIP_FRAMES = 300
#: Gaussians each texel's colour is drawn from.
TEXEL_NEIGHBOURS = 8

_FLOAT, _UBYTE, _USHORT, _UINT = 5126, 5121, 5123, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_TYPES = {1: "SCALAR", 2: "VEC2", 3: "VEC3", 4: "VEC4", 16: "MAT4"}


def avatar_glb(
    avatar: GaussianAvatar, body: BodyModel, clips: Sequence[str | bytes | Path] = ("walk", "wave"),
    texture_size: int = 1024, max_frames: int = MAX_CLIP_FRAMES, generator: str = "avatar-forge",
) -> bytes:
    """The avatar as a skinned, textured glTF 2.0 binary with one animation per clip.

    Args:
        avatar: the avatar (its body model must be ``body``).
        body: the body model it was built on.
        clips: motion clips, each a bundled clip's name, a ``.npz`` path or ``.npz`` bytes (see
            :func:`avatar_ops.motion.load_motion`); animations are named after the clip (a path's
            stem, ``clip<i>`` for bytes). Names must be distinct.
        texture_size: side of the square base-colour texture in pixels (64 to 4096).
        max_frames: most frames written per clip (1 to :data:`MAX_CLIP_FRAMES` x 10).
        generator: the ``asset.generator`` string.

    Raises:
        ValueError: a bad argument or clip; the message names it.
    """
    avatar.check_body(body)
    if not 64 <= texture_size <= 4096:
        raise ValueError(f"`texture_size` must be 64 to 4096 pixels, got {texture_size}.")
    if not 1 <= max_frames <= 10 * MAX_CLIP_FRAMES:
        raise ValueError(f"`max_frames` must be 1 to {10 * MAX_CLIP_FRAMES}, got {max_frames}.")
    names = [clip_name(c, i) for i, c in enumerate(clips)]
    if len(set(names)) != len(names):
        raise ValueError(f"`clips` must have distinct names, got {names}.")
    motions = [load_motion(c, max_frames=10_000) for c in clips]
    with torch.no_grad():
        avatar = avatar.to(body.device)
        bind = body.bind_pose(avatar.shape)
        uv, face_uv = body_uv_layout(body, texture_size)
        texture = bake_texture(avatar, body, uv, face_uv, texture_size)
        rest_locals = joint_locals(body, avatar.shape, bind, zero_pose(1, device=body.device), torch.zeros(1, 3, device=body.device))
        animations = []
        for name, motion in zip(names, motions):
            pose, transl = played_motion(avatar, motion, max_frames)
            translation, rotation = joint_locals(body, avatar.shape, bind, pose.to(body.device), transl.to(body.device))
            times = np.arange(len(pose), dtype=np.float32) / np.float32(motion.fps)
            animations.append((name, times, translation, rotation))
    builder = _GlbBuilder()
    mesh_arrays = _mesh_arrays(body, bind, uv, face_uv)
    doc = _document(builder, body, bind, mesh_arrays, _png(texture), rest_locals, animations, generator)
    return builder.glb(doc)


def clip_name(clip: str | bytes | Path, index: int) -> str:
    """The animation name of a clip: a bundled clip's name, a path's stem, ``clip<index>`` for bytes."""
    if isinstance(clip, bytes):
        return f"clip{index}"
    return Path(clip).stem if str(clip).endswith(".npz") else str(clip)


def joint_locals(body: BodyModel, shape: torch.Tensor, bind: BindPose, pose: torch.Tensor, transl: torch.Tensor, chunk: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Each joint's transform relative to its parent (the root's in the body frame) in [T, 55, 3]
    poses: translations [T, J, 3] and unit quaternions [T, J, 4] (x, y, z, w; each joint's kept in one
    hemisphere from frame to frame)."""
    parents = torch.tensor([max(p, 0) for p in bind.parents], device=pose.device)
    is_root = torch.tensor([p < 0 for p in bind.parents], device=pose.device)
    translations, rotations = [], []
    for start in range(0, len(pose), chunk):
        p, t = pose[start : start + chunk], transl[start : start + chunk]
        out = body(shape[None].expand(len(p), -1), p, t)
        frames = (out.joint_transforms.double() @ bind.joints.double()).cpu()  # [B, J, 4, 4] posed joint frames
        local = torch.linalg.inv(frames[:, parents]) @ frames
        local = torch.where(is_root.cpu()[None, :, None, None], frames, local)
        translations.append(local[..., :3, 3])
        rotations.append(_quaternions_xyzw(local[..., :3, :3]))
    translation = torch.cat(translations).numpy()
    rotation = torch.cat(rotations).numpy()
    for f in range(1, len(rotation)):  # shortest arc between frames
        flip = (rotation[f] * rotation[f - 1]).sum(-1) < 0
        rotation[f, flip] *= -1
    return translation.astype(np.float32), _unit(rotation).astype(np.float32)


def _quaternions_xyzw(matrix: torch.Tensor) -> torch.Tensor:
    """[..., 3, 3] rotation matrices (float64, orthonormalised here) -> [..., 4] unit (x, y, z, w)."""
    u, _, vh = torch.linalg.svd(matrix)
    r = u @ vh
    wxyz = matrix_to_quaternion(r)
    return torch.cat([wxyz[..., 1:], wxyz[..., :1]], -1)


def _unit(q: np.ndarray) -> np.ndarray:
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def body_uv_layout(body: BodyModel, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``uv`` [U, 2] and ``face_uv`` [F, 3]: the body's own layout, or :func:`triangle_atlas`."""
    layout = body.uv_layout()
    if layout is None:
        return triangle_atlas(int(body.faces.shape[0]), size)
    uv, face_uv = layout
    return uv.detach().cpu().numpy().astype(np.float64), face_uv.detach().cpu().numpy().astype(np.int64)


def triangle_atlas(num_faces: int, size: int, gutter: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A texture layout for a mesh without one: a square grid of cells, two triangles per cell
    (face ``2k`` below the cell's diagonal, ``2k + 1`` above it), each inset by ``gutter`` texels.

    Returns:
        ``uv`` [3F, 2] in [0, 1] and ``face_uv`` [F, 3] (corner ``c`` of face ``f`` at row ``3f + c``).
    """
    cells = math.ceil(num_faces / 2)
    per_row = math.ceil(math.sqrt(cells))
    cell = size / per_row
    if cell < 4 * gutter + 2:
        raise ValueError(f"`texture_size` {size} is too small for {num_faces} faces in a triangle atlas: cells of {cell:.1f} texels.")
    k = np.arange(num_faces) // 2
    x0 = (k % per_row) * cell
    y0 = (k // per_row) * cell
    g, d = gutter, gutter * (1 + math.sqrt(2))  # d keeps the two triangles `gutter` apart across the diagonal
    lower = np.array([[g, g], [cell - d, g], [g, cell - d]])
    upper = np.array([[cell - g, cell - g], [d, cell - g], [cell - g, d]])
    corners = np.where((np.arange(num_faces) % 2 == 0)[:, None, None], lower, upper) + np.stack([x0, y0], 1)[:, None, :]
    return corners.reshape(-1, 2) / size, np.arange(3 * num_faces).reshape(num_faces, 3)


def bake_texture(avatar: GaussianAvatar, body: BodyModel, uv: np.ndarray, face_uv: np.ndarray, size: int) -> np.ndarray:
    """[size, size, 3] uint8: the Gaussians' colours rendered into the UV layout (module docstring)."""
    from scipy import ndimage
    from scipy.spatial import cKDTree

    pixels = torch.from_numpy(uv * size).float()
    frags = rasterize_triangles(pixels, torch.ones(len(uv)), torch.from_numpy(face_uv), size, size)
    covered = frags.mask.numpy()
    if not covered.any():
        raise ValueError("the UV layout covers no texel of the texture.")
    rest = body(avatar.shape[None], zero_pose(1, device=body.device)).vertices[0].cpu().double().numpy()
    faces = body.faces.cpu().numpy()
    face = frags.face.numpy()[covered]
    points = np.einsum("nc,ncx->nx", frags.bary.numpy()[covered].astype(np.float64), rest[faces[face]])
    anchors = np.einsum("nc,ncx->nx", avatar.bary.cpu().double().numpy(), rest[faces[avatar.face.cpu().numpy()]])
    k = min(TEXEL_NEIGHBOURS, len(anchors))
    dist, index = cKDTree(anchors).query(points, k=k, workers=-1)
    dist, index = dist.reshape(len(points), k), index.reshape(len(points), k)
    sigma = np.maximum(dist[:, -1:] / 2, 2e-3)  # the neighbourhood's radius, at least 2 mm
    opacity = torch.sigmoid(avatar.opacity_logit).cpu().double().numpy()
    weight = opacity[index] * np.exp(-0.5 * (dist / sigma) ** 2) + 1e-12
    colors = avatar.color.clamp(0, 1).cpu().double().numpy()
    texel = np.einsum("nk,nkc->nc", weight, colors[index]) / weight.sum(1)[:, None]  # (a broadcast product and sum: 10x slower)
    image = np.zeros((size, size, 3))
    image[covered] = texel
    _, (rows, cols) = ndimage.distance_transform_edt(~covered, return_indices=True)
    image = image[rows, cols]  # empty texels take their nearest covered texel's colour
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def _mesh_arrays(body: BodyModel, bind: BindPose, uv: np.ndarray, face_uv: np.ndarray) -> dict[str, np.ndarray]:
    """Vertex arrays with one vertex per (body vertex, UV) pair: positions, normals, UVs, joint and
    weight sets, and triangle indices."""
    faces = body.faces.cpu().numpy()
    positions = bind.vertices.detach().cpu().double().numpy()
    pairs, indices = np.unique(np.stack([faces.reshape(-1), face_uv.reshape(-1)], 1), axis=0, return_inverse=True)
    vertex, uv_row = pairs[:, 0], pairs[:, 1]
    normals = _vertex_normals(positions, faces)
    weights = body.skinning_weights.detach().cpu().double().numpy()[vertex]
    joints, set_weights = _influence_sets(weights)
    return {
        "positions": positions[vertex].astype(np.float32), "normals": normals[vertex].astype(np.float32),
        "uv": uv[uv_row].astype(np.float32), "joints": joints, "weights": set_weights,
        "indices": indices.reshape(-1).astype(np.uint32), "vertex": vertex,
    }  # fmt: skip


def _vertex_normals(positions: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """[V, 3] area-weighted unit vertex normals (+y for a vertex on degenerate faces only)."""
    corners = positions[faces]
    cross = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals = np.zeros_like(positions)
    for c in range(3):
        np.add.at(normals, faces[:, c], cross)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return np.where(length > 1e-12, normals / np.maximum(length, 1e-12), np.array([0.0, 1.0, 0.0]))


def _influence_sets(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[V, J] skinning weights -> joints [S, V, 4] and weights [S, V, 4] (float32 summing to 1),
    largest first, as few sets of four as the most-influenced vertex needs; unused slots joint 0,
    weight 0."""
    count = int((weights > 0).sum(1).max())
    sets = max(1, math.ceil(count / SET_SIZE))
    order = np.argsort(-weights, axis=1, kind="stable")[:, : sets * SET_SIZE]
    values = np.take_along_axis(weights, order, 1)
    order = np.where(values > 0, order, 0)
    values = values / values.sum(1, keepdims=True)
    values = values.astype(np.float32)
    values[:, 0] += np.float32(1.0) - values.sum(1, dtype=np.float32)  # float32 sums to 1 within an ulp
    dtype = np.uint8 if weights.shape[1] <= 256 else np.uint16
    joints = order.astype(dtype).reshape(len(weights), sets, SET_SIZE).transpose(1, 0, 2)
    return np.ascontiguousarray(joints), np.ascontiguousarray(values.reshape(len(weights), sets, SET_SIZE).transpose(1, 0, 2))


def _document(builder: _GlbBuilder, body: BodyModel, bind: BindPose, mesh: dict, png: bytes, rest_locals, animations, generator: str) -> dict:
    joint_count = len(bind.parents)
    first_joint = 1  # node 0: the skinned mesh, then the joints; both roots of the scene (glTF ignores a skinned mesh's parents)
    attributes = {
        "POSITION": builder.accessor(mesh["positions"], _ARRAY_BUFFER, min_max=True),
        "NORMAL": builder.accessor(mesh["normals"], _ARRAY_BUFFER),
        "TEXCOORD_0": builder.accessor(mesh["uv"], _ARRAY_BUFFER),
    }
    for s in range(len(mesh["joints"])):
        attributes[f"JOINTS_{s}"] = builder.accessor(mesh["joints"][s], _ARRAY_BUFFER)
        attributes[f"WEIGHTS_{s}"] = builder.accessor(mesh["weights"][s], _ARRAY_BUFFER)
    indices = builder.accessor(mesh["indices"], _ELEMENT_ARRAY_BUFFER)
    inverse_bind = np.linalg.inv(bind.joints.detach().cpu().double().numpy())
    inverse_bind[:, 3] = [0.0, 0.0, 0.0, 1.0]
    ibm = builder.accessor(inverse_bind.transpose(0, 2, 1).reshape(joint_count, 16).astype(np.float32), None, kind="MAT4")
    image_view = builder.view(png, None)
    translation, rotation = rest_locals
    root_joint = first_joint + bind.parents.index(-1)
    nodes = [{"name": "body", "mesh": 0, "skin": 0}]
    for j, name in enumerate(body.joint_names):
        node = {"name": name, "translation": translation[0, j].tolist(), "rotation": rotation[0, j].tolist()}
        children = [first_joint + c for c, p in enumerate(bind.parents) if p == j]
        if children:
            node["children"] = children
        nodes.append(node)
    gltf_animations = []
    for name, times, trans, rot in animations:
        time_accessor = builder.accessor(times, None, min_max=True)
        samplers, channels = [], []
        for j in range(joint_count):
            for path, values in (("translation", trans[:, j]), ("rotation", rot[:, j])):
                channels.append({"sampler": len(samplers), "target": {"node": first_joint + j, "path": path}})
                samplers.append({"input": time_accessor, "output": builder.accessor(np.ascontiguousarray(values), None), "interpolation": "LINEAR"})
        gltf_animations.append({"name": name, "samplers": samplers, "channels": channels})
    return {
        "asset": {"version": "2.0", "generator": generator},
        "scene": 0,
        "scenes": [{"name": "avatar", "nodes": [0, root_joint]}],
        "nodes": nodes,
        "meshes": [{"name": "body", "primitives": [{"attributes": attributes, "indices": indices, "material": 0, "mode": 4}]}],
        "skins": [{"name": body.name, "joints": list(range(first_joint, first_joint + joint_count)), "inverseBindMatrices": ibm, "skeleton": root_joint}],
        "materials": [{"name": "avatar", "pbrMetallicRoughness": {"baseColorTexture": {"index": 0}, "metallicFactor": 0.0, "roughnessFactor": 1.0}}],
        "textures": [{"sampler": 0, "source": 0}],
        "samplers": [{"magFilter": 9729, "minFilter": 9987, "wrapS": 33071, "wrapT": 33071}],
        "images": [{"name": "base_color", "bufferView": image_view, "mimeType": "image/png"}],
        "animations": gltf_animations,
        "extras": {"body_model": body.name},
    }  # fmt: skip


class _GlbBuilder:
    """One binary buffer of 4-byte-aligned views, their accessors, and the GLB container."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.length = 0
        self.views: list[dict] = []
        self.accessors: list[dict] = []

    def view(self, data: bytes, target: int | None) -> int:
        view = {"buffer": 0, "byteOffset": self.length, "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        self.views.append(view)
        padded = data + b"\0" * (-len(data) % 4)
        self.chunks.append(padded)
        self.length += len(padded)
        return len(self.views) - 1

    def accessor(self, array: np.ndarray, target: int | None, min_max: bool = False, kind: str | None = None) -> int:
        component = {np.dtype(np.float32): _FLOAT, np.dtype(np.uint8): _UBYTE, np.dtype(np.uint16): _USHORT, np.dtype(np.uint32): _UINT}[array.dtype]
        width = 1 if array.ndim == 1 else int(array.shape[1])
        accessor = {
            "bufferView": self.view(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes(), target),
            "componentType": component, "count": int(array.shape[0]), "type": kind or _TYPES[width],
        }  # fmt: skip
        if min_max:
            flat = array.reshape(len(array), -1)
            accessor["min"], accessor["max"] = flat.min(0).tolist(), flat.max(0).tolist()
        self.accessors.append(accessor)
        return len(self.accessors) - 1

    def glb(self, doc: dict) -> bytes:
        binary = b"".join(self.chunks)
        doc = {**doc, "buffers": [{"byteLength": len(binary)}], "bufferViews": self.views, "accessors": self.accessors}
        text = json.dumps(doc, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 4)
        total = 12 + 8 + len(text) + 8 + len(binary)
        header = b"glTF" + (2).to_bytes(4, "little") + total.to_bytes(4, "little")
        return (
            header + len(text).to_bytes(4, "little") + b"JSON" + text
            + len(binary).to_bytes(4, "little") + b"BIN\0" + binary
        )  # fmt: skip
