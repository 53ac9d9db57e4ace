"""The served gallery: a ``siamax.Index`` with item ids that survive changes, saved so that an
acknowledged change survives ``kill -9`` and a half-written one never replaces the index.

Ids: ``Index`` ids are row positions, which ``remove`` renumbers, so a client that kept one could
delete the wrong item. The served id of an item is instead derived from its path, which the index
stores and which ``Index`` names as what identifies an item across changes: 16 hex digits of the
path's sha256. Items built from a folder (``siamax index build``) have their file's path; an upload
is stored under the path ``upload:<random hex>``, which names no file. Items without a path (an index
built in code without paths) are given one when the server opens the index, and it is saved at once.

Saving: ``Index.save`` writes a temporary file and renames it into place; here that file is also
flushed to the disk (``fsync``) before the rename, and the folder after it, so the rename that makes a
change visible is itself on disk before the change is acknowledged. A crash before the rename leaves
the old index; after it, the new one. A save that fails reloads the index from the disk, so what is
served never differs from what is stored.

Several server processes (``siamax serve --workers N``) serve one gallery: each change is made under
an exclusive lock of the folder (``index.lock``, ``fcntl.flock``) on the latest saved index, and a
process reloads the index whenever the saved file is no longer the one it read (:meth:`sync`, one
``stat`` per batch that reads the gallery). So a change acknowledged by one process is seen by the
next request any process answers, and two processes' changes never overwrite each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
from pathlib import Path

import numpy as np

from siamax.errors import InputError
from siamax.index import INDEX_NAME, Index

UPLOAD = "upload:"  # the path prefix of an uploaded item: it names no file
_TMP = "index.serve-tmp.npz"  # what a save writes before renaming it to index.npz
_LOCK = "index.lock"  # held while a process changes the index


def item_id(path: str) -> str:
    return hashlib.sha256(path.encode()).hexdigest()[:16]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Gallery:
    """An index folder (``index.npz``, as ``siamax index build`` writes) opened for search and change.

    Only one thread of a process may call it (the batcher's device thread); :attr:`items` may be read
    from any thread (it is replaced whole after every change, never changed in place)."""

    def __init__(self, folder: str | Path, params):
        self.folder, self.params = Path(folder), params
        self.path = self.folder / INDEX_NAME
        self.folder.mkdir(parents=True, exist_ok=True)  # a new, empty gallery, filled by uploads
        self._stamp = "never read"  # sync() reads it
        with self.locked():  # another process may be naming the same index's items
            paths = self.index.paths
            if any(p is None for p in paths):  # give every item a name its id can come from, and keep it
                embeddings, labels = np.asarray(self.index.embeddings), self.index.labels
                named = [p if p is not None else UPLOAD + secrets.token_hex(8) for p in paths]
                self.index = Index.build(params, embeddings, labels, named)
                self.save()
                self._refresh()

    def _saved(self):
        """What identifies the saved file (a save replaces it: a new inode), None if there is none."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def sync(self) -> bool:
        """Reload the index if another process has saved a change since it was read."""
        if self._saved() == self._stamp:
            return False
        self.reload()
        return True

    @contextlib.contextmanager
    def locked(self):
        """The folder's change lock, on the latest saved index (for a change and its save)."""
        try:
            f = open(self.folder / _LOCK, "a")  # noqa: SIM115  closed below
        except OSError as e:
            raise InputError(f"the gallery {self.folder} cannot be changed here: {e.strerror or e}") from e
        with f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                self.sync()
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _refresh(self) -> None:
        """:attr:`items` (id -> (rows, label, path)) and per-class counts, after a change."""
        items: dict[str, tuple[list[int], str, str]] = {}
        for row, (label, path) in enumerate(zip(self.index.labels, self.index.paths)):
            items.setdefault(item_id(path), ([], label, path))[0].append(row)
        labels = self.index.labels
        self.most = int(max(np.unique(labels, return_counts=True)[1])) if labels else 0
        self.classes = len(set(labels))
        self.items = items

    def __len__(self) -> int:
        return len(self.index)

    def id_of_row(self, row: int) -> str:
        return item_id(self.index.paths[row])

    def add(self, embedding: np.ndarray, label: str) -> str:
        path = UPLOAD + secrets.token_hex(8)
        self.index.add(embedding[None], [label], [path])
        self._refresh()
        return item_id(path)

    def remove(self, served_id: str) -> bool:
        rows = self.items.get(served_id, ([],))[0]
        if rows:
            self.index.remove(list(rows))
            self._refresh()
        return bool(rows)

    def save(self) -> None:
        """Write the index durably (module docstring); on failure, serve what the disk holds again."""
        tmp = self.folder / _TMP
        try:
            self.index.save(tmp)  # Index.save: its own temporary file, renamed to tmp
            _fsync(tmp)
            os.replace(tmp, self.path)
            _fsync(self.folder)
            self._stamp = self._saved()
        except BaseException:
            self.reload()
            raise

    def reload(self) -> None:
        stamp = self._saved()
        self.index = Index.load(self.path, self.params) if stamp is not None else Index(self.params)
        self._stamp = stamp
        self._refresh()
