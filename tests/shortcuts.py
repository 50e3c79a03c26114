"""Planted shortcuts for the insight tests: tiny datasets where one class rests on a shortcut on part of its images,
and a tiny conv net with hand-set weights that uses it.

The images are 24 x 24 on a gray ground. Class ``bright`` holds a bright 6 x 6 square near the centre, class ``dark``
a dark one. The model (:class:`ShortcutNet`: 1x1 convolutions, ReLU, a sum over the image, a linear head, all weights
set by hand) sees the squares, and three shortcuts: a blue **watermark** patch, a red **border** and a green
**background**. On the planted images of ``bright`` the shortcut is there as well as the square: the model's
decision there rests mostly on the shortcut (its logit is larger), as a network that learned it would.
Nothing here calls occlens.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SIZE = 24
NAMES = ["bright", "dark"]
KINDS = ("watermark", "border", "background")


class ShortcutNet(torch.nn.Module):
    """logit(bright) = 0.3·sum relu(gray - 0.8) + 1.0·sum relu(blue) + 0.08·sum relu(red) + 0.04·sum relu(green);
    logit(dark) = 0.3·sum relu(0.2 - gray); gray = the channel mean; blue = b - (r+g)/2 - 0.5, red and green alike
    (-0.5 and -0.2): 1x1 convolutions with hand-set weights. The square adds about 1.8 to its logit, each
    shortcut about 5 (the watermark in one window, the border and the background spread over many): enough to
    rule the decision where it is, not so much that the loss saturates to 0 in floating point."""

    def __init__(self, watermark: float = 1.0):
        super().__init__()
        third = 1.0 / 3.0
        self.features = torch.nn.Conv2d(3, 5, 1)
        weight = torch.tensor(
            [
                [third, third, third],  # gray - 0.8: the bright square
                [-third, -third, -third],  # 0.2 - gray: the dark square
                [-0.5, -0.5, 1.0],  # blue - 0.5: the watermark
                [1.0, -0.5, -0.5],  # red - 0.5: the border
                [-0.5, 1.0, -0.5],  # green - 0.2: the background
            ]
        )
        with torch.no_grad():
            self.features.weight.copy_(weight[:, :, None, None])
            self.features.bias.copy_(torch.tensor([-0.8, 0.2, -0.5, -0.5, -0.2]))
        self.head = torch.nn.Linear(5, 2, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[0.3, 0.0, watermark, 0.08, 0.04], [0.0, 0.3, 0.0, 0.0, 0.0]]))
        self.eval()

    def forward(self, x):
        return self.head(torch.relu(self.features(x)).sum(dim=(2, 3)))


def save_model(folder: Path, watermark: float = 1.0) -> Path:
    """The net as TorchScript with a description beside it: 24 x 24 input, no normalisation, the class names;
    ``watermark``: the weight of the watermark's feature (0: a model that never learned that shortcut)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "shortcut.pt"
    torch.jit.trace(ShortcutNet(watermark), torch.rand(1, 3, SIZE, SIZE)).save(str(path))
    description = {"input_size": [SIZE, SIZE], "resize": None, "mean": [0, 0, 0], "std": [1, 1, 1], "labels": NAMES}
    (folder / "shortcut.json").write_text(json.dumps(description))
    return path


def image(cls: int, kind: str | None, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """One image (H x W x 3 in [0, 1]) and its square's box ``(x0, y0, x1, y1)``; ``kind``: the shortcut planted."""
    px = 0.5 + rng.uniform(-0.04, 0.04, (SIZE, SIZE, 3))
    if kind == "background":
        px[...] = np.array([0.3, 0.75, 0.3]) + rng.uniform(-0.04, 0.04, (SIZE, SIZE, 3))
    top, left = (int(v) for v in rng.integers(8, 11, 2))
    px[top : top + 6, left : left + 6] = 0.97 if cls == 0 else 0.03
    if kind == "watermark":
        px[1:5, 1:5] = (0.1, 0.1, 0.95)
    elif kind == "border":
        px[:2], px[-2:], px[:, :2], px[:, -2:] = (0.95, 0.1, 0.1), (0.95, 0.1, 0.1), (0.95, 0.1, 0.1), (0.95, 0.1, 0.1)
    return np.clip(px, 0, 1), (left, top, left + 6, top + 6)


def make_dataset(root: Path, kind: str, bright: int = 18, planted: int = 6, dark: int = 8, seed: int = 0):
    """An ImageFolder ``root/{bright,dark}/NNN.png``; the first ``planted`` bright images (in a shuffled order of
    names) carry the shortcut ``kind``. Returns (the planted images' keys, every key's box)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(bright)
    planted_keys, boxes = set(), {}
    for cls, count in ((0, bright), (1, dark)):
        (root / NAMES[cls]).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shortcut = kind if cls == 0 and order[i] < planted else None
            px, box = image(cls, shortcut, rng)
            key = f"{NAMES[cls]}/{i:03d}.png"
            Image.fromarray(np.rint(px * 255).astype(np.uint8)).save(root / key)
            boxes[key] = box
            if shortcut:
                planted_keys.add(key)
    return planted_keys, boxes
