"""The stage layer: per-item isolation, pass-through of finished items, preset groups, the chain,
and payload bytes that round-trip exactly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from avatar_ops.io.image import DecodedImage
from avatar_ops.stages.codec import payload_from_bytes, payload_to_bytes
from avatar_ops.stages.config import PipelineConfig
from avatar_ops.stages.payload import Payload
from avatar_ops.stages.stage import Stage, chain
from tests.synthetic_people import painted, photograph

CONFIG = PipelineConfig.model_validate({"num_gaussians": 600, "fit": {"iters": 2, "resolution": 48}})


@pytest.fixture(scope="module")
def shot(anny_body):
    colours, _ = painted(anny_body)
    return photograph(anny_body, colours, size=160)


def _tracked(shot, **fields) -> Payload:
    return Payload("synthetic", image=DecodedImage(rgb=shot.rgb, alpha=None, format="png", mode="RGB"), track=shot.track, **fields)


def test_the_item_that_raises_fails_alone(anny_body, shot):
    stage = Stage("reconstruct", CONFIG, anny_body)
    broken = _tracked(shot)
    broken.image = DecodedImage(rgb=shot.rgb[:100], alpha=None, format="png", mode="RGB")  # not the tracked photo's size
    done = Payload("finished earlier", status="rejected", reason="no_person", detail="nobody")
    items = [_tracked(shot), broken, done, _tracked(shot)]
    assert stage.run(items) is items
    good = [items[0], items[3]]
    assert all(p.status == "pending" and p.reconstruction is not None for p in good)
    assert all(p.seconds["reconstruct"] > 0 for p in good)
    assert (broken.status, broken.reason) == ("failed", "exception")
    assert broken.detail.startswith("reconstruct: ValueError: `rgb` must be the tracked photo")
    assert broken.image is None and broken.track is None  # a finished payload carries no state
    assert (done.status, done.reason, done.seconds) == ("rejected", "no_person", {})  # passed through untouched
    # The same items one by one give what the batch gave.
    alone = stage.run([_tracked(shot)])[0]
    torch.testing.assert_close(alone.reconstruction.avatar.color, items[0].reconstruction.avatar.color)


def test_items_of_another_preset_get_that_presets_operator(anny_body, shot):
    config = PipelineConfig.model_validate({"fit": {"iters": 2, "resolution": 48}})  # Gaussians from the preset
    stage = Stage("reconstruct", config, anny_body)
    preview, standard = _tracked(shot), _tracked(shot, preset="standard")
    stage.run([preview, standard])
    counts = {p.preset: len(p.reconstruction.avatar.face) for p in (preview, standard)}
    assert counts[None] < counts["standard"], counts
    assert stage.operator("standard").config.num_gaussians == counts["standard"]


def test_the_chain_and_which_items_a_stage_takes(anny_body):
    assert chain(CONFIG) == ("track", "reconstruct", "fit", "export")
    assert chain(CONFIG.model_copy(update={"synthesis_mode": "view"})) == ("track", "reconstruct", "synthesize", "fit", "export")
    synthesize = Stage("synthesize", CONFIG, anny_body)
    assert not synthesize.applies(Payload("a"))  # the config's mode: none
    assert synthesize.applies(Payload("a", synthesis_mode="pose"))
    assert not synthesize.applies(Payload("a", synthesis_mode="pose", status="failed"))
    with pytest.raises(ValueError, match="`kind` must be one of .* got 'decode'"):
        Stage("decode", CONFIG, anny_body)


def test_payload_bytes_round_trip_exactly(anny_body, shot):
    payload = _tracked(shot, id="abc", out_dir="memory://out", preset="standard", synthesis_mode="view", keypoints=[shot.track.keypoints])
    # A hand the detector saw (its landmarks a small fan at the photo's centre): the pixels no Gaussian reads travel too.
    fan = np.stack([80 + 10 * np.cos(np.linspace(0, 3, 21)), 80 + 10 * np.sin(np.linspace(0, 3, 21)), np.ones(21)], 1).astype(np.float32)
    payload.track = dataclasses.replace(shot.track, hands={"left": {"tracked": False, "keypoints": fan}})
    payload.image = DecodedImage(rgb=shot.rgb, alpha=np.full(shot.rgb.shape[:2], 200, np.uint8), format="png", mode="RGBA", scale=0.5, notes=("EXIF orientation not applied",))
    Stage("reconstruct", CONFIG, anny_body).run([payload])
    payload.avatar = payload.reconstruction.avatar
    payload.quality, payload.seconds = {"track_mask_iou": 0.9}, {"decode": 0.01}
    back = payload_from_bytes(payload_to_bytes(payload))
    for field in ("source", "id", "out_dir", "preset", "synthesis_mode", "status", "quality", "seconds"):
        assert getattr(back, field) == getattr(payload, field), field
    np.testing.assert_array_equal(back.keypoints[0], payload.keypoints[0])
    np.testing.assert_array_equal(back.image.rgb, payload.image.rgb)
    np.testing.assert_array_equal(back.image.alpha, payload.image.alpha)
    assert (back.image.format, back.image.mode, back.image.scale, back.image.notes) == ("png", "RGBA", 0.5, ("EXIF orientation not applied",))
    assert back.track.to_json() == payload.track.to_json()
    np.testing.assert_array_equal(back.track.mask, payload.track.mask)
    assert payload.reconstruction.unread is not None and payload.reconstruction.unread.any()
    for name in ("neighbours", "seen", "mask", "placed", "unread"):
        torch.testing.assert_close(getattr(back.reconstruction, name), getattr(payload.reconstruction, name), atol=0, rtol=0)
    for avatar, original in ((back.reconstruction.avatar, payload.reconstruction.avatar), (back.avatar, payload.avatar)):
        for f in dataclasses.fields(original):
            a, b = getattr(avatar, f.name), getattr(original, f.name)
            if isinstance(b, torch.Tensor):
                torch.testing.assert_close(a, b, atol=0, rtol=0)
            else:
                assert a == b, f.name
    # Finished: nothing but the outcome travels.
    payload.update({"status": "rejected", "reason": "fit_failed", "detail": "x"})
    small = payload_to_bytes(payload)
    assert len(small) < 4096 and payload_from_bytes(small).reconstruction is None
