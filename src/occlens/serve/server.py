"""The viewer's web app (Starlette): the page, its assets, and the HTTP API the page itself uses.

``GET /api/health``; ``POST /api/explain`` (the JSON document ``occlens explain`` writes) and
``POST /api/explain/stream`` (the same as server-sent events: progress, the coarse map, the exact map);
``POST /api/occlude`` (a box or mask occluded, scored in one forward pass); ``POST /api/saliency``; with a
run's folder, ``GET /api/run``, ``GET /api/run/thumb`` and ``GET /run/files/PATH``. Every model call goes
through one :class:`~occlens.serve.queue.ModelQueue`; a request whose client disconnects stops its job.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import replace
from importlib import resources

import numpy as np
import torch
from PIL import Image, ImageOps
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .. import __version__
from ..core.errors import ConfigError, OcclensError, first_line, one_line
from ..core.grid import Grid, pair
from ..core.scoring import check_class, check_truth
from ..core.settings import Settings
from . import work
from .answers import error, message_of, on_cancelled, on_error, on_http_error, sse, status_of
from .errors import RequestError
from .queue import Cancelled, ModelQueue, Ticket
from .rundir import RunFolder
from .security import AccessGuard
from .uploads import read_file, read_form, text_field, uploaded_image
from .viewer import Limits, Viewer

STATIC = ("serve.js", "serve.css")
EXPLAIN_FIELDS = ("image", "key", "label", "target", "patch", "stride", "fill", "seed", "engine")
OCCLUDE_FIELDS = ("image", "key", "label", "target", "box", "mask", "fill", "seed")
SALIENCY_FIELDS = ("image", "key", "label", "target")
THUMB = 160
THUMBS_KEPT = 512


# --------------------------------------------------------------------------------------------------
# the request's parts


def number_pair(form: FormData, name: str) -> tuple[int, int] | None:
    text = text_field(form, name)
    if text is None:
        return None
    parts = text.replace("x", ",").split(",")
    if not 1 <= len(parts) <= 2 or not all(re.fullmatch(r"\s*[0-9]+\s*", p) for p in parts):
        raise RequestError(f"{name} must be N or H,W (whole numbers of pixels), got {text!r}")
    return pair(tuple(int(p) for p in parts) if len(parts) == 2 else int(parts[0]), name)


def whole(form: FormData, name: str, default: int) -> int:
    text = text_field(form, name)
    if text is None:
        return default
    if not re.fullmatch(r"[0-9]+", text):
        raise RequestError(f"{name} must be a whole number >= 0, got {text!r}")
    return int(text)


RUN_SETTINGS = ("patch", "stride", "fill", "seed")  # what a run's image is explained with live, unless asked


def settings_of(viewer: Viewer, form: FormData, run_options: dict | None = None) -> Settings:
    """The viewer's default settings with the request's patch, stride, fill, seed and engine on top; for a
    run's image (``key``), the run's own window, stride, fill and seed (``run_options``) come between."""
    base = viewer.settings.for_model(viewer.model.patch)
    if run_options and text_field(form, "key") is not None:
        chosen = {k: tuple(v) if isinstance(v, list) else v for k, v in run_options.items() if k in RUN_SETTINGS}
        base = replace(base, **chosen)
    patch = number_pair(form, "patch")
    stride = number_pair(form, "stride")
    engine = text_field(form, "engine")
    patch_given = patch is not None
    patch = base.patch if patch is None else patch
    stride = stride if stride is not None else (patch if patch_given else base.stride)
    return replace(  # validated again (Settings.__post_init__)
        base,
        patch=patch,
        stride=stride,
        fill=text_field(form, "fill") or base.fill,
        seed=whole(form, "seed", base.seed),
        engine=engine or base.engine,
    )


def resolve_class(text: str | None, label: int | tuple | None, names, field: str) -> int | None:
    """``target``: empty or ``Q`` is the prediction (None), ``K`` the true class (one of a multi-label truth's,
    when it has one), else a class name or index."""
    if text is None or (text == "Q" and "Q" not in names):
        return None
    if text == "K" and "K" not in names:
        if label is None:
            raise RequestError(f"{field}=K is the true class, and none is known; give label (the true class) too")
        if isinstance(label, tuple) and len(label) > 1:
            said = ", ".join(names[c] if 0 <= c < len(names) else str(c) for c in label)
            raise RequestError(
                f"{field}=K is ambiguous: the image has {len(label)} true labels ({said}); give one by name"
            )
        return label[0] if isinstance(label, tuple) else label
    return check_class(text, None, field, names)


def truth_of(text: str, names) -> int | tuple:
    """The ``label`` field: one class, or several separated by ``;`` (a multi-label truth, as in a run's CSV)."""
    parts = [p.strip() for p in text.split(";") if p.strip()] if ";" in text else text
    return check_truth(parts, None, "label", names)


async def image_of(viewer: Viewer, form: FormData) -> tuple[torch.Tensor, str, int | tuple | None]:
    """The image the request names (an upload in ``image``, or a run's image by ``key``) as the model's input
    (C x H x W in [0, 1]), its name and its known true class (a tuple: a multi-label truth)."""
    upload, key = form.get("image"), text_field(form, "key")
    if (upload is None) == (key is None):
        which = "both" if upload is not None else "neither"
        raise RequestError(f"give an image file in field 'image' or a run's image in field 'key' (got {which})")
    label = None
    if key is not None:
        if viewer.run is None:
            raise RequestError("field 'key' names a run's image, and this server shows no run (occlens serve RUN_DIR)")
        record = viewer.run.record(key)
        path = viewer.run.image_path(record)
        pil, name = await asyncio.to_thread(read_file, path, viewer.limits), str(path)
        label = record.label if record.true_labels is None else record.true_labels
    else:
        pil, name = await uploaded_image(form, "image", viewer.limits)
    given = text_field(form, "label")
    if given is not None:
        label = truth_of(given, viewer.model.labels)
    try:
        x = await asyncio.to_thread(viewer.model.preprocess, pil)
    except (OcclensError, ValueError) as err:
        raise RequestError(f"{name}: {first_line(err)}") from None
    return x, name, label


def box_of(form: FormData, height: int, width: int) -> tuple[int, int, int, int] | None:
    text = text_field(form, "box")
    if text is None:
        return None
    parts = text.split(",")
    if len(parts) != 4 or not all(re.fullmatch(r"\s*-?[0-9]+\s*", p) for p in parts):
        raise RequestError(f"box must be left,top,right,bottom in pixels of the {width}x{height} image, got {text!r}")
    return tuple(int(p) for p in parts)


async def mask_of(viewer: Viewer, form: FormData, height: int, width: int) -> np.ndarray:
    """The region to occlude: ``box`` (left,top,right,bottom) or ``mask`` (an image the model's input size,
    non-zero = occluded)."""
    box, upload = box_of(form, height, width), form.get("mask")
    if (box is None) == (upload is None):
        both = "one, not both" if box is not None else "one of them"
        raise RequestError(
            f"give the region to occlude: field 'box' (left,top,right,bottom) or 'mask' (an image), {both}"
        )
    try:
        if box is not None:
            return work.box_mask(box, height, width)
    except ConfigError as err:
        raise RequestError(str(err)) from None
    pil, name = await uploaded_image(form, "mask", viewer.limits)
    if pil.size != (width, height):
        raise RequestError(
            f"{name}: the mask is {pil.width}x{pil.height}; it must be the input's size, {width}x{height}"
        )
    mask = np.asarray(pil.convert("L")) > 0
    if not mask.any():
        raise RequestError(f"{name}: the mask is all zero; non-zero pixels mark the region to occlude")
    return mask


# --------------------------------------------------------------------------------------------------
# the app


def make_app(viewer: Viewer) -> Starlette:
    """The viewer's Starlette app (run it with uvicorn: :func:`occlens.serve.serve`)."""
    queue = ModelQueue()
    model = viewer.model
    thumbs: OrderedDict[str, bytes] = OrderedDict()
    folder = resources.files(__package__) / "static"

    def config() -> dict:
        import matplotlib

        rdbu = matplotlib.colormaps["RdBu"]
        return {
            "colormap": [  # noqa: E501
                "#{:02x}{:02x}{:02x}".format(*(round(255 * v) for v in rdbu(i / 255)[:3])) for i in range(256)
            ],
            "run": viewer.run is not None,
        }

    page = (folder / "index.html").read_text(encoding="utf-8")
    page = page.replace("{{CONFIG}}", json.dumps(config()).replace("<", "\\u003c")).replace("{{VERSION}}", __version__)

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-store"})

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return error(f"no such asset {name!r}", 404)
        kind = "text/javascript" if name.endswith(".js") else "text/css"
        return Response((folder / name).read_bytes(), media_type=f"{kind}; charset=utf-8")

    async def health(request: Request) -> Response:
        counts = queue.counts
        settings = viewer.settings.for_model(model.patch)
        return JSONResponse({
            "status": "ok",
            "version": __version__,
            "model": model.name,
            "device": str(model.device),
            "classes": list(model.labels),
            "input_size": list(model.preprocess.size),
            "output": model.output,
            "settings": {"patch": list(settings.patch), "stride": list(settings.stride), "fill": settings.fill,
                         "engine": settings.engine, "seed": settings.seed},
            "run": None if viewer.run is None else str(viewer.run.root),
            "queue": counts.__dict__.copy(),
            "limits": {"max_bytes": viewer.limits.max_bytes, "max_pixels": viewer.limits.max_pixels},
        })  # fmt: skip

    async def queued(request: Request, fn, ticket: Ticket):
        """``fn(ticket)`` on the model queue; the ticket is set if the client disconnects meanwhile."""

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            ticket.cancel()

        watcher = asyncio.create_task(watch())
        try:
            return await queue.run(fn, ticket)
        finally:
            watcher.cancel()

    recorded: list[dict] = []  # the run's options, read once

    async def run_options() -> dict:
        if viewer.run is None:
            return {}
        if not recorded:  # read until the run has recorded its settings (a run just started may not have)
            options = (await asyncio.to_thread(viewer.run.settings)).get("options", {})
            if not options:
                return {}
            recorded.append(options)
        return recorded[0]

    async def explain_request(request: Request):
        form = await read_form(request, viewer.limits, EXPLAIN_FIELDS)
        settings = settings_of(viewer, form, await run_options())
        x, name, label = await image_of(viewer, form)
        target = resolve_class(text_field(form, "target"), label, model.labels, "target")
        try:
            Grid.build(x.shape[1], x.shape[2], settings.patch, settings.stride)
        except ConfigError as err:
            raise RequestError(str(err)) from None
        options = replace(viewer.options, target=target)
        return x, name, label, settings, options

    async def explain(request: Request) -> Response:
        x, name, label, settings, options = await explain_request(request)
        ticket = Ticket()
        doc = await queued(request, lambda t: work.explain_one(model, x, name, label, settings, options, t), ticket)
        return JSONResponse(doc)

    async def explain_stream(request: Request) -> Response:
        x, name, label, settings, options = await explain_request(request)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        ticket = Ticket()

        def emit(kind: str, data: dict) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (kind, data))

        def job(t: Ticket) -> dict:
            return work.explain_one(model, x, name, label, settings, options, t, emit, coarse=True)

        async def body():
            task = asyncio.ensure_future(queue.run(job, ticket))
            task.add_done_callback(lambda _: events.put_nowait(None))
            try:
                yield sse("image", work.picture(x))
                while (item := await events.get()) is not None:
                    yield sse(*item)
                try:
                    yield sse("exact", task.result())
                except Cancelled:
                    return
                except Exception as err:  # the response has started: the error is the stream's last event
                    yield sse("error", {"error": one_line(message_of(err)), "status": status_of(err)})
            finally:
                ticket.cancel()  # the client went away (the response is cancelled) or it is done: stop the job
                if not task.done():
                    task.cancel()

        return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    async def occlude(request: Request) -> Response:
        form = await read_form(request, viewer.limits, OCCLUDE_FIELDS)
        x, _, label = await image_of(viewer, form)
        target = resolve_class(text_field(form, "target"), label, model.labels, "target")
        mask = await mask_of(viewer, form, x.shape[1], x.shape[2])
        base = settings_of(viewer, form, await run_options())  # a run's image: the run's fill and seed
        fill, seed = base.fill, base.seed
        ticket = Ticket()
        answer = await queued(request, lambda t: work.occlude(model, x, mask, fill, seed, target, t), ticket)
        return JSONResponse(answer)

    async def saliency(request: Request) -> Response:
        form = await read_form(request, viewer.limits, SALIENCY_FIELDS)
        x, _, label = await image_of(viewer, form)
        target = resolve_class(text_field(form, "target"), label, model.labels, "target")
        ticket = Ticket()
        return JSONResponse(await queued(request, lambda t: work.saliency_map(model, x, target, t), ticket))

    def run_folder() -> RunFolder:
        if viewer.run is None:
            raise RequestError("this server shows no run; start it as occlens serve RUN_DIR", 404)
        return viewer.run

    async def run_list(request: Request) -> Response:
        run = run_folder()
        records = await asyncio.to_thread(run.records)
        options = (await asyncio.to_thread(run.settings)).get("options", {})
        several = any(r.true_labels is not None for r in records)  # a multi-label run: the label lists
        rows = [
            {"key": r.key, "stem": r.stem, "label": r.label, "labelName": r.label_name, "pred": r.predicted,
             "predName": r.predicted_name, "conf": r.confidence, "loss": r.loss, "correct": r.correct,
             "labels": None if r.true_labels is None else list(r.true_labels),
             "preds": None if not several or r.predicted_labels is None else list(r.predicted_labels)}
            for r in records
        ]  # fmt: skip
        return JSONResponse({"root": str(run.root), "images": rows, "options": options})

    async def run_thumb(request: Request) -> Response:
        run = run_folder()
        key = request.query_params.get("key", "")
        if key not in thumbs:
            path = run.image_path(await asyncio.to_thread(run.record, key))
            thumbs[key] = await asyncio.to_thread(thumbnail, path, viewer.limits)
            while len(thumbs) > THUMBS_KEPT:
                thumbs.popitem(last=False)
        return Response(thumbs[key], media_type="image/jpeg")

    async def run_file(request: Request) -> Response:
        answer = FileResponse(run_folder().file(request.path_params["path"]))
        answer.headers["X-Content-Type-Options"] = "nosniff"  # a file is what its name says, never sniffed as HTML
        return answer

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/static/{name}", static),
            Route("/api/health", health),
            Route("/api/explain", explain, methods=["POST"]),
            Route("/api/explain/stream", explain_stream, methods=["POST"]),
            Route("/api/occlude", occlude, methods=["POST"]),
            Route("/api/saliency", saliency, methods=["POST"]),
            Route("/api/run", run_list),
            Route("/api/run/thumb", run_thumb),
            Route("/run/files/{path:path}", run_file),
        ],
        exception_handlers={
            OcclensError: on_error,
            Cancelled: on_cancelled,
            HTTPException: on_http_error,
            Exception: on_error,
        },  # fmt: skip
        lifespan=lambda app: closing(queue),
    )
    app.state.queue = queue
    return AccessGuard(app, viewer.token, viewer.loopback)


@asynccontextmanager
async def closing(queue: ModelQueue):
    yield
    queue.close()


def thumbnail(path, limits: Limits) -> bytes:
    small = ImageOps.fit(read_file(path, limits), (THUMB, THUMB), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
