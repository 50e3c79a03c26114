"""``occlens serve``'s memory: every image it decodes (an upload, a mask, a run's image by key, a thumbnail) is
held to a budget per decoding, checked from the file's header before any pixel is decoded (413, one line),
and at most ``--decodes`` decode at once. Peak memory itself is measured by ``benchmarks/serve_memory.py``.
"""

from __future__ import annotations

import asyncio
import io
import threading
from pathlib import Path

import pytest
from PIL import Image
from test_serve import Server, one_line_error, photo, run_command, small_run, tiny_model_file

import occlens

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")

from occlens.serve import UploadLimits, Viewer  # noqa: E402
from occlens.serve.rundir import RunFolder  # noqa: E402


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return tiny_model_file(tmp_path_factory.mktemp("memory-model"))


@pytest.fixture(scope="module")
def model(model_file):
    return occlens.load_model(str(model_file), device="cpu")


@pytest.fixture(scope="module")
def run_dir(model, tmp_path_factory) -> Path:
    return small_run(tmp_path_factory.mktemp("memory-run"), model)


def png(mode: str, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    fill = {"L": 9, "I;16": 900}.get(mode, (10, 200, 30, 255)[: len(mode)])
    Image.new(mode, size, fill).save(buffer, "PNG")
    return buffer.getvalue()


def test_the_decoding_budget_refuses_what_it_cannot_hold_by_pixel_mode(model):
    """An image whose decoding takes more than --max-decode-mb is refused before it is decoded (413, one line
    naming the flag): for the same 2000 x 2000 pixels, RGB (stored in 4 bytes a pixel) fits 30 MB, grayscale
    (1, and 4 for its RGB copy) fits 50 but not 30, RGBA (4 and 4) not 50; the mask of /api/occlude is held
    to it too."""
    size = (2000, 2000)
    for budget, mode, expected in [(30, "RGB", 200), (30, "L", 413), (50, "L", 200), (50, "RGBA", 413),
                                   (120, "RGBA", 200), (50, "I;16", 413)]:  # fmt: skip
        s = Server(Viewer(model, occlens.Settings(patch=8), limits=UploadLimits(max_decode_mb=budget)))
        try:
            status, answer = s.post("/api/explain", {}, {"image": (f"{mode}.png", png(mode, size))})
            if expected == 200:
                assert status == 200, (budget, mode, answer)
            else:
                one_line_error(status, answer, 413, f"over the memory budget of {budget} MB")
                assert f"{mode}.png: decoding this 2000x2000 {mode} PNG image takes about" in answer["error"]
                assert "occlens serve --max-decode-mb" in answer["error"], answer
            if (budget, mode) == (30, "L"):
                mask = {"mask": ("mask.png", png("L", size))}
                status, answer = s.post("/api/occlude", {}, {**photo(), **mask})
                one_line_error(status, answer, 413, "mask.png: decoding this 2000x2000 L PNG image")
        finally:
            s.close()


def test_a_runs_images_are_decoded_within_the_budget_too(model, run_dir):
    """A run's image opened by key, and its thumbnail, are held to the same budget as an upload."""
    s = Server(Viewer(model, run=RunFolder.open(run_dir), limits=UploadLimits(max_decode_mb=10)))
    try:
        one_line_error(*s.get("/api/run/thumb?key=lynx/large.png"), 413, "over the memory budget of 10 MB")
        one_line_error(*s.post("/api/explain", {"key": "lynx/large.png"}), 413, "over the memory budget of 10 MB")
        assert s.get("/api/run/thumb?key=tabby/img0.png")[0] == 200
    finally:
        s.close()


def test_the_decoding_queue_runs_at_most_its_width_at_once_and_bounds_the_waiting():
    """Decodings run on the queue's own threads, at most ``width`` at once; beyond ``limit`` waiting, Busy."""
    from occlens.serve.queue import Busy, DecodeQueue

    queue, gate, lock = DecodeQueue(width=2, limit=3), threading.Event(), threading.Lock()
    running, most = [0], [0]

    def job(i: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        gate.wait(10)
        with lock:
            running[0] -= 1
        return i

    async def scenario():
        jobs = [asyncio.ensure_future(queue.run(job, i)) for i in range(5)]  # 2 run, 3 wait
        while queue.waiting < 3:
            await asyncio.sleep(0.01)
        with pytest.raises(Busy, match=r"busy \(3 images waiting to be decoded\); try again shortly"):
            await queue.run(job, 99)
        gate.set()
        return await asyncio.gather(*jobs)

    assert asyncio.run(scenario()) == [0, 1, 2, 3, 4]
    assert most[0] == 2 and queue.waiting == 0
    queue.close()


def test_the_decoding_budget_and_width_are_the_commands_flags(model_file):
    proc = run_command(["serve", "--port", "0", "--max-decode-mb", "0", "--model", str(model_file)])
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and err == "occlens: error: --max-decode-mb must be a positive number, got 0.0\n", err
    proc = run_command(["serve", "--port", "0", "--decodes", "0", "--model", str(model_file)])
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "--decodes must be an int >= 1, got 0" in err, err


def test_formats_whose_decoding_cannot_be_bounded_first_are_not_decoded(model):
    """An ICO holds an image whose size its header does not say (its memory cannot be checked before decoding);
    an EPS is decoded by Ghostscript, another program: the server takes neither, in one line."""
    s = Server(Viewer(model))
    try:
        for fmt, name in (("ICO", "icon.ico"), ("EPS", "drawing.eps")):
            buffer = io.BytesIO()
            Image.new("RGB", (16, 16), (9, 9, 9)).save(buffer, fmt)
            status, answer = s.post("/api/explain", {}, {"image": (name, buffer.getvalue())})
            one_line_error(status, answer, 400, f"{name}: not an image Pillow can read")
            assert "CUR, EPS, ICNS, ICO files are not taken here: convert it to PNG" in answer["error"], answer
    finally:
        s.close()
