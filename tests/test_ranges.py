"""Range methods (qcli/ranges.py): hand-computed cases, numpy, and torch's observers where they overlap."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qcli import graph, ranges
from qcli.options import CalibrationOptions


def hist(x: np.ndarray, bins: int = 2048) -> tuple[np.ndarray, float, float]:
    lo, hi = float(x.min()), float(x.max())
    counts, _ = np.histogram(x, bins=bins, range=(lo, hi))
    return counts, lo, hi


def test_qparams_match_torch_minmax_observer():
    rng = np.random.default_rng(0)
    for lo_shift in (0.0, -1.5, 2.0):
        x = rng.standard_normal(1000).astype(np.float32) + lo_shift
        obs = torch.ao.quantization.MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
        obs(torch.from_numpy(x))
        scale, zp = obs.calculate_qparams()
        counts, lo, hi = hist(x)
        ours = ranges.qparams(*ranges.minmax_range(counts, lo, hi))
        assert ours[0] == pytest.approx(float(scale), rel=1e-6)
        assert ours[1] == int(zp)


def test_qparams_hand_computed():
    assert ranges.qparams(0.0, 2.55) == (pytest.approx(0.01), 0)
    assert ranges.qparams(-1.0, 1.55) == (pytest.approx(0.01), 100)
    assert ranges.qparams(1.0, 2.55) == (pytest.approx(0.01), 0)  # zero is always representable
    x = np.array([0.0, 0.004, 0.006, 2.55, 3.0])
    np.testing.assert_allclose(ranges.fake_quantize(x, 0.01, 0), [0.0, 0.0, 0.01, 2.55, 2.55])


def test_percentile_matches_numpy():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(200_000)
    counts, lo, hi = hist(x, bins=8192)
    width = (hi - lo) / 8192
    a, b = ranges.percentile_range(counts, lo, hi, 99.0)
    assert a == pytest.approx(np.percentile(x, 0.5), abs=width)
    assert b == pytest.approx(np.percentile(x, 99.5), abs=width)
    relu = np.abs(x)
    counts, lo, hi = hist(relu, bins=8192)
    a, b = ranges.percentile_range(counts, lo, hi, 99.9)
    assert a == lo and b == pytest.approx(np.percentile(relu, 99.9), abs=(hi - lo) / 8192)


def test_percentile_of_a_hand_made_histogram():
    counts = np.array([50, 30, 19, 0, 1])  # 100 values over [0, 5]
    assert ranges.percentile_range(counts, 0.0, 5.0, 99.0) == (0.0, pytest.approx(3.0))  # 99 values lie below 3.0
    assert ranges.percentile_range(counts, 0.0, 5.0, 100.0) == (0.0, pytest.approx(5.0))


def test_quantization_error_hand_computed():
    # one bin of values spread over [0, 1], quantized with scale 1/255: error ~ uniform rounding noise
    err = ranges.quantization_error(np.array([10]), 0.0, 1.0, 0.0, 1.0)
    assert err == pytest.approx((1 / 255) ** 2 / 12, rel=0.5)
    # clipping [0, 2] at 1: values in the second bin lose their distance to 1 (mean 0.5, spread)
    err = ranges.quantization_error(np.array([0, 10]), 0.0, 2.0, 0.0, 1.0)
    assert err == pytest.approx(np.mean((np.linspace(1, 2, 9)[:-1] + 1 / 16 - 1) ** 2), rel=0.05)


def test_mse_is_at_least_as_good_as_torch_histogram_observer():
    """torch's HistogramObserver also searches for the least L2 error; ours must not be worse."""
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.standard_normal(50_000), rng.standard_normal(20) * 30]).astype(np.float32)
    obs = torch.ao.quantization.HistogramObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    obs(torch.from_numpy(x))
    counts = obs.histogram.numpy()
    lo, hi = float(obs.min_val), float(obs.max_val)
    scale, zp = (float(v) for v in obs.calculate_qparams())
    torch_range = (scale * (0 - zp), scale * (255 - zp))
    ours = ranges.mse_range(counts, lo, hi)
    assert (
        ranges.quantization_error(counts, lo, hi, *ours)
        <= ranges.quantization_error(counts, lo, hi, *torch_range) * 1.01
    )
    assert ranges.quantization_error(counts, lo, hi, *ours) < ranges.quantization_error(counts, lo, hi, lo, hi)


