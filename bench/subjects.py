"""Synthetic people with known geometry and appearance, for the quality benchmark.

A subject is an Anny body (shape, pose) dressed by a procedural texture evaluated on the body's
rest-pose surface (metres, y up, facing +z, the subject's left at +x):

* skin in one of several tones, with a face: sclera, iris and pupil at the eye bones, brows, lips;
* hair on the scalp (its colour, a hairline at the forehead, short or long at the back);
* a top (t-shirt, long sleeves or tank) with a fabric weave, a hem band and cuffs all around, and a
  print on the front only;
* a bottom (trousers or shorts) with a twill weave, a belt band, a fly seam on the front;
* shoes with a sole (white, darker than the shoe, or gum).

``back="consistent"``: the back of each garment has the front's colour and weave but no print,
as real clothes do. ``back="hard"``: the back of the top and bottom has an unrelated colour and a
print of its own. Renders are z-buffered mesh renders, 2x supersampled (so edges and the weave
are anti-aliased), on black.

The bench owns this labelling and texture; it does not use the library's body-part logic, so the
benchmark does not share its mistakes.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from avatar_ops.body.base import SMPLX_JOINT_NAMES, BodyModel
from avatar_ops.render.camera import Cameras
from avatar_ops.render.mesh import rasterize_mesh

HEAD, NECK, TORSO, ARM, HAND, LEG, FOOT = range(7)
PART_NAMES = ("head", "neck", "torso", "arm", "hand", "leg", "foot")

SKIN_TONES = [(0.96, 0.80, 0.69), (0.87, 0.67, 0.52), (0.76, 0.57, 0.42), (0.55, 0.38, 0.26), (0.36, 0.24, 0.16)]
HAIR_COLOURS = [(0.06, 0.05, 0.05), (0.25, 0.15, 0.08), (0.55, 0.40, 0.20), (0.80, 0.68, 0.45), (0.55, 0.55, 0.55), (0.50, 0.20, 0.08)]
GARMENT_COLOURS = [
    (0.80, 0.12, 0.12), (0.12, 0.30, 0.70), (0.15, 0.55, 0.25), (0.92, 0.80, 0.20), (0.90, 0.90, 0.88),
    (0.20, 0.20, 0.22), (0.55, 0.30, 0.60), (0.95, 0.55, 0.20), (0.45, 0.65, 0.85), (0.60, 0.45, 0.30),
]  # fmt: skip
BOTTOM_COLOURS = [(0.15, 0.25, 0.45), (0.10, 0.10, 0.12), (0.65, 0.55, 0.40), (0.40, 0.40, 0.42), (0.25, 0.35, 0.20)]


def _j(name: str) -> int:
    return SMPLX_JOINT_NAMES.index(name)


# Poses, SMPL-X axis-angle per joint (world y up, facing +z). Arms hang from the T-pose by a
# rotation about z at the shoulder; a left forearm turns forward (+z) about -y at the elbow.
POSES: dict[str, dict[str, tuple[float, float, float]]] = {
    "relaxed": {"left_shoulder": (0, 0, -1.15), "right_shoulder": (0, 0, 1.15), "left_elbow": (0, -0.25, 0), "right_elbow": (0, 0.25, 0), "left_hip": (0, 0, 0.08), "right_hip": (0, 0, -0.08)},
    "arms_forward": {
        "left_shoulder": (0, 0, -1.25), "right_shoulder": (0, 0, 1.25), "left_elbow": (0, -1.45, 0), "right_elbow": (0, 1.35, 0),
        "left_hip": (0, 0, 0.06), "right_hip": (0, 0, -0.06),
    },
    "stride": {
        "left_shoulder": (0.35, 0, -1.2), "right_shoulder": (-0.35, 0, 1.2), "left_elbow": (0, -0.3, 0), "right_elbow": (0, 0.3, 0),
        "left_hip": (-0.45, 0, 0.05), "right_hip": (0.35, 0, -0.05), "right_knee": (0.5, 0, 0), "left_knee": (0.1, 0, 0),
    },
    "turned_torso": {
        "global": (0, 0.35, 0), "spine1": (0, 0.15, 0), "spine2": (0, 0.15, 0), "spine3": (0, 0.12, 0), "head": (0, -0.2, 0),
        "left_shoulder": (0, 0, -1.1), "right_shoulder": (0, 0, 1.1), "left_elbow": (0, -0.5, 0), "right_elbow": (0, 0.4, 0),
        "left_hip": (0, 0, 0.1), "right_hip": (0, 0, -0.1),
    },
    "hand_on_hip": {
        "left_shoulder": (0, 0, -0.75), "right_shoulder": (0, 0, 1.2), "left_elbow": (0, -1.6, 0), "right_elbow": (0, 0.2, 0),
        "left_hip": (0, 0, 0.15), "right_hip": (0, 0, -0.05), "global": (0, -0.2, 0),
    },
    "arm_forward_stride": {
        "left_shoulder": (-0.9, 0, -0.9), "right_shoulder": (0, 0, 1.2), "left_elbow": (0, -0.6, 0), "right_elbow": (0, 0.3, 0),
        "left_hip": (0.3, 0, 0.05), "right_hip": (-0.35, 0, -0.05), "left_knee": (0.4, 0, 0), "global": (0, 0.25, 0),
    },
}  # fmt: skip
SUBJECT_POSES = ("relaxed", "arms_forward", "stride", "turned_torso", "hand_on_hip", "arm_forward_stride")
# A loose fist: each finger's knuckle, middle and end joints bent towards the palm (radians; the
# left hand's fingers bend about -z, the right's about +z), the little finger most, the thumb a little.
FINGER_CURL = {"index": (0.5, 0.8, 0.4), "middle": (0.6, 0.9, 0.45), "ring": (0.7, 0.95, 0.5), "pinky": (0.8, 1.0, 0.5), "thumb": (0.2, 0.3, 0.3)}


def bend_fingers(pose: Tensor) -> Tensor:
    """[1, 55, 3] ``pose`` with both hands in :data:`FINGER_CURL`'s loose fist."""
    pose = pose.clone()
    for side, sign in (("left", -1.0), ("right", 1.0)):
        for finger, angles in FINGER_CURL.items():
            for k, angle in enumerate(angles, start=1):
                pose[0, _j(f"{side}_{finger}{k}"), 2] = sign * angle
    return pose


