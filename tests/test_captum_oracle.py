"""DESIGN.md §1 oracle: ``pixel_map == -captum.attr.Occlusion(log_softmax ∘ f)`` on random geometries, every fill."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from captum.attr import Occlusion
from conftest import TinyConvNet, random_image

import occlens
from occlens.core.fill import baseline, check_fill

FILLS = ["gray", "mean", "black", "blur", "noise", 0.3, "per-channel"]
N_CASES = 28  # every fill four times


def make_case(i: int) -> dict:
    rng = random.Random(1000 + i)
    fill = FILLS[i % len(FILLS)]
    channels = rng.choice([2, 3, 4] if fill == "per-channel" else [1, 3, 3, 4])
    if fill == "per-channel":
        fill = tuple(round(rng.random(), 3) for _ in range(channels))
    height, width = rng.randint(5, 16), rng.randint(5, 16)
    while height == width:
        width = rng.randint(5, 16)
    ph, pw = rng.randint(1, height), rng.randint(1, width)
    while ph == pw:  # rectangular windows
        pw = rng.randint(1, width)
    sh, sw = rng.randint(1, ph), rng.randint(1, pw)
    return {
        "channels": channels,
        "height": height,
        "width": width,
        "patch": (ph, pw),
        "stride": (sh, sw),
        "fill": fill,
        "seed": rng.randint(0, 10_000),
        "batch_size": rng.choice([1, 2, 5, None]),
        "ppe": rng.choice([1, 3, 8]),
    }


CASES = [make_case(i) for i in range(N_CASES)]


def case_id(case: dict) -> str:
    return (
        f"c{case['channels']}-{case['height']}x{case['width']}-p{case['patch'][0]}x{case['patch'][1]}"
        f"-s{case['stride'][0]}x{case['stride'][1]}-{case['fill']}"
    )


def test_cases_cover_what_the_oracle_must_cover():
    fills = {c["fill"] if isinstance(c["fill"], str) else type(c["fill"]).__name__ for c in CASES}
    assert fills == {"gray", "mean", "black", "blur", "noise", "float", "tuple"}
    assert len(CASES) >= 20
    assert all(c["height"] != c["width"] for c in CASES)
    assert all(c["patch"][0] != c["patch"][1] for c in CASES)
    clipped = [
        c
        for c in CASES
        if (c["height"] - c["patch"][0]) % c["stride"][0] or (c["width"] - c["patch"][1]) % c["stride"][1]
    ]
    assert len(clipped) >= 10  # strides that leave clipped edge windows
    assert all(len(c["fill"]) == c["channels"] for c in CASES if isinstance(c["fill"], tuple))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_pixel_map_is_minus_captum_occlusion(case):
    model = TinyConvNet(channels=case["channels"], classes=4, seed=case["seed"], dtype=torch.float64)
    image = random_image(case["channels"], case["height"], case["width"], seed=case["seed"] + 1)
    result = occlens.explain(
        model,
        image,
        patch=case["patch"],
        stride=case["stride"],
        fill=case["fill"],
        seed=case["seed"],
        batch_size=case["batch_size"],
    )
    fill_image = baseline(image, check_fill(case["fill"]), case["seed"])
    x = image.double()[None]
    with torch.no_grad():
        q = int(model(x).argmax(dim=1))
    attribution = Occlusion(lambda z: torch.log_softmax(model(z), dim=1)).attribute(
        x,
        target=q,
        sliding_window_shapes=(case["channels"], *case["patch"]),
        strides=(case["channels"], *case["stride"]),
        baselines=fill_image.double()[None],
        perturbations_per_eval=case["ppe"],
    )
    expected = -attribution[0].detach().numpy()  # C x H x W, equal over channels (the window spans them all)
    assert result.predicted == q and result.target == q
    assert result.pixel_map.shape == (case["height"], case["width"])
    for c in range(case["channels"]):
        np.testing.assert_allclose(result.pixel_map, expected[c], rtol=0, atol=1e-7)
    assert np.abs(result.delta).max() > 1e-4  # the comparison is not 0 == 0
