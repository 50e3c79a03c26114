"""Each option is declared once (occlens.core.declare): the public functions' keywords, the command's flags,
the fingerprint and ``Settings()`` all agree with the declarations."""

from __future__ import annotations

import argparse
import inspect
import subprocess
import sys

import numpy as np
import pytest
import torch

import occlens
from occlens.app.faithfulness import Scoring
from occlens.app.options import Options
from occlens.cli.commands import COMMANDS
from occlens.cli.parser import parser
from occlens.core.declare import declarations, output_names
from occlens.core.settings import Settings

SETTINGS = {d.name: d for d in declarations(Settings)}
OPTIONS = {d.name: d for d in declarations(Options)}
# what each entry does not take, and why: the model brings its head (run, evaluate); evaluate scores the
# predicted class's map alone
NOT_TAKEN = {"explain": set(), "run": {"output"}, "evaluate": {"output", "all_classes", "threshold"}}


def keywords(function) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(function).parameters)


@pytest.mark.parametrize("entry", ["explain", "run", "evaluate"])
def test_every_entrys_keywords_are_the_declarations(entry):
    params = keywords(getattr(occlens, entry))
    for name, d in SETTINGS.items():
        if name in NOT_TAKEN[entry]:
            assert name not in params
            continue
        assert name in params, f"{entry} lacks the setting {name}"
        assert params[name].default == d.default, f"{entry}({name}=...) defaults to {params[name].default!r}"
    assert params["settings"].default is None  # the carrier itself, which keywords override
    for name in set(params) & set(OPTIONS):  # the application's options it takes (target, top_k, device...)
        assert params[name].default == OPTIONS[name].default, f"{entry}({name}=...)"


def test_evaluates_scoring_keywords_are_its_declarations():
    params = keywords(occlens.evaluate)
    for d in declarations(Scoring):
        assert params[d.name].default == d.default, f"evaluate({d.name}=...)"


def test_run_takes_every_application_option():
    assert set(OPTIONS) - set(keywords(occlens.run)) == {"compare"}  # compare is the explain command's figure


def test_the_commands_flags_are_generated_from_the_declarations():
    top = parser(COMMANDS)
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("explain", "run", "evaluate", "serve", "demo"):
        flags = {a.dest: a for a in sub.choices[command]._actions}
        for name, d in SETTINGS.items():
            if not d.flag or (command == "evaluate" and name in NOT_TAKEN["evaluate"]):
                continue
            assert name in flags, f"occlens {command} lacks {d.flag_name}"
            action = flags[name]
            assert action.option_strings == [d.flag_name] and action.help == d.help
            assert action.default == (False if d.switch else d.default)


def test_settings_mean_what_omitted_keywords_mean():
    assert Settings() == Settings(**{name: d.default for name, d in SETTINGS.items()})
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    image = torch.rand(3, 20, 20, generator=torch.Generator().manual_seed(0))
    plain = occlens.explain(model, image)
    carried = occlens.explain(model, image, settings=Settings())
    assert carried.settings == plain.settings and carried.settings.patch == (16, 16)
    assert carried.settings.output == "logits"  # resolved: a bare model's head
    np.testing.assert_array_equal(carried.delta, plain.delta)
    # a keyword beside settings= overrides it; one left at its default keeps the settings' value
    again = occlens.explain(model, image, settings=Settings(patch=5, fill="black"), stride=3)
    assert (again.settings.patch, again.settings.stride, again.settings.fill) == ((5, 5), (3, 3), "black")
    # a result's settings explain again the same way
    np.testing.assert_array_equal(occlens.explain(model, image, settings=again.settings).delta, again.delta)
    with pytest.raises(occlens.ConfigError, match="settings must be an occlens.Settings"):
        occlens.explain(model, image, settings={"patch": 4})


def test_the_fingerprint_is_what_the_declarations_say_changes_outputs():
    from occlens.app.fingerprint import OUTPUT_OPTIONS, OUTPUT_SETTINGS

    assert OUTPUT_SETTINGS == output_names(Settings)
    assert set(OUTPUT_SETTINGS) == {"patch", "stride", "fill", "seed", "precision", "fast", "budget", "all_classes",
                                    "threshold", "preprocess"}  # fmt: skip
    assert OUTPUT_OPTIONS == output_names(Options)
    assert set(OUTPUT_OPTIONS) == {"target", "top_k", "also_true_class", "max_pixels", "intensity"}


def test_a_value_is_checked_once_where_it_enters_and_named_for_its_reader():
    with pytest.raises(occlens.ConfigError) as caught:
        Settings(batch_size=0)
    err = caught.value
    assert (err.option, err.value) == ("batch_size", 0)
    assert str(err) == "batch_size must be an int >= 1 or None (automatic), got 0"
    from occlens.core.errors import flag

    assert err.render(flag) == "--batch-size must be an int >= 1 or None (automatic), got 0"


def test_the_declarations_and_the_commands_help_import_no_torch():
    code = (
        "import sys\n"
        "import occlens.core.declare, occlens.core.settings, occlens.app.options, occlens.app.faithfulness\n"
        "from occlens.core.settings import Settings\n"
        "Settings(patch=8)\n"
        "from occlens.cli import main\n"
        "for argv in (['--help'], ['explain', '--help'], ['run', '--help'], ['evaluate', '--help'], ['--version'],\n"
        "             ['serve', '--help'], ['labels', '--help'],\n"
        "             ['explain', 'x.png', '--engine', 'warp']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: occlens" in done.stdout and "invalid choice: 'warp'" in done.stderr
