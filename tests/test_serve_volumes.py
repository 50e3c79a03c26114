"""``occlens serve`` with a volume model: a NIfTI upload explained as ``occlens.explain`` explains the file, the
page's slider over its depth showing each slice of the volume with the voxel map over it, and the refusals (a
volume for a 2-D model, a photo for a volume model, a file that is not NIfTI, too many voxels) in one line.

The model is the tiny random 3-D CNN of test_occlude.py, on a real uvicorn server on a loopback port; the page
runs in Debian's Chromium (Playwright).
"""

from __future__ import annotations

import base64
import http.client
import json

import numpy as np
import pytest
from conftest import chromium, needs_chromium
from test_occlude import TinyConv3dNet
from test_serve import Server, multipart, one_line_error, photo, served_command, tiny_model_file, viewer_page
from test_serve_targets import canvas_rgba, colour_indices, events

import occlens
from occlens.present.colours import colour_table

nib = pytest.importorskip("nibabel")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")

from occlens.serve import UploadLimits, Viewer  # noqa: E402
from occlens.serve.work import page_volume  # noqa: E402

PATCH = (2, 4, 5)
LUT = colour_table()


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """scan.nii.gz: 10 x 8 x 6 voxels (i, j, k; the volume is 6 deep, 8 high, 10 wide), values in [0, 1]."""
    path = tmp_path_factory.mktemp("serve-volume") / "scan.nii.gz"
    data = np.random.default_rng(1).random((10, 8, 6)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.7, 2.5, 1.0])), path)
    return path


@pytest.fixture(scope="module")
def model():
    return occlens.load_model(TinyConv3dNet(1, seed=2))


@pytest.fixture(scope="module")
def server(model):
    s = Server(Viewer(model, occlens.Settings(patch=PATCH)))
    yield s
    s.close()


@pytest.fixture
def browser():
    with chromium() as b:
        yield b


def upload(path) -> dict:
    return {"image": (path.name, path.read_bytes())}


def test_a_nifti_upload_is_explained_as_the_library_explains_the_file(server, model, scan):
    status, health = server.get("/api/health")
    assert status == 200 and health["volume"] is True and health["settings"]["patch"] == list(PATCH)
    expected = occlens.explain(model, scan, patch=PATCH)
    status, doc = server.post("/api/explain", {}, upload(scan))
    assert status == 200, doc
    assert doc["grid"] == expected.grid.to_json() and doc["predicted"] == expected.predicted
    np.testing.assert_allclose(doc["delta"], expected.delta, rtol=0, atol=1e-6)
    status, doc = server.post("/api/explain", {"patch": "3,4,4", "stride": "1,2,2"}, upload(scan))
    assert status == 200, doc
    np.testing.assert_allclose(doc["delta"], occlens.explain(model, scan, patch=(3, 4, 4), stride=(1, 2, 2)).delta,
                               rtol=0, atol=1e-6)  # fmt: skip


def test_the_stream_sends_a_small_preview_then_the_exact_map(server, model, scan):
    status, data = server.post("/api/explain/stream", {}, upload(scan))
    assert status == 200
    got = events(data)
    kinds = [k for k, _ in got]
    assert kinds[0] == "image" and kinds[-1] == "exact" and "coarse" not in kinds  # a volume's map is exact only
    image = dict(got)["image"]
    unit = occlens.read_volume(scan).unit()[0].numpy()
    assert image["volume"] is True and (image["depth"], image["height"], image["width"]) == unit.shape == (6, 8, 10)
    voxels = np.frombuffer(base64.b64decode(image["voxels"]), np.uint8).reshape(image["shape"])
    assert image["step"] == 1
    np.testing.assert_array_equal(voxels, np.round(unit * 255).astype(np.uint8))


