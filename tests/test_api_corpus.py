"""A corpus of bad arguments, given to the public Python API as a user would (``tests/test_corpus.py`` does the
same for the command).

One table: each case is a call a user can make; it must raise an :class:`occlens.OcclensError` whose message is
one line naming the argument, the value received and the fix, and whose traceback ends at the user's call (the
frames inside occlens, where the error was found, say nothing a user can act on). Then hypothesis gives wrong
values to each argument of the public functions and methods: whatever it tries is done or refused that way,
never a raw ``TypeError`` from deep inside.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyConvNet, assert_one_line_naming, random_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from matplotlib.figure import Figure

import occlens
from occlens import OcclensError, OcclusionResult

NET = TinyConvNet(classes=5)
IMG = random_image()  # 3 x 12 x 17
RESULT = occlens.explain(NET, IMG, patch=4)
EVERY = occlens.explain(NET, IMG, patch=4, all_classes=True)
FIGURE = Figure()
ONE_AX, TWO_AXES = FIGURE.subplots(1, 1), FIGURE.subplots(1, 2)
PACKAGE = str(Path(occlens.__file__).resolve().parent)


def saved(tmp: Path) -> Path:
    RESULT.save(tmp / "r")
    return tmp / "r"


class Case:
    """``call(tmp)`` must raise an OcclensError for ``argument`` whose message names ``values`` and the fix."""

    def __init__(self, call, argument: str, *values):
        self.call, self.argument, self.values = call, argument, values


CASES = {
    # figures: the axes, the image, the names
    "plot-one-ax": Case(lambda t: occlens.plot(RESULT, IMG, ax=ONE_AX), "ax", "1 Axes", "fig.subplots(1, 3)"),
    "plot-two-axes": Case(lambda t: occlens.plot(RESULT, IMG, ax=TWO_AXES), "ax", "2 Axes", "3 per row"),
    "plot-ax-a-figure": Case(lambda t: RESULT.plot(ax=FIGURE), "ax", "Figure"),
    "plot-ax-a-string": Case(lambda t: RESULT.plot(ax="left"), "ax", "'left'"),
    "plot-arguments-swapped": Case(lambda t: occlens.plot(IMG, RESULT), "result", "Tensor", "occlens.plot(result"),
    "plot-image-of-another-size": Case(
        lambda t: occlens.plot(RESULT, random_image(height=10)), "image", "10x17", "12x17"
    ),  # fmt: skip
    "plot-labels-a-string": Case(lambda t: RESULT.plot(labels="abcde"), "labels", "'abcde'"),
    "plot-labels-too-few": Case(lambda t: RESULT.plot(labels=["cat", "dog"]), "labels", "2 classes", "5"),
    "plot-loaded-without-its-image": Case(
        lambda t: OcclusionResult.load(saved(t)).plot(), "image", "result.plot(image)"
    ),  # fmt: skip
    # results on disk
    "save-into-a-missing-folder": Case(lambda t: RESULT.save(t / "missing" / "r"), "path", "missing", "os.makedirs"),
    "save-under-a-file": Case(lambda t: RESULT.save(saved(t).with_suffix(".json") / "r"), "path", "is a file"),
    "save-a-module-as-path": Case(lambda t: RESULT.save(NET), "path", "TinyConvNet"),
    "save-an-empty-path": Case(lambda t: RESULT.save(""), "path", "empty string"),
    "load-a-module": Case(lambda t: OcclusionResult.load(NET), "path", "TinyConvNet"),
    "load-none": Case(lambda t: OcclusionResult.load(None), "path", "None"),
    "load-a-missing-file": Case(lambda t: OcclusionResult.load(t / "nothing"), "path", "nothing"),
    # every class
    "instead-not-computed": Case(lambda t: RESULT.instead(), "all_classes", "all_classes=True"),
    "instead-negative": Case(lambda t: EVERY.instead(-1), "k", -1),
    "instead-a-string": Case(lambda t: EVERY.instead("3"), "k", "'3'"),
    "top-k-a-float": Case(lambda t: RESULT.top_k(2.5), "k", 2.5),
    # explain: paths, models and arguments in the wrong place
    "explain-arguments-swapped": Case(lambda t: occlens.explain(IMG, NET), "model", "Tensor", "explain(model, image)"),
    "explain-a-model-as-image": Case(lambda t: occlens.explain(NET, NET), "image", "TinyConvNet", "explain(model"),
    "explain-an-empty-path": Case(lambda t: occlens.explain(NET, ""), "image", "empty string"),
    "explain-a-model-path": Case(
        lambda t: occlens.explain(str(t / "m.pt"), IMG), "model", "m.pt", "occlens.load_model("
    ),  # fmt: skip
    "explain-an-int-dtype": Case(lambda t: occlens.explain(NET, (IMG * 255).int()), "image", "int32"),
    "explain-a-batch": Case(
        lambda t: occlens.explain(NET, IMG[None].expand(2, -1, -1, -1), patch=4),
        "image",
        "(2, 3, 12, 17)",
        "one image at a time",
    ),
    "explain-top-k-a-string": Case(lambda t: occlens.explain(NET, IMG, top_k="5"), "top_k", "'5'"),
    "explain-max-pixels-negative": Case(lambda t: occlens.explain(NET, IMG, max_pixels=-1), "max_pixels", -1),
    # run and evaluate take paths
    "run-a-model-as-dataset": Case(
        lambda t: occlens.run(NET, t / "out"), "dataset", "TinyConvNet", "occlens.run(DATASET, OUT"
    ),  # fmt: skip
    "run-a-model-as-out": Case(lambda t: occlens.run(t, NET), "out", "TinyConvNet"),
    "run-an-empty-dataset-path": Case(lambda t: occlens.run("", t / "out"), "dataset", "empty string"),
    "evaluate-a-model": Case(lambda t: occlens.evaluate(NET), "images", "TinyConvNet"),
    "evaluate-tensors": Case(lambda t: occlens.evaluate([IMG], model=NET), "images", "Tensor", "occlens.metrics"),
    # settings
    "settings-patch-a-string": Case(lambda t: occlens.Settings(patch="a"), "patch", "'a'"),
}


def frames_inside_occlens(tb) -> list[traceback.FrameSummary]:
    return [f for f in traceback.extract_tb(tb) if f.filename.startswith(PACKAGE)]


@pytest.mark.parametrize("name", CASES)
def test_api_corpus(name, tmp_path):
    case = CASES[name]
    with pytest.raises(OcclensError) as info:
        case.call(tmp_path)
    err = info.value
    assert_one_line_naming(err, *case.values)
    assert err.option == case.argument and case.argument in str(err), (err.option, str(err))
    # the fix, in the message and as a field (for "must be X, got Y", X is the fix)
    assert any(part and part in str(err) for part in (err.fix, err.expected)), (err.fix, err.expected, str(err))
    inside = frames_inside_occlens(info.tb)
    assert len(inside) == 1, [f"{f.filename}:{f.lineno} {f.name}" for f in inside]  # the public function's


def test_the_traceback_ends_at_the_users_call_unless_asked(monkeypatch):
    def users_code():
        return occlens.explain(NET, IMG, patch=0)  # the user's line: the last frame outside occlens

    with pytest.raises(occlens.ConfigError) as info:
        users_code()
    frames = traceback.extract_tb(info.tb)
    assert frames[-2].name == "users_code" and frames[-1].name == "explain"  # named after the function
    assert frames[-1].filename.startswith(PACKAGE) and len(frames_inside_occlens(info.tb)) == 1
    assert info.value.__suppress_context__  # no "During handling of the above exception" from inside
    monkeypatch.setenv("OCCLENS_DEBUG", "1")
    with pytest.raises(occlens.ConfigError) as info:
        users_code()
    assert len(frames_inside_occlens(info.tb)) > 3  # every frame, for whoever debugs occlens


def test_a_models_own_error_keeps_its_cause_and_frames():
    def broken(z):
        if z.shape[0] > 1:
            raise ValueError("the model's own bug")
        return NET(z)

    with pytest.raises(occlens.ModelError) as info:
        occlens.explain(broken, IMG, patch=4, batch_size=4)
    cause = info.value.__cause__
    assert isinstance(cause, ValueError) and "the model's own bug" in str(cause)
    assert traceback.extract_tb(cause.__traceback__)[-1].name == "broken"  # where the user's model failed
    assert len(frames_inside_occlens(info.tb)) == 1


def test_public_functions_and_methods_raise_from_themselves():
    """Each function of the package root, and the result's methods, is wrapped (what makes the traceback short)."""
    functions = [getattr(occlens, n) for n in occlens.__all__ if callable(getattr(occlens, n))]
    functions = [f for f in functions if not isinstance(f, type)]
    assert {f.__name__ for f in functions} >= {"explain", "run", "evaluate", "load_model", "plot", "saliency"}
    methods = [OcclusionResult.plot, OcclusionResult.save, OcclusionResult.load, OcclusionResult.instead,
               OcclusionResult.top_k, occlens.Settings.__init__]  # fmt: skip
    assert all(getattr(f, "__occlens_public__", False) for f in functions + methods)


