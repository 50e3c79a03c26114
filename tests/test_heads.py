"""Every head: softmax logits, independent sigmoids (multi-label), and a one-output binary classifier.

Analytic models: class c's logit is a known linear function of the pixels in region c, so every
window's δL has a closed form, for every class and every head.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_image
from torch import nn

import occlens
from occlens.cli import main

H, W = 12, 16
REGIONS = [
    (slice(0, 6), slice(0, 8)),
    (slice(0, 6), slice(8, 16)),
    (slice(6, 12), slice(0, 8)),
    (slice(6, 12), slice(8, 16)),
]
WEIGHTS = np.array([0.05, -0.03, 0.04, 0.02])
BIASES = np.array([-3.5, 2.5, -2.5, -1.0])  # logits near 0: no saturated sigmoid


class RegionLogits(nn.Module):
    """logit_c = w_c * (sum of the pixels in region c) + b_c: each class looks at its own quarter."""

    def __init__(self, then=None):
        super().__init__()
        self.then = then

    def forward(self, x):
        sums = torch.stack([x[:, :, r, c].sum(dim=(1, 2, 3)) for r, c in REGIONS], dim=1)
        z = sums * torch.as_tensor(WEIGHTS, dtype=x.dtype) + torch.as_tensor(BIASES, dtype=x.dtype)
        return z if self.then is None else self.then(z)


def logits_of(image: np.ndarray) -> np.ndarray:
    return np.array([image[:, r, c].sum() for r, c in REGIONS]) * WEIGHTS + BIASES


def expected(image: np.ndarray, patch: int, stride: int, fill: float, log_p) -> np.ndarray:
    """classes x R x C: δL_k = log P_k(occluded) - log P_k(clean) by brute force, ``log_p`` the head's formula."""
    rows, cols = -(-(H - patch) // stride) + 1, -(-(W - patch) // stride) + 1
    clean = log_p(logits_of(image))
    out = np.empty((len(clean), rows, cols))
    for i in range(rows):
        for j in range(cols):
            occluded = image.copy()
            occluded[:, i * stride : i * stride + patch, j * stride : j * stride + patch] = fill
            out[:, i, j] = log_p(logits_of(occluded)) - clean
    return out


def log_sigmoid(z):
    return -np.logaddexp(0.0, -z)


@pytest.fixture
def image() -> torch.Tensor:
    return random_image(3, H, W, seed=9).double()


def test_sigmoid_head_is_each_class_its_own_bernoulli(image):
    x = image.numpy()
    want = expected(x, 4, 2, 0.5, log_sigmoid)
    z = logits_of(x)
    q = int(np.argmax(z))
    label = int(np.argsort(z)[-2])
    result = occlens.explain(RegionLogits().double(), image.float(), label, patch=4, stride=2, output="sigmoid")
    assert result.predicted == q and result.settings.output == "sigmoid"
    np.testing.assert_allclose(result.loss, -log_sigmoid(z[q]), rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.probabilities, 1 / (1 + np.exp(-z)), rtol=1e-5)  # not summing to 1
    np.testing.assert_allclose(result.delta, want[q], rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.label_map.delta, want[label], rtol=0, atol=1e-6)
    softmax = occlens.explain(RegionLogits().double(), image.float(), patch=4, stride=2)
    assert np.abs(softmax.delta - result.delta).max() > 1e-3  # the head matters


@pytest.mark.parametrize("kind", ["logits", "sigmoid", "probs", "log_probs"])
def test_one_output_is_a_binary_classifier_with_both_maps_exact(image, kind):
    then = {"logits": None, "sigmoid": None, "probs": torch.sigmoid, "log_probs": nn.functional.logsigmoid}[kind]

    class Binary(nn.Module):
        def forward(self, x):
            z = RegionLogits()(x)[:, :1]  # class 1 is sigma(logit of region 0)
            return z if then is None else then(z)

    x = image.numpy()
    z = logits_of(x)[0]
    binary = lambda z: np.array([log_sigmoid(-z[0]), log_sigmoid(z[0])])  # noqa: E731
    want = expected(x, 4, 2, 0.5, binary)
    q = int(z > 0)
    result = occlens.explain(Binary().double(), image.float(), 1 - q, patch=4, stride=2, output=kind)
    assert result.predicted == q and len(result.probabilities) == 2
    np.testing.assert_allclose(result.probabilities.sum(), 1.0, atol=1e-9)
    np.testing.assert_allclose(result.delta, want[q], rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.label_map.delta, want[1 - q], rtol=0, atol=1e-6)
    assert np.abs(want[1 - q]).max() > 1e-3  # both maps say something


def test_the_incremental_engine_runs_sigmoid_heads_exactly():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 6)).eval()  # fmt: skip
    image = random_image(3, 32, 40, seed=4)
    inc = occlens.explain(net, image, 2, patch=8, stride=4, output="sigmoid", engine="incremental")
    dense = occlens.explain(net, image, 2, patch=8, stride=4, output="sigmoid", engine="dense")
    assert inc.engine == "incremental"
    np.testing.assert_allclose(inc.delta, dense.delta, rtol=0, atol=1e-5)
    np.testing.assert_allclose(inc.label_map.delta, dense.label_map.delta, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("then", "output", "message"),
    [
        (lambda z: z.abs() + 2, "probs", "one score per image is not a probability"),
        (lambda z: z.abs() + 1, "log_probs", "one score per image is not a log-probability"),
    ],
)
def test_one_output_of_the_wrong_kind_is_one_line(image, then, output, message):
    model = lambda x: then(x.sum(dim=(1, 2, 3))[:, None])  # noqa: E731
    with pytest.raises(occlens.ModelError, match=message) as caught:
        occlens.explain(model, image.float(), patch=4, output=output)
    assert "\n" not in str(caught.value)


