"""Differentiable 3D Gaussian splatting, batched over cameras.

One entry point, :func:`rasterize`. The backend follows the tensors' device: ``gsplat.rasterization``
on CUDA; on the CPU a PyTorch tiled rasteriser that projects with gsplat's own PyTorch reference
(``gsplat.cuda._torch_impl``, the same formulas as its CUDA kernels) and composites front to back
per tile (4x4 pixels by default) with the same rules: 3.33-sigma screen footprint, ``eps2d`` low-pass, alpha clamped
to 0.999, contributions under 1/255 skipped, a pixel stops at transmittance 1e-4, colours from SH
get +0.5 and are clamped at 0, depth is the expected depth (accumulated depth over alpha).
Gradients reach every Gaussian parameter through autograd (the compositing's own written out).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from avatar_ops.render.camera import Cameras

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4
GSPLAT_TILE = 16  # default tile sizes (pixels per side) of the two backends
TORCH_TILE = 4


@dataclasses.dataclass
class Render:
    """rgb [C, H, W, 3], alpha [C, H, W, 1], depth [C, H, W, 1] (expected depth, 0 where empty)."""

    rgb: Tensor
    alpha: Tensor
    depth: Tensor


def rasterize(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    cameras: Cameras,
    background: Tensor | None = None,
    sh_degree: int | None = None,
    backend: str = "auto",
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    tile_size: int | None = None,
    rasterize_mode: str = "classic",
) -> Render:
    """Render Gaussians into every camera.

    Args:
        means: [N, 3] centres (world).
        quats: [N, 4] rotations (w, x, y, z), normalised here.
        scales: [N, 3] standard deviations along the rotated axes (world units, > 0).
        opacities: [N] in [0, 1].
        colors: [N, 3] RGB, or [N, K, 3] SH coefficients with ``sh_degree`` set (K >= (d+1)^2).
        cameras: the views.
        background: [3] or [C, 3] colour behind the Gaussians (black when None).
        sh_degree: SH degree of ``colors``; None for plain RGB.
        backend: ``auto`` (by device), ``gsplat`` (CUDA) or ``torch``.
        tile_size: pixels per tile side; None: 16 for gsplat (its default), 4 for the CPU backend
            (small tiles waste less work on pixels a Gaussian barely reaches: on an avatar fit
            2.2x faster than 16; the images do not depend on it).
        rasterize_mode: gsplat's ``classic`` (the ``eps2d`` low-pass widens every footprint) or
            ``antialiased`` (opacities scaled by how much the low-pass widened each footprint, so
            thin and tiny Gaussians cover only what they would without it: edges seen side-on
            stay as thin as they are).
    """
    _check_gaussians(means, quats, scales, opacities, colors, sh_degree)
    _check_mode(rasterize_mode)
    backend = _resolve_backend(backend, means)
    num_cams = len(cameras)
    if background is None:
        background = torch.zeros(3, device=means.device, dtype=means.dtype)
    background = background.to(means).expand(num_cams, 3)
    if backend == "gsplat":
        batch = {"means": means, "quats": quats, "scales": scales, "opacities": opacities, "colors": colors, "viewmats": cameras.viewmats, "Ks": cameras.Ks, "width": cameras.width, "height": cameras.height, "backgrounds": background}
        return _gsplat_call(batch, sh_degree, eps2d, near_plane, tile_size, rasterize_mode)
    return _rasterize_torch(means, quats, scales, opacities, colors, cameras, background, sh_degree, eps2d, near_plane, tile_size or TORCH_TILE, rasterize_mode)


def _check_mode(rasterize_mode: str) -> None:
    if rasterize_mode not in ("classic", "antialiased"):
        raise ValueError(f"`rasterize_mode` must be 'classic' or 'antialiased', got {rasterize_mode!r}.")


def _resolve_backend(backend: str, means: Tensor) -> str:
    """``auto`` -> by the tensors' device; anything but the two backends is an error."""
    if backend == "auto":
        return "gsplat" if means.is_cuda else "torch"
    if backend not in ("gsplat", "torch"):
        raise ValueError(f"`backend` must be 'auto', 'gsplat' or 'torch', got {backend!r}.")
    return backend


