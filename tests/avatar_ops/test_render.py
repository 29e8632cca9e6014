"""The Gaussian rasteriser: the CPU tiled backend against a dense brute-force reference (images and
gradients), and against gsplat's CUDA kernels where a GPU exists."""

from __future__ import annotations

import pytest
import torch

from avatar_ops.render.camera import Cameras
from avatar_ops.render.gaussians import Render, crop_renders, rasterize, rasterize_many, stack_scenes


def _scene(n: int = 60, seed: int = 0, sh: bool = False):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g) * torch.tensor([1.2, 1.2, 0.8]) - torch.tensor([0.6, 0.6, 0.4])
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.08 + 0.02
    opacities = torch.rand(n, generator=g) * 0.9 + 0.05
    colors = torch.randn(n, 4, 3, generator=g) * 0.4 if sh else torch.rand(n, 3, generator=g)
    return means, quats, scales, opacities, colors


def _cameras(num: int = 2, width: int = 40, height: int = 32) -> Cameras:
    views = []
    for i in range(num):
        a = 0.4 * i
        rot = torch.tensor([[torch.cos(torch.tensor(a)), 0.0, -torch.sin(torch.tensor(a))], [0.0, 1.0, 0.0], [torch.sin(torch.tensor(a)), 0.0, torch.cos(torch.tensor(a))]])
        view = torch.eye(4)
        view[:3, :3] = rot
        view[:3, 3] = torch.tensor([0.05 * i, -0.02, 3.0])
        views.append(view)
    k = torch.tensor([[45.0, 0.0, width / 2], [0.0, 45.0, height / 2], [0.0, 0.0, 1.0]])
    return Cameras(torch.stack(views), k.expand(num, 3, 3).clone(), width, height)


# gsplat's compositing rules, as its CUDA kernel states them (gsplat 1.5.3, Common.h and
# RasterizeToPixels3DGSFwd.cu), written here rather than imported from the module under test.
GSPLAT_ALPHA_THRESHOLD = 1.0 / 255.0
GSPLAT_ALPHA_CLAMP = 0.999
GSPLAT_T_STOP = 1e-4


def _dense_reference(means, quats, scales, opacities, colors, cameras, background, eps2d=0.3, antialiased=False):
    """Every pixel against every Gaussian, written from the EWA splatting equations; ``antialiased``
    scales each opacity by sqrt(det(cov2d) / det(cov2d + eps2d I)) (Mip-Splatting's compensation).
    Returns the images, alphas, depths and how many pixels stopped early (the stopping rule ran)."""
    q = quats / quats.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rot = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).view(-1, 3, 3)  # fmt: skip
    cov = rot @ torch.diag_embed(scales**2) @ rot.transpose(1, 2)
    images, alphas, depths, stopped = [], [], [], []
    for c in range(len(cameras)):
        view, k = cameras.viewmats[c], cameras.Ks[c]
        p = means @ view[:3, :3].T + view[:3, 3]
        cov_c = view[:3, :3] @ cov @ view[:3, :3].T
        fx, fy = k[0, 0], k[1, 1]
        zero = torch.zeros_like(p[:, 0])
        jac = torch.stack([fx / p[:, 2], zero, -fx * p[:, 0] / p[:, 2] ** 2, zero, fy / p[:, 2], -fy * p[:, 1] / p[:, 2] ** 2], -1).view(-1, 2, 3)
        cov2_bare = jac @ cov_c @ jac.transpose(1, 2)
        cov2 = cov2_bare + eps2d * torch.eye(2)
        conic = torch.linalg.inv(cov2)
        compensation = (torch.linalg.det(cov2_bare).clamp(min=0) / torch.linalg.det(cov2)).sqrt() if antialiased else torch.ones_like(p[:, 0])
        uv = p[:, :2] / p[:, 2:3] * torch.stack([fx, fy]) + k[:2, 2]
        order = torch.argsort(p[:, 2])
        ys, xs = torch.meshgrid(torch.arange(cameras.height), torch.arange(cameras.width), indexing="ij")
        pix = torch.stack([xs, ys], -1).reshape(-1, 2).float() + 0.5
        d = pix[:, None] - uv[order][None]
        con = conic[order]
        sigma = 0.5 * torch.einsum("pni,nij,pnj->pn", d, con, d)
        alpha = ((opacities * compensation)[order][None] * torch.exp(-sigma)).clamp(max=GSPLAT_ALPHA_CLAMP)
        # gsplat's per-pixel loop, front to back (RasterizeToPixels3DGSFwd.cu): skip a Gaussian
        # whose sigma < 0 or alpha < 1/255; stop, before it, at the first whose next_T <= 1e-4.
        trans = torch.ones(len(pix), dtype=means.dtype)
        done = torch.zeros(len(pix), dtype=torch.bool)
        rgb = torch.zeros(len(pix), 3, dtype=means.dtype)
        depth_sum = torch.zeros(len(pix), 1, dtype=means.dtype)
        for n in range(len(order)):
            a = alpha[:, n]
            skip = (sigma[:, n] < 0) | (a < GSPLAT_ALPHA_THRESHOLD)
            next_t = trans * (1 - a)
            done = done | (~skip & (next_t <= GSPLAT_T_STOP))
            use = ~skip & ~done
            vis = torch.where(use, a * trans, torch.zeros_like(a))
            rgb = rgb + vis[:, None] * colors[order[n]]
            depth_sum = depth_sum + vis[:, None] * p[order[n], 2]
            trans = torch.where(use, next_t, trans)
        stopped.append(int(done.sum()))
        acc = (1 - trans)[:, None]
        rgb = rgb + (1 - acc) * background
        depth = depth_sum / acc.clamp(min=1e-10)
        images.append(rgb.view(cameras.height, cameras.width, 3))
        alphas.append(acc.view(cameras.height, cameras.width, 1))
        depths.append(depth.view(cameras.height, cameras.width, 1))
    return torch.stack(images), torch.stack(alphas), torch.stack(depths), sum(stopped)


