"""Any model, judged honestly: every output compared by name, the output and metric the user
picks (top-1, AUC, MAE, SQNR, their own function), refusals naming the option, warnings.

Models of our own, unlike the demo classifier: a detector-shaped network with box, landmark and
class outputs trained here on MNIST digits pasted into canvases (real data shipped with the demo),
a segmentation-shaped network with nested dict outputs, and an encoder returning [B, T, D]."""

from __future__ import annotations

import json
import random
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_qcli
from models import TokenEncoder, detector_samples, tiny_segmenter, token_encoder, train_detector
from PIL import Image
from safetensors.torch import save_file
from test_ux import validate

from qcli import demo
from qcli.api import convert_model_file
from qcli.artifact import load_program_module
from qcli.data import SampleFolder, infer_input_spec
from qcli.errors import GateFailed, OptionError
from qcli.evaluate import evaluate, named_outputs
from qcli.load import ArchSpec
from qcli.options import CalibrationOptions, ConvertOptions, JudgeOptions, SearchOptions

DETECTOR_ARCH = "models:digit_detector"


def _digits(limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The demo's evaluation digits in a seeded order (every class in each part)."""
    files = sorted(Path(demo.EVAL_DIR).rglob("*.png"))
    random.Random(0).shuffle(files)
    files = files[:limit]
    images = torch.stack([torch.from_numpy(np.asarray(Image.open(f), dtype=np.float32) / 255) for f in files])
    return images, torch.tensor([int(f.parent.name) for f in files])


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The trained detector (state dict), a calibration batch, a labeled evaluation folder of one
    canvas per file (0_nonface/, 1_face/) with the boxes in targets.csv, and its INT8 program."""
    root = tmp_path_factory.mktemp("detector")
    digits, classes = _digits(1000)
    model = train_detector(digits[:800], classes[:800])
    save_file(model.state_dict(), str(root / "det.safetensors"))
    x, y, t = detector_samples(digits[800:], classes[800:], seed=2)
    (root / "calib").mkdir()
    torch.save(x[:64].clone(), root / "calib" / "batch.pt")
    evaluation = root / "eval"
    rows = ["file,x,y,w,h"]
    for i in range(x.shape[0]):
        rel = f"{y[i]}_{'face' if y[i] else 'nonface'}/{i:03d}.pt"
        (evaluation / rel).parent.mkdir(parents=True, exist_ok=True)
        torch.save(x[i].clone(), evaluation / rel)
        rows.append(rel + "," + ",".join(f"{v:.5f}" for v in t[i, :4].tolist()))
    (evaluation / "targets.csv").write_text("\n".join(rows) + "\n")
    out = root / "det-int8.pt2"
    convert_model_file(
        root / "det.safetensors", out, calib_dir=root / "calib", arch=ArchSpec.parse(DETECTOR_ARCH),
        options=ConvertOptions(form="program"),
    )  # fmt: skip
    return {"root": root, "model": root / "det.safetensors", "eval": evaluation, "calib": root / "calib", "int8": out}


def _fp32_detector(files: dict[str, Path]) -> torch.nn.Module:
    from models import digit_detector
    from safetensors.torch import load_file

    model = digit_detector()
    model.load_state_dict(load_file(str(files["model"])))
    return model


def _judge(files: dict[str, Path], judge: JudgeOptions | None = None, folder: Path | None = None):
    model = _fp32_detector(files)
    int8 = load_program_module(files["int8"])
    return evaluate(model, int8, SampleFolder.open(folder or files["eval"]), infer_input_spec(model), judge=judge)


def _auc(scores: list[float], labels: list[int]) -> float:
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def _reference_figures(files: dict[str, Path]) -> dict[str, object]:
    """The figures computed here, independently of qcli.evaluate."""
    model, int8 = _fp32_detector(files), load_program_module(files["int8"])
    folder = SampleFolder.open(files["eval"])
    x = torch.stack([torch.load(f) for f in folder.files])
    labels = [folder.label_of(f) for f in folder.files]
    with torch.no_grad():
        ref, out = model(x), int8(x)
    targets = {
        r.split(",")[0]: [float(v) for v in r.split(",")[1:]]
        for r in (files["eval"] / "targets.csv").read_text().split()[1:]
    }
    t = torch.tensor([targets[f.relative_to(files["eval"]).as_posix()] for f in folder.files])
    return {
        "labels": labels,
        "top1": [100 * float((o[2].argmax(1) == torch.tensor(labels)).float().mean()) for o in (ref, out)],
        "auc": [_auc(o[2].softmax(1)[:, 1].tolist(), labels) for o in (ref, out)],
        "mae": [float((o[0].double() - t.double()).abs().mean()) for o in (ref, out)],
        "sqnr": [10 * np.log10(float((r.double() ** 2).sum() / ((r.double() - q.double()) ** 2).sum())) for r, q in zip(ref, out, strict=True)],
    }  # fmt: skip


def test_named_outputs_flatten_tuples_dicts_and_nesting():
    a, b = torch.zeros(1), torch.ones(1)
    assert [n for n, _ in named_outputs(a)] == ["output"]
    assert [n for n, _ in named_outputs((a, {"logits": b, "aux": [a, None]}))] == ["0", "1.logits", "1.aux.0"]
    assert [n for n, _ in named_outputs({"pred_boxes": a, "scores": b})] == ["pred_boxes", "scores"]


def test_detector_every_output_compared_and_default_is_fidelity_not_top1_of_boxes(detector):
    acc = _judge(detector)
    want = _reference_figures(detector)
    assert [(o.name, o.shape) for o in acc.outputs] == [("0", [4]), ("1", [10]), ("2", [2])]
    # three outputs and labels: no top-1 over box coordinates; the worst output's SQNR decides
    assert acc.fp32_top1 is None and acc.top1_agreement is None
    assert acc.score.metric == "sqnr" and acc.score.output is None
    assert [o.sqnr_db for o in acc.outputs] == pytest.approx(want["sqnr"], abs=1e-3)
    assert acc.sqnr_db == pytest.approx(min(want["sqnr"]), abs=1e-3)
    assert acc.drop == pytest.approx(100 * 10 ** (-min(want["sqnr"]) / 10), rel=1e-3)
    assert acc.outputs[2].top1_agreement is not None  # [B, 2] class scores: agreement is reported
    assert all(o.max_abs_error > 0 for o in acc.outputs)


def test_detector_judged_by_the_class_output_top1_and_auc(detector):
    want = _reference_figures(detector)
    top1 = _judge(detector, JudgeOptions("2", "top1"))
    assert (top1.fp32_top1, top1.int8_top1) == pytest.approx(tuple(want["top1"]))
    assert want["top1"][0] > 85  # a trained model: the figures mean something
    assert top1.score.drop == pytest.approx(want["top1"][0] - want["top1"][1])
    auc = _judge(detector, JudgeOptions("2", "auc"))
    assert (auc.score.fp32, auc.score.int8) == pytest.approx(tuple(want["auc"]))
    assert auc.score.drop == pytest.approx(100 * (want["auc"][0] - want["auc"][1]))
    by_name = _judge(detector, JudgeOptions("-1"))  # an index from the end; a [B, C] output: top-1
    assert by_name.score.metric == "top1" and by_name.score.output == "2"


def test_detector_box_regression_mae_from_targets_file(detector):
    want = _reference_figures(detector)
    acc = _judge(detector, JudgeOptions("0", "mae"))
    assert (acc.score.fp32, acc.score.int8) == pytest.approx(tuple(want["mae"]), rel=1e-5)
    assert acc.score.higher_is_better is False and acc.score.drop == pytest.approx(want["mae"][1] - want["mae"][0])
    assert want["mae"][0] < 0.04  # a constant box is off by 0.076: the regression head was trained


@pytest.mark.parametrize(
    ("judge", "message"),
    [
        (JudgeOptions(metric="top1"), r"metric top1 needs one output and the model returns 3 \(0, 1, 2\); name one with output_name"),
        (JudgeOptions("1", "auc"), r"auc needs a score per sample .* output '1' has shape \[batch, 10\]"),
        (JudgeOptions("scores"), r"output_name 'scores' is not an output of the model; its outputs are 0, 1, 2"),
        (JudgeOptions("2", "spearman"), r"spearman needs a pairs.csv"),
    ],
)  # fmt: skip
def test_what_cannot_be_judged_is_refused_naming_the_option(detector, judge, message):
    with pytest.raises(OptionError, match=message):
        _judge(detector, judge)


def test_more_classes_than_columns_is_refused(detector, tmp_path):
    # ten digit classes judged on the detector's two-column class output
    folder = tmp_path / "ten"
    for k in range(10):
        (folder / str(k)).mkdir(parents=True)
        torch.save(torch.rand(1, 32, 32), folder / str(k) / "a.pt")
    with pytest.raises(OptionError, match=r"has 10 classes but output '2' has 2 columns; pick the class output"):
        _judge(detector, JudgeOptions("2", "top1"), folder)


def test_fp32_near_chance_warns(detector, tmp_path):
    # labels shuffled against the images: FP32 itself is at chance
    folder = tmp_path / "shuffled"
    for rel in [p.relative_to(detector["eval"]) for p in detector["eval"].rglob("*.pt")]:
        other = ("0_nonface" if rel.parts[0].startswith("1") else "1_face") if int(rel.stem) % 2 else rel.parts[0]
        (folder / other).mkdir(parents=True, exist_ok=True)
        (folder / other / rel.name).write_bytes((detector["eval"] / rel).read_bytes())
    acc = _judge(detector, JudgeOptions("2", "top1"), folder)
    assert acc.fp32_top1 < 60
    assert any("near chance" in w for w in acc.warnings)


def test_detector_gates_through_the_cli_pass_and_fail(detector, tmp_path):
    files = detector
    common = ["convert", files["model"], "--arch", DETECTOR_ARCH, "--calib-dir", files["calib"], "--form", "program",
              "--eval-dir", files["eval"], "--format", "json", "--output-name", "2"]  # fmt: skip
    passed = run_qcli(*common, "--metric", "auc", "--max-drop", "1", "-o", tmp_path / "a.pt2")
    assert passed.returncode == 0, passed.stderr
    search = json.loads(passed.stdout)["search"]
    validate(json.loads(passed.stdout))
    assert search["metric"] == "auc" and search["met"] and search["best"]["int8_metric"] > 0.9
    # an SQNR of 60 dB (0.0001 points of noise) is out of INT8's reach with one trial
    failed = run_qcli(
        *common, "--metric", "sqnr", "--max-drop", "0.0001", "--max-trials", "1", "-o", tmp_path / "b.pt2"
    )
    assert failed.returncode == 3, failed.stderr
    assert "--max-drop 0.0001 not met" in failed.stderr and (tmp_path / "b.pt2").exists()


CUSTOM = """
import torch

def box_iou(reference, outputs, labels, files):
    '''Mean IoU of the INT8 boxes with FP32's (x, y, w, h).'''
    a, b = reference["0"], outputs["0"]
    x0 = torch.maximum(a[:, 0], b[:, 0]); y0 = torch.maximum(a[:, 1], b[:, 1])
    x1 = torch.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2]); y1 = torch.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3])
    inter = (x1 - x0).clamp(min=0) * (y1 - y0).clamp(min=0)
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    return float((inter / union).mean())