def _check_gaussians(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor, sh_degree: int | None) -> None:
    if means.ndim != 2 or means.shape[1] != 3:
        raise ValueError(f"`means` must be [N, 3], got {list(means.shape)}.")
    n = means.shape[0]
    for name, value, shape in (("quats", quats, (n, 4)), ("scales", scales, (n, 3)), ("opacities", opacities, (n,))):
        if tuple(value.shape) != shape:
            raise ValueError(f"`{name}` must be {list(shape)} for {n} Gaussians, got {list(value.shape)}.")
    if sh_degree is None and tuple(colors.shape) != (n, 3):
        raise ValueError(f"`colors` must be [N, 3] RGB without `sh_degree`, got {list(colors.shape)}.")
    if sh_degree is not None and (colors.ndim != 3 or colors.shape[0] != n or colors.shape[1] < (sh_degree + 1) ** 2):
        raise ValueError(f"`colors` must be [N, >= {(sh_degree + 1) ** 2}, 3] SH for sh_degree={sh_degree}, got {list(colors.shape)}.")


def rasterize_many(
    scenes: Sequence[dict[str, Tensor]],
    cameras: Sequence[Cameras],
    background: Tensor | None = None,
    sh_degree: int | None = None,
    backend: str = "auto",
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    tile_size: int | None = None,
    rasterize_mode: str = "classic",
) -> list[Render]:
    """Render independent scenes, scene i into ``cameras[i]``, each at its own image size.

    A scene is a dict of :func:`rasterize`'s Gaussian arguments (``means``, ``quats``, ``scales``,
    ``opacities``, ``colors``); scenes may hold different numbers of Gaussians. On CUDA, scenes with
    the same number of cameras go through one ``gsplat.rasterization`` call (its leading batch
    dimension): Gaussians are padded with transparent ones up to the largest scene and images up to
    the largest size, then cropped back. On the CPU backend they are rendered one after another.
    """
    if len(scenes) != len(cameras):
        raise ValueError(f"`scenes` and `cameras` must have the same length, got {len(scenes)} and {len(cameras)}.")
    if not scenes:
        return []
    backend = _resolve_backend(backend, scenes[0]["means"])
    _check_mode(rasterize_mode)
    kwargs = {"sh_degree": sh_degree, "eps2d": eps2d, "near_plane": near_plane, "tile_size": tile_size, "rasterize_mode": rasterize_mode}
    if backend == "torch":
        return [rasterize(**scene, cameras=cams, background=background, backend=backend, **kwargs) for scene, cams in zip(scenes, cameras)]
    for scene in scenes:  # the single-scene checks, before padding hides a wrong shape
        _check_gaussians(**scene, sh_degree=sh_degree)
    renders: list[Render | None] = [None] * len(scenes)
    by_count: dict[int, list[int]] = {}
    for i, cams in enumerate(cameras):
        by_count.setdefault(len(cams), []).append(i)
    for index in by_count.values():
        batch = stack_scenes([scenes[i] for i in index], [cameras[i] for i in index], background)
        together = _gsplat_call(batch, sh_degree, eps2d, near_plane, tile_size, rasterize_mode)
        for render, i in zip(crop_renders(together, [cameras[i] for i in index]), index):
            renders[i] = render
    return renders  # type: ignore[return-value]


def stack_scenes(scenes: Sequence[dict[str, Tensor]], cameras: Sequence[Cameras], background: Tensor | None) -> dict:
    """Scenes (with equal camera counts) -> [S, ...] batched Gaussians and cameras on one canvas:
    missing Gaussians are transparent (zero opacity, at the origin), smaller images are extended to
    the right and bottom (pixel coordinates unchanged)."""
    ref = scenes[0]["means"]
    n = max(int(s["means"].shape[0]) for s in scenes)

    def pad(t: Tensor, row: list[float] | float) -> Tensor:
        extra = n - t.shape[0]
        if not extra:
            return t
        fill = torch.as_tensor(row, dtype=t.dtype, device=t.device).expand(extra, *t.shape[1:])
        return torch.cat([t, fill])

    width, height = max(c.width for c in cameras), max(c.height for c in cameras)
    num_cams = len(cameras[0])
    bg = torch.zeros(3, device=ref.device, dtype=ref.dtype) if background is None else background.to(ref)
    return {
        "means": torch.stack([pad(s["means"], 0.0) for s in scenes]),
        "quats": torch.stack([pad(s["quats"], [1.0, 0.0, 0.0, 0.0]) for s in scenes]),
        "scales": torch.stack([pad(s["scales"], 1e-3) for s in scenes]),
        "opacities": torch.stack([pad(s["opacities"], 0.0) for s in scenes]),
        "colors": torch.stack([pad(s["colors"], 0.0) for s in scenes]),
        "viewmats": torch.stack([c.viewmats for c in cameras]),
        "Ks": torch.stack([c.Ks for c in cameras]),
        "width": width, "height": height,
        "backgrounds": bg.expand(len(scenes), num_cams, 3),
    }  # fmt: skip


