"""``occlens serve``: the HTTP API against a real uvicorn server on a loopback port, and the page in a real
browser (Debian's Chromium, driven by Playwright, as the report's test does).

The model is a tiny TorchScript CNN on a 48 x 64 input with its description beside it, loaded with
``occlens.load_model`` as a user would; every number the server returns is compared with the library
(``occlens.explain``) or with the model run by the test itself on an occluded copy it builds.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyConvNet, chromium, needs_chromium, titles
from PIL import Image

import occlens
from occlens.cli import main
from occlens.core.image import read_image
from occlens.core.samples import sample
from occlens.models.preprocess import Preprocess

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")

from occlens.serve import UploadLimits, Viewer, address, bind, uvicorn_server  # noqa: E402
from occlens.serve.rundir import RunFolder  # noqa: E402

SIZE = (48, 64)
NAMES = ["tabby", "tiger cat", "Egyptian cat", 'fox <b>"red"</b>', "lynx", "dingo", "espresso"]
PHOTO = sample("chelsea").path


class Slow(torch.nn.Module):
    """TinyConvNet that sleeps in every call and records how many calls run at once (the caller's own model)."""

    def __init__(self, seconds: float = 0.0):
        super().__init__()
        self.inner = TinyConvNet(classes=len(NAMES))
        self.seconds = seconds
        self.calls = 0
        self.active = 0
        self.most = 0
        self.lock = threading.Lock()
        self.eval()

    def forward(self, x):
        with self.lock:
            self.calls += 1
            self.active += 1
            self.most = max(self.most, self.active)
        try:
            time.sleep(self.seconds)
            return self.inner(x)
        finally:
            with self.lock:
                self.active -= 1


def tiny_model_file(folder: Path) -> Path:
    """tiny.pt (TorchScript) and tiny.json: a 48 x 64 input, no normalisation, NAMES."""
    folder.mkdir(parents=True, exist_ok=True)
    net = TinyConvNet(classes=len(NAMES))
    torch.jit.trace(net, torch.rand(1, 3, *SIZE)).save(str(folder / "tiny.pt"))
    description = {"input_size": list(SIZE), "resize": None, "mean": [0, 0, 0], "std": [1, 1, 1], "labels": NAMES}
    (folder / "tiny.json").write_text(json.dumps(description))
    return folder / "tiny.pt"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return tiny_model_file(tmp_path_factory.mktemp("serve-model"))


@pytest.fixture(scope="module")
def model(model_file):
    return occlens.load_model(str(model_file), device="cpu")


class Server:
    """A viewer on a real uvicorn server in a thread, on a free loopback port."""

    def __init__(self, viewer: Viewer, host: str = "127.0.0.1") -> None:
        self.sock = bind(host, 0)
        self.port = self.sock.getsockname()[1]
        self.url = address(self.sock).replace("0.0.0.0", "127.0.0.1")
        self.server = uvicorn_server(viewer, self.sock)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """(status, headers, body bytes) of one request, sent as it is (no URL normalisation)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def post(self, path: str, fields: dict, files: dict | None = None, headers: dict | None = None):
        body, kind = multipart(fields, files or {})
        status, got, data = self.request("POST", path, body, {"Content-Type": kind, **(headers or {})})
        return status, (json.loads(data) if got.get("content-type", "").startswith("application/json") else data)

    def get(self, path: str, headers: dict | None = None):
        status, got, data = self.request("GET", path, headers=headers)
        return status, (json.loads(data) if got.get("content-type", "").startswith("application/json") else data)


def multipart(fields: dict, files: dict) -> tuple[bytes, str]:
    """A multipart/form-data body of text ``fields`` and ``files`` ({name: (filename, bytes)})."""
    boundary = "occlens-test-boundary"
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        parts.append(head.encode() + b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def server(model):
    s = Server(Viewer(model, occlens.Settings(patch=8), limits=UploadLimits(max_bytes=2 << 20)))
    yield s
    s.close()


def photo() -> dict:
    return {"image": ("chelsea.jpg", PHOTO.read_bytes())}


def one_line_error(status: int, answer, expected: int, words: str) -> None:
    assert status == expected, (status, answer)
    message = answer["error"]
    assert "\n" not in message and words in message, message


def occluded_scores(model, box, fill: float = 0.5) -> np.ndarray:
    """The model's own softmax of the photo with ``box`` (left, top, right, bottom) set to ``fill``."""
    x = model.preprocess(read_image(PHOTO)).clone()
    left, top, right, bottom = box
    x[:, top:bottom, left:right] = fill
    with torch.no_grad():
        return torch.softmax(model.module(x[None]).double(), dim=1)[0].numpy()


# --------------------------------------------------------------------------------------------------
# the API


def test_no_such_address_and_another_method_are_json_too(server):
    status, got, body = server.request("GET", "/api/nothing")
    assert status == 404 and got["content-type"] == "application/json"
    assert (
        json.loads(body)["error"]
        == "no such address: GET /api/nothing (the HTTP API is in the README, under occlens serve)"
    )
    status, got, body = server.request("GET", "/api/explain")
    assert (
        status == 405
        and json.loads(body)["error"] == "GET /api/explain: this address takes POST"
        and got["allow"] == "POST"
    )


def test_health_names_the_model_its_classes_device_and_settings(server, model):
    status, h = server.get("/api/health")
    assert status == 200
    assert h["model"] == model.name and h["classes"] == NAMES and h["device"] == "cpu"
    assert h["input_size"] == list(SIZE) and h["settings"]["patch"] == [8, 8] and h["run"] is None


def test_explain_returns_the_document_occlens_explain_writes(server, model, tmp_path):
    status, doc = server.post("/api/explain", {"patch": "16,8", "stride": "8,4", "fill": "black"}, photo())
    assert status == 200
    expected = occlens.explain(model, PHOTO, patch=(16, 8), stride=(8, 4), fill="black")
    np.testing.assert_allclose(doc["delta"], expected.delta, rtol=0, atol=1e-6)
    assert doc["grid"]["rows"] == expected.grid.rows and doc["settings"]["fill"] == "black"
    # the same keys as the file `occlens explain` writes
    code = main(["explain", str(PHOTO), "--model", str(model.source.spec), "--out", str(tmp_path),
                             "--patch", "16,8", "--stride", "8,4", "--fill", "black"])  # fmt: skip
    written = json.loads((tmp_path / "chelsea.json").read_text())
    assert code == 0 and set(doc) == set(written) and set(doc["meta"]) == set(written["meta"])
    np.testing.assert_allclose(doc["delta"], written["delta"], rtol=0, atol=1e-6)


def test_explain_of_a_class_by_name_and_a_true_class(server, model):
    status, doc = server.post("/api/explain", {"target": "K", "label": "lynx"}, photo())
    assert status == 200 and doc["target"] == NAMES.index("lynx") and doc["label"] == NAMES.index("lynx")
    expected = occlens.explain(model, PHOTO, label="lynx", target="lynx", patch=8)
    np.testing.assert_allclose(doc["delta"], expected.delta, rtol=0, atol=1e-6)
    status, doc = server.post("/api/explain", {"target": "Egyptian cat"}, photo())
    assert status == 200 and doc["target"] == 2 and doc["meta"]["target_name"] == "Egyptian cat"


def test_the_stream_sends_the_image_progress_a_coarse_map_then_the_exact_map(server, model):
    status, data = server.post("/api/explain/stream", {"patch": "4"}, photo())
    assert status == 200
    events = [(b.split("\n")[0][7:], json.loads(b.split("\n")[1][6:])) for b in data.decode().strip().split("\n\n")]
    kinds = [k for k, _ in events]
    assert kinds[0] == "image" and kinds[-1] == "exact" and kinds.index("coarse") < kinds.index("exact")
    image = dict(events)["image"]
    assert (image["height"], image["width"]) == SIZE
    coarse, exact = dict(events)["coarse"], dict(events)["exact"]
    assert coarse["meta"]["anytime"]["scored"] < coarse["meta"]["anytime"]["windows"] == 12 * 16
    np.testing.assert_allclose(exact["delta"], occlens.explain(model, PHOTO, patch=4).delta, rtol=0, atol=1e-6)
    progress = [d for k, d in events if k == "progress"]
    assert {p["phase"] for p in progress} == {"coarse", "exact"} and progress[-1]["done"] == progress[-1]["total"]


def test_occlude_scores_the_box_and_the_image_in_one_pass(server, model):
    box = (8, 16, 24, 40)  # left, top, right, bottom
    status, a = server.post("/api/occlude", {"box": ",".join(map(str, box))}, photo())
    assert status == 200 and a["pixels"] == 16 * 24 and a["bounds"] == list(box)
    p = occluded_scores(model, box)
    assert a["after"]["probability"] == pytest.approx(p[a["target"]], abs=1e-6)
    assert [t["class"] for t in a["after"]["top_k"]] == list(np.argsort(-p, kind="stable")[:5])
    clean = occlens.explain(model, PHOTO, patch=8)
    assert a["target"] == clean.predicted
    assert a["before"]["probability"] == pytest.approx(clean.probabilities[clean.predicted], abs=1e-6)
    assert a["delta"] == pytest.approx(np.log(a["after"]["probability"]) - np.log(a["before"]["probability"]))
    # one window as a box: the exact map's value for it
    status, w = server.post("/api/occlude", {"box": "16,8,24,16"}, photo())
    assert w["delta"] == pytest.approx(clean.delta[1, 2], abs=1e-5)


def test_occlude_takes_a_mask_image(server, model):
    mask = np.zeros(SIZE, dtype=np.uint8)
    mask[10:20, 30:50] = 255
    mask[30:34, 0:4] = 1
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="PNG")
    status, a = server.post("/api/occlude", {"fill": "0"}, {**photo(), "mask": ("mask.png", buffer.getvalue())})
    assert status == 200 and a["pixels"] == 10 * 20 + 16
    x = model.preprocess(read_image(PHOTO)).clone()
    x[:, mask > 0] = 0.0
    with torch.no_grad():
        p = torch.softmax(model.module(x[None]).double(), dim=1)[0].numpy()
    assert a["after"]["probability"] == pytest.approx(p[a["target"]], abs=1e-6)