@pytest.mark.parametrize("mode", ["classic", "antialiased"])
def test_cpu_backend_matches_dense_reference_images_and_gradients(mode):
    # The random scene, and a stack of near-opaque Gaussians in front of it, so some pixels
    # stop early (transmittance under gsplat's 1e-4) and the stopping rule is tested too.
    scene = _scene()
    layers = 6
    stack = (
        torch.stack([torch.zeros(layers), torch.zeros(layers), torch.linspace(-0.35, -0.1, layers)], 1), torch.randn(layers, 4, generator=torch.Generator().manual_seed(2)),
        torch.full((layers, 3), 0.12), torch.full((layers,), 0.96), torch.rand(layers, 3, generator=torch.Generator().manual_seed(3)),
    )  # fmt: skip
    params = [torch.cat([a, b]).double().requires_grad_(True) for a, b in zip(scene, stack)]
    cams = _cameras()
    cams = Cameras(cams.viewmats.double(), cams.Ks.double(), cams.width, cams.height)
    background = torch.tensor([0.2, 0.3, 0.4], dtype=torch.float64)
    out = rasterize(*params, cams, background=background, backend="torch", tile_size=8, rasterize_mode=mode)
    ref = _dense_reference(*params, cams, background, antialiased=mode == "antialiased")
    assert out.rgb.shape == (2, 32, 40, 3) and out.alpha.shape == (2, 32, 40, 1) and out.depth.shape == (2, 32, 40, 1)
    assert out.alpha.max() > 0.5  # the scene is actually visible
    assert ref[3] > 0  # ...and some pixels are opaque enough to stop early
    for mine, theirs in zip((out.rgb, out.alpha, out.depth), ref[:3]):
        torch.testing.assert_close(mine, theirs, atol=1e-9, rtol=1e-7)
    weights = torch.rand(out.rgb.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    loss = (out.rgb * weights).sum() + out.alpha.sum() + 0.1 * out.depth.sum()
    loss_ref = (ref[0] * weights).sum() + ref[1].sum() + 0.1 * ref[2].sum()
    grads = torch.autograd.grad(loss, params)
    grads_ref = torch.autograd.grad(loss_ref, params)
    for name, a, b in zip(("means", "quats", "scales", "opacities", "colors"), grads, grads_ref):
        assert a.abs().sum() > 0, name
        # Images agree to 1e-9; gradients to ~1e-6 absolute against magnitudes up to ~50 (gsplat's
        # projection differs from the textbook one below that level).
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)


def test_sh_colours_and_tile_sizes_agree():
    means, quats, scales, opacities, sh = _scene(sh=True)
    cams = _cameras(1)
    a = rasterize(means, quats, scales, opacities, sh, cams, sh_degree=1, backend="torch", tile_size=16)
    for size in (8, None, 3):  # None: the CPU default (4); 3 leaves partial tiles at the edges
        b = rasterize(means, quats, scales, opacities, sh, cams, sh_degree=1, backend="torch", tile_size=size)
        torch.testing.assert_close(a.rgb, b.rgb)
        torch.testing.assert_close(a.alpha, b.alpha)
    assert (a.rgb >= 0).all()  # SH colours get +0.5 and are clamped at zero, as in gsplat


