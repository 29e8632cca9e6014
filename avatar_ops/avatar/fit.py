"""The fitting operator: optimise an avatar's Gaussians against its photo and pseudo-label views.

Loss per view: L1 + D-SSIM on colour inside the mask, L1 of alpha against the mask. Regularisers:
offset magnitude, scale bounds, Laplacian smoothness of offsets and colours between surface
neighbours. Pseudo-labels (from the synthesis stage) add views with their own camera, body pose
and weight. The avatars of one call are fitted together (see :class:`FittingOperator`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from avatar_ops.avatar.model import GaussianAvatar, body_surface
from avatar_ops.avatar.reconstruct import ReconstructResult
from avatar_ops.body.base import BodyModel
from avatar_ops.render.gaussians import Cameras, rasterize_many
from avatar_ops.types import FrozenConfig

PRESETS = {
    # longer side of the supervision images, Gaussians, iterations
    "preview": {"resolution": 160, "num_gaussians": 6000, "iters": 60},
    "standard": {"resolution": 320, "num_gaussians": 20000, "iters": 200},
    "high": {"resolution": 512, "num_gaussians": 50000, "iters": 600},
}


class FitConfig(FrozenConfig):
    """Optimisation of the Gaussians. ``preset`` sets resolution, Gaussian count and iterations."""

    preset: Literal["preview", "standard", "high"] = Field("preview", description="Quality preset.")
    lr: float = Field(0.02, gt=0, description="Adam learning rate (scaled per parameter group).")
    ssim_weight: float = Field(0.2, ge=0, le=1, description="Weight of D-SSIM against L1.")
    alpha_weight: float = Field(1.0, ge=0, description="Weight of the alpha-vs-mask term.")
    pseudo_label_weight: float = Field(0.3, ge=0, description="Default weight of a pseudo-label view (the photo weighs 1).")
    offset_weight: float = Field(1.0, ge=0, description="Weight of the offset magnitude penalty (per metre squared, x100).")
    laplacian_weight: float = Field(1.0, ge=0, description="Weight of the offset and colour smoothness between neighbours.")
    min_scale: float = Field(0.001, gt=0, description="Smallest Gaussian scale (metres) before the bound penalty.")
    max_scale: float = Field(0.05, gt=0, description="Largest Gaussian scale (metres) before the bound penalty.")
    iters: int | None = Field(None, ge=0, description="Overrides the preset's iterations.")
    resolution: int | None = Field(None, ge=16, description="Overrides the preset's supervision resolution (longer side, pixels).")

    @property
    def settings(self) -> dict:
        settings = dict(PRESETS[self.preset])
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
class FitOutcome:
    avatar: GaussianAvatar
    quality: dict[str, float]


def _ssim(a: Tensor, b: Tensor, window: int = 7) -> Tensor:
    """Mean SSIM of [B, 3, H, W] images (uniform window)."""
    pad = window // 2
    mu_a = F.avg_pool2d(a, window, 1, pad, count_include_pad=False)
    mu_b = F.avg_pool2d(b, window, 1, pad, count_include_pad=False)
    var_a = F.avg_pool2d(a * a, window, 1, pad, count_include_pad=False) - mu_a**2
    var_b = F.avg_pool2d(b * b, window, 1, pad, count_include_pad=False) - mu_b**2
    cov = F.avg_pool2d(a * b, window, 1, pad, count_include_pad=False) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim.mean()


def psnr(a: Tensor, b: Tensor, mask: Tensor) -> float:
    """PSNR (dB) of [H, W, 3] images over the pixels where the [H, W] mask is above one half."""
    m = (mask > 0.5)[..., None].expand_as(a).float()
    mse = ((a - b) ** 2 * m).sum() / m.sum().clamp(min=1)
    return float(-10 * torch.log10(mse.clamp(min=1e-10)))


def _view_loss(render, image: Tensor, mask: Tensor, cfg: FitConfig) -> Tensor:
    """The render (over black) against the matted photo (photo x mask, black elsewhere), over the
    whole frame, so soft mask edges ask for soft avatar edges."""
    rgb, alpha = render.rgb[0], render.alpha[0, ..., 0]
    target = image * mask[..., None]
    l1 = (rgb - target).abs().mean()
    dssim = 1 - _ssim(rgb.permute(2, 0, 1)[None], target.permute(2, 0, 1)[None])
    return (1 - cfg.ssim_weight) * l1 + cfg.ssim_weight * dssim + cfg.alpha_weight * (alpha - mask).abs().mean()


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


class FittingOperator:
    """``op(items) -> list[FitOutcome]`` for (ReconstructResult, photo rgb [H, W, 3] uint8,
    pseudo-labels) triples, batched over avatars.

    The avatars of one call are optimised together: one body forward pass for every view of every
    avatar, one rasteriser call per step for all of them (on CUDA a single batched gsplat call), one
    Adam over all parameters. Their losses are summed and share no parameters, and Adam scales each
    parameter on its own, so each avatar's fit is the same as if it were fitted alone.
    """

    PARAMS = ("offset", "rotation", "log_scale", "opacity_logit", "color")
    LR_FACTORS: ClassVar[dict[str, float]] = {"offset": 0.1, "rotation": 1.0, "log_scale": 0.5, "opacity_logit": 5.0, "color": 2.0}

    def __init__(self, config: FitConfig, body: BodyModel) -> None:
        self.config = config
        self.body = body

    def check_health(self) -> None:
        """Raise if the operator cannot serve (a forward pass of its body must work)."""
        self.body.check_health()

    def __call__(self, items: Sequence[tuple[ReconstructResult, object, Sequence[PseudoLabel]]]) -> list[FitOutcome]:
        problems = [self._problem(rec, rgb, list(labels)) for rec, rgb, labels in items]
        if not problems:
            return []
        cfg, body = self.config, self.body
        # The triangles under every view's pose are fixed during the fit: one body pass for all.
        views = [(p, v) for p in problems for v in range(len(p.images))]
        vertices, frames = body_surface(
            body, torch.stack([p.avatar.shape for p, _ in views]), torch.stack([p.poses[v] for p, v in views]), torch.stack([p.transls[v] for p, v in views])
        )  # fmt: skip
        triangles, k = [], 0
        for p in problems:
            triangles.append([p.avatar.triangles(body, vertices[k + v : k + v + 1], frames[k + v : k + v + 1]) for v in range(len(p.images))])
            k += len(p.images)

        def render(avatars: list[GaussianAvatar], photo_only: bool = False) -> list[list]:
            """Renders of each avatar's views (only the photo's with ``photo_only``), in one call."""
            chosen = [tris[:1] if photo_only else tris for tris in triangles]
            scenes, cams = [], []
            for a, p, tris in zip(avatars, problems, chosen):
                for v, (corners, frame) in enumerate(tris):
                    g = a.gaussians_on(corners, frame)
                    scenes.append({**g, "means": g["means"][0], "quats": g["quats"][0]})
                    cams.append(p.cameras[v])
            flat = iter(rasterize_many(scenes, cams))
            return [[next(flat) for _ in tris] for tris in chosen]

        params = [{name: getattr(p.avatar, name).clone().requires_grad_(True) for name in self.PARAMS} for p in problems]
        opt = torch.optim.Adam([{"params": [q[name] for q in params], "lr": cfg.lr * self.LR_FACTORS[name]} for name in self.PARAMS])
        lo, hi = torch.log(torch.tensor(cfg.min_scale)), torch.log(torch.tensor(cfg.max_scale))
        with torch.no_grad():
            before = render([p.avatar for p in problems], photo_only=True)
        for _ in range(cfg.settings["iters"]):
            opt.zero_grad()
            renders = render([dataclasses.replace(p.avatar, **q) for p, q in zip(problems, params)])
            loss = torch.zeros((), device=body.device)
            for p, q, views_out in zip(problems, params, renders):
                for out, img, msk, weight in zip(views_out, p.images, p.masks, p.weights):
                    loss = loss + weight * _view_loss(out, img, msk, cfg)
                loss = loss + cfg.offset_weight * 100 * (q["offset"] ** 2).mean()
                loss = loss + (torch.relu(q["log_scale"] - hi) ** 2 + torch.relu(lo - q["log_scale"]) ** 2).mean()
                lap_off = (q["offset"] - q["offset"][p.neighbours].mean(1)) ** 2
                lap_col = ((q["color"] - q["color"][p.neighbours].mean(1)) ** 2).sum(1)
                loss = loss + cfg.laplacian_weight * (100 * lap_off.mean() + 0.1 * lap_col.mean())
            loss.backward()
            opt.step()
        fitted = [dataclasses.replace(p.avatar, **q).detach() for p, q in zip(problems, params)]
        for a in fitted:
            a.color.clamp_(0, 1)
        with torch.no_grad():
            after = render(fitted, photo_only=True)
        outcomes = []
        for p, a, b4, af in zip(problems, fitted, before, after):
            image, mask = p.images[0], p.masks[0]
            alpha = af[0].alpha[0, ..., 0]
            quality = {
                "psnr_before": psnr(b4[0].rgb[0], image * mask[..., None], mask),
                "psnr": psnr(af[0].rgb[0], image * mask[..., None], mask),
                "alpha_iou": float(((alpha > 0.5) & (mask > 0.5)).sum() / ((alpha > 0.5) | (mask > 0.5)).sum().clamp(min=1)),
                "pseudo_labels": float(len(p.images) - 1),
            }
            outcomes.append(FitOutcome(avatar=a, quality=quality))
        return outcomes

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
        problem = _Problem(avatar, rec.neighbours.to(dev), [image], [self._photo_mask(rec, cams)], [cams], [avatar.source_pose], [avatar.source_transl], [1.0])
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
