"""The fitting operator: optimise an avatar's Gaussians against its photo and pseudo-label views.

Loss per view: L1 + D-SSIM on colour inside the mask, L1 of alpha against the mask. Regularisers:
offset magnitude, scale bounds, Laplacian smoothness of offsets and colours between surface
neighbours. Pseudo-labels (from the synthesis stage) add views with their own camera, body pose
and weight.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from avatar_ops.avatar.model import GaussianAvatar
from avatar_ops.avatar.reconstruct import ReconstructResult
from avatar_ops.body.base import BodyModel
from avatar_ops.render.gaussians import Cameras
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


class FittingOperator:
    """``op(items) -> list[FitOutcome]`` for (ReconstructResult, photo rgb [H, W, 3] uint8,
    pseudo-labels) triples. Avatars are optimised one after another (each has its own graph)."""

    def __init__(self, config: FitConfig, body: BodyModel) -> None:
        self.config = config
        self.body = body

    def check_health(self) -> None:
        """Raise if the operator cannot serve (a forward pass of its body must work)."""
        self.body.check_health()

    def __call__(self, items: Sequence[tuple[ReconstructResult, "object", Sequence[PseudoLabel]]]) -> list[FitOutcome]:
        return [self._one(rec, rgb, list(labels)) for rec, rgb, labels in items]

    def _one(self, rec: ReconstructResult, rgb, labels: list[PseudoLabel]) -> FitOutcome:
        import numpy as np

        cfg, body = self.config, self.body
        dev = body.device
        settings = cfg.settings
        avatar = rec.avatar.detach()
        scale = min(1.0, settings["resolution"] / max(avatar.width, avatar.height))
        cams = avatar.source_camera(scale)
        image = torch.from_numpy(np.ascontiguousarray(rgb)).to(dev).float().permute(2, 0, 1)[None] / 255.0
        image = F.interpolate(image, size=(cams.height, cams.width), mode="area")[0].permute(1, 2, 0)
        mask = self._photo_mask(rec, cams)
        views = [(image, mask, cams, avatar.source_pose, avatar.source_transl, 1.0)]
        for label in labels:
            views.append((*self._label_at_resolution(label, settings["resolution"]), label.pose.to(dev), label.transl.to(dev), cfg.pseudo_label_weight if label.weight is None else label.weight))

        params = {name: getattr(avatar, name).clone().requires_grad_(True) for name in ("offset", "rotation", "log_scale", "opacity_logit", "color")}
        groups = [
            {"params": [params["offset"]], "lr": cfg.lr * 0.1},
            {"params": [params["rotation"]], "lr": cfg.lr},
            {"params": [params["log_scale"]], "lr": cfg.lr * 0.5},
            {"params": [params["opacity_logit"]], "lr": cfg.lr * 5},
            {"params": [params["color"]], "lr": cfg.lr * 2},
        ]
        opt = torch.optim.Adam(groups)
        nbr = rec.neighbours
        lo, hi = torch.log(torch.tensor(cfg.min_scale)), torch.log(torch.tensor(cfg.max_scale))

        def current() -> GaussianAvatar:
            return dataclasses.replace(avatar, **params)

        with torch.no_grad():
            before = avatar.render(body, avatar.source_pose[None], avatar.source_transl[None], cams)
            psnr_before = psnr(before.rgb[0], image * mask[..., None], mask)
        for _ in range(settings["iters"]):
            opt.zero_grad()
            a = current()
            loss = torch.zeros((), device=dev)
            for img, msk, cam, pose, transl, weight in views:
                loss = loss + weight * _view_loss(a.render(body, pose[None], transl[None], cam), img, msk, cfg)
            loss = loss + cfg.offset_weight * 100 * (params["offset"] ** 2).mean()
            loss = loss + (torch.relu(params["log_scale"] - hi) ** 2 + torch.relu(lo - params["log_scale"]) ** 2).mean()
            lap_off = (params["offset"] - params["offset"][nbr].mean(1)) ** 2
            lap_col = ((params["color"] - params["color"][nbr].mean(1)) ** 2).sum(1)
            loss = loss + cfg.laplacian_weight * (100 * lap_off.mean() + 0.1 * lap_col.mean())
            loss.backward()
            opt.step()
        fitted = current().detach()
        fitted.color.clamp_(0, 1)
        with torch.no_grad():
            after = fitted.render(body, fitted.source_pose[None], fitted.source_transl[None], cams)
        quality = {
            "psnr_before": psnr_before,
            "psnr": psnr(after.rgb[0], image * mask[..., None], mask),
            "alpha_iou": float(((after.alpha[0, ..., 0] > 0.5) & (mask > 0.5)).sum() / ((after.alpha[0, ..., 0] > 0.5) | (mask > 0.5)).sum().clamp(min=1)),
            "pseudo_labels": float(len(labels)),
        }
        return FitOutcome(avatar=fitted, quality=quality)

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
