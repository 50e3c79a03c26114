"""Adapters: anything that scores images becomes a callable on [0, 1] N x C x H x W torch tensors.

One seam, :class:`Classifier`; one small adapter per kind of model that is not
already a torch callable (ONNX Runtime sessions, plain numpy functions).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..core.errors import ConfigError, ImageError, first_line

LAYOUTS = ("NCHW", "NHWC")


class Classifier(Protocol):
    """What :func:`occlens.explain` runs: N x C x H x W float tensors in, N x classes scores out."""

    def __call__(self, batch: torch.Tensor): ...


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ConfigError(f"layout must be 'NCHW' or 'NHWC' (how the model wants its numpy input), got {layout!r}")
    return layout


class NumpyModel:
    """A callable on numpy batches (scikit-learn, Keras, JAX, a remote endpoint...) as a torch callable.

    The batch reaches ``fn`` as a float32 numpy array in ``layout`` (``"NCHW"`` or
    ``"NHWC"``), values in [0, 1]; ``fn`` returns N x classes scores (anything
    ``numpy.asarray`` takes).
    """

    def __init__(self, fn: Callable[[np.ndarray], object], layout: str = "NCHW") -> None:
        if not callable(fn):
            raise ConfigError(f"model must be callable, got {type(fn).__name__}")
        self.fn, self.layout = fn, check_layout(layout)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.detach().to("cpu", torch.float32)
        if self.layout == "NHWC":
            x = x.permute(0, 2, 3, 1)
        scores = self.fn(np.ascontiguousarray(x.numpy()))
        return torch.from_numpy(np.array(scores, dtype=np.float64, copy=True))


def onnxruntime_module():
    """The ``onnxruntime`` module, imported on first use, or a one-line error saying what to install."""
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("ONNX models need onnxruntime, which is not installed: pip install 'occlens[onnx]'") from None
    return onnxruntime


class OnnxModel:
    """An ONNX classifier run with ONNX Runtime (CUDA provider when present, else CPU).

    Input name, layout (NCHW or NHWC) and size are read from the graph. A dynamic
    batch dimension takes whole batches; a batch fixed at 1 is fed image by image
    (said once, as a warning).
    """

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        ort = onnxruntime_module()
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types
            raise ConfigError(f"{path}: not a model ONNX Runtime can load ({first_line(err)})") from None
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.dtype = np.float16 if first.type == "tensor(float16)" else np.float32
        shape = list(first.shape)
        if len(shape) != 4:
            raise ConfigError(
                f"{path}: the model's input {first.name!r} has shape {shape}; expected an image batch (4-D)"
            )
        fixed = [d if isinstance(d, int) else None for d in shape]
        if fixed[1] in (1, 3, 4):
            self.layout = "NCHW"
        elif fixed[3] in (1, 3, 4):
            self.layout = "NHWC"
        else:
            raise ConfigError(
                f"{path}: cannot tell the channel axis of input shape {shape}; expected N,C,H,W or N,H,W,C"
            )
        spatial = fixed[2:4] if self.layout == "NCHW" else fixed[1:3]
        self.channels = fixed[1] if self.layout == "NCHW" else fixed[3]
        self.size = tuple(spatial) if all(s is not None for s in spatial) else None
        self.batch = fixed[0]
        self.path = Path(path)
        self._said_loop = False

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        x = batch.detach().to("cpu", torch.float32)
        if self.size is not None and tuple(x.shape[2:]) != self.size:
            raise ImageError(
                f"the ONNX model takes {self.size[0]}x{self.size[1]} images but got {x.shape[2]}x{x.shape[3]}; "
                f"resize the image to the model's input size first"
            )
        if self.layout == "NHWC":
            x = x.permute(0, 2, 3, 1)
        arr = np.ascontiguousarray(x.numpy(), dtype=self.dtype)
        if self.batch is None or self.batch == len(arr):
            return self.session.run(None, {self.input_name: arr})[0]
        if self.batch != 1:
            raise ConfigError(
                f"{self.path}: the graph's batch size is fixed at {self.batch}; export it with batch 1 or dynamic"
            )
        if not self._said_loop:
            warnings.warn(
                f"{self.path.name}: the graph's batch size is fixed at 1, so occlens runs images one by one",
                stacklevel=2,
            )
            self._said_loop = True
        return np.concatenate([self.session.run(None, {self.input_name: arr[i : i + 1]})[0] for i in range(len(arr))])
