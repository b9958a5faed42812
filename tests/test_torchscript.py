"""TorchScript input is quantized for real (the same INT8 model as the state dict), and archives
that cannot be converted are refused with the reason, before any artifact exists."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import MNIST_RECIPE, run_qcli
from safetensors.torch import load_file

from qcli import demo, metrics
from qcli.api import convert_model_file
from qcli.artifact import load_artifact
from qcli.config import load_recipe
from qcli.demo.model import DigitNet
from qcli.describe import describe
from qcli.errors import UnsupportedModel
from qcli.load import ArchSpec
from qcli.options import CalibrationOptions, ConvertOptions


def convert(model, out, arch=None):
    return convert_model_file(
        model,
        out,
        calib_dir=demo.CALIB_DIR,
        arch=arch,
        recipe=load_recipe(MNIST_RECIPE),
        options=ConvertOptions(calibration=CalibrationOptions(limit=128), form="program"),
    ).to_dict()


def top1(artifact, x, labels):
    return 100.0 * float((artifact.run(x).argmax(1) == labels).float().mean())


@pytest.fixture(scope="module")
def state_dict_route(tmp_path_factory):
    out = tmp_path_factory.mktemp("sd") / "sd.pt2"
    report = convert(demo.WEIGHTS, out, ArchSpec.parse(demo.ARCH))
    return report, load_artifact(out)


@pytest.mark.parametrize("how", ["traced", "scripted"])
def test_torchscript_gives_the_int8_model_of_the_state_dict(tmp_path, how, state_dict_route, eval_batch):
    if how == "traced":
        model = demo.TORCHSCRIPT  # shipped: torch.jit.trace of the demo
    else:
        net = DigitNet()
        net.load_state_dict(load_file(str(demo.WEIGHTS)))
        model = tmp_path / "scripted.pt"
        torch.jit.save(torch.jit.script(net.eval()), str(model))
    report = convert(model, tmp_path / "ts.pt2")
    sd_report, sd_artifact = state_dict_route
    assert report["model"]["format"] == "torchscript"
    assert report["quantized_layers"] == sd_report["quantized_layers"] == 10
    # same layers under the same names with the same weight scales and input quantization
    for got, want in zip(report["layers"], sd_report["layers"], strict=True):
        assert got["name"] == want["name"] and got["quantized"] == want["quantized"]
        assert got["weight_scale_max"] == pytest.approx(want["weight_scale_max"], rel=1e-5)
        assert got["input_scale"] == pytest.approx(want["input_scale"], rel=1e-5)
    artifact = load_artifact(tmp_path / "ts.pt2")
    x, labels = eval_batch
    with torch.no_grad():
        got, want = artifact.run(x), sd_artifact.run(x)
    assert float(metrics.cosine_per_sample(want, got).min()) > 0.999
    assert abs(top1(artifact, x, labels) - top1(sd_artifact, x, labels)) <= 0.5


def test_inspect_tells_whether_torchscript_can_be_quantized(tmp_path):
    import models

    ok = describe(demo.TORCHSCRIPT)
    assert ok.quantizable and ok.quantizable_layers == 10
    assert "can quantize" in ok.notes[0]
    models.scripted(models.GatedConvNet, str(tmp_path / "gated.pt"))
    bad = describe(tmp_path / "gated.pt")
    assert not bad.quantizable and bad.quantizable_layers == 0
    assert "data-dependent control flow" in bad.notes[0] and "torch.jit.trace" in bad.notes[0]


def test_unconvertible_torchscript_writes_nothing(tmp_path):
    import models

    models.scripted(models.GatedConvNet, str(tmp_path / "gated.pt"))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UnsupportedModel, match="cannot be quantized: data-dependent control flow"):
        convert(tmp_path / "gated.pt", out / "int8.pt2")
    assert list(out.iterdir()) == []
    proc = run_qcli("inspect", tmp_path / "gated.pt", "--format", "json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["quantizable"] is False
