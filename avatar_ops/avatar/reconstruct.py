"""The reconstruction operator: a tracked photo -> a Gaussian avatar bound to the body mesh.

1. Gaussians are sampled on the fitted body's surface (area-weighted, seeded), flat along the
   triangle (thin along its normal), sized to tile the surface.
2. Visibility: a point z-buffer of the posed surface in the photo's camera; a Gaussian is seen when
   it faces the camera, is the nearest surface at its pixel (within a tolerance) and falls in the
   person mask. Seen Gaussians take the photo's colour there.
3. Clothing and hair: where the mask reaches beyond the body, Gaussians near the body's outline
   are pushed out along their normal until their projection reaches the mask's edge; offsets are
   then smoothed over surface neighbours.
4. Unseen surface (the back, occluded limbs) takes the colour of the nearest seen Gaussians in the
   body's rest pose, so nothing is black or transparent.
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

from avatar_ops.avatar.model import GaussianAvatar, triangle_frames
from avatar_ops.body.base import BodyModel
from avatar_ops.tracking.operator import TrackResult
from avatar_ops.tracking.smplify import project
from avatar_ops.types import FrozenConfig, Rejected


MIN_SEEN = 10  # fewer visible surface points than this rejects the photo
FILL_DONORS = 4  # seen Gaussians blended into each unseen one (<= MIN_SEEN)


class ReconstructConfig(FrozenConfig):
    """How the initial avatar is built."""

    num_gaussians: int = Field(8000, ge=100, description="Gaussians on the body surface.")
    zbuffer_side: int = Field(256, ge=32, description="Longer side of the visibility z-buffer, in pixels.")
    depth_tolerance: float = Field(0.03, gt=0, description="How far (metres) behind the nearest surface a point still counts as seen.")
    max_offset: float = Field(0.15, ge=0, description="Furthest (metres) a Gaussian is pushed out along its normal to cover clothing and hair.")
    outline_cosine: float = Field(0.5, ge=0, le=1, description="Gaussians whose normal is this close to perpendicular to the view (|cos| below) may be pushed outward.")
    smooth_iters: int = Field(3, ge=0, description="Smoothing passes of the offsets over surface neighbours.")
    neighbours: int = Field(8, ge=1, description="Surface neighbours per Gaussian (smoothing, colour fill, the fit's Laplacian).")
    initial_opacity: float = Field(0.9, gt=0, lt=1, description="Opacity of the new Gaussians.")
    thickness: float = Field(0.3, gt=0, le=1, description="Scale along the normal as a fraction of the in-surface scale.")
    seed: int = Field(0, description="Seeds the surface sampling.")


@dataclasses.dataclass
class ReconstructResult:
    """The avatar of one photo plus what it took: ``neighbours`` [N, k] surface neighbours (rest
    pose), ``seen`` [N] bool, the photo's person ``mask`` [H, W] bool (None without one), and
    quality figures."""

    avatar: GaussianAvatar
    neighbours: Tensor
    seen: Tensor
    mask: Tensor | None
    quality: dict[str, float]


def sample_surface(vertices: Tensor, faces: Tensor, count: int, seed: int) -> tuple[Tensor, Tensor]:
    """Area-weighted points on a mesh: [count] face indices and [count, 3] barycentrics."""
    _, area = triangle_frames(vertices[None], faces)
    generator = torch.Generator().manual_seed(seed)
    face = torch.multinomial(area[0].cpu().double(), count, replacement=True, generator=generator)
    r1, r2 = torch.rand(count, generator=generator), torch.rand(count, generator=generator)
    s = r1.sqrt()
    bary = torch.stack([1 - s, s * (1 - r2), s * r2], -1)
    return face.to(vertices.device), bary.to(vertices.device, vertices.dtype)


def _sample_image(image: Tensor, uv: Tensor) -> Tensor:
    """Bilinear samples of [H, W, C] at [N, 2] pixel positions -> [N, C]."""
    h, w = image.shape[:2]
    grid = torch.stack([uv[:, 0] / w * 2 - 1, uv[:, 1] / h * 2 - 1], -1)[None, None]
    out = torch.nn.functional.grid_sample(image.permute(2, 0, 1)[None], grid, align_corners=False, padding_mode="border")
    return out[0, :, 0].T


class ReconstructionOperator:
    """``op(items) -> list[ReconstructResult | Rejected]`` for (TrackResult, rgb [H, W, 3] uint8) pairs."""

    def __init__(self, config: ReconstructConfig, body: BodyModel) -> None:
        self.config = config
        self.body = body

    def check_health(self) -> None:
        """Raise if the operator cannot serve (a forward pass of its body must work)."""
        self.body.check_health()

    def __call__(self, items: Sequence[tuple[TrackResult, np.ndarray]]) -> list[ReconstructResult | Rejected]:
        out: list[ReconstructResult | Rejected] = []
        for track, rgb in items:
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
        rest = body(shape, torch.zeros_like(pose)).vertices[0]
        verts, faces = posed.vertices[0], body.faces
        face, bary = sample_surface(verts, faces, cfg.num_gaussians, cfg.seed)
        frames, area = triangle_frames(verts[None], faces)
        frame = frames[0, face]  # [N, 3, 3]
        normal = frame[..., 2]
        points = (bary[:, :, None] * verts[faces[face]]).sum(1)
        rest_points = (bary[:, :, None] * rest[faces[face]]).sum(1)

        # Visibility against a point z-buffer at reduced resolution.
        scale = min(1.0, cfg.zbuffer_side / max(track.width, track.height))
        zw, zh = max(1, round(track.width * scale)), max(1, round(track.height * scale))
        uv = project(points[None], k[None])[0]
        z = points[:, 2]
        cell = (uv * scale).floor().long()
        inside = (cell[:, 0] >= 0) & (cell[:, 0] < zw) & (cell[:, 1] >= 0) & (cell[:, 1] < zh) & (z > 0)
        flat = (cell[:, 1].clamp(0, zh - 1) * zw + cell[:, 0].clamp(0, zw - 1))
        zbuf = torch.full((zh * zw,), float("inf"), device=dev)
        zbuf.scatter_reduce_(0, flat[inside], z[inside], reduce="amin")
        # Fill pinholes: a pixel's depth is the nearest within its 3x3 neighbourhood.
        zbuf = -torch.nn.functional.max_pool2d(-zbuf.view(1, 1, zh, zw), 3, stride=1, padding=1).view(-1)
        view_dir = points / points.norm(dim=1, keepdim=True)
        facing = (normal * view_dir).sum(1)  # < 0: faces the camera
        mask = torch.from_numpy(np.ascontiguousarray(track.mask)).to(dev)
        has_mask = bool(mask.any())
        px = uv.round().long()
        in_image = (px[:, 0] >= 0) & (px[:, 0] < track.width) & (px[:, 1] >= 0) & (px[:, 1] < track.height)
        in_mask = in_image & (mask[px[:, 1].clamp(0, track.height - 1), px[:, 0].clamp(0, track.width - 1)] if has_mask else in_image)
        seen = inside & (facing < 0) & (z <= zbuf[flat] + cfg.depth_tolerance) & in_mask
        if int(seen.sum()) < MIN_SEEN:
            return Rejected("reconstruction_failed", f"only {int(seen.sum())} of {len(face)} surface points are visible in the photo")

        # Clothing and hair: push outline Gaussians out along their normal to the mask's edge.
        offset = torch.zeros(len(face), device=dev)
        if has_mask and cfg.max_offset > 0:
            offset = self._coverage_offsets(points, normal, facing, seen | (inside & in_mask), k, mask, track)
        rest_np = rest_points.cpu().numpy()
        _, nbr = cKDTree(rest_np).query(rest_np, k=cfg.neighbours + 1)
        neighbours = torch.from_numpy(nbr[:, 1:]).to(dev)
        for _ in range(cfg.smooth_iters):
            offset = torch.maximum(offset, offset[neighbours].mean(1))
        points_out = points + offset[:, None] * normal
        uv_out = project(points_out[None], k[None])[0]

        # Colours: seen from the photo, the rest from the nearest seen Gaussians in the rest pose.
        image = torch.from_numpy(rgb).to(dev).float() / 255.0
        color = _sample_image(image, uv_out)
        seen_idx = torch.nonzero(seen)[:, 0].cpu().numpy()
        unseen_idx = torch.nonzero(~seen)[:, 0].cpu().numpy()
        if len(unseen_idx):
            # At least MIN_SEEN are seen (checked above), so the query is always [U, FILL_DONORS].
            dist, idx = cKDTree(rest_np[seen_idx]).query(rest_np[unseen_idx], k=FILL_DONORS)
            w = 1.0 / np.maximum(dist, 1e-4)
            w = torch.from_numpy(w / w.sum(1, keepdims=True)).to(dev, torch.float32)
            donors = color[torch.from_numpy(seen_idx).to(dev)[torch.from_numpy(idx).to(dev)]]  # [U, k, 3]
            color[torch.from_numpy(unseen_idx).to(dev)] = (w[..., None] * donors).sum(1)

        # Sizes: tile the surface; thin along the normal.
        total_area = float(area[0].sum())
        s = math.sqrt(total_area / len(face)) * 0.7
        log_scale = torch.log(torch.tensor([s, s, s * cfg.thickness], device=dev)).expand(len(face), 3).clone()
        avatar = GaussianAvatar(
            body_model=body.name, shape=shape[0].clone(), face=face, bary=bary, offset=offset,
            rotation=torch.tensor([1.0, 0.0, 0.0, 0.0], device=dev).expand(len(face), 4).clone(),
            log_scale=log_scale, opacity_logit=torch.full((len(face),), math.log(cfg.initial_opacity / (1 - cfg.initial_opacity)), device=dev),
            color=color.clamp(0, 1), source_pose=pose[0].clone(), source_transl=transl[0].clone(), source_K=k.clone(),
            width=track.width, height=track.height,
        )  # fmt: skip
        quality = {"seen_fraction": float(seen.float().mean()), "pushed_fraction": float((offset > 1e-3).float().mean()), "mean_offset_m": float(offset.mean())}
        if has_mask:
            quality["mask_coverage"], quality["mask_iou"] = silhouette_agreement(avatar, body, mask)
        return ReconstructResult(avatar=avatar, neighbours=neighbours, seen=seen, mask=mask if has_mask else None, quality=quality)

    def _coverage_offsets(self, points, normal, facing, candidates, k, mask, track) -> Tensor:
        """Metres to push each outline Gaussian out along its normal so its projection reaches the
        mask's edge (0 elsewhere)."""
        cfg = self.config
        outline = candidates & (facing.abs() < cfg.outline_cosine)
        steps = torch.linspace(0, cfg.max_offset, 16, device=points.device)
        probe = points[:, None] + steps[None, :, None] * normal[:, None]  # [N, S, 3]
        uv = project(probe.reshape(1, -1, 3), k[None])[0].view(len(points), len(steps), 2)
        px = uv.round().long()
        ok = (px[..., 0] >= 0) & (px[..., 0] < track.width) & (px[..., 1] >= 0) & (px[..., 1] < track.height)
        hit = ok & mask[px[..., 1].clamp(0, track.height - 1), px[..., 0].clamp(0, track.width - 1)]
        # Walk outward while still inside the mask (the first step is the point itself).
        run = torch.cumprod(hit.to(torch.uint8), dim=1).bool()
        reach = (run.sum(1) - 1).clamp(min=0)
        return torch.where(outline, steps[reach], torch.zeros_like(steps[reach]))


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
