"""Atomic file writes: write to a temporary name in the same folder, fsync, then rename into place.

A reader (or a resumed run) therefore sees either the old file or the new one, never a torn one.
`atomic_dir` does the same for a whole folder.

Permissions: the temporary file is created with mode 0o666 and the folder with 0o777, so the kernel
applies the user's umask exactly as it does for `open()` and `mkdir` (a 022 umask gives 0644 files
and 0755 folders). `tempfile.mkstemp` / `mkdtemp` would give 0600 / 0700, which the rename would
carry over: reports only their author could read. Reading the umask to chmod afterwards would need
`os.umask(0)`, which briefly changes it for every thread of the process.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_TRIES = 100  # a clash of 64 random bits is astronomically rare; the loop is for the impossible case


def _temp_file(folder: Path, prefix: str, suffix: str) -> tuple[int, Path]:
    """Create a new file `folder/{prefix}{random}{suffix}` (O_EXCL, mode 0o666 minus the umask)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(_TRIES):
        path = folder / f"{prefix}{secrets.token_hex(8)}{suffix}"
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {folder}")


def _temp_dir(folder: Path, prefix: str) -> Path:
    """Create a new folder `folder/{prefix}{random}` (mode 0o777 minus the umask)."""
    for _ in range(_TRIES):
        path = folder / f"{prefix}{secrets.token_hex(8)}"
        try:
            os.mkdir(path, 0o777)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary folder in {folder}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically, creating the folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_file(path.parent, f".{path.name}.", ".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically, creating the folder if needed."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Build a folder atomically: yields a temporary sibling folder to fill; on success its files are
    fsynced and it is renamed to `path` (replacing an existing folder), on error it is deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_dir(path.parent, f".{path.name}.tmp-")
    try:
        yield tmp
        for f in tmp.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