def crop_renders(render: Render, cameras: Sequence[Cameras]) -> list[Render]:
    """[S, C, H, W, X] renders of :func:`stack_scenes` -> one Render per scene at its own size."""
    return [Render(*(getattr(render, f)[i, :, : c.height, : c.width] for f in ("rgb", "alpha", "depth"))) for i, c in enumerate(cameras)]


def _gsplat_call(batch: dict, sh_degree, eps2d, near_plane, tile_size: int | None, rasterize_mode: str = "classic") -> Render:
    """``gsplat.rasterization`` on a dict of its tensors (with or without a leading batch dimension)."""
    import gsplat

    out, alpha, _ = gsplat.rasterization(
        batch["means"], batch["quats"], batch["scales"], batch["opacities"], batch["colors"], batch["viewmats"], batch["Ks"],
        batch["width"], batch["height"], near_plane=near_plane, eps2d=eps2d, sh_degree=sh_degree, tile_size=tile_size or GSPLAT_TILE,
        backgrounds=batch["backgrounds"], render_mode="RGB+ED", packed=False, rasterize_mode=rasterize_mode,
    )  # fmt: skip
    return Render(rgb=out[..., :3], alpha=alpha, depth=out[..., 3:4])


def _colors_for_cameras(means: Tensor, colors: Tensor, viewmats: Tensor, sh_degree: int | None) -> Tensor:
    """[N, 3] or SH -> [C, N, 3] (view-dependent for SH, as gsplat evaluates it)."""
    if sh_degree is None:
        return colors[None].expand(viewmats.shape[0], -1, -1)
    from gsplat.cuda._torch_impl import _spherical_harmonics

    campos = torch.linalg.inv(viewmats)[:, :3, 3]  # [C, 3]
    dirs = means[None] - campos[:, None]  # [C, N, 3]
    k = (sh_degree + 1) ** 2
    rgb = _spherical_harmonics(sh_degree, dirs, colors[None, :, :k].expand(viewmats.shape[0], -1, -1, -1))
    return torch.clamp_min(rgb + 0.5, 0.0)


def _rasterize_torch(means, quats, scales, opacities, colors, cameras, background, sh_degree, eps2d, near_plane, tile_size, rasterize_mode="classic") -> Render:
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    quats = quats / quats.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False, triu=False)
    antialiased = rasterize_mode == "antialiased"
    radii, means2d, depths, conics, compensations = _fully_fused_projection(
        means, covars, cameras.viewmats, cameras.Ks, cameras.width, cameras.height, eps2d=eps2d, near_plane=near_plane, calc_compensations=antialiased
    )
    rgb_all = _colors_for_cameras(means, colors, cameras.viewmats, sh_degree)
    rgbs, alphas, depth_maps = [], [], []
    for c in range(len(cameras)):
        weight = opacities * compensations[c] if antialiased else opacities
        rgb, alpha, depth = _composite(means2d[c], conics[c], depths[c], radii[c], weight, rgb_all[c], background[c], cameras.width, cameras.height, tile_size)
        rgbs.append(rgb)
        alphas.append(alpha)
        depth_maps.append(depth)
    return Render(rgb=torch.stack(rgbs), alpha=torch.stack(alphas), depth=torch.stack(depth_maps))


def _tile_pairs(means2d: Tensor, radii: Tensor, depths: Tensor, tiles_x: int, tiles_y: int, tile_size: int) -> tuple[Tensor, Tensor]:
    """(tile id, Gaussian id) for every tile each Gaussian's footprint touches, sorted by tile then depth."""
    with torch.no_grad():
        visible = (radii > 0).all(-1)
        ids = torch.nonzero(visible)[:, 0]
        m, r = means2d[ids], radii[ids].to(means2d.dtype)
        x0 = ((m[:, 0] - r[:, 0]) / tile_size).floor().clamp(0, tiles_x - 1).long()
        x1 = ((m[:, 0] + r[:, 0]) / tile_size).floor().clamp(0, tiles_x - 1).long()
        y0 = ((m[:, 1] - r[:, 1]) / tile_size).floor().clamp(0, tiles_y - 1).long()
        y1 = ((m[:, 1] + r[:, 1]) / tile_size).floor().clamp(0, tiles_y - 1).long()
        nx, ny = x1 - x0 + 1, y1 - y0 + 1
        count = nx * ny
        gauss = torch.repeat_interleave(ids, count)
        start = torch.cumsum(count, 0) - count
        local = torch.arange(int(count.sum()), device=means2d.device) - torch.repeat_interleave(start, count)
        nx_rep = torch.repeat_interleave(nx, count)
        tx = torch.repeat_interleave(x0, count) + local % nx_rep
        ty = torch.repeat_interleave(y0, count) + local // nx_rep
        tile = ty * tiles_x + tx
        # Sort by depth first, then stably by tile: each tile's list ends up front to back.
        order = torch.argsort(depths[gauss], stable=True)
        tile, gauss = tile[order], gauss[order]
        order = torch.argsort(tile, stable=True)
        return tile[order], gauss[order]


