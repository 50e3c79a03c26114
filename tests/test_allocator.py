"""The occlens command keeps freed large blocks: glibc stops faulting a batch's memory in again."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from occlens.engines.memory import ENVIRONMENT

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# Allocate, touch and free a 64 MB tensor (above glibc's largest dynamic mmap threshold, 32 MB) and
# print how many minor page faults twenty more such cycles cost, after ten that let the heap settle.
CYCLES = """
import resource, sys, torch
from occlens.engines.memory import keep_freed_blocks
print(keep_freed_blocks() if sys.argv[1] == "keep" else None)
def cycle():
    a = torch.empty(16 * 2**20)
    a.fill_(1.0)
    del a
for _ in range(10):  # the heap settles first (its first cycles can still fault, more so on a busy machine)
    cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    cycle()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _cycles(mode: str, env: dict | None = None) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT} | (env or {})
    out = subprocess.run([sys.executable, "-c", CYCLES, mode], capture_output=True, text=True, env=env, check=True)
    kept, faults = out.stdout.split()
    return kept, int(faults)


@pytest.mark.skipif(not GLIBC, reason="glibc only")
@pytest.mark.slow
def test_freed_blocks_are_reused_once_kept():
    pages = 20 * 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    assert _cycles("plain") == ("None", pytest.approx(pages, rel=0.05))  # every page faulted in again
    kept, faults = _cycles("keep")
    assert kept == "True" and faults <= pages / 10  # settled: at most a cycle or two in twenty


@pytest.mark.skipif(not GLIBC, reason="glibc only")
@pytest.mark.slow
def test_the_users_own_allocator_settings_win():
    kept, faults = _cycles("keep", {"MALLOC_MMAP_THRESHOLD_": "65536"})
    assert kept == "False" and faults > 0  # left as the environment says: 64 MB blocks still mmapped


def test_the_installed_command_is_the_one_that_keeps_freed_blocks():
    (script,) = entry_points(group="console_scripts", name="occlens")
    assert script.value == "occlens.cli:command"


def test_cpu_batches_grow_where_freed_blocks_are_kept(monkeypatch):
    import torch

    from occlens.engines.memory import CPU_AUTO_BATCH, KEPT_AUTO_BATCH, auto_batch_size

    image, cpu = torch.zeros(3, 64, 64), torch.device("cpu")
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    assert auto_batch_size(1000, image, cpu, None) == CPU_AUTO_BATCH < KEPT_AUTO_BATCH
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")  # lowered, not raised: still faults
    assert auto_batch_size(1000, image, cpu, None) == CPU_AUTO_BATCH
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(1 << 30))
    assert auto_batch_size(1000, image, cpu, None) == KEPT_AUTO_BATCH
    assert auto_batch_size(1000, image, cpu, None, torch_model=False) == KEPT_AUTO_BATCH


def test_dense_outputs_take_bigger_cpu_batches_in_a_library_process(monkeypatch):
    """A segmenter's output (a number per pixel or more) takes DENSE_AUTO_BATCH; a classifier's keeps the small
    batch; a process that keeps freed blocks runs both at KEPT_AUTO_BATCH; other models are not torch's."""
    import torch

    from occlens.engines.memory import (
        CALLABLE_AUTO_BATCH,
        CPU_AUTO_BATCH,
        DENSE_AUTO_BATCH,
        KEPT_AUTO_BATCH,
        auto_batch_size,
        dense_output,
    )

    image, cpu = torch.zeros(3, 64, 48), torch.device("cpu")
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    assert CPU_AUTO_BATCH < DENSE_AUTO_BATCH < KEPT_AUTO_BATCH
    assert not dense_output(image, 1000) and not dense_output(image, 64 * 48 - 1)  # a classifier's 1000 classes
    assert dense_output(image, 64 * 48) and dense_output(image, 21 * 64 * 48) and dense_output(image, 150 * 16 * 12)
    assert auto_batch_size(1000, image, cpu, None, output_elements=1000) == CPU_AUTO_BATCH
    assert auto_batch_size(1000, image, cpu, None, output_elements=21 * 64 * 48) == DENSE_AUTO_BATCH
    assert auto_batch_size(10, image, cpu, None, output_elements=21 * 64 * 48) == 10  # never more than the windows
    assert auto_batch_size(1000, image, cpu, None, False, 21 * 64 * 48) == CALLABLE_AUTO_BATCH
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(1 << 30))
    assert auto_batch_size(1000, image, cpu, None, output_elements=21 * 64 * 48) == KEPT_AUTO_BATCH
    assert auto_batch_size(1000, image, cpu, None, output_elements=1000) == KEPT_AUTO_BATCH


