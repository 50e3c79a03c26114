"""``budget=SECONDS``: the anytime map, coarse to fine, the best reached by the deadline (exact if it gets through)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TinyConvNet, random_image

import occlens
from occlens.cli import main
from occlens.core.grid import Grid
from occlens.engines import drilldown


class Clock:
    """A clock that moves only when windows are scored: one second per window."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def smooth_scorer(grid: Grid, clock: Clock):
    """Exact log-probabilities of a smooth analytic map (a bump), costing one clock second per window."""
    r, c = np.divmod(np.arange(grid.size), grid.cols)
    truth = -np.exp(-((r - grid.rows / 3) ** 2 + (c - grid.cols / 2) ** 2) / 20.0)[None, :]
    calls = []

    def score(windows, progress):
        clock.now += len(windows)
        calls.append(np.asarray(windows))
        return truth[:, windows]

    return score, truth, calls


GRID = Grid.build(120, 136, 16, 4)  # 27 x 31 windows


def test_the_first_pass_always_runs_and_scored_windows_are_exact():
    clock = Clock()
    score, truth, calls = smooth_scorer(GRID, clock)
    out, scored = drilldown.anytime(score, GRID, [0.0], deadline=0.0, clock=clock)
    first = drilldown.first_windows(GRID, drilldown.COARSE)
    assert scored == len(first) and len(calls) == 1 and np.array_equal(calls[0], first)
    assert GRID.size / 10 < scored < GRID.size / 6  # about an eighth of the windows
    np.testing.assert_array_equal(out[:, first], truth[:, first])
    assert np.isfinite(out).all()


def test_more_time_gives_a_better_map_and_enough_gives_the_exact_one():
    errors = []
    for deadline in (150.0, 350.0, 600.0, 10.0 * GRID.size):
        clock = Clock()
        score, truth, calls = smooth_scorer(GRID, clock)
        out, scored = drilldown.anytime(score, GRID, [0.0], deadline=deadline, clock=clock)
        assert clock.now <= max(deadline, len(drilldown.first_windows(GRID, drilldown.COARSE)))  # never past it
        everything = np.concatenate(calls)
        assert len(everything) == len(np.unique(everything)) == scored  # no window scored twice
        errors.append(float(np.abs(out - truth).max()))
    assert errors[0] > errors[1] > errors[2] > 0 and errors[-1] == 0.0


def test_the_checkerboard_comes_before_the_other_windows():
    clock = Clock()
    score, _, calls = smooth_scorer(GRID, clock)
    checker = set(drilldown.first_windows(GRID, 2).tolist())
    first = set(drilldown.first_windows(GRID, drilldown.COARSE).tolist())
    drilldown.anytime(score, GRID, [0.0], deadline=10.0 * GRID.size, clock=clock)
    done = set(first)
    for chunk in calls[1:]:
        done |= set(chunk.tolist())
        if set(chunk.tolist()) - checker:  # a window off the checkerboard: only once all of it is scored
            assert checker <= done
    assert len(calls) > 3 and done == set(range(GRID.size))


def test_explain_with_a_long_budget_is_exact_and_says_so():
    image, model = random_image(3, 24, 30), TinyConvNet()
    exact = occlens.explain(model, image, patch=4, stride=2, engine="dense")
    result = occlens.explain(model, image, patch=4, stride=2, engine="dense", budget=600)
    assert result.engine == "anytime+dense" and result.settings.budget == 600.0
    assert result.meta["anytime"] == {"scored": exact.grid.size, "windows": exact.grid.size, "complete": True}
    np.testing.assert_allclose(result.delta, exact.delta, atol=1e-6, rtol=0)


def test_explain_with_a_short_budget_returns_the_first_pass():
    image, model = random_image(3, 24, 30), TinyConvNet()
    result = occlens.explain(model, image, patch=4, stride=2, budget=1e-9)
    first = drilldown.first_windows(result.grid, drilldown.COARSE)
    assert result.meta["anytime"]["scored"] == len(first) and not result.meta["anytime"]["complete"]
    assert result.engine.startswith("anytime+")
    exact = occlens.explain(model, image, patch=4, stride=2)
    np.testing.assert_allclose(result.delta.ravel()[first], exact.delta.ravel()[first], atol=1e-5, rtol=0)


@pytest.mark.parametrize("budget", [0, -1, float("nan"), float("inf"), "5", True])
def test_bad_budgets_are_refused(budget):
    with pytest.raises(occlens.ConfigError, match="budget must be a positive number of seconds"):
        occlens.explain(TinyConvNet(), random_image(), patch=4, budget=budget)


def test_the_command_takes_a_budget_and_records_it(tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "a.png"
    Image.fromarray((random_image(3, 32, 32).permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(image)
    assert (
        main(
            ["explain", str(image), "--patch", "56", "--stride", "28", "--budget", "600", "--out", str(tmp_path / "o")]
        )
        == 0
    )
    saved = json.loads((tmp_path / "o" / "a.json").read_text())
    assert saved["settings"]["budget"] == 600.0 and saved["meta"]["anytime"]["complete"] is True
    capsys.readouterr()
    assert main(["explain", str(image), "--budget", "0", "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "budget must be a positive number of seconds" in err[0]
    assert not (tmp_path / "p").exists()
