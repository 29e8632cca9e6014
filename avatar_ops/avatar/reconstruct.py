"""The reconstruction operator: a tracked photo -> a Gaussian avatar bound to the body mesh.

1. Gaussians are sampled on the fitted body's surface (area-weighted, seeded), flat along their
   triangle, sized to tile the surface, within the part limits (:mod:`avatar_ops.avatar.limits`).
2. The photo is read onto the mesh through its rasterised z-buffer and the unseen surface is
   completed part by part (:mod:`avatar_ops.avatar.completion`).
3. A Gaussian is *seen* when the z-buffer shows its surface point, its triangle faces the camera
   (not edge-on), and it lies inside the mask away from its edge. Seen Gaussians take the photo's
   colour at their pixel; all others take the completed field. Hands always take skin. Feet and
   shins whose keypoints the photo does not show (out of frame) are never seen: a half-body
   photo's fitted legs are a guess, and their feet would read whatever the frame shows there.
   Nor is any part where the photo shows a hand (the hand detector's) and the fitted body has no
   hand or forearm of its own: a hand resting on a thigh is not the thigh.
4. Clothing and hair: where the mask reaches beyond the body, the body's outline is pushed out
   along its normals to the mask's edge, and every ring of the part (front, sides and back) is
   pushed by its outline's median, so a coat is as wide behind as in front.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch
from pydantic import Field
from scipy.spatial import cKDTree
from torch import Tensor

from avatar_ops.avatar.completion import (
    CompletionConfig,
    complete,
    edge_distance,
    observe,
    part_margins,
    readable,
    rings,
    surface_adjacency,
)
from avatar_ops.avatar.limits import PartLimits
from avatar_ops.avatar.model import GaussianAvatar, triangle_frames
from avatar_ops.avatar.subdivision import Subdivision
from avatar_ops.avatar.visibility import MeshView, mesh_view, vertex_normals
from avatar_ops.body.base import KEYPOINT_NAMES, BodyModel, BodyOperator
from avatar_ops.body.parts import BodyParts, Part, body_parts, head_regions
from avatar_ops.render.camera import project
from avatar_ops.tracking.operator import TrackResult
from avatar_ops.types import FrozenConfig, Rejected

MIN_SEEN = 10  # fewer seen Gaussians than this rejects the photo
# Parts the photo places only when it shows one of these keypoints on their side (a half-body
# photo's fitted legs are a guess, and wherever their feet land in the frame is not them).
PLACED_BY = {Part.FOOT: ("ankle", "heel", "big_toe", "small_toe"), Part.SHIN: ("knee", "ankle")}
PUSH_STEPS = 16  # samples along a normal when pushing the outline out to the mask's edge


class ReconstructConfig(FrozenConfig):
    """How the initial avatar is built."""

    num_gaussians: int = Field(8000, ge=100, description="Gaussians on the body surface.")
    completion: CompletionConfig = Field(default_factory=CompletionConfig, description="Reading the photo onto the surface and completing the unseen rest.")
    limits: PartLimits = Field(default_factory=PartLimits, description="Per-part limits on offsets, scales and opacity (the fit keeps them).")
    colour_side: int = Field(1024, ge=32, description="Longer side (pixels) of the z-buffer through which seen Gaussians read their patch of the photo.")
    depth_tolerance: float = Field(0.015, gt=0, description="How far (metres) behind the z-buffer's surface a point still counts as seen.")
    seen_facing: float = Field(0.15, ge=0, lt=1, description="Gaussians whose triangle faces the camera less squarely than this cosine take the completed colour, not the photo's.")
    outline_cosine: float = Field(0.35, ge=0, le=1, description="Vertices whose normal is this close to perpendicular to the view (|cos| below) form the outline pushed out to the mask's edge.")
    smooth_iters: int = Field(5, ge=0, description="Smoothing passes of the push-out offsets over surface neighbours.")
    neighbours: int = Field(8, ge=1, description="Surface neighbours per Gaussian (the fit's Laplacian).")
    initial_opacity: float = Field(0.95, gt=0, lt=1, description="Opacity of the new Gaussians.")
    seen_density: float = Field(2.5, ge=1, description="How much denser Gaussians are laid on the surface the photo shows than on the rest.")
    size_factor: float = Field(0.6, gt=0, description="In-surface scale as a fraction of the mean spacing between Gaussians.")
    thickness: float = Field(0.1, gt=0, le=1, description="Scale along the normal as a fraction of the in-surface scale.")
    inward: float = Field(0.4, ge=0, le=1, description="Gaussians sit this many in-surface scales below the surface, so their footprints end where the surface does (outlines from every side as tight as the body's).")
    seed: int = Field(0, description="Seeds the surface sampling.")
    min_keypoint_confidence: float = Field(0.3, ge=0, le=1, description="Feet and shins whose keypoints are all below this confidence (out of frame) neither read the photo nor take its colour in the fit.")
    hand_margin: float = Field(0.15, ge=0, le=1, description="The photo's hands, as the hand detector saw them (each hand's landmarks' outline, grown by this fraction of the hand's size), are read by no part of the body where the fitted body shows no hand or forearm of its own: a hand resting on a thigh is not the thigh, and a body fitted a little off would wear it there (hands take skin).")


@dataclasses.dataclass
class ReconstructInput:
    """One photo to build an avatar from: its ``track`` and its pixels ``rgb`` [H, W, 3] uint8."""

    track: TrackResult
    rgb: np.ndarray


@dataclasses.dataclass
class ReconstructResult:
    """The avatar of one photo plus what it took: ``neighbours`` [N, k] surface neighbours (rest
    pose), ``seen`` [N] bool (coloured from the photo), the photo's person ``mask`` [H, W] bool
    (None without one), and quality figures (``coverage_*``: the fraction of each part group
    the photo shows). ``placed`` [N] bool: Gaussians on parts the photo places (None: all); the
    rest, on feet and shins whose keypoints are out of frame, neither read the photo nor take
    its colour in the fit. ``unread`` [H, W] bool: the photo's pixels whose colour no Gaussian
    takes, in reconstruction or in the fit (the photo's hands; None: none)."""

    avatar: GaussianAvatar
    neighbours: Tensor
    seen: Tensor
    mask: Tensor | None
    quality: dict[str, float]
    placed: Tensor | None = None
    unread: Tensor | None = None


@dataclasses.dataclass
class Layout:
    """Gaussians sampled on a mesh: ``face`` [N], ``bary`` [N, 3], ``log_scale`` [N, 3]."""

    face: Tensor
    bary: Tensor
    log_scale: Tensor

    def avatar(self, body_model: str, shape: Tensor, color: Tensor, pose: Tensor, transl: Tensor, K: Tensor, width: int, height: int, opacity: float = 0.95, offset: Tensor | None = None) -> GaussianAvatar:
        """A :class:`GaussianAvatar` with this layout (identity rotations in the triangle frame)."""
        n, dev = len(self.face), self.face.device
        return GaussianAvatar(
            body_model=body_model, shape=shape.clone(), face=self.face, bary=self.bary,
            offset=torch.zeros(n, device=dev) if offset is None else offset,
            rotation=torch.tensor([1.0, 0.0, 0.0, 0.0], device=dev).expand(n, 4).clone(), log_scale=self.log_scale.clone(),
            opacity_logit=torch.full((n,), math.log(opacity / (1 - opacity)), device=dev), color=color.clamp(0, 1),
            source_pose=pose.clone(), source_transl=transl.clone(), source_K=K.clone(), width=width, height=height,
        )  # fmt: skip


def photo_hands(hands: dict[str, dict], width: int, height: int, margin: float) -> np.ndarray | None:
    """[H, W] bool: the photo's hands as the hand detector saw them (``TrackResult.hands``: per
    side, ``keypoints`` [21, 3] pixels), each its landmarks' convex outline grown by ``margin``
    times the hand's size (the larger side of the landmarks' box: fingers are wider than the
    lines through their joints); None when no hand was seen."""
    from PIL import Image, ImageDraw
    from scipy.spatial import ConvexHull, QhullError

    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    drawn = False
    for hand in hands.values():
        points = np.asarray(hand.get("keypoints", ()), dtype=np.float64).reshape(-1, 3)[:, :2]
        points = points[np.isfinite(points).all(1)]
        if len(points) < 3:
            continue
        try:
            outline = points[ConvexHull(points).vertices]
        except QhullError:  # landmarks on a line: no area to draw
            continue
        grow = margin * float((points.max(0) - points.min(0)).max())
        ring = [tuple(p) for p in outline]
        draw.polygon(ring, fill=255)
        if grow > 0:  # the outline grown by a disc: thick edges and round corners
            draw.line(ring + ring[:1], fill=255, width=max(1, round(2 * grow)))
            for x, y in ring:
                draw.ellipse((x - grow, y - grow, x + grow, y + grow), fill=255)
        drawn = True
    return np.asarray(canvas) > 0 if drawn else None


def sample_surface(vertices: Tensor, faces: Tensor, count: int, seed: int, face_weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Random points on a mesh, by area (times ``face_weight`` [F] when given): [count] face
    indices and [count, 3] barycentrics."""
    _, area = triangle_frames(vertices[None], faces)
    weight = area[0] if face_weight is None else area[0] * face_weight
    generator = torch.Generator().manual_seed(seed)
    face = torch.multinomial(weight.cpu().double(), count, replacement=True, generator=generator)
    r1, r2 = torch.rand(count, generator=generator), torch.rand(count, generator=generator)
    s = r1.sqrt()
    bary = torch.stack([1 - s, s * (1 - r2), s * r2], -1)
    return face.to(vertices.device), bary.to(vertices.device, vertices.dtype)


def relaxed_samples(vertices: Tensor, faces: Tensor, count: int, seed: int, face_weight: Tensor | None = None, iters: int = 4, density: int = 16) -> tuple[Tensor, Tensor, Tensor]:
    """``count`` evenly spread points on a mesh: random points moved by a few Lloyd steps over a
    ``density`` times denser random sampling (each point to the dense sample nearest the centroid
    of the dense samples nearest it). Random points leave gaps that show as holes; these tile the
    surface like a blue noise, ``face_weight`` [F] times denser where it is larger.

    Returns:
        [count] faces, [count, 3] barycentrics and [count] the surface area (m^2) each point's cell covers.
    """
    dense_face, dense_bary = sample_surface(vertices, faces, density * count, seed, face_weight)
    dense = (dense_bary[:, :, None] * vertices[faces[dense_face]]).sum(1).cpu().numpy().astype(np.float64)
    chosen = np.arange(count)  # the dense samples are in random order: the first `count` are a random sampling
    dense_tree = cKDTree(dense)
    for step in range(iters + 1):
        _, owner = cKDTree(dense[chosen]).query(dense)
        if step == iters:
            break
        counts = np.bincount(owner, minlength=count)
        centroid = np.zeros((count, 3))
        np.add.at(centroid, owner, dense)
        have = counts > 0
        centroid[have] /= counts[have, None]
        _, nearest = dense_tree.query(centroid[have])
        chosen[have] = nearest
    # A dense sample drawn with weight w stands for (total weighted area / samples) / w of surface.
    _, area = triangle_frames(vertices[None], faces)
    w = torch.ones(len(faces), device=vertices.device) if face_weight is None else face_weight
    per_sample = (float((area[0] * w).sum()) / len(dense)) / w[dense_face].cpu().double().numpy()
    cell = np.bincount(owner, weights=per_sample, minlength=count)
    cell = np.where(cell > 0, cell, float(area[0].sum()) / count)
    index = torch.from_numpy(chosen).to(dense_face.device)
    return dense_face[index], dense_bary[index], torch.from_numpy(cell).to(vertices.device, vertices.dtype)


def initial_layout(vertices: Tensor, faces: Tensor, count: int, seed: int = 0, size_factor: float = 0.6, thickness: float = 0.1, face_weight: Tensor | None = None) -> Layout:
    """``count`` Gaussians tiling the mesh (:func:`relaxed_samples`; denser where ``face_weight``
    [F] is larger), each with an in-surface scale ``size_factor`` times the side of its cell and
    ``thickness`` of that along the normal."""
    face, bary, cell = relaxed_samples(vertices, faces, count, seed, face_weight)
    s = cell.sqrt() * size_factor
    log_scale = torch.log(torch.stack([s, s, s * thickness], 1))
    return Layout(face=face, bary=bary, log_scale=log_scale)


def _sample_image(image: Tensor, uv: Tensor) -> Tensor:
    """Bilinear samples of [H, W, C] at [N, 2] pixel positions -> [N, C]."""
    h, w = image.shape[:2]
    grid = torch.stack([uv[:, 0] / w * 2 - 1, uv[:, 1] / h * 2 - 1], -1)[None, None]
    out = torch.nn.functional.grid_sample(image.permute(2, 0, 1)[None], grid, align_corners=False, padding_mode="border")
    return out[0, :, 0].T


class ReconstructionOperator(BodyOperator):
    """``op(items: Sequence[ReconstructInput]) -> list[ReconstructResult | Rejected]``, one per item, in order."""

    config_class = ReconstructConfig

    def __init__(self, config: ReconstructConfig, body: BodyModel) -> None:
        super().__init__(config, body)
        self.parts = body_parts(body)
        self.face_parts = self.parts.of_faces(body.faces)
        # The colour field lives on the body mesh cut finer (hems and collars are narrower than
        # the body's own vertex spacing).
        self.fine = Subdivision.of(body.faces, body.num_vertices)
        self.fine_parts = self.fine.labels(self.parts)
        self.fine_face_part = self.fine.face_labels(self.face_parts.part)

    def __call__(self, items: Sequence[ReconstructInput]) -> list[ReconstructResult | Rejected]:
        out: list[ReconstructResult | Rejected] = []
        for item in items:
            track, rgb = item.track, item.rgb
            if track.body_model != self.body.name:
                raise ValueError(f"Tracking used the {track.body_model!r} body but this operator has {self.body.name!r}.")
            if rgb.shape[:2] != (track.height, track.width):
                raise ValueError(f"`rgb` must be the tracked photo ({track.height}x{track.width}), got {rgb.shape[:2]}.")
            with torch.no_grad():
                out.append(self._one(track, rgb))
        return out

    def _one(self, track: TrackResult, rgb: np.ndarray) -> ReconstructResult | Rejected:
        cfg, body = self.config, self.body
        dev = body.device
        shape = torch.from_numpy(track.shape).to(dev)[None]
        pose = torch.from_numpy(track.pose).to(dev)[None]
        transl = torch.from_numpy(track.transl).to(dev)[None]
        k = torch.from_numpy(track.intrinsics).to(dev)
        posed = body(shape, pose, transl)
        rest = body(shape, torch.zeros_like(pose))
        verts, faces = posed.vertices[0], body.faces
        normals = vertex_normals(verts, faces)
        view = mesh_view(verts, faces, k, track.width, track.height, cfg.completion.zbuffer_side)
        mask = torch.from_numpy(np.ascontiguousarray(track.mask)).to(dev)
        has_mask = bool(mask.any())
        if not has_mask:
            # No mask: the body's own silhouette stands in for it (nothing is pushed out).
            mask = torch.nn.functional.interpolate(view.frags.mask.float()[None, None], size=(track.height, track.width), mode="nearest")[0, 0] > 0.5
        image = torch.from_numpy(rgb).to(dev).float() / 255.0
        # Where the photo's colours are read: the mask without the photo's own hands, where the
        # fitted body shows no hand or forearm of its own (a body fitted off puts the thigh there).
        hands = photo_hands(track.hands, track.width, track.height, cfg.hand_margin)
        unread = None
        if hands is not None:
            own = view.frags.mask & torch.isin(self.face_parts.part[view.frags.face.clamp(min=0)], torch.tensor([int(Part.HAND), int(Part.FOREARM)], device=dev))
            own = torch.nn.functional.interpolate(own.float()[None, None], size=(track.height, track.width), mode="nearest")[0, 0] > 0.5
            unread = torch.from_numpy(hands).to(dev) & ~own
            unread = unread if bool(unread.any()) else None
        read_mask = mask if unread is None else mask & ~unread
        fine_verts = self.fine.vertices(verts)
        obs = observe(image, read_mask, self.fine.view(view), fine_verts, self.fine.faces, vertex_normals(fine_verts, self.fine.faces), cfg.completion, self.fine_face_part, self.fine_parts.part)
        placed_vertex = self._placed(track.keypoints, self.fine_parts)
        obs = dataclasses.replace(obs, known=obs.known & placed_vertex, weight=torch.where(placed_vertex, obs.weight, torch.zeros_like(obs.weight)))
        completion = complete(obs, self.fine.vertices(rest.vertices[0]), rest.keypoints[0], self.fine_parts, self.fine.faces, cfg.completion)

        # Where the photo shows the surface it has detail to hold: more, smaller Gaussians there;
        # the completed rest is smooth and takes fewer, larger ones.
        seen_faces = obs.known[faces].float().mean(1) > 0.5
        face_weight = torch.where(seen_faces, torch.full_like(seen_faces, cfg.seen_density, dtype=torch.float32), torch.ones_like(seen_faces, dtype=torch.float32))
        layout = initial_layout(verts, faces, cfg.num_gaussians, cfg.seed, cfg.size_factor, cfg.thickness, face_weight)
        part = self.face_parts.part[layout.face]
        corners = faces[layout.face]  # [N, 3]
        frames, _ = triangle_frames(verts[None], faces)
        normal = frames[0, layout.face, :, 2]
        points = (layout.bary[:, :, None] * verts[corners]).sum(1)
        visible, facing = view.visible(points, normal, cfg.depth_tolerance)
        visible &= view.shows_own_part(points, part, self.face_parts.part)
        if has_mask:
            vertex_offset, growth = self._push_out(verts, normals, view, mask, rest.vertices[0], rest.keypoints[0], k, track)
        else:
            vertex_offset, growth = torch.zeros(len(verts), device=dev), torch.ones(len(verts), device=dev)
        layout.log_scale[:, :2] += torch.log((layout.bary * growth[corners]).sum(1))[:, None]
        offset = (layout.bary * vertex_offset[corners]).sum(1) - cfg.inward * layout.log_scale[:, 0].exp()
        pushed = points + offset[:, None] * normal
        # Seen: visible, squarely enough, and inside the mask away from its edge, both on the body
        # and where the Gaussian sits once pushed out (clothing), so no background is read.
        on_body, _ = readable(read_mask, view, cfg.completion, self.face_parts.part)
        small_mask, dist = edge_distance(read_mask, view.width, view.height)
        margin = part_margins(small_mask, cfg.completion, part == Part.FOOT)

        def at(where: Tensor, points: Tensor) -> Tensor:
            px = view.pixels(points).floor().long()
            return where[px[:, 1].clamp(0, view.height - 1), px[:, 0].clamp(0, view.width - 1)]

        placed = self._placed(track.keypoints, self.face_parts)[layout.face]
        seen = visible & (facing >= cfg.seen_facing) & at(on_body, points) & at(small_mask, pushed) & (at(dist, pushed) > margin) & (part != Part.HAND) & placed
        if int(seen.sum()) < MIN_SEEN:
            return Rejected("reconstruction_failed", f"only {int(seen.sum())} of {len(part)} surface points are visible in the photo")
        uv = project(pushed[None], k[None])[0]
        fine_face, fine_bary = self.fine.locate(layout.face, layout.bary)
        # Hands and feet are completed by rules of their own (skin; shoes): where they meet a
        # limb, a Gaussian takes the colour of its own side of the seam only, so a shin does not
        # take in the shoe's colour, nor a hand the cuff's.
        corners_fine = self.fine.faces[fine_face]
        ends = torch.tensor([int(Part.HAND), int(Part.FOOT)], device=dev)
        own = torch.isin(self.fine_parts.part[corners_fine], ends) == torch.isin(part, ends)[:, None]
        weight = torch.where(own.any(1, keepdim=True), fine_bary * own, fine_bary)
        weight = weight / weight.sum(1, keepdim=True).clamp(min=1e-12)
        colour = (weight[:, :, None] * completion.colour[corners_fine]).sum(1)
        colour = torch.where(seen[:, None], _sample_image(image, uv), colour)
        colour = self._patch_colours(colour, seen, points, verts, k, image, read_mask, track)
        avatar = layout.avatar(body.name, shape[0], colour, pose[0], transl[0], k, track.width, track.height, cfg.initial_opacity, offset)
        cfg.limits.project(part, avatar.offset, avatar.rotation, avatar.log_scale, avatar.opacity_logit)

        rest_points = (layout.bary[:, :, None] * rest.vertices[0][corners]).sum(1).cpu().numpy()
        _, nbr = cKDTree(rest_points).query(rest_points, k=cfg.neighbours + 1)
        neighbours = torch.from_numpy(nbr[:, 1:]).to(dev)
        quality = {
            "seen_fraction": float(seen.float().mean()), "pushed_fraction": float((avatar.offset > 1e-3).float().mean()),
            "mean_offset_m": float(avatar.offset.mean()), **{f"coverage_{k}": v for k, v in completion.coverage.items()},
        }  # fmt: skip
        if has_mask:
            quality["mask_coverage"], quality["mask_iou"] = silhouette_agreement(avatar, body, mask)
        return ReconstructResult(avatar=avatar, neighbours=neighbours, seen=seen, mask=mask if has_mask else None, quality=quality, placed=placed, unread=unread)

    def _placed(self, keypoints: np.ndarray, parts: BodyParts) -> Tensor:
        """[len(parts)] bool: False on the feet and shins (:data:`PLACED_BY`) of a side whose
        keypoints ([K, 3] x, y, confidence) are all below ``min_keypoint_confidence``."""
        placed = torch.ones_like(parts.part, dtype=torch.bool)
        for part, names in PLACED_BY.items():
            for side, prefix in ((1, "left"), (-1, "right")):
                confidence = max(float(keypoints[KEYPOINT_NAMES.index(f"{prefix}_{name}"), 2]) for name in names)
                if confidence < self.config.min_keypoint_confidence:
                    placed &= ~((parts.part == part) & (parts.side == side))
        return placed

    def _patch_colours(self, colour: Tensor, seen: Tensor, points: Tensor, verts: Tensor, k: Tensor, image: Tensor, mask: Tensor, track: TrackResult) -> Tensor:
        """Seen Gaussians' colours as the mean of the photo's pixels whose surface point is
        nearest to them (their patch of the photo, anti-aliased), read through a z-buffer at the
        photo's resolution (``colour_side`` at most), away from the mask's edge. A pixel goes to the
        Gaussian nearest its surface point and counts only if that one is seen; seen Gaussians no
        pixel falls to keep ``colour``."""
        cfg = self.config
        view = mesh_view(verts, self.body.faces, k, track.width, track.height, cfg.colour_side)
        small = torch.nn.functional.interpolate(image.permute(2, 0, 1)[None], size=(view.height, view.width), mode="area")[0].permute(1, 2, 0)
        valid, _ = readable(mask, view, cfg.completion, self.face_parts.part)
        if not valid.any() or not seen.any():
            return colour
        f = view.frags.face[valid]
        surface = (view.frags.bary[valid][:, :, None] * verts[self.body.faces[f]]).sum(1)
        # A pixel belongs to the Gaussian nearest its surface point, of all of them: a chest pixel
        # beside a forearm held in front of it is the chest's, and unseen, not the forearm's.
        _, owner = cKDTree(points.cpu().numpy()).query(surface.cpu().numpy())
        owner = torch.from_numpy(owner).to(colour.device)
        keep = seen[owner]
        total = torch.zeros(len(points), 3, device=colour.device).index_add_(0, owner[keep], small[valid][keep])
        count = torch.bincount(owner[keep], minlength=len(points)).float()
        patch = colour.clone()
        have = count > 0
        patch[have] = total[have] / count[have, None]
        return patch

    def _push_out(self, verts: Tensor, normals: Tensor, view: MeshView, mask: Tensor, rest: Tensor, rest_keypoints: Tensor, k: Tensor, track: TrackResult) -> tuple[Tensor, Tensor]:
        """[V] metres each vertex is pushed out along its normal: the outline to the mask's edge,
        every other vertex of its ring (torso, neck, limbs, scalp) by the ring outline's median;
        and [V] how much the surface grows there (a ring of radius r pushed out by d grows by
        1 + d / r), so the Gaussians on it can grow with it and leave no gaps."""
        cfg, parts = self.config, self.parts
        max_offset, _ = cfg.limits.per_gaussian(parts.part)
        visible, facing = view.visible(verts, normals, cfg.depth_tolerance)
        face, scalp = head_regions(rest, rest_keypoints, parts, vertex_normals(rest, self.body.faces))
        pushable = ~face & (parts.part != Part.HAND)
        outline = visible & (facing.abs() < cfg.outline_cosine) & pushable
        # Walk out along the normal while the projection stays inside the mask.
        steps = torch.linspace(0, 1, PUSH_STEPS, device=verts.device)[None, :] * max_offset[:, None]  # [V, S]
        probe = verts[:, None] + steps[..., None] * normals[:, None]
        uv = project(probe.reshape(1, -1, 3), k[None])[0].view(len(verts), PUSH_STEPS, 2)
        px = uv.round().long()
        ok = (px[..., 0] >= 0) & (px[..., 0] < track.width) & (px[..., 1] >= 0) & (px[..., 1] < track.height)
        hit = ok & mask[px[..., 1].clamp(0, track.height - 1), px[..., 0].clamp(0, track.width - 1)]
        # Only the mask's reach beyond the body's own silhouette is clothing or hair: the walk
        # starts where it leaves the body (an outline vertex a little inside its own silhouette is
        # not pushed) and stops where it leaves the mask or meets the body again (an arm's inner
        # side is not pushed through the torso beside it).
        silhouette = torch.nn.functional.interpolate(view.frags.mask.float()[None, None], size=(track.height, track.width), mode="nearest")[0, 0] > 0.5
        on_body = ok & silhouette[px[..., 1].clamp(0, track.height - 1), px[..., 0].clamp(0, track.width - 1)]
        start = torch.cumprod((on_body & hit).to(torch.uint8), dim=1).sum(1)  # steps on the body first
        index = torch.arange(PUSH_STEPS, device=verts.device)[None]
        beyond = torch.where(index < start[:, None], torch.ones_like(hit), hit & ~on_body)
        run = torch.cumprod(beyond.to(torch.uint8), dim=1).sum(1) - start
        own = torch.where(outline, run.clamp(min=0).float() * steps[:, 1], torch.zeros_like(max_offset))
        # Rings: the scalp and the ring parts, cut along their rest-pose axis.
        ring, key = rings(rest, parts.part, parts.side, cfg.completion.ring_width, cfg.completion.foot_ring_width)
        # The scalp is cut into rings too (by height), for hair as deep behind as at the sides.
        key = torch.where(scalp, 10_000_000 + ring - ring.min(), key)
        ring_part = key >= 0
        offset = own.clone()
        radius = torch.full_like(own, float("inf"))
        for value in torch.unique(key[ring_part & outline]):
            members = ring_part & (key == value)
            push = own[members & outline]
            if len(push) >= 2:
                offset[members & ~outline] = push.median()
            ring_points = verts[members]
            radius[members] = (ring_points - ring_points.mean(0)).norm(dim=1).mean().clamp(min=0.02)
        if cfg.smooth_iters:
            adj = surface_adjacency(self.body.faces.cpu().numpy(), len(verts), parts.part.cpu().numpy())
            free = (~outline & pushable).cpu().numpy()
            values = offset.cpu().double().numpy()
            for _ in range(cfg.smooth_iters):
                values[free] = (adj @ values)[free]
            offset = torch.from_numpy(values).to(offset)
        offset = torch.where(pushable, offset, torch.zeros_like(offset))
        return offset, 1 + offset.clamp(min=0) / radius


def silhouette_agreement(avatar: GaussianAvatar, body: BodyModel, mask: Tensor, side: int = 160) -> tuple[float, float]:
    """(coverage of the mask, IoU) of the avatar rendered in the photo's camera at low resolution."""
    scale = min(1.0, side / max(avatar.width, avatar.height))
    cams = avatar.source_camera(scale)
    with torch.no_grad():
        out = avatar.render(body, avatar.source_pose[None], avatar.source_transl[None], cams)
    alpha = out.alpha[0, ..., 0] > 0.5
    small = torch.nn.functional.interpolate(mask[None, None].float(), size=alpha.shape, mode="area")[0, 0] > 0.5
    inter = (alpha & small).sum().item()
    union = (alpha | small).sum().item()
    return inter / max(small.sum().item(), 1), inter / max(union, 1)