def test_uniform_data_keeps_its_range():
    x = np.linspace(0, 6, 100_000)
    counts, lo, hi = hist(x)
    for method in ranges.METHODS:
        a, b = ranges.choose_range(method, counts, lo, hi)
        assert a == pytest.approx(0.0, abs=1e-9) and b == pytest.approx(6.0, rel=0.01), method


def test_outliers_are_clipped_by_percentile_and_entropy():
    rng = np.random.default_rng(3)
    x = np.abs(rng.standard_normal(100_000))
    x[:5] = 40.0
    counts, lo, hi = hist(x)
    a, b = ranges.choose_range("percentile", counts, lo, hi)
    assert a == lo and 3.0 < b < 8.0, b
    # KL alone clips them too; but clipping five values at 40 down to ~5 costs 30 times the
    # squared error of keeping them, so qcli's entropy keeps the range within 1.5 times the least
    a, b = ranges.entropy_range(counts, lo, hi)
    assert a == lo and 3.0 < b < 8.0, b
    best = ranges.quantization_error(counts, lo, hi, *ranges.mse_range(counts, lo, hi))
    chosen = ranges.choose_range("entropy", counts, lo, hi)
    assert ranges.quantization_error(counts, lo, hi, *chosen) <= ranges.GUARD_FACTOR * best * (1 + 1e-9)
    # every method stays inside the observed range
    for method in ranges.METHODS:
        a, b = ranges.choose_range(method, counts, lo, hi)
        assert lo <= a < b <= hi


def test_empty_histogram_and_bad_names():
    assert ranges.choose_range("mse", np.zeros(16), 0.0, 1.0) == (0.0, 1.0)
    assert ranges.choose_range("entropy", np.zeros(16), 0.0, 1.0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="unknown range method"):
        ranges.choose_range("magic", np.ones(4), 0.0, 1.0)
    with pytest.raises(ValueError):
        ranges.percentile_range(np.ones(4), 0.0, 1.0, 30.0)


def test_entropy_ignores_the_relu_spike_at_zero():
    rng = np.random.default_rng(4)
    x = np.maximum(rng.standard_normal(200_000), 0)  # half the values are exactly 0
    counts, lo, hi = hist(x)
    a, b = ranges.entropy_range(counts, lo, hi)
    clipped = (x > b).mean()
    assert a == 0.0 and clipped < 0.005, clipped


@pytest.fixture(scope="module")
def demo_stats(tmp_path_factory, demo_model, mnist_preprocess):
    from qcli import demo
    from qcli.calibrate import calibrate, load_stats, save_stats
    from qcli.data import SampleFolder

    path = tmp_path_factory.mktemp("ranges") / "s.safetensors"
    result = calibrate(
        demo_model, SampleFolder.open(demo.CALIB_DIR, mnist_preprocess), CalibrationOptions(batch_size=32)
    )
    save_stats(
        path, result.prepared, {"model_sha256": demo_model.sha256, "calibration": result.manifest}, result.samples
    )
    return load_stats(path), result.prepared.spec


@pytest.mark.parametrize("method", ["histogram", *ranges.METHODS, "auto"])
def test_every_method_keeps_the_demo_accurate(method, demo_stats, demo_model, eval_batch):
    """Each method, applied to the same saved statistics, gives an INT8 demo within 1 point of FP32."""
    from qcli.calibrate import apply_stats, prepare
    from qcli.convert import apply_method, quantize
    from qcli.metrics import topk_hits

    stats, spec = demo_stats
    prepared = prepare(demo_model, stats.example(), spec)
    apply_stats(prepared, stats, demo_model.sha256)
    chosen = apply_method(prepared, method, samples=stats.samples())
    assert (chosen == {}) == (method == "histogram")
    for a, b in chosen.values():
        assert a <= 0 <= b or a >= 0
    x, labels = eval_batch
    with torch.no_grad():
        fp32 = topk_hits(demo_model.module(x), labels, 1)
        int8 = topk_hits(quantize(prepared, method, samples=stats.samples())(x), labels, 1)
    assert int8 >= fp32 - 0.01 * len(labels), (method, fp32, int8)


