"""Deletion/insertion curves with areas known in closed form, Spearman correlation, the randomisation check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import H, RegionLinear, W, assert_one_line_naming, random_image
from torch import nn

import occlens
from occlens import metrics
from occlens.core.errors import ConfigError

# A 8 x 10 image whose bottom-right 4 x 5 block is the region: 20 of 80 pixels, a quarter.
RH, RW = 8, 10
ROWS, COLS = slice(4, 8), slice(5, 10)
N, N_REGION = RH * RW, 20


class VisibleFraction(nn.Module):
    """Returns probabilities ``[v, 1 - v]``, ``v`` = the fraction of region pixels still equal to ``reference``."""

    def __init__(self, reference: torch.Tensor):
        super().__init__()
        self.register_buffer("reference", reference.clone())
        self.eval()

    def forward(self, x):
        same = (x - self.reference).abs().amax(dim=1) < 1e-6  # N x H x W: every channel unchanged
        v = same[:, ROWS, COLS].double().mean(dim=(1, 2))
        return torch.stack([v, 1 - v], dim=1)


@pytest.fixture
def reference() -> torch.Tensor:
    return random_image(height=RH, width=RW, seed=3)


def region_map(inside: float, outside: float = 0.0) -> np.ndarray:
    m = np.full((RH, RW), outside)
    m[ROWS, COLS] = inside
    return m


def trapezoid(x, y) -> float:
    return sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(len(x) - 1))


# -- deletion and insertion, closed form -------------------------------------------------------------


def test_deletion_of_the_region_first_falls_linearly_to_zero(reference):
    curve = metrics.deletion_auc(VisibleFraction(reference), reference, region_map(-1.0), first="lowest", steps=20,
                                 output="probs")  # fmt: skip
    f = np.arange(21) / 20
    assert curve.kind == "deletion" and curve.cls == 0
    np.testing.assert_allclose(curve.fractions, f)
    # 4 pixels per step, all from the region until it is gone at f = 1/4: v = 1 - 4f, then 0
    np.testing.assert_allclose(curve.scores, np.clip(1 - f * N / N_REGION, 0, 1), atol=1e-12)
    assert curve.auc == pytest.approx(N_REGION / N / 2)  # a triangle: 0.125


def test_deletion_of_the_region_last_keeps_the_score_until_the_end(reference):
    # with first="highest" the 60 zeros go before the region's -1s
    curve = metrics.deletion_auc(VisibleFraction(reference), reference, region_map(-1.0), first="highest", steps=20,
                                 output="probs")  # fmt: skip
    f = np.arange(21) / 20
    np.testing.assert_allclose(curve.scores, np.clip((1 - f) * N / N_REGION, 0, 1), atol=1e-12)
    assert curve.auc == pytest.approx(1 - N_REGION / N / 2)  # 0.875


def test_insertion_reveals_the_region_first(reference):
    curve = metrics.insertion_auc(VisibleFraction(reference), reference, region_map(5.0), first="highest", steps=20,
                                  output="probs")  # fmt: skip
    f = np.arange(21) / 20
    assert curve.kind == "insertion"
    np.testing.assert_allclose(curve.scores, np.clip(f * N / N_REGION, 0, 1), atol=1e-12)
    assert curve.auc == pytest.approx(1 - N_REGION / N / 2)


def test_ties_are_broken_in_raster_order(reference):
    # a constant map: pixels go row by row from the top-left; the region starts at flat index 4 * 10 + 5
    in_region = np.zeros((RH, RW), bool)
    in_region[ROWS, COLS] = True
    flat = in_region.ravel()
    expected = [1 - flat[:k].sum() / N_REGION for k in range(N + 1)]
    fractions = [k / N for k in range(N + 1)]
    for first in ("lowest", "highest"):
        curve = metrics.deletion_auc(VisibleFraction(reference), reference, np.zeros((RH, RW)), first=first,
                                     steps=N, output="probs")  # fmt: skip
        np.testing.assert_allclose(curve.scores, expected, atol=1e-12)
        assert curve.auc == pytest.approx(trapezoid(fractions, expected))


def test_steps_that_do_not_divide_the_pixels_use_the_exact_fractions(reference):
    curve = metrics.deletion_auc(VisibleFraction(reference), reference, region_map(-1.0), first="lowest", steps=3,
                                 output="probs")  # fmt: skip
    counts = np.array([0, 80 // 3, 160 // 3, 80])  # 0, 26, 53, 80 pixels
    np.testing.assert_allclose(curve.fractions, counts / N)
    np.testing.assert_allclose(curve.scores, [1, 0, 0, 0], atol=1e-12)
    assert curve.auc == pytest.approx(26 / 80 / 2)


def test_target_scores_another_class(reference):
    # class 1 has probability 1 - v: the complement of the deletion curve
    curve = metrics.deletion_auc(VisibleFraction(reference), reference, region_map(-1.0), first="lowest", steps=20,
                                 output="probs", target=1)  # fmt: skip
    f = np.arange(21) / 20
    assert curve.cls == 1
    np.testing.assert_allclose(curve.scores, 1 - np.clip(1 - f * N / N_REGION, 0, 1), atol=1e-12)
    assert curve.auc == pytest.approx(1 - N_REGION / N / 2)


def test_batch_size_does_not_change_the_curve(reference):
    model, m = VisibleFraction(reference), np.random.default_rng(0).random((RH, RW))
    one = metrics.insertion_auc(model, reference, m, first="highest", steps=16, output="probs", batch_size=1)
    many = metrics.insertion_auc(model, reference, m, first="highest", steps=16, output="probs", batch_size=7)
    np.testing.assert_array_equal(one.scores, many.scores)


def test_occlusion_beats_a_random_map_on_a_model_that_sees_one_region():
    rows, cols = slice(3, 8), slice(6, 13)  # 35 pixels of the 12 x 17 image
    image = random_image(seed=5)
    image[:, rows, cols] = 0.9 + 0.1 * random_image(height=5, width=7, seed=6)  # bright: gray lowers the sums
    # logit 0 = 0.2 * (sum of the region over channels) - 15: about +4.5 on the image, -4.5 with the region gray
    model = RegionLinear([[0.2, 0.2, 0.2], [0.0, 0.0, 0.0]], bias=[-15.0, 0.0], rows=rows, cols=cols)
    occlusion = occlens.explain(model, image, patch=3).pixel_map
    random = np.random.default_rng(1).random((H, W))
    steps = 17
    occ_del = metrics.deletion_auc(model, image, occlusion, first="lowest", steps=steps)
    rnd_del = metrics.deletion_auc(model, image, random, first="highest", steps=steps)
    occ_ins = metrics.insertion_auc(model, image, occlusion, first="lowest", steps=steps)
    rnd_ins = metrics.insertion_auc(model, image, random, first="highest", steps=steps)
    assert occ_del.cls == rnd_del.cls == 0
    assert occ_del.auc < rnd_del.auc - 0.2
    assert occ_ins.auc > rnd_ins.auc + 0.2
    # the wrong direction for an occlusion map removes the region last: worse than random
    assert metrics.deletion_auc(model, image, occlusion, first="highest", steps=steps).auc > rnd_del.auc


def test_curves_are_in_unit_range_and_end_at_the_image_and_the_substrate(net, image):
    m = np.random.default_rng(2).random((H, W))
    deletion = metrics.deletion_auc(net, image, m, first="highest", steps=5)
    insertion = metrics.insertion_auc(net, image, m, first="highest", steps=5)
    with torch.no_grad():
        p = torch.softmax(net(image[None]).double(), dim=1)[0]
        p_gray = torch.softmax(net(torch.full_like(image, 0.5)[None]).double(), dim=1)[0]
    q = int(p.argmax())
    assert deletion.cls == insertion.cls == q
    assert deletion.scores[0] == pytest.approx(float(p[q]), rel=1e-5)
    assert deletion.scores[-1] == pytest.approx(float(p_gray[q]), rel=1e-5)
    assert insertion.scores[-1] == pytest.approx(float(p[q]), rel=1e-5)
    assert 0 <= deletion.auc <= 1 and 0 <= insertion.auc <= 1


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"saliency_map": np.zeros((4, 5))}, "(4, 5)"),
        ({"first": "negative"}, "negative"),
        ({"steps": 0}, "0"),
        ({"removal": "zero"}, "zero"),
        ({"segments": np.zeros((3, 3), int)}, "(3, 3)"),
        ({"target": 9}, "9"),
        ({"batch_size": 0}, "0"),
    ],
)
def test_bad_arguments_are_one_line_config_errors(net, image, change, named):
    kwargs = {"saliency_map": np.zeros((H, W)), "first": "lowest", "steps": 4} | change
    with pytest.raises(ConfigError) as err:
        metrics.deletion_auc(net, image, **kwargs)
    assert_one_line_naming(err.value, named)


def test_more_steps_than_units_take_one_unit_per_step(reference):
    model = VisibleFraction(reference)
    curve = metrics.deletion_auc(model, reference, region_map(-1.0), first="lowest", steps=N + 7, output="probs")
    np.testing.assert_allclose(curve.fractions, np.arange(N + 1) / N)
    grid = occlens.Grid.build(RH, RW, (4, 5))  # 4 windows: at most 4 steps
    curves = metrics.removal_curves(model, reference, region_map(-1.0), first="lowest", segments=grid, steps=20,
                                    output="probs")  # fmt: skip
    assert curves.units == 4 and len(curves.morf.fractions) == 5


def test_a_map_with_nan_is_refused(net, image):
    m = np.zeros((H, W))
    m[2, 3] = np.nan
    with pytest.raises(ConfigError, match="NaN"):
        metrics.insertion_auc(net, image, m, first="highest")


# -- MoRF, LeRF and SRG --------------------------------------------------------------------------------


class AllVisible(nn.Module):
    """Probabilities ``[v, 1 - v]`` with ``v = 1`` while every region pixel equals ``reference``, else 0."""

    def __init__(self, reference: torch.Tensor):
        super().__init__()
        self.register_buffer("reference", reference.clone())
        self.eval()

    def forward(self, x):
        same = (x - self.reference).abs().amax(dim=1) < 1e-6
        v = same[:, ROWS, COLS].all(dim=2).all(dim=1).double()
        return torch.stack([v, 1 - v], dim=1)


class CountsChanges(nn.Module):
    """A model that sees only *how many* pixels changed, anywhere: the removal's own artefact, nothing else."""

    def __init__(self, reference: torch.Tensor):
        super().__init__()
        self.register_buffer("reference", reference.clone())
        self.eval()

    def forward(self, x):
        changed = ((x - self.reference).abs().amax(dim=1) > 1e-6).double().mean(dim=(1, 2))
        return torch.stack([1 - changed, changed], dim=1)


