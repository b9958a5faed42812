"""Transformer encoders: dynamic (per-token) and weight-only INT8, static INT8 for comparison,
samples with several named inputs of varying sequence length, and embedding fidelity with
scored pairs (Spearman)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_qcli
from safetensors.torch import save_file
from test_ux import validate

from qcli import dynamic, metrics
from qcli.demo.model import TextEncoder

KWARGS = {"vocab": 500, "d_model": 64, "heads": 4, "layers": 2, "ffn": 128, "max_len": 64}
ARCH = ["--arch", "qcli.demo.model:TextEncoder", "--arch-kwargs", json.dumps(KWARGS)]


def small_encoder() -> TextEncoder:
    torch.manual_seed(0)
    return TextEncoder(**KWARGS).eval()


def tokens(gen: torch.Generator, length: int, pad: int = 0) -> dict[str, torch.Tensor]:
    ids = torch.randint(1, KWARGS["vocab"], (length,), generator=gen)
    mask = torch.ones(length, dtype=torch.int64)
    if pad:
        ids[-pad:], mask[-pad:] = 0, 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def encoder_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An encoder state dict; calibration files of lengths 16, 24 and 32 (some padded, some holding
    a batch of samples); an evaluation folder of sentences and edited copies with scored pairs."""
    root = tmp_path_factory.mktemp("encoder")
    save_file(small_encoder().state_dict(), str(root / "enc.safetensors"))
    gen = torch.Generator().manual_seed(1)
    calib = root / "calib"
    calib.mkdir()
    for i in range(18):
        save_file(tokens(gen, (16, 24, 32)[i % 3], pad=i % 4), str(calib / f"{i:02d}.safetensors"))
    batch = [tokens(gen, 24) for _ in range(4)]
    save_file({k: torch.stack([b[k] for b in batch]) for k in batch[0]}, str(calib / "batch.safetensors"))
    evaluation = root / "eval"
    evaluation.mkdir()
    rows = ["a,b,score"]
    for i in range(8):
        base = tokens(gen, 32)
        save_file(base, str(evaluation / f"s{i}.safetensors"))
        for j, keep in enumerate((0.9, 0.5, 0.1)):
            edited = {k: v.clone() for k, v in base.items()}
            changed = torch.randperm(32, generator=gen)[: int(32 * (1 - keep))]
            edited["input_ids"][changed] = torch.randint(1, KWARGS["vocab"], (len(changed),), generator=gen)
            save_file(edited, str(evaluation / f"s{i}-{j}.safetensors"))
            rows.append(f"s{i}.safetensors,s{i}-{j}.safetensors,{keep}")
    (evaluation / "pairs.csv").write_text("\n".join(rows) + "\n")
    return root


def test_weight_int8_is_per_channel_symmetric_and_handles_zero_rows():
    w = torch.randn(6, 16)
    w[2] = 0.0
    q, scale = dynamic.weight_int8(w)
    assert q.dtype == torch.int8 and scale.shape == (6,)
    assert int(q.abs().max()) == 127 and bool((q[2] == 0).all()) and float(scale[2]) > 0
    assert float((q.float() * scale[:, None] - w).abs().max()) <= float(scale.max()) / 2 + 1e-7


def test_dynamic_kernel_quantizes_each_token_on_its_own():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 32, generator=gen)
    x[0, 1] *= 1000.0  # an outlier token: per-token scales keep the other tokens precise
    x[1, 2] = 0.0
    w, b = torch.randn(8, 32, generator=gen), torch.randn(8, generator=gen)
    q, scale = dynamic.weight_int8(w)
    got = dynamic.int8_dynamic_linear(x, q.t().contiguous(), scale, b)
    want = torch.nn.functional.linear(x, w, b)
    assert got.shape == want.shape
    cos = metrics.cosine_per_sample(want.reshape(-1, 8), got.reshape(-1, 8))
    assert float(cos.min()) > 0.999
    torch.testing.assert_close(got[1, 2], b)  # a token of zeros gives exactly the bias
    wo = dynamic.int8_weight_only_linear(x, q, scale, b)
    assert float(metrics.cosine_per_sample(want.reshape(-1, 8), wo.reshape(-1, 8)).min()) > 0.999