def test_no_scores_and_unknown_heads_are_refused(image):
    with pytest.raises(occlens.ModelError, match="no class scores"):
        occlens.explain(lambda x: x[:, :0, 0, 0], image.float(), patch=4)
    with pytest.raises(occlens.ConfigError, match="output must be one of logits, probs, log_probs, sigmoid"):
        occlens.explain(RegionLogits(), image.float(), patch=4, output="softmax")


def test_the_command_takes_a_sigmoid_head(tmp_path, capsys):
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.trace(RegionLogits(), torch.rand(1, 3, H, W)), str(path))
    from PIL import Image

    picture = tmp_path / "a.png"
    Image.fromarray((random_image(3, H, W).permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(picture)
    argv = [
        "explain",
        str(picture),
        "--model",
        str(path),
        "--output",
        "sigmoid",
        "--patch",
        "4",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 0, capsys.readouterr().err
    import json

    saved = json.loads((tmp_path / "o" / "a.json").read_text())
    assert saved["settings"]["output"] == "sigmoid"


def test_a_one_output_model_file_has_two_named_classes(tmp_path, image):
    class Binary(nn.Module):
        def forward(self, x):
            return RegionLogits()(x)[:, :1]

    path = tmp_path / "binary.pt"
    torch.jit.save(torch.jit.trace(Binary(), torch.rand(1, 3, H, W)), str(path))
    size = {"input_size": [H, W]}
    loaded = occlens.load_model(path, description={"labels": ["clean", "defect"], **size})
    assert list(loaded.labels) == ["clean", "defect"]
    result = occlens.explain(loaded, image.float(), label="defect", patch=4)
    assert result.label == 1 and result.meta["label_name"] == "defect"
    with pytest.raises(occlens.ConfigError, match=r"model returns 1 score \(a binary classifier: 2 classes, 0 and 1\)"):
        occlens.load_model(path, description={"labels": ["defect"], **size})


# ---------------------------------------------------------------------------------------------
# a multi-label truth


def test_a_multi_label_truth_gets_a_map_per_label_and_verdicts(image, tmp_path):
    x = image.numpy()
    z = logits_of(x)
    p = 1 / (1 + np.exp(-z))
    want = expected(x, 4, 2, 0.5, log_sigmoid)
    q = int(np.argmax(z))
    truth = [int(c) for c in np.argsort(z)[:2]]  # the two least likely: at most one predicted
    threshold = float(np.sort(p)[1] + np.sort(p)[2]) / 2  # the two most likely are predicted, the others not
    result = occlens.explain(
        RegionLogits().double(), image.float(), truth, patch=4, stride=2, output="sigmoid", threshold=threshold
    )
    assert result.true_labels == tuple(truth) and result.label is None
    assert [m.cls for m in result.true_maps] == truth
    for m in result.true_maps:
        np.testing.assert_allclose(m.delta, want[m.cls], rtol=0, atol=1e-6)
    assert result.predicted_labels == tuple(sorted(int(c) for c in np.argsort(z)[2:]))
    assert result.verdicts() == [(c, pytest.approx(p[c], rel=1e-5), False) for c in truth]
    assert result.correct is False
    both = occlens.explain(RegionLogits().double(), image.float(), list(result.predicted_labels), patch=4,
                           stride=2, output="sigmoid", threshold=threshold)  # fmt: skip
    assert both.correct is True and all(v for _, _, v in both.verdicts())
    assert both.delta.shape == want[q].shape
    result.save(tmp_path / "r")
    back = occlens.OcclusionResult.load(tmp_path / "r")
    assert back.true_labels == result.true_labels and back.settings.threshold == threshold
    np.testing.assert_array_equal(back.true_maps[1].delta, result.true_maps[1].delta)
    assert back.to_dict()["verdicts"] == result.to_dict()["verdicts"]
    titles = [ax.get_title() for ax in result.plot().axes]
    assert sum("true label (MISSED" in t for t in titles) == 2


def test_a_multi_label_truth_needs_a_sigmoid_head(image):
    with pytest.raises(occlens.ConfigError, match=r"label=\[0, 2\] is a multi-label truth, but output='logits'"):
        occlens.explain(RegionLogits(), image.float(), [0, 2], patch=4)
    with pytest.raises(occlens.ConfigError, match="label is an empty list"):
        occlens.explain(RegionLogits(), image.float(), [], patch=4, output="sigmoid")
    with pytest.raises(occlens.ConfigError, match="out of range"):
        occlens.explain(RegionLogits(), image.float(), [0, 9], patch=4, output="sigmoid")
    with pytest.raises(occlens.ConfigError, match="threshold must be a probability"):
        occlens.explain(RegionLogits(), image.float(), [0, 1], patch=4, output="sigmoid", threshold=1.0)


def test_the_command_takes_a_multi_label_truth(tmp_path, capsys):
    import json

    from PIL import Image

    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.trace(RegionLogits(), torch.rand(1, 3, H, W)), str(path))
    picture = tmp_path / "a.png"
    Image.fromarray((random_image(3, H, W).permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(picture)
    base = ["explain", str(picture), "--model", str(path), "--patch", "4"]
    argv = [*base, "--output", "sigmoid", "--label", "0;3", "--threshold", "0.4", "--out", str(tmp_path / "o")]
    assert main(argv) == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "o" / "a.json").read_text())
    assert saved["true_labels"] == [0, 3] and saved["threshold"] == 0.4 and len(saved["true_maps"]) == 2
    capsys.readouterr()
    assert main([*base, "--label", "0;3", "--out", str(tmp_path / "p")]) == 2  # a softmax head: one line
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a multi-label truth, but output='logits'" in err[0]
    assert not (tmp_path / "p").exists() or not any((tmp_path / "p").iterdir())
