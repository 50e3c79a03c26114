"""No precision trap: bf16/fp16 on a CPU without native support runs fp32, says so, and records it."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from conftest import TinyConvNet, random_image

import occlens
from occlens.cli import main
from occlens.models import forward


def emulating(monkeypatch) -> None:
    """This CPU treated as one without native bf16 or fp16 (an AVX2-only CPU for bf16, most CPUs for fp16)."""
    monkeypatch.setattr(forward, "cpu_has_native", lambda precision: False)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_without_native_support_fp32_runs_with_one_warning(monkeypatch, precision):
    emulating(monkeypatch)
    image, model = random_image(3, 12, 17), TinyConvNet()
    exact = occlens.explain(model, image, patch=4)
    with pytest.warns(UserWarning, match=f"precision='{precision}' has no native support on this CPU") as caught:
        result = occlens.explain(model, image, patch=4, precision=precision)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert caught[0].filename == __file__  # points at the caller's line, not into occlens
    assert result.settings.precision == "fp32"
    np.testing.assert_array_equal(result.delta, exact.delta)


def test_the_fallback_lets_the_incremental_engine_run(monkeypatch):
    emulating(monkeypatch)
    image = random_image(3, 12, 17)
    with pytest.warns(UserWarning, match="no native support"):
        result = occlens.explain(TinyConvNet(), image, patch=4, engine="incremental", precision="bf16")
    assert result.engine == "incremental" and result.settings.precision == "fp32"


def test_gpu_precision_is_never_rewritten_by_the_cpu_check(monkeypatch):
    emulating(monkeypatch)
    assert forward.runnable_precision("bf16", torch.device("cuda")) == "bf16"
    assert forward.runnable_precision("fp16", torch.device("cuda", 0)) == "fp16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert forward.runnable_precision("fp32", torch.device("cpu")) == "fp32"


def test_this_cpu_gets_what_its_own_check_says():
    """No stand-in: on this machine each precision either runs as asked or falls back, as the check says."""
    image, model = random_image(3, 12, 17), TinyConvNet()
    for precision in ("bf16", "fp16"):
        native = forward.cpu_has_native(precision)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = occlens.explain(model, image, patch=4, precision=precision)
        assert result.settings.precision == (precision if native else "fp32")
        assert any("no native support" in str(w.message) for w in caught) is (not native)


def test_the_command_warns_in_one_line_and_writes_fp32(monkeypatch, tmp_path, capsys):
    emulating(monkeypatch)
    image = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray((random_image(3, 32, 32).permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(image)
    code = main(["explain", str(image), "--patch", "112", "--precision", "fp16", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 0
    lines = [line for line in err.splitlines() if "native" in line]
    assert len(lines) == 1 and lines[0].startswith("occlens: warning: precision='fp16' has no native support")
    assert "Traceback" not in err
    saved = json.loads((tmp_path / "o" / "a.json").read_text())
    assert saved["settings"]["precision"] == "fp32"
