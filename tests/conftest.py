"""Shared tiny models, images and independent reference computations for the occlens tests.

Nothing here calls occlens: the helpers are the tests' own, independent versions of the
window geometry and the seed's formula, so comparing them with occlens can fail.
"""

from __future__ import annotations

import math
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

H, W = 12, 17  # the default non-square test image

# One intra-op thread: the tiny models here gain nothing from more, and on small machines torch's
# OpenMP pool, started after numpy's OpenBLAS, can make a 1x4x8x7 convolution 500x slower.
torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------
# models


class TinyConvNet(nn.Module):
    """conv -> relu -> conv -> relu -> adaptive 2x3 pool -> linear: position-sensitive, any input size."""

    def __init__(self, channels: int = 3, classes: int = 5, seed: int = 0, dtype=torch.float32):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.body = nn.Sequential(
                nn.Conv2d(channels, 6, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(6, 6, 3, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d((2, 3)),
                nn.Flatten(),
            )
            self.head = nn.Linear(6 * 2 * 3, classes)
            with torch.no_grad():  # spread the logits so that occluding moves the probabilities visibly
                self.head.weight.mul_(6.0)
        self.to(dtype)
        self.eval()

    def forward(self, x):
        return self.head(self.body(x))


class DropoutNet(nn.Module):
    """A conv net with dropout and batch norm: in train mode its output depends on the batch and the RNG."""

    def __init__(self, channels: int = 3, classes: int = 4, seed: int = 1):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.conv = nn.Conv2d(channels, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.drop = nn.Dropout(0.5)
            self.pool = nn.AdaptiveAvgPool2d((2, 2))
            self.head = nn.Linear(16, classes)
        self.eval()
        self.seen_training: list[bool] = []

    def forward(self, x):
        self.seen_training.append(self.training)
        return self.head(self.drop(self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1)))


class RegionLinear(nn.Module):
    """``logits = weight @ s + bias`` where ``s[c]`` is channel c's pixel sum over ``rows x cols``.

    No convolution, so ``delta`` has a closed form: occluding window w changes ``s[c]`` by the sum of
    ``fill - x[c]`` over ``w ∩ region``, which is zero when w misses the region.
    """

    def __init__(self, weight, bias=None, rows=slice(None), cols=slice(None), dtype=torch.float64):
        super().__init__()
        weight = torch.as_tensor(np.asarray(weight), dtype=dtype)
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(
            torch.zeros(weight.shape[0], dtype=dtype) if bias is None else torch.as_tensor(bias, dtype=dtype)
        )
        self.rows, self.cols = rows, cols
        self.eval()

    def forward(self, x):
        s = x[:, :, self.rows, self.cols].sum(dim=(2, 3))
        return s @ self.weight.T + self.bias


class Recorder(nn.Module):
    """Wraps a model and keeps a copy of every batch it is given (the caller's own model, not a mock)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.batches: list[torch.Tensor] = []
        self.eval()

    def forward(self, x):
        self.batches.append(x.detach().clone())
        return self.inner(x)

    def occluded(self) -> torch.Tensor:
        """All occluded images seen, in order (the first call is the unoccluded image)."""
        return torch.cat(self.batches[1:])


# ---------------------------------------------------------------------------------------------
# images


def random_image(channels: int = 3, height: int = H, width: int = W, seed: int = 0) -> torch.Tensor:
    """A float32 C x H x W image in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand((channels, height, width), generator=g, dtype=torch.float32)


def uint8_image(height: int = H, width: int = W, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A uint8 H x W x C image (channels-last, numpy style)."""
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, channels), dtype=np.uint8)


@pytest.fixture
def image() -> torch.Tensor:
    return random_image()


@pytest.fixture
def net() -> TinyConvNet:
    return TinyConvNet()


# ---------------------------------------------------------------------------------------------
# independent references


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def as_pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def patch_stride(patch, stride) -> tuple[tuple[int, int], tuple[int, int]]:
    """User-style ``patch``/``stride`` (int, pair, ``stride=None`` = patch) as two pairs."""
    p = as_pair(patch)
    return p, (p if stride is None else as_pair(stride))


def brute_windows(height, width, patch, stride):
    """Windows (top, bottom, left, right) in raster order, by walking the image with a loop."""
    (ph, pw), (sh, sw) = patch, stride

    def starts(size, p, s):
        out = [0]
        while out[-1] + p < size:  # the last window must reach the edge
            out.append(out[-1] + s)
        return out

    tops, lefts = starts(height, ph, sh), starts(width, pw, sw)
    return (
        [(t, min(t + ph, height), left, min(left + pw, width)) for t in tops for left in lefts],
        len(tops),
        len(lefts),
    )


def brute_pixel_map(values: np.ndarray, height, width, patch, stride) -> np.ndarray:
    """Mean over covering windows of the per-window values, with explicit loops."""
    windows, rows, cols = brute_windows(height, width, patch, stride)
    flat = np.asarray(values, dtype=np.float64).reshape(rows * cols)
    total = np.zeros((height, width))
    count = np.zeros((height, width))
    for v, (t, b, left, right) in zip(flat, windows, strict=True):
        total[t:b, left:right] += v
        count[t:b, left:right] += 1
    return total / count


def occlude(image: torch.Tensor, window, fill_image: torch.Tensor) -> torch.Tensor:
    t, b, left, right = window
    out = image.clone()
    out[:, t:b, left:right] = fill_image[:, t:b, left:right]
    return out


def hand_delta(model, image: torch.Tensor, patch, stride, fill_image: torch.Tensor, cls=None):
    """The seed's delta computed by hand: occluded copies built one by one, model + log_softmax.

    Returns ``(delta R x C, L, predicted)``; ``cls`` defaults to the prediction Q.
    """
    dtype = next(model.parameters()).dtype
    x = image.to(dtype)
    fill_image = fill_image.to(dtype)
    windows, rows, cols = brute_windows(image.shape[1], image.shape[2], patch, stride)
    with torch.no_grad():
        clean = torch.log_softmax(model(x[None]).double(), dim=1)[0]
        q = int(clean.argmax()) if cls is None else cls
        loss = -float(clean[q])
        occl = []
        for w in windows:
            lp = torch.log_softmax(model(occlude(x, w, fill_image)[None]).double(), dim=1)[0, q]
            occl.append(-float(lp))
    return loss - np.array(occl).reshape(rows, cols), loss, int(clean.argmax())


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def region_linear_delta(weight, bias, image: np.ndarray, fill, rows, cols, patch, stride, cls=None):
    """Closed-form delta of :class:`RegionLinear` (numpy only): per-channel sums change additively."""
    image = np.asarray(image, dtype=np.float64)
    c, height, width = image.shape
    fill_image = np.broadcast_to(np.asarray(fill, dtype=np.float64).reshape(-1, 1, 1), image.shape)
    in_region = np.zeros((height, width), bool)
    in_region[rows, cols] = True
    weight, bias = np.asarray(weight, np.float64), np.asarray(bias, np.float64)
    s = (image * in_region).sum(axis=(1, 2))
    clean = np_log_softmax(weight @ s + bias)
    q = int(np.argmax(clean)) if cls is None else cls
    windows, r, cc = brute_windows(height, width, patch, stride)
    out = []
    for t, b, left, right in windows:
        mask = np.zeros((height, width), bool)
        mask[t:b, left:right] = True
        change = ((fill_image - image) * (mask & in_region)).sum(axis=(1, 2))
        out.append(-clean[q] + np_log_softmax(weight @ (s + change) + bias)[q])
    return np.array(out).reshape(r, cc), q


# ---------------------------------------------------------------------------------------------
# error-message checks


def names(message: str, value) -> bool:
    """Whether ``message`` mentions ``value``: numbers as whole numbers (not digits of others), else text."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value) in message
    text = repr(value) if isinstance(value, float) else str(value)
    return re.search(rf"(?<!\d)(?<!\d\.){re.escape(text)}(?!\d)(?!\.\d)", message) is not None


def assert_one_line_naming(err: BaseException, *values) -> None:
    message = str(err)
    assert message and "\n" not in message, f"message must be one line: {message!r}"
    missing = [v for v in values if not names(message, v)]
    assert not missing, f"message {message!r} does not name {missing!r}"


def window_count(size: int, patch: int, stride: int) -> int:
    return math.ceil((size - patch) / stride) + 1


@pytest.fixture
def native_cpu_precision(monkeypatch):
    """This CPU treated as having native bf16 and fp16, so autocast really runs on it (slow where it emulates,
    which tiny models do not notice): the reduced-precision paths are tested on any CPU."""
    monkeypatch.setattr("occlens.models.forward.cpu_has_native", lambda precision: True)


# ---------------------------------------------------------------------------------------------
# tiers: the markers (registered in pyproject.toml) that follow from the fixtures a test uses, so that
# a new test gets them without being marked by hand. A test that starts Ray, or a server without these
# fixtures, is marked where it is written.

FIXTURE_MARKERS = {
    "browser": "browser",  # the Chromium fixtures: this module's and test_serve's
    "server": "serve",  # test_serve's uvicorn servers
    "run_server": "serve",
    "multi_server": "serve",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        used = getattr(item, "fixturenames", ())
        for fixture, marker in FIXTURE_MARKERS.items():
            if fixture in used and item.get_closest_marker(marker) is None:
                item.add_marker(marker)


# ---------------------------------------------------------------------------------------------
# a real browser: Debian's Chromium driven by Playwright (never `playwright install`)

BROWSERS = ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser"))
CHROMIUM = next((p for p in BROWSERS if p and Path(p).is_file()), None)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


def needs_chromium(test):
    """A test that drives Chromium: marked ``browser`` and skipped where none is installed."""
    skip = pytest.mark.skipif(
        CHROMIUM is None,
        reason="no Chromium browser installed (Debian: apt-get install chromium); this browser test needs one",
    )
    return pytest.mark.browser(skip(test))


@contextmanager
def chromium():
    """A headless Chromium, closed on exit; the test is skipped where none is installed."""
    if CHROMIUM is None:
        pytest.skip("no Chromium browser installed (Debian: apt-get install chromium); this browser test needs one")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per test module (see :func:`chromium`)."""
    with chromium() as b:
        yield b


def open_page(browser, url: str, height: int = 2000, timeout: float | None = None):
    """A page at ``url`` in an offline 1280-wide context ``height`` high, once the page says ``data-ready``
    (within ``timeout`` ms: Playwright's default where None), and the problems it met: requests leaving the file
    system, script errors, console errors and warnings, dialogs."""
    page = browser.new_context(offline=True, viewport={"width": 1280, "height": height}).new_page()
    problems = []
    page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else problems.append(r.url))
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    page.on("dialog", lambda d: problems.append(f"dialog: {d.message}"))
    page.goto(url)
    page.wait_for_selector("body[data-ready]", timeout=timeout)
    return page, problems


def titles(page, want: list[str] | None = None, *, ordered: bool = True, seconds: float = 10.0) -> list[str]:
    """The titles of the gallery's cards, read in one step (sorted with ``ordered=False``).

    With ``want``, they are read again until they are ``want`` or ``seconds`` pass, and the last
    reading is returned for the test to compare: a page redraws on events that fire after the call
    that caused them (a hash change, a timer), so one reading right after a click can be stale."""
    deadline = time.monotonic() + seconds
    while True:
        got = page.locator("#gallery .card").evaluate_all("cs => cs.map(c => c.title)")
        got = got if ordered else sorted(got)
        if want is None or got == want or time.monotonic() > deadline:
            return got
        page.wait_for_timeout(50)
