"""``viewer.html``: one self-contained page per avatar that shows its Gaussian splat and its
skinned glTF side by side, with orbit controls and a clip picker.

Self-contained: the page embeds ``avatar_canonical.splat`` and ``avatar.glb`` as base64 and inlines
its script, ``dist/viewer.js`` (three.js and Spark, pinned and bundled by ``js/build.mjs``; their
licences head the script and sit beside it in ``dist/LICENSES.txt``). It fetches nothing, so it
works opened from ``file://`` as well as served over HTTP, with no CDN.

The .splat is in OpenCV axes (y down, :mod:`avatar_ops.avatar.splat`); the page turns it half a
turn about x into three.js's y-up world. The glTF is y up already. Hooks for tests on ``window``:
``viewerState`` (``ready``, ``error``, ``splatCount``, ``clips``, ``clip``, ``time``, ``playing``),
``viewerSetClip(name)``, ``viewerSetTime(seconds)`` and ``viewerSettle()`` (see ``js/src/viewer.js``).
"""

from __future__ import annotations

import base64
import functools
import html
import json
import struct
from collections.abc import Sequence
from importlib import resources

SPLAT_RECORD_BYTES = 32
_GLB_HEADER = struct.Struct("<4sII")  # magic, version, total length
_GLB_CHUNK = struct.Struct("<I4s")  # chunk length, chunk type

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
html, body {{ margin: 0; height: 100%; overflow: hidden; background: #1d2027; color: #e8e8e8;
  font: 14px/1.4 system-ui, sans-serif; }}
body {{ display: flex; flex-direction: column; }}
#viewer-ui {{ padding: 6px 10px; background: #111318; display: flex; flex-wrap: wrap; align-items: baseline; gap: 4px 14px; }}
#viewer-ui h1 {{ font-size: 15px; margin: 0; }}
#viewer-canvas {{ display: block; flex: 1; min-height: 0; width: 100%; }}
#viewer-status {{ position: absolute; bottom: 8px; left: 8px; }}
#viewer-error {{ position: absolute; bottom: 24px; left: 10%; right: 10%; padding: 16px; background: #5c1d1d;
  border: 1px solid #d66; border-radius: 6px; white-space: pre-wrap; }}
