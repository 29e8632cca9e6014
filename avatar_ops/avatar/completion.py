"""The body surface's colour field: what the photo shows of it, and a completion of the rest.

The field lives on the vertices of the body mesh cut finer (:mod:`avatar_ops.avatar.subdivision`,
about 1 cm apart on the torso): a hem or a collar is narrower than the body's own vertex rows.

1. **Observation.** Photo pixels inside the person mask are projected back onto the mesh through
   its z-buffer (each pixel to the three corners of the triangle it sees, by barycentric weight,
   times how squarely that triangle faces the camera). Pixels within ``edge_margin`` of the mask's
   edge are left out, so no background colour enters the surface. A vertex with enough weight is
   *known*.
2. **Completion**, part by part (:mod:`avatar_ops.body.parts`):
   * torso, neck, arms, legs and feet are cut into rings along their axis (rest pose). Prints
     (regions of the seen surface enclosed by another colour) are taken out first. An unknown
     vertex takes the weighted medoid (a colour the photo shows, never a mix of two) of the
     cleaned colours seen in its ring around its mirror image front to back, so bands, hems,
     cuffs, sleeves and trouser legs carry over to the back and a print on the front does not.
     Rings the photo does not show at all take the *wrap colour* (what the ring's sides show,
     where a garment wraps round) interpolated along the part; a part with no ring seen takes its left/right counterpart, and failing that the
     neighbouring part (legs out of frame continue the lowest garment seen).
   * the head: the scalp (behind the ears, above the brows) takes the hair's colour, never the
     face's; an unseen side of the face takes the other side's, else skin.
   * hands take skin (the face's skin colour); feet keep the shoes' colour.
   * a Laplacian smoothing over the unknown vertices (known ones fixed, within each ring, between
     neighbours of near colours only, so a band keeps its edges) blends the seam between seen
     and completed surface.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from pydantic import Field, field_validator
from scipy import ndimage, sparse
from scipy.spatial import cKDTree
from torch import Tensor

from avatar_ops.avatar.visibility import MeshView, vertex_normals
from avatar_ops.body.parts import BodyParts, Part, eye_line, head_regions, joined_parts
from avatar_ops.types import FrozenConfig

RING_PARTS = (Part.TORSO, Part.NECK, Part.UPPER_ARM, Part.FOREARM, Part.THIGH, Part.SHIN, Part.FOOT)
ALONG_X = (Part.UPPER_ARM, Part.FOREARM)  # arms run along x in the T-pose, the rest along y
# Where a part with no ring seen at all takes its colour from, failing its counterpart: the part
# and which of that part's ends ("low": smallest coordinate along the axis).
FALLBACK = {Part.THIGH: (Part.TORSO, "low"), Part.SHIN: (Part.THIGH, "low"), Part.UPPER_ARM: (Part.TORSO, "high"), Part.FOREARM: (Part.UPPER_ARM, "high")}
RING_WIDTH = 0.025  # metres along a part's axis
FOOT_RING_WIDTH = 0.01  # fine enough for a shoe's sole
COVERAGE_GROUPS = {
    "head": (Part.HEAD,), "torso": (Part.TORSO, Part.NECK), "arms": (Part.UPPER_ARM, Part.FOREARM),
    "hands": (Part.HAND,), "legs": (Part.THIGH, Part.SHIN), "feet": (Part.FOOT,),
}  # fmt: skip


class CompletionConfig(FrozenConfig):
    """How the photo is read onto the body surface and how the unseen surface is completed."""

    zbuffer_side: int = Field(768, ge=32, description="Longer side (pixels) of the mesh z-buffer the photo is read through.")
    edge_margin: float = Field(0.012, ge=0, le=0.2, description="Band along the mask's edge left unread, as a fraction of the person's height in the image.")
    foot_edge_margin: float = Field(0.004, ge=0, le=0.2, description="The same band on the feet, narrower: a shoe's sole is a band a centimetre or two high along the mask's bottom edge, and the wider band would leave it unread.")
    occlusion_depth: float | None = Field(0.03, gt=0, description="A step in the body's depth (metres) between neighbouring z-buffer pixels larger than this is an inner outline (a limb in front of the body), and the band along it is left unread like the mask's edge; None: inner outlines are read.")
    min_edge_pixels: float = Field(1.5, ge=0, description="The least width of either band, in z-buffer pixels.")
    known_weight: float = Field(0.3, gt=0, description="Pixel weight (pixels x facing) below which a seen vertex's colour is read at its own pixel rather than from the pixels around it.")
    seen_facing: float = Field(0.15, ge=0, lt=1, description="Vertices facing the camera less squarely than this cosine are left to the completion.")
    ring_width: float = Field(RING_WIDTH, gt=0, description="Length (metres) of the rings torso, neck, arms and legs are cut into.")
    foot_ring_width: float = Field(FOOT_RING_WIDTH, gt=0, description="Height (metres) of the rings feet are cut into (fine enough for a shoe's sole).")
    fallback_rings: int = Field(4, ge=1, description="Rings of the neighbouring part whose colours a part the photo does not show takes (their medoid).")
    min_part_seen: float = Field(0.05, ge=0, le=1, description="A part (one side's thigh, say) of which the photo shows less than this fraction is completed as unseen, from its counterpart or the part next to it.")
    min_ring_known: int = Field(3, ge=1, description="Seen vertices a ring needs for a wrap colour of its own.")
    side_fraction: float = Field(0.2, gt=0, le=0.5, description="A ring's wrap colour is read from this fraction of its seen vertices at each side of its image.")
    region_tolerance: float = Field(0.1, gt=0, description="Seen neighbours closer in colour than this (RGB distance) belong to one region when prints are taken out.")
    max_print_fraction: float = Field(0.6, gt=0, description="A region is a print only if it is smaller than this fraction of the regions round it.")
    max_compound_print_fraction: float = Field(1.5, gt=0, description="A print of several colours (stripes) may be up to this fraction of the garment seen round it: it is told by being enclosed by that garment alone, and an arm in front of a shirt can leave little of the shirt seen.")
    max_unseen_edge: float = Field(0.3, ge=0, le=1, description="A region whose edge runs along the unseen surface for more than this share is a garment of its own, not a print.")
    clean_rounds: int = Field(40, ge=0, description="Most rounds of taking prints out (regions are cut again after each).")
    clean_smoothing: int = Field(0, ge=0, description="Smoothing passes over seen neighbours before regions are cut (against a garment's own texture).")
    hairline: tuple[float, float] = Field((0.8, 2.0), description="Shortest and longest back hairline (eye gaps below the eyes: about 5 and 13 cm) the unseen scalp is completed for: hair above the first, the hair's share fading to nothing at the second.")
    hair_share: float = Field(0.3, gt=0, le=1, description="Share of the seen scalp, farthest in colour from the skin, the hair's colour is read from (when those are unlike the skin; else the whole seen scalp's median).")
    surround_hops: int = Field(3, ge=1, description="A print takes the median colour of the garment within this many mesh edges of it (where it lies; a shirt's shading or a sleeve's edge can join a garment's region to the next).")
    min_region: int = Field(6, ge=1, description="Regions of fewer seen vertices are edge blends, not surroundings of a print.")
    mirror_width: float = Field(0.04, gt=0, description="Width (metres, across the part; a Gaussian's sigma) of the window of seen colours an unseen vertex takes the weighted medoid of, centred on its mirror image front to back.")
    mirror_height: float = Field(0.006, gt=0, description="Height (metres, along the part's axis; a Gaussian's sigma) of that window: narrower than a ring, so a hem or a belt a few centimetres high comes round at its own height instead of blurring into the ring's other colours.")
    smooth_iters: int = Field(20, ge=0, description="Laplacian smoothing passes over the unseen vertices.")
    skin: tuple[float, float, float] = Field((0.80, 0.62, 0.50), description="Skin colour (linear RGB) when the photo shows no face.")
    shoes: tuple[float, float, float] = Field((0.15, 0.15, 0.16), description="Shoe colour when the photo shows no foot.")

    @field_validator("hairline")
    @classmethod
    def _hairline_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= value[0] < value[1]:
            raise ValueError(f"`hairline` must be (shortest, longest) with 0 <= shortest < longest, got {value}.")
        return value


@dataclasses.dataclass
class Observation:
    """What the photo says of each vertex: ``colour`` [V, 3], gathered ``weight`` [V], ``known``
    [V] bool (weight above the config's bar), ``facing`` [V] (cosine to the camera) and
    ``pixel`` [V, 2] (where it projects, z-buffer pixels); ``occluded`` [V] bool: facing the
    camera, in the frame, behind other surface."""

    colour: Tensor
    weight: Tensor
    known: Tensor
    facing: Tensor
    pixel: Tensor
    occluded: Tensor


@dataclasses.dataclass
class Completion:
    """The completed field: ``colour`` [V, 3], the ``skin`` and ``hair`` colours it used, and
    ``coverage``: the fraction of each part group's vertices the photo shows."""

    colour: Tensor
    skin: Tensor
    hair: Tensor
    coverage: dict[str, float]


def edge_distance(mask: Tensor, width: int, height: int) -> tuple[Tensor, Tensor]:
    """The person mask at ``width`` x ``height`` (area-resampled, > 1/2) and each pixel's distance
    (pixels) to the nearest pixel outside it."""
    small = torch.nn.functional.interpolate(mask.float()[None, None], size=(height, width), mode="area")[0, 0] > 0.5
    dist = ndimage.distance_transform_edt(small.cpu().numpy())
    return small, torch.from_numpy(dist).to(mask.device, torch.float32)


def rings(rest: Tensor, part: Tensor, side: Tensor, ring_width: float = RING_WIDTH, foot_ring_width: float = FOOT_RING_WIDTH) -> tuple[Tensor, Tensor]:
    """Each surface point's ring: [N] its index along its part's axis (rest pose: arms along x,
    the rest along y; feet in finer rings, for soles) and [N] a key unique to its part, side and
    ring (-1 off the ring parts)."""
    along_x = torch.isin(part, torch.tensor([int(p) for p in ALONG_X], device=part.device))
    coord = torch.where(along_x, rest[:, 0] * side, rest[:, 1])
    width = torch.where(part == Part.FOOT, foot_ring_width, ring_width)
    ring = torch.floor(coord / width).long()
    on_rings = torch.isin(part, torch.tensor([int(p) for p in RING_PARTS], device=part.device))
    key = ((part * 3 + side + 1) * 100_000 + ring - ring.min()) if len(ring) else ring
    return ring, torch.where(on_rings, key, torch.full_like(key, -1))


def occlusion_edges(view: MeshView, depth_jump: float, face_part: Tensor | None = None) -> Tensor:
    """[H, W] bool: z-buffer pixels on either side of an inner outline, where one part of the body
    lies in front of another (an arm across the chest): neighbouring body pixels more than
    ``depth_jump`` metres apart in depth or, given ``face_part`` ([F] each face's part), of two
    parts not joined on the body (a hand flat on the belly is within any depth step of it). The
    photo's pixels there mix the two, and a body fitted a little off puts one's colour on the
    other."""
    body = view.frags.mask
    depth = torch.where(body, view.frags.depth, torch.full_like(view.frags.depth, float("nan")))
    joined = joined_parts(body.device) if face_part is not None else None
    part = face_part[view.frags.face.clamp(min=0)] if face_part is not None else None
    edges = torch.zeros_like(body)
    for a, b in (((slice(None), slice(1, None)), (slice(None), slice(None, -1))), ((slice(1, None), slice(None)), (slice(None, -1), slice(None)))):
        step = (depth[a] - depth[b]).abs() > depth_jump  # NaN (off the body) compares False
        if joined is not None:
            step |= body[a] & body[b] & ~joined[part[a], part[b]]
        edges[a] |= step
        edges[b] |= step
    return edges


def readable(mask: Tensor, view: MeshView, config: CompletionConfig, face_part: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Where the photo may be read onto the body, in the view's z-buffer pixels: inside the mask
    and on the body's own silhouette, at least the margin from the edge of either (edge pixels
    mix in the background, and a mask that bleeds or a body a little too large would let it in),
    and from the body's inner outlines (:func:`occlusion_edges`: an arm in front of the torso).
    With ``face_part`` ([F] part of each mesh face), pixels on the feet take the feet's narrower
    margin. Returns the [H, W] bool map and each pixel's distance to the nearest edge."""
    valid, dist, _ = _read_bands(mask, view, config, face_part)
    return valid, dist


def _read_bands(mask: Tensor, view: MeshView, config: CompletionConfig, face_part: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`readable`'s map and distances, and [H, W] bool the band along the inner outlines
    alone (unread, but the surface there is in view: it faces the camera beside a limb in front)."""
    inside, dist = edge_distance(mask, view.width, view.height)
    body = view.frags.mask
    body_dist = torch.from_numpy(ndimage.distance_transform_edt(body.cpu().numpy())).to(dist)
    dist = torch.minimum(torch.where(inside, dist, torch.zeros_like(dist)), body_dist)
    on_foot = body & (face_part[view.frags.face.clamp(min=0)] == Part.FOOT) if face_part is not None else torch.zeros_like(body)
    margin = part_margins(inside, config, on_foot)
    inner_band = torch.zeros_like(body)
    if config.occlusion_depth is not None:
        inner = occlusion_edges(view, config.occlusion_depth, face_part)
        if inner.any():
            inner_dist = torch.from_numpy(ndimage.distance_transform_edt(~inner.cpu().numpy())).to(dist)
            inner_band = (dist > margin) & (inner_dist <= margin)
            dist = torch.minimum(dist, inner_dist)
    return dist > margin, dist, inner_band


def part_margins(small_mask: Tensor, config: CompletionConfig, foot: Tensor) -> Tensor:
    """The unread band's width (z-buffer pixels) for each element of ``foot`` (bool): the feet's
    where it is set, the rest's elsewhere."""
    return torch.where(foot, margin_pixels(small_mask, config, foot=True), margin_pixels(small_mask, config))


def margin_pixels(small_mask: Tensor, config: CompletionConfig, foot: bool = False) -> float:
    """The unread band's width in z-buffer pixels (a fraction of the person's height there; the
    feet's with ``foot``)."""
    rows = torch.nonzero(small_mask.any(1))[:, 0]
    person = float(rows.max() - rows.min() + 1) if len(rows) else float(small_mask.shape[0])
    return max(config.min_edge_pixels, (config.foot_edge_margin if foot else config.edge_margin) * person)


def observe(
    image: Tensor, mask: Tensor, view: MeshView, vertices: Tensor, faces: Tensor, normals: Tensor, config: CompletionConfig, face_part: Tensor | None = None,
    vertex_part: Tensor | None = None,
) -> Observation:
    """Read the photo onto the mesh's vertices through its z-buffer.

    Args:
        image: [H, W, 3] float photo in [0, 1].
        mask: [H, W] bool person mask.
        view: the posed mesh's :func:`~avatar_ops.avatar.visibility.mesh_view` in the photo's camera.
        vertices: [V, 3] camera-frame posed vertices; normals [V, 3] their unit normals.
        face_part: [F] each face's part (the feet's margin is narrower); None: one margin.
        vertex_part: [V] each vertex's part: with ``face_part``, a vertex is seen only where the
            z-buffer shows its own part (not a hand or forearm lying on it).
    """
    w, h = view.width, view.height
    small = torch.nn.functional.interpolate(image.permute(2, 0, 1)[None], size=(h, w), mode="area")[0].permute(1, 2, 0)
    valid, _, inner_band = _read_bands(mask, view, config, face_part)
    frags = view.frags
    v0, v1, v2 = (vertices[faces[:, i]] for i in range(3))
    face_normal = torch.linalg.cross(v1 - v0, v2 - v0, dim=-1)
    face_normal = face_normal / face_normal.norm(dim=1, keepdim=True).clamp(min=1e-12)
    centre = (v0 + v1 + v2) / 3
    face_facing = -(face_normal * centre / centre.norm(dim=1, keepdim=True)).sum(1)
    f = frags.face[valid]
    weight = face_facing[f].clamp(min=0)[:, None] * frags.bary[valid]  # [P, 3]
    colour = small[valid]
    corners = faces[f]  # [P, 3]
    num = vertices.shape[0]
    total = torch.zeros(num, device=vertices.device).index_add_(0, corners.reshape(-1), weight.reshape(-1))
    summed = torch.zeros(num, 3, device=vertices.device).index_add_(0, corners.reshape(-1), (weight[..., None] * colour[:, None]).reshape(-1, 3))
    observed = summed / total.clamp(min=1e-9)[:, None]
    # Seen: the z-buffer shows the vertex, squarely enough, inside the mask away from its edge.
    visible, facing = view.visible(vertices, normals)
    if face_part is not None and vertex_part is not None:
        visible &= view.shows_own_part(vertices, vertex_part, face_part)
    pixel = view.pixels(vertices)
    px = pixel.floor().long()
    px = torch.stack([px[:, 0].clamp(0, w - 1), px[:, 1].clamp(0, h - 1)], 1)
    known = visible & (facing >= config.seen_facing) & valid[px[:, 1], px[:, 0]]
    # Occluded: facing the camera, in the frame, but behind other surface (an arm held in front).
    in_frame = (pixel[:, 0] >= 0) & (pixel[:, 0] < w) & (pixel[:, 1] >= 0) & (pixel[:, 1] < h)
    # Those in the band along an inner outline count as occluded too: a limb in front hides them.
    occluded = (~visible | inner_band[px[:, 1], px[:, 0]]) & (facing >= config.seen_facing) & in_frame & frags.mask[px[:, 1], px[:, 0]]
    # A seen vertex no pixel reached (a small triangle's corner) reads the photo where it projects.
    sampled = small[px[:, 1], px[:, 0]]
    observed = torch.where((total > config.known_weight)[:, None], observed, sampled)
    weight = torch.where(known, total.clamp(min=config.known_weight), torch.zeros_like(total))
    return Observation(colour=observed, weight=weight, known=known, facing=facing, pixel=pixel, occluded=occluded)


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per-channel weighted median of [N, C] values."""
    out = np.empty(values.shape[1], dtype=np.float64)
    for c in range(values.shape[1]):
        order = np.argsort(values[:, c])
        cum = np.cumsum(weights[order])
        out[c] = values[order[np.searchsorted(cum, 0.5 * cum[-1])], c]
    return out


def _colour_regions(colour: np.ndarray, known: np.ndarray, seen_edges: np.ndarray, tolerance: float):
    """The seen surface cut into regions of similar colour (seen neighbours closer than
    ``tolerance``): each vertex's region ``label`` [V] (an unseen vertex is a region of its own),
    each region's seen ``size`` and ``mean`` colour, the seen edges that ``cross`` from one region
    to another, and the sorted ``pairs`` of regions across them (both ways round)."""
    from scipy.sparse.csgraph import connected_components

    num = len(colour)
    linked = seen_edges[np.linalg.norm(colour[seen_edges[:, 0]] - colour[seen_edges[:, 1]], axis=1) < tolerance]
    _, label = connected_components(sparse.coo_matrix((np.ones(len(linked)), (linked[:, 0], linked[:, 1])), shape=(num, num)), directed=False)
    regions = label.max() + 1
    size = np.bincount(label[known], minlength=regions)
    mean = np.stack([np.bincount(label[known], weights=colour[known, c], minlength=regions) for c in range(3)], 1) / np.maximum(size, 1)[:, None]
    cross = seen_edges[label[seen_edges[:, 0]] != label[seen_edges[:, 1]]]
    ends = label[cross]
    pairs = _unique_pairs(np.r_[ends[:, 0], ends[:, 1]], np.r_[ends[:, 1], ends[:, 0]], regions)
    return label, size, mean, cross, pairs


def _unique_pairs(first: np.ndarray, second: np.ndarray, base: int) -> np.ndarray:
    """[M, 2] the sorted unique rows (first, second) of integers below ``base``, each row taken as
    one int64 code (np.unique over rows sorts structured views, ~10x slower)."""
    code = np.unique(first.astype(np.int64) * base + second)
    return np.stack([code // base, code % base], 1)


def _surrounding(colour: np.ndarray, start: np.ndarray, pool: np.ndarray, adjacency: sparse.csr_matrix, hops: int) -> np.ndarray | None:
    """The median colour of the ``pool`` vertices within ``hops`` mesh edges of the ``start``
    vertices ([V] bool masks): what surrounds a print where it lies. A region's mean would not
    do: regions grow through gradual blends (a shirt's shading, a sleeve's edge blending into the
    arm), so a shirt's region can take in the skin, and its mean is neither."""
    reach = start.astype(np.float64)
    for _ in range(hops):
        reach = adjacency @ reach
    near = (reach > 0) & pool
    return np.median(colour[near], axis=0) if near.any() else None


def clean_prints(colour: np.ndarray, known: np.ndarray, faces: np.ndarray, config: CompletionConfig, hidden: np.ndarray | None = None) -> np.ndarray:
    """The seen surface's colours with its prints taken out, so they are not carried round to the
    back: the seen vertices are cut into regions of similar colour (mesh neighbours closer than
    ``region_tolerance``), and a region enclosed by one other colour (the garment round a logo,
    the skin round an eye) takes that colour (the median of it within a few edges), smallest
    regions first, until none is left. A region that reaches the unseen surface along much of its edge (a sleeve, the hair) or meets
    two different colours (a hem between a shirt and trousers) is a garment of its own and stays.

    Args:
        colour: [V, 3] observed colours; known [V] bool; faces [F, 3].
        hidden: [V] bool, unseen vertices that face the camera behind other surface (an arm in
            front of them): an edge along them says nothing of where a garment wraps round, so it
            does not count as unseen. (The frame's edge does: the garment goes on past it.)

    Prints of several colours are taken out after that (:func:`_clean_compound_prints`).
    """
    num = len(colour)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = _unique_pairs(*np.sort(edges, 1).T, num)
    # A light smoothing over seen neighbours, so a garment's own texture does not cut it up.
    adj = sparse.coo_matrix((np.ones(len(edges) * 2), (np.r_[edges[:, 0], edges[:, 1]], np.r_[edges[:, 1], edges[:, 0]])), shape=(num, num)).tocsr()
    adj = adj + sparse.identity(num, format="csr")
    w = known.astype(np.float64)
    smooth = np.where(known[:, None], colour, 0.0)
    for _ in range(config.clean_smoothing):
        smooth = (adj @ (smooth * w[:, None])) / np.maximum(adj @ w, 1e-9)[:, None]
    smooth = np.where(known[:, None], smooth, 0.0)
    seen_edges = edges[known[edges[:, 0]] & known[edges[:, 1]]]
    seen_adjacency = sparse.coo_matrix((np.ones(len(seen_edges) * 2), (np.r_[seen_edges[:, 0], seen_edges[:, 1]], np.r_[seen_edges[:, 1], seen_edges[:, 0]])), shape=(num, num)).tocsr()
    seen_adjacency = seen_adjacency + sparse.identity(num, format="csr")
    touches_unseen = np.zeros(num, bool)
    away = ~known if hidden is None else ~known & ~hidden  # unseen because it faces away
    border = edges[(known[edges[:, 0]] & away[edges[:, 1]]) | (away[edges[:, 0]] & known[edges[:, 1]])]
    touches_unseen[border[known[border[:, 0]], 0]] = True
    touches_unseen[border[known[border[:, 1]], 1]] = True
    out = smooth.copy()
    for _ in range(config.clean_rounds):
        label, size, mean, cross, pairs = _colour_regions(out, known, seen_edges, config.region_tolerance)
        regions = len(size)
        on_edge = np.zeros(num, bool)
        on_edge[cross.ravel()] = True
        rim = np.bincount(label[on_edge], minlength=regions)
        unseen_rim = np.bincount(label[touches_unseen], minlength=regions)
        changed = np.zeros(regions, bool)
        any_change = False
        # Each region's neighbours and members as slices of sorted arrays (np.unique sorted the
        # pairs by their first column).
        ids = np.arange(regions)
        first, last = np.searchsorted(pairs[:, 0], ids), np.searchsorted(pairs[:, 0], ids, side="right")
        by_label = np.argsort(label, kind="stable")
        member_first, member_last = np.searchsorted(label[by_label], ids), np.searchsorted(label[by_label], ids, side="right")
        order = np.argsort(size, kind="stable")
        for region in order[size[order] > 0]:
            if changed[region]:
                continue
            around = pairs[first[region] : last[region], 1]
            # Regions of a few vertices are the blend along an edge between two colours: not
            # surroundings of their own.
            around = around[size[around] >= config.min_region]
            # Neighbours of the region's own colour are pieces of the same print, or of the same
            # garment: a hem's lit piece between the shirt and the trousers is not enclosed by
            # the trousers, since the shirt it continues is as large as the print would be.
            alike = np.linalg.norm(mean[around] - mean[region], axis=1) < 2 * config.region_tolerance
            piece = size[region] + size[around[alike]].sum()
            around = around[~alike]
            if size[region] == 0 or len(around) == 0 or changed[around].any() or changed[region]:
                continue
            if piece > config.max_print_fraction * size[around].sum():
                continue
            if unseen_rim[region] > config.max_unseen_edge * (rim[region] + unseen_rim[region]):
                continue
            colours = mean[around]
            if np.linalg.norm(colours - colours[0], axis=1).max() >= config.region_tolerance:
                continue
            members = by_label[member_first[region] : member_last[region]]
            start = np.zeros(num, bool)
            start[members] = True
            is_around = np.zeros(regions, bool)
            is_around[around] = True
            fill = _surrounding(out, start, known & is_around[label], seen_adjacency, config.surround_hops)
            out[members] = np.average(colours, axis=0, weights=size[around]) if fill is None else fill
            changed[region] = True
            changed[around] = True
            any_change = True
        if not any_change:
            break
    out = _clean_compound_prints(out, known, seen_edges, seen_adjacency, touches_unseen, config)
    return np.where(known[:, None], out, colour)


def _clean_compound_prints(out: np.ndarray, known: np.ndarray, seen_edges: np.ndarray, seen_adjacency: sparse.csr_matrix, touches_unseen: np.ndarray, config: CompletionConfig) -> np.ndarray:
    """Prints of several colours (stripes, a two-colour logo): a connected group of regions unlike
    a large ground (every seen region of one colour) that touches that ground and borders nothing
    else (but blends: regions too small to count, and a thin edge a little off the ground's
    colour, the ground blended with the print), is not much larger than it and does not run
    along the unseen surface takes the ground's colour, and so does that edge.
    ``clean_prints``' one-colour rule leaves these, since each stripe meets two colours."""
    from scipy.sparse.csgraph import connected_components

    label, size, mean, cross, pairs = _colour_regions(out, known, seen_edges, config.region_tolerance)
    regions = len(size)
    unseen_rim = np.bincount(label[touches_unseen], minlength=regions)
    counted = size >= config.min_region  # smaller regions are edge blends
    changed = np.zeros(regions, bool)
    done = np.zeros(regions, bool)
    result = out.copy()
    for ground in np.argsort(-size, kind="stable"):
        if size[ground] < 10 * config.min_region:
            break
        if changed[ground] or done[ground]:
            continue
        # The ground is every region of its colour (a print across the chest cuts the shirt in two).
        distance = np.linalg.norm(mean - mean[ground], axis=1)
        cloth = (distance < config.region_tolerance) & (size > 0)
        # Regions a little off the ground's colour: the ground blended with a print along its edge.
        blend = (distance < 2 * config.region_tolerance) & (size > 0)
        done |= cloth
        area = size[cloth].sum()
        candidate = (distance >= 2 * config.region_tolerance) & (size > 0) & (size < config.max_compound_print_fraction * area) & ~changed
        inner = pairs[candidate[pairs[:, 0]] & candidate[pairs[:, 1]]]
        _, group = connected_components(sparse.coo_matrix((np.ones(len(inner)), (inner[:, 0], inner[:, 1])), shape=(regions, regions)), directed=False)
        touching = np.unique(group[pairs[cloth[pairs[:, 1]] & candidate[pairs[:, 0]], 0]])
        for g in touching:
            members = np.nonzero(candidate & (group == g))[0]
            if size[members].sum() > config.max_compound_print_fraction * area:
                continue
            inside = np.zeros(regions, bool)
            inside[members] = True
            out_edges = pairs[inside[pairs[:, 0]] & ~inside[pairs[:, 1]]]
            others = out_edges[:, 1][counted[out_edges[:, 1]]]
            if not blend[others].all():
                continue  # it meets another colour: a garment between two, not a print
            halo = np.zeros(regions, bool)
            halo[others[~cloth[others]]] = True  # the print's blended edge
            if size[halo].sum() > size[members].sum():
                continue  # more than a thin edge: a garment of a colour near the ground's
            rim_vertices = np.unique(cross[inside[label[cross[:, 0]]] != inside[label[cross[:, 1]]]].ravel())
            rim = int(inside[label[rim_vertices]].sum())
            unseen = int(unseen_rim[members].sum())
            if unseen > config.max_unseen_edge * (rim + unseen):
                continue
            taken = (inside | halo)[label] & known
            fill = _surrounding(out, taken, cloth[label] & known, seen_adjacency, config.surround_hops)
            result[taken] = mean[ground] if fill is None else fill
            changed[members] = True
            changed[halo] = True
    return result


def _medoid(colours: np.ndarray) -> np.ndarray:
    """The colour of [N, 3] closest, in sum, to the others (an actual colour, robust to outliers)."""
    return colours[int(np.argmin(np.abs(colours[:, None] - colours[None]).sum((1, 2))))]


def _rowwise_weighted_medoid(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[D, C] donor values and [T, D] weights (some zero) -> [T, C]: for each row, the donor
    value closest, in weighted sum of distances, to the others. Unlike a per-channel median it is
    always a colour the photo shows: donors half white, half red give white or red, not pink.
    Weights below a ten-thousandth of a row's largest count as zero (a window's far tail)."""
    weights = np.where(weights >= 1e-4 * weights.max(1, keepdims=True), weights, 0.0)
    used = np.nonzero(weights.any(0))[0]
    values, weights = values[used], weights[:, used]
    square = (values**2).sum(1)
    distance = np.sqrt(np.maximum(square[:, None] + square[None] - 2 * values @ values.T, 0.0))  # [D, D]
    cost = np.where(weights > 0, weights @ distance, np.inf)  # [T, D]
    return values[np.argmin(cost, axis=1)]


def _median_of(colour: np.ndarray, weight: np.ndarray, index: np.ndarray, min_count: int) -> np.ndarray | None:
    return _weighted_median(colour[index], weight[index]) if len(index) >= min_count else None


def surface_adjacency(faces: np.ndarray, num: int, same: np.ndarray, colour: np.ndarray | None = None, tolerance: float = np.inf) -> sparse.csr_matrix:
    """The averaging operator of mesh neighbourhoods: each vertex with the neighbours it shares a
    ``same`` label with (and, given [V, 3] ``colour``, is closer than ``tolerance`` to in it),
    row-normalised, the vertex itself included, so one with no such neighbour keeps its value."""
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = np.concatenate([edges, edges[:, ::-1]])
    edges = edges[same[edges[:, 0]] == same[edges[:, 1]]]
    if colour is not None:
        edges = edges[np.linalg.norm(colour[edges[:, 0]] - colour[edges[:, 1]], axis=1) < tolerance]
    edges = np.concatenate([edges, np.repeat(np.arange(num)[:, None], 2, 1)])
    adj = sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(num, num)).tocsr()
    adj.data[:] = 1.0  # duplicate edges count once
    degree = np.asarray(adj.sum(1)).ravel()
    return sparse.diags(1.0 / np.maximum(degree, 1)) @ adj


def complete(obs: Observation, rest_vertices: Tensor, rest_keypoints: Tensor, parts: BodyParts, faces: Tensor, config: CompletionConfig) -> Completion:
    """Complete the colour field over the whole surface (see the module docstring).

    Args:
        obs: the photo's :func:`observe`.
        rest_vertices: [V, 3] the shaped body in its rest pose (T-pose, canonical frame).
        rest_keypoints: [K, 3] its keypoints.
        parts: per-vertex :class:`BodyParts`.
        faces: [F, 3] the mesh.
    """
    device = obs.colour.device
    colour = obs.colour.detach().cpu().double().numpy()
    weight = obs.weight.detach().cpu().double().numpy()
    known = obs.known.cpu().numpy()
    pixel = obs.pixel.detach().cpu().double().numpy()
    rest = rest_vertices.detach().cpu().numpy()
    part = parts.part.cpu().numpy()
    side = parts.side.cpu().numpy()
    num = len(rest)
    faces_np = faces.cpu().numpy()
    out = np.where(known[:, None], colour, 0.0)
    filled = known.copy()
    cleaned = clean_prints(colour, known, faces_np, config, obs.occluded.cpu().numpy() & ~known)

    # Skin from the face (its eyes and mouth taken out); hair from the scalp.
    face, scalp = (m.cpu().numpy() for m in head_regions(rest_vertices, rest_keypoints, parts, vertex_normals(rest_vertices, faces), nape_depth=config.hairline[1]))
    skin = _median_of(cleaned, weight, np.nonzero(face & known)[0], 5)
    if skin is None:
        skin = _median_of(colour, weight, np.nonzero((part == Part.HAND) & known)[0], 5)
    skin = np.asarray(config.skin, dtype=np.float64) if skin is None else skin
    # The scalp the photo shows can take in some forehead (the body's head a little off the
    # photo's), and a front view shows little of it: the hair is read from the seen scalp's
    # colours farthest from the skin's (a share of them), where those are unlike the skin; a bald
    # or skin-toned scalp has none such, and takes the median of all.
    seen_scalp = np.nonzero(scalp & known)[0]
    distance = np.linalg.norm(colour[seen_scalp] - skin, axis=1)
    far = distance >= np.quantile(distance, 1 - config.hair_share) if len(seen_scalp) else distance > 0
    hair = None
    if far.any() and np.median(distance[far]) >= 2 * config.region_tolerance:
        hair = _median_of(colour, weight, seen_scalp[far], 5)
    hair = _median_of(colour, weight, seen_scalp, 5) if hair is None else hair
    hair = skin if hair is None else hair

    # Rings: wrap colours, filled along each part, then from counterparts and neighbours.
    ring_t, ring_key = rings(rest_vertices.detach().cpu(), parts.part.cpu(), parts.side.cpu(), config.ring_width, config.foot_ring_width)
    ring = ring_t.numpy()
    profiles: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}  # (part, side) -> (ring ids, colours)
    for p in RING_PARTS:
        for s in np.unique(side[part == p]):
            members = np.nonzero((part == p) & (side == s))[0]
            ids, colours = [], []
            if known[members].mean() < config.min_part_seen:
                continue  # a few stray pixels (an arm in front of the lap) do not dress a whole leg
            for r in np.unique(ring[members]):
                seen = members[(ring[members] == r) & known[members]]
                if len(seen) < config.min_ring_known:
                    continue
                # The sides of what is seen, where a garment wraps round: the outermost seen
                # vertices across the ring's image (its projection's major axis).
                ring_xy = pixel[members[ring[members] == r]]
                centre = ring_xy.mean(0)
                _, _, vt = np.linalg.svd(ring_xy - centre, full_matrices=False)
                lateral = (pixel[seen] - centre) @ vt[0]
                lo, hi = np.quantile(lateral, [config.side_fraction, 1 - config.side_fraction])
                sides = seen[(lateral <= lo) | (lateral >= hi)]
                ids.append(r)
                colours.append(_weighted_median(cleaned[sides], weight[sides]))
            if ids:
                profiles[(int(p), int(s))] = (np.asarray(ids, dtype=np.float64), np.stack(colours))
    for p in RING_PARTS:
        for s in np.unique(side[part == p]):
            key = (int(p), int(s))
            if key in profiles:
                continue
            if (int(p), int(-s)) in profiles and s != 0:
                profiles[key] = profiles[(int(p), int(-s))]
            elif p in FALLBACK and any(q == FALLBACK[p][0] for q, _ in profiles):
                # The nearest garment: what the neighbouring part shows in its rings nearest this
                # part (a few of them, so one ring of a belt or a shadow does not decide).
                src_part, end = FALLBACK[p]
                ends = [(ids, cols) for (q, _), (ids, cols) in profiles.items() if q == src_part]
                edge = min(float(ids[0]) for ids, _ in ends) if end == "low" else max(float(ids[-1]) for ids, _ in ends)
                near = np.concatenate([cols[np.abs(ids - edge) < config.fallback_rings] for ids, cols in ends])
                profiles[key] = (np.zeros(1), _medoid(near)[None])
            elif p == Part.NECK:
                profiles[key] = (np.zeros(1), skin[None])
            elif p == Part.FOOT:
                profiles[key] = (np.zeros(1), np.asarray(config.shoes, dtype=np.float64)[None])
            else:
                seen = np.nonzero(known)[0]
                profiles[key] = (np.zeros(1), (_median_of(colour, weight, seen, 1) if len(seen) else skin)[None])
    for (p, s), (ids, colours) in profiles.items():
        members = (part == p) & (side == s)
        todo = np.nonzero(members & ~filled)[0]
        if not len(todo):
            continue
        out[todo] = np.stack([np.interp(ring[todo], ids, colours[:, c]) for c in range(3)], 1)
        filled[todo] = True
        # Front to back: the cleaned colours seen in the ring around the vertex's mirror image
        # through the ring's centre (a weighted medoid), so hems, cuffs, a tank top's armholes and
        # a jacket's panels come round as they are, and prints (cleaned away) do not.
        # The window is narrow along the part's axis (``mirror_height``), so bands come round at
        # their own height; a vertex with no seen surface that near takes its ring's.
        seen = np.nonzero(members & known)[0]
        if len(seen):
            lateral = 1 if p in ALONG_X else 0  # the rest-pose axis across the part, besides depth
            axial = rest[:, 0] * side if p in ALONG_X else rest[:, 1]  # along the part (as `rings` cuts it)
            for r in np.unique(ring[todo]):
                targets = todo[ring[todo] == r]
                if p == Part.FOOT:
                    # A shoe's rings are a centimetre high and its sole is one or two of them: the
                    # sole's thin seen band must not be outvoted by the shoe's wide one above it.
                    donors = seen[ring[seen] == r]
                    if len(donors) < config.min_ring_known:
                        continue
                else:
                    donors = seen[np.abs(ring[seen] - r) <= 1]
                if not len(donors):
                    continue
                gap = rest[targets, lateral][:, None] - rest[donors, lateral][None]  # [T, D]
                rise = axial[targets][:, None] - axial[donors][None]
                across = weight[donors][None] * np.exp(-0.5 * (gap / config.mirror_width) ** 2)
                w = across * np.exp(-0.5 * (rise / config.mirror_height) ** 2)
                same_ring = across * (ring[donors] == r)[None]
                near = w.sum(1) > 1e-3 * across.sum(1).clip(min=1e-12)
                w = np.where(near[:, None], w, same_ring)
                has = w.sum(1) > 1e-6
                if has.any():
                    out[targets[has]] = _rowwise_weighted_medoid(cleaned[donors], w[has])

    # Head: scalp -> hair; an unseen side of the face -> the other side's, else skin; the mouth's
    # inner surface -> skin.
    # (After the rings: the nape is neck, but hair may cover it.) How far down the back hair
    # comes is not in a front view: the unseen scalp takes the hair's colour down to the shortest
    # hairline of `hairline`'s range, and below it, down to the longest, the share of hairlines
    # that reach that far (the colour that errs least when all of them are as likely), over the
    # neck's ring colour or, on the head, the skin.
    eyes_y, eye_gap = eye_line(rest_keypoints)
    unseen_scalp = scalp & ~known
    below = (eyes_y - rest[unseen_scalp, 1]) / eye_gap  # eye gaps below the eyes
    short, long = config.hairline
    share = np.clip((long - below) / (long - short), 0.0, 1.0)[:, None]
    under = np.where((part[unseen_scalp] == Part.NECK)[:, None], out[unseen_scalp], skin[None])
    out[unseen_scalp] = share * hair + (1 - share) * under
    unseen_face = np.nonzero(face & ~known)[0]
    if len(unseen_face):
        seen_face = np.nonzero(face & known)[0]
        value = np.repeat(skin[None], len(unseen_face), 0)
        if len(seen_face):
            mirrored = rest[unseen_face] * np.array([-1.0, 1.0, 1.0])
            dist, idx = cKDTree(rest[seen_face]).query(mirrored)
            near = dist < 0.01
            value[near] = colour[seen_face[idx[near]]]
        out[unseen_face] = value
    out[(part == Part.HEAD) & ~face & ~scalp & ~known] = skin  # the mouth's inner surface
    filled |= (part == Part.HEAD)

    # Hands: skin.
    out[part == Part.HAND] = skin
    filled |= part == Part.HAND

    # Smooth the completion (not the photo) around each ring, and within the other parts, so the
    # seam between seen and completed surface blends without blurring one ring into the next, nor
    # a band within a ring into the garment beside it (only neighbours of near colours average).
    free = ~known & (part != Part.HAND)
    if config.smooth_iters and free.any():
        label = np.where(ring_key.numpy() >= 0, ring_key.numpy() + 100, part)
        adj = surface_adjacency(faces_np, num, label, out, 2 * config.region_tolerance)
        for _ in range(config.smooth_iters):
            out[free] = (adj @ out)[free]

    coverage = {}
    for name, group in COVERAGE_GROUPS.items():
        members = np.isin(part, [int(p) for p in group])
        coverage[name] = float(known[members].mean()) if members.any() else 0.0
    to = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)
    return Completion(colour=to(out).clamp(0, 1), skin=to(skin), hair=to(hair), coverage=coverage)
