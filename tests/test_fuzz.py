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
    for batch in read_folder({"digit.png": bytes(data[: len(PNG) - keep] if keep else data)}, pre):
        assert batch.inputs["x"].shape[1:] == (1, 28, 28) or batch.inputs["x"].ndim == 4


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