</style>
</head>
<body>
<div id="viewer-ui">
<h1 id="viewer-title">{title}</h1>
<div id="viewer-legend"></div>
<label><input type="checkbox" id="show-splat" checked> splat</label>
<label id="show-mesh-label" hidden><input type="checkbox" id="show-mesh" checked> mesh</label>
<span id="viewer-clip-ui" hidden><label>clip <select id="viewer-clip"></select></label>
<button id="viewer-play" type="button">Pause</button> <span id="viewer-time"></span></span>
</div>
<canvas id="viewer-canvas"></canvas>
<div id="viewer-status">Loading the avatar viewer…</div>
<div id="viewer-error" hidden></div>
<noscript><div id="viewer-noscript">This viewer needs JavaScript and WebGL 2.</div></noscript>
<script type="application/json" id="viewer-meta">{meta}</script>
<script type="application/octet-stream" id="viewer-splat">{splat}</script>
{glb_element}<script>
{script}
</script>
</body>
</html>
"""


@functools.cache
def _viewer_js() -> str:
    """The bundled script, read once from the package."""
    script = resources.files(__package__).joinpath("dist", "viewer.js").read_text("utf-8")
    if "</script" in script.lower() or "<!--" in script:
        raise RuntimeError("dist/viewer.js holds `</script` or `<!--`, which would break the page; rebuild it with js/build.mjs.")
    return script


def glb_animation_names(glb: bytes) -> list[str]:
    """The names of a binary glTF's animations, in file order (unnamed ones as ``""``).

    Raises:
        ValueError: ``glb`` is not a binary glTF 2.0 file whose first chunk is its JSON.
    """
    if len(glb) < _GLB_HEADER.size + _GLB_CHUNK.size or glb[:4] != b"glTF":
        raise ValueError(f"`glb` must be a binary glTF file starting with b'glTF', got {len(glb)} bytes starting with {bytes(glb[:4])!r}.")
    _, version, length = _GLB_HEADER.unpack_from(glb)
    if version != 2:
        raise ValueError(f"`glb` must be glTF version 2, got version {version}.")
    if length != len(glb):
        raise ValueError(f"`glb`'s header gives its length as {length} bytes, but it has {len(glb)}.")
    json_length, chunk_type = _GLB_CHUNK.unpack_from(glb, _GLB_HEADER.size)
    start = _GLB_HEADER.size + _GLB_CHUNK.size
    if chunk_type != b"JSON" or start + json_length > len(glb):
        raise ValueError(f"`glb`'s first chunk must be JSON within the file, got type {chunk_type!r} of {json_length} bytes.")
    try:
        document = json.loads(glb[start : start + json_length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"`glb`'s JSON chunk must be UTF-8 JSON: {error}") from error
    return [str(animation.get("name", "")) for animation in document.get("animations", [])]


def _check_inputs(splat: bytes, glb: bytes | None, title: str, clips: Sequence[str]) -> None:
    if not isinstance(splat, (bytes, bytearray)):
        raise TypeError(f"`splat` must be bytes, got {type(splat).__name__}.")
    if len(splat) == 0 or len(splat) % SPLAT_RECORD_BYTES:
        raise ValueError(f"`splat` must be a non-empty whole number of {SPLAT_RECORD_BYTES}-byte .splat records, got {len(splat)} bytes.")
    if not isinstance(title, str):
        raise TypeError(f"`title` must be a str, got {type(title).__name__}.")
    if isinstance(clips, str) or not all(isinstance(name, str) for name in clips):
        raise TypeError(f"`clips` must be a sequence of clip names (str), got {clips!r}.")
    if glb is None:
        if clips:
            raise ValueError(f"`clips` must be empty without a `glb` to play them on, got {list(clips)}.")
        return
    if not isinstance(glb, (bytes, bytearray)):
        raise TypeError(f"`glb` must be bytes or None, got {type(glb).__name__}.")
    available = glb_animation_names(glb)
    missing = [name for name in clips if name not in available]
    if missing:
        raise ValueError(f"`clips` must name animations in `glb` ({available}), got {missing} that it does not hold.")


def _base64(data: bytes) -> str:
    """Base64 in 76-character lines, so editors and diff tools cope with the page."""
    return base64.encodebytes(bytes(data)).decode("ascii")


def viewer_html(splat: bytes, glb: bytes | None, title: str, clips: Sequence[str] = ()) -> bytes:
    """A self-contained viewer page for one avatar (see the module docstring).

    Args:
        splat: the avatar's ``avatar_canonical.splat`` (32-byte records, OpenCV axes).
        glb: its skinned ``avatar.glb`` (binary glTF 2.0, y up), or None to show the splat alone.
        title: the page's title, shown above the controls (plain text; escaped here).
        clips: the animations of ``glb`` the clip picker offers, the first playing on open; empty
            offers all of them in file order.

    Returns:
        The page as UTF-8 HTML.

    Raises:
        ValueError: ``splat`` is not whole records, ``glb`` is not a binary glTF 2.0, or ``clips``
            names an animation ``glb`` does not hold (or is given without ``glb``).
        TypeError: an argument has the wrong type.

    Example:
        >>> page = viewer_html(splat_bytes(avatar_splats(avatar, body, "canonical")), glb, "avatar 0001")
        >>> (avatar_dir / "viewer.html").write_bytes(page)
    """
    _check_inputs(splat, glb, title, clips)
    # `<` escaped as \\u003c: the JSON sits in a <script>, where `</script` or `<!--` would break out.
    meta = json.dumps({"title": title, "clips": list(clips)}, ensure_ascii=False).replace("<", "\\u003c")
    glb_element = "" if glb is None else f'<script type="application/octet-stream" id="viewer-glb">{_base64(glb)}</script>\n'
    page = _PAGE.format(
        title=html.escape(title), meta=meta, splat=_base64(splat), glb_element=glb_element, script=_viewer_js()
    )  # fmt: skip
    return page.encode("utf-8")