@pytest.mark.parametrize("removal", metrics.REMOVALS)
def test_the_ideal_map_drops_at_once_under_morf_and_stays_flat_under_lerf(reference, removal):
    model = AllVisible(reference)
    c = metrics.removal_curves(model, reference, region_map(1.0), first="highest", removal=removal, steps=20,
                               output="probs")  # fmt: skip
    # 4 pixels a step; the region's 20 pixels are the first (MoRF) or the last (LeRF) to go
    assert c.morf.kind == "morf" and c.lerf.kind == "lerf" and c.removal == removal and c.units == N
    np.testing.assert_allclose(c.morf.scores, [1] + [0] * 20, atol=1e-30)  # 0 is log P's floor, 1.2e-38
    np.testing.assert_allclose(c.lerf.scores, [1] * 16 + [0] * 5, atol=1e-30)  # flat while the 60 others go
    assert c.morf.auc == pytest.approx(1 / 40)
    assert c.lerf.auc == pytest.approx(0.75 + 0.05 / 2)
    assert c.srg == pytest.approx(0.75)
    # by windows: the region is one of the 4 windows of 4 x 5
    w = metrics.removal_curves(model, reference, region_map(1.0), first="highest", removal=removal,
                               segments=occlens.Grid.build(RH, RW, (4, 5)), output="probs")  # fmt: skip
    np.testing.assert_allclose(w.morf.scores, [1, 0, 0, 0, 0], atol=1e-30)
    np.testing.assert_allclose(w.lerf.scores, [1, 1, 1, 1, 0], atol=1e-30)
    assert w.srg == pytest.approx(0.875 - 0.125)


