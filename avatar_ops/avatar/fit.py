"""The fitting operator: optimise an avatar's Gaussians against its photo and pseudo-label views.

Loss per view: L1 + D-SSIM on colour against the photo inside the mask, away from its edge band
(its pixels mix in the background), plus L1 of alpha against the mask everywhere: an edge Gaussian
cannot match the silhouette by turning dark or taking the background's colour, only by its shape
and place. Pseudo-labels (from the synthesis stage) add views with their own camera, body pose and
weight. The avatars of one call are fitted together (see :class:`FittingOperator`).

What the photo cannot see is protected:

* a view's loss reaches only the Gaussians that view sees (the posed mesh's z-buffer), weighted
  down towards grazing angles; Gaussians no view sees are not changed at all, so they keep the
  reconstruction's completion, and poorly seen ones are held to it by anchor terms: colour, and
  size and opacity (the outline's Gaussians, seen edge-on, may move to fit the silhouette, but a
  disc grown or thinned for an edge-on view shows from behind as a smear or a hole);
* a Gaussian reconstruction did not read (the bands along the mask's edge and the body's own
  and inner outlines, where the photo may show what lies behind or in front of the body) moves
  its colour only a little (`unread_colour_reach`): hair hanging behind the neck is not the neck;
* a Gaussian of another part lying in the photo's own hands (as the hand detector saw them)
  keeps its colour: a hand resting on a thigh is not the thigh; with `fit_hand_colours` off, the
  hands keep their (skin) colour too;
* the part limits (:mod:`avatar_ops.avatar.limits`) hold offsets, scales, anisotropy and opacity:
  hinge penalties before a limit, an exact projection after every step. Rotations stay turns
  about the normal, so every Gaussian stays a flat disc on its triangle;
* offsets are held to the reconstruction's push-out, and smoothed between neighbours.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from avatar_ops.avatar.completion import RING_WIDTH, rings
from avatar_ops.avatar.limits import PartLimits
from avatar_ops.avatar.model import RASTERIZE_MODE, GaussianAvatar, body_surface
from avatar_ops.avatar.reconstruct import ReconstructResult
from avatar_ops.avatar.visibility import mesh_view
from avatar_ops.body.base import BodyModel, BodyOperator
from avatar_ops.body.parts import Part, body_parts
from avatar_ops.render.camera import Cameras
from avatar_ops.render.gaussians import rasterize_many
from avatar_ops.types import FrozenConfig, Preset

PRESET_SETTINGS = {
    # longer side of the supervision images, Gaussians, iterations
    "preview": {"resolution": 256, "num_gaussians": 8000, "iters": 60},
    "standard": {"resolution": 320, "num_gaussians": 20000, "iters": 200},
    "high": {"resolution": 512, "num_gaussians": 50000, "iters": 600},
}


class FitConfig(FrozenConfig):
    """Optimisation of the Gaussians. ``preset`` sets resolution, Gaussian count and iterations."""

    preset: Preset = Field("preview", description="Quality preset.")
    lr: float = Field(0.02, gt=0, description="Adam learning rate (scaled per parameter group).")
    ssim_weight: float = Field(0.2, ge=0, le=1, description="Weight of D-SSIM against L1.")
    alpha_weight: float = Field(1.0, ge=0, description="Weight of the alpha-vs-mask term.")
    edge_width: int = Field(1, ge=0, description="Half-width (pixels at the fit's resolution) of the mask's edge band, where colour is not fitted (its pixels mix in the background).")
    pseudo_label_weight: float = Field(0.3, ge=0, description="Default weight of a pseudo-label view (the photo weighs 1).")
    offset_weight: float = Field(1.0, ge=0, description="Weight of the penalty holding offsets to the reconstruction's push-out (per metre squared, x100).")
    fit_hand_colours: bool = Field(True, description="Fit the hands' colours to the photo (else they keep the skin colour they were completed with: hands in photos are small, often blurred, and often hold something).")
    ring_width: float = Field(RING_WIDTH, gt=0, description="Length (metres) of the rings the fit's push-out is carried round (to the Gaussians no view moves).")
    body_reach: int = Field(2, ge=0, description="Pixels (at the fit's resolution) beyond the body's own silhouette a Gaussian may sit and still have its colour fitted.")
    unread_colour_reach: float = Field(0.2, ge=0, le=1, description="How far (per channel, colours in [0, 1]) the fit may move the colour of a Gaussian whose colour reconstruction did not read from the photo (nor a pseudo-label shows, nor a hand). Reconstruction leaves bands along the body's own outline and its inner outlines unread: there the photo may show what lies behind or in front of the body, and hair hanging behind the neck painted the neck black. 0: only what reconstruction read is fitted; 1: every Gaussian the photo shows, as far as the photo says.")
    offset_range: float = Field(0.03, ge=0, description="Furthest (metres) the fit may move a Gaussian's offset from the reconstruction's.")
    laplacian_weight: float = Field(1.0, ge=0, description="Weight of the offset and colour smoothness between neighbours.")
    anchor_weight: float = Field(10.0, ge=0, description="Weight of the term holding colours to the reconstruction's, in proportion to how poorly the views see each Gaussian (summed over Gaussians, per photo pixel).")
    shape_anchor_weight: float = Field(10.0, ge=0, description="Weight of the term holding log-scales and opacity logits to the reconstruction's, in proportion to how poorly the views see each Gaussian (summed over Gaussians, per photo pixel): an outline Gaussian seen only edge-on still shapes the silhouette, but keeps about the size and opacity the views behind it need.")
    limits_weight: float = Field(1.0, ge=0, description="Weight of the hinge penalties on offsets, scales and anisotropy near their limits.")
    grazing: tuple[float, float] = Field((0.05, 0.35), description="Facing cosines between which a view's weight on a Gaussian rises from 0 to 1.")
    limits: PartLimits = Field(default_factory=PartLimits, description="Per-part limits the fit keeps.")
    iters: int | None = Field(None, ge=0, description="Overrides the preset's iterations.")
    resolution: int | None = Field(None, ge=16, description="Overrides the preset's supervision resolution (longer side, pixels).")

    @property
    def settings(self) -> dict:
        settings = dict(PRESET_SETTINGS[self.preset])
        if self.iters is not None:
            settings["iters"] = self.iters
        if self.resolution is not None:
            settings["resolution"] = self.resolution
        return settings


@dataclasses.dataclass
class PseudoLabel:
    """One extra supervision view.

    Attributes:
        image: [H, W, 3] float in [0, 1].
        mask: [H, W] float in [0, 1] (where the label is trusted).
        camera: a one-camera :class:`Cameras` (matching H, W).
        pose: [55, 3] body pose of the view; transl [3].
        weight: relative weight (None: the config's ``pseudo_label_weight``).
        mode: which synthesis mode produced it (``view`` or ``pose``), for the record.
    """

    image: Tensor
    mask: Tensor
    camera: Cameras
    pose: Tensor
    transl: Tensor
    weight: float | None = None
    mode: str = "view"


@dataclasses.dataclass
class FitInput:
    """One avatar to fit: its ``reconstruction``, the photo ``rgb`` [H, W, 3] uint8 and the
    synthesized ``labels`` to fit to as well (none: the photo alone)."""

    reconstruction: ReconstructResult
    rgb: np.ndarray
    labels: Sequence[PseudoLabel] = ()


@dataclasses.dataclass
class FitOutcome:
    avatar: GaussianAvatar
    quality: dict[str, float]


def _ssim_map(a: Tensor, b: Tensor, window: int = 7) -> Tensor:
    """SSIM of [B, 3, H, W] images per pixel [B, 3, H, W] (uniform window)."""
    pad = window // 2
    mu_a = F.avg_pool2d(a, window, 1, pad, count_include_pad=False)
    mu_b = F.avg_pool2d(b, window, 1, pad, count_include_pad=False)
    var_a = F.avg_pool2d(a * a, window, 1, pad, count_include_pad=False) - mu_a**2
    var_b = F.avg_pool2d(b * b, window, 1, pad, count_include_pad=False) - mu_b**2
    cov = F.avg_pool2d(a * b, window, 1, pad, count_include_pad=False) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def _ssim(a: Tensor, b: Tensor, window: int = 7) -> Tensor:
    """Mean SSIM of [B, 3, H, W] images (uniform window)."""
    return _ssim_map(a, b, window).mean()


def psnr(a: Tensor, b: Tensor, mask: Tensor) -> float:
    """PSNR (dB) of [H, W, 3] images over the pixels where the [H, W] mask is above one half."""
    m = (mask > 0.5)[..., None].expand_as(a).float()
    mse = ((a - b) ** 2 * m).sum() / m.sum().clamp(min=1)
    return float(-10 * torch.log10(mse.clamp(min=1e-10)))


def grown(mask: Tensor, width: int) -> Tensor:
    """[H, W] float mask grown (``width`` > 0) or shrunk (< 0) by ``|width|`` pixels."""
    if width == 0:
        return (mask > 0.5).float()
    size = 2 * abs(width) + 1
    hard = (mask > 0.5).float()[None, None]
    out = F.max_pool2d(hard, size, 1, abs(width)) if width > 0 else -F.max_pool2d(-hard, size, 1, abs(width))
    return out[0, 0]


def edge_band(mask: Tensor, width: int) -> Tensor:
    """[H, W] 1 within ``width`` pixels of the (soft) mask's edge, else 0."""
    hard = (mask > 0.5).float()[None, None]
    size = 2 * width + 1
    grown = F.max_pool2d(hard, size, 1, width)
    shrunk = -F.max_pool2d(-hard, size, 1, width)
    return (grown - shrunk)[0, 0]


def _view_loss(render, image: Tensor, mask: Tensor, band: Tensor, cfg: FitConfig) -> Tensor:
    """Colour (L1 + D-SSIM) against the photo inside the mask, away from its edge band, and alpha
    against the mask everywhere. Outside the mask and in the band the colour target is the render
    itself: those pixels show or mix in the background, and a Gaussian must match the silhouette
    with its shape and place (the alpha term), not by taking on the background's colour."""
    rgb, alpha = render.rgb[0], render.alpha[0, ..., 0]
    interior = ((mask > 0.5) & (band < 0.5)).float()[..., None]
    target = interior * image + (1 - interior) * rgb.detach()
    l1 = (rgb - target).abs().mean()
    dssim = 1 - _ssim(rgb.permute(2, 0, 1)[None], target.permute(2, 0, 1)[None])
    return (1 - cfg.ssim_weight) * l1 + cfg.ssim_weight * dssim + cfg.alpha_weight * (alpha - mask).abs().mean()


def _at_pixels(values: Tensor, points: Tensor, camera: Cameras) -> tuple[Tensor, Tensor, Tensor]:
    """For [N, 3] world points in a one-camera ``camera``: [N] bool whether each lands on the
    image (in front of the camera), [N] the [H, W] map ``values`` at its pixel (the nearest edge
    pixel off the image) and [N] its depth."""
    view, k = camera.viewmats[0], camera.Ks[0]
    cam = points @ view[:3, :3].T + view[:3, 3]
    uv = cam[:, :2] / cam[:, 2:3].clamp(min=1e-3) * torch.stack([k[0, 0], k[1, 1]]) + k[:2, 2]
    px = uv.floor().long()
    h, w = values.shape
    inside = (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h) & (cam[:, 2] > 0)
    return inside, values[px[:, 1].clamp(0, h - 1), px[:, 0].clamp(0, w - 1)], cam[:, 2]


def _lookup(where: Tensor, points: Tensor, camera: Cameras) -> Tensor:
    """[N] the [H, W] bool map's values at the pixels of [N, 3] world points in a one-camera
    ``camera`` (False off the image)."""
    inside, value, _ = _at_pixels(where, points, camera)
    return inside & value


def _reaching(region: Tensor, means: Tensor, radius: Tensor, camera: Cameras) -> Tensor:
    """[N] bool: Gaussians (centres [N, 3], footprint radii [N] metres) whose footprint in a
    one-camera ``camera`` reaches into the [H, W] bool ``region`` (at the camera's resolution)."""
    from scipy import ndimage

    away = torch.from_numpy(ndimage.distance_transform_edt(~region.cpu().numpy())).to(means)  # pixels to the region
    inside, distance, depth = _at_pixels(away, means, camera)
    return inside & (distance <= radius * camera.Ks[0, 0, 0] / depth.clamp(min=1e-3) + 0.5)


def _gated(value: Tensor, weight: Tensor) -> Tensor:
    """``value`` itself, whose gradient reaches each Gaussian scaled by its [N] ``weight``."""
    w = weight.view(-1, *([1] * (value.ndim - 1)))
    frozen = value.detach()
    return frozen + w * (value - frozen)


@dataclasses.dataclass
class _Problem:
    """One avatar's fit: its start, supervision views (photo first) and neighbours."""

    avatar: GaussianAvatar
    neighbours: Tensor
    images: list[Tensor]
    masks: list[Tensor]
    cameras: list[Cameras]
    poses: list[Tensor]
    transls: list[Tensor]
    weights: list[float]
    read: Tensor  # [N] bool: Gaussians whose colour reconstruction read from the photo
    placed: Tensor  # [N] bool: Gaussians on parts the photo places (feet out of frame are not)
    in_hands: Tensor | None = None  # [N] bool: Gaussians (not of a hand) in the photo's hands, whose colour is not fitted


class FittingOperator(BodyOperator):
    """``op(items) -> list[FitOutcome]`` for (ReconstructResult, photo rgb [H, W, 3] uint8,
    pseudo-labels) triples, batched over avatars.

    The avatars of one call are optimised together: one body forward pass for every view of every
    avatar, one rasteriser call per step for all of them (on CUDA a single batched gsplat call), one
    Adam over all parameters. Their losses are summed and share no parameters, and Adam scales each
    parameter on its own, so each avatar's fit is the same as if it were fitted alone.
    """

    PARAMS = ("offset", "rotation", "log_scale", "opacity_logit", "color")
    LR_FACTORS: ClassVar[dict[str, float]] = {"offset": 0.1, "rotation": 1.0, "log_scale": 0.5, "opacity_logit": 5.0, "color": 2.0}

    config_class = FitConfig

    def __init__(self, config: FitConfig, body: BodyModel) -> None:
        super().__init__(config, body)
        labels = body_parts(body).of_faces(body.faces)
        self.face_parts, self.face_sides = labels.part, labels.side

    def view_weights(self, avatar: GaussianAvatar, vertices: Tensor, frames: Tensor, camera: Cameras) -> tuple[Tensor, Tensor]:
        """How much one view's loss may move each Gaussian: [N] its colour (0 where the posed
        mesh's z-buffer hides it, rising from 0 to 1 between the ``grazing`` facing cosines) and
        [N] its shape and place (1 where the view shows it at any angle, the outline's points
        just turned away included: they shape the silhouette).

        Args:
            vertices: [V, 3] the body posed for the view (world frame of the camera).
            frames: [F, 3, 3] its face frames.
        """
        return self._view(avatar, vertices, frames, camera)[:2]

    def _view(self, avatar: GaussianAvatar, vertices: Tensor, frames: Tensor, camera: Cameras) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`view_weights` and where in the view colour may be fitted: [H, W] the body's
        own silhouette grown by ``body_reach`` pixels."""
        view = camera.viewmats[0]
        cam_vertices = vertices @ view[:3, :3].T + view[:3, 3]
        zbuffer = mesh_view(cam_vertices, self.body.faces, camera.Ks[0], camera.width, camera.height, max(camera.width, camera.height))
        corners = cam_vertices[self.body.faces[avatar.face]]
        points = (avatar.bary[:, :, None] * corners).sum(1)
        normals = frames[avatar.face, :, 2] @ view[:3, :3].T
        visible, facing = zbuffer.visible(points, normals)
        outline, _ = zbuffer.visible(points, normals, min_facing=-self.config.grazing[1])
        lo, hi = self.config.grazing
        reach = grown(zbuffer.frags.mask.float(), self.config.body_reach) > 0.5
        return visible.float() * ((facing - lo) / (hi - lo)).clamp(0, 1), outline.float(), reach

    def __call__(self, items: Sequence[FitInput]) -> list[FitOutcome]:
        problems = [self._problem(item.reconstruction, item.rgb, list(item.labels)) for item in items]
        if not problems:
            return []
        cfg, body = self.config, self.body
        # The triangles under every view's pose are fixed during the fit: one body pass for all.
        views = [(p, v) for p in problems for v in range(len(p.images))]
        vertices, frames = body_surface(
            body, torch.stack([p.avatar.shape for p, _ in views]), torch.stack([p.poses[v] for p, v in views]), torch.stack([p.transls[v] for p, v in views])
        )  # fmt: skip
        triangles, gates, bands, k = [], [], [], 0
        with torch.no_grad():
            for p in problems:
                triangles.append([p.avatar.triangles(body, vertices[k + v : k + v + 1], frames[k + v : k + v + 1]) for v in range(len(p.images))])
                views_of = [self._view(p.avatar, vertices[k + v], frames[k + v], p.cameras[v]) for v in range(len(p.images))]
                gates.append(views_of)
                bands.append([edge_band(m, cfg.edge_width) for m in p.masks])
                k += len(p.images)
        parts = [self.face_parts[p.avatar.face] for p in problems]
        seen = [torch.stack([w for w, _, _ in g]).amax(0) for g in gates]  # [N] the best colour weight of each Gaussian
        shaped = [torch.stack([m for _, m, _ in g]).amax(0) for g in gates]  # [N] 1 where some view moves its shape

        def render(avatars: list[GaussianAvatar], photo_only: bool = False, gated: bool = False) -> list[list]:
            """Renders of each avatar's views (only the photo's with ``photo_only``), in one call;
            with ``gated``, a view's gradient reaches only the Gaussians it sees."""
            chosen = [tris[:1] if photo_only else tris for tris in triangles]
            scenes, cams = [], []
            for a, p, tris, g in zip(avatars, problems, chosen, gates):
                for v, (corners, frame) in enumerate(tris):
                    if gated:  # colour moves by how squarely the view sees it; shape and place wherever it shows
                        seen_by = dataclasses.replace(a, **{name: _gated(getattr(a, name), g[v][0] if name == "color" else g[v][1]) for name in self.PARAMS})
                    else:
                        seen_by = a
                    out = seen_by.gaussians_on(corners, frame)
                    if gated:
                        # ...and only while it lies on (or by) the body's own silhouette: one the fit
                        # moves into a gap a bleeding mask closed must not take the background.
                        out["colors"] = _gated(out["colors"], _lookup(g[v][2], out["means"][0].detach(), p.cameras[v]).float())
                    scenes.append({**out, "means": out["means"][0], "quats": out["quats"][0]})
                    cams.append(p.cameras[v])
            flat = iter(rasterize_many(scenes, cams, rasterize_mode=RASTERIZE_MODE))
            return [[next(flat) for _ in tris] for tris in chosen]

        params = [{name: getattr(p.avatar, name).clone().requires_grad_(True) for name in self.PARAMS} for p in problems]
        colour_bounds = []  # per avatar, [N, 3] lowest and highest colours: [0, 1], or within `unread_colour_reach` of the reconstruction's
        for p, q, s, m, g, part in zip(problems, params, seen, shaped, gates, parts):
            # Gaussians no view sees do not move at all. Colours are fitted freely where
            # reconstruction could read the photo (inside the mask and on the body, away from both
            # edges and the inner outlines) or a pseudo-label shows them, and on the hands unless
            # `fit_hand_colours` is off; elsewhere only within `unread_colour_reach` of the
            # reconstruction's: hair hanging behind the neck must not paint the neck.
            movable = m
            labelled = torch.stack([w for w, _, _ in g[1:]]).amax(0) > 0 if len(g) > 1 else torch.zeros_like(p.read)
            unread = ~(p.read | labelled | (part == Part.HAND))
            reach = torch.where(unread, cfg.unread_colour_reach, 1.0)[:, None]
            start = p.avatar.color.clamp(0, 1)
            colour_bounds.append(((start - reach).clamp(min=0), (start + reach).clamp(max=1)))
            colour = (s > 0).float() * (p.placed & ((part != Part.HAND) | cfg.fit_hand_colours)).float()
            if p.in_hands is not None:
                colour = colour * (~p.in_hands).float()
            for name in self.PARAMS:
                keep = colour if name == "color" else movable
                q[name].register_hook(lambda grad, keep=keep: grad * keep.view(-1, *([1] * (grad.ndim - 1))))
        opt = torch.optim.Adam([{"params": [q[name] for q in params], "lr": cfg.lr * self.LR_FACTORS[name]} for name in self.PARAMS])
        with torch.no_grad():
            before = render([p.avatar for p in problems], photo_only=True)
        for _ in range(cfg.settings["iters"]):
            opt.zero_grad()
            renders = render([dataclasses.replace(p.avatar, **q) for p, q in zip(problems, params)], gated=True)
            loss = torch.zeros((), device=body.device)
            for p, q, views_out, band, s, part in zip(problems, params, renders, bands, seen, parts):
                for out, img, msk, bnd, weight in zip(views_out, p.images, p.masks, band, p.weights):
                    loss = loss + weight * _view_loss(out, img, msk, bnd, cfg)
                loss = loss + cfg.offset_weight * 100 * ((q["offset"] - p.avatar.offset) ** 2).mean()
                loss = loss + cfg.anchor_weight * ((1 - s)[:, None] * (q["color"] - p.avatar.color) ** 2).sum() / p.masks[0].numel()
                held = ((q["log_scale"] - p.avatar.log_scale) ** 2).sum(1) + (q["opacity_logit"] - p.avatar.opacity_logit) ** 2
                loss = loss + cfg.shape_anchor_weight * ((1 - s) * held).sum() / p.masks[0].numel()
                loss = loss + cfg.limits_weight * cfg.limits.hinge(part, q["offset"], q["log_scale"])
                lap_off = (q["offset"] - q["offset"][p.neighbours].mean(1)) ** 2
                lap_col = ((q["color"] - q["color"][p.neighbours].mean(1)) ** 2).sum(1)
                loss = loss + cfg.laplacian_weight * (100 * lap_off.mean() + 0.1 * lap_col.mean())
            loss.backward()
            opt.step()
            with torch.no_grad():
                for p, q, part, (lowest, highest) in zip(problems, params, parts, colour_bounds):
                    # Reconstruction decided how far clothing reaches; the fit refines it within
                    # `offset_range` (a mask that bleeds over a gap must not draw Gaussians into it).
                    q["offset"].copy_(torch.minimum(torch.maximum(q["offset"], p.avatar.offset - cfg.offset_range), p.avatar.offset + cfg.offset_range))
                    cfg.limits.project(part, q["offset"], q["rotation"], q["log_scale"], q["opacity_logit"])
                    q["color"].copy_(torch.minimum(torch.maximum(q["color"], lowest), highest))
        fitted = [dataclasses.replace(p.avatar, **q).detach() for p, q in zip(problems, params)]
        for a, p, m, part in zip(fitted, problems, shaped, parts):
            self._carry_round(a, p.avatar, m, part)
        with torch.no_grad():
            after = render(fitted, photo_only=True)
        outcomes = []
        for p, a, b4, af, m in zip(problems, fitted, before, after, shaped):
            image, mask = p.images[0], p.masks[0]
            alpha = af[0].alpha[0, ..., 0]
            quality = {
                "psnr_before": psnr(b4[0].rgb[0], image * mask[..., None], mask),
                "psnr": psnr(af[0].rgb[0], image * mask[..., None], mask),
                "alpha_iou": float(((alpha > 0.5) & (mask > 0.5)).sum() / ((alpha > 0.5) | (mask > 0.5)).sum().clamp(min=1)),
                "pseudo_labels": float(len(p.images) - 1),
                "fitted_fraction": float((m > 0).float().mean()),
            }
            outcomes.append(FitOutcome(avatar=a, quality=quality))
        return outcomes

    @torch.no_grad()
    def _carry_round(self, fitted: GaussianAvatar, start: GaussianAvatar, shaped: Tensor, part: Tensor) -> None:
        """Carry the fit's push-out round each ring, in place: the Gaussians no view moved take the
        mean offset change of those their ring's views did, so a dress the photo widens at its
        sides is as wide behind (reconstruction's rule, kept through the fit)."""
        with torch.no_grad():
            rest = self.body(start.shape[None], torch.zeros_like(start.source_pose[None])).vertices[0]
        points = (start.bary[:, :, None] * rest[self.body.faces[start.face]]).sum(1)
        _, key = rings(points, part, self.face_sides[start.face], self.config.ring_width)
        change = fitted.offset - start.offset
        moved = (shaped > 0) & (key >= 0)
        for value in torch.unique(key[moved]):
            members = key == value
            if int((members & moved).sum()) >= 3:
                still = members & ~moved
                fitted.offset[still] = start.offset[still] + change[members & moved].mean()
        self.config.limits.project(part, fitted.offset, fitted.rotation, fitted.log_scale, fitted.opacity_logit)

    def _problem(self, rec: ReconstructResult, rgb, labels: list[PseudoLabel]) -> _Problem:
        """The supervision of one avatar at the fit's resolution: the photo first, then its labels."""
        import numpy as np

        cfg, dev = self.config, self.body.device
        resolution = cfg.settings["resolution"]
        avatar = rec.avatar.detach()
        avatar.check_body(self.body)
        scale = min(1.0, resolution / max(avatar.width, avatar.height))
        cams = avatar.source_camera(scale)
        image = torch.from_numpy(np.ascontiguousarray(rgb)).to(dev).float().permute(2, 0, 1)[None] / 255.0
        image = F.interpolate(image, size=(cams.height, cams.width), mode="area")[0].permute(1, 2, 0)
        placed = rec.placed.to(dev) if rec.placed is not None else torch.ones_like(rec.seen, device=dev)
        problem = _Problem(avatar, rec.neighbours.to(dev), [image], [self._photo_mask(rec, cams)], [cams], [avatar.source_pose], [avatar.source_transl], [1.0], rec.seen.to(dev), placed)
        if rec.unread is not None:  # where the photo shows its hands, a Gaussian reaching them is not fitted to them
            region = F.interpolate(rec.unread.to(dev).float()[None, None], size=(cams.height, cams.width), mode="area")[0, 0] > 0
            with torch.no_grad():
                posed = avatar.posed(self.body, avatar.source_pose[None], avatar.source_transl[None])
            radius = 2 * posed["scales"].amax(1)  # two standard deviations: nearly all of its footprint
            problem.in_hands = _reaching(region, posed["means"][0], radius, cams) & (self.face_parts[avatar.face] != Part.HAND)
        for label in labels:
            image, mask, cam = self._label_at_resolution(label, resolution)
            problem.images.append(image)
            problem.masks.append(mask)
            problem.cameras.append(cam)
            problem.poses.append(label.pose.to(dev).float())
            problem.transls.append(label.transl.to(dev).float())
            problem.weights.append(cfg.pseudo_label_weight if label.weight is None else label.weight)
        return problem

    def _label_at_resolution(self, label: PseudoLabel, resolution: int) -> tuple[Tensor, Tensor, Cameras]:
        """A pseudo-label's image, mask and camera, downscaled to the fit's resolution."""
        dev = self.body.device
        image, mask, cam = label.image.to(dev).float(), label.mask.to(dev).float(), label.camera.to(dev)
        scale = min(1.0, resolution / max(cam.width, cam.height))
        if scale < 1.0:
            cam = cam.scaled(scale)
            image = F.interpolate(image.permute(2, 0, 1)[None], size=(cam.height, cam.width), mode="area")[0].permute(1, 2, 0)
            mask = F.interpolate(mask[None, None], size=(cam.height, cam.width), mode="area")[0, 0]
        return image, mask, cam

    def _photo_mask(self, rec: ReconstructResult, cams: Cameras) -> Tensor:
        """The person mask at the fit's resolution (from tracking); the whole frame if there is none."""
        mask = rec.mask
        if mask is None:
            return torch.ones(cams.height, cams.width, device=self.body.device)
        m = mask.to(self.body.device).float()[None, None]
        return F.interpolate(m, size=(cams.height, cams.width), mode="area")[0, 0]
