"""Text samples: ``.txt`` (one sample per line), ``.jsonl`` and ``.csv`` (a ``text`` field and,
for evaluation, a ``label``), tokenized with a model folder's tokenizer.

Each text is cut to ``max_length`` tokens and padded to the shortest of a few fixed lengths that
holds it (``padding_lengths``), so a compiled model sees a few shapes rather than one per text; the
settings live in ``[preprocess]`` (``qcli.config.PreprocessConfig``) and are recorded with the
calibration, so ``bench`` tokenizes its texts the same way. Padding needs an ``attention_mask``
input to leave the result unchanged; a model without one gets its texts at their own lengths.

Labels are integers (class indices) or names: names are looked up in the model config's
``label2id`` when it has them all, else sorted like sub-folder names. A folder of ``.txt`` files in
sub-folders is labeled by the sub-folders, like images.
"""

from __future__ import annotations

import csv
import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qcli.errors import DataError

TEXT_EXTS = (".txt", ".jsonl", ".csv")
TABLES = (".jsonl", ".csv")  # the text formats that can carry labels
RESERVED = ("pairs.csv", "targets.csv")  # evaluation folder files that are not samples
LABEL = "\0label"  # key of a record's label inside a sample mapping (never an input name)
DEFAULT_MAX_LENGTH = 128
SHORTEST_PADDING = 16
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model")


def is_sample(path: Path, root: Path) -> bool:
    return not (path.parent == root and path.name in RESERVED)


def longest(max_length: int | None, lengths: tuple[int, ...] | None) -> int:
    """Texts are cut to ``max_length`` tokens; unset, to the longest padding length (or 128)."""
    return max_length or (max(lengths) if lengths else DEFAULT_MAX_LENGTH)


def padding_lengths(max_length: int | None, lengths: tuple[int, ...] | None) -> tuple[int, ...]:
    """The lengths texts are padded to: ``lengths`` if given, else 16, 32, 64, ... below
    ``max_length``, and ``max_length`` itself."""
    if lengths:
        return tuple(sorted(lengths))
    top = longest(max_length, None)
    out, n = {top}, SHORTEST_PADDING
    while n < top:
        out.add(n)
        n *= 2
    return tuple(sorted(out))


def records(path: Path) -> Iterator[tuple[int, str, Any]]:
    """(line number, text, label or None) of each sample in a text file."""
    try:
        with path.open(encoding="utf-8", newline="") as f:
            if path.suffix.lower() == ".txt":
                for line, raw in enumerate(f, start=1):
                    text = raw.rstrip("\r\n")
                    if text.strip():
                        yield line, text, None
            elif path.suffix.lower() == ".jsonl":
                yield from _jsonl(path, f)
            else:
                yield from _csv(path, f)
    except UnicodeDecodeError:
        raise DataError(f"text sample '{path}' is not UTF-8 text", path=path) from None


def _jsonl(path: Path, lines: Any) -> Iterator[tuple[int, str, Any]]:
    for line, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(f"'{path}' line {line} is not JSON ({exc.msg})", path=path) from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise DataError(f"'{path}' line {line}: each line must be an object with a \"text\" string", path=path)
        yield line, row["text"], _label(row.get("label"), path, line)


def _csv(path: Path, lines: Any) -> Iterator[tuple[int, str, Any]]:
    rows = csv.DictReader(lines)
    if rows.fieldnames is None or "text" not in rows.fieldnames:
        raise DataError(f"'{path}' must start with a header naming a 'text' column (and 'label' to score)", path=path)
    for row in rows:
        text = row.get("text")
        if text is None:
            raise DataError(f"'{path}' line {rows.line_num}: the row has no text column", path=path)
        label = row.get("label")
        yield rows.line_num, text, _label(label.strip() if isinstance(label, str) and label.strip() else None, path, 0)


def _label(value: Any, path: Path, line: int) -> Any:
    if value is None or (isinstance(value, str) and value) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    where = f" line {line}" if line else ""
    raise DataError(f"'{path}'{where}: a label must be a class index or name, not {value!r}", path=path)


