"""The library does what the command does: the same results, the same files, runs that resume each other.

Every test here runs the real command (``occlens.cli.main``) and the real Python API side by side on
real files; nothing is mocked.
"""

from __future__ import annotations

import json
import sqlite3

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from test_runs import NAMES, SIZE, Colour, colour_image, make_imagefolder, make_model

import occlens
from occlens.app.manifest import FILE
from occlens.app.outputs import file_stems, output_stems
from occlens.cli import main
from occlens.core.samples import sample
from occlens.models import LoadedModel, Preprocess, pick_device

matplotlib.use("Agg")
CHELSEA = sample("chelsea")
WINDOW = ["--patch", "56"]  # 4 x 4 windows on the default model's 224 x 224 input: quick on a CPU


def cli(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def without_times(d: dict) -> dict:
    """A result's JSON without what differs between two runs of the same explanation: the clock."""
    d = {k: v for k, v in d.items() if k != "seconds"}
    d["meta"] = {k: v for k, v in d["meta"].items() if k != "timings"}
    return d


@pytest.fixture(scope="module")
def default_model():
    return occlens.load_model()


# -- explain: Python equals the command -------------------------------------------------------------


def test_python_result_equals_the_commands_json_and_npz(default_model, tmp_path, capsys):
    code, _, _ = cli(["explain", CHELSEA.path, "--label", "tabby", *WINDOW, "--out", tmp_path], capsys)
    assert code == 0
    written = json.loads((tmp_path / "chelsea.json").read_text())
    result = occlens.explain(default_model, str(CHELSEA.path), label="tabby", patch=56)
    assert without_times(result.to_dict()) == without_times(written)
    assert written["meta"]["label_name"] == "tabby" and written["label"] == 281
    with np.load(tmp_path / "chelsea.npz") as z:
        assert set(z.files) == {"probabilities", "occluded_loss", "delta", "pixel_map", "label_occluded_loss",
                                "label_delta", "label_pixel_map"}  # fmt: skip
        assert np.array_equal(z["delta"], result.delta) and np.array_equal(z["label_delta"], result.label_map.delta)
        assert np.array_equal(z["pixel_map"], result.pixel_map)
        assert np.array_equal(z["probabilities"], result.probabilities)


def test_a_loaded_model_brings_its_preprocessing_and_names(default_model):
    photo = Image.open(CHELSEA.path)
    by_path = occlens.explain(default_model, CHELSEA.path, label=281, patch=56)
    by_pil = occlens.explain(default_model, photo, label="Tabby", patch=56)  # names are case-insensitive
    by_tensor = occlens.explain(default_model, default_model.preprocess(photo), label="281", patch=56)
    assert by_path.grid.height == by_path.grid.width == 224  # resized and cropped to the model's input
    for other in (by_pil, by_tensor):
        assert np.array_equal(other.delta, by_path.delta) and other.label == by_path.label == 281
    assert by_path.meta["predicted_name"] == default_model.labels[by_path.predicted]
    assert by_path.meta["image"] == str(CHELSEA.path) and by_tensor.meta["image"] is None
    assert [row["name"] for row in by_path.meta["top_k"]][:1] == [default_model.labels[by_path.predicted]]
    as_target = occlens.explain(default_model, CHELSEA.path, target="tabby", patch=56)
    assert as_target.target == 281 and np.array_equal(as_target.delta, by_path.label_map.delta)


def test_class_names_need_known_names_and_unknown_names_get_suggestions(default_model, net, image):
    with pytest.raises(occlens.ConfigError, match=r"label 'tabbby' is not a class name; did you mean 'tabby'"):
        occlens.explain(default_model, CHELSEA.path, label="tabbby", patch=56)
    with pytest.raises(occlens.ConfigError, match=r"target 1000 is out of range: the model has 1000 classes"):
        occlens.explain(default_model, CHELSEA.path, target=1000, patch=56)
    with pytest.raises(occlens.ConfigError, match=r"label 'cat' is a string, but the model's class names are unknown"):
        occlens.explain(net, image, label="cat", patch=4)


def test_a_bare_module_still_reads_a_file_at_its_own_size(net, tmp_path):
    path = tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 28, 3), dtype=np.uint8)).save(path)
    with pytest.warns(UserWarning, match="no preprocessing of its own, so image files and PIL images are explained"):
        result = occlens.explain(net, path, patch=4)  # never silently (tests/test_preprocess.py)
    assert (result.grid.height, result.grid.width) == (20, 28)
    same = occlens.explain(net, Image.open(path), patch=4, preprocess="none")  # on purpose: no warning
    assert np.array_equal(result.delta, same.delta)


# -- the result in a notebook ---------------------------------------------------------------------------