def face_errors(reference, outputs, labels, files):
    '''Share of faces INT8 misses, in percent (lower is better).'''
    return 100 * float(((outputs["2"].argmax(1) != labels) & (labels == 1)).float().mean())
face_errors.higher_is_better = False

def broken(reference, outputs, labels, files):
    return "high"
"""


def test_custom_metric_module_gates_pass_and_fail(detector, tmp_path, monkeypatch):
    (tmp_path / "mymetrics.py").write_text(textwrap.dedent(CUSTOM))
    monkeypatch.chdir(tmp_path)
    acc = _judge(detector, JudgeOptions(metric="mymetrics:box_iou"))
    assert acc.score.metric == "mymetrics:box_iou" and acc.score.fp32 == pytest.approx(1.0)
    assert 0.8 < acc.score.int8 < 1.0 and acc.drop == pytest.approx(1.0 - acc.score.int8)
    errors = _judge(detector, JudgeOptions(metric="mymetrics:face_errors"))
    assert errors.score.higher_is_better is False and errors.drop == pytest.approx(
        errors.score.int8 - errors.score.fp32
    )
    with pytest.raises(Exception, match=r"--metric mymetrics:broken failed: ValueError"):
        _judge(detector, JudgeOptions(metric="mymetrics:broken"))
    with pytest.raises(OptionError, match=r"metric 'mymetrics:nothing': 'mymetrics' has no attribute 'nothing'"):
        _judge(detector, JudgeOptions(metric="mymetrics:nothing"))
    search = SearchOptions(max_drop=1.0, eval_dir=detector["eval"], judge=JudgeOptions(metric="mymetrics:box_iou"))
    report = convert_model_file(detector["model"], tmp_path / "ok.pt2", calib_dir=detector["calib"],
                                arch=ArchSpec.parse(DETECTOR_ARCH), options=ConvertOptions(form="program", search=search))  # fmt: skip
    assert report.search["met"] and report.search["metric"] == "mymetrics:box_iou"
    strict = SearchOptions(
        max_drop=0.0, eval_dir=detector["eval"], max_trials=1, judge=JudgeOptions(metric="mymetrics:box_iou")
    )
    with pytest.raises(GateFailed) as failed:
        convert_model_file(detector["model"], tmp_path / "strict.pt2", calib_dir=detector["calib"],
                           arch=ArchSpec.parse(DETECTOR_ARCH), options=ConvertOptions(form="program", search=strict))  # fmt: skip
    assert failed.value.exit_code == 3


def _segmenter_files(root: Path) -> tuple[Path, Path]:
    save_file(tiny_segmenter().state_dict(), str(root / "seg.safetensors"))
    (root / "calib").mkdir()
    torch.save(torch.rand(48, 1, 24, 24, generator=torch.Generator().manual_seed(3)), root / "calib" / "b.pt")
    return root / "seg.safetensors", root / "calib"


def test_segmentation_outputs_judged_on_fidelity_with_gates(tmp_path):
    model_path, calib = _segmenter_files(tmp_path)
    arch = ArchSpec.parse("models:tiny_segmenter")
    ok = SearchOptions(max_drop=1.0, eval_dir=calib)  # SQNR of 20 dB or better on every output
    report = convert_model_file(model_path, tmp_path / "seg.pt2", calib_dir=calib, arch=arch,
                                options=ConvertOptions(form="program", search=ok))  # fmt: skip
    assert report.search["met"] and report.search["metric"] == "sqnr"
    model = tiny_segmenter()
    acc = evaluate(model, load_program_module(tmp_path / "seg.pt2"), SampleFolder.open(calib), infer_input_spec(model))
    assert [(o.name, o.shape) for o in acc.outputs] == [("mask", [3, 24, 24]), ("aux.depth", [1, 24, 24])]
    assert all(o.top1_agreement is None for o in acc.outputs) and acc.top1_agreement is None
    assert acc.sqnr_db == min(o.sqnr_db for o in acc.outputs) > 20
    strict = SearchOptions(max_drop=1e-6, eval_dir=calib, max_trials=1)
    with pytest.raises(GateFailed, match="max-drop 1e-06 not met"):
        convert_model_file(model_path, tmp_path / "strict.pt2", calib_dir=calib, arch=arch,
                           options=ConvertOptions(form="program", search=strict))  # fmt: skip


def test_encoder_hidden_states_judged_on_fidelity_never_top1(tmp_path):
    model: TokenEncoder = token_encoder()
    save_file(model.state_dict(), str(tmp_path / "enc.safetensors"))
    gen = torch.Generator().manual_seed(5)
    (tmp_path / "calib").mkdir()
    for i in range(8):
        ids = torch.randint(1, 1000, (4, 16), generator=gen)
        save_file(
            {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, str(tmp_path / "calib" / f"{i}.safetensors")
        )
    arch = ArchSpec.parse("models:token_encoder")
    ok = SearchOptions(max_drop=1.0, eval_dir=tmp_path / "calib")
    for mode in ("dynamic", "static"):
        options = ConvertOptions(calibration=CalibrationOptions(mode=mode), form="program", search=ok)
        report = convert_model_file(tmp_path / "enc.safetensors", tmp_path / f"{mode}.pt2", calib_dir=tmp_path / "calib",
                                    arch=arch, options=options, force=True)  # fmt: skip
        assert report.search["met"], report.search
        acc = evaluate(model, load_program_module(tmp_path / f"{mode}.pt2"), SampleFolder.open(tmp_path / "calib"),
                       infer_input_spec(model))  # fmt: skip
        names = [(o.name, o.shape, o.top1_agreement is None) for o in acc.outputs]
        assert names == [("last_hidden_state", [16, 64], True), ("pooler_output", [64], False)]
        assert acc.score.metric == "sqnr" and acc.cosine > 0.99
    strict = SearchOptions(max_drop=1e-6, eval_dir=tmp_path / "calib", max_trials=1)
    with pytest.raises(GateFailed):
        convert_model_file(tmp_path / "enc.safetensors", tmp_path / "strict.pt2", calib_dir=tmp_path / "calib",
                           arch=arch, options=ConvertOptions(form="program", search=strict))  # fmt: skip


def test_bench_shows_every_output_and_judges_the_chosen_one(detector, tmp_path):
    files = detector
    proc = run_qcli(
        "bench", files["model"], files["int8"], "--arch", DETECTOR_ARCH, "--eval-dir", files["eval"],
        "--batch-sizes", "1", "--runs", "3", "--warmup", "1", "--time-budget", "1", "--output-name", "2",
        "--metric", "auc", "--max-drop", "1", "--format", "markdown", "-o", tmp_path / "b.json", "--report", tmp_path / "b.html",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Fidelity per output" in proc.stdout and "accuracy judged by auc on output '2'" in proc.stdout
    report = json.loads((tmp_path / "b.json").read_text())
    validate(report)
    acc = report["accuracy"]
    assert [o["name"] for o in acc["outputs"]] == ["0", "1", "2"]
    assert acc["score"]["metric"] == "auc" and acc["score"]["output"] == "2" and acc["fp32_top1"] > 85
    assert report["fp32_compiled_form"] == "program"  # a program artifact against FP32 compiled alike
    html = (tmp_path / "b.html").read_text()
    assert "SQNR per output" in html and "accuracy judged by auc" in html


def test_preprocessing_unlike_the_calibration_warns(tmp_path):
    """The demo calibrated with its recipe, then searched with none: the evaluation reads the
    images otherwise, and the report says so (the same check runs in bench against the artifact)."""
    from qcli.api import calibrate_model, preprocess_warning
    from qcli.config import Recipe, load_recipe

    recipe = load_recipe(Path(__file__).resolve().parent.parent / "configs" / "mnist.toml")
    arch = ArchSpec.parse(demo.ARCH)
    calibrate_model(demo.WEIGHTS, demo.CALIB_DIR, tmp_path / "s.safetensors", arch=arch, recipe=recipe,
                    options=CalibrationOptions(limit=32))  # fmt: skip
    folder = SampleFolder.open(demo.EVAL_DIR)
    recorded = {"preprocess": recipe.preprocess.to_dict()}
    assert preprocess_warning(recorded, recipe, folder, "calibration") is None
    warning = preprocess_warning(recorded, Recipe(), folder, "calibration")
    assert (
        warning is not None
        and "preprocessed differently from calibration (mean [0.1307] -> [0.0]" in warning
        and "--config" in warning
    )
    search = SearchOptions(max_drop=100.0, eval_dir=demo.EVAL_DIR, eval_limit=64)
    report = convert_model_file(demo.WEIGHTS, tmp_path / "x.pt2", stats=tmp_path / "s.safetensors", arch=arch,
                                options=ConvertOptions(form="program", search=search))  # fmt: skip
    assert any("preprocessed differently from calibration" in w for w in report.warnings), report.warnings
