"""``occlens serve`` and bad requests: each is a 4xx of one short line of JSON and one line in the log, with no
traceback (numbers of thousands of digits, a field given twice, a long value, a client that leaves
mid-upload), through a real uvicorn server on loopback and through the command.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time
from pathlib import Path

import pytest
from test_serve import (
    Server,
    logged,
    multipart,
    one_line_error,
    photo,
    request,
    served_command,
    tiny_model_file,
)

import occlens

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")

from occlens.serve import Viewer  # noqa: E402


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return tiny_model_file(tmp_path_factory.mktemp("requests-model"))


@pytest.fixture(scope="module")
def model(model_file):
    return occlens.load_model(str(model_file), device="cpu")


@pytest.fixture(scope="module")
def server(model):
    s = Server(Viewer(model, occlens.Settings(patch=8)))
    yield s
    s.close()


def test_numbers_of_thousands_of_digits_are_a_400(server):
    """A number of thousands of digits in any numeric field is a 400 of one short line, not an internal error."""
    for path, fields, words in [
        ("/api/occlude", {"box": f"1,1,{'9' * 5000},4"}, "longer than 4096 bytes"),
        ("/api/occlude", {"box": f"1,1,{'9' * 4000},4"}, "box must be left,top,right,bottom"),
        ("/api/explain", {"seed": "9" * 4000}, "seed must be an int"),
        ("/api/explain", {"patch": "9" * 4000}, "patch"),
        ("/api/explain", {"stride": "9" * 4000}, "stride"),
        ("/api/explain", {"label": "9" * 4000}, "label"),
    ]:
        status, answer = server.post(path, fields, photo())
        one_line_error(status, answer, 400, words)
        assert len(answer["error"]) < 400, answer


def test_a_field_given_twice_is_refused(server):
    body, kind = multipart({}, photo())
    for field in ("patch", "label"):
        doubled = (
            body.replace(b"--occlens-test-boundary--\r\n", b"")
            + b"".join(
                f'--occlens-test-boundary\r\nContent-Disposition: form-data; name="{field}"\r\n\r\n{v}\r\n'.encode()
                for v in ("8", "16")
            )
            + b"--occlens-test-boundary--\r\n"
        )
        status, _, data = request(server, "/api/explain", {"Content-Type": kind}, "POST", doubled)
        one_line_error(status, json.loads(data), 400, f"form field(s) '{field}' given more than once; give each once")


def test_an_error_repeats_only_the_start_of_a_long_value(server):
    """A long field is not sent back: an error repeats its first 80 characters and its length; a field over
    4096 bytes is refused as such."""
    for fields, words in [({"fill": "x" * 4000}, "unknown fill 'xxxx"), ({"target": "z" * 4000}, "z" * 80),
                          ({"engine": "w " * 2000}, "engine must be one of"),
                          ({"fill": "x" * 100_000}, "longer than 4096 bytes")]:  # fmt: skip
        status, answer = server.post("/api/explain", fields, photo())
        one_line_error(status, answer, 400, words)
        assert len(answer["error"]) < 400, answer
        assert "characters)" in answer["error"] or "4096" in answer["error"], answer


def test_a_target_of_another_kind_is_a_400_where_the_answer_is_for_one_class(server):
    """occlude and saliency answer for one class: a target of another kind (KIND:ARGS) is a 400 of one line (occlude
    failed with an internal error); a class, by index, is still answered."""
    for path, fields in [("/api/occlude", {"box": "1,1,10,10"}), ("/api/saliency", {})]:
        for target in ("margin", "regression:0"):
            status, answer = server.post(path, {**fields, "target": target}, photo())
            one_line_error(status, answer, 400, f"target must be Q, K, a class index or a class name, got '{target}'")
        status, answer = server.post(path, {**fields, "target": "2"}, photo())
        assert status == 200, answer
        assert path != "/api/occlude" or answer["target"] == 2, answer


def test_each_bad_request_is_one_line_in_the_log(model_file):
    """Through the command: each refused request is one line in the log (status, method, address, the
    reason cut short), and no traceback."""
    with served_command(model_file) as (port, log):
        for path, fields in [("/api/explain", {"patch": "big"}), ("/api/occlude", {"box": "1,1,4"}),
                             ("/api/explain", {"fill": "x" * 3000}),
                             ("/api/occlude", {"box": f"1,1,{'9' * 4000},4"})]:  # fmt: skip
            b, k = multipart(fields, photo())
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("POST", path, body=b, headers={"Content-Type": k})
            assert conn.getresponse().status == 400
    lines = log[0].splitlines()
    assert "Traceback" not in log[0], log[0]
    assert sum("400 POST /api/explain: patch must be N or H,W" in line for line in lines) == 1, lines
    assert sum("400 POST /api/occlude: box must be left,top,right,bottom" in line for line in lines) == 2, lines
    assert sum("400 POST /api/explain: unknown fill 'xxx" in line for line in lines) == 1, lines
    assert all(len(line) < 400 for line in lines), lines


def test_a_client_that_leaves_mid_upload_is_one_line_in_the_log_and_no_traceback(model_file):
    body, kind = multipart({}, photo())
    with served_command(model_file) as (port, log):
        for _ in range(2):  # the headers promise a body the client never finishes
            sock = socket.create_connection(("127.0.0.1", port))
            head = (f"POST /api/explain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {kind}\r\n"
                    f"Content-Length: {len(body)}\r\n")  # fmt: skip
            sock.sendall(head.encode() + b"\r\n" + body[: len(body) // 2])
            time.sleep(0.3)
            sock.close()
        time.sleep(1.0)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/api/health")
        assert conn.getresponse().status == 200  # the server goes on
    assert "Traceback" not in log[0], log[0]
    lines = log[0].splitlines()
    assert sum("499 POST /api/explain: the client went away" in line for line in lines) == 2, lines


def test_a_refused_request_leaves_no_traceback_in_python_either(model):
    """The log lines go to the 'occlens.serve' logger, at INFO for a client's mistake."""
    s = Server(Viewer(model))
    try:
        with logged() as records:
            one_line_error(*s.post("/api/explain", {"engine": "warp"}, photo()), 400, "engine must be one of")
    finally:
        s.close()
    said = [(r.levelno, r.getMessage()[:41]) for r in records]
    assert said == [(logging.INFO, "400 POST /api/explain: engine must be one")], said
    assert records[0].exc_info is None