def _tiles_forward(means2d: Tensor, conics: Tensor, opacities: Tensor, features: Tensor, pixels: Tensor, valid: Tensor) -> dict[str, Tensor]:
    """Front-to-back compositing of T tiles' P pixels over their K depth-sorted Gaussians
    (``means2d`` [T, K, 2], ``conics`` [T, K, 3], ``opacities`` [T, K], ``features`` [T, K, F],
    ``pixels`` [T, P, 2], ``valid`` [T, K]: which of the K slots hold a Gaussian): the outputs
    ``feat`` [T, P, F] and ``alpha`` [T, P], and what the backward pass needs."""
    d = pixels[:, :, None] - means2d[:, None]  # [T, P, K, 2]
    dx, dy = d[..., 0], d[..., 1]
    c0, c1, c2 = (conics[:, None, :, i] for i in range(3))
    sigma = 0.5 * (c0 * dx * dx + c2 * dy * dy) + c1 * dx * dy
    falloff = torch.exp(-sigma)
    raw = opacities[:, None] * falloff
    alpha = raw.clamp(max=ALPHA_MAX)
    keep = valid[:, None] & (sigma >= 0) & (alpha >= ALPHA_MIN)
    alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
    trans = torch.cumprod(1 - alpha, dim=-1)
    before = torch.cat([torch.ones_like(trans[..., :1]), trans[..., :-1]], -1)
    # gsplat stops a pixel before the Gaussian that would take its transmittance to T_MIN or
    # below; transmittance only falls, so that is every Gaussian whose own `trans` is that low.
    live = trans > T_MIN
    weight = torch.where(live, alpha * before, torch.zeros_like(alpha))
    return {
        "feat": torch.einsum("tpk,tkf->tpf", weight, features), "alpha": weight.sum(-1), "dx": dx, "dy": dy,
        "falloff": falloff, "opacity_path": keep & (raw <= ALPHA_MAX), "alpha_k": alpha, "before": before, "live": live, "weight": weight,
    }  # fmt: skip