def labels_of(path: Path) -> list[Any]:
    return [label for _, _, label in records(path)]


def classes_of(labels: list[Any], tokenizer: str | None) -> tuple[str, ...]:
    """Class names in index order: the model config's ``label2id`` when it names every label,
    else 0..N for integer labels, else the names sorted."""
    names = {str(label) for label in labels}
    label2id = _label2id(tokenizer)
    if label2id and names <= set(label2id):
        ordered = sorted(label2id, key=lambda name: label2id[name])
        return tuple(ordered)
    if all(isinstance(label, int) or str(label).isdigit() for label in labels):
        top = max(int(label) for label in labels)
        return tuple(str(i) for i in range(top + 1))
    return tuple(sorted(names))


def _label2id(folder: str | None) -> dict[str, int] | None:
    if folder is None:
        return None
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
        mapping = config.get("label2id")
        if isinstance(mapping, dict) and all(isinstance(v, int) for v in mapping.values()):
            return {str(k): int(v) for k, v in mapping.items()}
    except (OSError, ValueError, AttributeError):
        pass
    return None


def model_max_length(folder: Path) -> int | None:
    """The longest input a model folder declares (its tokenizer's ``model_max_length``, its
    config's ``max_position_embeddings``), read from the JSON files; None when it declares none."""
    found = []
    for name, key in (("tokenizer_config.json", "model_max_length"), ("config.json", "max_position_embeddings")):
        try:
            value = json.loads((folder / name).read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1_000_000:
            found.append(value)
    return min(found) if found else None


def has_tokenizer(folder: Path) -> bool:
    return folder.is_dir() and any((folder / name).is_file() for name in TOKENIZER_FILES)


@functools.lru_cache(maxsize=4)
def load_tokenizer(folder: str) -> Any:
    """The tokenizer ``transformers`` builds from ``folder``, offline."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise DataError(
            "text samples are tokenized with transformers: pip install 'qcli[hf]'", path=Path(folder)
        ) from None
    transformers.utils.logging.set_verbosity_error()
    if not has_tokenizer(Path(folder)):
        raise DataError(
            f"'{folder}' holds no tokenizer files ({', '.join(TOKENIZER_FILES)}); set preprocess.tokenizer "
            "to the folder save_pretrained wrote the tokenizer to",
            path=Path(folder),
        )
    try:
        return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"the tokenizer in '{folder}' cannot be loaded ({type(exc).__name__}: {first})") from None


def tokenize(
    path: Path, names: tuple[str, ...], tokenizer: str | None, max_length: int | None, lengths: tuple[int, ...] | None
) -> Iterator[dict[str, Any]]:
    """One sample per text of ``path``: the tokenizer's outputs the model takes, padded."""
    import torch

    if tokenizer is None:
        raise DataError(
            f"text sample '{path}' needs a tokenizer: pass a model folder that has one, or set "
            "preprocess.tokenizer in the recipe to a folder holding one",
            path=path,
        )
    tok = load_tokenizer(tokenizer)
    limit = longest(max_length, lengths)
    pad_to = padding_lengths(max_length, lengths) if "attention_mask" in names else None
    for _line, text, label in records(path):
        encoded = tok(text, truncation=True, max_length=limit, return_attention_mask=True)
        kept = {k: list(v) for k, v in encoded.items() if k in names}
        if "input_ids" not in kept:
            raise DataError(
                f"text sample '{path}': the model takes {', '.join(names)}, not the tokenizer's input_ids", path=path
            )
        if pad_to is not None:
            length = len(kept["input_ids"])
            target = next(n for n in pad_to if n >= length) if length <= pad_to[-1] else length
            kept = dict(tok.pad(kept, padding="max_length", max_length=target))
        sample: dict[str, Any] = {k: torch.tensor(v, dtype=torch.int64) for k, v in kept.items()}
        if label is not None:
            sample[LABEL] = label
        yield sample
