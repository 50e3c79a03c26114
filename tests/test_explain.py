"""occlens.explain end to end: the seed's formula by hand, analytic models, K/Q, batching, the model left alone."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from conftest import (
    DropoutNet,
    RegionLinear,
    TinyConvNet,
    brute_pixel_map,
    brute_windows,
    hand_delta,
    np_log_softmax,
    patch_stride,
    random_image,
    region_linear_delta,
)

import occlens
from occlens.core.fill import baseline

# ---------------------------------------------------------------------------------------------
# the seed's 2 x 2 example


@pytest.mark.parametrize(("height", "width"), [(8, 10), (12, 18), (6, 6)])
def test_seed_two_by_two_example(height, width):
    """Patch = half the image, stride = patch: four occlusions, delta_i = L - L_occl_i, raster order."""
    model = TinyConvNet(seed=5)
    x = random_image(3, height, width, seed=9)
    result = occlens.explain(model, x, patch=(height // 2, width // 2))
    hh, hw = height // 2, width // 2
    quadrants = [(0, hh, 0, hw), (0, hh, hw, width), (hh, height, 0, hw), (hh, height, hw, width)]  # seed's order
    with torch.no_grad():
        clean = torch.log_softmax(model(x[None]).double(), dim=1)[0]
        q = int(clean.argmax())
        loss = -float(clean[q])
        occluded_losses = []
        for t, b, left, right in quadrants:
            xo = x.clone()
            xo[:, t:b, left:right] = 0.5  # the seed's gray block
            occluded_losses.append(-float(torch.log_softmax(model(xo[None]).double(), dim=1)[0, q]))
    expected = np.array(
        [[loss - occluded_losses[0], loss - occluded_losses[1]], [loss - occluded_losses[2], loss - occluded_losses[3]]]
    )
    assert result.delta.shape == (2, 2) and result.grid.size == 4
    assert result.predicted == q
    assert result.loss == pytest.approx(loss, abs=1e-6)
    np.testing.assert_allclose(result.occluded_loss, np.reshape(occluded_losses, (2, 2)), atol=1e-5)
    np.testing.assert_allclose(result.delta, expected, atol=1e-5)
    np.testing.assert_allclose(result.pixel_map, np.kron(expected, np.ones((hh, hw))), atol=1e-5)
    assert np.abs(expected).max() > 1e-3


@pytest.mark.parametrize("quadrant", [0, 1, 2, 3])
def test_seed_raster_order_top_left_first(quadrant):
    """A model that looks at one quadrant only: exactly that entry of the 2 x 2 map is non-zero."""
    r, c = divmod(quadrant, 2)
    model = RegionLinear(
        [[0.0625, 0.0625, 0.0625], [0.0, 0.0, 0.0]], rows=slice(4 * r, 4 * r + 4), cols=slice(5 * c, 5 * c + 5)
    )
    x = torch.full((3, 8, 10), 0.75)
    result = occlens.explain(model, x, patch=(4, 5))
    assert result.predicted == 0
    expected_zero = np.ones((2, 2), bool)
    expected_zero[r, c] = False
    assert np.all(result.delta[expected_zero] == 0.0)
    assert result.delta[r, c] < 0


# ---------------------------------------------------------------------------------------------
# analytic models with closed-form maps

WEIGHT = [[0.5, -1.0, 2.0], [1.5, 0.25, -0.5], [-1.0, 1.0, 0.0], [0.0, 0.0, 0.75]]
BIAS = [0.1, -0.2, 0.3, 0.0]


@pytest.mark.parametrize(
    ("patch", "stride", "fill"),
    [
        (1, None, "gray"),  # 1 x 1 windows: one pixel at a time
        (1, None, 0.0),
        (3, None, "gray"),  # k x k, partition with clipped edge windows on 12 x 17
        ((4, 5), (2, 3), "gray"),
        ((5, 2), (1, 2), (0.2, 0.4, 0.9)),
        ((12, 17), None, "black"),  # one window: the whole image
    ],
)
def test_linear_model_on_pixel_sums_has_closed_form_delta(patch, stride, fill):
    x = random_image(3, 12, 17, seed=4).double()
    model = RegionLinear(WEIGHT, BIAS)
    result = occlens.explain(model, x.float(), patch=patch, stride=stride, fill=fill)
    fill_value = {"gray": 0.5, "black": 0.0}.get(fill, fill) if isinstance(fill, str) else fill
    p, s = patch_stride(patch, stride)
    expected, q = region_linear_delta(WEIGHT, BIAS, x.numpy(), fill_value, slice(None), slice(None), p, s)
    assert result.predicted == q
    np.testing.assert_allclose(result.delta, expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(result.pixel_map, brute_pixel_map(expected, 12, 17, p, s), rtol=0, atol=1e-9)


def test_linear_model_one_by_one_windows_by_formula():
    """1 x 1 windows of a 2-class model ``logits = (a * sum(x), 0)``: delta_hw = log P'(Q) - log P(Q) in closed form."""
    a = 0.05
    x = random_image(1, 6, 9, seed=2).double()
    model = RegionLinear([[a], [0.0]])
    result = occlens.explain(model, x.float(), patch=1, fill=0.0)
    total = float(x.sum())
    q = 0 if a * total > 0 else 1
    assert result.predicted == q == 0
    log_p = -np.log1p(np.exp(-a * total))  # log sigmoid(a * S)
    log_p_occl = -np.log1p(np.exp(-a * (total - x[0].numpy())))  # pixel (h, w) set to 0
    np.testing.assert_allclose(result.delta, log_p_occl - log_p, rtol=0, atol=1e-12)
    assert np.all(result.delta < 0)  # every bright pixel supported class 0
    np.testing.assert_allclose(result.pixel_map, result.delta, rtol=0, atol=0)


