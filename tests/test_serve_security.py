"""``occlens serve`` and another web page in the same browser: what that page can and cannot do (a real Chromium,
the page served from another loopback origin: another port, or ``localhost`` for ``127.0.0.1``), the headers
of every answer, the token, what ``serve()`` from Python exposes, and which of a run's files are served.
These are the README's threat model, claim by claim ("The viewer: occlens serve"); each runs a real uvicorn
server on loopback, or the command.
"""

from __future__ import annotations

import http.client
import http.server
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import chromium, needs_chromium
from test_serve import PHOTO, Server, logged, multipart, one_line_error, photo, request, small_run, tiny_model_file

import occlens

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")

from occlens.serve import Viewer  # noqa: E402
from occlens.serve.rundir import RunFolder  # noqa: E402


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return tiny_model_file(tmp_path_factory.mktemp("security-model"))


@pytest.fixture(scope="module")
def model(model_file):
    return occlens.load_model(str(model_file), device="cpu")


@pytest.fixture(scope="module")
def run_dir(model, tmp_path_factory) -> Path:
    return small_run(tmp_path_factory.mktemp("security-run"), model)


@pytest.fixture(scope="module")
def run_server(model, run_dir):
    s = Server(Viewer(model, occlens.Settings(patch=8), run=RunFolder.open(run_dir)))
    yield s
    s.close()


TOKEN = "correct-horse-battery"


# --------------------------------------------------------------------------------------------------
# another page in the same browser


class Elsewhere:
    """Another web page's server: a plain HTTP server on another loopback port serving ``page`` at ``/``."""

    def __init__(self, page: str) -> None:
        body = page.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def hostile_page(victims: list[str], image_id: str) -> str:
    """A page that tries every way a page has to read another origin's data, against each victim address: the
    report's data files by ``<script src>`` after defining their callbacks, the API and the data files by
    ``fetch`` (no-cors and cors), a thumbnail by ``<img>``, the viewer's page and the report in ``<iframe>``s."""
    tags, urls = [], []
    for v in victims:
        tags += [f'<script src="{v}run/files/report/index.js"></script>',
                 f'<script src="{v}run/files/report/data/{image_id}.js"></script>',
                 f'<img class="thumb" src="{v}api/run/thumb?key=tabby/img0.png">',
                 f'<iframe class="frame" src="{v}"></iframe>',
                 f'<iframe class="frame" src="{v}run/files/report/index.html"></iframe>']  # fmt: skip
        urls += [f"{v}{p}" for p in ("api/run", "api/health", "run/files/report/index.js", "api/run/thumb?key=a")]
    return f"""<!doctype html><title>elsewhere</title>
<script>
window.stolen = [];
window.OCCLENS = {{index: function (d) {{ stolen.push(["index", d]); }},
                  image: function (id, d) {{ stolen.push(["image", id, d]); }}}};
</script>
{"".join(tags)}
<script>
window.fetched = [];
const urls = {json.dumps(urls)};
Promise.all(urls.flatMap(u => [
  fetch(u, {{mode: "no-cors"}}).then(r => r.text().then(t => fetched.push([u, "no-cors", r.type, t.length])),
                                     e => fetched.push([u, "no-cors", "error", 0])),
  fetch(u).then(r => r.text().then(t => fetched.push([u, "cors", r.type, t.length])),
                e => fetched.push([u, "cors", "error", 0])),
])).then(() => {{ window.done = true; }});
</script>"""