def test_a_random_maps_srg_is_zero_on_average_over_seeds(reference):
    model = VisibleFraction(reference)
    maps = [metrics.random_map(RH, RW, s) for s in range(40)]
    srg = np.array([metrics.removal_curves(model, reference, m, first="highest", removal="gray", steps=20,
                                           output="probs").srg for m in maps])  # fmt: skip
    ideal = metrics.removal_curves(model, reference, region_map(1.0), first="highest", steps=20, output="probs")
    assert ideal.srg == pytest.approx(0.75)  # v falls linearly over the region's quarter of the image, both ways
    assert abs(srg.mean()) < 0.03 and srg.std() > 0.01  # each random map scatters around 0; the mean is near it
    assert np.abs(srg).max() < 0.5


def test_a_model_that_sees_only_the_removal_gives_every_map_srg_zero_but_not_the_same_deletion(reference):
    # the artefact deletion alone is fooled by: any map removes as many pixels at each step in both orders
    model = CountsChanges(reference)
    for pixel_map in (region_map(1.0), metrics.random_map(RH, RW, 3), np.zeros((RH, RW))):
        c = metrics.removal_curves(model, reference, pixel_map, first="highest", removal="gray", output="probs")
        np.testing.assert_allclose(c.morf.scores, 1 - c.morf.fractions, atol=1e-12)
        assert c.srg == pytest.approx(0.0, abs=1e-12) and c.morf.auc == pytest.approx(0.5)