REGION = (slice(3, 7), slice(5, 11))  # rows 3..6, cols 5..10 of a 12 x 17 image


@pytest.mark.parametrize(("patch", "stride"), [(1, None), (2, None), (3, None), ((4, 5), (2, 3)), ((5, 3), (5, 1))])
def test_model_that_looks_at_one_region(patch, stride):
    """Windows that miss the region: delta == 0 exactly. Windows on it: delta < 0 (the prediction relies on it)."""
    x = torch.full((3, 12, 17), 0.875)  # brighter than the gray fill; sums are exact in binary
    model = RegionLinear([[1.0, 0.5, 0.25], [0.0, 0.0, 0.0], [-0.5, 0.0, 0.0]], rows=REGION[0], cols=REGION[1])
    result = occlens.explain(model, x, patch=patch, stride=stride)
    assert result.predicted == 0
    p, s = patch_stride(patch, stride)
    windows, rows, cols = brute_windows(12, 17, p, s)
    touches = np.array([t < 7 and b > 3 and left < 11 and right > 5 for t, b, left, right in windows]).reshape(
        rows, cols
    )
    assert touches.any() and (~touches).any()
    assert np.all(result.delta[~touches] == 0.0)
    assert np.all(result.delta[touches] < 0)
    expected, _ = region_linear_delta(model.weight.detach().numpy(), np.zeros(3), x.numpy(), 0.5, *REGION, p, s)
    np.testing.assert_allclose(result.delta, expected, rtol=0, atol=1e-12)
    # pixel map: zero wherever no covering window touches the region; negative inside the region
    touching_cover = np.zeros((12, 17), int)
    for (t, b, left, right), hit in zip(windows, touches.flatten(), strict=True):
        touching_cover[t:b, left:right] += hit
    assert np.all(result.pixel_map[touching_cover == 0] == 0.0)
    assert np.all(result.pixel_map[touching_cover > 0] < 0)
    assert np.all(result.pixel_map[REGION] < 0)