def pose_tensor(name: str) -> Tensor:
    """[1, 55, 3] one of :data:`POSES`."""
    pose = torch.zeros(1, 55, 3)
    for joint, value in POSES[name].items():
        pose[0, 0 if joint == "global" else _j(joint)] = torch.tensor(value, dtype=torch.float32)
    return pose


@dataclasses.dataclass
class Subject:
    """One synthetic person: ``shape`` [1, S], ``pose`` [1, 55, 3] (world, y up, facing +z) and
    the garment description the texture reads."""

    name: str
    shape: Tensor
    pose: Tensor
    look: dict
    back: str
    fingers_bent: bool = False


def make_subjects(body: BodyModel, count: int, back: str = "consistent") -> list[Subject]:
    """``count`` subjects, varied in shape, skin, hair, garments and pose (seeded; the same index
    gives the same person in both sets, only the backs differ)."""
    if back not in ("consistent", "hard"):
        raise ValueError(f"`back` must be 'consistent' or 'hard', got {back!r}.")
    subjects = []
    for index in range(count):
        g = torch.Generator().manual_seed(1000 + index)
        rand = lambda g=g: float(torch.rand((), generator=g))
        pick = lambda seq, g=g: seq[int(torch.randint(len(seq), (), generator=g))]
        # Anny phenotypes: gender, age, muscle, weight, height, proportions (adults).
        shape = torch.tensor([[rand(), 0.45 + 0.3 * rand(), 0.3 + 0.4 * rand(), 0.3 + 0.4 * rand(), 0.35 + 0.4 * rand(), 0.35 + 0.3 * rand()]])
        top, print_colour, trim, back_top = (torch.tensor(pick(GARMENT_COLOURS)) for _ in range(4))
        while float((print_colour - top).abs().sum()) < 0.6:
            print_colour = torch.tensor(pick(GARMENT_COLOURS))
        while float((back_top - top).abs().sum()) < 0.6:
            back_top = torch.tensor(pick(GARMENT_COLOURS))
        bottom = torch.tensor(pick(BOTTOM_COLOURS))
        back_bottom = torch.tensor(pick(GARMENT_COLOURS)) * 0.7
        look = {
            "skin": torch.tensor(SKIN_TONES[index % len(SKIN_TONES)]) * (0.95 + 0.1 * rand()),
            "hair": torch.tensor(pick(HAIR_COLOURS)), "hair_drop": 0.05 + 0.08 * rand(),
            "iris": torch.tensor(pick([(0.25, 0.15, 0.08), (0.20, 0.35, 0.55), (0.25, 0.40, 0.25)])),
            "top_kind": ("tshirt", "longsleeve", "tank")[index % 3], "top": top, "trim": trim, "print": print_colour,
            "print_kind": ("disc", "bands", "chevron")[index % 3], "back_top": back_top,
            "bottom_kind": ("trousers", "trousers", "shorts")[(index + 1) % 3], "bottom": bottom, "back_bottom": back_bottom,
            "shoes": torch.tensor(pick([(0.08, 0.08, 0.08), (0.45, 0.25, 0.12), (0.85, 0.85, 0.85), (0.6, 0.1, 0.1)])),
        }  # fmt: skip
        # Soles: white (sneakers), darker than the upper (leather) or gum.
        look["sole"] = (torch.tensor([0.92, 0.92, 0.9]), look["shoes"] * 0.6, torch.tensor([0.55, 0.35, 0.18]))[index % 3]
        pose_name = SUBJECT_POSES[index % len(SUBJECT_POSES)]
        bent = index % 2 == 1  # every other subject's fingers bent
        pose = bend_fingers(pose_tensor(pose_name)) if bent else pose_tensor(pose_name)
        subjects.append(Subject(name=f"{index}_{pose_name}", shape=shape, pose=pose, look=look, back=back, fingers_bent=bent))
    return subjects