def test_per_layer_report_finds_the_damaged_layer(demo_stats, demo_model):
    """Give the classifier's input a range 100x too small: the report must rank fc worst and suggest it."""
    import functools

    from qcli import layers
    from qcli.calibrate import apply_stats, observer_kinds, prepare
    from qcli.convert import layer_table, quantize

    stats, spec = demo_stats
    prepared = prepare(demo_model, stats.example(), spec)
    apply_stats(prepared, stats, demo_model.sha256)
    fp32 = layers.fp32_reference(prepared.graph)
    fc_input = [n for n in prepared.graph.graph.nodes if n.op == "call_function" and "linear" in str(n.target)][0].args[
        0
    ]
    assert fc_input.op == "call_module" and str(fc_input.target) in observer_kinds(prepared)  # its observer
    obs = graph.observers(prepared.graph)[str(fc_input.target)]
    obs.calculate_qparams = functools.partial(obs._calculate_qparams, torch.tensor(0.0), obs.max_val / 100)
    converted = quantize(prepared)
    samples = stats.samples()
    assert samples is not None and samples[0].shape[0] == 32
    rows = layers.per_layer_errors(fp32, converted, [samples], layer_table(converted))
    assert len(rows) == 10 and rows[0]["name"] == "fc"
    assert [r["output_sqnr_db"] for r in rows] == sorted(r["output_sqnr_db"] for r in rows)
    assert rows[0]["output_sqnr_db"] < 20 < rows[-1]["output_sqnr_db"]
    assert all(r["weight_sqnr_db"] > 30 for r in rows)  # weights are untouched by the sabotage
    assert layers.suggestions(rows) == ["fc"]


def test_bias_correction_removes_the_mean_error(demo_stats, demo_model, eval_batch):
    """After correction (fitted on the 32 calibration samples), the first quantized layer's mean
    output error per channel is ~0 there, and on 400 held-out digits it was never fitted to the
    model's output is closer to FP32 than without it."""
    from qcli import layers, metrics
    from qcli.calibrate import apply_stats, prepare
    from qcli.convert import quantize

    stats, spec = demo_stats
    samples = stats.samples()
    source = {k: v.clone() for k, v in demo_model.module.state_dict().items()}
    results = {}
    for correct in (False, True):
        prepared = prepare(demo_model, stats.example(), spec)
        apply_stats(prepared, stats, demo_model.sha256)
        fp32 = layers.fp32_reference(prepared.graph)
        converted = quantize(prepared, "entropy")
        changes = layers.bias_correct(fp32, converted, samples) if correct else []
        held_out = eval_batch[0]
        with torch.no_grad():
            results[correct] = metrics.sqnr_db(*metrics.power_sums(demo_model.module(held_out), converted(held_out)))
        if correct:
            assert len(changes) == 10 and all(c["mean_abs_shift"] > 0 for c in changes)
            first = graph.layer_nodes(converted)[("stem.0.0", 0)]
            (_, y_ref), (_, y_q) = (
                layers._record(fp32, samples, {("stem.0.0", 0): graph.layer_nodes(fp32)[("stem.0.0", 0)]})[
                    ("stem.0.0", 0)
                ],
                layers._record(converted, samples, {("stem.0.0", 0): first})[("stem.0.0", 0)],
            )
            assert (y_ref - y_q).mean(dim=(0, 2, 3)).abs().max() < 1e-3
    print(f"held-out SQNR without / with bias correction: {results[False]:.2f} / {results[True]:.2f} dB")
    # on held-out samples it helped on the AVX2 machine this was written on and was level on an AMX
    # one (22.27 against 22.30 dB): what it must do is remove the mean error it measured (above)
    # and not hurt
    assert results[True] > results[False] - 0.1, results
    unchanged = demo_model.module.state_dict()  # the FP32 model itself is never corrected
    assert all(torch.equal(unchanged[k], v) for k, v in source.items())


