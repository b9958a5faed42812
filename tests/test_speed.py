"""``convert --prefer speed`` (qcli.speed) on MTCNN's ONet48 layout: PReLU, max pooling, three
small linear heads (2, 4 and 10 outputs) — a model unlike the demo, and the kind of network whose
small layers cost more in INT8 than in FP32 at batch 1.

The choice itself rests on timings, which tests never judge: the kernel matching is checked on
real compiled graphs, and the per-batch-size package on fixed kernel times and comparisons."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from qcli import api, engine, graph, hardware, matmul, speed
from qcli.artifact import load_artifact, read_metadata
from qcli.calibrate import identity_track
from qcli.cli.render import speed_table
from qcli.config import Recipe
from qcli.convert import SpeedPlan, finalize, quantize
from qcli.demo.model import ONet48
from qcli.load import ArchSpec, load_model
from qcli.options import ConvertOptions
from qcli.reports import InspectArtifactReport

ARCH = "qcli.demo.model:ONet48"
LAYERS = ["features.0", "features.3", "features.6", "features.9", "fc.1", "score", "box", "landmarks"]
HEADS = ["score", "box", "landmarks"]


@pytest.fixture(scope="module")
def onet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onet")
    torch.manual_seed(0)
    save_file(ONet48().eval().state_dict(), str(root / "onet.safetensors"))
    (root / "calib").mkdir()
    gen = torch.Generator().manual_seed(1)
    torch.save(torch.rand(32, 3, 48, 48, generator=gen) * 2 - 1, root / "calib" / "crops.pt")
    return {"model": root / "onet.safetensors", "calib": root / "calib", "root": root}


def test_every_layer_kernel_is_found_in_the_compiled_int8_and_fp32_graphs(onet: dict[str, Path]) -> None:
    loaded = load_model(onet["model"], ArchSpec.parse(ARCH), False, None)
    options = ConvertOptions(prefer="speed")
    source = api._from_folder(loaded, onet["calib"], (), options, Recipe(), identity_track)
    plan = SpeedPlan.of(loaded, source.prepared, options, source.samples)
    final = finalize(quantize(source.prepared))
    assert graph.quantized_max_pools(final) == []  # each pooling follows a PReLU, which stays FP32
    args = engine.first_row_repeated(source.prepared.example, 2)
    for gm, quantized in ((final, True), (plan.fp32_graph, False)):
        layers = speed.layers_at(gm, args)
        assert [la.name for la in layers] == LAYERS
        assert all(la.quantized is quantized for la in layers)
        times = speed.kernel_times(speed.compiled(gm, args), args, layers)
        assert all(t is not None and t > 0 for t in times), list(zip(LAYERS, times, strict=True))
    # what the decisions are timed on: the graph compiled as a package model, computing what it does
    with torch.no_grad():
        for got, want in zip(speed.packaged(final, args)(*args), final(*args), strict=True):
            assert torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.999


def _int8_matmuls(run: object) -> int:
    """oneDNN matmul/inner-product executions with INT8 weights while ``run`` runs."""
    log = hardware.onednn_log(run)  # type: ignore[arg-type]
    return sum(
        1
        for line in log.splitlines()
        if ",exec," in line and (",matmul," in line or ",inner_product," in line) and "wei:s8" in line
    )


def test_each_batch_size_keeps_its_own_layers_in_fp32(onet: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    # fixed kernel times: the heads are 10x faster in FP32, everything else 5x slower; and the
    # whole model with the heads in FP32 is faster at batch 1 only (the compiling for timing is the
    # test above's; here only the package is compiled)
    def kernel_times(fn: object, args: tuple[torch.Tensor, ...], layers: list[speed.Layer]) -> list[float]:
        return [100.0 if la.quantized else (10.0 if la.name in HEADS else 500.0) for la in layers]

    def compare(a: object, b: object, args: tuple[torch.Tensor, ...]) -> tuple[float, float, tuple[float, ...]]:
        heads_at_1 = args[0].shape[0] == 1 and not matmul.compile_options(b)  # products: tests/test_matmul.py
        return (1.0, 0.5, (2.0, 1.8, 2.2)) if heads_at_1 else (1.0, 1.1, (0.91, 0.85, 0.97))

    monkeypatch.setattr(speed, "kernel_times", kernel_times)
    monkeypatch.setattr(speed, "compare", compare)
    monkeypatch.setattr(speed, "compiled", lambda gm, args: gm)  # nothing timed: the graphs as they are
    monkeypatch.setattr(speed, "packaged", lambda gm, args: gm)
    out = onet["root"] / "speed.pt2"
    report = api.convert_model_file(
        onet["model"], out, calib_dir=onet["calib"], arch=ArchSpec.parse(ARCH),
        options=ConvertOptions(prefer="speed", package_batch_sizes=(1, 4)),
    )  # fmt: skip
    assert report.speed is not None
    at1, at4 = report.speed
    assert (at1["batch"], at1["fp32_layers"], at1["verdict"]) == (1, HEADS, "score, box, landmarks in FP32")
    assert [a["fp32_layers"] for a in at1["attempts"]] == [HEADS, [], [], []]
    # then the convolutions as INT8 matrix products: all four, those of at most 1024 and 256 rows
    convs = LAYERS[:4]
    assert [a["matmul_layers"] for a in at1["attempts"]] == [[], convs, convs[1:], convs[2:]]
    assert (at4["batch"], at4["fp32_layers"]) == (4, [])
    assert at4["verdict"].startswith("every layer INT8") and at4["attempts"][0]["speedup"]["value"] == 0.91
    assert [t["name"] for t in at1["layers"]] == LAYERS
    assert read_metadata(out)["speed"] == report.speed
    assert report.config["convert"]["prefer"] == "speed"

    # the package's batch-1 model runs the heads in FP32 (only fc.1 is an INT8 matmul), batch 4 all four
    artifact = load_artifact(out, trust_model=True)
    loaded = load_model(onet["model"], ArchSpec.parse(ARCH), False, None)
    x = torch.load(onet["calib"] / "crops.pt")[:4]
    assert _int8_matmuls(lambda: artifact.run(x[:1])) == 1
    assert _int8_matmuls(lambda: artifact.run(x)) == 4
    with torch.no_grad():
        for batch in (x[:1], x):
            for got, want in zip(artifact.run(batch), loaded.module(batch), strict=True):
                assert torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.99

    described = api.inspect_path(out)
    assert isinstance(described, InspectArtifactReport) and described.compiled_for is not None
    assert described.compiled_for["fp32_for_speed"] == {"1": HEADS}


def test_max_pooling_on_int8_values_is_tried_in_fp32(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test detector's two max poolings run on INT8 values (torch's INT8 max pooling is slow
    on its 8- and 16-channel maps): they are found by module, rebuilt in FP32 with the layers
    still INT8 and the outputs unchanged but for rounding, and kept FP32 when the model is faster
    so. Fixed timings: no layer is a candidate, the pooling alone decides."""
    from models import digit_detector

    torch.manual_seed(0)
    save_file(digit_detector().state_dict(), str(tmp_path / "det.safetensors"))
    (tmp_path / "calib").mkdir()
    torch.save(torch.rand(32, 1, 32, 32, generator=torch.Generator().manual_seed(1)), tmp_path / "calib" / "x.pt")
    loaded = load_model(tmp_path / "det.safetensors", ArchSpec.parse("models:digit_detector"), False, None)
    options = ConvertOptions(prefer="speed")
    source = api._from_folder(loaded, tmp_path / "calib", (), options, Recipe(), identity_track)
    plan = SpeedPlan.of(loaded, source.prepared, options, source.samples)
    final = finalize(quantize(source.prepared))
    pools = ["features.3", "features.7"]
    assert graph.quantized_max_pools(final) == pools
    rebuilt = plan.rebuild(tuple(pools))
    args = engine.first_row_repeated(source.prepared.example, 4)
    assert graph.quantized_max_pools(rebuilt) == []
    assert all(la.quantized for la in speed.layers_at(rebuilt, args))  # every conv/linear still INT8
    with torch.no_grad():
        for a, b in zip(final(*args), rebuilt(*args), strict=True):
            assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.999

    def compare(a: object, b: object, args: tuple[torch.Tensor, ...]) -> tuple[float, float, tuple[float, ...]]:
        fp32_pooling = not graph.quantized_max_pools(b)  # type: ignore[arg-type]
        return (1.0, 0.8, (1.25, 1.2, 1.3)) if fp32_pooling else (1.0, 1.0, (1.0, 0.95, 1.05))

    monkeypatch.setattr(
        speed, "kernel_times", lambda fn, args, layers: [50.0 if la.quantized else 80.0 for la in layers]
    )
    monkeypatch.setattr(speed, "compare", compare)
    monkeypatch.setattr(speed, "compiled", lambda gm, args: gm)
    monkeypatch.setattr(speed, "packaged", lambda gm, args: gm)
    choice, chosen = speed.choose((4, None), args, final, plan.fp32_graph, plan.rebuild)
    assert [a.fp32_layers for a in choice.attempts if not a.matmul_layers] == [tuple(pools)]
    assert choice.fp32_layers == tuple(pools) and graph.quantized_max_pools(chosen) == []
    assert choice.verdict == "features.3 (max pooling), features.7 (max pooling) in FP32"
    # the report's line for the shape names the poolings as such in the attempt too
    _, lines = speed_table([choice.to_dict()])
    assert choice.to_dict()["max_pools"] == pools
    assert "(features.3 (max pooling), features.7 (max pooling) in FP32: 1.25x [1.20, 1.30]" in lines[0]
