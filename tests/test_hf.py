"""Hugging Face model folders as MODEL: built offline by transformers from config.json and the
weights save_pretrained wrote; code a folder names is not run without --trust-model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_qcli
from safetensors.torch import save_file
from test_ux import validate

from qcli import metrics

transformers = pytest.importorskip("transformers")  # in requirements.txt: present in `make test`


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A text classifier and an image classifier saved with save_pretrained (tiny configs, seeded
    weights), token and image samples."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    bert = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64, num_labels=3))  # fmt: skip
    bert.save_pretrained(root / "bert")
    vit = transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, num_labels=5))  # fmt: skip
    vit.save_pretrained(root / "vit")
    gen = torch.Generator().manual_seed(0)
    (root / "tokens").mkdir()
    ids = torch.randint(3, 1000, (16, 24), generator=gen)
    save_file({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, str(root / "tokens" / "a.safetensors"))
    (root / "images").mkdir()
    torch.save(torch.randn(16, 3, 32, 32, generator=gen), root / "images" / "a.pt")
    return root


def test_model_folders_quantize_like_model_files(folders, tmp_path):
    from qcli.api import convert_model_file
    from qcli.artifact import load_program_module
    from qcli.options import ConvertOptions

    proc = run_qcli("inspect", folders / "bert", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no progress bars or library noise
    report = json.loads(proc.stdout)
    validate(report)
    assert report["format"] == "hf-folder" and report["quantizable_layers"] == 14
    for name, samples in (("bert", "tokens"), ("vit", "images")):
        out = tmp_path / f"{name}.pt2"
        converted = convert_model_file(folders / name, out, calib_dir=folders / samples,
                                       options=ConvertOptions(form="program"))  # fmt: skip
        assert converted.model.format == "hf-folder" and converted.quantized_layers >= 13
        files = sorted((folders / samples).iterdir())
        data = torch.load(files[0]) if files[0].suffix == ".pt" else None
        with torch.no_grad():
            model = getattr(
                transformers, "BertForSequenceClassification" if name == "bert" else "ViTForImageClassification"
            )
            fp32 = model.from_pretrained(str(folders / name), local_files_only=True).eval()
            if data is None:
                from safetensors.torch import load_file

                tokens = load_file(str(files[0]))
                want = fp32(**tokens).logits
                got = load_program_module(out)(tokens["input_ids"], tokens["attention_mask"])["logits"]
            else:
                want, got = fp32(pixel_values=data).logits, load_program_module(out)(data)["logits"]
        assert float(metrics.cosine_per_sample(want, got).min()) > 0.99


def test_a_folder_naming_its_own_code_needs_trust(folders, tmp_path):
    folder = tmp_path / "remote"
    folder.mkdir()
    config = json.loads((folders / "bert" / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes((folders / "bert" / "model.safetensors").read_bytes())
    (folder / "modeling_evil.py").write_text("open('pwned.txt', 'w').write('x')\n")
    proc = run_qcli("inspect", folder, cwd=tmp_path)
    assert proc.returncode == 1 and not (tmp_path / "pwned.txt").exists()
    assert proc.stderr.strip().splitlines() == [
        f"qcli: error: model folder '{folder}' names its own code (auto_map in config.json: a trust_remote_code "
        "model); loading it runs that code: pass --trust-model if you trust the folder"
    ]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: None, "is a folder without config.json; pass a model file, or a folder written by save_pretrained"),
        (lambda d: (d / "config.json").write_text("{}"), "has config.json but no weights"),
    ],
)
def test_folder_mistakes_are_one_line(tmp_path, make, message):
    folder = tmp_path / "m"
    folder.mkdir()
    make(folder)
    proc = run_qcli("inspect", folder)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_without_transformers_the_extra_is_named(folders, monkeypatch):
    import sys

    from qcli.errors import ModelLoadError
    from qcli.load import load_model

    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    with pytest.raises(ModelLoadError, match=r"qcli reads those with transformers: pip install 'qcli\[hf\]'"):
        load_model(folders / "bert")


def test_an_image_folder_brings_its_own_preprocessing(folders, tmp_path):
    """Without --config, a folder's preprocessor_config.json decides how images are read: a ViT
    processor (224x224, bicubic, mean and std 0.5) gives resize 224, crop 224, bicubic, 0.5/0.5."""
    from qcli.api import folder_recipe
    from qcli.config import PreprocessConfig, Recipe

    processor = transformers.ViTImageProcessor(size={"height": 32, "width": 32}, resample=3, image_mean=[0.5] * 3,
                                               image_std=[0.5] * 3)  # fmt: skip
    folder = tmp_path / "vit"
    folder.mkdir()
    for f in (folders / "vit").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    processor.save_pretrained(folder)
    recipe = folder_recipe(folder, Recipe())
    assert recipe.preprocess == PreprocessConfig(channels="rgb", resize=32, interpolation="bicubic", center_crop=32,
                                                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))  # fmt: skip
    given = Recipe(PreprocessConfig(resize=40), {}, tmp_path / "r.toml")
    assert folder_recipe(folder, given) == given  # a recipe the user gives wins
    assert folder_recipe(folders / "bert", Recipe()) == Recipe()  # no processor config: nothing changes
    # images read through it reach the model's own size
    from PIL import Image

    from qcli.data import InputSpec, SampleFolder

    (tmp_path / "img").mkdir()
    Image.new("RGB", (50, 40), (200, 10, 10)).save(tmp_path / "img" / "a.png")
    _, sample, _ = next(
        SampleFolder.open(tmp_path / "img", recipe.preprocess).samples(InputSpec(("pixel_values",), (4,), 3))
    )
    assert sample["pixel_values"].shape == (3, 32, 32)


def test_task_chooses_the_head_and_is_recorded(folders, tmp_path):
    from qcli.api import convert_model_file
    from qcli.artifact import read_metadata
    from qcli.options import ConvertOptions

    proc = run_qcli("inspect", folders / "bert", "--task", "feature-extraction", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    names = [la["name"] for la in json.loads(proc.stdout)["layers"]]
    assert "classifier" not in names and "pooler.dense" in names  # the bare encoder, without the head
    out = tmp_path / "enc.pt2"
    convert_model_file(folders / "bert", out, calib_dir=folders / "tokens", task="feature-extraction",
                       options=ConvertOptions(form="program"))  # fmt: skip
    assert read_metadata(out)["source"]["task"] == "feature-extraction"  # bench rebuilds this head
    proc = run_qcli("inspect", folders / "bert", "--task", "image-classification")
    assert proc.returncode == 1 and "cannot be built by transformers" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = run_qcli("inspect", folders / "tokens" / "a.safetensors", "--task", "masked-lm")
    assert proc.returncode == 1 and "--task chooses the head of a model folder" in proc.stderr


def test_sharded_weights_load_like_one_file(folders, tmp_path):
    """save_pretrained with a small max_shard_size writes shards and an index: the folder loads
    as the same model, and its SHA-256 covers every shard."""
    from qcli.api import convert_model_file
    from qcli.load import load_model
    from qcli.options import CalibrationOptions, ConvertOptions

    bert = transformers.BertForSequenceClassification.from_pretrained(str(folders / "bert"), local_files_only=True)
    sharded = tmp_path / "sharded"
    bert.save_pretrained(sharded, max_shard_size="200KB")
    shards = sorted(p.name for p in sharded.glob("model-*.safetensors"))
    assert len(shards) >= 2 and (sharded / "model.safetensors.index.json").is_file()
    one, many = load_model(folders / "bert"), load_model(sharded)
    tokens = {"input_ids": torch.randint(3, 1000, (2, 10)), "attention_mask": torch.ones(2, 10, dtype=torch.int64)}
    with torch.no_grad():
        torch.testing.assert_close(many.module(**tokens)["logits"], one.module(**tokens)["logits"])
    report = convert_model_file(sharded, tmp_path / "int8.pt2", calib_dir=folders / "tokens", options=ConvertOptions(
        calibration=CalibrationOptions(limit=8), form="program"))  # fmt: skip
    assert report.quantized_layers == 14 and report.model.sha256 == many.sha256
    before = many.sha256
    last = sharded / shards[-1]
    data = bytearray(last.read_bytes())
    data[-1] ^= 1  # one bit of the last shard's last weight
    last.write_bytes(bytes(data))
    assert load_model(sharded).sha256 != before


def test_a_decoder_folder_takes_its_inputs_past_the_cache_parameter(folders, tmp_path):
    """GPT-2's forward is (input_ids, cache, attention_mask, ...): samples of input_ids and
    attention_mask were refused ("the model takes input_ids, cache, ..."). Parameters no sample
    gives are not inputs; its Conv1D projections are quantized and counted."""
    from qcli.api import convert_model_file
    from qcli.data import infer_input_spec
    from qcli.load import load_model
    from qcli.options import CalibrationOptions, ConvertOptions

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=1000, n_positions=32, n_embd=64, n_layer=2, n_head=4, bos_token_id=0,
                                     eos_token_id=0)  # fmt: skip
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    loaded = load_model(tmp_path / "gpt2")
    assert infer_input_spec(loaded.module).names[:2] == ("input_ids", "attention_mask")
    report = convert_model_file(tmp_path / "gpt2", tmp_path / "int8.pt2", calib_dir=folders / "tokens",
                                options=ConvertOptions(calibration=CalibrationOptions(limit=8), form="program"))  # fmt: skip
    assert report.quantized_layers == 2 * 4 + 1  # c_attn, attn c_proj, c_fc, mlp c_proj per block; lm_head


def test_same_padding_and_conv_subclasses_are_quantized(folders, tmp_path):
    """transformers' EfficientNet: padding="same" convolutions (an aten.conv2d overload torchao's
    quantizer refused with an internal ValueError) and depthwise convolutions of an nn.Conv2d
    subclass (left FP32: the quantizer matches the class itself) are all INT8."""
    from qcli.api import convert_model_file
    from qcli.artifact import load_program_module
    from qcli.options import CalibrationOptions, ConvertOptions

    torch.manual_seed(0)
    config = transformers.EfficientNetConfig(num_channels=3, image_size=32, num_labels=4, width_coefficient=0.5,
                                             depth_coefficient=0.5, hidden_dim=640)  # fmt: skip
    model = transformers.EfficientNetForImageClassification(config).eval()
    for module in model.modules():  # torch's initialisation: transformers' gives all-zero logits here
        if module is not model and callable(getattr(module, "reset_parameters", None)):
            module.reset_parameters()
    model.save_pretrained(tmp_path / "effnet")
    report = convert_model_file(tmp_path / "effnet", tmp_path / "int8.pt2", calib_dir=folders / "images",
                                options=ConvertOptions(calibration=CalibrationOptions(limit=16), form="program"))  # fmt: skip
    assert report.quantized_layers == len(report.layers) == 52
    program = load_program_module(tmp_path / "int8.pt2")
    # its 640x640 average pooling over a 1x1 map is a mean (Inductor's kernel walked the window)
    assert not [n for n in program.graph.nodes if n.target == torch.ops.aten.avg_pool2d.default]
    x = torch.load(next((folders / "images").iterdir()))[:4]
    with torch.no_grad():
        want, got = model(pixel_values=x).logits, program(x)["logits"]
    assert float(metrics.cosine_per_sample(want, got).min()) > 0.99


def test_average_pooling_over_the_whole_input_becomes_a_mean():
    """A window at least as large as its input, without padding, with one output position: the
    mean over height and width, exactly; other poolings are left alone."""
    from torch import nn

    from qcli import graph

    class Pools(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.whole = nn.AvgPool2d(640, ceil_mode=True)  # EfficientNet's: 640 > 3
            self.exact = nn.AvgPool2d((3, 5))  # the input's size: one window
            self.tiles = nn.AvgPool2d(2, ceil_mode=True)  # 2x3 outputs
            self.padded = nn.AvgPool2d(5, padding=2, count_include_pad=True)  # divisor counts the padding

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return self.whole(x), self.exact(x), self.tiles(x), self.padded(x)

    x = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(0))
    module = torch.export.export(Pools(), (x,)).module()
    assert graph.whole_input_pooling(module) == 2
    pools = [n for n in module.graph.nodes if n.target == torch.ops.aten.avg_pool2d.default]
    assert len(pools) == 2
    for want, got in zip(Pools()(x), module(x), strict=True):
        assert want.shape == got.shape
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
