"""Hugging Face model folders as MODEL: ``config.json`` plus ``model.safetensors`` (or shards with
an index), as ``save_pretrained`` writes them.

The architecture is built by ``transformers`` (the optional extra ``qcli[hf]``), offline: nothing
is ever downloaded (``local_files_only``, ``HF_HUB_OFFLINE=1``). A config that names its own code
(``auto_map``: ``trust_remote_code`` models) would run that code; it is refused unless the user
passes ``--trust-model``. The class is the config's own architecture (``architectures[0]``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from qcli.errors import ModelLoadError, UntrustedModel

CONFIG = "config.json"
# --task: the head to build where a config allows several (None: the config's own architecture)
TASKS = {
    "feature-extraction": "AutoModel",
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "masked-lm": "AutoModelForMaskedLM",
    "causal-lm": "AutoModelForCausalLM",
    "image-classification": "AutoModelForImageClassification",
}
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin")


def is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG).is_file()


def weight_files(folder: Path) -> list[Path]:
    return sorted({p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern) if p.is_file()})


def folder_digest(folder: Path) -> tuple[str, int]:
    """SHA-256 over the config and weight files (names and contents, in name order), and the
    weights' total size: what identifies the model the folder holds."""
    digest = hashlib.sha256()
    size = 0
    for path in [folder / CONFIG, *weight_files(folder)]:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        if path.name != CONFIG:
            size += path.stat().st_size
    return digest.hexdigest(), size


def load_folder(folder: Path, trust_model: bool = False, task: str | None = None) -> Any:
    """The model a ``save_pretrained`` folder holds, built by ``transformers`` in eval mode, with
    the head of ``task`` (``TASKS``) or, by default, the config's own architecture."""
    try:
        config_data = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"model folder '{folder}': config.json cannot be read ({exc})", path=folder) from None
    if not isinstance(config_data, dict):
        raise ModelLoadError(f"model folder '{folder}': config.json is not a JSON object", path=folder)
    if not weight_files(folder):
        raise ModelLoadError(
            f"model folder '{folder}' has config.json but no weights (model.safetensors, shards with an index, "
            "or pytorch_model.bin)",
            path=folder,
        )
    remote = bool(config_data.get("auto_map"))
    if remote and not trust_model:
        raise UntrustedModel(
            f"model folder '{folder}' names its own code (auto_map in config.json: a trust_remote_code model); "
            "loading it runs that code: pass {trust_model} if you trust the folder"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the network, whatever is asked
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise ModelLoadError(
            f"'{folder}' is a Hugging Face model folder; qcli reads those with transformers: pip install 'qcli[hf]'",
            path=folder,
        ) from None
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars: stderr is qcli's
    transformers.utils.logging.set_verbosity_error()
    architectures = config_data.get("architectures") or []
    name = architectures[0] if architectures else None
    try:
        if task is not None:
            model_class: Any = getattr(transformers, TASKS[task])
        elif remote:
            model_class = transformers.AutoModel
        elif name and hasattr(transformers, name):
            model_class = getattr(transformers, name)
        else:
            model_class = transformers.AutoModel
        model = model_class.from_pretrained(str(folder), local_files_only=True, trust_remote_code=remote)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(
            f"model folder '{folder}' cannot be built by transformers {transformers.__version__} "
            f"({type(exc).__name__}: {first})",
            path=folder,
        ) from exc
    if getattr(model.config, "use_cache", None):
        model.config.use_cache = False  # a key/value cache is state, not an output to quantize
    plain_outputs(model)
    return model.eval()


# forward parameters that are not inputs a sample gives: caches, flags, training targets
NOT_INPUTS = frozenset({
    "past_key_values", "past_key_value", "cache", "use_cache", "cache_position", "output_attentions",
    "output_hidden_states", "output_router_logits", "return_dict", "return_loss", "labels", "head_mask",
    "inputs_embeds", "decoder_inputs_embeds", "decoder_head_mask", "cross_attn_head_mask", "logits_to_keep",
    "interpolate_pos_encoding", "encoder_hidden_states", "encoder_attention_mask", "encoder_outputs",
})  # fmt: skip


def plain_outputs(model: Any) -> None:
    """Make ``model`` take its real inputs in order and return a plain dict where ``transformers``
    returns a ``ModelOutput``.

    An exported program records the type of its outputs; one that returns a ``ModelOutput``
    cannot be loaded by ``torch.export.load`` in a process that has not imported
    ``transformers`` ("... in pytree is not registered"), so the artifact would not run with plain
    torch. The names of the outputs stay. Parameters that no sample gives (``NOT_INPUTS``: a
    cache, flags, labels) are dropped from the positional signature qcli reads the input names
    from: GPT-2's ``forward(input_ids, cache, attention_mask, ...)`` takes ``input_ids,
    attention_mask`` in that order. Only the instance's ``forward`` changes.
    """
    import functools
    import inspect

    original = model.forward
    signature = inspect.signature(original)
    kept = [p for name, p in signature.parameters.items() if name not in NOT_INPUTS]
    names = [p.name for p in kept if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]

    @functools.wraps(original)
    def forward(*args: Any, **kwargs: Any) -> Any:
        out = original(**dict(zip(names, args, strict=False)), **kwargs)
        return {k: v for k, v in out.items()} if hasattr(out, "to_tuple") and hasattr(out, "items") else out

    forward.__signature__ = signature.replace(parameters=kept)  # type: ignore[attr-defined]
    model.forward = forward


PREPROCESSOR = "preprocessor_config.json"
RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL's codes, as image processors store them


def preprocess_of(folder: Path) -> Any:
    """The ``[preprocess]`` an image model folder's ``preprocessor_config.json`` describes, or None.

    Mean, std, resampling and sizes are taken over; pixels are scaled to [0, 1] as qcli always
    does. A fixed ``size`` of height x width becomes a resize of the shorter side plus a centre
    crop of that size (exact for square inputs, what image classifiers take).
    """
    from qcli.config import PreprocessConfig

    path = folder / PREPROCESSOR
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"model folder '{folder}': {PREPROCESSOR} cannot be read ({exc})", path=folder) from None
    if not isinstance(data, dict):
        return None

    def edge(value: Any) -> int | None:
        if isinstance(value, int):
            return value
        if isinstance(value, dict):
            found = value.get("shortest_edge") or value.get("height")
            return int(found) if found else None
        return None

    resize = edge(data.get("size")) if data.get("do_resize", True) else None
    crop = edge(data.get("crop_size")) if data.get("do_center_crop") else None
    size = data.get("size")
    if crop is None and isinstance(size, dict) and "height" in size and resize:
        crop = resize  # a fixed square size: resize the shorter side, then crop
    values: dict[str, Any] = {"channels": "rgb", "resize": resize, "center_crop": crop}
    resample = data.get("resample")
    values["interpolation"] = RESAMPLE.get(resample, "bilinear") if isinstance(resample, int) else "bilinear"
    if data.get("do_normalize", True) and data.get("image_mean") and data.get("image_std"):
        values["mean"], values["std"] = tuple(data["image_mean"]), tuple(data["image_std"])
    return PreprocessConfig(**values)