@needs_chromium
@pytest.mark.parametrize("where", ["another port", "file"])
def test_another_page_in_the_same_browser_reads_nothing_of_a_run(run_server, run_dir, tmp_path, where):
    """A page served from another port of 127.0.0.1, or opened from a file, tries a run's data on the server
    as 127.0.0.1 and as localhost by <script src>, fetch (no-cors and cors), <img> and <iframe>: every request
    is refused (403, no byte of data reaches the page), the callbacks are never called, the frames hold
    neither the viewer nor the report."""
    index = (run_dir / "report" / "index.js").read_text()
    image_id = next(p.stem for p in (run_dir / "report" / "data").glob("*.js"))
    assert "OCCLENS.index(" in index  # what a <script src> would run, were it served
    victims = [run_server.url, run_server.url.replace("127.0.0.1", "localhost")]
    html = hostile_page(victims, image_id)
    elsewhere = Elsewhere(html) if where == "another port" else None
    if elsewhere is None:
        (tmp_path / "elsewhere.html").write_text(html)
    address = elsewhere.url if elsewhere is not None else (tmp_path / "elsewhere.html").as_uri()
    asked, refused = [], []
    with logged() as records:
        try:
            with chromium() as browser:
                context = browser.new_context()
                page = context.new_page()
                page.on("request", lambda r: asked.append(r.url) if r.url.startswith(tuple(victims)) else None)
                page.goto(address)
                page.wait_for_function("window.done === true", timeout=30_000)
                page.wait_for_load_state("load")
                stolen = page.evaluate("window.stolen")
                fetched = page.evaluate("window.fetched")
                thumbs = page.eval_on_selector_all(".thumb", "is => is.map(i => i.complete && i.naturalWidth)")
                frames = [f for f in page.frames if f != page.main_frame and f.url.startswith("http")]
                framed = [f.evaluate("document.documentElement.outerHTML") for f in frames]
                context.close()
        finally:
            if elsewhere is not None:
                elsewhere.close()
        time.sleep(0.5)
        refused = [r.getMessage() for r in records if r.getMessage().startswith("403 GET ")]
    assert stolen == [], stolen
    assert all(n == 0 for n in thumbs), thumbs
    assert len(fetched) == 16 and all(length == 0 for *_, length in fetched), fetched  # nothing readable
    assert all("occlens" not in html for html in framed), framed
    assert len(asked) >= 26 and len(refused) == len(asked), (asked, refused)  # each request asked was refused
    assert all("another site's page (Sec-Fetch-Site: " in line for line in refused), refused


@needs_chromium
def test_a_token_cookie_goes_to_every_port_of_its_host(model):
    """What the README warns of: the cookie a page opened with ?token= gets is sent to another server on the
    same host name (cookies are not kept apart by port); it is HttpOnly (no page's script reads it) and
    SameSite=Strict (not sent with another site's requests)."""
    s = Server(Viewer(model, token=TOKEN))
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Cookie"))
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<title>another server</title>")

        def log_message(self, *args):
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        with chromium() as browser:
            context = browser.new_context()
            page = context.new_page()
            page.goto(f"{s.url}?token={TOKEN}")
            page.wait_for_selector("#model:not(:empty)")
            assert page.evaluate("document.cookie") == ""  # HttpOnly
            page.goto(f"http://127.0.0.1:{other.server_address[1]}/")
            context.close()
    finally:
        other.shutdown()
        other.server_close()
        s.close()
    port = s.url.split(":")[2].split("/")[0]  # the cookie is named for its own server's port (not overwritten by
    assert seen and set(seen) == {f"occlens_token_{port}={TOKEN}"}, seen  # another's), and still sent to every port


def test_another_sites_requests_are_refused_whatever_they_ask(run_server):
    """Sec-Fetch-Site says who made a request: another site's page (cross-site) or another port of this host
    (same-site) is refused for every address, a typed address (none) and the page's own requests
    (same-origin) pass; a link to the page itself opens it (a tab the linking page cannot read), but not in
    a frame. A POST marked cross-site without an Origin queues no work."""
    addresses = ["/", "/static/serve.js", "/api/health", "/api/run", "/api/run/thumb?key=tabby/img0.png",
                 "/run/files/report/index.js", "/run/files/report/index.html",
                 "/run/files/images/tabby/img0.png"]  # fmt: skip
    for path in addresses:
        for site in ("cross-site", "same-site"):
            status, _, body = request(run_server, path, {"Sec-Fetch-Site": site, "Sec-Fetch-Mode": "no-cors"})
            one_line_error(status, json.loads(body), 403, f"Sec-Fetch-Site: {site}")
        for site in ("same-origin", "none"):
            assert request(run_server, path, {"Sec-Fetch-Site": site})[0] == 200, (path, site)
    link = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    assert request(run_server, "/", link)[0] == 200
    assert request(run_server, "/api/run", link)[0] == 403
    assert request(run_server, "/", {**link, "Sec-Fetch-Dest": "iframe"})[0] == 403
    before = run_server.get("/api/health")[1]["queue"]
    status, answer = run_server.post("/api/explain", {}, photo(), {"Sec-Fetch-Site": "cross-site"})
    one_line_error(status, answer, 403, "another site")
    status, answer = run_server.post("/api/explain", {}, photo(), {"Sec-Fetch-Site": "same-site"})
    one_line_error(status, answer, 403, "another site")
    assert run_server.get("/api/health")[1]["queue"] == before  # no job queued, none run


