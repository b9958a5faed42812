"""File helpers shared by every stage: hashing, and atomic writes that never leave half a file."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    """Yield a temporary path for ``path``; move it into place only if the block succeeds.

    The temporary file has the final name, inside a hidden temporary folder next to the target:
    writers that derive names from the file name (``torch.export.save`` names the archive's root
    folder after it) then write the same bytes as for the final path, and the final ``os.replace``
    stays on one file system, so it is atomic. On any exception (including the one raised for
    SIGINT/SIGTERM) the temporary folder is removed.
    """
    try:
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or "."))
    except OSError as exc:
        raise OutputError(f"cannot write in output folder '{path.parent}' ({exc.strerror or exc})", path=path) from None
    tmp = tmp_dir / path.name
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def save_safetensors(tensors: dict[str, Any], metadata: dict[str, str], path: Path) -> None:
    """``safetensors`` file with a canonical header: the library orders metadata keys by a
    per-process hash, so the same content would otherwise give different bytes in each run."""
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    (n,) = struct.unpack("<Q", data[:8])
    header = json.dumps(json.loads(data[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format aligns the data section to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        f.write(data[8 + n :])


SERIALIZATION_ID = ".data/serialization_id"


def fix_serialization_id(path: Path) -> None:
    """Make a torch zip archive reproducible: torch writes ``.data/serialization_id`` as 20 digits
    of the archive's combined CRC followed by 20 random digits; the random half becomes zeros.

    The record is stored uncompressed, so it is rewritten in place, with its CRC-32 in the local
    header, the data descriptor and the central directory.
    """
    with zipfile.ZipFile(path) as z:
        infos = [i for i in z.infolist() if i.filename.endswith(SERIALIZATION_ID)]
        start_dir = z.start_dir
    if not infos:
        return
    with open(path, "r+b") as f:
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED or info.file_size != 40:
                continue
            f.seek(info.header_offset)
            local = f.read(30)
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            data_at = info.header_offset + 30 + name_len + extra_len
            f.seek(data_at)
            old = f.read(info.file_size)
            new = old[:20] + b"0" * 20
            old_crc, new_crc = struct.pack("<I", info.CRC), struct.pack("<I", zlib.crc32(new))
            f.seek(data_at)
            f.write(new)
            _replace_at(f, info.header_offset + 14, old_crc, new_crc)  # local header
            if info.flag_bits & 0x08:  # data descriptor, with or without its signature
                f.seek(data_at + info.file_size)
                sig = f.read(4)
                _replace_at(f, data_at + info.file_size + (4 if sig == b"PK\x07\x08" else 0), old_crc, new_crc)
            _replace_central_crc(f, start_dir, info.filename.encode(), old_crc, new_crc)


def _replace_at(f: Any, offset: int, old: bytes, new: bytes) -> None:
    f.seek(offset)
    if f.read(len(old)) == old:
        f.seek(offset)
        f.write(new)


def _replace_central_crc(f: Any, offset: int, name: bytes, old: bytes, new: bytes) -> None:
    f.seek(offset)
    while True:
        entry = f.read(46)
        if len(entry) < 46 or entry[:4] != b"PK\x01\x02":
            return
        name_len, extra_len, comment_len = struct.unpack("<HHH", entry[28:34])
        if f.read(name_len) == name:
            _replace_at(f, offset + 16, old, new)
            return
        offset += 46 + name_len + extra_len + comment_len
        f.seek(offset)
