"""Property-based tests: whatever bytes or values a user's files hold, qcli raises only its own
errors (which the CLI prints as one line), never a crash of its own or of a library.

The number of examples comes from the Hypothesis profile (tests/conftest.py): ``default`` in
``make test``; ``QCLI_FUZZ_EXAMPLES=N`` raises it.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qcli import demo
from qcli.cli.app import recipe_defaults_for
from qcli.config import PreprocessConfig, Recipe, load_recipe
from qcli.data import InputSpec, SampleFolder
from qcli.errors import QcliError

SPEC = InputSpec(("x",), (4,), 1)
PNG = sorted(demo.CALIB_DIR.glob("*.png"))[0].read_bytes()
FUZZ = settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)


def read_folder(files: dict[str, bytes], pre: PreprocessConfig | None = None) -> list:
    """Write ``files`` to a fresh folder and read every batch the way calibrate does."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        try:
            return list(SampleFolder.open(Path(tmp), pre or PreprocessConfig()).batches(SPEC, batch_size=4))
        except QcliError:
            return []


# --- config files ----------------------------------------------------------------------------

scalars = st.one_of(
    st.integers(-(2**40), 2**40), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.booleans()
)
values = st.one_of(scalars, st.lists(scalars, max_size=4))
SECTIONS = ["preprocess", "calibrate", "convert", "bench", "inspect", "other"]
KEYS = ["limit", "seed", "batch_size", "mode", "form", "channels", "resize", "center_crop", "mean", "std", "size", "x"]


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return (
            "nan"
            if value != value
            else ("inf" if value == float("inf") else "-inf" if value == float("-inf") else repr(value))
        )
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


def check_recipe(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipe.toml"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        try:
            recipe = load_recipe(path)
        except QcliError:
            return
        assert isinstance(recipe, Recipe)
        for command in ("calibrate", "convert", "bench"):
            with contextlib.suppress(QcliError):
                recipe_defaults_for(command, recipe)


@FUZZ
@given(
    st.dictionaries(st.sampled_from(SECTIONS), st.dictionaries(st.sampled_from(KEYS), values, max_size=5), max_size=4)
)
def test_structured_recipes_load_or_fail_cleanly(data):
    text = "".join(
        f"[{section}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in body.items())
        for section, body in data.items()
    )
    check_recipe(text)


@FUZZ
@given(st.text(max_size=200))
def test_arbitrary_recipe_text(text):
    check_recipe(text)


# --- tensor files ----------------------------------------------------------------------------

TENSOR_SUFFIXES = [".npy", ".npz", ".pt", ".safetensors"]


@FUZZ
@given(st.sampled_from(TENSOR_SUFFIXES), st.binary(max_size=512))
def test_random_bytes_as_tensor_files(suffix, data):
    read_folder({"sample" + suffix: data})


def serialize(suffix: str, arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    if suffix == ".npy":
        np.save(buf, next(iter(arrays.values())), allow_pickle=False)
    elif suffix == ".npz":
        np.savez(buf, **arrays)
    elif suffix == ".pt":
        torch.save({k: torch.from_numpy(v.copy()) for k, v in arrays.items()}, buf)
    else:
        from safetensors.numpy import save

        return save(arrays)
    return buf.getvalue()


dtypes = st.sampled_from([np.float32, np.float64, np.float16, np.int64, np.int32, np.uint8, np.int8, np.bool_])
arrays = dtypes.flatmap(lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=5, max_side=5)))


@FUZZ
@given(
    st.sampled_from(TENSOR_SUFFIXES),
    st.dictionaries(st.sampled_from(["x", "input_ids", "y"]), arrays, min_size=1, max_size=3),
    st.integers(0, 64),
)
def test_valid_files_with_any_content(suffix, named, cut):
    data = serialize(suffix, named)
    for batch in read_folder({"sample" + suffix: data}):
        assert set(batch.inputs) == {"x"}
        assert torch.isfinite(batch.inputs["x"].float()).all()
    read_folder({"sample" + suffix: data[: max(0, len(data) - cut)]})  # truncated


# --- images ----------------------------------------------------------------------------------

IMAGE_SUFFIXES = [".png", ".jpg", ".bmp", ".webp"]


