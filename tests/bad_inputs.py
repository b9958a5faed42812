"""The corpus of bad inputs: each case builds its files, runs one qcli command, and states the answer.

Every case must end with exactly one line on stderr starting ``qcli: error:``, the documented exit
code, no traceback, and no new file outside what the case itself made. ``tests/test_bad_inputs.py``
checks that; running this file prints the table of messages that ``docs/bad-inputs.md`` holds::

    python tests/bad_inputs.py > docs/bad-inputs.md

Cases run in-process through ``qcli.cli.app.run`` (one torch import for the whole corpus), each in
its own working folder so that the paths in the messages are short and the same on every machine.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(TESTS))

from qcli import demo  # noqa: E402

ARCH = ["--arch", demo.ARCH]
MARKER = "pwned.txt"


@dataclass(frozen=True)
class Case:
    name: str
    setup: Callable[[Path], list[str]]  # makes the files in the working folder, returns argv
    exit_code: int
    needle: str  # must appear in the error line


@dataclass
class Outcome:
    case: Case
    argv: list[str]
    exit_code: int
    stdout: str
    stderr: str
    new_files: list[str]

    @property
    def line(self) -> str:
        return self.stderr.strip()


# --- builders: small, each writes only into the working folder ---------------------------------


def weights(d: Path) -> str:
    shutil.copy(demo.WEIGHTS, d / "digits.safetensors")
    return "digits.safetensors"


def calib(d: Path, n: int = 8) -> str:
    (d / "calib").mkdir(exist_ok=True)
    for path in sorted(demo.CALIB_DIR.iterdir())[:n]:
        shutil.copy(path, d / "calib" / path.name)
    return "calib"


def calibrate_args(d: Path, model: str | None = None, calib_dir: str | None = None, *extra: str) -> list[str]:
    model = model or weights(d)
    calib_dir = calib_dir or calib(d)
    return ["calibrate", model, calib_dir, "-o", "stats.safetensors", *ARCH, *extra]


def model_file(content: bytes) -> Callable[[Path], list[str]]:
    def setup(d: Path) -> list[str]:
        (d / "model.pt").write_bytes(content)
        return ["inspect", "model.pt"]

    return setup


def truncated_torchscript(d: Path) -> list[str]:
    data = demo.TORCHSCRIPT.read_bytes()
    (d / "model.pt").write_bytes(data[: len(data) // 2])
    return ["inspect", "model.pt"]


def foreign_zip(d: Path) -> list[str]:
    with zipfile.ZipFile(d / "model.pt", "w") as z:
        z.writestr("readme.txt", "a zip, but not a model")
    return ["inspect", "model.pt"]


class _Evil:
    def __reduce__(self):
        return (open, (MARKER, "w"))


def evil_pickle(d: Path) -> list[str]:
    with open(d / "model.pt", "wb") as f:
        pickle.dump({"weight": _Evil()}, f)
    return ["inspect", "model.pt", *ARCH]


def evil_torch_save(d: Path) -> list[str]:
    torch.save({"weight": _Evil()}, d / "model.pt")
    return ["inspect", "model.pt", *ARCH]


def tamper_program(src: Path, dst: Path) -> None:
    """Copy an exported program, with its first weight turned into a pickle that opens MARKER when
    torch.export.load unpickles it (torch 2.13 loads ``use_pickle`` weights with
    weights_only=False)."""
    import json

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        config_name = next(n for n in zin.namelist() if n.endswith("weights_config.json"))
        config = json.loads(zin.read(config_name))
        first = next(iter(config["config"].values()))
        first["use_pickle"] = True
        target = config_name.rsplit("/", 1)[0] + "/" + first["path_name"]
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == config_name:
                data = json.dumps(config).encode()
            elif item.filename == target:
                data = pickle.dumps(_Evil(), protocol=2)
            zout.writestr(item, data)


def exported_program(d: Path) -> Path:
    from qcli.load import ArchSpec, load_model

    module = load_model(demo.WEIGHTS, ArchSpec.parse(demo.ARCH)).module
    torch.export.save(torch.export.export(module, (torch.zeros(2, 1, 28, 28),)), str(d / "clean.pt2"))
    return d / "clean.pt2"


def evil_exported_program(d: Path) -> list[str]:
    tamper_program(exported_program(d), d / "model.pt2")
    (d / "clean.pt2").unlink()
    return ["inspect", "model.pt2"]


def evil_program_artifact(d: Path) -> list[str]:
    qcli_ok("convert", weights(d), *ARCH, "--calib-dir", calib(d, 4), "-o", "clean.pt2", "--form", "program")
    tamper_program(d / "clean.pt2", d / "int8.pt2")
    return ["bench", "digits.safetensors", "int8.pt2", *ARCH, "--batch-sizes", "1", "--runs", "1"]


def arch_only_in_metadata(d: Path) -> list[str]:
    qcli_ok("convert", weights(d), *ARCH, "--calib-dir", calib(d, 4), "-o", "int8.pt2", "--form", "program")
    return ["bench", "digits.safetensors", "int8.pt2", "--batch-sizes", "1", "--runs", "1"]


def bench_report_over(name: str) -> Callable[[Path], list[str]]:
    def setup(d: Path) -> list[str]:
        (d / "int8.pt2").write_bytes(b"not read: the outputs are checked first")
        (d / "bench.json").write_text("{}")
        return ["bench", weights(d), "int8.pt2", *ARCH, "-o", name]

    return setup


def damaged_stats(d: Path) -> list[str]:
    header = {"format": "qcli-stats", "format_version": "1", "qcli": '{"model_sha256": "0"}'}
    save_file({"x": torch.zeros(1)}, d / "stats.safetensors", metadata=header)
    return ["convert", weights(d), *ARCH, "--stats", "stats.safetensors", "-o", "int8.pt2"]


def damaged_artifact(d: Path) -> list[str]:
    import json

    with zipfile.ZipFile(d / "int8.pt2", "w") as z:
        z.writestr("int8/archive_format", "pt2")
        z.writestr("int8/models/model.json", "{}")
        z.writestr("int8/extra/qcli.json", json.dumps({"format": "qcli-int8", "format_version": 1, "form": 7}))
    return ["inspect", "int8.pt2"]


def baseline_of(latency_ms: float, batch: int) -> Callable[[Path], list[str]]:
    def setup(d: Path) -> list[str]:
        import json

        from qcli.bench import BatchTiming, Latency
        from qcli.reports import ArtifactInfo, BenchReport, Environment, Gates, ModelInfo

        timing = BatchTiming(batch, 3, {"int8": Latency(latency_ms, latency_ms, 1.0)})
        report = BenchReport(
            ModelInfo("m", "safetensors", "0", 1, 1), ArtifactInfo("a", "package", "static", 1), 1,
            Environment(2, "2.13.0", None, "0.1.0", "3.11", "AVX2", [], "x86_64"), [timing], None, Gates(None, None),
        )  # fmt: skip
        (d / "base.json").write_text(json.dumps(report.to_dict()))
        (d / "int8.pt2").write_bytes(b"never read: the baseline is checked first")
        return ["bench", weights(d), "int8.pt2", *ARCH, "--baseline", "base.json", "--batch-sizes", "1,16"]

    return setup


def state_dict_keys(d: Path) -> list[str]:
    state = load_file(demo.WEIGHTS)
    state["extra.weight"] = state.pop(next(iter(state)))
    save_file(state, d / "renamed.safetensors")
    return ["inspect", "renamed.safetensors", *ARCH]


def state_dict_shapes(d: Path) -> list[str]:
    state = load_file(demo.WEIGHTS)
    key = next(k for k, v in state.items() if v.dim() == 4)
    state[key] = torch.zeros(*state[key].shape[:-1], state[key].shape[-1] + 2)
    save_file(state, d / "reshaped.safetensors")
    return ["inspect", "reshaped.safetensors", *ARCH]


def arch(spec: str) -> Callable[[Path], list[str]]:
    def setup(d: Path) -> list[str]:
        return ["inspect", weights(d), "--arch", spec]

    return setup


def files_in_calib(write: Callable[[Path], None]) -> Callable[[Path], list[str]]:
    def setup(d: Path) -> list[str]:
        (d / "samples").mkdir()
        write(d / "samples")
        return calibrate_args(d, calib_dir="samples")

    return setup


def mixed_shapes(d: Path) -> None:
    np.save(d / "a.npy", np.zeros((1, 28, 28), np.float32))
    np.save(d / "b.npy", np.zeros((1, 32, 32), np.float32))


def qcli_ok(*argv: str) -> None:
    """Run a setup step through qcli itself; it must succeed."""
    from qcli.cli.app import run

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = run(list(argv))
    assert code == 0, err.getvalue()


def stats_of_other_model(d: Path) -> list[str]:
    from models import residual_mlp

    save_file(residual_mlp().state_dict(), d / "mlp.safetensors")
    (d / "vectors").mkdir()
    np.save(d / "vectors" / "x.npy", np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32))
    qcli_ok("calibrate", "mlp.safetensors", "vectors", "--arch", "models:residual_mlp", "-o", "other-stats.safetensors")
    return ["convert", weights(d), *ARCH, "--stats", "other-stats.safetensors", "-o", "int8.pt2"]


def int8_as_model(d: Path) -> list[str]:
    qcli_ok("convert", weights(d), *ARCH, "--calib-dir", calib(d), "-o", "int8.pt2", "--form", "program")
    return ["calibrate", "int8.pt2", calib(d), "-o", "stats.safetensors"]


def existing_output(d: Path) -> list[str]:
    (d / "stats.safetensors").write_bytes(b"keep me")
    return calibrate_args(d)


def scripted_model(kind: str) -> Callable[[Path], list[str]]:
    def setup(d: Path) -> list[str]:
        import models

        models.scripted(getattr(models, kind), str(d / "scripted.pt"))
        return ["convert", "scripted.pt", "--calib-dir", calib(d), "-o", "int8.pt2"]

    return setup


def judged_by(*flags: str, classes: int = 10) -> Callable[[Path], list[str]]:
    """``convert --max-drop`` on the demo, with an evaluation folder of ``classes`` digit classes
    (two images each; none: four unlabeled images) and the judging flags given."""

    def setup(d: Path) -> list[str]:
        (d / "eval").mkdir()
        for path in sorted(demo.CALIB_DIR.iterdir())[: 4 if classes == 0 else 0]:  # unlabeled
            shutil.copy(path, d / "eval" / path.name)
        for k in range(classes):
            (d / "eval" / str(k)).mkdir(parents=True)
            for path in sorted((demo.EVAL_DIR / str(k)).iterdir())[:2]:
                shutil.copy(path, d / "eval" / str(k) / path.name)
        return ["convert", weights(d), *ARCH, "--calib-dir", calib(d), "-o", "int8.pt2", "--form", "program",
                "--max-drop", "1", "--eval-dir", "eval", "-q", *flags]  # fmt: skip

    return setup


def converted(*flags: str, out: str = "int8.pt2") -> Callable[[Path], list[str]]:
    """``convert`` of the demo state dict from the calibration folder, with ``flags``."""
    return lambda d: ["convert", weights(d), *ARCH, "--calib-dir", calib(d), "-o", out, *flags]


def recipe(text: str) -> Callable[[Path], list[str]]:
    def setup(d: Path) -> list[str]:
        (d / "recipe.toml").write_text(text)
        return calibrate_args(d, None, None, "--config", "recipe.toml")

    return setup


CASES: list[Case] = [
    Case("missing model path", lambda d: ["inspect", "nothing.pt"], 2, "does not exist"),
    Case(
        "folder without config.json given as the model",
        lambda d: ((d / "model").mkdir(), ["inspect", "model"])[1],
        1,
        "is a folder without config.json",
    ),
    Case("file given as the calibration folder", lambda d: calibrate_args(d, None, weights(d)), 2, "is a file"),
    Case("missing calibration folder", lambda d: calibrate_args(d, None, "nowhere"), 2, "does not exist"),
    Case("empty model file", model_file(b""), 1, "is empty"),
    Case("random bytes as the model", model_file(os.urandom(64) * 8), 1, "is not a TorchScript archive"),
    Case("truncated TorchScript archive", truncated_torchscript, 1, "truncated"),
    Case("zip that is not TorchScript", foreign_zip, 1, "zip archive"),
    Case("pickle that would run code", evil_pickle, 1, "never unpickles code"),
    Case("torch.save of an object that would run code", evil_torch_save, 1, "never unpickles code"),
    Case("exported program whose pickle would run code", evil_exported_program, 1, "pass --trust-model"),
    Case("INT8 program whose pickle would run code", evil_program_artifact, 1, "pass --trust-model"),
    Case("bench without --arch on an artifact that names one", arch_only_in_metadata, 1, "does not import code"),
    Case("state dict with wrong keys", state_dict_keys, 1, "missing"),
    Case("state dict with wrong shapes", state_dict_shapes, 1, "shape"),
    Case("--arch module does not import", arch("no_such_module:Net"), 1, "cannot import"),
    Case("--arch names no callable", arch("qcli.demo:WEIGHTS"), 1, "not callable"),
    Case("--arch callable raises", arch("models:broken_arch"), 1, "raised"),
    Case("--arch-kwargs not JSON", lambda d: ["inspect", weights(d), *ARCH, "--arch-kwargs", "{width: 3"], 1, "JSON"),
    Case("empty calibration folder", files_in_calib(lambda s: None), 1, "has no image, tensor or text files"),
    Case(
        "corrupt image",
        files_in_calib(lambda s: (s / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")),
        1,
        "cannot be decoded",
    ),
    Case("zero-byte image", files_in_calib(lambda s: (s / "x.png").write_bytes(b"")), 1, "cannot be decoded"),
    Case("samples of mixed shapes", files_in_calib(mixed_shapes), 1, "the first sample had"),
    Case(
        "texts for a model without a tokenizer",
        files_in_calib(lambda s: (s / "t.txt").write_text("hi\n")),
        1,
        "needs a tokenizer",
    ),  # fmt: skip
    Case(
        "a .jsonl line that is not JSON",
        files_in_calib(lambda s: (s / "t.jsonl").write_text("{text: 1}\n")),
        1,
        "is not JSON",
    ),  # fmt: skip
    Case(
        "--package-shapes for a model of fixed sizes",
        converted("--package-shapes", "1x128", out="x.pt2"),
        1,
        "is for models whose inputs have a sequence dimension",
    ),  # fmt: skip
    Case(
        "--package-shapes that is not BATCHxLENGTH",
        converted("--package-shapes", "16", out="x.pt2"),
        2,
        "is not BATCHxLENGTH",
    ),  # fmt: skip
    Case(
        "--package-weights that is not shared or copies",
        converted("--package-weights", "once", out="x.pt2"),
        1,
        "must be one of",
    ),  # fmt: skip
    Case(
        "--prefer speed with --form program",
        converted("--prefer", "speed", "--form", "program", out="x.pt2"),
        1,
        "chooses per compiled batch size",
    ),  # fmt: skip
    Case(
        "--prefer speed in dynamic mode",
        converted("--prefer", "speed", "--mode", "dynamic", out="x.pt2"),
        1,
        "in static mode, not dynamic",
    ),  # fmt: skip
    Case(
        "files that hold zero samples",
        files_in_calib(lambda s: np.save(s / "x.npy", np.zeros((0, 1, 28, 28), np.float32))),
        1,
        "holds no samples",
    ),
    Case(
        "NaN in a sample",
        files_in_calib(lambda s: np.save(s / "x.npy", np.full((1, 28, 28), np.nan, np.float32))),
        1,
        "NaN or Inf",
    ),
    Case(
        "Inf in a sample",
        files_in_calib(lambda s: np.save(s / "x.npy", np.full((1, 28, 28), np.inf, np.float32))),
        1,
        "NaN or Inf",
    ),
    Case(
        "integer tensor where floats are expected",
        files_in_calib(lambda s: np.save(s / "x.npy", np.zeros((1, 28, 28), np.uint8))),
        1,
        "uint8 values",
    ),
    Case("stats file of another model", stats_of_other_model, 1, "another model"),
    Case("stats file with damaged metadata", damaged_stats, 1, "damaged metadata"),
    Case("artifact with damaged metadata", damaged_artifact, 1, "damaged metadata (form 7)"),
    Case("baseline with nothing in common", baseline_of(5.0, 7), 1, "nothing in common"),
    Case("baseline with a zero latency", baseline_of(0.0, 16), 1, "damaged `qcli bench` report"),
    Case(
        "TorchScript that branches on tensor values", scripted_model("GatedConvNet"), 1, "data-dependent control flow"
    ),
    Case("TorchScript with a non-tensor argument", scripted_model("ScaledConvNet"), 1, "non-tensor argument"),
    Case("INT8 artifact given as the FP32 model", int8_as_model, 1, "qcli INT8 artifact"),
    Case("--exclude that matches no layer", converted("--exclude", "stm.*"), 1, "matches no module"),
    Case("--method that does not exist", converted("--method", "magic"), 2, "'magic' is not one of"),
    Case(
        "asymmetric weights asked for",
        converted("--weights", "asymmetric"),
        1,
        "symmetric weights",
    ),
    Case(
        "output folder not writable",
        lambda d: ["calibrate", weights(d), calib(d), "-o", "/proc/stats.safetensors", *ARCH],
        1,
        "not writable",
    ),
    Case(
        "output folder missing",
        lambda d: ["calibrate", weights(d), calib(d), "-o", "out/stats.safetensors", *ARCH],
        1,
        "does not exist",
    ),
    Case("output exists, no --force", existing_output, 1, "--force"),
    Case("bench report over the model file", bench_report_over("digits.safetensors"), 1, "an input of this run"),
    Case("bench report exists, no --force", bench_report_over("bench.json"), 1, "--force"),
    Case(
        "exported program with a fixed batch size",
        lambda d: ["convert", exported_program(d).name, "--calib-dir", calib(d), "-o", "int8.pt2", "-q"],
        1,
        "the model fixes its batch size",
    ),
    Case(
        "dynamic INT8 of a state dict with no shapes",
        lambda d: ["convert", weights(d), *ARCH, "--mode", "dynamic", "-o", "int8.pt2"],
        1,
        "give them with --input-shape",
    ),
    Case("--metric that does not exist", judged_by("--metric", "accuracy"), 1, "--metric must be one of top1"),
    Case(
        "--output-name the model does not have", judged_by("--output-name", "boxes"), 1, "is not an output of the model"
    ),
    Case("--metric auc on ten classes", judged_by("--metric", "auc"), 1, "auc needs two class sub-folders"),
    Case("--metric mae without targets", judged_by("--metric", "mae"), 1, "needs a targets.csv"),
    Case("--metric top1 on unlabeled samples", judged_by("--metric", "top1", classes=0), 1, "needs a labeled"),
    Case("--metric function that does not import", judged_by("--metric", "nomodule:score"), 1, "cannot import"),
    Case(
        "--metric without --max-drop on convert",
        converted("--metric", "auc"),
        1,
        "choose what the --max-drop search judges",
    ),
    Case("recipe is not TOML", recipe("[calibrate\nlimit = 1"), 1, "is not valid TOML"),
    Case("recipe has an unknown key", recipe("[calibrate]\nlimt = 3\n"), 1, "unknown key 'calibrate.limt'"),
    Case("recipe value of the wrong type", recipe("[calibrate]\nlimit = 'many'\n"), 1, "wrong type"),
]


def snapshot(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


def run_case(case: Case, workdir: Path) -> Outcome:
    """Build the case in ``workdir`` (empty), run qcli in-process there, and report what happened."""
    from qcli.cli.app import run

    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        argv = case.setup(workdir)
        before = snapshot(workdir)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run(argv)
    finally:
        os.chdir(cwd)
    return Outcome(case, argv, code, out.getvalue(), err.getvalue(), sorted(snapshot(workdir) - before))


def run_all(cases: list[Case] = CASES) -> list[Outcome]:
    with tempfile.TemporaryDirectory() as tmp:
        outcomes = []
        for i, case in enumerate(cases):
            workdir = Path(tmp) / f"case{i:02d}"
            workdir.mkdir()
            outcomes.append(run_case(case, workdir))
        return outcomes


def markdown(outcomes: list[Outcome]) -> str:
    rows = [
        "# Bad inputs and what qcli answers",
        "",
        "Generated by `python tests/bad_inputs.py > docs/bad-inputs.md`; `tests/test_bad_inputs.py` fails",
        "when this file and the real answers differ. Every answer is one line on stderr, no file is",
        "written, and no traceback is shown (set `QCLI_DEBUG=1` to see one).",
        "",
        "| bad input | command | exit | message |",
        "|---|---|---|---|",
    ]
    for o in outcomes:
        message = o.line.replace("|", "\\|")
        rows.append(f"| {o.case.name} | `qcli {' '.join(o.argv)}` | {o.exit_code} | {message} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown(run_all()))