# -- fuzzing ---------------------------------------------------------------------------------------------------

WRONG = [None, True, -1, 0, 2.5, float("nan"), 10**12, "", "  ", "bogus", "/", b"bytes", [], [1, 2], (0,), {},
         {"a": 1}, object(), NET, IMG, IMG[None], torch.zeros(3, dtype=torch.int64), np.zeros(3),
         np.zeros((12, 17, 3), np.complex64), FIGURE, ONE_AX, RESULT]  # fmt: skip
wrong = st.sampled_from(WRONG)


def refused_cleanly(call) -> None:
    """``call()`` is done, or refused with a one-line OcclensError raised from the public function."""
    try:
        call()
    except OcclensError as err:
        assert str(err) and "\n" not in str(err), str(err)
        assert len(frames_inside_occlens(err.__traceback__)) == 1, err


# progress is left out: a module passed as progress is called as progress(done, total), and a tensor's message
# runs over several lines (core.progress, its own work)
EXPLAIN = ["model", "image", "label", "patch", "stride", "fill", "output", "target", "batch_size", "seed",
           "engine", "all_classes", "threshold", "top_k", "max_pixels", "layout", "precision", "preprocess",
           "settings"]  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(argument=st.sampled_from(EXPLAIN), value=wrong, other=st.sampled_from(EXPLAIN), second=st.none() | wrong)
