"""A run's folder (``occlens run``'s DIR) as the viewer reads it: its images from the manifest, read-only
(the run may still be writing; its lock is not taken), and its files served only from inside it."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from ..app.manifest import COLUMNS, FILE, Record, to_record
from ..core.errors import ConfigError
from .errors import Forbidden, NotFound

if TYPE_CHECKING:
    from ..models.loaded import LoadedModel

SERVED = ("report", "images")  # the folders of DIR that occlens writes


@dataclass(frozen=True)
class RunFolder:
    """The folder ``root`` (resolved) of a dataset run."""

    root: Path

    @classmethod
    def open(cls, folder: str | Path) -> RunFolder:
        root = Path(folder).resolve()
        if not (root / FILE).is_file():
            raise ConfigError(f"{folder}: not the folder of an occlens run (no {FILE}); give the DIR of `occlens run`")
        run = cls(root)
        run.records()  # a manifest that cannot be read is said now, not on the first request
        return run

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            db = sqlite3.connect(f"{(self.root / FILE).as_uri()}?mode=ro", uri=True)
            try:
                return db.execute(sql, args).fetchall()
            finally:
                db.close()
        except sqlite3.Error as err:
            raise ConfigError(f"{self.root / FILE}: cannot read the run's manifest ({err})") from None

    def _columns(self) -> list[str]:
        """The columns of the run's images table this occlens knows (a run of an earlier format has fewer; the
        manifest is read as it is, never upgraded from here)."""
        have = {row[1] for row in self._query("PRAGMA table_info(images)")}
        return [c for c in COLUMNS if c in have]

    def records(self) -> list[Record]:
        """The images explained (status ok), by key."""
        columns = self._columns()
        rows = self._query(f"SELECT {', '.join(columns)} FROM images WHERE status = 'ok' ORDER BY key")
        return [to_record(row, columns) for row in rows]

    def record(self, key: str) -> Record:
        columns = self._columns()
        rows = self._query(f"SELECT {', '.join(columns)} FROM images WHERE key = ? AND status = 'ok'", (key,))
        if not rows:
            raise NotFound(f"the run has no explained image {key!r}; list them with GET /api/run")
        return to_record(rows[0], columns)

    def settings(self) -> dict:
        """The settings the run's outputs were made with (its fingerprint), or {}."""
        rows = self._query("SELECT value FROM run WHERE name = 'settings'")
        return json.loads(rows[0][0]) if rows else {}

    def other_model(self, model: LoadedModel) -> bool:
        """Whether the run was made with another model than ``model`` (a LoadedModel) by its recorded identity
        (:func:`occlens.app.runs.model_identity`: file contents, not names)."""
        from ..app.fingerprint import model_identity

        recorded = self.settings().get("model")
        if not recorded:
            return False
        return any(recorded.get(k) != v for k, v in model_identity(model).items())

    def image_path(self, record: Record) -> Path:
        """Where the run read the image (as recorded, else under the run's dataset folder)."""
        recorded = Path(record.path)
        if recorded.is_file():
            return recorded
        dataset = self.settings().get("dataset")
        if dataset and Path(dataset).is_dir() and (Path(dataset) / record.key).is_file():
            return Path(dataset) / record.key
        raise NotFound(f"the image of {record.key!r} is no longer at {record.path}")

    def file(self, relative: str) -> Path:
        """The file at ``relative`` inside the run's ``report/`` or ``images/`` (what occlens wrote there): no
        ``..``, no absolute path, and symbolic links resolved: the file they lead to must be inside one of those
        two folders too (not the manifest, nor anything else a person keeps in DIR or outside it)."""
        parts = PurePosixPath(relative).parts
        if not parts or relative.startswith("/") or "\\" in relative or "\0" in relative or ".." in parts:
            raise Forbidden(f"{relative!r}: only paths inside the run's folder are served")
        if parts[0] not in SERVED:  # anything else a person keeps in DIR is not the viewer's to serve
            raise Forbidden(f"{relative!r}: only the run's {' and '.join(SERVED)} folders are served")
        try:
            path = (self.root / relative).resolve(strict=True)
        except (OSError, RuntimeError):
            raise NotFound(f"{relative!r}: no such file in the run's folder") from None
        if not any(path.is_relative_to(self.root / folder) for folder in SERVED):
            raise Forbidden(
                f"{relative!r}: leads outside the run's {' and '.join(SERVED)} folders; only files inside them are "
                "served"
            )
        if not path.is_file():
            raise NotFound(f"{relative!r}: not a file in the run's folder")
        return path
