"""The manifest of a dataset run: which images are finished, in ``DIR/manifest.sqlite``.

Two tables: ``run`` (key/value: the manifest format, the settings the outputs were made with, as
JSON, and ``resume``: what the run was asked for with those settings, by which a finished run answers
without loading its model, :mod:`occlens.app.fingerprint`) and ``images`` (one row per image key,
the primary key, so an image is never recorded twice: status ``ok`` or ``failed``, its output stem,
the prediction or the error; for a multi-label truth the true and the predicted labels, as JSON lists).

Records are written in SQLite transactions (rollback journal, ``synchronous=FULL``), one image or a
few at a time (:meth:`Manifest.add_all`): a process killed at any moment, SIGKILL included, leaves
the old rows or the new ones, never half of one. The caller writes an image's outputs first and
records it after, so an ``ok`` row means the files are whole (records not yet written when a run is
killed are images whose files are redone by the next run). Format 1 (before the multi-label columns)
is upgraded in place when opened.
While a manifest is open its folder is locked (``flock``), so two runs cannot share a folder.
This module knows nothing of scheduling: whoever runs the images (a loop, a pool, a cluster)
records them here from one process.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import astuple, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..core.records import Record

FILE = "manifest.sqlite"
MANIFEST_FORMAT = 2  # 2: the true_labels and predicted_labels columns


COLUMNS = tuple(f.name for f in fields(Record))
SCHEMA = """
CREATE TABLE IF NOT EXISTS run (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    key TEXT PRIMARY KEY, path TEXT NOT NULL, stem TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    label INTEGER, label_name TEXT, predicted INTEGER, predicted_name TEXT,
    confidence REAL, label_probability REAL, loss REAL, error TEXT, seconds REAL NOT NULL, finished TEXT NOT NULL,
    true_labels TEXT, predicted_labels TEXT
);
"""
LISTS = ("true_labels", "predicted_labels")  # tuples of class indices, stored as JSON lists


def to_record(row: Sequence, columns: Sequence[str] = COLUMNS) -> Record:
    """The Record of a row of the images table holding ``columns`` (a manifest of an earlier format, read
    without upgrading it, lacks some: they are None); the label lists decoded from their JSON."""
    values = dict(zip(columns, row, strict=True))
    for column in LISTS:
        if values.get(column) is not None:
            values[column] = tuple(json.loads(values[column]))
    return Record(**{c: values.get(c) for c in COLUMNS})


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Manifest:
    """An open manifest (use as a context manager); the folder stays locked until :meth:`close`."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / FILE
        self._lock = _lock(self.folder)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=DELETE")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            stored = self._get("format")
        except sqlite3.DatabaseError as err:
            self.close()
            raise ConfigError(f"{self.path} is not an occlens manifest ({err}); use another --out") from None
        if stored is not None and int(stored) == 1:  # before the multi-label columns: add them
            try:
                with self._transaction() as db:
                    for column in LISTS:
                        db.execute(f"ALTER TABLE images ADD COLUMN {column} TEXT")
                    db.execute("INSERT OR REPLACE INTO run VALUES ('format', ?)", (str(MANIFEST_FORMAT),))
            except sqlite3.DatabaseError as err:  # a read-only folder, a full disk: the run stays as it was
                self.close()
                raise ConfigError(
                    f"{self.path} is a manifest of format 1 and cannot be upgraded to {MANIFEST_FORMAT} ({err}); make "
                    f"the folder writable, or use another --out"
                ) from None
        elif stored is not None and int(stored) != MANIFEST_FORMAT:
            self.close()
            raise ConfigError(
                f"{self.path} has manifest format {stored}, made by a newer occlens (this one reads up to "
                f"{MANIFEST_FORMAT}); upgrade occlens, or use another --out"
            )

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()
            self._db = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def remove(self) -> None:
        """Close the manifest and delete its file (for a run that stopped before recording anything)."""
        self.close()
        self.path.unlink(missing_ok=True)

    def settings(self) -> dict[str, Any] | None:
        """The settings the recorded outputs were made with, or None for a new manifest."""
        text = self._get("settings")
        return None if text is None else json.loads(text)

    def start(
        self, settings: Mapping[str, Any], force: bool = False, resume: Mapping[str, Any] | None = None
    ) -> list[str]:
        """Record ``settings`` for a new manifest, or check them against the stored ones.

        Changed settings are a ConfigError that names them, unless ``force``: then every record is
        dropped (the caller deletes their outputs first) and the new settings stored. Returns the
        changes, empty when there were none. ``resume``: what the run was asked for, stored with the settings
        it gave (:meth:`resume`); changed settings without one drop the one stored.
        """
        settings = json.loads(json.dumps(settings))
        old = self.settings()
        changed = [] if old is None else changes(old, settings)
        if changed and not force:
            raise ConfigError(
                f"{self.folder} holds a run made with other settings ({'; '.join(changed)}); use another --out, "
                f"or --force to delete its results and start over with the new settings"
            )
        if old is None or changed or resume is not None:
            text = json.dumps(settings, sort_keys=True)
            with self._transaction() as db:
                if old is None or changed:
                    db.execute("DELETE FROM images")
                    db.execute("DELETE FROM run WHERE name = 'resume'")
                    db.execute("INSERT OR REPLACE INTO run VALUES ('format', ?)", (str(MANIFEST_FORMAT),))
                    db.execute("INSERT OR REPLACE INTO run VALUES ('settings', ?)", (text,))
                if resume is not None:
                    stored = self._get("settings") if not (old is None or changed) else text
                    note = {"settings": _digest(stored), **json.loads(json.dumps(resume))}
                    db.execute("INSERT OR REPLACE INTO run VALUES ('resume', ?)", (json.dumps(note, sort_keys=True),))
        return changed

    def resume(self) -> dict[str, Any] | None:
        """What :meth:`start` stored as ``resume`` with the settings stored now, or None (none stored, or one
        stored with other settings: by an occlens that did not know of it)."""
        text = self._get("resume")
        note = None if text is None else json.loads(text)
        if note is None or note.pop("settings", None) != _digest(self._get("settings") or ""):
            return None
        return note

    def records(self) -> dict[str, Record]:
        """Every recorded image by key."""
        rows = self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM images ORDER BY key")
        return {row[0]: to_record(row) for row in rows}

    def add(self, record: Record) -> bool:
        """Record one image (replacing an earlier record of its key), durably, in one transaction;
        whether it was explained (``record.ok``), for the progress line."""
        self.add_all([record])
        return record.ok

    def add_all(self, records: list[Record]) -> None:
        """Record several images in one transaction (all of them or, killed, none)."""
        rows = []
        for record in records:
            if record.status not in ("ok", "failed"):
                raise ValueError(f"status must be 'ok' or 'failed', got {record.status!r}")
            row = list(astuple(record))
            for column in LISTS:
                i = COLUMNS.index(column)
                row[i] = None if row[i] is None else json.dumps(list(row[i]))
            rows.append(row)
        with self._transaction() as db:
            db.executemany(
                f"INSERT OR REPLACE INTO images ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", rows
            )

    def _get(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM run WHERE name = ?", (name,)).fetchone()
        return None if row is None else row[0]

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


def changes(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``"name: old -> new"`` for every setting both have and that differs (nested mappings by dotted name)."""
    out = []
    for name in sorted(set(old) & set(new)):
        a, b = old[name], new[name]
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += changes(a, b, f"{prefix}{name}.")
        elif a != b:
            out.append(f"{prefix}{name}: {_short(a)} -> {_short(b)}")
    return out


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _lock(folder: Path) -> int | None:
    """An exclusive lock on ``folder`` (released when the process ends, however it ends)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return None
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ConfigError(
            f"another occlens run is writing to {folder}; wait for it to finish, or use another --out"
        ) from None
    return fd