class _CompositeTiles(torch.autograd.Function):
    """:func:`_tiles_forward` with its gradient written out (autograd through its dozen [T, P, K]
    steps kept every intermediate and took longer than the forward pass). With
    w_k = alpha_k T_k (T_k = prod_{i<k} (1 - alpha_i), up to the pixel's stop) and g_k the
    loss's gradient for w_k: dL/dalpha_j = g_j T_j - sum_{k>j} g_k w_k / (1 - alpha_j)."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, features, pixels, valid):
        with torch.no_grad():
            out = _tiles_forward(means2d, conics, opacities, features, pixels, valid)
        if any(ctx.needs_input_grad[:4]):
            ctx.save_for_backward(conics, opacities, features, out["dx"], out["dy"], out["falloff"], out["opacity_path"], out["alpha_k"], out["before"], out["live"], out["weight"])
        return out["feat"], out["alpha"]

    @staticmethod
    def backward(ctx, grad_feat, grad_alpha):
        conics, opacities, features, dx, dy, falloff, opacity_path, alpha, before, live, weight = ctx.saved_tensors
        grad_weight = torch.einsum("tpf,tkf->tpk", grad_feat, features) + grad_alpha[..., None]  # [T, P, K]
        grad_features = torch.einsum("tpk,tpf->tkf", weight, grad_feat)
        spent = grad_weight * weight
        later = torch.flip(torch.cumsum(torch.flip(spent, [-1]), -1), [-1]) - spent  # sum over k > j
        grad_alpha_k = torch.where(live, grad_weight * before, torch.zeros_like(before)) - later / (1 - alpha)
        grad_falloff = torch.where(opacity_path, grad_alpha_k, torch.zeros_like(grad_alpha_k)) * falloff  # d alpha / d opacity
        grad_opacities = grad_falloff.sum(1)
        grad_sigma = grad_falloff * -opacities[:, None]
        along_x, along_y = grad_sigma * dx, grad_sigma * dy
        grad_conics = torch.stack([0.5 * (along_x * dx).sum(1), (along_x * dy).sum(1), 0.5 * (along_y * dy).sum(1)], -1)
        # d sigma / d mean = -(conic @ d): the conic is the same for every pixel of a tile.
        sum_x, sum_y = along_x.sum(1), along_y.sum(1)
        c0, c1, c2 = conics.unbind(-1)
        grad_means = -torch.stack([c0 * sum_x + c1 * sum_y, c2 * sum_y + c1 * sum_x], -1)
        return grad_means, grad_conics, grad_opacities, grad_features, None, None


def _composite(means2d, conics, depths, radii, opacities, rgb, background, width, height, tile_size, chunk_elems: int = 4_000_000, padding: float = 1.25, slack: int = 8):
    """Front-to-back alpha compositing of one camera, tile by tile (tiles batched in chunks).

    Every tile of a chunk is padded to the chunk's longest Gaussian list, so a chunk only takes
    tiles whose lists are at most ``padding`` times (or ``slack`` longer than) its shortest: one
    chunk of all a body's tiles (lists of 1 to ~300) was 60% padding."""
    device, dtype = means2d.device, means2d.dtype
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    num_tiles = tiles_x * tiles_y
    tile, gauss = _tile_pairs(means2d, radii, depths, tiles_x, tiles_y, tile_size)
    counts = torch.bincount(tile, minlength=num_tiles)
    offsets = torch.cumsum(counts, 0) - counts
    features = torch.cat([rgb, depths[:, None]], 1)  # [N, 4]
    pix = tile_size * tile_size
    out_feat = torch.zeros(num_tiles, pix, 4, device=device, dtype=dtype)
    out_alpha = torch.zeros(num_tiles, pix, device=device, dtype=dtype)
    ys, xs = torch.meshgrid(torch.arange(tile_size, device=device), torch.arange(tile_size, device=device), indexing="ij")
    local_xy = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1).to(dtype) + 0.5  # pixel centres
    busy = torch.nonzero(counts)[:, 0]
    # Chunks of tiles with similar list lengths, so padding stays small.
    busy = busy[torch.argsort(counts[busy])]
    sorted_counts = counts[busy].tolist()
    start = 0
    results_feat, results_alpha, results_tiles = [], [], []
    while start < len(busy):
        end = start + 1
        longest = max(padding * sorted_counts[start], sorted_counts[start] + slack)
        while end < len(busy) and (end - start + 1) * pix * sorted_counts[end] <= chunk_elems and sorted_counts[end] <= longest:
            end += 1
        chunk = busy[start:end]
        kmax = sorted_counts[end - 1]
        slot = torch.arange(kmax, device=device)
        valid = slot[None] < counts[chunk][:, None]  # [T, K]
        index = gauss[(offsets[chunk][:, None] + slot[None]).clamp(max=len(gauss) - 1)]  # [T, K]
        origin = torch.stack([chunk % tiles_x, chunk // tiles_x], -1).to(dtype) * tile_size  # [T, 2]
        pixels = origin[:, None] + local_xy[None]  # [T, P, 2]
        feat, acc = _CompositeTiles.apply(means2d[index], conics[index], opacities[index], features[index], pixels, valid)
        results_feat.append(feat)
        results_alpha.append(acc)
        results_tiles.append(chunk)
        start = end
    if results_tiles:
        done = torch.cat(results_tiles)
        out_feat = out_feat.index_put((done,), torch.cat(results_feat))
        out_alpha = out_alpha.index_put((done,), torch.cat(results_alpha))
    # Tiles -> image.
    out_feat = out_feat.view(tiles_y, tiles_x, tile_size, tile_size, 4).permute(0, 2, 1, 3, 4).reshape(tiles_y * tile_size, tiles_x * tile_size, 4)
    out_alpha = out_alpha.view(tiles_y, tiles_x, tile_size, tile_size).permute(0, 2, 1, 3).reshape(tiles_y * tile_size, tiles_x * tile_size)
    feat, alpha = out_feat[:height, :width], out_alpha[:height, :width, None]
    rgb_img = feat[..., :3] + (1 - alpha) * background
    depth = feat[..., 3:4] / alpha.clamp(min=1e-10)
    return rgb_img, alpha, depth