def test_reversing_the_map_swaps_morf_and_lerf(reference):
    model, m = VisibleFraction(reference), metrics.random_map(RH, RW, 9)
    grid = occlens.Grid.build(RH, RW, (2, 3))
    for segments in (None, grid):
        a = metrics.removal_curves(model, reference, m, first="highest", segments=segments, output="probs")
        b = metrics.removal_curves(model, reference, m, first="lowest", segments=segments, output="probs")
        np.testing.assert_array_equal(a.morf.scores, b.lerf.scores)
        np.testing.assert_array_equal(a.lerf.scores, b.morf.scores)
        assert a.srg == -b.srg


def test_windows_go_whole_in_the_order_of_the_maps_mean_over_them(reference):
    from conftest import Recorder

    grid = occlens.Grid.build(RH, RW, (4, 5))  # windows 0 1 / 2 3
    m = np.zeros((RH, RW))
    m[0:4, 0:5] = 0.3  # window 0: mean 0.3
    m[0:4, 5:10] = [[1.0, 0, 0, 0, 0]] * 4  # window 1: one bright column, mean 0.2
    m[4:8, 0:5] = 0.25  # window 2
    m[4:8, 5:10] = -1.0  # window 3: last
    model = Recorder(VisibleFraction(reference))
    metrics.deletion_auc(model, reference, m, first="highest", segments=grid, steps=4, output="probs")
    removed = (model.occluded() - reference).abs().amax(dim=1) > 1e-6  # steps + 1 x H x W
    order = []
    for step in range(1, 5):
        new = removed[step] & ~removed[step - 1]
        order.append(int(np.unique(metrics.window_cells(grid, RH, RW)[new.numpy()]).item()))  # one whole window
    assert order == [0, 2, 1, 3]


@pytest.mark.parametrize("removal", metrics.REMOVALS)
def test_batch_size_does_not_change_removal_curves(net, image, removal):
    m = metrics.random_map(H, W, 4)
    one = metrics.removal_curves(net, image, m, first="highest", removal=removal, steps=9, batch_size=1)
    many = metrics.removal_curves(net, image, m, first="highest", removal=removal, steps=9, batch_size=4)
    for a, b in ((one.morf, many.morf), (one.lerf, many.lerf)):  # to the convolution's rounding
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6, atol=1e-9)
    # MoRF is the deletion curve under the same removal
    deletion = metrics.deletion_auc(net, image, m, first="highest", removal=removal, steps=9, batch_size=1)
    np.testing.assert_array_equal(deletion.scores, one.morf.scores)


def test_insertion_under_a_removal_reveals_from_its_fully_removed_image(reference):
    from conftest import Recorder

    model = Recorder(VisibleFraction(reference))
    curve = metrics.insertion_auc(model, reference, region_map(1.0), first="highest", removal="road", steps=20,
                                  output="probs")  # fmt: skip
    f = np.arange(21) / 20
    assert curve.removal == "road"
    np.testing.assert_allclose(curve.scores, np.clip(f * N / N_REGION, 0, 1), atol=1e-12)
    # nothing revealed yet: ROAD's image of everything removed, the mean colour plus its noise (0.01)
    start = model.occluded()[0]
    mean = reference.mean(dim=(1, 2), keepdim=True)
    assert float((start - mean).abs().max()) < 0.05 and float((start - mean).std()) > 0.005


