"""The command line: track, generate and animate on a real sample photo."""

from __future__ import annotations

import json

import numpy as np
import pytest

from avatar_forge.cli import build_parser, main


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("track", "generate", "animate", "batch", "submit", "serve"):
        assert command in out


def test_track_writes_parameters_and_overlay(samples_dir, tmp_path, capsys):
    from tests.inputs import broken_exif_photo

    photo = str(samples_dir / "man_hoodie_masked.png")
    exif = tmp_path / "broken_exif.jpg"  # its EXIF made Pillow raise struct.error: a traceback, once
    exif.write_bytes(broken_exif_photo("JPEG"))
    assert main(["track", photo, str(exif), "-o", str(tmp_path), "--device", "cpu"]) == 0
    record = json.loads((tmp_path / "man_hoodie_masked.json").read_text())
    assert record["status"] == "ok" and len(record["pose"]) == 55
    assert (tmp_path / "man_hoodie_masked_overlay.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "man_hoodie_masked.png: ok" in printed and "broken_exif.jpg: REJECTED no_person" in printed  # a gradient, decoded
    assert main(["track", str(tmp_path / "missing.jpg"), "-o", str(tmp_path)]) == 1


def test_generate_then_animate(samples_dir, tmp_path, capsys):
    photo = str(samples_dir / "man_hoodie_masked.png")
    # A user's own clip goes into avatar.glb beside the bundled ones, named after its file.
    clip = tmp_path / "arms_up.npz"
    poses = np.zeros((5, 66), np.float32)
    poses[:, 3 * 16 + 2] = np.linspace(0, -1.2, 5)  # raise the left arm
    np.savez(clip, poses=poses, mocap_framerate=np.array(25.0))
    assert main(["generate", photo, "-o", str(tmp_path), "--fit-iters", "5", "--device", "cpu", "--clip", str(clip)]) == 0
    folder = tmp_path / "man_hoodie_masked"
    for name in ("avatar.safetensors", "avatar.json", "avatar.ply", "preview.png", "turntable.gif", "avatar.glb", "viewer.html"):
        assert (folder / name).stat().st_size > 100, name
    from pygltflib import GLTF2

    assert [a.name for a in GLTF2.load(str(folder / "avatar.glb")).animations] == ["walk", "wave", "arms_up"]
    capsys.readouterr()
    assert main(["generate", photo, "-o", str(tmp_path / "no"), "--clip", str(tmp_path / "missing.npz")]) == 2
    assert "--clip" in capsys.readouterr().err and not (tmp_path / "no").exists()  # refused before any fit
    meta = json.loads((folder / "avatar.json").read_text())
    assert meta["body_model"] == "anny" and meta["quality"]["fit_psnr"] > 15
    gif = tmp_path / "wave.gif"
    assert main(["animate", str(folder), "--motion", "wave", "-o", str(gif), "--max-frames", "4", "--size", "48", "--device", "cpu"]) == 0
    from PIL import Image

    assert Image.open(gif).n_frames == 4
    with pytest.raises(SystemExit, match="bundled clip"):
        main(["animate", str(folder), "--motion", "moonwalk", "-o", str(gif)])


def test_serve_config_files_build_the_app(monkeypatch):
    """The production config (embedded by the RayService) and the local one both validate and
    build the application with their per-deployment options."""
    from serve.app import build_application
    from serve.local import DEFAULT_CONFIG, REPO_CONFIG, load_serve_file

    monkeypatch.setenv("AVATAR_API_KEYS", "k1, k2")
    for path in (REPO_CONFIG, DEFAULT_CONFIG):
        config = load_serve_file(path)
        assert config.settings.all_api_keys() == ("k1", "k2")
        assert set(config.deployments) == {"AvatarAPI", "track", "reconstruct", "synthesize", "fit", "export"}
        build_application(config.settings, config.deployments)
    assert load_serve_file(REPO_CONFIG).deployments["fit"]["ray_actor_options"]["num_gpus"] == 1


def test_serve_refuses_to_start_open_without_keys(monkeypatch, capsys):
    monkeypatch.delenv("AVATAR_API_KEYS", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["serve"])
    assert "AVATAR_API_KEYS" in str(exit_info.value) and "auth: disabled" in str(exit_info.value)


@pytest.mark.slow  # the nightly run (`make test-all`); ~90 s
def test_serve_command_runs_until_sigterm_and_cleans_up(tmp_path):
    """`avatar-forge serve` on an embedded Ray answers HTTP, and SIGTERM stops it: exit 0, the
    port closed, no process of it left."""
    import signal
    import subprocess
    import sys

    import psutil
    import requests
    import yaml

    from serve.local import DEFAULT_CONFIG
    from tests.net import free_port, wait_ready

    port = free_port()
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["applications"][0]["args"].update(storage=str(tmp_path / "store"), pipeline={"preset": "preview", "num_gaussians": 800})
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "avatar_forge.cli", "serve", "--config", str(path), "--port", str(port), "--no-auth", "--num-cpus", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_ready(f"{base}/readyz", 300, proc):
            pytest.fail(f"`serve` did not become ready (exit code {proc.poll()})")
        # --no-auth: no key needed; an unknown avatar is a 404, not a 401.
        assert requests.get(f"{base}/v1/avatars/{'0' * 20}", timeout=30).status_code == 404
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "the embedded Ray runs as child processes"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out[-3000:]
    assert "serving 'avatar' at" in out and "stopping" in out
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{base}/healthz", timeout=10)
    gone, alive = psutil.wait_procs(children, timeout=60)
    assert not alive, [p.info if hasattr(p, "info") else p.pid for p in alive]


@pytest.mark.slow  # the nightly run (`make test-all`); ~90 s
def test_synthesize_writes_frames_and_generate_uses_them(samples_dir, tmp_path, capsys):
    from avatar_ops.synthesis.tiny_svd import make_tiny_svd

    model = make_tiny_svd(tmp_path / "svd")
    photo = str(samples_dir / "man_hoodie_masked.png")
    out = tmp_path / "syn"
    args = ["--synthesis-model", str(model), "--device", "cpu", "--view-frames", "2", "--pose-frames", "3", "--synthesis-size", "32"]
    assert main(["synthesize", photo, "-o", str(out), *args]) == 0
    meta = json.loads((out / "man_hoodie_masked" / "frames.json").read_text())
    assert meta["refined"] is True and [f["mode"] for f in meta["frames"]] == ["view"] * 2 + ["pose"] * 3
    for record in meta["frames"]:
        assert (out / "man_hoodie_masked" / record["frame"]).is_file() and (out / "man_hoodie_masked" / record["hint"]).is_file()
        assert len(record["pose"]) == 55 and len(record["viewmat"]) == 4
    assert "5 frames (view 2, pose 3), refined=True" in capsys.readouterr().out
    # Without weights: the hints pass through, and the record says so.
    assert main(["synthesize", photo, "-o", str(tmp_path / "plain"), "--synthesis-mode", "view", "--view-frames", "2", "--synthesis-size", "32", "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "plain" / "man_hoodie_masked" / "frames.json").read_text())["refined"] is False
    # generate with synthesis: the fit sees the pseudo-labels.
    gen = tmp_path / "gen"
    assert main(["generate", photo, "-o", str(gen), "--fit-iters", "2", *args]) == 0
    quality = json.loads((gen / "man_hoodie_masked" / "avatar.json").read_text())["quality"]
    assert quality["synthesis_refined"] == 1.0 and quality["fit_pseudo_labels"] == 5.0
    with pytest.raises(SystemExit, match="no model_index.json"):
        main(["synthesize", photo, "-o", str(tmp_path / "x"), "--synthesis-model", str(tmp_path)])
