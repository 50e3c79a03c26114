"""The HTTP API's handlers, one function per address (:data:`ROUTES`), on the state one app shares
(:class:`ServerState`, in ``app.state.server``): the page and its assets, ``GET /api/health``,
``POST /api/explain`` and ``/api/explain/stream``, ``POST /api/occlude``, ``POST /api/saliency``, and a run's
``GET /api/run``, ``GET /api/run/thumb`` and ``GET /run/files/PATH``."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .. import __version__
from ..core.errors import one_line
from ..core.grid import Grid, VolumeGrid
from ..core.volume import Volume
from . import work
from .answers import error, message_of, sse, status_of
from .errors import NotFound, RequestError
from .fields import EXPLAIN_FIELDS, OCCLUDE_FIELDS, SALIENCY_FIELDS, one_class, settings_from_form
from .images import image_of, mask_of, thumbnail
from .page import asset
from .queue import Cancelled, DecodeQueue, ModelQueue, Ticket
from .rundir import RunFolder
from .uploads import read_form
from .viewer import Viewer, takes_volumes

if TYPE_CHECKING:
    import torch

    from ..app.options import Options
    from ..core.settings import Settings

THUMBS_KEPT = 512


@dataclass(eq=False)
class ServerState:
    """What one app's handlers share: the viewer, the one model queue, the decoding queue (as wide as the
    viewer's limits say), the page, the run's thumbnails (the latest THUMBS_KEPT) and the run's recorded
    options (read once it has recorded them)."""

    viewer: Viewer
    page: str
    queue: ModelQueue = field(default_factory=ModelQueue)
    decodes: DecodeQueue = field(init=False)  # as wide as the viewer's limits say
    thumbs: OrderedDict[str, bytes] = field(default_factory=OrderedDict)
    recorded: dict | None = None

    def __post_init__(self) -> None:
        self.decodes = DecodeQueue(self.viewer.limits.decodes)

    async def run_options(self) -> dict:
        run = self.viewer.run
        if run is None:
            return {}
        if self.recorded is None:  # read until the run has recorded its settings (a run just started may not have)
            options = (await asyncio.to_thread(run.settings)).get("options", {})
            if not options:
                return {}
            self.recorded = options
        return self.recorded

    def run_folder(self) -> RunFolder:
        if self.viewer.run is None:
            raise NotFound("this server shows no run; start it as occlens serve RUN_DIR")
        return self.viewer.run


def state_of(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state


async def queued(request: Request, fn: Callable[[Ticket], dict], ticket: Ticket) -> dict:
    """``fn(ticket)`` on the model queue; the ticket is set if the client disconnects meanwhile."""

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        ticket.cancel()

    watcher = asyncio.create_task(watch())
    try:
        answer: dict = await state_of(request).queue.run(fn, ticket)
        return answer
    finally:
        watcher.cancel()


# --------------------------------------------------------------------------------------------------
# the page


async def get_page(request: Request) -> Response:
    page = state_of(request).page
    return Response(page, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-store"})


async def get_asset(request: Request) -> Response:
    name = request.path_params["name"]
    found = asset(name)
    if found is None:
        return error(f"no such asset {name!r}", 404)
    return Response(found[0], media_type=found[1])


async def get_health(request: Request) -> Response:
    state = state_of(request)
    viewer, model = state.viewer, state.viewer.model
    settings = viewer.settings.for_model(model.patch)
    assert settings.patch is not None and settings.stride is not None  # for_model resolves the window
    return JSONResponse({
        "status": "ok",
        "version": __version__,
        "model": model.name,
        "device": str(model.device),
        "classes": list(model.labels),
        "input_size": list(model.preprocess.size),
        "volume": takes_volumes(model),  # a volume model: it takes NIfTI uploads, windows of D,H,W
        "output": model.output,
        "settings": {"patch": list(settings.patch), "stride": list(settings.stride), "fill": settings.fill,
                     "engine": settings.engine, "seed": settings.seed},
        "run": None if viewer.run is None else str(viewer.run.root),
        "queue": state.queue.counts.__dict__.copy(),
        "decoding": {"waiting": state.decodes.waiting, "at_once": state.decodes.width},
        "limits": {"max_bytes": viewer.limits.max_bytes, "max_pixels": viewer.limits.max_pixels,
                   "max_decode_mb": viewer.limits.max_decode_mb, "decodes": viewer.limits.decodes},
    })  # fmt: skip


# --------------------------------------------------------------------------------------------------
# the model's work


async def explain_request(
    request: Request,
) -> tuple[torch.Tensor | Volume, str, int | tuple | None, Settings, Options]:
    """The image, its name and true class, the settings and the options an explain request asks for."""
    state = state_of(request)
    viewer = state.viewer
    form = await read_form(request, viewer.limits, EXPLAIN_FIELDS)
    x, name, label = await image_of(viewer, form, state.decodes)
    settings, options = settings_from_form(form, viewer, label, await state.run_options())
    if isinstance(x, Volume):  # the window fits the image, or the volume
        VolumeGrid.build(*x.size, settings.patch, settings.stride)
    else:
        Grid.build(x.shape[1], x.shape[2], settings.patch, settings.stride)
    return x, name, label, settings, options


async def post_explain(request: Request) -> Response:
    x, name, label, settings, options = await explain_request(request)
    model = state_of(request).viewer.model
    ticket = Ticket()
    doc = await queued(request, lambda t: work.explain_one(model, x, name, label, settings, options, t), ticket)
    return JSONResponse(doc)


async def post_explain_stream(request: Request) -> Response:
    x, name, label, settings, options = await explain_request(request)
    state = state_of(request)
    model = state.viewer.model
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    ticket = Ticket()

    def emit(kind: str, data: dict) -> None:
        loop.call_soon_threadsafe(events.put_nowait, (kind, data))

    def job(t: Ticket) -> dict:
        return work.explain_one(model, x, name, label, settings, options, t, emit, coarse=True)

    async def body() -> AsyncIterator[bytes]:
        task = asyncio.ensure_future(state.queue.run(job, ticket))
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


def flat(found: tuple, what: str) -> tuple[torch.Tensor, str, int | tuple | None]:
    """An image found by :func:`image_of` for an answer about a 2-D image (``what``: occlude, saliency): a volume
    is refused in one line."""
    if isinstance(found[0], Volume):
        raise RequestError(f"{what} answers for a 2-D image; a volume is explained whole (POST /api/explain)")
    return found


async def post_occlude(request: Request) -> Response:
    state = state_of(request)
    viewer = state.viewer
    form = await read_form(request, viewer.limits, OCCLUDE_FIELDS)
    x, _, label = flat(await image_of(viewer, form, state.decodes), "occlude")
    settings, options = settings_from_form(form, viewer, label, await state.run_options())  # a run's fill and seed
    mask = await mask_of(viewer, form, x.shape[1], x.shape[2], state.decodes)
    fill, seed, target = settings.fill, settings.seed, one_class(form, options, "occlude")
    ticket = Ticket()
    answer = await queued(request, lambda t: work.occlude(viewer.model, x, mask, fill, seed, target, t), ticket)
    return JSONResponse(answer)


async def post_saliency(request: Request) -> Response:
    state = state_of(request)
    viewer = state.viewer
    form = await read_form(request, viewer.limits, SALIENCY_FIELDS)
    x, _, label = flat(await image_of(viewer, form, state.decodes), "saliency")
    target = one_class(form, settings_from_form(form, viewer, label)[1], "saliency")
    ticket = Ticket()
    return JSONResponse(await queued(request, lambda t: work.saliency_map(viewer.model, x, target, t), ticket))


# --------------------------------------------------------------------------------------------------
# a run's folder


async def get_run(request: Request) -> Response:
    run = state_of(request).run_folder()
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


async def get_run_thumb(request: Request) -> Response:
    state = state_of(request)
    run, thumbs = state.run_folder(), state.thumbs
    key = request.query_params.get("key", "")
    if key not in thumbs:
        path = run.image_path(await asyncio.to_thread(run.record, key))
        thumbs[key] = await state.decodes.run(thumbnail, path, state.viewer.limits)
        while len(thumbs) > THUMBS_KEPT:
            thumbs.popitem(last=False)
    return Response(thumbs[key], media_type="image/jpeg")


async def get_run_file(request: Request) -> Response:
    return FileResponse(state_of(request).run_folder().file(request.path_params["path"]))


ROUTES = [
    Route("/", get_page),
    Route("/static/{name}", get_asset),
    Route("/api/health", get_health),
    Route("/api/explain", post_explain, methods=["POST"]),
    Route("/api/explain/stream", post_explain_stream, methods=["POST"]),
    Route("/api/occlude", post_occlude, methods=["POST"]),
    Route("/api/saliency", post_saliency, methods=["POST"]),
    Route("/api/run", get_run),
    Route("/api/run/thumb", get_run_thumb),
    Route("/run/files/{path:path}", get_run_file),
]