@pytest.mark.parametrize(
    ("arch", "weights"), [("MobileDigitNet", "mobile.safetensors"), ("PReLUDigitNet", "prelu.safetensors")]
)
def test_hard_architectures_keep_accuracy(arch, weights, mnist_preprocess, eval_batch):
    """MobileNetV2-style (depthwise, ReLU6) and PReLU networks trained on the demo digits: default
    INT8 within 1 point of FP32. PReLU stays an FP32 op between INT8 convolutions (the X86 quantizer
    does not annotate it), which avoids torch's quantized PReLU and its wrong outputs."""
    from qcli import demo
    from qcli.calibrate import calibrate
    from qcli.convert import quantize
    from qcli.data import SampleFolder
    from qcli.load import ArchSpec, load_model
    from qcli.metrics import topk_hits

    model = load_model(demo.WEIGHTS.with_name(weights), ArchSpec.parse(f"qcli.demo.model:{arch}"))
    result = calibrate(model, SampleFolder.open(demo.CALIB_DIR, mnist_preprocess), CalibrationOptions(limit=128))
    converted = quantize(result.prepared)
    ops = [str(n.target) for n in converted.graph.nodes if n.op == "call_function"]
    if arch == "PReLUDigitNet":
        prelu = [o for o in ops if "prelu" in o]
        assert prelu and not any("quantized" in o for o in prelu)
    x, labels = eval_batch
    with torch.no_grad():
        fp32 = topk_hits(model.module(x), labels, 1)
        int8 = topk_hits(converted(x), labels, 1)
    assert fp32 >= 0.97 * len(labels)  # the networks are really trained
    assert int8 >= fp32 - 0.01 * len(labels), (arch, fp32, int8)


def test_auto_picks_per_tensor_and_beats_a_bad_method(demo_stats, demo_model):
    """auto chooses among the methods per tensor by the next layer's error: a greedy choice, so
    end to end it is not always the best method (on the demo: 33.8 dB, between mse's 32.4 and the
    guarded entropy's 35.6), but it is never the worst."""
    from qcli import metrics
    from qcli.calibrate import apply_stats, prepare
    from qcli.convert import auto_methods, quantize

    stats, spec = demo_stats
    samples = stats.samples()
    sqnr = {}
    for method in (*ranges.METHODS, "histogram", "auto"):
        prepared = prepare(demo_model, stats.example(), spec)
        apply_stats(prepared, stats, demo_model.sha256)
        with torch.no_grad():
            sqnr[method] = metrics.sqnr_db(
                *metrics.power_sums(demo_model.module(*samples), quantize(prepared, method, samples=samples)(*samples))
            )
    assert sqnr["auto"] > min(v for k, v in sqnr.items() if k != "auto"), sqnr
    prepared = prepare(demo_model, stats.example(), spec)
    apply_stats(prepared, stats, demo_model.sha256)
    candidates = {name: {m: ranges.choose_range(m, obs.histogram.double().numpy(), float(obs.min_val), float(obs.max_val)) for m in ranges.METHODS}
                  for name, obs in graph.observers(prepared.graph).items() if hasattr(obs, "histogram")}  # fmt: skip
    picks = auto_methods(prepared, candidates, samples)
    assert set(picks) == set(candidates) and set(picks.values()) <= set(ranges.METHODS)


def test_every_activation_family_quantizes_with_fidelity(mnist_preprocess, eval_batch):
    """SiLU, Hardswish, ReLU6 after depthwise convolutions, PReLU, LayerNorm and GELU: every conv and
    linear layer INT8, the output within 25 dB SQNR of FP32 on real digits, and agreeing on top-1."""
    from models import activation_zoo

    from qcli import demo, metrics
    from qcli.calibrate import calibrate
    from qcli.convert import layer_table, quantize
    from qcli.data import SampleFolder
    from qcli.load import LoadedModel

    module = activation_zoo()
    loaded = LoadedModel(
        module=module, path=demo.WEIGHTS, format="safetensors", sha256="0" * 64, arch=None, size_bytes=0
    )
    result = calibrate(loaded, SampleFolder.open(demo.CALIB_DIR, mnist_preprocess), CalibrationOptions(limit=128))
    converted = quantize(result.prepared, "auto", samples=result.samples)
    assert all(layer.quantized for layer in layer_table(converted))
    x = eval_batch[0][:200]
    with torch.no_grad():
        ref, out = module(x), converted(x)
    assert metrics.sqnr_db(*metrics.power_sums(ref, out)) > 25
    assert metrics.top1_agreement_hits(ref, out) >= 196


