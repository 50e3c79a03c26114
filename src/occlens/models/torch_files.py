"""Reading PyTorch files: a TorchScript file, a whole pickled module (only when the caller trusts it), and a
state dict loaded into an architecture. ``torch.load`` unpickles only tensors unless ``trust_pickle``."""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path

import torch

from ..core.errors import ConfigError, ModelError, first_line, option


def load_weights(net: torch.nn.Module, weights: str | Path, trust_pickle: bool) -> None:
    """Load a state dict into ``net``; name the first key that does not fit."""
    state = torch_load(Path(weights), trust_pickle)
    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{weights}: not a state dict (a mapping of parameter names to tensors)")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    ours = net.state_dict()
    for key, value in ours.items():
        if key not in state:
            raise ModelError(f"{weights}: the weights lack {key!r} {tuple(value.shape)}; wrong architecture?")
        if state[key].shape != value.shape:
            raise ModelError(
                f"{weights}: {key!r} has shape {tuple(state[key].shape)} but the architecture wants "
                f"{tuple(value.shape)}; wrong architecture or number of classes ({option('num_classes')})?",
                value=tuple(state[key].shape), expected=f"{key!r} of shape {tuple(value.shape)}",
                fix="name the architecture the weights were saved from, with its number of classes",
            )  # fmt: skip
    extra = [k for k in state if k not in ours]
    if extra:
        raise ModelError(
            f"{weights}: the weights have {extra[0]!r}, which the architecture does not; wrong architecture?"
        )
    net.load_state_dict(state)


def torch_load(path: Path, trust_pickle: bool):
    """``torch.load`` with ``weights_only=True``; full unpickling only with ``trust_pickle``, and only
    advised for what is a PyTorch file (a zip archive or a pickle), never for other bytes."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; check the path")
    if not _torch_file(path):
        raise ConfigError(
            f"{path}: not a PyTorch file (neither torch.save's zip archive nor a pickle); a TorchScript or "
            f"state-dict file was expected (an ONNX model needs the .onnx suffix)"
        )
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4 in the checkpoint...": torch's, not for our users
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            raise ConfigError(f"{path}: not a PyTorch file torch.load can read ({first_line(err)})") from None
        if not trust_pickle:
            raise ConfigError(
                f"{path}: loading it needs full unpickling, which can run arbitrary code from the file; "
                f"if you trust its source, pass {option('trust_pickle')}, or save a state dict instead",
                value=str(path), expected="a file torch.load reads without unpickling code (a state dict)",
                fix="trust_pickle=True if you trust the file's source, or save a state dict instead",
            ) from None  # fmt: skip
    except Exception as err:  # torch.load fails in many ways on files that are not its own
        raise ConfigError(f"{path}: not a PyTorch file torch.load can read ({type(err).__name__}: {err})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a damaged pickle, or one of classes this process lacks
        raise ConfigError(f"{path}: a pickle that cannot be loaded ({type(err).__name__}: {first_line(err)})") from None


def _torch_file(path: Path) -> bool:
    """Whether ``path`` is what torch.save writes: a zip archive (since torch 1.6) or a pickle (older)."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return zipfile.is_zipfile(path) or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def load_torchscript(path: Path, trust_pickle: bool) -> torch.nn.Module:
    """A TorchScript file, or (with ``trust_pickle``) a whole pickled module."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice is not for our users
            return torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError):
        pass
    obj = torch_load(path, trust_pickle)
    if isinstance(obj, torch.nn.Module):
        return obj
    raise ConfigError(
        f"{path}: a state dict, not a model; name its architecture: {option('model')} torchvision:NAME "
        f"{option('weights')} {path.name}",
        value=str(path), expected="a TorchScript file or a whole pickled model",
        fix=f"give the architecture as the model (torchvision:NAME or timm:NAME) and {path.name} as its weights",
    )  # fmt: skip