def assert_guarded(got: dict, path: str) -> None:
    assert got.get("x-content-type-options") == "nosniff", (path, got)
    assert got.get("cross-origin-resource-policy") == "same-origin", (path, got)
    policy = got.get("content-security-policy", "")
    for part in ("frame-ancestors 'none'", "connect-src 'self'", "script-src 'self'", "default-src 'none'"):
        assert part in policy, (path, policy)
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy, policy
    assert got.get("x-frame-options") == "DENY", (path, got)
    assert got.get("cross-origin-opener-policy") == "same-origin", (path, got)
    cache = got.get("cache-control")
    assert cache == ("no-cache" if path.startswith("/static/") else "no-store"), (path, cache)


def test_every_answer_carries_the_headers_that_keep_it_to_its_own_page(run_server, model):
    """nosniff, Cross-Origin-Resource-Policy, a content security policy without inline script that no frame
    may embed, and no caching but of the page's static assets: on every answer, refusals and errors too."""
    for path in ["/", "/static/serve.js", "/static/serve.css", "/api/health", "/api/run",
                 "/api/run/thumb?key=tabby/img0.png", "/run/files/report/index.html", "/run/files/report/index.js",
                 "/run/files/images/tabby/img0.png", "/api/nothing", "/api/explain", "/run/files/manifest.sqlite",
                 "/api/run/thumb?key=none.png"]:  # fmt: skip
        status, got, _ = request(run_server, path)
        assert status in (200, 403, 404, 405), (path, status)
        assert_guarded(got, path)
    for headers in ({"Host": "attacker.example"}, {"Sec-Fetch-Site": "cross-site"}):
        status, got, _ = request(run_server, "/api/health", headers)
        assert status in (403, 421)
        assert_guarded(got, "/api/health")
    body, kind = multipart({"patch": "8"}, photo())
    for path in ("/api/explain", "/api/explain/stream"):
        status, got, _ = request(run_server, path, {"Content-Type": kind}, "POST", body)
        assert status == 200
        assert_guarded(got, path)
    tokened = Server(Viewer(model, token=TOKEN))
    try:
        status, got, _ = request(tokened, "/api/health")
        assert status == 401
        assert_guarded(got, "/api/health")
    finally:
        tokened.close()


@needs_chromium
def test_the_page_and_the_report_work_under_their_content_security_policy(run_server, model, run_dir):
    """The viewer's page and the run's report, served with their policy (no inline script, nothing fetched
    from elsewhere) and nothing bypassed: the page explains an upload to its exact map and shows its saliency
    map and the run's thumbnails; the report draws its gallery and an image's page; no policy is violated."""
    problems = []
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1400, "height": 1200})
        try:
            page = context.new_page()
            page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            answer = page.goto(run_server.url)
            assert "script-src 'self'" in answer.headers["content-security-policy"]
            page.wait_for_selector("#gallery .card img")
            page.set_input_files("#file", str(PHOTO))
            page.wait_for_selector("#map[data-state=exact]", timeout=60_000)
            page.wait_for_selector("#saliency:not([hidden])", timeout=60_000)
            assert page.locator("#error").is_hidden()
            answer = page.goto(run_server.url + "run/files/report/index.html")
            assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
            page.wait_for_selector("#gallery .card")
            page.select_option("#f-view", "map")  # the cards' maps: each image's data file, loaded by a script tag
            page.wait_for_selector("#gallery canvas.cardmap[data-state=drawn]")
            image_id = next(p.stem for p in (run_dir / "report" / "data").glob("*.js"))
            page.goto(run_server.url + f"run/files/report/image.html#id={image_id}")
            page.wait_for_selector("#content canvas")
            page.wait_for_selector("#decision #topk .bar")  # the top classes' bars: sized by the script, not inline
        finally:
            context.close()
    assert not problems, problems


# --------------------------------------------------------------------------------------------------
# the token


@pytest.mark.parametrize("token", [" " * 8, "\t" * 12, "a b c d e f", "token;with;semicolons", "   short  "])
def test_a_blank_or_spaced_token_is_refused_with_one_line(model, token):
    with pytest.raises(occlens.ConfigError) as err:
        Viewer(model, token=token)
    message = str(err.value)
    assert "\n" not in message and "at least 8 characters, letters, digits and - _ . ~ only" in message
    assert token.strip() not in message or not token.strip()  # a token is not repeated


