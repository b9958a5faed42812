"""Stage 2: read a folder of samples (images, tensor files or texts) as a stream of batches.

Files are found recursively and ordered by their relative path, so the order never depends on the
file system; ``seed`` shuffles that order reproducibly and ``limit`` keeps the first N samples.
Readers are registered per file extension in ``READERS``. Every reader yields single samples as a
mapping of input name to tensor (without the batch dimension); ``batches`` stacks them, so memory
holds one batch at a time whatever the size of the folder.

A folder whose samples all sit in sub-folders is also a labeled set: the sub-folder names, sorted,
are the class names and their index is the label. Text files (``qcli.text``) may also carry a
label per text.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qcli.config import PreprocessConfig
from qcli.errors import DataError
from qcli.files import require_dir, sha256_file
from qcli.text import LABEL, TEXT_EXTS

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
TENSOR_EXTS = (".pt", ".pth", ".npy", ".npz", ".safetensors")


@dataclass(frozen=True)
class InputSpec:
    """What the model takes: input names in call order, and the rank of each (with batch), if known."""

    names: tuple[str, ...]
    ranks: tuple[int | None, ...]
    channels: int | None = None  # input channels of the first convolution, for images

    @property
    def single(self) -> str:
        return self.names[0]

    @property
    def sequence(self) -> bool:
        """No convolution in front: inputs are sequences (token ids, masks, features) whose
        dimension 1 may vary from sample to sample."""
        return self.ranks[0] is None


@dataclass(frozen=True)
class Batch:
    inputs: dict[str, Any]  # name → tensor with a leading batch dimension
    labels: Any | None  # int64 tensor, or None for an unlabeled folder
    files: tuple[str, ...]  # relative path of the file each sample came from


Reader = Callable[[Path, PreprocessConfig, InputSpec], Iterator[dict[str, Any]]]
READERS: dict[str, Reader] = {}


def reader(*exts: str) -> Callable[[Reader], Reader]:
    def register(fn: Reader) -> Reader:
        for ext in exts:
            READERS[ext] = fn
        return fn

    return register


@dataclass(frozen=True)
class SampleFolder:
    """A folder of samples, listed once; reading happens lazily in ``samples``/``batches``."""

    root: Path
    files: tuple[Path, ...]
    classes: tuple[str, ...] | None = None
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    @classmethod
    def open(
        cls,
        root: Path,
        preprocess: PreprocessConfig | None = None,
        *,
        seed: int | None = None,
        what: str = "calibration folder",
    ) -> SampleFolder:
        from qcli import text

        require_dir(root, what)
        files = sorted(
            (
                p
                for p in root.rglob("*")
                if p.is_file()
                and p.suffix.lower() in READERS
                and not p.name.startswith(".")
                and text.is_sample(p, root)
            ),
            key=lambda p: p.relative_to(root).as_posix(),
        )
        if not files:
            exts = " ".join(sorted(READERS))
            raise DataError(
                f"{what} '{root}' has no image, tensor or text files (looked for {exts}); pass a folder of samples",
                path=root,
            )
        if seed is not None:
            random.Random(seed).shuffle(files)
        preprocess = preprocess or PreprocessConfig()
        labeled = all(len(p.relative_to(root).parts) == 2 for p in files)
        classes = tuple(sorted({p.relative_to(root).parts[0] for p in files})) if labeled else None
        if all(p.suffix.lower() in text.TABLES for p in files):
            labels = [label for p in files for label in text.labels_of(p)]
            given = [label for label in labels if label is not None]
            if given and len(given) != len(labels):
                raise DataError(
                    f"{what} '{root}': {len(given)} of {len(labels)} texts have a label; label all or none",
                    path=root,
                )
            if given:
                classes = text.classes_of(given, preprocess.tokenizer)
        return cls(root, tuple(files), classes, preprocess)

    @property
    def labeled(self) -> bool:
        return self.classes is not None

    def label_of(self, path: Path, given: Any = None) -> int | None:
        """The class index of a sample: its own label (a text record's), else its sub-folder's."""
        if self.classes is None:
            return None
        if given is not None:
            return self.classes.index(str(given))
        return self.classes.index(path.relative_to(self.root).parts[0])

    def samples(self, spec: InputSpec, limit: int | None = None) -> Iterator[tuple[Path, dict[str, Any], int | None]]:
        """Yield (file, sample, label) triples, at most ``limit`` of them, checking that each is finite.

        Floating-point samples become float32, what qcli's FP32 models take; a value that does
        not fit float32 (a float64 of 1e39, say) would be Inf there and is refused like Inf.
        """
        import torch

        count = 0
        for path in self.files:
            for sample in READERS[path.suffix.lower()](path, self.preprocess, spec):
                label = self.label_of(path, sample.pop(LABEL, None))
                for name, tensor in sample.items():
                    if tensor.is_floating_point():
                        sample[name] = tensor = tensor.to(torch.float32)
                        if not bool(torch.isfinite(tensor).all()):
                            raise DataError(
                                f"sample '{self._rel(path)}' input '{name}' holds NaN or Inf values (or values "
                                "beyond float32's range); remove or fix the file",
                                path=path,
                            )
                yield path, sample, label
                count += 1
                if limit is not None and count >= limit:
                    return

    def batches(self, spec: InputSpec, batch_size: int = 32, limit: int | None = None) -> Iterator[Batch]:
        """Stack samples into batches; every sample must match the first one's names and shapes.

        For sequence models (``spec.sequence``) samples may differ in length (their first
        dimension): samples are grouped by length, so each batch has one length.
        """
        import torch

        if batch_size <= 0:
            raise DataError(f"batch size must be positive, not {batch_size}")
        first: dict[str, tuple[tuple[int, ...], Any]] | None = None
        groups: dict[Any, list[tuple[Path, dict[str, Any], int | None]]] = {}  # one per sequence length

        def flush(pending: list[tuple[Path, dict[str, Any], int | None]]) -> Batch:
            inputs = {name: torch.stack([s[name] for _, s, _ in pending]) for name in pending[0][1]}
            labels = None
            if self.labeled:
                labels = torch.tensor([label for _, _, label in pending], dtype=torch.int64)
            return Batch(inputs, labels, tuple(self._rel(p) for p, _, _ in pending))

        for path, sample, label in self.samples(spec, limit):
            layout = {name: (tuple(t.shape), t.dtype) for name, t in sample.items()}
            if first is None:
                first = layout
            elif layout != first and not (spec.sequence and _same_but_length(layout, first)):
                raise DataError(
                    f"sample '{self._rel(path)}' has {_describe(layout)} but the first sample had "
                    f"{_describe(first)}; make all samples the same size and type (for images set resize "
                    "and center_crop in the config)",
                    path=path,
                )
            key = tuple(sorted((name, shape) for name, (shape, _) in layout.items()))
            pending = groups.setdefault(key, [])
            pending.append((path, sample, label))
            if len(pending) == batch_size:
                yield flush(pending)
                del groups[key]
        for pending in groups.values():
            yield flush(pending)

    def manifest(self, used: Iterable[str]) -> dict[str, Any]:
        """Name and SHA-256 of each file used, in order: what a result was computed from."""
        unique = list(dict.fromkeys(used))
        return {
            "root": self.root.name,
            "count": len(unique),
            "files": [{"path": rel, "sha256": sha256_file(self.root / rel)} for rel in unique],
        }

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


def _same_but_length(a: dict[str, tuple[tuple[int, ...], Any]], b: dict[str, tuple[tuple[int, ...], Any]]) -> bool:
    """Same input names, dtypes and ranks, and shapes that differ only in the first dimension."""
    if a.keys() != b.keys():
        return False
    return all(a[k][1] == b[k][1] and len(a[k][0]) == len(b[k][0]) >= 1 and a[k][0][1:] == b[k][0][1:] for k in a)


def _describe(layout: dict[str, tuple[tuple[int, ...], Any]]) -> str:
    return ", ".join(f"{n} {list(shape)} {str(dtype).replace('torch.', '')}" for n, (shape, dtype) in layout.items())


@reader(*IMAGE_EXTS)
def read_image(path: Path, pre: PreprocessConfig, spec: InputSpec) -> Iterator[dict[str, Any]]:
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            opened.load()
            mode = _image_mode(pre, spec, opened.mode)
            img = opened.convert(mode)
            if pre.resize:
                w, h = img.size
                scale = pre.resize / min(w, h)
                method = getattr(Image.Resampling, pre.interpolation.upper())
                img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), method)
            if pre.center_crop:
                w, h = img.size
                c = pre.center_crop
                if c > w or c > h:
                    raise DataError(
                        f"image '{path}' is {w}x{h}, smaller than center_crop {c}; set resize in the config", path=path
                    )
                left, top = (w - c) // 2, (h - c) // 2
                img = img.crop((left, top, left + c, top + c))
            array = np.asarray(img, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"image '{path}' cannot be decoded ({exc}); remove or replace the file", path=path) from None
    tensor = torch.from_numpy(array.copy())
    tensor = tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()
    channels = tensor.shape[0]
    mean = torch.tensor(_per_channel(pre.mean, channels, "mean"), dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(_per_channel(pre.std, channels, "std"), dtype=torch.float32).view(-1, 1, 1)
    yield {spec.single: (tensor - mean) / std}


def _image_mode(pre: PreprocessConfig, spec: InputSpec, mode: str) -> str:
    if pre.channels == "grayscale":
        return "L"
    if pre.channels == "rgb":
        return "RGB"
    if spec.channels is not None:
        return "L" if spec.channels == 1 else "RGB"
    return "L" if mode in ("L", "I", "I;16", "1", "F") else "RGB"


def _per_channel(values: tuple[float, ...], channels: int, key: str) -> list[float]:
    if len(values) == channels:
        return list(values)
    if len(values) == 1:
        return list(values) * channels
    raise DataError(f"preprocess.{key} has {len(values)} values but images have {channels} channels")


@reader(*TEXT_EXTS)
def read_text(path: Path, pre: PreprocessConfig, spec: InputSpec) -> Iterator[dict[str, Any]]:
    from qcli.text import tokenize

    yield from tokenize(path, spec.names, pre.tokenizer, pre.max_length, pre.lengths)


@reader(".pt", ".pth")
def read_torch(path: Path, pre: PreprocessConfig, spec: InputSpec) -> Iterator[dict[str, Any]]:
    import pickle
    import warnings

    import torch

    try:
        with open(path, "rb") as f, warnings.catch_warnings():  # torch warns about odd pickle protocols
            warnings.simplefilter("ignore")
            obj = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DataError(
            f"sample '{path}' holds Python objects; qcli reads only tensors (weights_only=True)", path=path
        ) from None
    except Exception as exc:
        raise DataError(f"sample '{path}' cannot be read as a torch.save file ({_short(exc)})", path=path) from None
    yield from _split(_as_named(obj, path, spec), path, spec)


@reader(".npy")
def read_npy(path: Path, pre: PreprocessConfig, spec: InputSpec) -> Iterator[dict[str, Any]]:
    import numpy as np

    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"sample '{path}' is not a valid .npy file ({_short(exc)})", path=path) from None
    yield from _split(_as_named(array, path, spec), path, spec)


@reader(".npz")
def read_npz(path: Path, pre: PreprocessConfig, spec: InputSpec) -> Iterator[dict[str, Any]]:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as archive:
            named = {k: archive[k] for k in archive.files}
    except Exception as exc:
        raise DataError(f"sample '{path}' is not a valid .npz file ({_short(exc)})", path=path) from None
    yield from _split(_as_named(named, path, spec), path, spec)


@reader(".safetensors")
def read_safetensors(path: Path, pre: PreprocessConfig, spec: InputSpec) -> Iterator[dict[str, Any]]:
    from safetensors.torch import load_file

    try:
        named = load_file(str(path))
    except Exception as exc:
        raise DataError(f"sample '{path}' is not a valid safetensors file ({_short(exc)})", path=path) from None
    yield from _split(_as_named(named, path, spec), path, spec)


def _as_named(obj: Any, path: Path, spec: InputSpec) -> dict[str, Any]:
    """One tensor feeds the first input; a mapping feeds inputs by name."""
    import numpy as np
    import torch

    def to_tensor(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            if value.dtype == object or not np.issubdtype(value.dtype, np.number) and value.dtype != np.bool_:
                raise DataError(f"sample '{path}' holds a non-numeric array ({value.dtype})", path=path)
            return torch.from_numpy(np.ascontiguousarray(value))
        if isinstance(value, torch.Tensor):
            return value
        raise DataError(f"sample '{path}' holds {type(value).__name__}, not a tensor", path=path)

    if isinstance(obj, dict):
        named = {str(k): to_tensor(v) for k, v in obj.items()}
        unknown = sorted(set(named) - set(spec.names))
        if len(spec.names) == 1 and len(named) == 1:
            return {spec.single: next(iter(named.values()))}
        if unknown:
            raise DataError(
                f"sample '{path}' has tensors {', '.join(unknown)} that are not model inputs "
                f"(the model takes {', '.join(spec.names)})",
                path=path,
            )
        return named
    return {spec.single: to_tensor(obj)}


def _split(named: dict[str, Any], path: Path, spec: InputSpec) -> Iterator[dict[str, Any]]:
    """Yield single samples: a tensor one rank above the model's input (without batch) is a batch.

    When the model's input rank is unknown, a tensor of rank 2 or more is read as a batch.
    """
    rank_of = dict(zip(spec.names, spec.ranks, strict=True))
    batched = []
    for name, tensor in named.items():
        rank = rank_of.get(name)
        batched.append(tensor.ndim == rank if rank is not None else tensor.ndim >= 2)
    if not any(batched):
        yield named
        return
    if not all(batched):
        raise DataError(f"sample '{path}': some tensors have a batch dimension and some do not", path=path)
    sizes = {t.shape[0] for t in named.values()}
    if len(sizes) != 1:
        raise DataError(f"sample '{path}': tensors have different batch sizes {sorted(sizes)}", path=path)
    for i in range(sizes.pop()):
        yield {name: t[i] for name, t in named.items()}


def _short(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def infer_input_spec(module: Any) -> InputSpec:
    """Input names from ``forward``'s signature; rank and channels from the first convolution.

    Works for plain modules, TorchScript modules and the modules of exported programs. Without a
    convolution the rank stays unknown (``None``) and tensor files of rank >= 2 count as batches.
    """
    import inspect

    import torch

    names: list[str] = []
    schema = getattr(getattr(module, "forward", None), "schema", None)
    if schema is not None:  # TorchScript
        names = [a.name for a in schema.arguments[1:]]
    else:
        try:
            params = inspect.signature(module.forward).parameters.values()
        except (TypeError, ValueError):
            params = []  # type: ignore[assignment]
        names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not names:
        names = ["input"]
    rank, channels = None, None
    for sub in module.modules():
        weight = getattr(sub, "weight", None)
        kind = getattr(sub, "original_name", type(sub).__name__)
        if isinstance(weight, torch.Tensor) and kind in ("Conv1d", "Conv2d", "Conv3d"):
            rank = weight.ndim
            channels = int(getattr(sub, "in_channels", weight.shape[1]))
            break
        if isinstance(weight, torch.Tensor) and kind in ("Linear", "Embedding"):
            break
    ranks = tuple([rank] + [None] * (len(names) - 1))
    return InputSpec(tuple(names), ranks, channels)


PAIRS_FILE = "pairs.csv"


def read_pairs(folder: SampleFolder) -> list[tuple[str, str, float]] | None:
    """The scored pairs of an embedding evaluation folder, or ``None`` when it has no ``pairs.csv``.

    ``pairs.csv`` has the header ``a,b,score``; ``a`` and ``b`` are sample files of the folder
    (relative paths), each holding one sample; ``score`` is a human similarity judgement (any
    scale: only its ranking is used).
    """
    import csv

    path = folder.root / PAIRS_FILE
    if not path.is_file():
        return None
    known = {folder._rel(p) for p in folder.files}
    pairs = []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = csv.DictReader(f)
            if rows.fieldnames is None or not {"a", "b", "score"} <= set(rows.fieldnames):
                raise DataError(f"'{path}' must start with the header a,b,score", path=path)
            for line, row in enumerate(rows, start=2):
                a, b, score = (row.get("a") or "").strip(), (row.get("b") or "").strip(), row.get("score")
                for name in (a, b):
                    if name not in known:
                        raise DataError(f"'{path}' line {line}: '{name}' is not a sample file of the folder", path=path)
                try:
                    value = float(score or "")
                except ValueError:
                    raise DataError(f"'{path}' line {line}: score '{score}' is not a number", path=path) from None
                if value != value or value in (float("inf"), float("-inf")):
                    raise DataError(f"'{path}' line {line}: score '{score}' is not a finite number", path=path)
                pairs.append((a, b, value))
    except UnicodeDecodeError:
        raise DataError(f"'{path}' is not UTF-8 text", path=path) from None
    if len(pairs) < 2:
        raise DataError(f"'{path}' needs at least two scored pairs for a rank correlation", path=path)
    return pairs


TARGETS_FILE = "targets.csv"


def read_targets(folder: SampleFolder) -> dict[str, list[float]] | None:
    """Regression targets of an evaluation folder, or ``None`` when it has no ``targets.csv``.

    ``targets.csv`` has a header whose first column is ``file`` and whose other columns are the
    target values of that sample file (one sample per file), in the order of the chosen output's
    values: ``file,target`` for one number per sample, ``file,x,y,w,h`` for four.
    """
    import csv

    path = folder.root / TARGETS_FILE
    if not path.is_file():
        return None
    known = {folder._rel(p) for p in folder.files}
    targets: dict[str, list[float]] = {}
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = csv.reader(f)
            header = next(rows, None)
            if not header or header[0].strip() != "file" or len(header) < 2:
                raise DataError(f"'{path}' must start with the header file,<target>[,<target>...]", path=path)
            for line, row in enumerate(rows, start=2):
                if not row:
                    continue
                name = row[0].strip()
                if name not in known:
                    raise DataError(f"'{path}' line {line}: '{name}' is not a sample file of the folder", path=path)
                if len(row) != len(header):
                    raise DataError(
                        f"'{path}' line {line}: {len(row)} columns, the header has {len(header)}", path=path
                    )
                try:
                    values = [float(v) for v in row[1:]]
                except ValueError:
                    raise DataError(f"'{path}' line {line}: a target is not a number", path=path) from None
                if any(v != v or v in (float("inf"), float("-inf")) for v in values):
                    raise DataError(f"'{path}' line {line}: targets must be finite numbers", path=path)
                targets[name] = values
    except UnicodeDecodeError:
        raise DataError(f"'{path}' is not UTF-8 text", path=path) from None
    if not targets:
        raise DataError(f"'{path}' holds no targets", path=path)
    return targets


def example_from_shapes(loaded: Any, spec: InputSpec, shapes: tuple[Any, ...]) -> tuple[Any, ...]:
    """Example inputs (two rows, as export needs) from ``--input-shape`` (``qcli.options.InputShape``),
    or from the shapes the model file records (an exported program's inputs); see ``filled``."""
    import torch

    from qcli import engine
    from qcli.errors import OptionError

    if shapes:
        named = [s for s in shapes if s.name is not None]
        if named and len(named) != len(shapes):
            raise OptionError("{input_shape} gives names for some inputs and not others; name all or none")
        if named:
            unknown = [s.name for s in shapes if s.name not in spec.names]
            if unknown:
                raise OptionError(
                    f"{{input_shape}} names '{unknown[0]}', which is not an input of the model "
                    f"(it takes {', '.join(spec.names)})"
                )
            by_name = {s.name: s for s in shapes}
            ordered = [by_name[n] for n in spec.names if n in by_name]
            if [s.name for s in ordered] != list(spec.names[: len(ordered)]):
                raise OptionError(
                    f"{{input_shape}} must give the model's inputs in order from the first ({', '.join(spec.names)})"
                )
        else:
            ordered = list(shapes)
            if len(ordered) > len(spec.names):
                raise OptionError(
                    f"{{input_shape}} gives {len(ordered)} inputs but the model takes {len(spec.names)} ({', '.join(spec.names)})"
                )
        rank = spec.ranks[0]
        if rank is not None and len(ordered[0].shape) != rank:
            raise OptionError(
                f"{{input_shape}} {'x'.join(map(str, ordered[0].shape))} has {len(ordered[0].shape)} dimensions but the "
                f"model's first convolution takes {rank} (batch first), e.g. 1x{spec.channels or 3}x224x224"
            )
        return engine.first_row_repeated(filled([(list(s.shape), getattr(torch, s.dtype)) for s in ordered]), 2)
    recorded = recorded_example(loaded.module)
    if recorded is None:
        raise OptionError(
            "the model file does not record its input shapes: give them with {input_shape} "
            "(e.g. input_ids:1x128:int64,attention_mask:1x128:int64), or samples with --calib-dir"
        )
    return engine.first_row_repeated(recorded, 2)


def filled(shapes: list[tuple[list[int], Any]]) -> tuple[Any, ...]:
    """A tensor per (shape, dtype): floats seeded normal values, integers and booleans ones (a
    valid token id and a full attention mask)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    return tuple(
        torch.randn(dims, generator=gen).to(dtype) if dtype.is_floating_point else torch.ones(dims, dtype=dtype)
        for dims, dtype in shapes
    )


def recorded_example(module: Any) -> tuple[Any, ...] | None:
    """Inputs (``filled``) of the shapes an exported program's graph records; None when it records
    none."""
    import torch

    shapes: list[tuple[list[int], Any]] = []
    # a TorchScript file keeps no input sizes once saved (a traced graph's are erased on load)
    if isinstance(module, torch.fx.GraphModule):
        for node in module.graph.nodes:
            if node.op != "placeholder":
                continue
            val = node.meta.get("val")
            if not isinstance(val, torch.Tensor):
                return None
            dims = []
            for d in val.shape:
                try:
                    dims.append(int(d))
                except Exception:  # a symbolic dimension: its hint is the size export saw
                    hint = getattr(getattr(d, "node", None), "hint", None)
                    if hint is None:
                        return None
                    dims.append(int(hint))
            shapes.append((dims, val.dtype))
    return filled(shapes) if shapes else None