def test_repr_is_one_paragraph_and_the_figure_comes_with_the_result(default_model, tmp_path):
    result = occlens.explain(default_model, CHELSEA.path, label="tabby", patch=56)
    text = repr(result)
    assert "\n" not in text and len(text) < 400 and "[[" not in text  # no arrays dumped into the notebook
    assert "Q=282 'tiger cat'" in text and "K=281 'tabby' (wrong)" in text and "4x4 windows" in text
    assert f"{result.delta.min():.4g}" in text and "negative: the window supported the class" in text
    png = result._repr_png_()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    shown = Image.open(__import__("io").BytesIO(png))
    assert shown.size[0] > 400 and shown.size[1] > 400  # both rows: K differs from Q
    figure = result.plot()
    assert len(figure.axes) >= 6
    result.save(tmp_path / "r")
    loaded = occlens.OcclusionResult.load(tmp_path / "r")
    assert "Q=282 'tiger cat'" in repr(loaded)  # names from the saved meta
    assert loaded._repr_png_() is None
    with pytest.raises(occlens.OcclensError, match=r"does not hold its image.*result.plot\(image\)"):
        loaded.plot()
    assert len(loaded.plot(result.image, labels=default_model.labels).axes) == len(figure.axes)


# -- dataset runs: Python and the command resume each other -----------------------------------------------


def test_python_run_resumes_a_run_the_command_started_and_the_other_way_round(tmp_path, capsys):
    model = make_model(tmp_path / "model")
    data, out = tmp_path / "data", tmp_path / "out"
    make_imagefolder(data, 6, broken=False)
    code, _, err = cli(["run", data, "--out", out, "--model", model, "--patch", "8", "--target", "1",
                        "--workers", "0"], capsys)  # fmt: skip
    assert code == 0 and "6 to do" in err
    report = occlens.run(data, out, str(model), patch=8, target="green", workers=0)  # "green" is class 1
    assert "6 done before, 0 to do" in capsys.readouterr().err
    assert report.summary.explained == 6 and report.done_now == 0 and report.index.is_file()
    assert "explained 6 of 6 images" in str(report) and "RunReport(" in repr(report)
    for i in range(6, 9):  # three more images: each side does only those
        colour_image(i % 3, i).save(data / NAMES[i % 3] / f"new{i}.png")
    report = occlens.run(data, out, occlens.load_model(model), patch=8, target=1, workers=0)
    assert report.done_now == 3 and "6 done before, 3 to do" in capsys.readouterr().err
    colour_image(2, 9).save(data / "blue" / "last.png")
    code, _, err = cli(["run", data, "--out", out, "--model", model, "--patch", "8", "--target", "green"], capsys)
    assert code == 0 and "9 done before, 1 to do" in err
    db = sqlite3.connect(out / FILE)
    assert db.execute("SELECT COUNT(*) FROM images WHERE status = 'ok'").fetchone() == (10,)
    db.close()


def test_what_changes_the_outputs_is_refused_and_what_does_not_is_not(tmp_path, capsys):
    model = make_model(tmp_path / "model")
    data, out = tmp_path / "data", tmp_path / "out"
    make_imagefolder(data, 3, broken=False)
    occlens.run(data, out, str(model), patch=8, workers=0)
    # the batch size, the workers and the default stride written out do not change the outputs
    assert occlens.run(data, out, str(model), patch=8, stride=8, batch_size=3, workers=1).done_now == 0
    with pytest.raises(occlens.ConfigError, match=r"\(options.patch: \[8, 8\] -> \[4, 4\]; options.stride"):
        occlens.run(data, out, str(model), patch=4, workers=0)
    with pytest.raises(occlens.ConfigError, match=r"options.fill: \"gray\" -> \"black\""):
        occlens.run(data, out, str(model), patch=8, fill="black", workers=0)
    assert occlens.run(data, out, str(model), patch=4, workers=0, force=True).done_now == 3