def test_a_segmenter_runs_dense_batches_and_a_classifier_small_ones(monkeypatch):
    """explain() passes the model's clean output to the rule: a per-pixel head gets DENSE_AUTO_BATCH, the same
    backbone pooled to class scores CPU_AUTO_BATCH."""
    import torch

    import occlens
    from occlens.engines import memory
    from occlens.engines.memory import CPU_AUTO_BATCH, DENSE_AUTO_BATCH
    from occlens.targets import segment

    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    torch.manual_seed(0)
    head = torch.nn.Conv2d(3, 4, 3, padding=1)
    segmenter = torch.nn.Sequential(head).eval()
    classifier = torch.nn.Sequential(head, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    image = torch.rand(3, 32, 32)
    monkeypatch.setattr(memory, "_kept", False)  # a library process, whatever ran before in this one
    seg = occlens.explain(segmenter, image, target=segment(), patch=4, engine="dense")
    cls = occlens.explain(classifier, image, patch=4, engine="dense")
    assert seg.grid.size == cls.grid.size == 64
    assert (seg.batch_size, cls.batch_size) == (DENSE_AUTO_BATCH, CPU_AUTO_BATCH)


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_the_command_process_runs_bigger_cpu_batches():
    code = (
        "import torch\nfrom occlens.engines.memory import auto_batch_size, keep_freed_blocks\n"
        "before = auto_batch_size(1000, torch.zeros(3, 64, 64), torch.device('cpu'), None)\n"
        "print(before, keep_freed_blocks(), auto_batch_size(1000, torch.zeros(3, 64, 64), torch.device('cpu'), None))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    from occlens.engines.memory import CPU_AUTO_BATCH, KEPT_AUTO_BATCH

    assert out.stdout.split() == [str(CPU_AUTO_BATCH), "True", str(KEPT_AUTO_BATCH)]


# Run at the exit of any Python process given this folder on PYTHONPATH (as sitecustomize): malloc, touch and free
# a 64 MB block in that process and write how much of it stayed resident after the free. glibc has no getter for
# its thresholds; this is what they do: at glibc's defaults the block is mmapped and the free unmaps it, with the
# command's thresholds it comes from the heap and stays there for the next batch.
PROBE = """
import atexit, ctypes, os

def probe():
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    page = os.sysconf("SC_PAGE_SIZE")

    def resident():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    size = 64 * 2**20
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    touched = resident()
    libc.free(block)
    with open(os.environ["OCCLENS_PROBE_OUT"], "w") as f:
        f.write(str(touched - resident()))

atexit.register(probe)
"""


def _returned_on_free(tmp_path, command: list[str]) -> int:
    """Bytes of a freed 64 MB block that the process running ``command`` gave back to the OS."""
    probe = tmp_path / "probe"
    probe.mkdir(exist_ok=True)
    (probe / "sitecustomize.py").write_text(PROBE)
    out = tmp_path / "returned.txt"
    base = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT}
    path = os.pathsep.join([str(probe), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = base | {"PYTHONPATH": path, "OCCLENS_PROBE_OUT": str(out)}
    subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return int(out.read_text())


@pytest.mark.skipif(not GLIBC, reason="glibc only")
@pytest.mark.slow
def test_the_installed_command_raises_the_thresholds_in_its_own_process(tmp_path):
    """The real console script (its entry point, argument parsing and exit), observed from inside its process."""
    script = shutil.which("occlens", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("the occlens console script is not installed beside this interpreter")
    block = 64 * 2**20
    plain = _returned_on_free(tmp_path, [sys.executable, "-c", "import occlens.cli"])  # imported, not run
    assert plain >= 0.9 * block  # glibc's defaults: unmapped on free
    kept = _returned_on_free(tmp_path, [script, "labels", "--grep", "tabby"])
    assert kept <= 0.1 * block  # the command's process kept it
