"""``occlens serve`` in a process of its own, for the serve benchmarks (serve_load.py, serve_memory.py): start it on
a free port, post an image to it, read its memory from /proc (Linux), stop it.

A script imports it as ``from served import Served, multipart`` (``benchmarks/`` is the script's own folder).
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def multipart(data: bytes, fields: dict | None = None) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body holding the PNG ``data`` as ``image`` (``x.png``) and ``fields``; its type."""
    b = "occlens-bench"
    parts = [
        f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in (fields or {}).items()
    ]
    parts.append(
        f'--{b}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'.encode()
        + b"Content-Type: image/png\r\n\r\n"
        + data
        + b"\r\n"
    )
    return b"".join(parts) + f"--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"


class Served:
    """``python -m occlens serve --port 0 ARGS`` in a process of its own, on the sources in ``src`` (default: this
    checkout's); its port and process id."""

    def __init__(self, args: list[str], src: Path = SRC) -> None:
        env = {**os.environ, "PYTHONPATH": str(src)}
        self.proc = subprocess.Popen([sys.executable, "-m", "occlens", "serve", "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
        line = self.proc.stdout.readline()
        if "http://" not in line:
            sys.exit(f"occlens serve did not start: {line}{self.proc.stderr.read()}")
        self.port = int(line.split("http://127.0.0.1:")[1].split("/")[0])

    def status(self, key: str) -> float:
        """A memory line of the server's /proc status in MB: ``VmRSS`` (now), ``VmHWM`` (the peak); nan if absent."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def rss_mb(self) -> float:
        return self.status("VmRSS")

    def reset_peak(self) -> None:
        """Start ``VmHWM`` over from the memory held now."""
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def post(self, data: bytes, name: str) -> tuple[int, str]:
        """POST ``data`` to /api/explain as the file ``name``: the status and, unless 200, the error's start."""
        body, kind = multipart(data)
        body = body.replace(b'filename="x.png"', f'filename="{name}"'.encode())
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=900)
        conn.request("POST", "/api/explain", body=body, headers={"Content-Type": kind})
        r = conn.getresponse()
        answer = r.read()
        return r.status, "" if r.status == 200 else json.loads(answer).get("error", "")[:160]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
