import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from qcli import demo
from qcli.config import PreprocessConfig
from qcli.data import InputSpec, SampleFolder, infer_input_spec
from qcli.errors import DataError, InputNotFound

SPEC_IMG = InputSpec(("x",), (4,), 1)
SPEC_TOKENS = InputSpec(("input_ids", "attention_mask"), (None, None))


def test_demo_folders_are_real_and_labeled():
    calib = SampleFolder.open(demo.CALIB_DIR)
    evaluation = SampleFolder.open(demo.EVAL_DIR, what="evaluation folder")
    assert 0 < len(calib.files) <= 512 and not calib.labeled
    assert len(evaluation.files) >= 1000
    assert evaluation.classes == tuple(str(d) for d in range(10))


def test_image_preprocessing_matches_hand_computation(tmp_path):
    pixels = np.arange(36, dtype=np.uint8).reshape(6, 6) * 7
    Image.fromarray(pixels, mode="L").save(tmp_path / "a.png")
    pre = PreprocessConfig(channels="grayscale", center_crop=4, mean=(0.5,), std=(0.25,))
    ((_, sample, _),) = SampleFolder.open(tmp_path, pre).samples(SPEC_IMG)
    expected = (torch.from_numpy(pixels[1:5, 1:5].astype(np.float32)) / 255.0 - 0.5) / 0.25
    assert sample["x"].shape == (1, 4, 4)
    torch.testing.assert_close(sample["x"][0], expected)


def test_rgb_resize_then_crop(tmp_path):
    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "r.jpg")
    pre = PreprocessConfig(channels="rgb", resize=10, center_crop=10)
    ((_, sample, _),) = SampleFolder.open(tmp_path, pre).samples(InputSpec(("x",), (4,), 3))
    assert sample["x"].shape == (3, 10, 10)
    assert sample["x"][0].mean() > 0.9 and sample["x"][1].abs().max() < 0.1


def test_order_is_by_path_and_seed_shuffles_reproducibly(tmp_path):
    for name in ("b.npy", "a.npy", "c/d.npy"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        np.save(tmp_path / name, np.zeros(3, dtype=np.float32))
    sorted_names = [p.relative_to(tmp_path).as_posix() for p in SampleFolder.open(tmp_path).files]
    assert sorted_names == ["a.npy", "b.npy", "c/d.npy"]
    one = SampleFolder.open(tmp_path, seed=3).files
    assert one == SampleFolder.open(tmp_path, seed=3).files
    assert sorted(one) == sorted(SampleFolder.open(tmp_path).files)


def test_tensor_files_batches_and_named_inputs(tmp_path):
    ids = torch.arange(12).reshape(3, 4)
    save_file({"input_ids": ids, "attention_mask": torch.ones(3, 4, dtype=torch.int64)}, tmp_path / "a.safetensors")
    np.savez(tmp_path / "b.npz", input_ids=np.arange(4), attention_mask=np.ones(4, dtype=np.int64))
    torch.save(
        {"input_ids": torch.zeros(4, dtype=torch.int64), "attention_mask": torch.ones(4, dtype=torch.int64)},
        tmp_path / "c.pt",
    )
    folder = SampleFolder.open(tmp_path)
    batches = list(folder.batches(SPEC_TOKENS, batch_size=4))
    assert [b.inputs["input_ids"].shape[0] for b in batches] == [4, 1]
    assert batches[0].files == ("a.safetensors", "a.safetensors", "a.safetensors", "b.npz")
    torch.testing.assert_close(batches[0].inputs["input_ids"][:3], ids)


def test_limit_counts_samples_not_files(tmp_path):
    torch.save(torch.randn(10, 1, 4, 4), tmp_path / "batch.pt")
    samples = list(SampleFolder.open(tmp_path).samples(SPEC_IMG, limit=7))
    assert len(samples) == 7 and samples[0][1]["x"].shape == (1, 4, 4)


@pytest.mark.parametrize(
    ("setup", "needle"),
    [
        (lambda d: None, "has no image, tensor or text files"),
        (lambda d: (d / "x.png").write_bytes(b"not a png"), "cannot be decoded"),
        (lambda d: (d / "x.png").write_bytes(b""), "cannot be decoded"),
        (lambda d: np.save(d / "x.npy", np.array([1.0, np.nan], dtype=np.float32)), "NaN or Inf"),
        (
            lambda d: (
                np.save(d / "a.npy", np.zeros((1, 4, 4), np.float32)),
                np.save(d / "b.npy", np.zeros((1, 5, 5), np.float32)),
            ),
            "the first sample had",
        ),
    ],
)
def test_bad_folders_raise_data_errors(tmp_path, setup, needle):
    setup(tmp_path)
    with pytest.raises(DataError) as info:
        list(SampleFolder.open(tmp_path).batches(SPEC_IMG))
    assert needle in str(info.value)


def test_missing_and_wrong_kind_paths(tmp_path):
    with pytest.raises(InputNotFound, match="does not exist"):
        SampleFolder.open(tmp_path / "nope")
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputNotFound, match="is a file"):
        SampleFolder.open(tmp_path / "f")


def test_memory_holds_one_batch(tmp_path):
    """Streaming: the generator has read only the files of the batches taken so far."""
    for i in range(50):
        np.save(tmp_path / f"{i:02d}.npy", np.zeros((1, 2, 2), np.float32))
    read = []
    folder = SampleFolder.open(tmp_path)
    import qcli.data as data

    original = data.READERS[".npy"]
    data.READERS[".npy"] = lambda p, pre, spec: (read.append(p), (yield from original(p, pre, spec)))[1]
    try:
        first = next(folder.batches(SPEC_IMG, batch_size=4))
    finally:
        data.READERS[".npy"] = original
    assert first.inputs["x"].shape[0] == 4 and len(read) <= 5


def test_input_spec_from_models(demo_model):
    spec = infer_input_spec(demo_model.module)
    assert spec.names == ("x",) and spec.ranks == (4,) and spec.channels == 1