def test_region_arguing_against_the_prediction_gets_positive_delta():
    """Next to the gray fill, the dark region argued against the prediction: occluding it helps (delta > 0)."""
    x = torch.full((1, 8, 8), 0.875)
    x[:, :4, :4] = 0.25  # darker region; gray (0.5) brightens it
    model = RegionLinear([[0.0], [-2.0]], bias=[2.0, 0.0], rows=slice(0, 4), cols=slice(0, 4))
    result = occlens.explain(model, x, patch=4)
    assert result.predicted == 0
    assert result.delta[0, 0] > 0
    assert np.all(result.delta.flatten()[1:] == 0.0)


def test_delta_matches_hand_loop_on_a_conv_net_non_square_overlapping(net, image):
    result = occlens.explain(net, image, patch=(5, 3), stride=(2, 2))
    expected, loss, q = hand_delta(net, image, (5, 3), (2, 2), torch.full_like(image, 0.5))
    assert result.predicted == q and result.loss == pytest.approx(loss, abs=1e-6)
    assert result.delta.shape == (5, 8)
    np.testing.assert_allclose(result.delta, expected, atol=1e-5)
    np.testing.assert_allclose(result.pixel_map, brute_pixel_map(expected, 12, 17, (5, 3), (2, 2)), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# batching


def test_batch_size_invariance(net, image):
    sizes = (1, 3, 4, 7, 64, None)
    results = {bs: occlens.explain(net, image, patch=(4, 5), stride=(3, 3), batch_size=bs) for bs in sizes}
    reference = results[1].delta
    assert reference.shape == (4, 5)  # 20 windows: not a multiple of 3 or 7, so a short last batch
    for bs, r in results.items():
        np.testing.assert_allclose(r.delta, reference, rtol=0, atol=1e-6, err_msg=f"batch_size={bs}")
        np.testing.assert_allclose(r.pixel_map, results[1].pixel_map, rtol=0, atol=1e-6)
        if bs is not None:
            assert r.batch_size == bs
        assert r.batch_size >= 1


def test_automatic_cpu_batch_is_small_for_torch_models_only(net, image):
    """Torch models get small CPU batches (big freed activations cost page faults); numpy callables do not."""
    from occlens.engines.memory import CALLABLE_AUTO_BATCH, CPU_AUTO_BATCH

    grid = dict(patch=(4, 5), stride=(1, 1))  # more windows than either cap
    torch_result = occlens.explain(net, image, engine="dense", **grid)
    assert torch_result.grid.size > CALLABLE_AUTO_BATCH and torch_result.batch_size == CPU_AUTO_BATCH

    def numpy_model(batch):
        with torch.inference_mode():
            return net(torch.from_numpy(batch)).numpy()

    numpy_result = occlens.explain(numpy_model, image, layout="NCHW", **grid)
    assert numpy_result.batch_size == CALLABLE_AUTO_BATCH
    np.testing.assert_allclose(numpy_result.delta, torch_result.delta, atol=1e-5)


def test_progress_is_reported_per_batch(net, image):
    calls = []
    result = occlens.explain(
        net, image, patch=(3, 5), stride=(2, 3), batch_size=7, progress=lambda d, t: calls.append((d, t))
    )
    assert calls == [(7, 30), (14, 30), (21, 30), (28, 30), (30, 30)]
    assert result.windows == 30


# ---------------------------------------------------------------------------------------------
# K, Q and target


def _ranked_classes(model, x):
    with torch.no_grad():
        return torch.argsort(model(x[None])[0], descending=True).tolist()


def test_label_equal_to_prediction(net, image):
    q = _ranked_classes(net, image)[0]
    result = occlens.explain(net, image, q, patch=4)
    assert result.predicted == q and result.label == q and result.target == q
    assert result.correct is True
    assert result.label_map is None


def test_no_label(net, image):
    result = occlens.explain(net, image, patch=4)
    assert result.label is None and result.correct is None and result.label_map is None
    assert result.target == result.predicted


def test_label_different_from_prediction_carries_its_map(net, image):
    ranked = _ranked_classes(net, image)
    q, k = ranked[0], ranked[2]
    result = occlens.explain(net, image, k, patch=(3, 5), stride=(2, 3))
    assert result.predicted == q and result.target == q and result.label == k
    assert result.correct is False
    assert result.label_map is not None and result.label_map.cls == k
    for_k = occlens.explain(net, image, target=k, patch=(3, 5), stride=(2, 3))
    np.testing.assert_allclose(result.label_map.delta, for_k.delta, rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.label_map.pixel_map, for_k.pixel_map, rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.label_map.occluded_loss, for_k.occluded_loss, rtol=0, atol=1e-6)
    assert result.label_map.loss == pytest.approx(for_k.loss, abs=1e-6)
    # and the target map is still Q's, computed by hand
    expected, _, _ = hand_delta(net, image, (3, 5), (2, 3), torch.full_like(image, 0.5))
    np.testing.assert_allclose(result.delta, expected, atol=1e-5)
    expected_k, loss_k, _ = hand_delta(net, image, (3, 5), (2, 3), torch.full_like(image, 0.5), cls=k)
    np.testing.assert_allclose(result.label_map.delta, expected_k, atol=1e-5)
    assert result.label_map.loss == pytest.approx(loss_k, abs=1e-6)
    assert not np.allclose(result.delta, result.label_map.delta)


def test_target_explains_another_class():
    x = random_image(3, 12, 17, seed=4).double()
    model = RegionLinear(WEIGHT, BIAS)
    q = int(np.argmax(np.asarray(WEIGHT) @ x.numpy().sum(axis=(1, 2)) + BIAS))
    t = (q + 1) % 4
    result = occlens.explain(model, x.float(), target=t, patch=(4, 3))
    expected, _ = region_linear_delta(WEIGHT, BIAS, x.numpy(), 0.5, slice(None), slice(None), (4, 3), (4, 3), cls=t)
    assert result.predicted == q and result.target == t and result.label is None
    np.testing.assert_allclose(result.delta, expected, rtol=0, atol=1e-9)
    clean = np_log_softmax(np.asarray(WEIGHT) @ x.numpy().sum(axis=(1, 2)) + BIAS)
    assert result.loss == pytest.approx(-clean[t], abs=1e-9)


@pytest.mark.parametrize("label_is_target", [True, False])
def test_label_with_target(net, image, label_is_target):
    ranked = _ranked_classes(net, image)
    t = ranked[1]
    k = t if label_is_target else ranked[3]
    result = occlens.explain(net, image, k, target=t, patch=4)
    assert result.target == t and result.label == k and result.predicted == ranked[0]
    assert result.correct is False  # K is compared with the prediction Q, not with the target
    if label_is_target:
        assert result.label_map is None
    else:
        np.testing.assert_allclose(
            result.label_map.delta, occlens.explain(net, image, target=k, patch=4).delta, rtol=0, atol=1e-6
        )


@pytest.mark.parametrize("label", [np.int64(2), torch.tensor(2)])
def test_label_accepts_numpy_and_tensor_integers(net, image, label):
    assert occlens.explain(net, image, label, patch=4).label == 2


def test_probabilities_and_top_k(net, image):
    result = occlens.explain(net, image, patch=4)
    with torch.no_grad():
        expected = torch.softmax(net(image[None]).double(), dim=1)[0].numpy()
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-6)
    assert result.probabilities.sum() == pytest.approx(1.0, abs=1e-9)
    order = np.argsort(-expected)
    top = result.top_k(3)
    assert [c for c, _ in top] == order[:3].tolist()
    assert all(isinstance(c, int) and isinstance(p, float) for c, p in top)
    np.testing.assert_allclose([p for _, p in top], expected[order[:3]], atol=1e-6)
    assert len(result.top_k(100)) == 5
    assert result.top_k(1)[0][0] == result.predicted