@FUZZ
@given(st.sampled_from(IMAGE_SUFFIXES), st.binary(max_size=512))
def test_random_bytes_as_images(suffix, data):
    read_folder({"image" + suffix: data})


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(PNG) - 1), st.integers(0, 255)), max_size=8), st.integers(0, len(PNG)))
def test_damaged_png(edits, keep):
    data = bytearray(PNG)
    for index, byte in edits:
        data[index] = byte
    pre = PreprocessConfig(channels="grayscale", mean=(0.1307,), std=(0.3081,))
    lowest, highest = (0 - 0.1307) / 0.3081, (1 - 0.1307) / 0.3081  # black and white, normalised
    for batch in read_folder({"digit.png": bytes(data[: len(PNG) - keep] if keep else data)}, pre):
        x = batch.inputs["x"]  # whatever survives decoding is one grayscale image of real pixels
        assert x.dtype == torch.float32 and x.shape[:2] == (1, 1) and x.ndim == 4 and min(x.shape[2:]) >= 1
        assert torch.isfinite(x).all() and lowest - 1e-5 <= float(x.min()) <= float(x.max()) <= highest + 1e-5


@FUZZ
@given(
    st.integers(1, 40),
    st.integers(1, 40),
    st.sampled_from(["L", "RGB", "RGBA", "P", "1", "LA", "I;16", "CMYK"]),
    st.one_of(st.none(), st.integers(1, 48)),
    st.one_of(st.none(), st.integers(1, 48)),
    st.sampled_from(["auto", "grayscale", "rgb"]),
)
def test_any_image_mode_and_size(width, height, mode, resize, crop, channels):
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (width, height)).save(buf, format="PNG" if mode != "CMYK" else "JPEG")
    pre = PreprocessConfig(channels=channels, resize=resize, center_crop=crop)
    read_folder({"image.png" if mode != "CMYK" else "image.jpg": buf.getvalue()}, pre)


# --- models, statistics, artifacts and baselines ---------------------------------------------

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False), st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)


def in_file(name: str, data: bytes, read) -> None:
    """Write ``data`` as ``name`` in a fresh folder and read it; only qcli's own errors may come out."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        with contextlib.suppress(QcliError):
            read(path)


WEIGHTS = demo.WEIGHTS.read_bytes()


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 255)), max_size=6), st.integers(0, 64))
def test_damaged_model_files(edits, cut):
    """A safetensors state dict with bytes changed in its header or data, or cut short."""
    from qcli.load import ArchSpec, load_model

    data = bytearray(WEIGHTS)
    for index, byte in edits:
        data[index] = byte
    in_file("model.safetensors", bytes(data[: len(data) - cut]), lambda p: load_model(p, ArchSpec.parse(demo.ARCH)))


@FUZZ
@given(
    st.dictionaries(st.sampled_from(["format", "format_version", "qcli", "x"]), st.text(max_size=40), max_size=4),
    st.dictionaries(st.sampled_from(["example_shapes", "example_dtypes", "observers", "mode"]), json_values),
)
def test_statistics_with_any_metadata(header, meta):  # fmt: skip
    from safetensors.torch import save

    from qcli.calibrate import load_stats

    header = {"format": "qcli-stats", "format_version": "1", "qcli": json.dumps(meta), **header}
    in_file("stats.safetensors", save({"x": torch.zeros(2)}, metadata=header), load_stats)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["form", "package_models", "inputs", "layers", "source", "config", "mode"]),
        json_values,
        max_size=5,
    )
)
def test_artifacts_with_any_metadata(fields):  # fmt: skip
    import zipfile

    from qcli.artifact import read_metadata
    from qcli.describe import describe_artifact

    meta = {"format": "qcli-int8", "format_version": 1, "form": "program", **fields}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a/archive_format", "pt2")
        z.writestr("a/models/model.json", "{}")
        z.writestr("a/extra/qcli.json", json.dumps(meta))

    def read(path: Path) -> None:
        read_metadata(path)
        describe_artifact(path)  # what `qcli inspect` shows of it

    in_file("a.pt2", buf.getvalue(), read)


BASELINE = {
    "schema_version": 1,
    "command": "bench",
    "model": {"path": "m", "format": "safetensors", "sha256": "0", "size_bytes": 1, "parameters": 1},
    "artifact": {"path": "a", "form": "package", "mode": "static", "size_bytes": 1},
    "fp32_compiled_size_bytes": 1,
    "environment": {"threads": 2, "torch_version": "2.13.0", "torchao_version": None, "qcli_version": "0",
                    "python": "3.11", "cpu_capability": "AVX2", "cpu_features": [], "machine": "x86_64"},
    "latency": [{"batch_size": 1, "runs": 3, "variants": {"int8": {"p50_ms": 1.0, "p90_ms": 1.0, "throughput": 1.0}}}],
    "accuracy": None,
    "gates": {"max_drop": None, "min_speedup": None, "passed": True, "failures": []},
}  # fmt: skip


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(list(BASELINE)), json_values), max_size=3))
def test_baselines_with_any_values(changes):
    from qcli.baseline import load_baseline

    document = {**BASELINE, **dict(changes), "command": "bench", "schema_version": 1}
    in_file("base.json", json.dumps(document).encode(), load_baseline)
