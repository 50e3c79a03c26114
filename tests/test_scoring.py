"""Scores to log-probabilities: logits, probs and log_probs agree; computed in float64, never log(softmax)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import TinyConvNet, np_log_softmax, random_image

import occlens
from occlens import ConfigError, ModelError
from occlens.core.scoring import check_output, log_probs, scores_of

LOGITS = torch.tensor([[2.0, -1.0, 0.5, 0.0], [-3.0, 4.0, 1.0, 1.0]])


def test_logits_to_log_softmax_in_float64():
    out = log_probs(LOGITS, "logits")
    assert out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), np_log_softmax(LOGITS.numpy()), rtol=0, atol=1e-12)


def test_logits_far_apart_do_not_underflow():
    """log(softmax(z)) in float32 would give -inf for the second class; log_softmax gives -200."""
    z = torch.tensor([[0.0, -200.0]], dtype=torch.float32)
    assert torch.isinf(torch.log(torch.softmax(z, dim=1)))[0, 1]  # what must not happen
    out = log_probs(z, "logits")
    assert out[0, 1].item() == pytest.approx(-200.0, abs=1e-9)
    big = log_probs(torch.tensor([[1000.0, 999.0]]), "logits")
    np.testing.assert_allclose(big.numpy(), [[-math.log1p(math.exp(-1)), -1 - math.log1p(math.exp(-1))]], atol=1e-12)


def test_probs_are_logged_and_zero_is_clamped():
    p = torch.tensor([[0.7, 0.3, 0.0]])
    out = log_probs(p, "probs")
    assert out.dtype == torch.float64
    np.testing.assert_allclose(out[0, :2].numpy(), np.log([0.7, 0.3]), rtol=1e-6)
    assert torch.isfinite(out).all() and out[0, 2] < -80  # log(tiny), not -inf


def test_log_probs_pass_through():
    lp = torch.log_softmax(LOGITS.double(), dim=1)
    assert torch.equal(log_probs(lp, "log_probs"), lp)


@pytest.mark.parametrize("output", ["logits", "probs", "log_probs"])
def test_check_output_accepts(output):
    assert check_output(output) == output


@pytest.mark.parametrize("output", ["logit", "Logits", "softmax", "", None])
def test_check_output_rejects(output):
    with pytest.raises(ConfigError):
        check_output(output)


@pytest.mark.parametrize(
    ("scores", "output"),
    [
        (LOGITS, "probs"),
        (torch.tensor([[0.5, 0.6]]), "probs"),  # sums to 1.1
        (torch.tensor([[-0.2, 1.2]]), "probs"),  # sums to 1, out of range
        (LOGITS, "log_probs"),
        (torch.tensor([[0.5, 0.5]]), "log_probs"),
        (torch.tensor([[0.0, float("nan")]]), "logits"),
        (torch.tensor([[0.0, float("inf")]]), "logits"),
    ],
)
def test_log_probs_rejects_misdeclared_or_non_finite_scores(scores, output):
    with pytest.raises(ModelError):
        log_probs(scores, output)


class LogitsObject:
    def __init__(self, logits):
        self.logits = logits


@pytest.mark.parametrize(
    "raw",
    [LOGITS, (LOGITS, "aux"), [LOGITS], LOGITS.numpy(), LogitsObject(LOGITS)],
    ids=["tensor", "tuple", "list", "numpy", "hf-object"],
)
def test_scores_of_accepts(raw):
    out = scores_of(raw, 2)
    assert isinstance(out, torch.Tensor) and torch.equal(out, LOGITS)


@pytest.mark.parametrize(
    ("raw", "batch"),
    [(LOGITS, 3), (LOGITS[0], 2), (LOGITS[:, :0], 2), (LOGITS[None], 2), (LOGITS.long(), 2), ("x", 2)],
)
def test_scores_of_rejects(raw, batch):
    with pytest.raises(ModelError):
        scores_of(raw, batch)


# ---------------------------------------------------------------------------------------------
# the same model as logits, probabilities and log-probabilities gives the same map


class As(torch.nn.Module):
    def __init__(self, net, kind):
        super().__init__()
        self.net, self.kind = net, kind
        self.eval()

    def forward(self, x):
        z = self.net(x)
        return {"logits": z, "probs": torch.softmax(z, dim=1), "log_probs": torch.log_softmax(z, dim=1)}[self.kind]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_kinds_agree(dtype):
    net = TinyConvNet(seed=2, dtype=dtype)
    x = random_image(3, 12, 17, seed=6)
    ranked = torch.argsort(net(x[None].to(dtype))[0], descending=True).tolist()
    results = {
        kind: occlens.explain(As(net, kind), x, ranked[1], output=kind, patch=(3, 4), stride=(2, 3))
        for kind in ("logits", "probs", "log_probs")
    }
    ref = results["logits"]
    assert np.abs(ref.delta).max() > 1e-3
    for kind, r in results.items():
        assert r.predicted == ref.predicted and r.label_map is not None, kind
        np.testing.assert_allclose(r.delta, ref.delta, rtol=0, atol=1e-6, err_msg=kind)
        np.testing.assert_allclose(r.label_map.delta, ref.label_map.delta, rtol=0, atol=1e-6, err_msg=kind)
        np.testing.assert_allclose(r.probabilities, ref.probabilities, rtol=0, atol=1e-7, err_msg=kind)
        assert r.loss == pytest.approx(ref.loss, abs=1e-6)
