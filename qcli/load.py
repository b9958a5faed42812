"""Stage 1: load a saved model, whatever form it was saved in.

The format is detected from the file's content, never its name. Each format has a loader in
``LOADERS`` (filled by ``@loader``); the result is a ``LoadedModel`` holding an eval-mode module.
"""

from __future__ import annotations

import importlib
import json
import pickle
import sys
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qcli.engine import LIBRARY_NOISE, loggers_at_error
from qcli.errors import ArchError, ModelLoadError, QcliError, StateDictMismatch, UnknownFormat
from qcli.files import require_file, sha256_file

TORCHSCRIPT = "torchscript"
STATE_DICT = "state-dict"
SAFETENSORS = "safetensors"
EXPORTED_PROGRAM = "exported-program"
HF_FOLDER = "hf-folder"  # a save_pretrained folder (qcli.hf)
AOTI_PACKAGE = "aoti-package"
QCLI_EXTRA = "qcli.json"  # name of qcli's metadata file inside an exported program


def import_target(target: str, flag: str, error: type[QcliError] = ArchError) -> Any:
    """The object ``module.path:attr`` names, imported the way ``python -m`` would find modules
    next to the user (the working folder is on ``sys.path`` only for this import, so later imports
    in the process cannot pick up files from it). Errors name ``flag``."""
    module_name, _, attr = target.partition(":")
    cwd = str(Path.cwd())
    added = "" not in sys.path and cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        # transformers imported by user code brings torchao's and torch's log lines (a warning per
        # CUDA library torchao cannot load, pytree deprecations); the user's own warnings still show
        with loggers_at_error(LIBRARY_NOISE):
            module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or any error raised while importing user code
        raise error(f"{flag} '{target}': cannot import '{module_name}': {exc}") from exc
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
    found: Any = module
    for part in attr.split("."):
        if not hasattr(found, part):
            raise error(f"{flag} '{target}': '{module_name}' has no attribute '{attr}'")
        found = getattr(found, part)
    return found


@dataclass(frozen=True)
class ArchSpec:
    """``module.path:callable`` plus keyword arguments: how to build the model for a state dict."""

    target: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, target: str, kwargs_json: str | None = None) -> ArchSpec:
        module_name, sep, attr = target.partition(":")
        if not sep or not module_name or not attr:
            raise ArchError(
                f"--arch '{target}' is not of the form module.path:callable (e.g. qcli.demo.model:DigitNet)"
            )
        kwargs: Any = {}
        if kwargs_json:
            try:
                kwargs = json.loads(kwargs_json)
            except json.JSONDecodeError as exc:
                raise ArchError(f"--arch-kwargs is not valid JSON: {exc}") from None
            if not isinstance(kwargs, dict):
                raise ArchError("--arch-kwargs must be a JSON object, e.g. '{\"num_classes\": 10}'")
        return cls(target, kwargs)

    def build(self) -> Any:
        import torch

        factory = import_target(self.target, "--arch")
        if not callable(factory):
            raise ArchError(f"--arch '{self.target}' is not callable")
        try:
            model = factory(**self.kwargs)
        except Exception as exc:
            raise ArchError(
                f"--arch '{self.target}' raised {type(exc).__name__} while building the model: {exc}"
            ) from exc
        if not isinstance(model, torch.nn.Module):
            raise ArchError(f"--arch '{self.target}' returned {type(model).__name__}, not a torch.nn.Module")
        return model


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to run: ``module`` is in eval mode on the CPU."""

    module: Any  # torch.nn.Module; Any keeps torch out of this module's import time
    format: str
    path: Path
    sha256: str
    size_bytes: int
    arch: ArchSpec | None = None
    task: str | None = None  # a model folder's head (qcli.hf.TASKS)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


def detect_format(path: Path) -> str:
    """Name the format of a model file from its first bytes and, for zip archives, its entries."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise UnknownFormat(f"model file '{path}' is empty", path=path)
    if head[:4] == b"PK\x03\x04":
        return _zip_format(path)
    if len(head) >= 9 and head[8:9] == b"{":
        header_len = int.from_bytes(head[:8], "little")
        if header_len < path.stat().st_size:
            return SAFETENSORS
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return STATE_DICT  # legacy (non-zip) torch.save file: a pickle stream
    raise UnknownFormat(
        f"'{path}' is not a TorchScript archive, state dict (.pt/.pth/.bin/.safetensors) or exported "
        "program (.pt2); check that the file is complete",
        path=path,
    )


