"""Keypoints JSON from users: the accepted formats parse, every malformed field is a ValueError
with a clear message, and a seeded fuzz of hostile JSON never gets another exception."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from avatar_ops.body.base import NUM_KEYPOINTS
from avatar_ops.tracking.keypoints import BODY25_INDEX, COCO17_INDEX, parse_keypoints_json

MAX_KEYPOINTS_JSON_BYTES = 2**20  # avatar_ops.tracking.keypoints.MAX_KEYPOINTS_JSON_BYTES

COCO = [v for k in range(17) for v in (10.0 * k, 5.0 * k, 2)]
BODY25 = [v for k in range(25) for v in (3.0 * k, 4.0 * k, 0.9)]


def test_accepted_formats_parse():
    coco = parse_keypoints_json(json.dumps({"keypoints": COCO}))
    assert len(coco) == 1 and coco[0].shape == (NUM_KEYPOINTS, 3) and coco[0].dtype == np.float32
    assert coco[0][COCO17_INDEX.index(3)].tolist() == [30.0, 15.0, 1.0]  # visibility flag 2 -> 1
    triples = [COCO[i : i + 3] for i in range(0, 51, 3)]
    for text in (json.dumps(triples), json.dumps([{"keypoints": COCO}]), json.dumps({"keypoints": triples}).encode()):
        np.testing.assert_array_equal(parse_keypoints_json(text)[0], coco[0])
    two = parse_keypoints_json(json.dumps({"people": [{"pose_keypoints_2d": BODY25}, {"pose_keypoints_2d": BODY25}]}))
    assert len(two) == 2
    assert two[0][0].tolist() == pytest.approx([3.0 * BODY25_INDEX[0], 4.0 * BODY25_INDEX[0], 0.9])
    assert parse_keypoints_json('{"people": []}') == []


MALFORMED = {
    "a person that is a number": ('{"people": [1]}', r"OpenPose `people\[0\]` must be an object with `pose_keypoints_2d`, got int"),
    "people not a list": ('{"people": {"a": 1}}', r"OpenPose `people` must be a list of people, got dict"),
    "OpenPose of 74 numbers": (
        json.dumps({"people": [{"pose_keypoints_2d": BODY25[:-1]}]}),
        r"must hold 25\*3=75 numbers \(BODY_25\), got 74",
    ),
    "OpenPose NaN": (
        json.dumps({"people": [{"pose_keypoints_2d": [float("nan"), *BODY25[1:]]}]}),
        r"`people\[0\]\.pose_keypoints_2d` must hold finite numbers, got NaN or infinity",
    ),
    "COCO NaN": (
        '{"keypoints": [NaN' + ", 1" * 50 + "]}",
        r"COCO `keypoints` of annotation 0 must hold finite numbers, got NaN or infinity",
    ),
    "COCO Infinity": ('{"keypoints": [-Infinity' + ", 1" * 50 + "]}", r"must hold finite numbers, got NaN or infinity"),
    "COCO 1e999": ('{"keypoints": [1e999' + ", 1" * 50 + "]}", r"must hold finite numbers, got NaN or infinity"),
    "an integer beyond float range": (
        '{"keypoints": [1' + "0" * 400 + ", 1" * 50 + "]}",
        r"must hold finite numbers, got an integer too large for a float",
    ),
    "a coordinate of 1e30": (json.dumps({"keypoints": [1e30, *COCO[1:]]}), r"coordinates must be within \+-1e\+06 pixels, got 1e\+30"),
    "a negative confidence": (
        json.dumps({"people": [{"pose_keypoints_2d": [*BODY25[:2], -1, *BODY25[3:]]}]}),
        r"confidences must be in \[0, 1\], got -1 to 0\.9",
    ),
    "COCO of 3 numbers": ('{"keypoints": [1, 2, 3]}', r"COCO `keypoints` of annotation 0 must hold 17\*3=51 numbers, got 3"),
    "COCO of 52 numbers": (json.dumps([*COCO, 1]), r"COCO keypoints must hold 17\*3=51 numbers, got 52"),
    "COCO pairs": (json.dumps([[1, 2]] * 17), r"COCO keypoints must be \[x, y, v\] triples, got lengths \[2\]"),
    "COCO strings": (json.dumps({"keypoints": ["1"] * 51}), r"must hold 17\*3=51 numbers, got a str: '1'"),
    "COCO booleans": (json.dumps({"keypoints": [True] * 51}), r"must hold 17\*3=51 numbers, got a bool"),
    "COCO nested objects": (json.dumps({"keypoints": [{}] * 51}), r"must hold 17\*3=51 numbers, got a dict"),
    "COCO keypoints null": ('{"keypoints": null}', r"must be a list of 17\*3=51 numbers, got NoneType"),
    "a second annotation that is a number": (
        json.dumps([{"keypoints": COCO}, 5]),
        r"COCO annotation 1 must be an object with `keypoints`, got int",
    ),
    "deeply nested": ("[" * 100_000 + "]" * 100_000, r"keypoints JSON is nested too deeply"),
    "a 5,000-digit integer": ('{"keypoints": [' + "9" * 5000 + "]}", r"keypoints are not valid JSON: Exceeds the limit \(4300 digits\)"),
    "top level a number": ("5", r"keypoints JSON must be an object or a list, got int"),
    "top level a string": ('"keypoints"', r"keypoints JSON must be an object or a list, got str"),
    "top level null": ("null", r"keypoints JSON must be an object or a list, got NoneType"),
    "not JSON": ("{'keypoints': []}", r"keypoints are not valid JSON: Expecting property name"),
    "undecodable bytes": (b"\xff\xfe{", r"keypoints are not valid JSON"),
    "over the size limit": (
        " " * (MAX_KEYPOINTS_JSON_BYTES + 1) + "[]",
        rf"keypoints JSON must be at most {MAX_KEYPOINTS_JSON_BYTES} bytes",
    ),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_keypoints_are_clear_value_errors(name):
    text, message = MALFORMED[name]
    with pytest.raises(ValueError, match=message):
        parse_keypoints_json(text)


def _random_json(rng: random.Random, depth: int = 0):
    kind = rng.choice(["number", "number", "list", "dict", "str", "special"] if depth < 4 else ["number", "str", "special"])
    if kind == "number":
        return rng.choice([rng.uniform(-1e3, 1e3), rng.randint(-5, 5), 0, 2, float("nan"), float("inf"), 10 ** rng.randint(10, 400), 1e308])
    if kind == "special":
        return rng.choice([None, True, False, [], {}])
    if kind == "str":
        return rng.choice(["", "x", "keypoints", "people", "NaN"])
    if kind == "list":
        size = rng.choice([0, 1, 3, 17, 25, 51, 75, rng.randint(0, 80)])
        return [_random_json(rng, depth + 1) for _ in range(size)]
    keys = rng.sample(["people", "keypoints", "pose_keypoints_2d", "x"], rng.randint(0, 3))
    return {k: _random_json(rng, depth + 1) for k in keys}


def _near_valid(rng: random.Random):
    """A valid document with one value or length changed."""
    values = list(rng.choice([COCO, BODY25]))
    i = rng.randrange(len(values))
    change = rng.choice(["value", "drop", "add", "triples"])
    if change == "value":
        values[i] = _random_json(rng, 4)
    elif change == "drop":
        del values[i]
    elif change == "add":
        values.insert(i, rng.uniform(0, 100))
    if len(values) in (74, 75, 76) and rng.random() < 0.8:
        return {"people": [{"pose_keypoints_2d": values}]}
    if change == "triples":
        return [values[j : j + 3] for j in range(0, len(values), 3)]
    return rng.choice([{"keypoints": values}, [{"keypoints": values}], values])


def test_fuzz_keypoints_json_returns_people_or_a_value_error():
    rng = random.Random(18)
    outcomes = {"parsed": 0, "refused": 0}
    for n in range(400):
        document = _near_valid(rng) if n % 2 else _random_json(rng)
        text = json.dumps(document)  # NaN and Infinity as JSON's common extension
        if n % 7 == 0:  # and some broken text
            cut = rng.randrange(len(text) + 1)
            text = text[:cut] + rng.choice(["", "]", "}", "{", ",", "9" * 5000, "[" * 5000]) + text[cut:]
        try:
            people = parse_keypoints_json(text)
        except ValueError:
            outcomes["refused"] += 1
            continue
        except Exception as err:  # noqa: BLE001 - the assertion reports it
            pytest.fail(f"document {n} raised {type(err).__name__}: {err}\n{text[:300]}")
        outcomes["parsed"] += 1
        for kp in people:
            assert kp.shape == (NUM_KEYPOINTS, 3) and np.isfinite(kp).all()
    assert outcomes["parsed"] > 10 and outcomes["refused"] > 100, outcomes
