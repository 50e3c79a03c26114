"""A target is a value: a kind defined here, in the tests, runs through explain, run (worker processes) and the
command's JSON without any change to the engines, and its maps are exact."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from test_runs import NAMES, colour_image, make_imagefolder, make_model

import occlens
from occlens.app.manifest import Manifest
from occlens.cli import main
from occlens.core.scoring import log_probs, scores_of
from occlens.core.targets import Bound, Class, Clean, Predicted, Target, as_target, parse_target, register


@dataclass(frozen=True)
class LogProbSum:
    """The sum of two classes' log-probabilities: one scalar, not any class's."""

    a: int
    b: int

    def bind(self, clean: Clean) -> Bound:
        head = clean.head

        def score(raw, n):
            lp = log_probs(scores_of(raw, n), head, [self.a, self.b]).numpy()
            return lp.sum(axis=1, keepdims=True)

        return Bound((f"log P({self.a}) + log P({self.b})",), score)

    def spec(self) -> str:
        return f"logp-sum:{self.a},{self.b}"


register("logp-sum", lambda args: LogProbSum(*(int(v) for v in args.split(","))))


class Mix(torch.nn.Module):
    """A small CNN (traceable, so the incremental engine can run it) with 4 classes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.head = torch.nn.Linear(6, 4)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_the_protocol_and_its_spellings():
    assert isinstance(LogProbSum(1, 2), Target) and isinstance(Predicted(), Target)
    assert as_target(None) == Predicted() and as_target(3) == Class(3) and as_target("tabby") == Class("tabby")
    assert parse_target("logp-sum:1,2") == LogProbSum(1, 2)
    assert parse_target(LogProbSum(1, 2).spec()) == LogProbSum(1, 2)  # the spelling reads back
    assert pickle.loads(pickle.dumps(LogProbSum(1, 2))) == LogProbSum(1, 2)
    with pytest.raises(occlens.ConfigError, match="target must be a class index or name, a target .* or a function"):
        as_target(2.5)


@pytest.mark.parametrize("engine", ["dense", "incremental"])
def test_a_target_of_the_tests_own_kind_is_exact(engine):
    model = Mix().eval()
    image = torch.rand(3, 20, 24, generator=torch.Generator().manual_seed(1))
    keywords = dict(patch=(5, 6), stride=(3, 4), engine=engine)
    got = occlens.explain(model, image, target=LogProbSum(1, 3), **keywords)
    one, three = (occlens.explain(model, image, target=k, **keywords) for k in (1, 3))
    # δL of a sum of log-probabilities is the sum of the classes' δL (L = -s, δL = L - L_occl)
    np.testing.assert_allclose(got.delta, one.delta + three.delta, atol=1e-9)
    assert got.loss == pytest.approx(one.loss + three.loss, abs=1e-12)
    assert got.target == "logp-sum:1,3" and got.engine == engine
    assert got.predicted == one.predicted  # Q is still the model's prediction
    # by hand: every occluded copy's sum of the two log-probabilities
    grid, fill = got.grid, 0.5
    with torch.no_grad():
        clean = torch.log_softmax(model(image[None]).double(), 1)[0]
        want = np.empty(grid.size)
        for i, ((r0, r1), (c0, c1)) in enumerate(
            (rs, cs) for rs in zip(*grid.row_spans(), strict=True) for cs in zip(*grid.col_spans(), strict=True)
        ):
            x = image.clone()
            x[:, r0:r1, c0:c1] = fill
            lp = torch.log_softmax(model(x[None]).double(), 1)[0]
            want[i] = float(lp[1] + lp[3] - clean[1] - clean[3])  # δL = s_occl - s_clean
    np.testing.assert_allclose(got.delta.ravel(), want, atol=1e-6)  # float32 batches against one by one


def test_a_targets_map_beside_the_true_class_and_every_class():
    model = Mix().eval()
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2))
    got = occlens.explain(model, image, label=2, target=LogProbSum(0, 1), patch=4, all_classes=True)
    plain = occlens.explain(model, image, label=2, patch=4, all_classes=True)
    np.testing.assert_allclose(got.label_map.delta, plain.label_map.delta if plain.label_map else plain.delta)
    np.testing.assert_array_equal(got.all_delta, plain.all_delta)
    np.testing.assert_allclose(got.delta, plain.all_delta[0] + plain.all_delta[1], atol=1e-5)  # float32


@pytest.mark.slow  # worker processes start (each imports torch)
def test_a_target_through_a_run_with_workers_and_the_json(tmp_path):
    model_path = make_model(tmp_path / "model")
    make_imagefolder(tmp_path / "data", 18, broken=False)  # 18 images: two worker processes
    model = occlens.load_model(str(model_path))
    report = occlens.run(tmp_path / "data", tmp_path / "out", model, target=LogProbSum(0, 2), patch=8, workers=2)
    assert report.summary.explained == 18 and not report.summary.failed
    key = f"{NAMES[1]}/img001.png"
    saved = json.loads((tmp_path / "out" / "images" / key.replace(".png", ".json")).read_text())
    assert saved["target"] == "logp-sum:0,2" and saved["probability"] is None
    alone = occlens.explain(model, colour_image(1, 1), target=LogProbSum(0, 2), patch=8)
    np.testing.assert_allclose(np.array(saved["delta"]), alone.delta, rtol=1e-6, atol=1e-6)
    with Manifest(tmp_path / "out") as manifest:
        assert manifest.settings()["options"]["target"] == "logp-sum:0,2"  # the fingerprint records the spelling
    again = occlens.run(tmp_path / "data", tmp_path / "out", model, target=LogProbSum(0, 2), patch=8, workers=2)
    assert again.done_now == 0  # the same target resumes


def test_the_command_spells_a_registered_target(tmp_path, capsys):
    model_path = make_model(tmp_path / "model")
    colour_image(2, 5).save(tmp_path / "img.png")
    code = main(["explain", str(tmp_path / "img.png"), "--model", str(model_path), "--target", "logp-sum:1,2",
                 "--patch", "8", "--out", str(tmp_path / "out")])  # fmt: skip
    capsys.readouterr()
    assert code == 0
    saved = json.loads((tmp_path / "out" / "img.json").read_text())
    assert saved["target"] == "logp-sum:1,2" and saved["meta"]["target_name"] == "logp-sum:1,2"
    alone = occlens.explain(occlens.load_model(str(model_path)), tmp_path / "img.png", target=LogProbSum(1, 2), patch=8)
    np.testing.assert_allclose(np.array(saved["delta"]), alone.delta, atol=1e-12)
