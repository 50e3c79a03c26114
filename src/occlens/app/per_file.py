"""The loop of ``occlens explain`` over its files, for images (:func:`occlens.app.job.explain_files`) and volumes
(:func:`occlens.app.volume_files.explain_volume_files`) alike: each file explained and written by the function
given, under a bar of its windows named ``scan.nii.gz (2/5)``; a bad file skipped with one error (passed to
``on_error`` at once; a file whose outputs the filesystem refuses reads ``cannot write its outputs: ...``), the
others going on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ..core.errors import OcclensError, describe
from ..core.progress import Bar
from ..core.result import OcclusionResult

# explain one file and write its outputs: (path, label, stem, the bar of its windows) -> its result
ExplainOne = Callable[[Path, "int | str | None", str, Bar], OcclusionResult]


def unwritable(err: OSError) -> str:
    return f"cannot write its outputs: {describe(err)}"


def explain_each(
    files: Sequence[tuple[Path, int | str | None]],
    stems: Sequence[str],
    progress: bool | None,
    explain_one: ExplainOne,
    on_error: Callable[[OcclensError], None] | None = None,
) -> tuple[list[tuple[str, OcclusionResult]], list[OcclensError]]:
    """``explain_one`` on each ``(path, label)`` with its stem: ``(rows of (stem, result), errors)``."""
    rows, errors = [], []
    for number, ((path, label), stem) in enumerate(zip(files, stems, strict=True)):
        of = f" ({number + 1}/{len(files)})" if len(files) > 1 else ""
        try:
            with Bar(progress, "windows", Path(path).name + of) as bar:
                result = explain_one(Path(path), label, stem, bar)
        except (OcclensError, OSError) as err:
            errors.append(err if isinstance(err, OcclensError) else OcclensError(f"{path}: {unwritable(err)}"))
            if on_error is not None:
                on_error(errors[-1])
            continue
        rows.append((stem, result))
    return rows, errors
