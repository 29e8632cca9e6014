"""``viewer.html`` in real headless Chromium (software WebGL): a tiny Anny avatar's splat and
skinned glTF, opened from ``file://`` and over HTTP, load with nothing fetched; both stand upright
facing the camera side by side; dragging orbits; ``viewerSetTime`` poses the mesh; a broken asset
shows its error on the page. Input checks of :func:`viewer_html` need no browser.

The avatar's Gaussians are coloured by body part so that the screenshots say which way up and
round each one is: head red, feet blue, the subject's left green, right magenta, the rest grey.
Screenshots are kept under pytest's tmp dir and copied to /tmp/viewer_shots/ for a person to see.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import http.server
import shutil
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from avatar_ops.avatar.gltf import avatar_glb
from avatar_ops.avatar.ply import avatar_splats
from avatar_ops.avatar.splat import splat_bytes
from avatar_ops.body.parts import Part, body_parts
from avatar_ops.viewer import glb_animation_names, viewer_html
from tests.avatar_ops.test_splat_files import tiny_avatar
from tests.browser import chromium_page, screenshot_array, wait_ready

SHOTS = Path("/tmp/viewer_shots")
BACKGROUND = np.array([0x1D, 0x20, 0x27])
RED, BLUE, GREEN, MAGENTA, GREY = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 1.0), (0.5, 0.5, 0.5)
CLIPS = ("walk", "wave")


@pytest.fixture(scope="module")
def assets(anny_body) -> tuple[bytes, bytes]:
    """(avatar_canonical.splat, avatar.glb) of a tiny Anny avatar coloured by body part."""
    body = anny_body
    avatar = tiny_avatar(body, n=4000)
    labels = body_parts(body).of_faces(body.faces)
    part, side = labels.part[avatar.face], labels.side[avatar.face]
    color = torch.tensor(GREY).repeat(len(avatar), 1)
    color[side == 1], color[side == -1] = torch.tensor(GREEN), torch.tensor(MAGENTA)
    color[part == Part.HEAD], color[part == Part.FOOT] = torch.tensor(RED), torch.tensor(BLUE)
    torch.manual_seed(0)
    avatar = dataclasses.replace(
        avatar, color=color, opacity_logit=torch.full((len(avatar),), 4.0), log_scale=torch.empty(len(avatar), 3).uniform_(-4.2, -3.6)
    )  # fmt: skip
    splat = splat_bytes(avatar_splats(avatar, body, "canonical"))
    return splat, avatar_glb(avatar, body, clips=CLIPS, texture_size=128, max_frames=30)


@pytest.fixture(scope="module")
def page_file(assets, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("viewer") / "viewer.html"
    path.write_bytes(viewer_html(*assets, title="tiny <avatar> & co", clips=CLIPS))
    return path


@pytest.fixture(scope="module")
def browser_page():
    with chromium_page(800, 480) as page:  # small: software WebGL draws every pixel on the CPU
        yield page


@pytest.fixture(scope="module")
def http_root(page_file) -> Iterator[str]:
    """``page_file``'s folder served on 127.0.0.1 (an ephemeral port) for the length of the module."""
    handler = functools.partial(_QuietHandler, directory=str(page_file.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args) -> None:
        """Keeps the test output clean."""


def open_viewer(page, url: str) -> dict:
    """Opens ``url``, waits for the viewer, pauses the clip at 0 s; returns viewerState."""
    page.goto(url)
    wait_ready(page)
    page.evaluate("viewerSetTime(0)")
    return page.evaluate("viewerState")


def save(image: np.ndarray, tmp_path: Path, name: str) -> None:
    Image.fromarray(image).save(tmp_path / name)
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / name, SHOTS / name)


def canvas_box(page) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the viewer canvas in screenshot pixels."""
    box = page.locator("#viewer-canvas").bounding_box()
    return int(box["x"]), int(box["y"]), int(box["x"] + box["width"]), int(box["y"] + box["height"])


def halves(image: np.ndarray, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The canvas's left (splat) and right (mesh) halves."""
    left, top, right, bottom = box
    canvas = image[top:bottom, left:right].astype(int)
    middle = canvas.shape[1] // 2
    return canvas[:, :middle], canvas[:, middle:]


def colour_masks(region: np.ndarray) -> dict[str, np.ndarray]:
    """[H, W] masks of the part colours (shaded, blended) in an RGB ``region``."""
    r, g, b = region[..., 0], region[..., 1], region[..., 2]
    return {
        "red": (r > 90) & (r > 2 * g) & (r > 2 * b),
        "blue": (b > 90) & (b > 2 * r) & (b > 2 * g),
        "green": (g > 90) & (g > 2 * r) & (g > 2 * b),
        "magenta": (r > 90) & (b > 90) & (2 * g < np.minimum(r, b)),
    }