def test_result_arrays_are_read_only(net, image):
    result = occlens.explain(net, image, 1, patch=4)
    for a in (result.delta, result.pixel_map, result.occluded_loss, result.probabilities, result.label_map.delta):
        assert not a.flags.writeable
        with pytest.raises(ValueError):
            a[0] = 1.0


# ---------------------------------------------------------------------------------------------
# the caller's model is left as it was


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_model_in_train_mode_stays_in_train_mode_with_warning(image):
    model = DropoutNet()
    model.train()
    model.bn.eval()  # a mixed state must come back exactly
    before = _state(model)
    params_before = [(p.requires_grad, p.device, p.dtype) for p in model.parameters()]
    with pytest.warns(UserWarning, match="train") as record:
        a = occlens.explain(model, image, patch=(4, 5), stride=(2, 3))
    assert any(w.filename == __file__ for w in record)  # points at the caller, not into occlens
    assert model.training and not model.bn.training and model.drop.training and model.conv.training
    # it ran in eval mode: deterministic despite dropout, independent of the batch size
    assert model.seen_training and not any(model.seen_training)
    with pytest.warns(UserWarning):
        b = occlens.explain(model, image, patch=(4, 5), stride=(2, 3), batch_size=1)
    np.testing.assert_allclose(a.delta, b.delta, atol=1e-6)
    after = _state(model)
    assert before.keys() == after.keys()
    for k in before:  # batch-norm running statistics included
        assert torch.equal(before[k], after[k]), k
    assert [(p.requires_grad, p.device, p.dtype) for p in model.parameters()] == params_before
    assert all(p.grad is None for p in model.parameters())


