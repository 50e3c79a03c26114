"""The viewer's web app (Starlette): the page, its assets, and the HTTP API the page itself uses.

``GET /api/health``; ``POST /api/explain`` (the JSON document ``occlens explain`` writes) and
``POST /api/explain/stream`` (the same as server-sent events: progress, the coarse map, the exact map);
``POST /api/occlude`` (a box or mask occluded, scored in one forward pass); ``POST /api/saliency``; with a
run's folder, ``GET /api/run``, ``GET /api/run/thumb`` and ``GET /run/files/PATH``. Every model call goes
through one :class:`~occlens.serve.queue.ModelQueue`; a request whose client disconnects stops its job.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from contextlib import asynccontextmanager
from importlib import resources

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .. import __version__
from ..core.errors import ConfigError, OcclensError, one_line
from ..core.grid import Grid
from . import work
from .answers import error, message_of, on_cancelled, on_error, on_http_error, sse, status_of
from .errors import RequestError
from .fields import EXPLAIN_FIELDS, OCCLUDE_FIELDS, SALIENCY_FIELDS, settings_from_form
from .images import image_of, mask_of, thumbnail
from .queue import Cancelled, ModelQueue, Ticket
from .rundir import RunFolder
from .security import AccessGuard
from .uploads import read_form
from .viewer import Viewer

STATIC = ("serve.js", "serve.css")
THUMBS_KEPT = 512


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
        x, name, label = await image_of(viewer, form)
        settings, options = settings_from_form(form, viewer, label, await run_options())
        try:
            Grid.build(x.shape[1], x.shape[2], settings.patch, settings.stride)
        except ConfigError as err:
            raise RequestError(str(err)) from None
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
        settings, options = settings_from_form(form, viewer, label, await run_options())  # a run's fill and seed
        mask = await mask_of(viewer, form, x.shape[1], x.shape[2])
        fill, seed, target = settings.fill, settings.seed, options.target
        ticket = Ticket()
        answer = await queued(request, lambda t: work.occlude(model, x, mask, fill, seed, target, t), ticket)
        return JSONResponse(answer)

    async def saliency(request: Request) -> Response:
        form = await read_form(request, viewer.limits, SALIENCY_FIELDS)
        x, _, label = await image_of(viewer, form)
        target = settings_from_form(form, viewer, label)[1].target
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