def test_a_large_volume_s_preview_takes_every_step_th_voxel():
    volume = occlens.Volume(np.random.default_rng(3).random((9, 20, 31)).astype(np.float32))
    preview = page_volume(volume, most=9 * 20 * 31 // 8)
    assert preview["step"] == 3 and preview["shape"] == [3, 7, 11]  # step 2 keeps 5 x 10 x 16 voxels: too many
    voxels = np.frombuffer(base64.b64decode(preview["voxels"]), np.uint8).reshape(preview["shape"])
    np.testing.assert_array_equal(voxels, np.round(volume.unit()[0, ::3, ::3, ::3].numpy() * 255).astype(np.uint8))


def test_volumes_and_models_that_do_not_fit_are_one_line(server, model, scan, tmp_path):
    status, answer = server.post("/api/explain", {}, photo())
    one_line_error(status, answer, 400, "this server's model is a volume model; upload a NIfTI volume")
    status, answer = server.post("/api/explain", {"patch": "4,4"}, upload(scan))
    one_line_error(status, answer, 400, "patch")
    status, answer = server.post("/api/explain", {}, {"image": ("notes.nii.gz", b"not a volume at all")})
    one_line_error(status, answer, 400, "notes.nii.gz is not a NIfTI file")
    status, answer = server.post("/api/occlude", {"box": "1,1,3,3"}, upload(scan))
    one_line_error(status, answer, 400, "occlude answers for a 2-D image")
    small = Server(Viewer(model, occlens.Settings(patch=PATCH), limits=UploadLimits(max_pixels=100)))
    try:
        status, answer = small.post("/api/explain", {}, upload(scan))
        one_line_error(status, answer, 413, "has 480 voxels (10x8x6), over the server's limit of 100")
    finally:
        small.close()
    flat = Server(Viewer(occlens.load_model(str(tiny_model_file(tmp_path)), device="cpu"), occlens.Settings(patch=8)))
    try:
        status, answer = flat.post("/api/explain", {}, upload(scan))
        one_line_error(status, answer, 400, "scan.nii.gz is a volume (NIfTI); this server's model takes 2-D images")
    finally:
        flat.close()


@needs_chromium
def test_the_page_slides_through_the_volume_with_the_voxel_map_over_each_slice(server, model, scan, browser):
    expected = occlens.explain(model, scan, patch=PATCH)
    unit = occlens.read_volume(scan).unit()[0].numpy()
    preview = np.round(unit * 255).astype(np.uint8)
    limit = float(np.abs(expected.delta).max())
    g = expected.grid
    with viewer_page(browser, server.url) as page:
        page.wait_for_function("window.occlensView.health !== null")
        assert page.get_attribute("#file", "accept") == ".nii,.nii.gz"
        page.set_input_files("#file", str(scan))
        page.wait_for_selector("#map[data-state=exact]", timeout=60_000)
        assert page.locator("#error").is_hidden() and page.locator("#depth-row").is_visible()
        assert page.get_attribute("#depth", "max") == "5"
        worst = int(np.argmin(expected.delta)) // (g.rows * g.cols)  # the most negative window's layer
        front, back = worst * g.stride[0], min(worst * g.stride[0] + g.patch[0], g.depth)
        assert page.evaluate("window.occlensView.slice.z") == (front + back - 1) // 2  # it opens where it matters
        for z in range(6):
            page.eval_on_selector("#depth", f"(d) => {{ d.value = '{z}'; d.dispatchEvent(new Event('input')); }}")
            page.wait_for_function(f"window.occlensView.slice.z === {z}")
            values = np.array(page.evaluate("window.occlensView.slice.values")).reshape(8, 10)
            np.testing.assert_allclose(values, expected.pixel_map[z], rtol=0, atol=1e-6)  # the voxel map's slice
            rgba = canvas_rgba(page, "#pixels")
            s = rgba.shape[1] // 10
            drawn = rgba[s // 2 :: s, s // 2 :: s, :3].astype(int)
            colour = LUT[colour_indices(values, limit)].astype(float)
            want = np.floor(0.4 * preview[z][..., None] + 0.6 * colour + 0.5)  # the map at 0.6 over the gray slice
            np.testing.assert_array_equal(drawn, want)
            layer = min(z // g.stride[0], g.planes - 1)
            assert f"window layer {layer + 1} of {g.planes}" in page.text_content("#map-caption")
            assert page.text_content("#depth-words").startswith(f"slice {z} of 6")
        verdict = page.text_content("#verdict")
        assert verdict.startswith(f"Q = {expected.predicted} {model.labels[expected.predicted]}")


@pytest.mark.serve
@pytest.mark.slow
def test_the_command_serves_a_volume_model_with_a_3_value_window(scan, tmp_path):
    """``occlens serve --model model3d.pt --patch 2,4,5``: a TorchScript 3-D CNN declared by its description's
    input_size [D, H, W]; the window is checked against each volume, not against a photo's input size."""
    import torch

    net = TinyConv3dNet(1, seed=2).float()
    torch.jit.trace(net, torch.rand(1, 1, 6, 8, 10)).save(str(tmp_path / "model3d.pt"))
    (tmp_path / "model3d.json").write_text(json.dumps({"input_size": [6, 8, 10]}))
    with served_command(tmp_path / "model3d.pt", "--patch", "2,4,5") as (port, _):
        body, kind = multipart({}, upload(scan))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.request("POST", "/api/explain", body=body, headers={"Content-Type": kind})
        answer = conn.getresponse()
        doc = json.loads(answer.read())
        conn.close()
    assert answer.status == 200, doc
    expected = occlens.explain(occlens.load_model(tmp_path / "model3d.pt"), scan, patch=PATCH)
    np.testing.assert_allclose(doc["delta"], expected.delta, rtol=0, atol=1e-5)