# -- Spearman ---------------------------------------------------------------------------------------


def brute_spearman(a, b) -> float:
    def ranks(v):
        v = np.asarray(v, dtype=float).ravel()
        return np.array([1 + (v < x).sum() + ((v == x).sum() - 1) / 2 for x in v])

    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def test_spearman_with_ties_by_hand():
    # ranks [1, 2.5, 2.5, 4] and [1, 2, 3, 4]: covariance 4.5, variances 4.5 and 5, so r = sqrt(0.9)
    assert metrics.spearman([1, 2, 2, 3], [10, 20, 30, 40]) == pytest.approx(np.sqrt(0.9))
    assert metrics.spearman([1, 2, 3], [1, 4, 9]) == pytest.approx(1.0)
    assert metrics.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_spearman_matches_a_brute_force_rank_correlation():
    rng = np.random.default_rng(4)
    for _ in range(5):
        a = rng.integers(0, 6, size=(7, 9)).astype(float)  # many ties
        b = rng.normal(size=(7, 9)).round(1)
        assert metrics.spearman(a, b) == pytest.approx(brute_spearman(a, b))


def test_spearman_of_a_constant_map_is_nan_and_sizes_must_match():
    assert np.isnan(metrics.spearman(np.ones(5), np.arange(5)))
    with pytest.raises(ConfigError) as err:
        metrics.spearman(np.ones(5), np.ones(6))
    assert_one_line_naming(err.value, 5, 6)


# -- randomisation check ------------------------------------------------------------------------------


def test_randomisation_goes_top_down_on_a_copy(net, image):
    before = {k: v.clone() for k, v in net.state_dict().items()}
    check = metrics.randomization_check(net, image)
    assert check.layers == ("head", "body.2", "body.0")  # the modules owning parameters, output layer first
    assert check.randomized == (1, 2, 3)
    assert check.maps.shape == (3, H, W) and check.original.shape == (H, W)
    assert check.correlations.shape == (3,)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())
    np.testing.assert_allclose(check.original, occlens.saliency(net, image), rtol=1e-6)
    again = metrics.randomization_check(net, image)
    np.testing.assert_array_equal(check.correlations, again.correlations)
    assert check.correlations[-1] < 0.9


def test_a_map_that_ignores_the_model_passes_as_unchanged(net, image):
    # Adebayo et al.'s point: an edge detector looks plausible but does not depend on the model at all
    def edges(model, x, cls):
        gray = x.mean(dim=0).numpy()
        return np.abs(np.diff(gray, axis=1, append=gray[:, -1:]))

    check = metrics.randomization_check(net, image, explainer=edges, stages=2)
    assert check.randomized == (2, 3)  # evenly spaced, ending with every layer re-drawn
    np.testing.assert_allclose(check.correlations, [1.0, 1.0])


def test_randomisation_check_with_occlusion_and_a_target(net):
    image = random_image(height=32, width=40, seed=7)  # room for explain's default 16 x 16 windows
    check = metrics.randomization_check(net, image, explainer="occlusion", target=2, stages=1)
    assert check.cls == 2 and check.randomized == (3,)
    np.testing.assert_allclose(check.original, occlens.explain(net, image, target=2).pixel_map)


def test_randomisation_check_needs_a_module_and_a_known_explainer(net, image):
    with pytest.raises(ConfigError) as err:
        metrics.randomization_check(lambda x: x.mean(dim=(2, 3)), image)
    assert_one_line_naming(err.value, "function")
    with pytest.raises(ConfigError) as err:
        metrics.randomization_check(net, image, explainer="lime")
    assert_one_line_naming(err.value, "lime")


def test_randomisation_check_drops_to_low_correlation_on_the_real_model():
    from occlens.core.image import read_image
    from occlens.core.samples import sample
    from occlens.models import load_default_model

    model = load_default_model()
    image = model.preprocess(read_image(sample("coffee").path))
    check = metrics.randomization_check(model.module, image, stages=3)
    assert check.randomized[-1] == len(check.layers) == 50  # 49 convolutions (batch norms folded in), the classifier
    assert check.layers[0].endswith("classifier")
    assert abs(check.correlations[-1]) < 0.3