def test_a_hand_built_model_is_told_apart_by_its_parameters(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    make_imagefolder(data, 3, broken=False)
    pre = Preprocess(size=(SIZE, SIZE), resize=None, interpolation="bilinear", mean=(0.0,), std=(1.0,))
    model = LoadedModel("colour", Colour(8.0).eval(), pre, tuple(NAMES))
    assert occlens.run(data, out, model, patch=8, workers=0).summary.explained == 3
    assert occlens.run(data, out, model, patch=8, workers=0).done_now == 0
    other = LoadedModel("colour", Colour(2.0).eval(), pre, tuple(NAMES))  # same name, other parameters
    with pytest.raises(occlens.ConfigError, match=r"model.parameters"):
        occlens.run(data, out, other, patch=8, workers=0)
    with pytest.raises(occlens.ConfigError, match=r"a run on Ray loads the model again in every worker") as info:
        occlens.run(data, tmp_path / "ray", model, patch=8, ray=True, workers=1)  # Ray workers cannot rebuild it
    assert "\n" not in str(info.value) and not (tmp_path / "ray").exists()


def test_a_model_in_training_mode_is_warned_about_once_per_run_and_left_in_it(tmp_path):
    data = tmp_path / "data"
    make_imagefolder(data, 3, broken=False)
    pre = Preprocess(size=(SIZE, SIZE), resize=None, interpolation="bilinear", mean=(0.0,), std=(1.0,))
    module = torch.nn.Sequential(Colour(8.0), torch.nn.Dropout(0.5)).train()
    module[0].eval()  # a mix of modes, each restored as it was
    model = LoadedModel("colour", module, pre, tuple(NAMES))
    for workers in (0, 1):
        with pytest.warns(UserWarning, match="training mode") as caught:
            report = occlens.run(data, tmp_path / f"out{workers}", model, patch=8, workers=workers)
        assert report.summary.explained == 3
        assert len([w for w in caught if "training mode" in str(w.message)]) == 1  # one run: one warning, not 3
        assert [m.training for m in module] == [False, True] and module.training


def test_run_and_evaluate_refuse_a_model_without_preprocessing(net, tmp_path):
    for call in (lambda: occlens.run(tmp_path, tmp_path / "out", net), lambda: occlens.evaluate(["x.png"], None, net)):
        with pytest.raises(occlens.ConfigError, match=r"model must be a LoadedModel .* got TinyConvNet") as info:
            call()
        assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_python_evaluate_equals_the_commands_csv(tmp_path, capsys):
    model = make_model(tmp_path / "model")
    colour_image(2, 0).save(tmp_path / "b.png")
    code, out, _ = cli(["evaluate", tmp_path / "b.png", "--model", model, "--patch", "8", "--steps", "8",
                        "--methods", "occlusion,random", "--out", tmp_path / "cli"], capsys)  # fmt: skip
    assert code == 0
    evaluation = occlens.evaluate(tmp_path / "b.png", tmp_path / "py", str(model), methods="occlusion,random",
                                  steps=8, patch=8)  # fmt: skip
    assert (tmp_path / "py" / "evaluate.csv").read_text() == (tmp_path / "cli" / "evaluate.csv").read_text()
    assert [r["method"] for r in evaluation.rows] == ["occlusion", "random"]
    assert str(evaluation) in out
    with pytest.raises(occlens.ConfigError, match=r"unknown method 'gradcam'"):
        occlens.evaluate(tmp_path / "b.png", None, str(model), methods="gradcam")


# -- one rule, one place ----------------------------------------------------------------------------------


def test_one_stem_scheme_for_explain_and_run():
    assert file_stems(["a/x.png", "b/x.png", "x.jpg"]) == ["x_png", "x-2", "x_jpg"]
    assert file_stems(["..png"]) == ["_"]  # not ".": its outputs would land beside the folder, as "..json"
    assert file_stems(["in/..png", "..jpg"]) == ["__png", "__jpg"]
    assert output_stems(["../x.png", "a/../../y.jpg"]) == {"../x.png": "__/x", "a/../../y.jpg": "a/__/__/y"}


def test_explain_never_writes_outside_out(net, tmp_path, capsys):
    model = make_model(tmp_path / "model")
    (tmp_path / "in").mkdir()
    colour_image(0, 1).save(tmp_path / "in" / "..png", format="PNG")
    out = tmp_path / "in" / "out"
    code, _, _ = cli(["explain", tmp_path / "in" / "..png", "--model", model, "--patch", "8", "--out", out], capsys)
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["_.json", "_.npz", "_.png"]
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["..png", "out"]


def test_one_device_rule():
    assert pick_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu") == torch.device("cpu")
    for bad in ("tpu", "gpu0", "cuda:x"):
        with pytest.raises(occlens.ConfigError, match=rf"unknown device '{bad}': --device must be cpu or cuda"):
            pick_device(bad, "--device")
    if not torch.cuda.is_available():
        with pytest.raises(occlens.ConfigError, match="CUDA is not available here"):
            occlens.load_model(device="cuda")


def test_options_are_frozen_and_checked_when_built():
    from dataclasses import FrozenInstanceError

    from occlens.app.options import Options
    from occlens.core.errors import flag

    options = Options(top_k=3)
    with pytest.raises(FrozenInstanceError):
        options.top_k = 4
    assert Options().workers >= 1
    bad = {  # Python spells the option as a keyword, the command line as a flag (OcclensError.render)
        ("top_k must be an int >= 0, got -1", "--top-k must be"): dict(top_k=-1),
        ("workers must be an int >= 0, got -2", "--workers must be"): dict(workers=-2),
        ("ray must be True or False, got 'yes'", "--ray must be"): dict(ray="yes"),
        ("target must be a class index or name", "--target must be"): dict(target=2.5),
    }
    for (python, command), options in bad.items():
        with pytest.raises(occlens.ConfigError) as caught:
            Options(**options)
        name, value = next(iter(options.items()))
        assert str(caught.value).startswith(python)
        assert caught.value.render(flag).startswith(command)
        assert (caught.value.option, caught.value.value) == (name, value)


def test_saliency_and_metrics_take_a_loaded_model_as_explain_does(tmp_path):
    path = make_model(tmp_path / "model")
    model = occlens.load_model(path)
    colour_image(1, 3).save(tmp_path / "g.png")
    image = model.preprocess(Image.open(tmp_path / "g.png"))
    by_loaded = occlens.saliency(model, tmp_path / "g.png", target="blue")
    assert np.array_equal(by_loaded, occlens.saliency(model.module, image, target=2))
    pixel_map = occlens.explain(model, tmp_path / "g.png", patch=8).pixel_map
    curve = occlens.metrics.deletion_auc(model, tmp_path / "g.png", pixel_map, first="lowest", steps=8)
    assert curve.auc == occlens.metrics.deletion_auc(model.module, image, pixel_map, first="lowest", steps=8).auc
    check = occlens.metrics.randomization_check(model, tmp_path / "g.png", stages=1)
    assert check.original.shape == (SIZE, SIZE)


def test_one_batching_loop_halves_on_out_of_memory():
    from occlens.engines.memory import in_batches

    seen = []

    def step(start, stop):  # a device that holds at most 3 items at once
        if stop - start > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        seen.append((start, stop))

    assert in_batches(10, 16, torch.device("cpu"), "window", step) == 2
    assert seen == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    with pytest.raises(occlens.ModelError, match="out of memory on cpu even one window at a time"):
        in_batches(3, 1, torch.device("cpu"), "window", lambda a, b: step(a, b + 5))


def test_a_list_of_images_gives_a_list_of_results_with_one_label_each():
    from conftest import TinyConvNet, random_image

    model = TinyConvNet()
    images = [random_image(3, 12, 17, seed=s) for s in range(3)]
    results = occlens.explain(model, images, [1, None, 3], patch=4, target=[None, 2, None])
    assert isinstance(results, list) and len(results) == 3
    alone = [
        occlens.explain(model, images[0], 1, patch=4),
        occlens.explain(model, images[1], patch=4, target=2),
        occlens.explain(model, images[2], 3, patch=4),
    ]
    for got, want in zip(results, alone, strict=True):  # the list shares batches: the same map, to rounding
        assert (got.label, got.target) == (want.label, want.target)
        np.testing.assert_allclose(got.delta, want.delta, atol=1e-6, rtol=0)
    assert [r.label for r in occlens.explain(model, images[:2], 4, patch=4)] == [4, 4]  # one label for all
    with pytest.raises(occlens.ConfigError, match="label is a list of 2 but there are 3 images"):
        occlens.explain(model, images, [1, 2], patch=4)
    with pytest.raises(occlens.ConfigError, match="image is an empty list"):
        occlens.explain(model, [], patch=4)


def test_without_a_patch_the_windows_are_the_models_patches(tmp_path):
    """A LoadedModel with a patch embedding (ViT-like) gets windows of whole patches unless a patch is given:
    the smallest multiple of its patch size that is at least 16."""
    pre = Preprocess(size=(SIZE, SIZE), resize=None, interpolation="bilinear", mean=(0.0,), std=(1.0,))
    vit_like = LoadedModel("colour", Colour(8.0).eval(), pre, tuple(NAMES), patch=12)
    swin_like = LoadedModel("colour", Colour(8.0).eval(), pre, tuple(NAMES), patch=4)
    plain = LoadedModel("colour", Colour(8.0).eval(), pre, tuple(NAMES))
    image = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    assert occlens.explain(vit_like, image).grid.patch == (24, 24) == occlens.explain(vit_like, image).grid.stride
    assert occlens.explain(vit_like, image, stride=12).grid.stride == (12, 12)
    assert occlens.explain(vit_like, image, patch=8).grid.patch == (8, 8)  # given: as given
    assert occlens.explain(swin_like, image).grid.patch == (16, 16)  # 4 x 4 patches: windows of 16, aligned
    assert occlens.explain(plain, image).grid.patch == (16, 16)  # no patch embedding: the default window
    data = tmp_path / "data"
    make_imagefolder(data, 2, broken=False)
    occlens.run(data, tmp_path / "out", vit_like, workers=0)
    saved = json.loads(next((tmp_path / "out" / "images").rglob("*.json")).read_text())
    assert saved["grid"]["patch"] == [24, 24]
    assert occlens.run(data, tmp_path / "out", vit_like, patch=24, workers=0).done_now == 0  # resolved: the same run
