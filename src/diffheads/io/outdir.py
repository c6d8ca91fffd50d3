"""Output folders checked before the long work starts, and removed again if a run fails before writing to them."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from diffheads.errors import DiffheadsError


def _remove_empty_tree(top: Path) -> None:
    """Remove `top` and the folders under it, bottom up, as long as they hold no file."""
    if not top.is_dir():
        return
    for dirpath, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
        with contextlib.suppress(OSError):  # not empty (or vanished): keep it
            os.rmdir(dirpath)


@contextlib.contextmanager
def output_dir(path: str | Path, what: str = "output folder") -> Iterator[Path]:
    """Create folder `path`, check a file can be written in it, and yield it.

    A file where a folder is needed is a one-line DiffheadsError; a folder that cannot be created or
    written raises the OSError (the command line says which path and what to do). If the block fails,
    the folders this call created are removed again when they are still empty, so a failed run leaves
    nothing behind.
    """
    path = Path(path)
    for folder in (path, *path.parents):
        if folder.exists() and not folder.is_dir():
            where = "" if folder == path else f": {folder} is a file"
            raise DiffheadsError(f"{what} {path} is not a folder{where}; choose another path for the output")
    created = next((p for p in reversed((path, *path.parents)) if not p.exists()), None)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", suffix=".tmp", dir=path)
        os.close(fd)
        os.unlink(probe)
        yield path
    except BaseException:
        if created is not None:
            _remove_empty_tree(created)
        raise
