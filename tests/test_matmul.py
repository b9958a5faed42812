"""INT8 convolutions as INT8 matrix products (qcli.matmul), chosen per batch size by
``convert --prefer speed``.

The rewrite is checked on five architectures: the demo's residual DigitNet (strides, padding,
1x1 shortcuts, residual adds), the trained MobileNetV2-style digit model (depthwise convolutions,
which stay convolutions, ReLU6, projections without activation), the trained PReLU digit model,
MTCNN's ONet48 (3 channels, no padding, PReLU then max pooling) and a segmenter whose last
convolution is a graph output (no quantize step after it). The choice rests on timings, which tests
never judge: it is checked with fixed comparisons; the package is compiled and run for real."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import MNIST_RECIPE
from safetensors.torch import save_file

from qcli import api, demo, engine, graph, hardware, matmul, private, speed
from qcli.artifact import load_artifact, read_metadata
from qcli.calibrate import identity_track
from qcli.config import Recipe, load_recipe
from qcli.convert import SpeedPlan, finalize, quantize
from qcli.load import ArchSpec, load_model
from qcli.options import CalibrationOptions, ConvertOptions
from qcli.reports import InspectArtifactReport

WEIGHTS = demo.WEIGHTS.parent
DIGIT_CONVS = [
    "stem.0.0", "layer1.conv1.0", "layer1.conv2.0", "layer2.conv1.0", "layer2.conv2.0", "layer2.shortcut.0",
    "layer3.conv1.0", "layer3.conv2.0", "layer3.shortcut.0",
]  # fmt: skip


def _final(model: Path, arch: str, calib: Path, recipe: Recipe) -> tuple[object, SpeedPlan, tuple[torch.Tensor, ...]]:
    loaded = load_model(model, ArchSpec.parse(arch), False, None)
    options = ConvertOptions(prefer="speed", calibration=CalibrationOptions(limit=64))
    source = api._from_folder(loaded, calib, (), options, recipe, identity_track)
    plan = SpeedPlan.of(loaded, source.prepared, options, source.samples)
    return finalize(quantize(source.prepared)), plan, source.prepared.example


@pytest.fixture(scope="module")
def digits() -> tuple[object, SpeedPlan, tuple[torch.Tensor, ...]]:
    return _final(demo.WEIGHTS, demo.ARCH, demo.CALIB_DIR, load_recipe(MNIST_RECIPE))


@pytest.fixture(scope="module")
def eval_digits(eval_batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return eval_batch[0][:200]


def _outputs(fn: object, x: torch.Tensor) -> torch.Tensor:
    """Every output of ``fn(x)`` (a graph, a package model), flattened per sample, side by side."""
    with torch.no_grad():
        out = fn(x)  # type: ignore[operator]
    flat = torch.utils._pytree.tree_leaves(out)
    return torch.cat([t.flatten(1) for t in flat], dim=1)


def _conv_modules(gm: object) -> list[str]:
    return [graph.module_name(n) for n in gm.graph.nodes if graph.layer_type(n) == "Conv2d"]  # type: ignore[attr-defined]


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    """The same INT8 arithmetic: equal but for the order FP32 sums are added in (which may move a
    value across a rounding step of the next quantization: a few values by one step)."""
    assert got.shape == want.shape
    cos = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
    assert cos > 0.9999, float(cos)


@pytest.mark.parametrize(
    "arch, weights, depthwise",
    [
        ("qcli.demo.model:MobileDigitNet", "mobile.safetensors", True),
        ("qcli.demo.model:PReLUDigitNet", "prelu.safetensors", False),
    ],
)
def test_trained_digit_models_compute_the_same_as_products(
    arch: str, weights: str, depthwise: bool, eval_digits: torch.Tensor
) -> None:
    final, _, _ = _final(WEIGHTS / weights, arch, demo.CALIB_DIR, load_recipe(MNIST_RECIPE))
    convs = _conv_modules(final)
    lowered, names = matmul.convs_as_matmuls(final)  # type: ignore[arg-type]
    assert names and set(names) <= set(convs)
    left = _conv_modules(lowered)
    assert set(left) == set(convs) - set(names)  # what is left: the depthwise convolutions only
    assert bool(left) is depthwise
    assert _conv_modules(final) == convs  # the original graph is untouched
    assert matmul.compile_options(lowered) == matmul.COMPILE_OPTIONS and matmul.compile_options(final) == {}
    got, want = _outputs(lowered, eval_digits), _outputs(final, eval_digits)
    _close(got, want)
    assert (got.argmax(1) == want.argmax(1)).float().mean() >= 0.995


def test_digitnet_every_convolution_becomes_a_product(digits, eval_digits: torch.Tensor) -> None:  # type: ignore[no-untyped-def]
    final, _, _ = digits
    lowered, names = matmul.convs_as_matmuls(final)
    assert names == DIGIT_CONVS and _conv_modules(lowered) == []
    # the activations after each product stay INT8 bytes: the ReLU, the residual add and the
    # quantize step moved onto the product's rows (one quantize per convolution, none added)
    quantizes = [n for n in lowered.graph.nodes if graph.is_quantize_per_tensor(n)]
    assert len(quantizes) == len([n for n in final.graph.nodes if graph.is_quantize_per_tensor(n)])
    _close(_outputs(lowered, eval_digits), _outputs(final, eval_digits))
    # scopes: at batch 1 the 28x28 maps have 784 output rows, the 7x7 ones 49
    assert matmul.convs_as_matmuls(final, 256, 1)[1] == DIGIT_CONVS[3:]
    assert matmul.convs_as_matmuls(final, 256, 16)[1] == []
    assert matmul.convs_as_matmuls(final, 1024, 16)[1] == DIGIT_CONVS[6:]


def test_onet_and_a_segmenter_output_convolution(tmp_path: Path) -> None:
    from models import tiny_segmenter

    from qcli.demo.model import ONet48

    for arch, make, shape in (
        ("qcli.demo.model:ONet48", ONet48, (3, 48, 48)),
        ("models:tiny_segmenter", tiny_segmenter, (1, 16, 16)),
    ):
        torch.manual_seed(0)
        save_file(make().eval().state_dict(), str(tmp_path / "m.safetensors"))
        calib = tmp_path / f"calib-{shape[0]}"
        calib.mkdir()
        x = torch.rand(32, *shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
        torch.save(x, calib / "x.pt")
        final, _, _ = _final(tmp_path / "m.safetensors", arch, calib, Recipe())
        lowered, names = matmul.convs_as_matmuls(final)  # type: ignore[arg-type]
        assert names == _conv_modules(final) and _conv_modules(lowered) == []
        _close(_outputs(lowered, x), _outputs(final, x))


def _onednn_convolutions(run: object) -> int:
    log = hardware.onednn_log(run)  # type: ignore[arg-type]
    return sum(1 for line in log.splitlines() if ",exec," in line and ",convolution," in line)


def test_prefer_speed_packages_products_at_the_batch_size_they_won(
    digits, eval_digits: torch.Tensor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """Fixed comparisons: at batch 1 the products win, the classifier in FP32 wins a little, and
    both together win most; at batch 4 nothing wins. The package is compiled for real: its batch-1
    model runs no oneDNN convolution and computes what the INT8 graph does; it was compiled with
    the template options, the batch-4 model without them."""
    compiled_with: list[dict[str, object]] = []
    aot_compile = private.aot_compile

    def recording(module: object, args: tuple[object, ...], options: dict[str, object]) -> object:
        compiled_with.append(
            {k: v for k, v in options.items() if k in matmul.COMPILE_OPTIONS} | {"batch": args[0].shape[0]}
        )  # type: ignore[attr-defined]
        return aot_compile(module, args, options)

    def fc_in_fp32(gm: object) -> bool:
        return any(
            graph.module_name(n) == "fc"
            and graph.layer_type(n) == "Linear"
            and graph.dequantize_kind(n.args[1]) is None
            for n in gm.graph.nodes  # type: ignore[attr-defined]
        )

    def compare(a: object, b: object, args: tuple[torch.Tensor, ...]) -> tuple[float, float, tuple[float, ...]]:
        if args[0].shape[0] != 1:
            return (1.0, 1.1, (0.91, 0.85, 0.97))
        products, fc = bool(matmul.compile_options(b)), fc_in_fp32(b)
        speedup = {(True, True): 2.8, (True, False): 2.6, (False, True): 1.1}[(products, fc)]
        return (1.0, 1 / speedup, (speedup, speedup - 0.05, speedup + 0.05))

    # the classifier's FP32 kernels are faster: the one FP32 candidate
    monkeypatch.setattr(
        speed,
        "kernel_times",
        lambda fn, args, layers: [10.0 if la.name == "fc" and not la.quantized else 50.0 for la in layers],
    )
    monkeypatch.setattr(speed, "compare", compare)
    monkeypatch.setattr(speed, "compiled", lambda gm, args: gm)
    monkeypatch.setattr(speed, "packaged", lambda gm, args: gm)
    monkeypatch.setattr(private, "aot_compile", recording)
    out = tmp_path / "speed.pt2"
    report = api.convert_model_file(
        demo.WEIGHTS, out, calib_dir=demo.CALIB_DIR, arch=ArchSpec.parse(demo.ARCH),
        recipe=load_recipe(MNIST_RECIPE),
        options=ConvertOptions(prefer="speed", package_batch_sizes=(1, 4), calibration=CalibrationOptions(limit=64)),
    )  # fmt: skip
    assert report.speed is not None
    at1, at4 = report.speed
    assert at1["matmul_layers"] == DIGIT_CONVS and at1["fp32_layers"] == ["fc"]
    assert at1["verdict"] == "fc in FP32; 9 convolutions as INT8 matrix products"
    # the FP32 candidate, the two scopes that rewrite different sets at batch 1 (all nine, the six
    # on 14x14 and 7x7 maps), then the best of each together
    assert [a["fp32_layers"] for a in at1["attempts"]] == [["fc"], [], [], ["fc"]]
    assert [a["matmul_layers"] for a in at1["attempts"]] == [[], DIGIT_CONVS, DIGIT_CONVS[3:], DIGIT_CONVS]
    assert at4["matmul_layers"] == [] and at4["verdict"].startswith("every layer INT8: the model was not faster")
    # at batch 4 the 14x14 maps have 784 rows, the 7x7 ones 196: three scopes
    assert [a["matmul_layers"] for a in at4["attempts"]] == [[], DIGIT_CONVS, DIGIT_CONVS[3:], DIGIT_CONVS[6:]]
    assert read_metadata(out)["speed"] == report.speed
    assert compiled_with == [{**matmul.COMPILE_OPTIONS, "batch": 1}, {"batch": 4}]

    artifact = load_artifact(out, trust_model=True)
    x = eval_digits[:4]
    assert _onednn_convolutions(lambda: artifact.run(x[:1])) == 0
    assert _onednn_convolutions(lambda: artifact.run(x)) == 9
    final, _, _ = digits
    with torch.no_grad():
        for batch in (x[:1], x):
            _close(_outputs(artifact.run, batch), _outputs(final, batch))

    described = api.inspect_path(out)
    assert isinstance(described, InspectArtifactReport) and described.compiled_for is not None
    assert described.compiled_for["matmul_for_speed"] == {"1": DIGIT_CONVS}
    assert described.compiled_for["fp32_for_speed"] == {"1": ["fc"]}


def test_residual_adds_move_onto_the_rows() -> None:
    """MobileNetV2-style blocks: the projection's result goes to a residual add before its
    quantize step, and PT2E's quantize/dequantize nodes record no shapes. The add must move onto
    the product's rows: left on the (N, C, H, W) view, Inductor fused it into the product's
    epilogue and failed ("wrong ndim", MobileNetV2 at 224x224; with the old shape lookup this
    model kept 3 adds on views). DigitNet's package in the test above compiles moved adds."""
    final, _, example = _final(WEIGHTS / "mobile.safetensors", "qcli.demo.model:MobileDigitNet", demo.CALIB_DIR,
                               load_recipe(MNIST_RECIPE))  # fmt: skip
    lowered, names = matmul.convs_as_matmuls(final, None, 1)  # type: ignore[arg-type]
    aten = torch.ops.aten
    residual = [n for n in final.graph.nodes if n.target is aten.add.Tensor]  # type: ignore[attr-defined]
    assert residual  # the model has residual adds
    for node in lowered.graph.nodes:
        if node.target is aten.add.Tensor:  # every add now takes rows, none a view back to N, C, H, W
            assert not any(getattr(a, "target", None) is aten.permute.default for a in node.args), node.format_node()
    # its ReLU6 before a quantize step stays off the rows: the calibrated range lies inside [0, 6]
    clamps = [n for n in final.graph.nodes if n.target is aten.hardtanh.default]  # type: ignore[attr-defined]
    assert clamps
    for node in lowered.graph.nodes:
        assert node.target is not aten.hardtanh.default or node.args[0].target is not aten.linear.default
    x = engine.first_row_repeated(example, 2)[0]
    _close(_outputs(lowered, x), _outputs(final, x))


