"""OcclusionResult: save/load round trip, the JSON summary, top_k."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from conftest import TinyConvNet, random_image

import occlens
from occlens import OcclensError, OcclusionResult

ARRAY_FIELDS = ("delta", "pixel_map", "occluded_loss")


def _ranked(net, x):
    with torch.no_grad():
        return torch.argsort(net(x[None])[0], descending=True).tolist()


@pytest.fixture(scope="module")
def results():
    """Results with and without a label map, and with each kind of fill setting."""
    net = TinyConvNet(seed=3)
    x = random_image(3, 12, 17, seed=8)
    ranked = _ranked(net, x)
    return {
        "plain": occlens.explain(net, x, patch=(4, 5), stride=(3, 2)),
        "label-map": occlens.explain(net, x, ranked[2], patch=(3, 4), fill=(0.1, 0.2, 0.3), batch_size=3),
        "correct": occlens.explain(net, x, ranked[0], patch=5, fill="noise", seed=9),
        "target": occlens.explain(net, x, target=ranked[1], patch=(6, 4), stride=(2, 2), fill=0.25),
    }


def assert_same(a: OcclusionResult, b: OcclusionResult) -> None:
    for name in ("predicted", "label", "target", "correct", "device", "batch_size", "engine", "windows"):
        assert getattr(a, name) == getattr(b, name), name
    assert a.grid == b.grid
    assert a.settings == b.settings
    assert a.loss == b.loss
    assert a.seconds == pytest.approx(b.seconds)
    assert dict(a.meta) == dict(b.meta)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    for name in ARRAY_FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert (a.label_map is None) == (b.label_map is None)
    if a.label_map is not None:
        assert a.label_map.cls == b.label_map.cls and a.label_map.loss == b.label_map.loss
        for name in ARRAY_FIELDS:
            np.testing.assert_array_equal(getattr(a.label_map, name), getattr(b.label_map, name))


@pytest.mark.parametrize("which", ["plain", "label-map", "correct", "target"])
@pytest.mark.parametrize("suffix", ["", ".npz", ".json"])
def test_save_load_round_trip(tmp_path, results, which, suffix):
    result = results[which].with_meta(model="tiny", image="random")
    npz, js = result.save(tmp_path / f"out{suffix}")
    assert npz == tmp_path / "out.npz" and js == tmp_path / "out.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "out.npz"]  # no temp files left behind
    for given in ("out", "out.npz", "out.json"):
        loaded = OcclusionResult.load(tmp_path / given)
        assert_same(result, loaded)
        for a in (loaded.probabilities, *(getattr(loaded, n) for n in ARRAY_FIELDS)):
            assert not a.flags.writeable
        if loaded.label_map is not None:
            assert not loaded.label_map.delta.flags.writeable
    # loading with a str path too
    assert_same(result, OcclusionResult.load(str(tmp_path / "out")))


def test_save_twice_overwrites_and_keeps_the_folder_clean(tmp_path, results):
    results["plain"].save(tmp_path / "r")
    results["label-map"].save(tmp_path / "r")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.npz"]
    assert_same(results["label-map"], OcclusionResult.load(tmp_path / "r"))


def test_stem_with_other_dots_is_kept(tmp_path, results):
    npz, js = results["plain"].save(tmp_path / "cat.v2")
    assert npz.name == "cat.v2.npz" and js.name == "cat.v2.json"
    assert_same(results["plain"], OcclusionResult.load(tmp_path / "cat.v2.json"))


def test_json_has_the_documented_fields(tmp_path, results):
    result = results["label-map"]
    _, js = result.save(tmp_path / "r")
    d = json.loads(js.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    for key in (
        "format",
        "format_version",
        "predicted",
        "label",
        "correct",
        "target",
        "probability",
        "loss",
        "top_k",
        "sign",
        "grid",
        "settings",
        "device",
        "batch_size",
        "engine",
        "seconds",
        "meta",
        "occluded_loss",
        "delta",
        "label_map",
    ):
        assert key in d, key
    assert d["format"] == "occlens-result"
    assert d["predicted"] == result.predicted and d["label"] == result.label and d["correct"] is False
    assert d["probability"] == pytest.approx(result.probabilities[result.target])
    assert d["grid"] == {"height": 12, "width": 17, "rows": 4, "cols": 5, "patch": [3, 4], "stride": [3, 4]}
    assert d["settings"]["fill"] == [0.1, 0.2, 0.3] and d["settings"]["batch_size"] == 3
    np.testing.assert_array_equal(np.array(d["delta"]), result.delta)
    assert d["label_map"]["class"] == result.label and len(d["label_map"]["delta"]) == 4
    assert [c for c, _ in d["top_k"]] == [c for c, _ in result.top_k(5)]
    # the sign is said in words
    sign = d["sign"].lower()
    assert "negative" in sign and "supported" in sign and "positive" in sign


def test_json_without_label(tmp_path, results):
    _, js = results["plain"].save(tmp_path / "r")
    d = json.loads(js.read_text())
    assert d["label"] is None and d["correct"] is None and d["label_map"] is None


@pytest.mark.parametrize("k", [1, 3, 5, 50])
def test_top_k(results, k):
    result = results["plain"]
    top = result.top_k(k)
    p = result.probabilities
    assert len(top) == min(k, len(p))
    assert [c for c, _ in top] == list(np.argsort(-p))[: len(top)]
    assert [q for _, q in top] == sorted((q for _, q in top), reverse=True)
    assert top[0][0] == result.predicted
    assert all(q == p[c] for c, q in top)


def test_top_k_ties_are_stable():
    result = occlens.explain(lambda z: torch.zeros(z.shape[0], 4), torch.zeros(1, 4, 6), patch=2)
    assert [c for c, _ in result.top_k(4)] == [0, 1, 2, 3]
    assert np.all(result.delta == 0)


@pytest.mark.parametrize("broken", ["missing", "not-a-result", "no-npz"])
def test_load_errors(tmp_path, results, broken):
    if broken == "not-a-result":
        results["plain"].save(tmp_path / "r")
        (tmp_path / "r.json").write_text(json.dumps({"format": "something-else"}))
    elif broken == "no-npz":
        results["plain"].save(tmp_path / "r")
        (tmp_path / "r.npz").unlink()
    with pytest.raises(OcclensError):
        OcclusionResult.load(tmp_path / "r")


def test_result_is_frozen(results):
    with pytest.raises(AttributeError):
        results["plain"].predicted = 3


def test_saved_npz_is_byte_identical_for_the_same_result(tmp_path, results):
    result = results["label-map"]
    result.save(tmp_path / "a")
    time.sleep(2.1)  # zip timestamps have 2 s resolution, and numpy's savez stamps the current time
    result.save(tmp_path / "b")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "b.npz") as z:
        assert np.array_equal(z["pixel_map"], result.pixel_map)


def test_plotting_a_result_warns_of_nothing():
    import warnings

    from conftest import TinyConvNet, random_image

    result = occlens.explain(TinyConvNet(), random_image(), patch=4)
    assert not result.image.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns on a read-only numpy array (once per process: this must not)
        result.plot()