def test_explain_refuses_wrong_arguments_cleanly(argument, value, other, second):
    given = {"model": NET, "image": IMG, "patch": 4, argument: value}
    if other != argument and second is not None:
        given[other] = second
    refused_cleanly(lambda: occlens.explain(**given))


PLOT = ["result", "image", "labels", "ax", "true_class", "saliency"]


@settings(max_examples=60, deadline=None)
@given(argument=st.sampled_from(PLOT), value=wrong)
def test_plot_refuses_wrong_arguments_cleanly(argument, value):
    given = {"result": RESULT, "image": IMG, argument: value}
    refused_cleanly(lambda: occlens.plot(**given))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["save", "load", "instead", "top_k", "plot"]), value=wrong)
def test_result_methods_refuse_wrong_arguments_cleanly(tmp_path, monkeypatch, method, value):
    monkeypatch.chdir(tmp_path)  # a relative name is saved here
    call = {"save": lambda: EVERY.save(value), "load": lambda: OcclusionResult.load(value),
            "instead": lambda: EVERY.instead(value), "top_k": lambda: EVERY.top_k(value),
            "plot": lambda: EVERY.plot(value)}[method]  # fmt: skip
    refused_cleanly(call)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(function=st.sampled_from(["run", "evaluate"]), argument=st.sampled_from([0, 1]),
       value=st.sampled_from([v for v in WRONG if not isinstance(v, str)]))  # fmt: skip
def test_run_and_evaluate_refuse_what_is_not_a_path(tmp_path, function, argument, value):
    """Paths that exist would start a run; anything else that is no path is refused before any work."""
    if function == "run":
        args = [tmp_path / "data", tmp_path / "out"]
        args[argument] = value
        call = lambda: occlens.run(*args, model=NET)  # noqa: E731
    else:
        call = lambda: occlens.evaluate(value, model=NET) if argument == 0 else occlens.evaluate([value])  # noqa: E731
    refused_cleanly(call)
    assert not (tmp_path / "out").exists()