def test_model_in_eval_mode_gives_no_warning_and_is_unchanged(image):
    model = TinyConvNet()
    before = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        occlens.explain(model, image, patch=4)
    assert not any(m.training for m in model.modules())
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), before.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2) and p1.device == p2.device and p1.dtype == p2.dtype


def test_training_mode_restored_when_the_model_fails(image):
    class Failing(DropoutNet):
        def forward(self, x):
            raise RuntimeError("boom")

    model = Failing()
    model.train()
    with pytest.warns(UserWarning), pytest.raises(occlens.ModelError):
        occlens.explain(model, image, patch=4)
    assert all(m.training for m in model.modules())


def test_float64_model_is_not_cast(image):
    model = TinyConvNet(dtype=torch.float64)
    result = occlens.explain(model, image, patch=4)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    expected, _, _ = hand_delta(model, image, (4, 4), (4, 4), baseline(image, "gray"))
    np.testing.assert_allclose(result.delta, expected, atol=1e-10)


def test_plain_callable_model(image):
    net = TinyConvNet()
    result = occlens.explain(lambda z: net(z), image, patch=(3, 4))
    np.testing.assert_allclose(result.delta, occlens.explain(net, image, patch=(3, 4)).delta, atol=1e-6)
    assert result.device == "cpu"


def test_numpy_returning_callable(image):
    net = TinyConvNet()

    def f(z):
        with torch.no_grad():
            return net(z).numpy()

    np.testing.assert_allclose(
        occlens.explain(f, image, patch=4).delta, occlens.explain(net, image, patch=4).delta, atol=1e-6
    )


@pytest.mark.parametrize("wrap", ["tuple", "hf"])
def test_tuple_and_hf_style_outputs(image, wrap):
    net = TinyConvNet()

    class Out:
        def __init__(self, logits):
            self.logits = logits

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, z):
            y = self.net(z)
            return (y, y * 0) if wrap == "tuple" else Out(y)

    np.testing.assert_allclose(
        occlens.explain(Wrapped().eval(), image, patch=4).delta, occlens.explain(net, image, patch=4).delta, atol=1e-6
    )


def test_input_image_is_not_modified(net):
    arr = np.random.default_rng(0).random((12, 17, 3)).astype(np.float32)
    t = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    arr_before, t_before = arr.copy(), t.clone()
    occlens.explain(net, arr, patch=4, fill="blur")
    occlens.explain(net, t, patch=4, fill="mean")
    np.testing.assert_array_equal(arr, arr_before)
    assert torch.equal(t, t_before)