def test_saliency_is_the_library_s_map_drawn(server, model):
    status, s = server.post("/api/saliency", {"target": "tiger cat"}, photo())
    assert status == 200 and s["png"].startswith("data:image/png;base64,")
    x = model.preprocess(read_image(PHOTO))
    assert s["max"] == pytest.approx(float(occlens.saliency(model, x, 1).max()), rel=1e-9)


def bomb_png(side: int = 20000) -> bytes:
    """A valid 1-bit PNG of side x side black pixels: about 50 KB on disk, 400 million pixels decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\0" * ((side + 7) // 8 + 1) * side, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)) + chunk(
        b"IDAT", rows
    ) + chunk(b"IEND", b"")  # fmt: skip


def test_bad_uploads_get_4xx_and_one_line(server):
    cases = [
        ({}, {"image": ("notes.txt", b"this is not an image")}, 400, "notes.txt: not an image Pillow can read"),
        ({}, {"image": ("empty.png", b"")}, 400, "empty"),
        ({}, {"image": ("big.png", b"\0" * (3 << 20))}, 413, "upload limit"),
        ({}, {"image": ("bomb.png", bomb_png())}, 413, "decompression bomb"),
        ({"image": "chelsea.jpg"}, {}, 400, "must be an image file"),
        ({}, {}, 400, "give an image file in field 'image'"),
        ({"patch": "big"}, photo(), 400, "patch must be N or H,W"),
        ({"patch": "100"}, photo(), 400, "larger than the 48x64 image"),
        ({"patch": "bands"}, photo(), 400, "is band occlusion, which the viewer does not draw yet"),
        ({"patch": "bands,8"}, photo(), 400, "is band occlusion, which the viewer does not draw yet"),
        ({"patch": "4,8,8"}, photo(), 400, "is a volume's window, and this server's model takes 2-D images"),
        ({"fill": "purple"}, photo(), 400, "unknown fill 'purple'"),
        ({"engine": "warp"}, photo(), 400, "engine must be one of"),
        ({"target": "zebra"}, photo(), 400, "zebra"),
        ({"target": "K"}, photo(), 400, "none is known; give label"),
        ({"colour": "red"}, photo(), 400, "unknown form field(s) 'colour'"),
        ({"key": "a.png"}, photo(), 400, "got both"),
        ({"key": "a.png"}, {}, 400, "shows no run"),
    ]
    for fields, files, expected, words in cases:
        status, answer = server.post("/api/explain", fields, files)
        one_line_error(status, answer, expected, words)
    for fields, expected, words in [
        ({}, 400, "give the region to occlude"),
        ({"box": "1,2,3"}, 400, "box must be left,top,right,bottom"),
        ({"box": "10,10,5,20"}, 400, "is empty"),
        ({"box": "100,100,120,120"}, 400, "outside the 64x48 image"),
        ({"box": "1,1,4,4", "mask": "x"}, 400, "one, not both"),
    ]:
        status, answer = server.post("/api/occlude", fields, photo())
        one_line_error(status, answer, expected, words)
    status, got, data = server.request("POST", "/api/explain", b"{}", {"Content-Type": "application/json"})
    one_line_error(status, json.loads(data), 415, "multipart/form-data")
    status, answer = server.get("/api/run")
    one_line_error(status, answer, 404, "shows no run")
    status, answer = server.get("/static/secret.py")
    assert status == 404


@pytest.mark.serve
def test_the_pixel_limit_is_the_server_s(model):
    s = Server(Viewer(model, limits=UploadLimits(max_pixels=1000)))
    try:
        status, answer = s.post("/api/explain", {}, photo())
        one_line_error(status, answer, 413, "decompression bomb")
        assert "occlens serve --max-pixels" in answer["error"]
    finally:
        s.close()


def test_a_loopback_server_answers_only_loopback_host_names(server):
    assert server.get("/api/health", {"Host": f"localhost:{server.port}"})[0] == 200
    assert server.get("/api/health", {"Host": f"[::1]:{server.port}"})[0] == 200
    status, answer = server.get("/api/health", {"Host": "attacker.example"})
    one_line_error(status, answer, 421, "only requests for 127.0.0.1 or localhost")


def test_another_sites_page_cannot_post_work(server):
    """A web page elsewhere may make the browser POST to 127.0.0.1 (the Host is then a loopback one): its
    Origin gives it away, for a read too. The page's own requests (its Origin is this server) and scripts (no
    Origin) pass."""
    own = f"http://127.0.0.1:{server.port}"
    assert server.post("/api/explain", {}, photo(), {"Origin": own})[0] == 200
    assert server.post("/api/explain", {}, photo())[0] == 200
    for origin in ("https://attacker.example", "null", f"http://127.0.0.1:{server.port + 1}"):
        status, answer = server.post("/api/explain", {}, photo(), {"Origin": origin})
        one_line_error(status, answer, 403, "from another site")
    one_line_error(*server.get("/api/health", {"Origin": "https://attacker.example"}), 403, "from another site")


@pytest.mark.serve
def test_one_model_queue_runs_concurrent_requests_one_at_a_time():
    net = Slow(0.002)
    loaded = occlens.LoadedModel("slow", net, Preprocess(SIZE, None, "bilinear", (0.0,) * 3, (1.0,) * 3), tuple(NAMES))
    s = Server(Viewer(loaded, occlens.Settings(patch=8, batch_size=4, engine="dense")))
    try:
        answers = [None] * 6
        threads = [
            threading.Thread(target=lambda i=i: answers.__setitem__(i, s.post("/api/explain", {}, photo())))
            for i in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert all(status == 200 for status, _ in answers)
        assert net.most == 1  # never two model calls at once
        assert s.get("/api/health")[1]["queue"]["done"] == 6
    finally:
        s.close()


@pytest.mark.serve
def test_a_client_that_disconnects_stops_its_work():
    net = Slow(0.05)
    loaded = occlens.LoadedModel("slow", net, Preprocess(SIZE, None, "bilinear", (0.0,) * 3, (1.0,) * 3), tuple(NAMES))
    s = Server(Viewer(loaded, occlens.Settings(patch=4, batch_size=1, engine="dense")))  # 192 windows
    try:
        for path in ("/api/explain", "/api/explain/stream"):
            before = net.calls
            body, kind = multipart({}, photo())
            conn = socket.create_connection(("127.0.0.1", s.port))
            head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
            conn.sendall(head.encode() + b"\r\n" + body)
            deadline = time.monotonic() + 30
            while net.calls < before + 5:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            conn.close()
            time.sleep(1.0)
            stopped = net.calls
            time.sleep(0.5)
            assert net.calls == stopped and stopped - before < 100  # it stopped, well before its 192 + 1 calls
        assert s.get("/api/health")[1]["queue"]["cancelled"] == 2
    finally:
        s.close()


# --------------------------------------------------------------------------------------------------
# a run's folder


@pytest.fixture(scope="module")
def run_server(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-run")
    for i, (name, colour) in enumerate([("tabby", 0), ("tabby", 1), ("lynx", 2)]):
        px = np.random.default_rng(i).integers(0, 120, (40, 56, 3), dtype=np.uint8)
        px[..., colour] += 120
        (root / "data" / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(px).save(root / "data" / name / f"img{i}.png")
    occlens.run(root / "data", root / "out", model, patch=8, workers=0)
    (root / "secret.txt").write_text("outside the run")
    os.symlink(root / "secret.txt", root / "out" / "images" / "escape.txt")
    os.symlink(root / "out" / "images" / "tabby" / "img0.json", root / "out" / "images" / "inside.json")
    # the viewer's own window and fill are others than the run's: a run's image is explained with the run's
    s = Server(Viewer(model, occlens.Settings(patch=16, fill="black"), run=RunFolder.open(root / "out")))
    yield s, root
    s.close()


def test_a_run_lists_its_images_and_explains_any_live(run_server, model):
    s, root = run_server
    status, run = s.get("/api/run")
    assert status == 200 and sorted(r["key"] for r in run["images"]) == [
        "lynx/img2.png",
        "tabby/img0.png",
        "tabby/img1.png",
    ]
    assert run["options"]["patch"] == [8, 8]
    row = next(r for r in run["images"] if r["key"] == "tabby/img1.png")
    assert row["label"] == 0 and row["labelName"] == "tabby"
    status, doc = s.post("/api/explain", {"key": "tabby/img1.png", "target": "K"})
    expected = occlens.explain(model, root / "data" / "tabby" / "img1.png", label=0, target=0, patch=8)
    assert status == 200 and doc["label"] == 0 and doc["target"] == 0
    np.testing.assert_allclose(doc["delta"], expected.delta, rtol=0, atol=1e-6)
    written = json.loads((root / "out" / "images" / "tabby" / "img1.json").read_text())
    mapped = written["delta"] if written["target"] == 0 else written["label_map"]["delta"]  # K as the run wrote it
    np.testing.assert_allclose(doc["delta"], mapped, rtol=0, atol=1e-6)
    status, doc = s.post("/api/explain", {"key": "tabby/img1.png", "patch": "24,32"})  # asked for: as asked
    assert status == 200 and doc["grid"]["patch"] == [24, 32] and doc["grid"]["stride"] == [24, 32]
    upload = {"image": ("img1.png", (root / "data" / "tabby" / "img1.png").read_bytes())}
    status, doc = s.post("/api/explain", {}, upload)  # not the run's image: the viewer's own window
    assert status == 200 and doc["grid"]["patch"] == [16, 16]
    status, answer = s.post("/api/occlude", {"key": "tabby/img1.png", "box": "8,8,24,24"})  # the run's gray
    x = model.preprocess(read_image(root / "data" / "tabby" / "img1.png")).clone()
    x[:, 8:24, 8:24] = 0.5
    with torch.no_grad():
        p = torch.softmax(model.module(x[None]).double(), dim=1)[0].numpy()
    assert status == 200 and answer["after"]["probability"] == pytest.approx(p[answer["target"]], abs=1e-6)
    status, thumb = s.get("/api/run/thumb?key=tabby/img0.png")
    assert status == 200 and Image.open(io.BytesIO(thumb)).size == (160, 160)
    one_line_error(*s.post("/api/explain", {"key": "tabby/none.png"}), 404, "no explained image")


def test_run_files_are_served_only_from_inside_the_run(run_server):
    s, root = run_server
    status, png = s.get("/run/files/images/tabby/img0.png")
    assert status == 200 and png == (root / "out" / "images" / "tabby" / "img0.png").read_bytes()
    assert s.get("/run/files/report/index.html")[0] == 200
    status, got, _ = s.request("GET", "/run/files/images/inside.json")  # a link that stays inside
    assert status == 200 and got["x-content-type-options"] == "nosniff"
    escapes = ["/run/files/../secret.txt", "/run/files/images/../../secret.txt", "/run/files/%2e%2e/secret.txt",
               "/run/files/images/escape.txt", "/run/files//etc/passwd",
               "/run/files/images/..%2f..%2fsecret.txt"]  # fmt: skip
    for path in escapes:
        status, answer = s.get(path)
        assert status in (403, 404) and status != 200, path
        assert "outside the run" in answer["error"] or "inside the run" in answer["error"], (path, answer)
    assert s.get("/run/files/images/nothing.png")[0] == 404
    for other in ("manifest.sqlite", "notes/plan.html"):  # what else DIR holds is not served
        one_line_error(*s.get(f"/run/files/{other}"), 403, "only the run's report and images folders")


# --------------------------------------------------------------------------------------------------
# the command


def run_command(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "occlens", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)  # fmt: skip


@pytest.mark.serve
@pytest.mark.slow
def test_a_non_loopback_bind_prints_a_token_that_every_request_needs(model_file):
    proc = run_command(["serve", "--host", "0.0.0.0", "--port", "0", "--model", str(model_file), "--device", "cpu"])
    try:
        first, second = proc.stdout.readline(), proc.stdout.readline()
        assert "not a loopback address" in first, (first, proc.stderr.read() if proc.poll() is not None else "")
        token = first.rsplit(" ", 1)[1].strip()
        url = second.split()[2]
        assert url.startswith("http://0.0.0.0:") and url.endswith(f"?token={token}")
        port = int(url.split(":")[2].split("/")[0])
        conn = lambda: http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # noqa: E731
        for headers, path, expected in [
            ({}, "/api/health", 401),
            ({"Authorization": "Bearer wrong"}, "/api/health", 401),
            ({}, "/static/serve.js", 401),
            ({"Authorization": f"Bearer {token}"}, "/api/health", 200),
            ({"X-Occlens-Token": token}, "/api/health", 200),
            ({"Host": "attacker.example", "X-Occlens-Token": token}, "/api/health", 200),  # no loopback: the token
            ({"Cookie": f"occlens_token_{port}={token}"}, "/static/serve.js", 200),
            ({"Cookie": f"occlens_token_{port + 1}={token}"}, "/static/serve.js", 401),  # another port's cookie
            ({"Cookie": f"occlens_token={token}"}, "/static/serve.js", 401),  # a cookie of no port
        ]:
            c = conn()
            c.request("GET", path, headers=headers)
            r = c.getresponse()
            body = r.read()
            assert r.status == expected, (headers, path, r.status, body)
            if expected == 401:
                assert "\n" not in json.loads(body)["error"]
        c = conn()
        c.request("GET", f"/?token={token}")
        r = c.getresponse()
        assert r.status == 200 and r.getheader("set-cookie").startswith(f"occlens_token_{port}={token};")
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize("port", ["99999", "-1"])
@pytest.mark.slow
def test_a_port_out_of_range_is_one_line_before_the_model_loads(port):
    proc = run_command(["serve", "--port", port, "--model", "no-such-model-file.pt"])  # a port first, then a model
    out, err = proc.communicate(timeout=120)
    assert (
        proc.returncode == 2
        and err == f"occlens: error: --port must be a port number, 0..65535 (0: a free one), got {port}\n"
    )


@pytest.mark.serve
@pytest.mark.slow
def test_one_ctrl_c_stops_the_server(model_file):
    """uvicorn stops on the first Ctrl-C; the command says it stopped (not the "second Ctrl-C" of a run)."""
    proc = run_command(["serve", "--port", "0", "--model", str(model_file), "--device", "cpu"])
    try:
        assert "occlens serve: http://127.0.0.1:" in proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "occlens: stopped", err
    assert "second Ctrl-C" not in err and "Traceback" not in err


@pytest.mark.parametrize("token", ["", "short"])
@pytest.mark.slow
def test_an_empty_or_short_token_is_refused(model_file, token):
    """An empty token would match a request that brings none: every request would be let in."""
    proc = run_command(["serve", "--host", "0.0.0.0", "--port", "0", "--token", token, "--model", str(model_file)])
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and err.count("\n") == 1 and "at least 8 characters" in err, err
    assert not out


@pytest.mark.slow
def test_without_the_serve_extra_the_command_says_how_to_install_it():
    code = "import sys; sys.modules['uvicorn'] = None; from occlens.cli import main; sys.exit(main(['serve']))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "occlens: error: occlens serve needs the serve extra: pip install 'occlens[serve]' "
        "(Starlette, uvicorn, python-multipart)"
    )


@pytest.mark.slow
def test_a_port_in_use_is_one_line(model_file):
    taken = bind("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        proc = run_command(["serve", "--port", str(port), "--model", str(model_file), "--device", "cpu"])
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2 and err.startswith(f"occlens: error: cannot listen on 127.0.0.1:{port}"), err
        assert err.count("\n") == 1
    finally:
        taken.close()


# --------------------------------------------------------------------------------------------------
# the page, in a real browser


@pytest.fixture
def browser():
    """A browser per test here, closed when it ends: Playwright's event loop, while open, would stop the
    asyncio tests of this module from running theirs."""
    with chromium() as b:
        yield b


@needs_chromium
def test_the_page_in_a_real_browser(server, model, browser):
    outside, errors = [], []
    context = browser.new_context(viewport={"width": 1600, "height": 1400}, bypass_csp=True)  # see TEST_ONLY_EVAL
    try:
        page = context.new_page()
        page.on("request", lambda r: None if r.url.startswith((server.url, "data:")) else outside.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(server.url)
        page.wait_for_function("window.occlensView.health !== null")
        assert page.input_value("#patch") == "8,8"
        page.set_input_files("#file", str(PHOTO))  # upload a bundled photo
        page.wait_for_selector("#map[data-state=exact]", timeout=60_000)
        assert page.evaluate("window.occlensView.history") == ["coarse", "exact"]
        delta = np.array(page.evaluate("window.occlensView.exact.delta"))
        expected = occlens.explain(model, PHOTO, patch=8)
        np.testing.assert_allclose(delta, expected.delta, rtol=0, atol=1e-6)
        q = NAMES[expected.predicted]
        assert f"supported {expected.predicted} {q}" in page.text_content("#legend-words")
        assert page.text_content("#map-caption").startswith(
            f"exact δL per window for predicted class Q: {expected.predicted}"
        )
        top = page.locator("#top5 tbody tr td:nth-child(2)").all_text_contents()
        assert top[0] == f"{expected.predicted} {q} (Q)"  # a hostile class name is text, not markup
        page.wait_for_function("document.getElementById('saliency').naturalWidth > 0")

        # click window (3, 5): the occluded copy and the top-5 without it
        rect = page.locator("#view").bounding_box()
        scale = rect["width"] / SIZE[1]
        r, c = 3, 5
        page.mouse.click(rect["x"] + (c * 8 + 4) * scale, rect["y"] + (r * 8 + 4) * scale)
        page.wait_for_selector("#occlusion[data-state=done][data-window='3,5']")
        p_after = occluded_scores(model, (c * 8, r * 8, c * 8 + 8, r * 8 + 8))
        names = page.locator("#occlude-top5 tbody tr td:nth-child(2)").all_text_contents()
        assert names == [f"{k} {NAMES[k]}" for k in np.argsort(-p_after, kind="stable")[:5]]
        assert page.evaluate("window.occlensView.occlusion.delta") == pytest.approx(expected.delta[r, c], abs=1e-5)
        assert page.eval_on_selector("#occluded", "i => i.complete && i.naturalWidth") == SIZE[1]

        # draw a rectangle from pixel (10, 5) to pixel (40, 30): P(Q) after
        at = lambda x, y: (rect["x"] + (x + 0.5) * scale, rect["y"] + (y + 0.5) * scale)  # noqa: E731
        page.mouse.move(*at(10, 5))
        page.mouse.down()
        page.mouse.move(*at(25, 20), steps=4)
        page.mouse.move(*at(40, 30), steps=4)
        page.mouse.up()
        page.wait_for_selector("#occlusion[data-state=done][data-window='']")
        after = float(page.get_attribute("#occlusion", "data-probability-after"))
        assert after == pytest.approx(occluded_scores(model, (10, 5, 41, 31))[expected.predicted], abs=1e-6)
        assert "P(" in page.text_content("#occlusion-words")

        # switch the explained class by name
        page.fill("#target", "Egyptian cat")
        page.press("#target", "Enter")
        page.wait_for_function("window.occlensView.exact && window.occlensView.exact.target === 2", timeout=60_000)
        delta = np.array(page.evaluate("window.occlensView.exact.delta"))
        np.testing.assert_allclose(delta, occlens.explain(model, PHOTO, patch=8, target="Egyptian cat").delta,
                                   rtol=0, atol=1e-6)  # fmt: skip
        assert "for explained class: 2 Egyptian cat" in page.text_content("#map-caption")
        assert page.locator("#error").is_hidden()
    finally:
        context.close()
    assert not outside, f"the page fetched {outside}"
    assert not errors, errors


# TEST_ONLY_EVAL: these tests wait on conditions written in JavaScript, which Playwright evaluates as a string:
# the page's content security policy forbids that (no eval), so their browser contexts bypass it. The page
# under its policy, with nothing bypassed, is test_serve_security.py's.


@contextmanager
def viewer_page(browser, url: str, init: str | None = None):
    """The viewer at ``url`` in a page of its own (``init``: a script run before the page's), closed after;
    the page must raise no script error."""
    errors = []
    context = browser.new_context(viewport={"width": 1600, "height": 1400}, bypass_csp=True)  # see TEST_ONLY_EVAL
    try:
        page = context.new_page()
        if init is not None:
            page.add_init_script(init)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        yield page
    finally:
        context.close()
    assert not errors, errors


def distance_to_segment(h: int, w: int, a: tuple[float, float], b: tuple[float, float]) -> np.ndarray:
    """Each pixel centre's distance to the segment from pixel centre ``a`` to ``b`` ((x, y) pixels)."""
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    (ax, ay), (bx, by) = (a[0] + 0.5, a[1] + 0.5), (b[0] + 0.5, b[1] + 0.5)
    t = np.clip(((xs - ax) * (bx - ax) + (ys - ay) * (by - ay)) / max((bx - ax) ** 2 + (by - ay) ** 2, 1e-12), 0, 1)
    return np.hypot(xs - (ax + t * (bx - ax)), ys - (ay + t * (by - ay)))


@needs_chromium
def test_the_brush_occludes_what_is_painted(server, model, browser):
    """Strokes of the brush add up to one region, occluded and scored as painted; Clear forgets it."""
    with viewer_page(browser, server.url) as page:
        page.wait_for_function("window.occlensView.health !== null")
        page.set_input_files("#file", str(PHOTO))
        page.wait_for_selector("#map[data-state=exact]", timeout=60_000)
        q = page.evaluate("window.occlensView.exact.predicted")
        page.select_option("#tool", "brush")
        page.fill("#radius", "3")
        rect = page.locator("#view").bounding_box()
        scale = rect["width"] / SIZE[1]
        at = lambda x, y: (rect["x"] + (x + 0.5) * scale, rect["y"] + (y + 0.5) * scale)  # noqa: E731
        near = np.full(SIZE, np.inf)  # each pixel's distance to the strokes so far
        pixels = 0
        for a, b in [((10, 10), (30, 10)), ((40, 20), (40, 40))]:  # along rows and columns: on whole pixels
            page.mouse.move(*at(*a))
            page.mouse.down()
            page.mouse.move(*at(*b), steps=6)
            page.mouse.up()
            page.wait_for_function(f"window.occlensView.occlusion && window.occlensView.occlusion.pixels > {pixels}")
            mask = np.array(page.evaluate("window.occlensView.mask"), dtype=bool).reshape(SIZE)
            pixels = int(mask.sum())
            assert page.evaluate("window.occlensView.occlusion.pixels") == pixels
            # a round brush of radius 3, each stroke added to the last: within 2.5 pixels painted, beyond 3.5 not
            near = np.minimum(near, distance_to_segment(*SIZE, a, b))
            assert mask[near <= 2.5].all() and not mask[near > 3.5].any()
            x = model.preprocess(read_image(PHOTO)).clone()
            x[:, mask] = 0.5  # the gray fill
            with torch.no_grad():
                expected = torch.softmax(model.module(x[None]).double(), dim=1)[0].numpy()[q]
            assert float(page.get_attribute("#occlusion", "data-probability-after")) == pytest.approx(
                expected, abs=1e-6
            )
        page.click("#clear-mask")
        assert page.evaluate("window.occlensView.mask") is None and page.locator("#occlusion").is_hidden()
        # a file that is no image: its error, and nothing of the photo's answers left beside it
        page.set_input_files("#file", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not an image"}])
        page.wait_for_selector("#map[data-state=failed]")
        assert "notes.png" in page.text_content("#error") and page.locator("#error").is_visible()
        assert all(page.locator(f"#{i}").is_hidden() for i in ("prediction", "legend", "occlusion", "saliency"))
        assert page.evaluate("window.occlensView.image") is None  # the photo is not shown as if it were this file


@needs_chromium
def test_the_page_browses_a_run_with_the_report_s_filters(run_server, model, browser):
    s, root = run_server
    with viewer_page(browser, s.url) as page:
        cards = page.locator("#gallery .card")
        cards.first.wait_for()
        assert cards.count() == 3 and page.text_content("#count") == "3 of 3 images"
        page.select_option("#f-true", "0")
        want = ["tabby/img0.png", "tabby/img1.png"]
        assert titles(page, want, ordered=False) == want
        page.wait_for_function(
            "Array.from(document.querySelectorAll('.card img')).every(i => i.complete && i.naturalWidth > 0)"
        )
        page.locator(".card[title='tabby/img1.png']").click()
        page.wait_for_selector("#map[data-state=exact]", timeout=60_000)
        assert page.get_attribute("#label", "placeholder") == "the run's: 0 tabby"  # empty: the run's is used
        delta = np.array(page.evaluate("window.occlensView.exact.delta"))
        expected = occlens.explain(model, root / "data" / "tabby" / "img1.png", label=0, patch=8)
        np.testing.assert_allclose(delta, expected.delta, rtol=0, atol=1e-6)
        assert page.evaluate("window.occlensView.exact.label") == 0


SCREEN = {"width": 1280, "height": 800}  # a laptop's window: where the issue found the answer below the fold


def in_sight(page, selector: str, screen: dict = SCREEN) -> dict:
    """The bounding box of ``selector``, asserted wholly inside the window (1280 x 800 unless ``screen`` says), to
    within the pixel that a scroll to fractional edges rounds away."""
    box = page.locator(selector).bounding_box()
    assert box is not None, selector
    assert box["x"] >= -1 and box["y"] >= -1, (selector, box)
    right, bottom = box["x"] + box["width"], box["y"] + box["height"]
    assert right <= screen["width"] + 1 and bottom <= screen["height"] + 1, (selector, box)
    return box


def click_window(page, r: int, c: int) -> None:
    """Click window (r, c) of the image (8 x 8 windows) and wait for its answer."""
    rect = page.locator("#view").bounding_box()
    scale = rect["width"] / SIZE[1]
    page.mouse.click(rect["x"] + (c * 8 + 4) * scale, rect["y"] + (r * 8 + 4) * scale)
    page.wait_for_selector(f"#occlusion[data-state=done][data-window='{r},{c}']")


@needs_chromium
def test_the_answer_to_a_click_or_a_drag_is_beside_the_image_at_1280x800(server, model, browser):
    """Without scrolling: the image, its map, the prediction and, after a click or a drag on the image, what
    it took away, side by side inside the window (it was 1,300 px down, below the fold)."""
    context = browser.new_context(viewport=SCREEN, bypass_csp=True)  # see TEST_ONLY_EVAL
    try:
        page = context.new_page()
        page.goto(server.url)
        page.wait_for_function("window.occlensView.health !== null")
        page.set_input_files("#file", str(PHOTO))
        page.wait_for_selector("#map[data-state=exact]", timeout=60_000)
        view, prediction = in_sight(page, "#view"), in_sight(page, "#prediction")
        in_sight(page, "#map")
        assert prediction["x"] >= view["x"] + view["width"]  # beside the image, not under it
        click_window(page, 3, 5)
        answer = in_sight(page, "#occlusion")
        assert answer["x"] >= view["x"] + view["width"] and page.evaluate("window.scrollY") == 0
        # the answer is the click's: the window's δL, as the library gives it
        expected = occlens.explain(model, PHOTO, patch=8)
        assert page.evaluate("window.occlensView.occlusion.delta") == pytest.approx(expected.delta[3, 5], abs=1e-5)
        sx, sy = view["width"] / SIZE[1], view["height"] / SIZE[0]
        page.mouse.move(view["x"] + 10.5 * sx, view["y"] + 5.5 * sy)
        page.mouse.down()
        page.mouse.move(view["x"] + 40.5 * sx, view["y"] + 30.5 * sy, steps=4)
        page.mouse.up()
        page.wait_for_selector("#occlusion[data-state=done][data-window='']")
        in_sight(page, "#occlusion")
        assert page.text_content("#occlusion-title") == "Without the region 10,5,41,31 (left,top,right,bottom)"
        # a narrower window: the panels stack, and the answer, under the image, is scrolled into sight
        narrow = {"width": 1000, "height": 700}
        page.set_viewport_size(narrow)
        click_window(page, 1, 1)
        answer = in_sight(page, "#occlusion", narrow)
        assert answer["y"] >= page.locator("#view").bounding_box()["y"] and page.evaluate("window.scrollY") > 0
    finally:
        context.close()


@needs_chromium
def test_an_image_chosen_from_a_run_s_gallery_is_brought_into_sight(run_server, browser):
    """The run's gallery sits above the image: choosing a card scrolls the image and its answers into the
    window, and a click's answer is inside it too."""
    s, root = run_server
    context = browser.new_context(viewport=SCREEN, bypass_csp=True)  # see TEST_ONLY_EVAL
    try:
        page = context.new_page()
        page.goto(s.url)
        page.locator("#gallery .card").first.wait_for()
        view = page.locator("#view").bounding_box()
        assert view["y"] + view["height"] > SCREEN["height"]  # the image reaches below the fold
        page.locator(".card[title='tabby/img1.png']").click()
        page.wait_for_selector("#map[data-state=exact]", timeout=60_000)
        page.wait_for_function("window.scrollY > 0")
        in_sight(page, "#view")
        in_sight(page, "#prediction")
        click_window(page, 2, 3)
        in_sight(page, "#occlusion")
    finally:
        context.close()


class Channels(torch.nn.Module):
    """A sigmoid head over 3 classes: class c is there when channel c is bright (its mean above 0.4)."""

    def forward(self, x):
        return 8 * (x.mean(dim=(2, 3)) - 0.4)


@pytest.fixture(scope="module")
def multi_server(tmp_path_factory):
    """A multi-label run (a CSV of several labels per image) on a sigmoid model, served."""
    root = tmp_path_factory.mktemp("serve-multi")
    names = ("red", "green", "blue")
    plain = Preprocess(SIZE, None, "bilinear", (0.0,) * 3, (1.0,) * 3)
    loaded = occlens.LoadedModel("channels", Channels().eval(), plain, names, output="sigmoid")
    shown = {"a": (0, 1), "b": (0,), "c": (2,)}  # the bright channels: b's green is missed
    labels = {"a": "red;green", "b": "red;green", "c": "blue"}
    for i, (name, channels) in enumerate(shown.items()):
        px = np.random.default_rng(i).integers(20, 60, (*SIZE, 3), dtype=np.uint8)
        px[..., list(channels)] += 150
        Image.fromarray(px).save(root / f"{name}.png")
    (root / "list.csv").write_text("path,label\n" + "".join(f"{n}.png,{labels[n]}\n" for n in shown))
    occlens.run(root / "list.csv", root / "out", loaded, patch=16, workers=0)
    s = Server(Viewer(loaded, occlens.Settings(patch=16), run=RunFolder.open(root / "out")))
    yield s, loaded, root
    s.close()


def test_a_multi_label_run_is_listed_and_explained_with_its_labels(multi_server):
    s, loaded, root = multi_server
    status, run = s.get("/api/run")
    rows = {r["key"]: (r["labels"], r["preds"], r["correct"]) for r in run["images"]}
    assert status == 200 and rows == {"a.png": ([0, 1], [0, 1], True), "b.png": ([0, 1], [0], False),
                                      "c.png": ([2], [2], True)}  # fmt: skip
    status, doc = s.post("/api/explain", {"key": "b.png"})
    assert status == 200 and doc["true_labels"] == [0, 1] and [v["predicted"] for v in doc["verdicts"]] == [True, False]
    status, doc = s.post("/api/explain", {"key": "b.png", "target": "K"})
    assert status == 400 and doc["error"].count("\n") == 0
    assert "target=K is ambiguous: the image has 2 true labels (red, green); give one by name" in doc["error"]
    status, doc = s.post("/api/explain", {"key": "c.png", "target": "K"})  # one true label: K is it
    assert status == 200 and doc["target"] == 2
    status, doc = s.post("/api/explain", {"label": "red; blue"}, {"image": ("a.png", (root / "a.png").read_bytes())})
    assert status == 200 and doc["true_labels"] == [0, 2]
    expected = occlens.explain(loaded, read_image(root / "a.png"), [0, 2], patch=16)
    np.testing.assert_allclose(np.array(doc["true_maps"][1]["delta"]), expected.true_maps[1].delta, rtol=0, atol=1e-6)


@needs_chromium
def test_the_page_filters_a_multi_label_run_by_any_label_a_page_at_a_time(multi_server, browser):
    s = multi_server[0]
    with viewer_page(browser, s.url, init="window.OCCLENS_GALLERY_PAGE = 2") as page:  # cards built at a time
        page.locator("#gallery .card").first.wait_for()
        assert page.text_content("#count") == "3 of 3 images (the first 2 shown)" and len(titles(page)) == 2
        page.click("#more")
        assert titles(page, want := ["a.png", "b.png", "c.png"], ordered=False) == want
        assert page.locator("#more").is_hidden()
        assert "predicted: red · true: red, green" in page.text_content(".card[title='b.png']")
        page.select_option("#f-true", "1")  # true labels holding green
        assert titles(page, want := ["a.png", "b.png"], ordered=False) == want
        page.select_option("#f-pred", "1")  # ... and predicted labels holding it
        assert titles(page, want := ["a.png"], ordered=False) == want
        assert page.locator("#f-true option").all_text_contents() == ["any", "0 red (2)", "1 green (2)", "2 blue (1)"]


def test_a_runs_manifest_reads_as_the_run_wrote_it_of_any_format(tmp_path):
    """The viewer reads a run's manifest as it is (read-only): label lists decoded as the run's own
    Manifest decodes them (a multi-label verdict compares classes, not the characters of "[13]" and "[31]"),
    and a manifest of format 1, which has no label lists, opens without being upgraded."""
    import sqlite3

    from occlens.app.manifest import FILE, SCHEMA, Manifest, Record

    new, old = tmp_path / "new", tmp_path / "old"
    new.mkdir()
    with Manifest(new) as m:
        m.add(Record("a.png", "/d/a.png", "a", "ok", predicted=13, true_labels=(13,), predicted_labels=(31,)))
        m.add(Record("b.png", "/d/b.png", "b", "ok", predicted=2, true_labels=(2, 5), predicted_labels=(5, 2)))
        wrote = m.records()
    read = {r.key: r for r in RunFolder.open(new).records()}
    assert read == wrote and read["a.png"].correct is False and read["b.png"].correct is True
    old.mkdir()
    db = sqlite3.connect(old / FILE)
    db.executescript(
        SCHEMA.replace(", true_labels TEXT, predicted_labels TEXT", "").replace(
            ",\n    true_labels TEXT, predicted_labels TEXT", ""
        )
    )
    db.execute("INSERT INTO run VALUES ('format', '1')")
    db.execute("INSERT INTO images VALUES ('a.png', '/d/a.png', 'a', 'ok', 1, 'one', 2, 'two', 0.9, 0.1, 0.2, "
               "NULL, 1.5, 'then')")  # fmt: skip
    db.commit()
    db.close()
    (record,) = RunFolder.open(old).records()
    assert (record.label, record.predicted, record.correct, record.true_labels) == (1, 2, False, None)
    columns = {row[1] for row in sqlite3.connect(old / FILE).execute("PRAGMA table_info(images)")}
    assert "true_labels" not in columns  # not upgraded: the run's own occlens does that when it resumes


def test_a_full_model_queue_refuses_with_one_line():
    import asyncio

    from occlens.serve.queue import Busy, ModelQueue, Ticket

    queue, gate = ModelQueue(limit=1), threading.Event()

    async def scenario():
        running = asyncio.ensure_future(queue.run(lambda t: gate.wait(10), Ticket()))
        while queue.counts.running == 0:
            await asyncio.sleep(0.01)
        waiting = asyncio.ensure_future(queue.run(lambda t: "second", Ticket()))
        await asyncio.sleep(0.05)
        with pytest.raises(Busy, match=r"busy \(1 requests waiting for the model\); try again shortly"):
            await queue.run(lambda t: "third", Ticket())
        cancelled = Ticket()
        gate.set()
        assert await running is True and await waiting == "second"
        cancelled.cancel()
        with pytest.raises(occlens.serve.queue.Cancelled):  # a ticket set before its turn: never runs
            await queue.run(lambda t: pytest.fail("ran"), cancelled)

    asyncio.run(scenario())
    assert (queue.counts.done, queue.counts.cancelled, queue.counts.waiting) == (2, 1, 0)
    queue.close()


def test_a_waiting_job_whose_client_goes_away_frees_its_place():
    """A request cancelled while its job waits (the stream's client disconnected): the job never runs and
    the queue counts it as cancelled, so the waiting count cannot fill up with jobs that are gone."""
    import asyncio

    from occlens.serve.queue import ModelQueue, Ticket

    queue, gate = ModelQueue(limit=1), threading.Event()

    async def scenario():
        running = asyncio.ensure_future(queue.run(lambda t: gate.wait(10), Ticket()))
        while queue.counts.running == 0:
            await asyncio.sleep(0.01)
        for _ in range(3):  # more than the limit, one after another: each frees its place when it goes
            gone = asyncio.ensure_future(queue.run(lambda t: pytest.fail("ran"), Ticket()))
            await asyncio.sleep(0.02)
            assert queue.counts.waiting == 1
            gone.cancel()
            with pytest.raises(asyncio.CancelledError):
                await gone
            assert queue.counts.waiting == 0
        gate.set()
        assert await running is True
        assert await queue.run(lambda t: "after", Ticket()) == "after"

    asyncio.run(scenario())
    assert (queue.counts.done, queue.counts.cancelled, queue.counts.waiting) == (2, 3, 0)
    queue.close()


class FailsOnBatches(torch.nn.Module):
    """TinyConvNet that raises on any batch of more than one image (the occluded copies)."""

    def __init__(self):
        super().__init__()
        self.inner = TinyConvNet(classes=len(NAMES))
        self.eval()

    def forward(self, x):
        if x.shape[0] > 1:
            raise RuntimeError("this model takes one image at a time")
        return self.inner(x)


@pytest.mark.serve
def test_a_failing_model_is_a_5xx_with_one_line_and_the_stream_s_last_event():
    preprocess = Preprocess(SIZE, None, "bilinear", (0.0,) * 3, (1.0,) * 3)
    loaded = occlens.LoadedModel("fails", FailsOnBatches(), preprocess, tuple(NAMES))
    s = Server(Viewer(loaded, occlens.Settings(patch=8, batch_size=4, engine="dense")))
    try:
        status, answer = s.post("/api/explain", {}, photo())
        one_line_error(status, answer, 500, "this model takes one image at a time")
        status, data = s.post("/api/explain/stream", {}, photo())
        last = data.decode().strip().split("\n\n")[-1].split("\n")
        assert status == 200 and last[0] == "event: error"
        assert "this model takes one image at a time" in json.loads(last[1][6:])["error"]
        assert s.post("/api/occlude", {"box": "0,0,8,8"}, photo())[0] == 500  # its batch of two fails too
    finally:
        s.close()


def test_a_run_made_with_another_model_is_said(run_server, model, tmp_path):
    s, root = run_server
    run = RunFolder.open(root / "out")
    assert not run.other_model(model)
    other = tiny_model_file(tmp_path)  # the same architecture and names, other weights
    net = TinyConvNet(classes=len(NAMES), seed=5)
    torch.jit.trace(net, torch.rand(1, 3, *SIZE)).save(str(other))
    assert run.other_model(occlens.load_model(str(other), device="cpu"))
    with pytest.raises(ValueError, match="not the folder of an occlens run"):
        RunFolder.open(tmp_path)


@pytest.mark.slow
def test_the_command_serves_a_run_and_says_when_its_model_is_another(run_server, model_file, tmp_path):
    s, root = run_server
    other = tiny_model_file(tmp_path)
    torch.jit.trace(TinyConvNet(classes=len(NAMES), seed=5), torch.rand(1, 3, *SIZE)).save(str(other))
    for path, warned in ((model_file, False), (other, True)):
        proc = run_command(["serve", str(root / "out"), "--port", "0", "--model", str(path), "--device", "cpu"])
        try:
            line = proc.stdout.readline()
            assert f"run {root / 'out'}" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
            port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            c.request("GET", "/api/run")
            r = c.getresponse()
            assert r.status == 200 and len(json.loads(r.read())["images"]) == 3
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=30)
        assert ("occlens: warning:" in err and "was made with another model" in err) is warned, err


# --------------------------------------------------------------------------------------------------
# helpers of the other test_serve_*.py modules


def request(server: Server, path: str, headers: dict | None = None, method: str = "GET", body: bytes | None = None):
    """(status, headers by lower-case name, body bytes) of one request to ``server``."""
    status, got, data = server.request(method, path, body, headers)
    return status, {k.lower(): v for k, v in got.items()}, data


@contextmanager
def logged():
    """The records of the server's log (the 'occlens.serve' logger) while the block runs."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("occlens.serve")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def small_run(root: Path, model) -> Path:
    """A run of three small images and one of 1200 x 1000 pixels, with a note beside its files and symbolic links
    in them: to the manifest and the note (outside report/ and images/), and to another file of images/."""
    for i, name in enumerate(("tabby", "tabby", "lynx")):
        (root / "data" / name).mkdir(parents=True, exist_ok=True)
        px = np.random.default_rng(i).integers(0, 255, (40, 56, 3), dtype=np.uint8)
        Image.fromarray(px).save(root / "data" / name / f"img{i}.png")
    Image.fromarray(np.random.default_rng(9).integers(0, 255, (1000, 1200, 3), dtype=np.uint8)).save(
        root / "data" / "lynx" / "large.png"
    )
    occlens.run(root / "data", root / "out", model, patch=8, workers=0)
    out = root / "out"
    (out / "notes.txt").write_text("a note the person keeps beside the run")
    os.symlink(out / "manifest.sqlite", out / "images" / "manifest-link.sqlite")
    os.symlink(out / "notes.txt", out / "report" / "notes-link.txt")
    os.symlink(out / "images" / "tabby" / "img0.json", out / "report" / "img0-link.json")  # stays inside: served
    return out


@contextmanager
def served_command(model_file: Path, *args: str):
    """``occlens serve`` in a process of its own: its port, then (after it stopped) its log in ``log[0]``."""
    proc = run_command(["serve", "--port", "0", "--model", str(model_file), "--device", "cpu", *args])
    log = [""]
    try:
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        yield int(line.split("http://127.0.0.1:")[1].split("/")[0]), log
    finally:
        proc.terminate()
        log[0] = proc.communicate(timeout=30)[1]


def test_the_viewers_colours_are_the_figures_and_the_reports():
    from types import SimpleNamespace

    from occlens.present.colours import colour_table
    from occlens.serve.page import page_config

    table = page_config(SimpleNamespace(run=None))["colormap"]
    assert table == ["#{:02x}{:02x}{:02x}".format(*row) for row in colour_table().tolist()]
    assert table[0] != table[-1] and len(table) == 256  # red for the most negative δL, blue for the most positive
