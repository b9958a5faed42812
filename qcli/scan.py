"""Read the pickles inside a ``.pt2`` archive without running them, as model scanners do.

``torch.export.load`` in torch 2.13 unpickles tensors that the archive marks ``use_pickle`` with
``weights_only=False`` (and custom objects with plain ``pickle.loads``), so an exported program
can carry code that runs the moment it is loaded. Before qcli loads one, ``check_archive`` walks
every pickle that torch would unpickle (``.pkl`` members, pickled weights and constants, and the
``torch.save`` archives nested inside them) opcode by opcode with ``pickletools``, and names
every global it would import. A global outside the allow-list below (tensor rebuilding, storages,
dtypes, plain containers) refuses the file, unless the user trusts it (``--trust-model``).

Nothing here imports what a pickle names: the check reads bytes only.
"""

from __future__ import annotations

import io
import json
import pickletools
import zipfile
from pathlib import Path

from qcli.errors import UntrustedModel

# module -> names a pickle of tensors may import (what torch.save writes for tensors and
# parameters, and the plain containers around them)
ALLOWED: dict[str, frozenset[str]] = {
    "torch._utils": frozenset(
        {
            "_rebuild_tensor",
            "_rebuild_tensor_v2",
            "_rebuild_tensor_v3",
            "_rebuild_parameter",
            "_rebuild_parameter_with_state",
            "_rebuild_qtensor",
            "_rebuild_meta_tensor_no_storage",
        }
    ),
    "torch.nn.parameter": frozenset({"Parameter"}),
    "torch.storage": frozenset({"UntypedStorage", "TypedStorage"}),
    "collections": frozenset({"OrderedDict"}),
    "builtins": frozenset(
        {"set", "frozenset", "tuple", "list", "dict", "int", "float", "complex", "bool", "str", "bytes", "bytearray"}
    ),
    "_codecs": frozenset({"encode"}),  # how protocol 2 spells a bytes object
}
# torch.<name>: storages (torch.FloatStorage), dtypes, layouts, memory formats, qschemes, Size, device
TORCH_SUFFIXES = ("Storage",)
TORCH_NAMES = frozenset(
    {
        "Size",
        "device",
        "strided",
        "sparse_coo",
        "contiguous_format",
        "channels_last",
        "preserve_format",
        "per_tensor_affine",
        "per_channel_affine",
        "per_tensor_symmetric",
        "per_channel_symmetric",
        "per_channel_affine_float_qparams",
        *(
            f"{kind}{bits}"
            for kind, sizes in {
                "float": (16, 32, 64),
                "int": (8, 16, 32, 64),
                "uint": (8, 16, 32, 64),
                "complex": (32, 64, 128),
                "qint": (8, 32),
                "quint": (8,),
            }.items()
            for bits in sizes
        ),
        "bfloat16",
        "half",
        "float",
        "double",
        "long",
        "int",
        "short",
        "bool",
        "cfloat",
        "cdouble",
        "quint4x2",
        "quint2x4",
    }
)
STRING_OPS = frozenset(
    {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}
)
MAX_NESTING = 3


def allowed(module: str, name: str) -> bool:
    if module == "torch":
        return name in TORCH_NAMES or name.endswith(TORCH_SUFFIXES)
    return name in ALLOWED.get(module, frozenset())


def pickle_globals(data: bytes) -> list[str]:
    """Every ``module.name`` the pickle would import, in order; ``?`` for one it computes from
    values the scan cannot follow (then it cannot be vetted). A damaged stream stops the scan
    where ``pickle`` itself would stop, with what it would already have imported."""
    found: list[str] = []
    pushed: list[object] = []  # what each opcode pushed, a string or None: enough for STACK_GLOBAL
    memo: dict[int, object] = {}
    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
            name = opcode.name
            if name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", ".", 1))
            elif name == "STACK_GLOBAL":
                top: list[object] = pushed[-2:] if len(pushed) >= 2 else [None, None]
                named = all(isinstance(part, str) for part in top)
                found.append(f"{top[0]}.{top[1]}" if named else "?")
            if name in STRING_OPS:
                pushed.append(arg)
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                pushed.append(memo.get(int(str(arg))))
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(str(arg))] = pushed[-1] if pushed else None
            elif name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
            elif opcode.stack_after:
                pushed.append(None)
            if name == "STOP":
                break
    except ValueError:  # not (or no longer) a pickle: pickle.loads would stop here too
        pass
    return found


def _entry_pickles(name: str, data: bytes, depth: int = 0) -> list[tuple[str, bytes]]:
    """The pickles inside one archive member: itself, or the ``.pkl`` members of a nested zip."""
    if data[:4] == b"PK\x03\x04" and depth < MAX_NESTING:
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as inner:
                return [
                    item
                    for member in inner.namelist()
                    for item in _entry_pickles(f"{name}/{member}", inner.read(member), depth + 1)
                ]
        except zipfile.BadZipFile:
            return []
    if name.endswith(".pkl") or (data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        return [(name, data)]
    return []


def _raw_payloads(archive: zipfile.ZipFile) -> set[str]:
    """Members the archive's payload configs mark as raw tensor bytes (``use_pickle: false``):
    torch reads them with ``as_strided``, never with pickle."""
    raw = set()
    for member in archive.namelist():
        if not member.endswith(".json") or "config" not in member.rsplit("/", 1)[-1]:
            continue
        try:
            config = json.loads(archive.read(member)).get("config", {})
        except (ValueError, AttributeError):
            continue
        for meta in config.values() if isinstance(config, dict) else ():
            if isinstance(meta, dict) and meta.get("use_pickle") is False and meta.get("path_name"):
                raw.add(str(meta["path_name"]))
    return raw


def unsafe_globals(path: Path) -> list[tuple[str, str]]:
    """(archive member, global) for every import a pickle in the archive would make outside the
    allow-list."""
    bad = []
    with zipfile.ZipFile(path) as archive:
        raw = _raw_payloads(archive)
        for member in archive.namelist():
            if member.endswith("/") or member.rsplit("/", 1)[-1] in raw:
                continue
            for where, data in _entry_pickles(member, archive.read(member)):
                for ref in pickle_globals(data):
                    module, _, name = ref.rpartition(".")
                    if ref == "?" or not allowed(module, name):
                        bad.append((where, ref))
    return bad


def check_archive(path: Path, trusted: bool) -> None:
    """Refuse an archive whose pickles would import anything but tensors and containers, unless
    the user trusts the file."""
    if trusted:
        return
    try:
        bad = unsafe_globals(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UntrustedModel(f"'{path}' cannot be read as an archive ({exc})", path=path) from None  # noqa: RUF100
    if bad:
        where, ref = bad[0]
        what = "code it cannot name" if ref == "?" else f"'{ref}'"
        raise UntrustedModel(
            f"'{path}' holds a pickle ({where.rsplit('/', 1)[-1]}) that would import {what} when loaded"
            + (f" ({len(bad)} such imports)" if len(bad) > 1 else "")
            + "; qcli loads only tensors from an untrusted file: pass {trust_model} if you trust whoever made it",
            path=path,
        )