def vertex_parts(body: BodyModel) -> Tensor:
    """[V] part id (HEAD..FOOT) of each Anny vertex from its dominant bone."""
    groups = {
        HEAD: ("head", "eye", "neck03"), NECK: ("neck01", "neck02"),
        HAND: ("wrist", "finger", "metacarpal"), ARM: ("upperarm", "lowerarm"),
        FOOT: ("foot", "toe"), LEG: ("upperleg", "lowerleg"),
    }  # fmt: skip
    bone_part = []
    for name in body.joint_names:
        base = name.split(".")[0]
        part = next((p for p, prefixes in groups.items() if base.startswith(prefixes)), TORSO)
        bone_part.append(part)
    return torch.tensor(bone_part)[body.skinning_weights.argmax(1)]


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """[V, 3] area-weighted unit vertex normals."""
    v0, v1, v2 = (vertices[faces[:, i]] for i in range(3))
    n = torch.linalg.cross(v1 - v0, v2 - v0, dim=-1)
    out = torch.zeros_like(vertices).index_add_(0, faces.reshape(-1), n.repeat_interleave(3, 0))
    return out / out.norm(dim=1, keepdim=True).clamp(min=1e-12)


class Texture:
    """The subject's appearance as a function of rest-pose surface points."""

    def __init__(self, body: BodyModel, subject: Subject) -> None:
        with torch.no_grad():
            out = body(subject.shape, torch.zeros_like(subject.pose))
        self.rest = out.vertices[0]
        self.normals = vertex_normals(self.rest, body.faces)
        self.parts = vertex_parts(body)
        # A face's part is its first corner's: parts meet along vertex rings, so a face is never
        # shared by two parts' textures in a visible way.
        self.face_parts = self.parts[body.faces[:, 0]]
        joints = out.joints[0]
        names = body.joint_names
        at = lambda bone: joints[names.index(bone)]
        self.eye_l, self.eye_r, self.head_joint = at("eye.L"), at("eye.R"), at("head")
        self.neck_y = float(at("neck01")[1])
        self.shoulder_x = float(at("upperarm01.L")[0])
        self.elbow_x = float(at("lowerarm01.L")[0])
        self.wrist_x = float(at("wrist.L")[0])
        self.hip_y = float(at("upperleg01.L")[1])
        self.knee_y = float(at("lowerleg01.L")[1])
        self.ankle_y = float(at("foot.L")[1])
        self.face_z = float(self.rest[self.parts == HEAD, 2].max())
        self.subject = subject
        self.look = subject.look

    def __call__(self, pos: Tensor, normal: Tensor, part: Tensor) -> Tensor:
        """[..., 3] rest positions and normals, [...] part ids -> [..., 3] linear RGB in [0, 1]."""
        look = self.look
        x, y, z = pos[..., 0], pos[..., 1], pos[..., 2]
        front = normal[..., 2] > 0
        skin = look["skin"].expand(pos.shape).clone()
        out = skin.clone()
        blend = lambda cond, colour: torch.where(cond[..., None], colour.expand(pos.shape) if colour.ndim == 1 else colour, out)

        # Face: brows, eyes, lips on the front of the head.
        ey = float(self.eye_l[1])
        on_face = (part == HEAD) & (z > self.face_z - 0.06) & front
        for eye in (self.eye_l, self.eye_r):
            ex = float(eye[0])
            d = ((x - ex) / 0.013) ** 2 + ((y - ey) / 0.0065) ** 2
            out = blend(on_face & (d < 1), torch.tensor([0.95, 0.95, 0.93]))
            r = torch.sqrt((x - ex) ** 2 + (y - ey) ** 2)
            out = blend(on_face & (r < 0.0055), look["iris"])
            out = blend(on_face & (r < 0.0025), torch.tensor([0.02, 0.02, 0.02]))
            brow = on_face & ((x - ex).abs() < 0.02) & ((y - (ey + 0.02 + 0.004 * (1 - ((x - ex) / 0.02) ** 2))).abs() < 0.0035)
            out = blend(brow, look["hair"] * 0.7)
        mouth_y = ey - 0.072
        lips = on_face & ((x / 0.022) ** 2 + ((y - mouth_y) / 0.007) ** 2 < 1)
        out = blend(lips, torch.tensor([0.70, 0.30, 0.32]) * (look["skin"].mean() / 0.7).clamp(0.6, 1.1))
        out = blend(lips & ((y - mouth_y).abs() < 0.0012), torch.tensor([0.25, 0.08, 0.08]))
        nose = on_face & ((x / 0.009) ** 2 + ((y - (ey - 0.045)) / 0.006) ** 2 < 1)
        out = blend(nose, look["skin"] * 0.85)

        # Hair: above a hairline that runs from the forehead down to the nape.
        hz = float(self.head_joint[2])
        t = ((self.face_z - 0.04 - z) / (self.face_z - 0.04 - (hz - 0.03))).clamp(0, 1)  # 0 at the face, 1 at the back
        hairline = (ey + 0.048) * (1 - t) + (ey - look["hair_drop"]) * t
        hair = ((part == HEAD) | ((part == NECK) & (t > 0.9))) & (y > hairline)
        strands = 1 + 0.08 * torch.sin(x * 2 * math.pi / 0.012 + 3 * torch.sin(y * 40))
        out = torch.where(hair[..., None], (look["hair"] * strands[..., None]).clamp(0, 1), out)

        # Top: torso from the hem to the neckline, sleeves along the arms.
        sleeve_end = {"tshirt": self.shoulder_x + 0.45 * (self.elbow_x - self.shoulder_x) + 0.1, "longsleeve": self.wrist_x - 0.02, "tank": 0.0}[look["top_kind"]]
        hem_y = self.hip_y + 0.06
        if look["top_kind"] == "tank":
            sleeve_end = self.shoulder_x - 0.03
        body_part = (part == TORSO) | (part == NECK) | (part == ARM)
        in_top = body_part & (y > hem_y) & (y < self.neck_y - 0.01) & (x.abs() < sleeve_end)
        hard_back = self.subject.back == "hard"
        top_base = torch.where((hard_back & ~front)[..., None], look["back_top"].expand(pos.shape), look["top"].expand(pos.shape))
        weave = 1 + look.get("weave", 0.05) * torch.sin(x * 2 * math.pi / 0.02) * torch.sin(y * 2 * math.pi / 0.02)
        top = top_base * weave[..., None]
        band = ((part == TORSO) & (y < hem_y + 0.03)) | ((part == ARM) & (x.abs() > sleeve_end - 0.025) & (look["top_kind"] != "tank"))
        top = torch.where(band[..., None], look["trim"].expand(pos.shape) * weave[..., None], top)
        # Print: on the chest, front only (on the back too, but another one, in the hard set).
        chest_y = self.neck_y - 0.17
        px, py = x / 0.09, (y - chest_y) / 0.09
        kind = look["print_kind"]
        if kind == "disc":
            mark = (px**2 + py**2 < 1) & (px**2 + py**2 > 0.35)
        elif kind == "bands":
            mark = (px.abs() < 1.2) & (py.abs() < 0.9) & (((py * 3).floor() % 2) == 0)
        else:
            mark = (px.abs() < 1.1) & ((py - 0.8 * px.abs() + 0.2).abs() < 0.25)
        front_print = mark & front & (part == TORSO)
        top = torch.where(front_print[..., None], look["print"].expand(pos.shape), top)
        if hard_back:
            back_print = (part == TORSO) & ~front & (((x / 0.05).floor() % 2) == 0) & (y > chest_y - 0.1)
            top = torch.where(back_print[..., None], look["trim"].expand(pos.shape), top)
        out = torch.where(in_top[..., None], top, out)

        # Bottom: from the waist to the ankles (trousers) or above the knee (shorts).
        end_y = self.ankle_y + 0.04 if look["bottom_kind"] == "trousers" else self.knee_y + 0.08
        in_bottom = ((part == TORSO) & (y <= hem_y)) | ((part == LEG) & (y > end_y))
        twill = 1 + 1.2 * look.get("weave", 0.05) * torch.sin((x + y) * 2 * math.pi / 0.012)
        bottom_base = torch.where((hard_back & ~front)[..., None], look["back_bottom"].expand(pos.shape), look["bottom"].expand(pos.shape))
        bottom = bottom_base * twill[..., None]
        belt = (part == TORSO) & (y <= hem_y) & (y > hem_y - 0.03)
        bottom = torch.where(belt[..., None], torch.tensor([0.12, 0.08, 0.06]).expand(pos.shape), bottom)
        fly = front & (part == TORSO) & (x.abs() < 0.004) & (y < hem_y - 0.03) & (y > hem_y - 0.17)
        bottom = torch.where(fly[..., None], bottom * 0.6, bottom)
        out = torch.where(in_bottom[..., None], bottom, out)

        # Shoes and their soles.
        shoe = (part == FOOT) | ((part == LEG) & (y < self.ankle_y + 0.02))
        sole = y < float(self.rest[:, 1].min()) + 0.02
        out = torch.where(shoe[..., None], torch.where(sole[..., None], look["sole"].expand(pos.shape), look["shoes"].expand(pos.shape)), out)
        return out.clamp(0, 1)

    def at_vertices(self) -> Tensor:
        """[V, 3] the colour at each vertex (for mesh-level checks)."""
        return self(self.rest, self.normals, self.parts)