@pytest.mark.parametrize(
    "op, bounds, scale, zero_point, redundant",
    [
        ("hardtanh", (0.0, 6.0), 6.0 / 255, 0, True),  # a calibrated ReLU6 output: [0, 6]
        ("hardtanh", (0.0, 6.0), 5.0 / 255, 0, True),  # a narrower range (percentile, entropy)
        ("hardtanh", (0.0, 6.0), 8.0 / 255, 0, False),  # 6 quantizes to 191: the clamp binds
        ("hardtanh", (0.0, 6.0), 6.0 / 255, 3, False),  # 0 quantizes to 3, above quant_min
        ("hardtanh", (0.0, 6.0), 6.0 / 254.5, 0, False),  # 6 lands on a rounding tie: not decided
        ("relu", (), 0.02, 0, True),
        ("relu", (), 0.02, 1, False),
        ("clamp", (None, 6.0), 6.0 / 255, 0, True),
    ],
)
def test_a_clamp_the_quantize_step_already_does_is_recognised(
    op: str, bounds: tuple[float | None, ...], scale: float, zero_point: int, redundant: bool
) -> None:
    """``quantize(clamp(x))`` equals ``quantize(x)`` exactly when the clamp's bounds lie outside
    the quantized range; the products then leave the clamp out. Checked on values around both
    bounds, every rounding tie included."""
    import torch.ao.quantization.fx._decomposed  # noqa: F401

    aten, quantize = torch.ops.aten, torch.ops.quantized_decomposed.quantize_per_tensor.default
    g = torch.fx.Graph()
    x = g.placeholder("x")
    clamp = g.call_function(getattr(aten, op).default, (x, *bounds))
    g.output(g.call_function(quantize, (clamp, scale, zero_point, 0, 255, torch.uint8)))
    gm = torch.fx.GraphModule(torch.nn.Module(), g)
    assert matmul._within_quantize_range(clamp) is redundant
    steps = torch.arange(-20.0, 280.0, 0.25, dtype=torch.float64)  # in quantization steps, ties included
    values = ((steps - zero_point) * scale).float()
    clamped = gm(values)
    unclamped = quantize(values, scale, zero_point, 0, 255, torch.uint8)
    assert bool((clamped == unclamped).all()) is redundant


