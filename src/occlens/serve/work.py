"""What the viewer asks of the model, on the Python API: the explanation (coarse, then exact), one region
occluded and scored, the gradient saliency map. Each runs on the model queue's thread."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..analysis.saliency import saliency
from ..app.job import explain_image
from ..app.options import Options
from ..core.errors import ConfigError
from ..core.fill import baseline
from ..core.result import OcclusionResult
from ..core.scoring import log_probs, scores_of
from ..core.settings import Settings
from ..core.volume import Volume
from ..models.forward import call_model
from ..models.loaded import LoadedModel
from ..models.runner import prepared
from .queue import Ticket

COARSE_BUDGET = 1e-9  # seconds: the anytime map stops after its first pass (it always runs), the coarse map
TOP = 5
PREVIEW_VOXELS = 1 << 21  # a volume's preview on the page: at most 2 M voxels (2.8 MB as base64)
Emit = Callable[[str, dict], None]


def png_url(rgb: np.ndarray) -> str:
    """An H x W x 3 float image in [0, 1] as a ``data:image/png`` URL."""
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def picture(x: torch.Tensor | Volume) -> dict:
    """The image as explained (the model's input, C x H x W in [0, 1]) for the page; a volume's preview
    (:func:`page_volume`) for a volume."""
    if isinstance(x, Volume):
        return page_volume(x)
    rgb = x.permute(1, 2, 0).numpy()
    rgb = np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else rgb[:, :, :3]
    return {"width": int(x.shape[2]), "height": int(x.shape[1]), "png": png_url(rgb)}


def page_volume(volume: Volume, most: int = PREVIEW_VOXELS) -> dict:
    """A small preview of a volume for the page: its first channel in [0, 1] (after the intensity window) as
    bytes (0..255), depth, then rows, then columns, base64; every ``step``-th voxel on each axis, ``step`` the
    smallest that keeps at most ``most`` voxels (a 512 x 512 x 300 CT is not sent whole). ``depth``, ``height``
    and ``width`` are the volume's; ``shape`` the preview's."""
    depth, height, width = volume.size
    step = 1
    while -(-depth // step) * -(-height // step) * -(-width // step) > most:
        step += 1
    voxels = volume.unit()[0, ::step, ::step, ::step]
    levels = torch.round(voxels.clamp(0, 1) * 255).to(torch.uint8).contiguous().numpy()
    return {"volume": True, "depth": depth, "height": height, "width": width, "step": step, "shape": list(levels.shape),
            "voxels": base64.b64encode(levels.tobytes()).decode("ascii")}  # fmt: skip


def watched(ticket: Ticket, phase: str, emit: Emit | None):
    """explain's progress callback: stops the work once the ticket is set, reports each batch."""

    def progress(done: int, total: int) -> None:
        ticket.check()
        if emit is not None:
            emit("progress", {"phase": phase, "done": int(done), "total": int(total)})

    return progress


def document(result: OcclusionResult) -> dict:
    """The JSON document ``occlens explain`` writes (``STEM.json``)."""
    return result.to_dict()


def sub_targets(result: OcclusionResult, labels) -> dict:
    """What the page draws beside the maps of a target beyond a class (the stream's ``targets`` event): per
    sub-target, in the order of the document's ``targets``, its ``name``, its map's ``role`` and what ``s`` is
    in ``words`` (the figure's), and its segment's ``outline`` or its reference ``box`` in the model input's
    pixels, encoded as the report encodes them (:func:`occlens.present.report.data.target_list`)."""
    from ..present.figure import score_words  # matplotlib: only when a target beyond a class is explained
    from ..present.report.data import role_of, target_list

    drawn = target_list(result)
    for item, m in zip(drawn, result.target_maps, strict=True):
        role = role_of(result.target_kind, item["name"])  # a segment's, a box's: its kind named
        item["role"] = role if role != item["name"] else f"{result.target_kind}: {role}"
        item["words"] = "s = " + score_words(result, m, labels)
    return {"kind": result.target_kind, "targets": drawn}


def explain_one(
    model: LoadedModel,
    x: torch.Tensor | Volume,
    name: str,
    label: int | tuple | None,
    settings: Settings,
    options: Options,
    ticket: Ticket,
    emit: Emit | None = None,
    coarse: bool = False,
) -> dict:
    """The exact explanation's document; with ``coarse``, first the coarse map's (``emit("coarse", ...)``). A
    target beyond a class is drawn with what :func:`sub_targets` says of it: ``emit("targets", ...)`` once,
    before the first map (the regions and boxes are the clean image's: the same for both maps)."""
    told = False

    def tell(result: OcclusionResult) -> None:
        nonlocal told
        if emit is not None and not told and result.target_kind != "class":
            emit("targets", sub_targets(result, model.labels))
        told = True

    if coarse and not isinstance(x, Volume):  # a volume: the exact map only (budget is refused for volumes)
        first = replace(settings, budget=COARSE_BUDGET, fast=False)
        rough = explain_image(model, x, label, Path(name), first, options, progress=watched(ticket, "coarse", emit))
        tell(rough)
        if emit is not None:
            emit("coarse", document(rough))
    result = explain_image(model, x, label, Path(name), settings, options, progress=watched(ticket, "exact", emit))
    tell(result)
    return document(result)


def box_mask(box: tuple[int, int, int, int], height: int, width: int) -> np.ndarray:
    """The H x W mask of ``box`` = (left, top, right, bottom) in pixels, right and bottom exclusive, clipped."""
    left, top, right, bottom = box
    if not (right > left and bottom > top):
        raise ConfigError(f"box {list(box)} is empty: it is left,top,right,bottom with right > left and bottom > top")
    mask = np.zeros((height, width), dtype=bool)
    mask[max(top, 0) : min(bottom, height), max(left, 0) : min(right, width)] = True
    if not mask.any():
        raise ConfigError(f"box {list(box)} lies outside the {width}x{height} image; give pixels of the image")
    return mask


def ranked(logp: np.ndarray, labels, k: int = TOP) -> list[dict]:
    order = np.argsort(-logp, kind="stable")[:k]
    return [{"class": int(c), "name": labels[c], "probability": float(np.exp(logp[c]))} for c in order]


def occlude(
    model: LoadedModel, x: torch.Tensor, mask: np.ndarray, fill, seed: int, target: int | None, ticket: Ticket
) -> dict:
    """The scores of the image and of its copy with ``mask`` (H x W, True: occluded) replaced by ``fill``,
    both in one forward pass: P(Q) before and after, ``δL = L − L_occl`` of the explained class, the top
    classes of each and the occluded copy."""
    ticket.check()
    settings = Settings(fill=fill, seed=seed)  # checks the fill
    m = torch.from_numpy(mask)[None]
    occluded = torch.where(m, baseline(x, settings.fill, settings.seed), x)
    with prepared(model.module) as runner, torch.inference_mode():
        batch = torch.stack([x, occluded]).to(runner.device, runner.dtype)
        raw = call_model(runner.forward, batch, "the image and its occluded copy")
        logp = log_probs(scores_of(raw, 2), model.output).to("cpu", torch.float64).numpy()
    before, after = logp
    predicted = int(np.argmax(before))
    k = predicted if target is None else target
    labels = model.labels
    rows, cols = np.nonzero(mask)
    return {
        "predicted": predicted,
        "predicted_name": labels[predicted],
        "target": k,
        "target_name": labels[k],
        "pixels": int(mask.sum()),
        "bounds": [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1],
        "before": {"probability": float(np.exp(before[k])), "loss": float(-before[k]), "top_k": ranked(before, labels)},
        "after": {"probability": float(np.exp(after[k])), "loss": float(-after[k]), "top_k": ranked(after, labels)},
        "delta": float(after[k] - before[k]),  # L - L_occl = -log P(before) + log P(after)
        "prediction_after": int(np.argmax(after)),
        "image": picture(occluded)["png"],
    }


def magma_over(gradient: np.ndarray, x: torch.Tensor) -> tuple[np.ndarray, float]:
    """The figure's saliency panel as pixels: the gray image under magma at alpha 0.7, clipped at the 99th
    percentile (:func:`occlens.present.figure.draw_saliency`)."""
    import matplotlib

    top = float(np.percentile(gradient, 99)) or float(gradient.max()) or 1.0
    gray = x.mean(dim=0).numpy()[:, :, None].repeat(3, axis=2)
    over = matplotlib.colormaps["magma"](np.clip(gradient / top, 0, 1))[:, :, :3]
    return 0.3 * gray + 0.7 * over, top


def saliency_map(model: LoadedModel, x: torch.Tensor, target: int | None, ticket: Ticket) -> dict:
    """The gradient saliency map of the explained class, drawn as the figures draw it."""
    ticket.check()
    gradient = saliency(model, x, target)
    rgb, top = magma_over(gradient, x)
    return {"png": png_url(rgb), "top": top, "max": float(gradient.max())}