def _zip_format(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnknownFormat(
            f"'{path}' looks like a zip archive but cannot be read ({exc}); is it truncated?", path=path
        ) from None
    if any("/data/aotinductor/" in n for n in names):
        return AOTI_PACKAGE
    if any(n.endswith("/archive_format") for n in names) and any("/models/" in n for n in names):
        return EXPORTED_PROGRAM
    if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
        return TORCHSCRIPT
    if any(n.endswith("/data.pkl") for n in names):
        return STATE_DICT
    raise UnknownFormat(
        f"'{path}' is a zip archive but not a TorchScript archive, torch.save file or exported program",
        path=path,
    )


def is_qcli_artifact(path: Path) -> bool:
    """True for an INT8 artifact written by qcli (either form)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith(f"/extra/{QCLI_EXTRA}") or n.endswith("wrapper_metadata.json") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


Loader = Callable[[Path, ArchSpec | None], Any]
LOADERS: dict[str, Loader] = {}


def loader(fmt: str) -> Callable[[Loader], Loader]:
    def register(fn: Loader) -> Loader:
        LOADERS[fmt] = fn
        return fn

    return register


def load_model(
    path: Path, arch: ArchSpec | None = None, trust_model: bool = False, task: str | None = None
) -> LoadedModel:
    """Load any supported FP32 model file; ``arch`` is required for state dicts.

    An exported program's pickles are scanned first (``qcli.scan``) and refused when they would
    import anything but tensors, unless ``trust_model``.
    """
    path = Path(path)
    if path.is_dir():
        return _load_folder(path, arch, trust_model, task)
    if task is not None:
        raise ArchError(f"--task chooses the head of a model folder; '{path}' is a model file")
    require_file(path, "model")
    fmt = detect_format(path)
    if fmt == AOTI_PACKAGE or (fmt == EXPORTED_PROGRAM and is_qcli_artifact(path)):
        raise ModelLoadError(
            f"'{path}' is already a qcli INT8 artifact; pass the FP32 model it was made from "
            "(use `qcli inspect` to see what it holds)",
            path=path,
        )
    if fmt == EXPORTED_PROGRAM:
        from qcli.scan import check_archive

        check_archive(path, trust_model)
    module = LOADERS[fmt](path, arch)
    if fmt != EXPORTED_PROGRAM:  # an exported program's module is already inference-only
        module.eval()
    return LoadedModel(module, fmt, path, sha256_file(path), path.stat().st_size, arch)


def _load_folder(path: Path, arch: ArchSpec | None, trust_model: bool, task: str | None) -> LoadedModel:
    """A Hugging Face model folder (``qcli.hf``); any other folder is a mistake."""
    from qcli import hf

    if not hf.is_model_folder(path):
        raise ModelLoadError(
            f"'{path}' is a folder without config.json; pass a model file, or a folder written by save_pretrained",
            path=path,
        )
    if arch is not None:
        raise ArchError(f"--arch is for state dicts; the model folder '{path}' builds its own architecture")
    if task is not None and task not in hf.TASKS:
        raise ArchError(f"--task must be one of {', '.join(hf.TASKS)}, not '{task}'")
    module = hf.load_folder(path, trust_model, task)
    sha256, size = hf.folder_digest(path)
    return LoadedModel(module, HF_FOLDER, path, sha256, size, None, task)


@loader(TORCHSCRIPT)
def _load_torchscript(path: Path, arch: ArchSpec | None) -> Any:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in 2.13; users still have files
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ModelLoadError(
                f"TorchScript archive '{path}' cannot be loaded: {first_line(exc)}", path=path
            ) from exc


@loader(EXPORTED_PROGRAM)
def _load_exported(path: Path, arch: ArchSpec | None) -> Any:
    import torch
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers the quantize ops)

    try:
        return torch.export.load(str(path)).module()
    except Exception as exc:
        raise ModelLoadError(f"exported program '{path}' cannot be loaded: {first_line(exc)}", path=path) from exc


@loader(STATE_DICT)
def _load_torch_state_dict(path: Path, arch: ArchSpec | None) -> Any:
    import torch

    try:
        # a file object: torch.load must not guess the format from the name; warnings such as
        # "Detected pickle protocol 4" are noise before our own error
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(
            f"'{path}' holds Python objects, not only tensors; qcli never unpickles code "
            "(weights_only=True): save model.state_dict() instead of the model",
            path=path,
        ) from exc
    except Exception as exc:
        raise ModelLoadError(f"'{path}' cannot be read as a torch.save file: {first_line(exc)}", path=path) from exc
    return _build_from_state_dict(_unwrap_state_dict(obj, path), path, arch)


@loader(SAFETENSORS)
def _load_safetensors(path: Path, arch: ArchSpec | None) -> Any:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"'{path}' is not a valid safetensors file: {exc}", path=path) from exc
    return _build_from_state_dict(state, path, arch)


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, Any]:
    import torch

    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(
            f"'{path}' is a torch.save file but not a state dict (a mapping of names to tensors)",
            path=path,
        )
    if obj and all(k.startswith("module.") for k in obj):  # saved from DataParallel
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def _build_from_state_dict(state: dict[str, Any], path: Path, arch: ArchSpec | None) -> Any:
    if arch is None:
        raise ArchError(
            f"'{path}' is a state dict (weights only); pass --arch module.path:callable that builds "
            "the model, e.g. --arch qcli.demo.model:DigitNet"
        )
    model = arch.build()
    check_state_dict(model.state_dict(), state, path)
    model.load_state_dict(state, strict=True)
    return model


def check_state_dict(expected: dict[str, Any], given: dict[str, Any], path: Path) -> None:
    """Raise ``StateDictMismatch`` listing missing, unexpected and wrongly shaped keys."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = sorted(
        f"{k} {list(given[k].shape)} vs {list(expected[k].shape)}"
        for k in set(expected) & set(given)
        if tuple(given[k].shape) != tuple(expected[k].shape)
    )
    if not (missing or unexpected or shapes):
        return
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch (file vs model)", shapes)):
        if keys:
            shown = ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")
            parts.append(f"{label}: {shown}")
    raise StateDictMismatch(
        f"state dict '{path}' does not fit --arch: " + "; ".join(parts),
        missing=missing,
        unexpected=unexpected,
        shapes=shapes,
        path=path,
    )


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