def test_a_variant_torch_cannot_compile_is_reported_and_left_out(digits) -> None:  # type: ignore[no-untyped-def]
    final, plan, example = digits
    args = engine.first_row_repeated(example, 1)

    def packaged(gm: object, args: tuple[torch.Tensor, ...]) -> object:
        if matmul.compile_options(gm):
            raise RuntimeError("InductorError: AssertionError: wrong ndim\nmore detail")
        return gm

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(speed, "kernel_times", lambda fn, args, layers: [50.0 for _ in layers])
        mp.setattr(speed, "compiled", lambda gm, args: gm)
        mp.setattr(speed, "packaged", packaged)
        mp.setattr(speed, "compare", lambda a, b, args: (1.0, 1.0, (1.0, 0.95, 1.05)))
        choice, chosen = speed.choose((1, None), args, final, plan.fp32_graph, plan.rebuild)
    assert chosen is final and choice.attempts == [] and choice.matmul_layers == ()
    assert choice.errors == [
        "9 convolutions as INT8 matrix products: not compiled (RuntimeError: InductorError: AssertionError: wrong ndim)",
        "6 convolutions as INT8 matrix products: not compiled (RuntimeError: InductorError: AssertionError: wrong ndim)",
    ]
    assert choice.verdict.startswith("every layer INT8")
