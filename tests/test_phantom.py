"""A phantom with a lesion, made here, and a small 3-D CNN trained on such phantoms in seconds: the map's most
negative windows cover the lesion (issue #32), with every exact engine, and ``fast`` finds the same window."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import occlens

SIDE = 16
RADIUS = 2.5  # voxels


def phantom(rng: np.random.Generator, centre: np.ndarray | None) -> torch.Tensor:
    """1 x SIDE³ in [0, 1]: an ellipsoid body (0.4) with noise, and a bright ball (+0.4) at ``centre`` (voxels)."""
    d, h, w = np.indices((SIDE,) * 3, dtype=np.float64)
    c = (SIDE - 1) / 2
    body = ((d - c) / 7) ** 2 + ((h - c) / 6.5) ** 2 + ((w - c) / 6) ** 2 <= 1.0
    x = np.where(body, 0.4, 0.05) + rng.normal(0, 0.04, size=body.shape)
    if centre is not None:
        x = x + 0.4 * (((d - centre[0]) ** 2 + (h - centre[1]) ** 2 + (w - centre[2]) ** 2) <= RADIUS**2)
    return torch.from_numpy(np.clip(x, 0, 1)).float()[None]


def random_centre(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(4.5, SIDE - 5.5, size=3)


@pytest.fixture(scope="module")
def trained():
    """A small 3-D CNN trained on fresh phantoms, half with a lesion somewhere inside the body (class 1)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2),
            nn.Conv3d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool3d(1), nn.Flatten(), nn.Linear(16, 2),
        )  # fmt: skip
        rng = np.random.default_rng(0)
        opt = torch.optim.Adam(model.parameters(), lr=5e-3)
        for _ in range(60):
            labels = torch.arange(16) % 2
            x = torch.stack([phantom(rng, random_centre(rng) if k else None) for k in labels])
            loss = nn.functional.cross_entropy(model(x), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        labels = torch.arange(32) % 2
        x = torch.stack([phantom(rng, random_centre(rng) if k else None) for k in labels])
        accuracy = float((model(x).argmax(1) == labels).float().mean())
    assert accuracy >= 0.9, f"the phantom CNN did not learn the lesion (accuracy {accuracy:.2f})"
    return model


@pytest.mark.parametrize("engine", ["dense", "incremental"])
def test_the_most_negative_windows_of_a_trained_phantom_cnn_cover_the_lesion(trained, engine):
    rng = np.random.default_rng(7)
    for _ in range(3):
        centre = random_centre(rng)
        scan = occlens.Volume(phantom(rng, centre))
        result = occlens.explain(trained, scan, patch=4, stride=2, engine=engine)
        assert result.predicted == 1 and result.engine == engine  # it sees the lesion
        lesion = np.zeros((SIDE,) * 3, bool)
        d, h, w = np.indices(lesion.shape)
        lesion[((d - centre[0]) ** 2 + (h - centre[1]) ** 2 + (w - centre[2]) ** 2) <= RADIUS**2] = True
        # the most negative window overlaps the lesion; the voxel map's minimum lies in it
        p0, p1, r0, r1, c0, c1 = result.grid.window(int(np.argmin(result.delta)))
        assert lesion[p0:p1, r0:r1, c0:c1].any()
        assert lesion.ravel()[np.argmin(result.pixel_map)]
        # the lesion's voxels carry more negative δL than the rest by far
        assert result.pixel_map[lesion].mean() < 5 * min(result.pixel_map[~lesion].mean(), -1e-6)


def test_fast_finds_the_lesion_too(trained):
    rng = np.random.default_rng(11)
    centre = random_centre(rng)
    scan = occlens.Volume(phantom(rng, centre))
    exact = occlens.explain(trained, scan, patch=4, stride=2)
    fast = occlens.explain(trained, scan, patch=4, stride=2, fast=True)
    assert fast.meta["drilldown"]["scored"] < exact.grid.size
    assert np.argmin(fast.delta) == np.argmin(exact.delta)
