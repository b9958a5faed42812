"""File helpers shared by every stage: hashing, and atomic writes that never leave half a file."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from qcli.errors import InputNotFound, OutputError


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks so large models do not load into memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` if it is an existing regular file, else raise a clear error."""
    if not path.exists():
        raise InputNotFound(f"{what} '{path}' does not exist", path=path)
    if path.is_dir():
        raise InputNotFound(f"{what} '{path}' is a folder; pass a file", path=path)
    return path


def require_dir(path: Path, what: str) -> Path:
    if not path.exists():
        raise InputNotFound(f"{what} '{path}' does not exist", path=path)
    if not path.is_dir():
        raise InputNotFound(f"{what} '{path}' is a file; pass a folder", path=path)
    return path


WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def check_output(path: Path, force: bool) -> None:
    """Refuse to overwrite without ``force`` and fail early when the folder is not writable."""
    if path.exists() and not force:
        raise OutputError(f"output '{path}' already exists; pass --force to overwrite it", path=path)
    if path.is_dir():
        raise OutputError(f"output '{path}' is a folder; pass a file path", path=path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"output folder '{parent}' does not exist; create it first", path=path)
    try:  # a real write: os.access says yes to root even where the file system says no
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        reason = f" ({exc.strerror})" if exc.errno in WRITE_ERRNOS else ""
        raise OutputError(f"output folder '{parent}' is not writable{reason}", path=path) from None


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it into place only if the block succeeds.

    The temporary file lives in the target folder (keeping the suffix, which some writers check)
    so the final ``os.replace`` is atomic; on any
    exception (including KeyboardInterrupt and the SystemExit raised for SIGTERM) it is removed.
    """
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent or ".")
    except OSError as exc:
        raise OutputError(f"cannot write in output folder '{path.parent}' ({exc.strerror or exc})", path=path) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