def posed_in_camera(body: BodyModel, shape: Tensor, pose: Tensor, view: Tensor) -> tuple[Tensor, Tensor]:
    """The world-space body (root at the origin) in a camera with world-to-camera ``view``
    [4, 4]: its camera-frame pose [1, 55, 3] (global orientation composed with the view) and
    translation [1, 3], so ``body(shape, pose_c, transl_c)`` is the body as that camera sees it."""
    from avatar_ops.body.rotations import axis_angle_to_matrix, matrix_to_axis_angle

    rot = view[:3, :3] @ axis_angle_to_matrix(pose[0, 0])
    pose_c = pose.clone()
    pose_c[0, 0] = matrix_to_axis_angle(rot[None])[0]
    return pose_c, view[:3, 3][None].clone()


def render_truth(body: BodyModel, texture: Texture, shape: Tensor, pose: Tensor, cameras: Cameras, transl: Tensor | None = None, supersample: int = 2):
    """Textured mesh renders of the body in ``pose`` (world) into every camera: rgb
    [C, H, W, 3] on black (anti-aliased), masks [C, H, W] bool (coverage > 1/2)."""
    with torch.no_grad():
        posed = body(shape, pose, transl).vertices[0]
    faces = body.faces
    images, masks = [], []
    for c in range(len(cameras)):
        view = cameras.viewmats[c]
        k = cameras.Ks[c].clone()
        k[:2] *= supersample
        w, h = cameras.width * supersample, cameras.height * supersample
        frags = rasterize_mesh(posed @ view[:3, :3].T + view[:3, 3], faces, k, w, h)
        pos = frags.interpolate(texture.rest, faces)
        nrm = frags.interpolate(texture.normals, faces)
        part = texture.face_parts[frags.face.clamp(min=0)]
        colour = torch.where(frags.mask[..., None], texture(pos, nrm, part), torch.zeros(3))
        cover = frags.mask.float()
        pool = lambda t: torch.nn.functional.avg_pool2d(t.permute(2, 0, 1)[None], supersample)[0].permute(1, 2, 0)
        images.append(pool(colour))
        masks.append(pool(cover[..., None])[..., 0] > 0.5)
    return torch.stack(images), torch.stack(masks)
