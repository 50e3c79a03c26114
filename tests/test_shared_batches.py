"""A list of images: the windows of several images share the model's forward passes (#18).

``occlens.explain(model, [images])`` streams the occluded copies of images of one shape through the
model together when the dense engine runs them exactly, so images with fewer windows than a batch
still fill whole batches. The maps must not change: each equals the image explained alone, by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import Recorder, TinyConvNet, hand_delta, random_image

import occlens
from occlens.core.fill import baseline


def shapes(recorder: Recorder) -> list[int]:
    return [len(b) for b in recorder.batches]


def test_images_of_one_shape_fill_whole_batches_and_keep_their_exact_maps():
    model = Recorder(TinyConvNet())
    images = [random_image(3, 12, 16, seed=s) for s in range(5)]  # 3 x 4 = 12 windows each
    targets = [None, 2, None, 4, None]
    results = occlens.explain(model, images, [1, None, 3, None, 0], patch=4, batch_size=8, target=targets)
    # five clean passes of one image; the windows of two images (24) are three whole batches of 8, twice,
    # and the last image's 12 windows go as 8 + 4
    occluded = [n for n in shapes(model) if n > 1]
    assert occluded == [8, 8, 8, 8, 8, 8, 8, 4]
    assert shapes(model).count(1) == 5
    for image, got, target in zip(images, results, targets, strict=True):
        fill = baseline(image, "gray", 0)
        want, loss, predicted = hand_delta(model.inner, image, (4, 4), (4, 4), fill, cls=target)
        np.testing.assert_allclose(got.delta, want, atol=1e-6, rtol=0)
        assert got.target == (predicted if target is None else target)
        assert (got.engine, got.batch_size) == ("dense", 8)
    for image, got in zip(images, results, strict=True):  # the true class's map, from the same passes
        if got.label is not None and got.label != got.target:
            fill = baseline(image, "gray", 0)
            want = hand_delta(model.inner, image, (4, 4), (4, 4), fill, cls=got.label)[0]
            np.testing.assert_allclose(got.label_map.delta, want, atol=1e-6, rtol=0)


def test_alone_each_image_runs_its_own_batches():
    model = Recorder(TinyConvNet())
    occlens.explain(model, random_image(3, 12, 16), patch=4, batch_size=8)
    assert shapes(model) == [1, 8, 4]


def test_a_change_of_shape_ends_the_sharing_and_every_map_stays_exact():
    model = Recorder(TinyConvNet())
    images = [random_image(3, 12, 16, seed=0), random_image(3, 8, 8, seed=1), random_image(3, 12, 16, seed=2)]
    results = occlens.explain(model, images, patch=4, batch_size=16, engine="dense")
    # 12, then 4, then 12 windows: no two neighbours share a shape, so nothing is shared
    assert [n for n in shapes(model) if n > 1] == [12, 4, 12]
    for image, got in zip(images, results, strict=True):
        want = hand_delta(model.inner, image, (4, 4), (4, 4), baseline(image, "gray", 0))[0]
        np.testing.assert_allclose(got.delta, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("fill", ["mean", "noise", "blur"])
def test_each_image_keeps_its_own_fill(fill):
    """The fill image depends on the image (its mean, its blur): the shared batch takes each copy's own."""
    model = Recorder(TinyConvNet())
    images = [random_image(3, 8, 12, seed=s) for s in range(3)]
    shared = occlens.explain(model, images, patch=4, batch_size=12, fill=fill)
    assert [n for n in shapes(model) if n > 1] == [12, 6]  # 6 windows each: two images per batch, then one
    for image, got in zip(images, shared, strict=True):
        alone = occlens.explain(model.inner, image, patch=4, fill=fill)
        np.testing.assert_allclose(got.delta, alone.delta, atol=1e-6, rtol=0)


def test_every_class_map_is_the_same_shared_or_alone():
    model = TinyConvNet()
    images = [random_image(3, 8, 12, seed=s) for s in range(4)]
    shared = occlens.explain(model, images, patch=4, batch_size=12, all_classes=True)
    for image, got in zip(images, shared, strict=True):
        alone = occlens.explain(model, image, patch=4, batch_size=12, all_classes=True)
        np.testing.assert_allclose(got.all_delta, alone.all_delta, atol=1e-6, rtol=0)
        np.testing.assert_array_equal(got.flip_map, alone.flip_map)


def test_approximate_modes_run_each_image_alone():
    """The drill-down picks each image's next windows from its own map: its passes are not shared."""
    model = Recorder(TinyConvNet())
    images = [random_image(3, 16, 16, seed=s) for s in range(2)]
    shared = occlens.explain(model, images, patch=2, stride=2, batch_size=256, fast=True)
    for image, got in zip(images, shared, strict=True):
        alone = occlens.explain(model.inner, image, patch=2, stride=2, batch_size=256, fast=True)
        np.testing.assert_array_equal(got.delta, alone.delta)
        assert got.engine.startswith("drilldown+")
    scored = sum(r.meta["drilldown"]["scored"] for r in shared)
    assert sum(n for n in shapes(model) if n > 1) == scored  # no window of one image in another's batch


def test_progress_counts_the_windows_of_all_images():
    seen: list[tuple[int, int]] = []
    images = [random_image(3, 12, 16, seed=s) for s in range(3)]
    occlens.explain(TinyConvNet(), images, patch=4, batch_size=8, progress=lambda d, t: seen.append((d, t)))
    done = [d for d, _ in seen]
    assert done == sorted(done) and seen[-1] == (36, 36)


class Poisoned(torch.nn.Module):
    """Scores NaN for the occluded copies of the image marked by 0.75 in its top-left pixel (the window
    over that pixel overwrites the mark): a model failing on one image of a shared batch."""

    def __init__(self):
        super().__init__()
        self.inner = TinyConvNet()
        self.eval()

    def forward(self, x):
        out = self.inner(x)
        marked = (x[:, 0, 0, 0] == 0.75) & (x == 0.5).flatten(1).any(dim=1)
        return torch.where(marked[:, None], torch.full_like(out, float("nan")), out)


def test_a_failure_in_a_shared_batch_names_the_image_and_its_windows():
    images = [random_image(3, 8, 8, seed=s) for s in range(3)]
    images[1][0, 0, 0] = 0.75
    with pytest.raises(occlens.ModelError) as caught:
        occlens.explain(Poisoned(), images, patch=4, batch_size=12, fill=0.5)
    message = str(caught.value)
    assert "window(s) [1, 2, 3] of image(s) [1]" in message and "\n" not in message
    # after a change of shape a new group begins: the message still counts images in the caller's list
    later = [random_image(3, 12, 12, seed=9), images[0], random_image(3, 8, 8, seed=7), images[1]]
    with pytest.raises(occlens.ModelError, match=r"window\(s\) \[1, 2, 3\] of image\(s\) \[3\]"):
        occlens.explain(Poisoned(), later, patch=4, batch_size=12, fill=0.5)
    with pytest.raises(occlens.ModelError) as alone:  # one image: no image number to give
        occlens.explain(Poisoned(), images[1], patch=4, batch_size=12, fill=0.5)
    assert "window(s) [1, 2, 3]:" in str(alone.value)