def test_empty_and_offscreen_scenes_give_background():
    means, quats, scales, opacities, colors = _scene(5)
    cams = _cameras(1)
    behind = means.clone()
    behind[:, 2] -= 10.0  # behind the camera
    out = rasterize(behind, quats, scales, opacities, colors, cams, background=torch.tensor([1.0, 0.0, 0.0]), backend="torch")
    assert torch.equal(out.alpha, torch.zeros_like(out.alpha))
    torch.testing.assert_close(out.rgb, torch.tensor([1.0, 0.0, 0.0]).expand_as(out.rgb))


def test_bad_arguments_are_named():
    means, quats, scales, opacities, colors = _scene(5)
    with pytest.raises(ValueError, match="`scales` must be"):
        rasterize(means, quats, scales[:, :2], opacities, colors, _cameras(1))
    with pytest.raises(ValueError, match="`backend`"):
        rasterize(means, quats, scales, opacities, colors, _cameras(1), backend="opengl")
    with pytest.raises(ValueError, match="`rasterize_mode` must be 'classic' or 'antialiased', got 'mip'"):
        rasterize(means, quats, scales, opacities, colors, _cameras(1), rasterize_mode="mip")
    with pytest.raises(ValueError, match="`Ks` must be"):
        Cameras(torch.eye(4)[None], torch.eye(3)[None].expand(2, 3, 3), 10, 10)


def _scenes_of_different_sizes(device: str = "cpu"):
    """Three scenes with different Gaussian counts, rendered into cameras of different sizes."""
    scenes = [dict(zip(("means", "quats", "scales", "opacities", "colors"), (t.to(device) for t in _scene(n, seed=n)))) for n in (40, 70, 55)]
    cams = [_cameras(1, 40, 32).to(device), _cameras(1, 24, 48).to(device), _cameras(1, 33, 20).to(device)]
    return scenes, cams


def test_batched_scenes_pad_with_transparent_gaussians_and_crop_back():
    """The layout the CUDA path hands gsplat in one call (scenes padded to one Gaussian count and one
    canvas), rendered here scene by scene with the CPU backend, equals each scene rendered alone."""
    scenes, cams = _scenes_of_different_sizes()
    background = torch.tensor([0.2, 0.4, 0.6])
    batch = stack_scenes(scenes, cams, background)
    assert batch["means"].shape == (3, 70, 3) and (batch["width"], batch["height"]) == (40, 48)
    assert batch["opacities"][0, 40:].eq(0).all() and batch["opacities"][2, 55:].eq(0).all()
    renders = []
    for i in range(3):
        canvas = Cameras(batch["viewmats"][i], batch["Ks"][i], batch["width"], batch["height"])
        renders.append(rasterize(batch["means"][i], batch["quats"][i], batch["scales"][i], batch["opacities"][i], batch["colors"][i], canvas, batch["backgrounds"][i], backend="torch"))
    stacked = Render(*(torch.stack([getattr(r, f) for r in renders]) for f in ("rgb", "alpha", "depth")))
    for got, scene, cam in zip(crop_renders(stacked, cams), scenes, cams):
        want = rasterize(**scene, cameras=cam, background=background, backend="torch")
        assert got.rgb.shape == want.rgb.shape == (1, cam.height, cam.width, 3)
        torch.testing.assert_close(got.rgb, want.rgb)
        torch.testing.assert_close(got.alpha, want.alpha)
    # The CPU backend of rasterize_many renders scene by scene: the same images.
    for got, scene, cam in zip(rasterize_many(scenes, cams, background), scenes, cams):
        torch.testing.assert_close(got.rgb, rasterize(**scene, cameras=cam, background=background).rgb)
    with pytest.raises(ValueError, match="same length"):
        rasterize_many(scenes, cams[:2])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for gsplat's kernels")
