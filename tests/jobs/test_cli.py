"""The command line: track, generate and animate on a real sample photo."""

from __future__ import annotations

import json

import pytest

from jobs.cli import build_parser, main


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("track", "generate", "animate"):
        assert command in out


def test_track_writes_parameters_and_overlay(samples_dir, tmp_path, capsys):
    photo = str(samples_dir / "man_hoodie_masked.png")
    assert main(["track", photo, "-o", str(tmp_path), "--device", "cpu"]) == 0
    record = json.loads((tmp_path / "man_hoodie_masked.json").read_text())
    assert record["status"] == "ok" and len(record["pose"]) == 55
    assert (tmp_path / "man_hoodie_masked_overlay.png").stat().st_size > 1000
    assert "man_hoodie_masked.png: ok" in capsys.readouterr().out
    assert main(["track", str(tmp_path / "missing.jpg"), "-o", str(tmp_path)]) == 1


def test_generate_then_animate(samples_dir, tmp_path, capsys):
    photo = str(samples_dir / "man_hoodie_masked.png")
    assert main(["generate", photo, "-o", str(tmp_path), "--fit-iters", "5", "--device", "cpu"]) == 0
    folder = tmp_path / "man_hoodie_masked"
    for name in ("avatar.safetensors", "avatar.json", "avatar.ply", "preview.png", "turntable.gif"):
        assert (folder / name).stat().st_size > 100, name
    meta = json.loads((folder / "avatar.json").read_text())
    assert meta["body_model"] == "anny" and meta["quality"]["fit_psnr"] > 15
    gif = tmp_path / "wave.gif"
    assert main(["animate", str(folder), "--motion", "wave", "-o", str(gif), "--max-frames", "4", "--size", "48", "--device", "cpu"]) == 0
    from PIL import Image

    assert Image.open(gif).n_frames == 4
    with pytest.raises(SystemExit, match="bundled clip"):
        main(["animate", str(folder), "--motion", "moonwalk", "-o", str(gif)])