def test_per_tensor_weights(demo_stats, demo_model, eval_batch):
    """--weights per-tensor: one scale per weight tensor, still symmetric INT8, still accurate."""
    from qcli.calibrate import apply_stats, prepare
    from qcli.convert import layer_table, quantize
    from qcli.metrics import topk_hits

    stats, spec = demo_stats
    prepared = prepare(demo_model, stats.example(), spec, weights="per-tensor")
    apply_stats(prepared, stats, demo_model.sha256, fill_from=stats.samples())  # weight observers differ
    converted = quantize(prepared)
    table = layer_table(converted)
    assert all(la.quantized and la.weight_scale_min == la.weight_scale_max for la in table)
    x, labels = eval_batch
    with torch.no_grad():
        assert topk_hits(converted(x), labels, 1) >= topk_hits(demo_model.module(x), labels, 1) - 4


def test_bias_correction_of_a_linear_over_tokens():
    """A Linear on [batch, tokens, features] has its channels last: it is corrected per output feature."""
    from qcli import demo, layers
    from qcli.calibrate import prepare
    from qcli.convert import quantize
    from qcli.data import InputSpec
    from qcli.load import LoadedModel

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.ReLU(), torch.nn.Linear(40, 8)).eval()
    loaded = LoadedModel(module=module, path=demo.WEIGHTS, format="safetensors", sha256="0" * 64, size_bytes=0)
    x = torch.randn(16, 5, 24)
    prepared = prepare(loaded, (x[:2],), InputSpec(("x",), (3,)))
    with torch.no_grad():
        prepared.graph(x)
    fp32 = layers.fp32_reference(prepared.graph)
    converted = quantize(prepared)
    changes = layers.bias_correct(fp32, converted, (x,))
    assert [c["name"] for c in changes] == ["0", "2"]


def test_entropy_cannot_collapse_on_an_unbounded_residual_network():
    """Two calibration histograms of a residual CNN trained here on the demo digits (no activation
    after its adds; ``tests/data/entropy-collapse.npz``: min, max, 2048 counts): TensorRT's KL
    threshold clipped a ReLU output of 0..6.57 at 3.36 and a stem output of -3.84..3.21 at +-2.66,
    87 and 15 times the squared error of the MSE range. qcli's entropy keeps within 1.5 times."""
    from pathlib import Path

    data = np.load(Path(__file__).parent / "data" / "entropy-collapse.npz")
    for name, raw_factor in (("tensor4", 50), ("tensor2", 10)):
        lo, hi, counts = data[name][0], data[name][1], data[name][2:]

        def error(r, counts=counts, lo=lo, hi=hi):
            return ranges.quantization_error(counts, lo, hi, *r)

        best = error(ranges.mse_range(counts, lo, hi))
        assert error(ranges.entropy_range(counts, lo, hi)) > raw_factor * best  # the collapse, reproduced
        chosen = ranges.choose_range("entropy", counts, lo, hi)
        assert error(chosen) <= ranges.GUARD_FACTOR * best * (1 + 1e-9)
        assert lo <= chosen[0] < chosen[1] <= hi


def test_a_range_method_much_worse_than_the_default_is_named(tmp_path, monkeypatch, mnist_preprocess):
    """Unguarded KL entropy on the demo puts its worst layer at 16.9 dB where the default gives
    29.5 on the same statistics: convert says so. Guarded (qcli's entropy) it reaches 30.7 dB and
    nothing is said."""
    from qcli import demo
    from qcli.api import convert_model_file
    from qcli.config import Recipe
    from qcli.load import ArchSpec
    from qcli.options import ConvertOptions

    def convert(name: str):
        return convert_model_file(
            demo.WEIGHTS, tmp_path / f"{name}.pt2", calib_dir=demo.CALIB_DIR, arch=ArchSpec.parse(demo.ARCH),
            recipe=Recipe(preprocess=mnist_preprocess),
            options=ConvertOptions(method="entropy", form="program", calibration=CalibrationOptions(limit=64)),
        )  # fmt: skip

    guarded = convert("guarded")
    assert guarded.warnings == [] and min(r["output_sqnr_db"] for r in guarded.per_layer) > 25
    monkeypatch.setattr(ranges, "GUARD_FACTOR", 1e9)  # TensorRT's threshold, as it comes
    raw = convert("raw")
    assert min(r["output_sqnr_db"] for r in raw.per_layer) < 20
    assert any("with --method entropy the worst layer's output SQNR" in w for w in raw.warnings), raw.warnings