def test_spearman_ranks_ties_and_undefined_cases():
    assert metrics.ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]
    assert metrics.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert metrics.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert metrics.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert metrics.spearman([1, 2, 3], [5, 5, 5]) is None
    assert metrics.spearman([1.0], [2.0]) is None


@pytest.mark.parametrize("mode", ["dynamic", "weight-only", "static"])
def test_encoder_quantizes_in_every_mode_and_keeps_embeddings(tmp_path, encoder_files, mode):
    from qcli.artifact import load_artifact
    from qcli.data import SampleFolder, infer_input_spec
    from qcli.evaluate import evaluate

    root = encoder_files
    out = tmp_path / f"{mode}.pt2"
    proc = run_qcli(
        "convert", root / "enc.safetensors", *ARCH, "--calib-dir", root / "calib", "--mode", mode,
        "--form", "program", "-o", out, "--format", "json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    validate(report)  # the schema knows every mode
    proc = run_qcli(
        "calibrate", root / "enc.safetensors", root / "calib", *ARCH, "--mode", mode, "-o", tmp_path / "s.safetensors",
        "--format", "json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    validate(json.loads(proc.stdout))
    proc = run_qcli("inspect", out, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    validate(json.loads(proc.stdout))
    assert report["mode"] == mode and report["quantized_layers"] == 12  # 6 linears per layer, 2 layers
    assert report["calibration_samples"] == 22
    model = small_encoder()
    acc = evaluate(model, load_artifact(out).run, SampleFolder.open(root / "eval"), infer_input_spec(model))
    assert acc.samples == 32 and acc.pairs == 24 and acc.cosine > 0.99
    # edits that keep more tokens score higher: a working embedding ranks the pairs by it
    assert acc.fp32_spearman > 0.5 and abs(acc.int8_spearman - acc.fp32_spearman) < 0.05
    assert acc.drop == pytest.approx(100 * (acc.fp32_spearman - acc.int8_spearman))
    if mode != "static":  # bench once (13 s); the dynamic program's lengths have a test of their own
        return
    # bench on evaluation files of one sequence each, every one its own length: batches of one row
    # (the FP32 export from a one-row example failed: "Constraints violated (batch)")
    single = tmp_path / "single"
    single.mkdir()
    gen = torch.Generator().manual_seed(9)
    for length in (16, 24, 32):
        save_file(tokens(gen, length), str(single / f"{length}.safetensors"))
    proc = run_qcli("bench", root / "enc.safetensors", out, *ARCH, "--eval-dir", single, "--batch-sizes", "1",
                    "--runs", "3", "--warmup", "1", "--time-budget", "1", "--format", "json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    bench = json.loads(proc.stdout)
    assert bench["accuracy"]["samples"] == 3 and bench["accuracy"]["cosine"] > 0.99


def test_bench_reports_embedding_fidelity_and_spearman(tmp_path, encoder_files):
    root = encoder_files
    proc = run_qcli("bench", root / "enc.safetensors", *ARCH, "--calib-dir", root / "calib", "--eval-dir", root / "eval",
                    "--batch-sizes", "2", "--runs", "2", "--time-budget", "1", "--format", "markdown", "--max-drop", "5",
                    "-o", tmp_path / "bench.json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Spearman (24 pairs)" in proc.stdout
    report = json.loads((tmp_path / "bench.json").read_text())
    acc = report["accuracy"]
    assert acc["pairs"] == 24 and acc["cosine"] > 0.99 and acc["fp32_spearman"] > 0.5
    assert report["gates"]["passed"]


def test_dynamic_artifact_runs_lengths_seen_in_calibration_and_refuses_others(tmp_path, encoder_files):
    from qcli.artifact import load_artifact
    from qcli.errors import ArtifactError

    root = encoder_files
    out = tmp_path / "dyn.pt2"
    proc = run_qcli("convert", root / "enc.safetensors", *ARCH, "--calib-dir", root / "calib", "--mode", "dynamic",
                    "--form", "program", "-o", out)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    artifact = load_artifact(out)
    assert [i["shape"] for i in artifact.metadata["inputs"]] == [["batch", "seq"], ["batch", "seq"]]
    assert artifact.metadata["calibration"]["sequence_lengths"] == [16, 32]
    assert all(la["quantized"] and la["weight_dtype"] == "int8" for la in artifact.metadata["layers"])
    model, gen = small_encoder(), torch.Generator().manual_seed(7)
    for length in (16, 20, 32):
        batch = [tokens(gen, length, pad=2) for _ in range(3)]
        ids, mask = (torch.stack([b[k] for b in batch]) for k in ("input_ids", "attention_mask"))
        with torch.no_grad():
            want, got = model(ids, mask), artifact.run(ids, mask)
        assert float(metrics.cosine_per_sample(want, got).min()) > 0.99
    ids = torch.ones(2, 40, dtype=torch.int64)
    with pytest.raises(ArtifactError, match=r"input 'input_ids' takes shape \[batch, seq 16..32\] but got \[2, 40\]"):
        artifact.run(ids, torch.ones_like(ids))


def test_exclude_keeps_a_linear_fp32_in_dynamic_mode(tmp_path, encoder_files):
    root = encoder_files
    proc = run_qcli("convert", root / "enc.safetensors", *ARCH, "--calib-dir", root / "calib", "--mode", "weight-only",
                    "--exclude", "layers.1.ff*", "--form", "program", "-o", tmp_path / "wo.pt2", "--format", "json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    layers = {la["name"]: la["quantized"] for la in json.loads(proc.stdout)["layers"]}
    assert layers["layers.1.ff1"] is False and layers["layers.1.ff2"] is False and layers["layers.1.q"] is True


def test_pairs_file_errors_are_one_line(tmp_path, encoder_files):
    import shutil

    root = encoder_files
    evaluation = tmp_path / "eval"
    shutil.copytree(root / "eval", evaluation)
    (evaluation / "pairs.csv").write_text(
        "a,b,score\ns0.safetensors,missing.safetensors,1\ns1.safetensors,s1-0.safetensors,2\n"
    )
    proc = run_qcli("bench", root / "enc.safetensors", *ARCH, "--calib-dir", root / "calib", "--eval-dir", evaluation,
                    "--batch-sizes", "1", "--runs", "1", "--time-budget", "1")  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"qcli: error: '{evaluation / 'pairs.csv'}' line 2: 'missing.safetensors' is not a sample file of the folder"
    )


def _package_calls(path: Path) -> list[str]:
    """The ATen/oneDNN functions the package's compiled wrapper calls, one entry per call site."""
    import re
    import zipfile

    with zipfile.ZipFile(path) as zf:
        code = "".join(zf.read(n).decode() for n in zf.namelist() if n.endswith("wrapper.cpp"))
    return re.findall(r"aoti_torch_cpu_+(\w+?)\(", code)


def test_dynamic_int8_without_data_from_input_shapes(tmp_path, encoder_files):
    """--mode dynamic needs only the inputs' shapes: from --input-shape, from an exported program's
    own record, or from a statistics file of any mode."""
    from qcli.artifact import load_artifact

    root = encoder_files
    out = tmp_path / "dyn.pt2"
    shapes = "input_ids:1x24:int64,attention_mask:1x24:int64"
    proc = run_qcli("convert", root / "enc.safetensors", *ARCH, "--mode", "dynamic", "--input-shape", shapes,
                    "--form", "both", "--package-batch-sizes", "1", "-o", out, "--format", "json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    validate(report)
    assert report["quantized_layers"] == 12 and report["per_layer"] is None  # no samples: no per-layer report
    # what the package calls for each rewritten linear: oneDNN's INT8 linear, never the generic
    # _int_mm (a slow package must not come back unnoticed; tests do not time, they read the code)
    calls = _package_calls(out)
    assert sum("qlinear_pointwise" in c for c in calls) == 12 and not any("int_mm" in c for c in calls), calls
    model, gen = small_encoder(), torch.Generator().manual_seed(3)
    for path, lengths in ((out, (24,)), (tmp_path / "dyn.program.pt2", (24, 40))):  # the package: its one length
        artifact = load_artifact(path)
        assert artifact.metadata["calibration"]["input_shapes"][0] == {
            "name": "input_ids",
            "shape": ["batch", 24],
            "dtype": "int64",
        }
        for length in lengths:
            ids = torch.randint(1, KWARGS["vocab"], (1, length), generator=gen)
            with torch.no_grad():
                want, got = model(ids, torch.ones_like(ids)), artifact.run(ids, torch.ones_like(ids))
            assert float(metrics.cosine_per_sample(want, got).min()) > 0.99
    # an exported program records its input shapes; a static statistics file serves dynamic INT8
    ids, batch = torch.ones(2, 16, dtype=torch.int64), torch.export.Dim("batch")
    program = torch.export.export(model, (ids, ids), dynamic_shapes=({0: batch}, {0: batch}))
    torch.export.save(program, str(tmp_path / "enc.pt2"))
    proc = run_qcli(
        "convert", tmp_path / "enc.pt2", "--mode", "weight-only", "--form", "program", "-o", tmp_path / "wo.pt2"
    )
    assert proc.returncode == 0, proc.stderr
    proc = run_qcli(
        "calibrate", root / "enc.safetensors", root / "calib", *ARCH, "-o", tmp_path / "static.safetensors", "-q"
    )
    assert proc.returncode == 0, proc.stderr
    proc = run_qcli("convert", root / "enc.safetensors", *ARCH, "--mode", "dynamic", "--stats", tmp_path / "static.safetensors",
                    "--form", "program", "-o", tmp_path / "from-stats.pt2", "--format", "json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["per_layer"]  # the statistics' samples give the per-layer report


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mode", "static", "--input-shape", "input_ids:1x24:int64"], "input-shape is for --mode dynamic and weight-only"),
        (["--mode", "dynamic"], "does not record its input shapes: give them with --input-shape"),
        (["--mode", "dynamic", "--input-shape", "ids:1x24:int64"], "names 'ids', which is not an input of the model"),
        (["--mode", "dynamic", "--input-shape", "input_ids:1x24:int65"], "must be one of float32"),
        (["--mode", "dynamic", "--input-shape", "1xx24"], "is not NAME:SHAPE[:DTYPE]"),
        (["--mode", "static"], "static INT8 needs calibration data"),
    ],
)  # fmt: skip
def test_input_shape_mistakes_are_one_line(tmp_path, encoder_files, args, message):
    proc = run_qcli("convert", encoder_files / "enc.safetensors", *ARCH, *args, "-o", tmp_path / "x.pt2")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "x.pt2").exists()


def test_dynamic_per_layer_report_and_search_fall_back_a_layer(tmp_path):
    """The per-layer report and the --max-drop search work on dynamic INT8: an input with one
    feature 300 times the others costs the per-token scale its precision, and the search keeps
    the worst layer in FP32 to meet a 40 dB budget."""
    from models import residual_mlp_files

    from qcli.api import convert_model_file
    from qcli.load import ArchSpec
    from qcli.options import CalibrationOptions, ConvertOptions, InputShape, SearchOptions

    residual_mlp_files(tmp_path, outlier_scale=300)
    search = SearchOptions(max_drop=0.02, eval_dir=tmp_path / "eval")  # SQNR of 37 dB or better
    options = ConvertOptions(calibration=CalibrationOptions(mode="dynamic"), form="program", search=search)
    report = convert_model_file(tmp_path / "mlp.pt", tmp_path / "d.pt2", calib_dir=tmp_path / "calib",
                                arch=ArchSpec.parse("models:residual_mlp"), options=options)  # fmt: skip
    assert {row["name"] for row in report.per_layer} == {"fc1", "fc2"}  # head went back to FP32
    trials = report.search["trials"]
    assert report.search["met"] and trials[0]["drop"] > 0.02 and len(trials) >= 2
    assert report.search["best"]["excluded"] and report.search["ranking"][0] in report.search["best"]["excluded"]
    # from the input shape alone, the evaluation samples rank the layers: the same fall-back
    shapes = InputShape.parse_all("1x64")
    options = ConvertOptions(calibration=CalibrationOptions(mode="dynamic"), form="program", search=search,
                             input_shape=shapes)  # fmt: skip
    no_data = convert_model_file(tmp_path / "mlp.pt", tmp_path / "e.pt2", arch=ArchSpec.parse("models:residual_mlp"),
                                 options=options)  # fmt: skip
    assert no_data.search["met"] and no_data.search["best"]["excluded"] == report.search["best"]["excluded"]


def test_integer_arithmetic_in_the_graph_gets_no_observer(tmp_path):
    """RoBERTa-style position ids (integer cumsum and mul of the token ids): static calibration
    crashed with '"histogram_cpu" not implemented for 'Int'' on the observer the X86 quantizer put
    on the integer mul; those tensors are not quantized now, and the model converts."""
    from models import position_from_ids

    from qcli.api import convert_model_file
    from qcli.artifact import load_program_module
    from qcli.load import ArchSpec
    from qcli.options import ConvertOptions

    save_file(position_from_ids().state_dict(), str(tmp_path / "p.safetensors"))
    ids = torch.randint(2, 100, (16, 12), generator=torch.Generator().manual_seed(0))
    ids[:, -3:] = 1  # padding at the end, as a tokenizer leaves it
    (tmp_path / "calib").mkdir()
    torch.save({"input_ids": ids}, tmp_path / "calib" / "a.pt")
    report = convert_model_file(tmp_path / "p.safetensors", tmp_path / "p.pt2", calib_dir=tmp_path / "calib",
                                arch=ArchSpec.parse("models:position_from_ids"), options=ConvertOptions(form="program"))  # fmt: skip
    assert report.quantized_layers == 2
    with torch.no_grad():
        want, got = position_from_ids()(ids), load_program_module(tmp_path / "p.pt2")(ids)
    assert float(metrics.cosine_per_sample(want, got).min()) > 0.99


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_linear_layers_in_other_clothes_are_quantized(tmp_path, mode):
    """GPT-2's Conv1D (addmm on a [in, out] weight) and x @ W on a parameter are linear layers:
    counted, quantized and named (a GPT-2 reported "1 of 1 conv/linear layers INT8")."""
    from models import gpt2_block

    from qcli.api import convert_model_file
    from qcli.artifact import load_program_module
    from qcli.load import ArchSpec
    from qcli.options import CalibrationOptions, ConvertOptions

    save_file(gpt2_block().state_dict(), str(tmp_path / "g.safetensors"))
    x = torch.randn(32, 10, 32, generator=torch.Generator().manual_seed(0))
    (tmp_path / "calib").mkdir()
    torch.save(x, tmp_path / "calib" / "a.pt")
    options = ConvertOptions(calibration=CalibrationOptions(mode=mode), form="program")
    report = convert_model_file(tmp_path / "g.safetensors", tmp_path / "g.pt2", calib_dir=tmp_path / "calib",
                                arch=ArchSpec.parse("models:gpt2_block"), options=options)  # fmt: skip
    assert [(la.name, la.quantized) for la in report.layers] == [
        ("c_fc", True),
        ("c_proj", True),
        ("head_weight", True),
    ]
    with torch.no_grad():
        want, got = gpt2_block()(x), load_program_module(tmp_path / "g.pt2")(x)
    assert float(metrics.cosine_per_sample(want, got).min()) > 0.99


def test_a_computed_and_dropped_branch_does_not_break_static_int8():
    """RoBERTa behind a wrapper that returns only its hidden states: export keeps the pooler
    (Linear, Tanh) whose output nobody uses, and the X86 quantizer failed on that partition with
    IndexError (seen with transformers' RobertaModel; 12 of 12 layers INT8 once removed). Here a
    branch is left dead by hand in an exported graph, and must be gone before annotation."""
    from models import unused_pooler

    from qcli import engine

    x = torch.randn(2, 8, 32)
    gm = torch.export.export(unused_pooler().model, (x,)).module()  # returns (hidden, pooled)
    output = next(n for n in gm.graph.nodes if n.op == "output")
    hidden, pooled = output.args[0]
    output.args = ((hidden, hidden),)  # pooled is computed and dropped now
    assert not pooled.users
    prepared = engine.prepare_pt2e(gm)
    assert not any(n.target is torch.ops.aten.tanh.default for n in prepared.graph.nodes)