def test_batched_gsplat_call_equals_one_call_per_scene():
    scenes, cams = _scenes_of_different_sizes("cuda")
    scenes = [{k: v.requires_grad_(True) for k, v in s.items()} for s in scenes]
    together = rasterize_many(scenes, cams, backend="gsplat")
    sum(r.rgb.sum() + r.alpha.sum() for r in together).backward()
    grads = [{k: v.grad.clone() for k, v in s.items()} for s in scenes]
    for scene, cam, got, grad in zip(scenes, cams, together, grads):
        alone_params = {k: v.detach().clone().requires_grad_(True) for k, v in scene.items()}
        alone = rasterize(**alone_params, cameras=cam, backend="gsplat")
        torch.testing.assert_close(got.rgb, alone.rgb, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.alpha, alone.alpha, atol=1e-5, rtol=1e-5)
        (alone.rgb.sum() + alone.alpha.sum()).backward()
        for k, v in alone_params.items():
            torch.testing.assert_close(grad[k], v.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for gsplat's kernels")
@pytest.mark.parametrize("mode", ["classic", "antialiased"])
def test_cpu_backend_matches_gsplat_cuda(mode):
    params = [t.cuda().requires_grad_(True) for t in _scene(200, sh=True)]
    cams = _cameras(3, 64, 48).to("cuda")
    gpu = rasterize(*params, cams, sh_degree=1, backend="gsplat", rasterize_mode=mode)
    cpu_params = [p.detach().cpu().requires_grad_(True) for p in params]
    cpu = rasterize(*cpu_params, cams.to("cpu"), sh_degree=1, backend="torch", rasterize_mode=mode)
    torch.testing.assert_close(gpu.rgb.cpu(), cpu.rgb, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(gpu.alpha.cpu(), cpu.alpha, atol=2e-3, rtol=1e-3)
    (gpu.rgb.sum() + gpu.alpha.sum()).backward()
    (cpu.rgb.sum() + cpu.alpha.sum()).backward()
    for g, c in zip(params, cpu_params):
        torch.testing.assert_close(g.grad.cpu(), c.grad, atol=5e-2, rtol=5e-2)


def test_the_written_out_compositing_gradient_is_autograds_in_float32():
    """The CPU backend composites with its gradient written out (gaussians._CompositeTiles); in
    float32, as fits run, it must give what autograd gives through the same forward pass, on tiles
    where opaque Gaussians (alpha clamped at 0.999) stop pixels early and faint ones are skipped."""
    from avatar_ops.render.gaussians import _CompositeTiles, _tiles_forward

    g = torch.Generator().manual_seed(7)
    tiles, pixels_per_tile, slots = 6, 16, 40
    means2d = torch.rand(tiles, slots, 2, generator=g) * 8 - 2
    a, b = torch.rand(tiles, slots, generator=g) * 0.5 + 0.1, torch.rand(tiles, slots, generator=g) * 0.5 + 0.1
    conics = torch.stack([a, (torch.rand(tiles, slots, generator=g) - 0.5) * 0.1, b], -1)
    opacities = torch.rand(tiles, slots, generator=g)
    opacities[:, ::5] = 1.0  # clamped at 0.999: transmittance falls below 1e-4 within a few of them
    features = torch.rand(tiles, slots, 4, generator=g)
    ys, xs = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    pixels = (torch.stack([xs.reshape(-1), ys.reshape(-1)], -1) + 0.5).expand(tiles, pixels_per_tile, 2)
    valid = torch.rand(tiles, slots, generator=g) > 0.1
    valid[3:, 6:] = False  # half the tiles hold a few Gaussians: translucent pixels
    opacities[3:] *= 0.5
    weights = torch.rand(tiles, pixels_per_tile, 4, generator=g), torch.rand(tiles, pixels_per_tile, generator=g)

    def grads(composite):
        inputs = [t.clone().requires_grad_(True) for t in (means2d, conics, opacities, features)]
        feat, alpha = composite(*inputs)
        ((feat * weights[0]).sum() + (alpha * weights[1]).sum()).backward()
        return (feat, alpha), [t.grad for t in inputs]

    def reference(*inputs):
        out = _tiles_forward(*inputs, pixels, valid)
        return out["feat"], out["alpha"]

    (feat, alpha), mine = grads(lambda *inputs: _CompositeTiles.apply(*inputs, pixels, valid))
    (feat_ref, alpha_ref), theirs = grads(reference)
    assert (alpha_ref > 0.99).any() and (alpha_ref < 0.9).any()  # opaque and translucent pixels
    torch.testing.assert_close(feat, feat_ref, atol=0, rtol=0)
    torch.testing.assert_close(alpha, alpha_ref, atol=0, rtol=0)
    for name, a, b in zip(("means2d", "conics", "opacities", "features"), mine, theirs):
        scale = float(b.abs().max())
        assert scale > 0, name
        # Both sum up to K = 40 float32 terms, and the written-out one divides by 1 - alpha >= 1e-3:
        # at worst 40 x 6e-8 / 1e-3 = 2.4e-3 of the largest gradient (measured: 1.5e-7).
        err = float((a - b).abs().max())
        assert err <= 3e-3 * scale, (name, err, scale)