def centroid(mask: np.ndarray) -> np.ndarray:
    """(x, y) mean of a mask's pixels."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def foreground(region: np.ndarray) -> np.ndarray:
    return np.abs(region - BACKGROUND).max(-1) > 24


# --- viewer_html's checks (no browser) ---


def test_viewer_html_embeds_assets_and_escapes_the_title(assets):
    splat, glb = assets
    page = viewer_html(splat, glb, title="</script><b>x</b> & co", clips=("wave",)).decode("utf-8")
    assert "<title>&lt;/script&gt;&lt;b&gt;x&lt;/b&gt; &amp; co</title>" in page
    assert page.lower().count("</script") == page.lower().count("<script")  # the title ends no script early
    assert '"clips": ["wave"]' in page
    assert 'id="viewer-glb"' in page and "<script src" not in page and "<link" not in page
    alone = viewer_html(splat, None, title="splat only").decode("utf-8")
    assert 'id="viewer-glb"' not in alone and 'id="viewer-splat"' in alone
    assert glb_animation_names(glb) == list(CLIPS)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"splat": b""}, "`splat` must be a non-empty whole number of 32-byte"),
        ({"splat": b"\0" * 33}, "got 33 bytes"),
        ({"glb": b"PK\x03\x04" + b"\0" * 40}, "`glb` must be a binary glTF file starting with b'glTF', got 44 bytes starting with b'PK"),
        ({"glb": None, "clips": ("wave",)}, "`clips` must be empty without a `glb`"),
        ({"clips": ("dance",)}, "`clips` must name animations in `glb` (['walk', 'wave']), got ['dance']"),
        ({"clips": "wave"}, "`clips` must be a sequence of clip names"),
        ({"title": None}, "`title` must be a str, got NoneType"),
    ],
)
def test_viewer_html_rejects_bad_inputs(assets, kwargs, message):
    splat, glb = assets
    arguments = {"splat": splat, "glb": glb, "title": "t", "clips": ()} | kwargs
    with pytest.raises((ValueError, TypeError)) as raised:
        viewer_html(**arguments)
    assert message in str(raised.value)


def test_glb_length_and_version_checked(assets):
    glb = assets[1]
    with pytest.raises(ValueError, match="header gives its length as"):
        glb_animation_names(glb[:-4])
    with pytest.raises(ValueError, match="must be glTF version 2, got version 1"):
        glb_animation_names(glb[:4] + struct.pack("<I", 1) + glb[8:])


# --- in Chromium ---


@pytest.mark.parametrize("scheme", ["file", "http"])
def test_viewer_loads_without_fetching_anything(browser_page, page_file, http_root, scheme):
    page = browser_page
    url = page_file.as_uri() if scheme == "file" else f"{http_root}/{page_file.name}"
    requests: list[str] = []

    def record(request) -> None:
        requests.append(request.url)

    page.on("request", record)
    try:
        state = open_viewer(page, url)
    finally:
        page.remove_listener("request", record)
    assert state["splatCount"] == 4000 and state["clips"] == list(CLIPS) and state["clip"] == "walk", state
    assert not state["playing"] and state["time"] == 0, state
    fetched = [u for u in requests if u != url and not u.startswith(("data:", "blob:"))]
    assert fetched == [], fetched  # self-contained: only the page itself comes over the wire


def test_the_splat_loads_back_through_spark(browser_page, page_file, assets):
    """Spark decodes the page's .splat into the same count of Gaussians with the file's positions,
    colours and opacities, in order."""
    from avatar_ops.avatar.splat import read_splat

    open_viewer(browser_page, page_file.as_uri())
    decoded = browser_page.evaluate("() => window.viewerSplats(100000)")
    records = read_splat(assets[0])
    assert len(decoded) == len(records.positions) == 4000
    centers = np.array([d["center"] for d in decoded])
    # Spark packs centres as float16: under 2 m from the origin the spacing is 2**-10 m, so a
    # centre moves at most half of that, 0.49 mm; 2 mm leaves room and still tells splats apart.
    np.testing.assert_allclose(centers, records.positions, atol=2e-3, rtol=0)
    # Colours and opacity travel as bytes: exact up to one step of 1/255.
    np.testing.assert_allclose(np.array([d["color"] for d in decoded]), records.rgba[:, :3] / 255.0, atol=1.01 / 255, rtol=0)
    np.testing.assert_allclose(np.array([d["opacity"] for d in decoded]), records.rgba[:, 3] / 255.0, atol=1.01 / 255, rtol=0)


def test_splat_and_mesh_stand_upright_facing_the_camera(browser_page, page_file, tmp_path):
    page = browser_page
    open_viewer(page, page_file.as_uri())
    image = screenshot_array(page)
    save(image, tmp_path, "viewer_front.png")
    for name, region in zip(("splat", "mesh"), halves(image, canvas_box(page))):
        h, w = region.shape[:2]
        assert foreground(region[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3]).mean() > 0.1, f"{name}: nothing drawn in its middle"
        masks = colour_masks(region)
        counts = {colour: int(mask.sum()) for colour, mask in masks.items()}
        assert min(counts.values()) > 30, (name, counts)
        head, feet, left, right = (centroid(masks[c]) for c in ("red", "blue", "green", "magenta"))
        assert head[1] < feet[1] - h / 3, (name, "upside down or lying", head, feet)
        # Facing the camera, the subject's left (+x) is on the screen's right; from behind it would be on its left.
        assert left[0] > right[0] + w / 10, (name, "seen from behind or mirrored", left, right)


def test_dragging_orbits_the_view(browser_page, page_file, tmp_path):
    page = browser_page
    open_viewer(page, page_file.as_uri())
    before = screenshot_array(page)
    left, top, right, bottom = canvas_box(page)
    x, y = (left + right) // 2, (top + bottom) // 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 60, y + 10, steps=3)  # OrbitControls: a turn of 2 pi per canvas height, here about 70 degrees
    page.mouse.up()
    page.evaluate("viewerSettle()")
    after = screenshot_array(page)
    save(after, tmp_path, "viewer_orbited.png")
    changed = (np.abs(after.astype(int) - before.astype(int)).max(-1) > 24)[top:bottom].mean()
    assert changed > 0.05, f"only {changed:.1%} of the canvas changed after an orbit drag"


def test_set_time_poses_the_mesh_only(browser_page, page_file, tmp_path):
    page = browser_page
    open_viewer(page, page_file.as_uri())
    page.evaluate("viewerSetClip('wave')")
    duration = page.evaluate("viewerSetTime(0).then(() => viewerState.duration)")
    start = screenshot_array(page)
    page.evaluate(f"viewerSetTime({duration / 2})")
    state = page.evaluate("viewerState")
    assert state["clip"] == "wave" and abs(state["time"] - duration / 2) < 1e-3 and not state["playing"], state
    middle = screenshot_array(page)
    save(middle, tmp_path, "viewer_wave_middle.png")
    box = canvas_box(page)
    (splat_0, mesh_0), (splat_1, mesh_1) = halves(start, box), halves(middle, box)
    mesh_changed = (np.abs(mesh_1 - mesh_0).max(-1) > 24).mean()
    splat_changed = (np.abs(splat_1 - splat_0).max(-1) > 24).mean()
    assert mesh_changed > 0.005, f"the mesh half changed on {mesh_changed:.2%} of its pixels between 0 s and {duration / 2:.2f} s"
    assert splat_changed < 0.002, f"the splat half changed on {splat_changed:.2%} of its pixels; it does not animate"


def test_splat_alone(browser_page, assets, tmp_path):
    page = browser_page
    path = tmp_path / "viewer.html"
    path.write_bytes(viewer_html(assets[0], None, title="splat only"))
    page.goto(path.as_uri())
    state = wait_ready(page)
    assert state["splatCount"] == 4000 and state["clips"] == [] and state["clip"] is None, state
    assert "no animation clips" in page.evaluate("() => { try { viewerSetTime(1); } catch (error) { return error.message; } }")
    assert not page.locator("#viewer-clip-ui").is_visible()


def test_broken_glb_shows_its_error_on_the_page(browser_page, assets, tmp_path):
    page = browser_page
    splat, glb = assets
    html = viewer_html(splat, glb, title="broken").decode("utf-8")
    start = html.index('id="viewer-glb">') + len('id="viewer-glb">')
    end = html.index("</script>", start)
    broken = tmp_path / "viewer.html"
    chunk = b"{not json at all"
    bad_glb = b"glTF" + struct.pack("<II", 2, 20 + len(chunk)) + struct.pack("<I", len(chunk)) + b"JSON" + chunk
    broken.write_text(html[:start] + base64.b64encode(bad_glb).decode("ascii") + html[end:], encoding="utf-8")
    page.goto(broken.as_uri())
    page.wait_for_function("() => window.viewerState.error !== null", timeout=60_000)
    state = page.evaluate("viewerState")
    assert not state["ready"] and "avatar.glb" in state["error"], state
    shown = page.locator("#viewer-error")
    assert shown.is_visible() and state["error"] in shown.inner_text()
    page.evaluate("viewerSettle()")
    image = screenshot_array(page)
    save(image, tmp_path, "viewer_error.png")
    left, top, right, bottom = canvas_box(page)
    h, w = bottom - top, right - left
    middle = image[top + h // 3 : top + 2 * h // 3, left + w // 3 : left + 2 * w // 3].astype(int)
    assert foreground(middle).mean() > 0.1, "the splat, which did load, is not shown beside the glb's error"