def test_one_rule_for_a_token_from_any_source(model):
    """Header, query or cookie: a blank or wrong token is refused (401, one line), the right one passes, with
    blanks around it as a header's value may have; a loopback server with a token asks it of everyone."""
    s = Server(Viewer(model, token=TOKEN))
    cookie = "occlens_token_" + s.url.split(":")[2].split("/")[0]  # named for the server's port
    try:
        blank = "%20%20%20%20%20%20%20%20"
        for headers, path in [({}, "/api/health"), ({"Authorization": "Bearer " + " " * 8}, "/api/health"),
                              ({"X-Occlens-Token": " " * 8}, "/api/health"), ({}, f"/api/health?token={blank}"),
                              ({}, "/api/health?token="), ({"Cookie": f'{cookie}="        "'}, "/api/health"),
                              ({"Authorization": "Bearer wrong-token-value"}, "/static/serve.js"),
                              ({"Cookie": f"{cookie}={TOKEN}x"}, "/"),
                              ({"Cookie": f"occlens_token={TOKEN}"}, "/")]:  # fmt: skip
            status, _, body = request(s, path, headers)
            one_line_error(status, json.loads(body), 401, "missing or wrong token")
        for headers, path in [({"Authorization": f"Bearer  {TOKEN} "}, "/api/health"),
                              ({"X-Occlens-Token": TOKEN}, "/api/run/thumb?key=a"),
                              ({}, f"/api/health?token={TOKEN}"), ({}, f"/api/health?token=%20{TOKEN}%20"),
                              ({"Cookie": f"{cookie}={TOKEN}"}, "/")]:  # fmt: skip
            assert request(s, path, headers)[0] in (200, 404), (headers, path)
        status, got, _ = request(s, f"/?token={TOKEN}")
        assert status == 200 and "HttpOnly" in got["set-cookie"] and "SameSite=Strict" in got["set-cookie"]
    finally:
        s.close()


def test_serve_from_python_binds_loopback_and_generates_a_token_elsewhere(model_file):
    """serve() from Python: 127.0.0.1 by default (the Host must name loopback), and on another address a
    generated token that it says and that every request must bring, as the command does."""
    code = (
        "import occlens, sys\n"
        "from occlens.serve import Viewer, serve\n"
        f"m = occlens.load_model({str(model_file)!r}, device='cpu')\n"
        "serve(Viewer(m), host=sys.argv[1], port=0)\n"
    )
    for host in ("127.0.0.1", "0.0.0.0"):
        proc = subprocess.Popen([sys.executable, "-c", code, host], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)  # fmt: skip
        try:
            first = proc.stdout.readline()
            token = None
            if host == "127.0.0.1":
                assert "occlens serve: http://127.0.0.1:" in first, first  # bound to loopback
            else:
                assert "not a loopback address" in first, first
                token = first.rsplit(" ", 1)[1].strip()
                first = proc.stdout.readline()
            port = int(first.split("http://")[1].split(":")[1].split("/")[0])
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/api/health", headers={"Host": "192.0.2.1"})
            r = conn.getresponse()
            r.read()
            assert r.status == (421 if token is None else 401)
            if token is not None:
                conn.request("GET", "/api/health", headers={"Authorization": f"Bearer {token}"})
                r = conn.getresponse()
                assert r.status == 200 and json.loads(r.read())["status"] == "ok"
            conn.request(
                "GET", "/api/health", headers={"Authorization": f"Bearer {token}", "Sec-Fetch-Site": "same-site"}
            )
            r = conn.getresponse()
            r.read()
            assert r.status == 403 and r.getheader("cross-origin-resource-policy") == "same-origin"  # the same guard
        finally:
            proc.terminate()
            proc.communicate(timeout=30)


# --------------------------------------------------------------------------------------------------
# a run's files


def test_symbolic_links_must_stay_inside_report_or_images(run_server, run_dir):
    """A link in report/ or images/ to the manifest or to a note the person keeps in DIR is not served; one to
    another file of images/ is. The run's own page is told the run's folder (its absolute path)."""
    assert run_server.get("/api/health")[1]["run"] == run_server.get("/api/run")[1]["root"] == str(run_dir)
    for path in ("/run/files/images/manifest-link.sqlite", "/run/files/report/notes-link.txt"):
        one_line_error(*run_server.get(path), 403, "leads outside the run's report and images folders")
    status, data = run_server.get("/run/files/report/img0-link.json")
    assert status == 200 and "delta" in data
