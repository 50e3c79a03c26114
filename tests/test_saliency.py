"""Gradient saliency: closed-form gradients of a linear model, the caller's model untouched, the --compare figure."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from conftest import DropoutNet, H, RegionLinear, TinyConvNet, W, assert_one_line_naming
from PIL import Image
from torch import nn

import occlens
from occlens.cli import main
from occlens.core.errors import ConfigError, ModelError
from occlens.core.samples import sample
from occlens.models import NumpyModel

ROWS, COLS = slice(2, 9), slice(4, 15)
WEIGHT = [[1.5, -0.5, 0.25], [-1.0, 2.0, 0.5], [0.3, 0.3, -1.2], [0.0, 0.7, 0.9]]
BIAS = [0.5, -2.0, 1.0, 0.0]


def linear_gradient(image: torch.Tensor, cls=None) -> tuple[np.ndarray, int]:
    """d log softmax(W s + b)[k] / dx for RegionLinear, by hand: W[k, c] - sum_j p_j W[j, c] inside the region."""
    x = image.double().numpy()
    weight, bias = np.array(WEIGHT), np.array(BIAS)
    s = x[:, ROWS, COLS].sum(axis=(1, 2))
    z = weight @ s + bias
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    k = int(np.argmax(z)) if cls is None else cls
    per_channel = weight[k] - p @ weight  # C
    grad = np.zeros_like(x)
    grad[:, ROWS, COLS] = per_channel[:, None, None]
    return grad, k


@pytest.fixture
def linear() -> RegionLinear:
    return RegionLinear(WEIGHT, BIAS, rows=ROWS, cols=COLS)


def test_gradient_of_a_linear_model_in_closed_form(linear, image):
    grad, _ = linear_gradient(image)
    got = occlens.saliency(linear, image)
    assert got.shape == (H, W) and got.dtype == np.float64
    np.testing.assert_allclose(got, np.abs(grad).max(axis=0), rtol=1e-6, atol=1e-9)
    assert (got[:2] == 0).all() and (got[:, :4] == 0).all()  # outside the region the model sees nothing


def test_gradient_times_input_in_closed_form(linear, image):
    grad, _ = linear_gradient(image)
    got = occlens.saliency(linear, image, method="gradient_x_input")
    np.testing.assert_allclose(got, np.abs(grad * image.double().numpy()).max(axis=0), rtol=1e-6, atol=1e-9)


def test_target_explains_another_class(linear, image):
    grad, q = linear_gradient(image)
    other = (q + 1) % 4
    grad_other, _ = linear_gradient(image, other)
    np.testing.assert_allclose(occlens.saliency(linear, image, other), np.abs(grad_other).max(axis=0), rtol=1e-6)


@pytest.mark.parametrize(("head", "output"), [(nn.Softmax(dim=1), "probs"), (nn.LogSoftmax(dim=1), "log_probs")])
def test_probability_outputs_give_the_same_map_as_logits(linear, image, head, output):
    expected = occlens.saliency(linear, image)
    got = occlens.saliency(nn.Sequential(linear, head).eval(), image, output=output)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-12)


def test_image_forms_agree(net, image):
    as_uint8 = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    from_tensor = occlens.saliency(net, torch.from_numpy(as_uint8).permute(2, 0, 1))
    np.testing.assert_allclose(occlens.saliency(net, as_uint8), from_tensor)
    np.testing.assert_allclose(occlens.saliency(net, Image.fromarray(as_uint8)), from_tensor)


def test_the_callers_model_is_left_as_it_was(image):
    model = DropoutNet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.warns(UserWarning, match="training mode"):
        occlens.saliency(model, image)
    assert model.seen_training == [False]  # evaluated in eval mode...
    assert all(m.training for m in model.modules())  # ...and put back in training mode
    assert all(p.grad is None for p in model.parameters())  # no gradient accumulated in the parameters
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_works_inside_no_grad_and_inference_mode(net, image):
    expected = occlens.saliency(net, image)
    with torch.no_grad():
        np.testing.assert_array_equal(occlens.saliency(net, image), expected)
    with torch.inference_mode():
        np.testing.assert_array_equal(occlens.saliency(net, image), expected)


def test_frozen_parameters_still_give_input_gradients(image):
    net = TinyConvNet().requires_grad_(False)
    assert occlens.saliency(net, image).max() > 0


def test_models_without_gradients_get_a_one_line_model_error(image):
    numpy_model = NumpyModel(lambda batch: batch.mean(axis=(2, 3)))
    with pytest.raises(ModelError) as err:
        occlens.saliency(numpy_model, image)
    assert_one_line_naming(err.value, "NumpyModel", "occlens.explain")

    class Constant(nn.Module):  # scores that do not depend on the image
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.tensor([[1.0, 0.0, -1.0]]))

        def forward(self, x):
            return self.bias.expand(len(x), -1)

    with pytest.raises(ModelError) as err:
        occlens.saliency(Constant().eval(), image)
    assert_one_line_naming(err.value, "does not depend on the image")


def test_bad_method_and_target_are_config_errors(net, image):
    with pytest.raises(ConfigError) as err:
        occlens.saliency(net, image, method="smoothgrad")
    assert_one_line_naming(err.value, "smoothgrad", "gradient")
    with pytest.raises(ConfigError) as err:
        occlens.saliency(net, image, 7)
    assert_one_line_naming(err.value, 7)


# -- the figure -----------------------------------------------------------------------------------


def panel_titles(fig) -> list[str]:
    return [a.get_title() for a in fig.axes if a.get_title()]


def test_plot_adds_a_saliency_panel_per_row(net, image):
    result = occlens.explain(net, image, label=(occlens.explain(net, image, patch=4).predicted + 1) % 5, patch=4)
    maps = [occlens.saliency(net, image, k) for k in (result.target, result.label)]
    fig = occlens.plot(result, image, labels=list("abcde"), saliency=maps)
    titles = panel_titles(fig)
    assert len(titles) == 8  # two rows (Q and the true class K) of four panels
    assert f"gradient saliency for {result.target} {'abcde'[result.target]}" in titles[3]
    assert f"gradient saliency for {result.label} {'abcde'[result.label]}" in titles[7]
    one_row = occlens.plot(result, image, saliency=maps[0], true_class=False)
    assert len(panel_titles(one_row)) == 4


def test_plot_refuses_a_saliency_map_of_another_size(net, image):
    result = occlens.explain(net, image, patch=4)
    with pytest.raises(ConfigError) as err:
        occlens.plot(result, image, saliency=np.zeros((5, 6)))
    assert_one_line_naming(err.value, "(5, 6)", f"{H}x{W}")


@pytest.mark.slow
def test_cli_compare_draws_the_gradient_next_to_occlusion(tmp_path, capsys):
    photo = sample("chelsea")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = main(["explain", str(photo.path), "--patch", "112", "--out", str(tmp_path / "plain")])
        compared = main(["explain", str(photo.path), "--patch", "112", "--label", "281", "--compare",
                         "--out", str(tmp_path / "compare")])  # fmt: skip
    assert plain == compared == 0, capsys.readouterr().err
    with Image.open(tmp_path / "plain" / "chelsea.png") as a, Image.open(tmp_path / "compare" / "chelsea.png") as b:
        assert b.width > a.width * 1.2  # a fourth column
        assert b.height > a.height * 1.5  # Q is wrong here, so K gets a second row


@pytest.mark.slow
def test_saliency_is_exported_without_loading_matplotlib():
    code = "import sys, occlens; occlens.saliency; occlens.metrics.deletion_auc; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
