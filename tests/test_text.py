"""Text samples tokenized with a model folder's tokenizer, on a real trained classifier.

``tests/data/fortunes/`` holds a small BERT trained here (``tests/train_text.py``) on quotations
from Debian's ``fortunes`` package, four topics, with its WordPiece tokenizer: 80 calibration
texts (``calib/texts.txt``) and 400 labeled evaluation texts (``eval/eval.jsonl``, topic names as
labels). FP32 top-1 is 62.0% (chance 25%).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_qcli
from test_ux import validate

from qcli.config import PreprocessConfig
from qcli.data import InputSpec, SampleFolder
from qcli.errors import DataError

transformers = pytest.importorskip("transformers")

FORTUNES = Path(__file__).parent / "data" / "fortunes"
MODEL, CALIB, EVAL = FORTUNES / "model", FORTUNES / "calib", FORTUNES / "eval"
TOPICS = ("computers", "politics", "science", "songs-poems")
BERT_INPUTS = InputSpec(("input_ids", "attention_mask", "token_type_ids"), (None, None, None))


def reference_top1(limit: int | None = None) -> float:
    """FP32 top-1 on the evaluation texts, computed with transformers alone (no padding buckets)."""
    tok = transformers.AutoTokenizer.from_pretrained(str(MODEL), local_files_only=True)
    model = transformers.BertForSequenceClassification.from_pretrained(str(MODEL), local_files_only=True).eval()
    rows = [json.loads(line) for line in (EVAL / "eval.jsonl").read_text().splitlines()][:limit]
    hits = 0
    with torch.no_grad():
        for row in rows:
            enc = tok(row["text"], truncation=True, max_length=64, return_tensors="pt")
            hits += int(model(**enc).logits.argmax(1)) == TOPICS.index(row["label"])
    return 100.0 * hits / len(rows)


def test_texts_become_padded_token_samples_with_their_labels(tmp_path):
    pre = PreprocessConfig(tokenizer=str(MODEL), max_length=40)
    folder = SampleFolder.open(EVAL, pre, what="evaluation folder")
    assert folder.classes == TOPICS  # label names in the order of the config's label2id
    samples = list(folder.samples(BERT_INPUTS, limit=50))
    rows = [json.loads(line) for line in (EVAL / "eval.jsonl").read_text().splitlines()][:50]
    tok = transformers.AutoTokenizer.from_pretrained(str(MODEL), local_files_only=True)
    for (_, sample, label), row in zip(samples, rows, strict=True):
        ids = tok(row["text"], truncation=True, max_length=40)["input_ids"]
        n, padded = len(ids), sample["input_ids"].shape[0]
        assert padded == next(p for p in (16, 32, 40) if p >= n)  # 16, 32, then max_length
        assert sample["input_ids"][:n].tolist() == ids and sample["input_ids"][n:].eq(tok.pad_token_id).all()
        assert sample["attention_mask"].tolist() == [1] * n + [0] * (padded - n)
        assert label == TOPICS.index(row["label"])
    # every batch has one length, so a package compiled per length sees few shapes
    lengths = {tuple(b.inputs["input_ids"].shape[1:]) for b in folder.batches(BERT_INPUTS, batch_size=8)}
    assert lengths <= {(16,), (32,), (40,)}


def test_txt_lines_csv_columns_and_labels(tmp_path):
    (tmp_path / "a.txt").write_text("first line\n\n  \nsecond line\n")
    (tmp_path / "b.csv").write_text("id,text\n1,third\n")
    (tmp_path / "pairs.csv").write_text("not,a,sample\n")  # an evaluation file, not samples
    folder = SampleFolder.open(tmp_path, PreprocessConfig(tokenizer=str(MODEL)))
    assert [p.name for p in folder.files] == ["a.txt", "b.csv"] and not folder.labeled
    assert len(list(folder.samples(BERT_INPUTS))) == 3
    labeled = tmp_path / "labeled"
    labeled.mkdir()
    (labeled / "x.csv").write_text('text,label\n"a, b",1\nc,0\nd,2\n')
    folder = SampleFolder.open(labeled, PreprocessConfig(tokenizer=str(MODEL)))
    assert folder.classes == ("0", "1", "2")
    assert [label for _, _, label in folder.samples(BERT_INPUTS)] == [1, 0, 2]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"x.jsonl": '{"text": "a", "label": "computers"}\n{"text": "b"}\n'}, "1 of 2 texts have a label"),
        ({"x.jsonl": "not json\n"}, "line 1 is not JSON"),
        ({"x.jsonl": '{"label": 1}\n'}, 'an object with a "text" string'),
        ({"x.csv": "body,label\na,1\n"}, "a header naming a 'text' column"),
        ({"x.jsonl": '{"text": "a", "label": 1.5}\n'}, "a label must be a class index or name"),
    ],
)
def test_text_file_mistakes_are_one_line(tmp_path, files, message):
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message):
        list(SampleFolder.open(tmp_path, PreprocessConfig(tokenizer=str(MODEL))).batches(BERT_INPUTS))


def test_texts_without_a_tokenizer_are_refused_in_one_line(tmp_path):
    (tmp_path / "a.txt").write_text("hello\n")
    with pytest.raises(DataError, match="needs a tokenizer"):
        list(SampleFolder.open(tmp_path).batches(BERT_INPUTS))
    with pytest.raises(DataError, match="holds no tokenizer files"):
        list(SampleFolder.open(tmp_path, PreprocessConfig(tokenizer=str(tmp_path))).batches(BERT_INPUTS))


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_trained_text_classifier_keeps_its_accuracy(tmp_path, mode):
    """convert ./model --calib-dir texts/ in both modes; FP32 top-1 as transformers computes it
    alone (the padding buckets change nothing), INT8 within 1 point."""
    from qcli.api import convert_model_file
    from qcli.artifact import load_program_module, read_metadata
    from qcli.evaluate import evaluate
    from qcli.load import load_model
    from qcli.options import CalibrationOptions, ConvertOptions

    out = tmp_path / "int8.pt2"
    report = convert_model_file(MODEL, out, calib_dir=CALIB, options=ConvertOptions(
        calibration=CalibrationOptions(mode=mode), form="program"))  # fmt: skip
    assert report.quantized_layers == 14
    meta = read_metadata(out)
    assert meta["config"]["preprocess"]["max_length"] == 64  # the model's own limit, recorded
    loaded = load_model(MODEL)
    folder = SampleFolder.open(EVAL, PreprocessConfig(tokenizer=str(MODEL), max_length=64))
    accuracy = evaluate(loaded.module, load_program_module(out), folder, BERT_INPUTS)
    assert accuracy.samples == 400 and accuracy.labeled
    assert accuracy.fp32_top1 == pytest.approx(reference_top1(), abs=1e-9)
    assert accuracy.fp32_top1 - accuracy.int8_top1 <= 1.0
    assert accuracy.score is not None and accuracy.score.metric == "top1"
    assert accuracy.fp32_top5 is None  # top-5 of four classes is 100% whatever the model does
    from qcli.errors import OptionError
    from qcli.options import JudgeOptions

    with pytest.raises(OptionError, match="top5 on output 'logits' of 4 classes is always 100%"):
        evaluate(loaded.module, load_program_module(out), folder, BERT_INPUTS, judge=JudgeOptions(metric="top5"))


def test_cli_text_package_bench_tokenizes_as_calibrated(tmp_path):
    """The commands a user types: convert a model folder with a folder of texts into a package,
    bench it on labeled texts of other lengths (padded to the compiled length) with a gate."""
    out = tmp_path / "int8.pt2"
    proc = run_qcli("convert", MODEL, "--calib-dir", CALIB, "-o", out, "--package-batch-sizes", "1")
    assert proc.returncode == 0, proc.stderr
    proc = run_qcli("inspect", out, "--format", "json")
    shown = json.loads(proc.stdout)
    validate(shown)
    assert shown["compiled_for"]["shapes"] == ["1x64"]  # the longest calibration length
    proc = run_qcli("bench", MODEL, out, "--eval-dir", EVAL, "--eval-limit", "120", "--batch-sizes", "1",
                    "--max-drop", "1", "--time-budget", "2", "--inconclusive", "pass", "--format", "json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    score = report["accuracy"]["score"]
    assert score["metric"] == "top1" and score["fp32"] == pytest.approx(reference_top1(120))
    assert score["drop"] <= 1.0 and report["gates"]["passed"]
    assert not any("tokenized differently" in w for w in report["warnings"])
    # texts tokenized otherwise than in calibration are named in a warning
    from qcli.api import preprocess_warning
    from qcli.artifact import read_metadata
    from qcli.config import Recipe

    recorded = read_metadata(out)["config"]
    shorter = Recipe(PreprocessConfig(tokenizer=str(MODEL), max_length=32))
    warning = preprocess_warning(recorded, shorter, SampleFolder.open(EVAL), "the artifact's calibration")
    assert warning is not None and "texts are tokenized differently" in warning and "max_length 64 -> 32" in warning
    same = Recipe(PreprocessConfig(tokenizer=str(MODEL), max_length=64))
    assert preprocess_warning(recorded, same, SampleFolder.open(EVAL), "calibration") is None


def test_package_pads_to_a_compiled_length_and_cuts_token_outputs(tmp_path):
    """A feature extractor's package at lengths 16 and 64: inputs of other lengths are padded to
    the next compiled length and the per-token output is cut back; longer ones are refused."""
    from qcli.api import convert_model_file
    from qcli.artifact import load_artifact, read_metadata
    from qcli.errors import ArtifactError
    from qcli.options import ConvertOptions

    out = tmp_path / "fe.pt2"
    convert_model_file(MODEL, out, calib_dir=CALIB, task="feature-extraction",
                       options=ConvertOptions(package_shapes=((1, 16), (1, 64), (4, 64))))  # fmt: skip
    meta = read_metadata(out)
    assert [(s["batch"], s["length"]) for s in meta["package_shapes"]] == [(1, 16), (1, 64), (4, 64)]
    assert meta["token_outputs"] == {"0": [1]}  # last_hidden_state [batch, seq, hidden]
    artifact = load_artifact(out)
    tok = transformers.AutoTokenizer.from_pretrained(str(MODEL), local_files_only=True)
    fp32 = transformers.BertModel.from_pretrained(str(MODEL), local_files_only=True).eval()
    texts = ["a short one", "a longer text about computers and their programs, with words enough to pass 16"]
    for text in texts:
        for batch in (1, 5):  # 5 = 4 + 1 at length 64
            enc = tok([text] * batch, return_tensors="pt")
            with torch.no_grad():
                want = fp32(**enc)
            hidden, pooled = artifact.run(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
            assert hidden.shape == want.last_hidden_state.shape and pooled.shape == want.pooler_output.shape
            cos = torch.nn.functional.cosine_similarity(hidden.flatten(1), want.last_hidden_state.flatten(1))
            assert float(cos.min()) > 0.99
    too_long = torch.ones(1, 70, dtype=torch.int64)
    with pytest.raises(ArtifactError, match="compiled for sequence lengths 16, 64 and takes at most those; got 70"):
        artifact.run(too_long, too_long, too_long * 0)
    check_shared_weights(out, artifact, tok, tmp_path)


def check_shared_weights(out, artifact, tok, tmp_path):
    """The package stores the weights once: the models after the default one are compiled without
    them and read the default model's; the same rows agree at batch 1 and 4.
    torch's loader runs the default model and refuses the others by name (no crash)."""
    import json
    import zipfile

    from torch._inductor.package import load_package

    from qcli.artifact import load_artifact
    from qcli.errors import ArtifactError

    with zipfile.ZipFile(out) as zf:
        libraries = {
            n.split("/")[-3] + "/" + n.split("/")[-2]: i.file_size
            for i in zf.infolist()
            if (n := i.filename).endswith(".so")
        }
        names = zf.namelist()
    assert set(libraries) == {"aotinductor/model", "qcli/batch1_len64", "qcli/batch4"}
    assert all(
        size < 0.7 * libraries["aotinductor/model"] for key, size in libraries.items() if key.startswith("qcli/")
    )
    enc = tok(["one row", "another, longer row of words", "a third", "and the fourth one here"],
              padding="max_length", max_length=64, return_tensors="pt")  # fmt: skip
    inputs = (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    together = artifact.run(*inputs)  # the batch-4 model
    alone = [artifact.run(*(t[i : i + 1] for t in inputs)) for i in range(4)]  # the batch-1 one at 64
    for k in range(2):  # batch 1 and 4 sum in other orders; a misplaced weight or scale is off by ~1
        diff = (together[k] - torch.cat([a[k] for a in alone])).abs().max()
        assert float(diff) < 1e-3
    plain = torch._inductor.aoti_load_package(str(out))
    short = tok(["one row"], padding="max_length", max_length=16, return_tensors="pt")
    got = plain(short["input_ids"], short["attention_mask"], short["token_type_ids"])
    assert torch.equal(
        got["last_hidden_state"], artifact.run(short["input_ids"], short["attention_mask"], short["token_type_ids"])[0]
    )
    with pytest.raises(RuntimeError, match="batch4"):
        load_package(str(out), "batch4")
    # a package whose map lost a name is refused as damaged, not run with a missing weight
    damaged = tmp_path / "damaged.pt2"
    with zipfile.ZipFile(out) as src, zipfile.ZipFile(damaged, "w") as dst:
        for name in names:
            data = src.read(name)
            if name.endswith("qcli/batch4/shared_weights.json"):
                mapping = json.loads(data)
                mapping.pop(sorted(mapping)[0])
                data = json.dumps(mapping).encode()
            dst.writestr(name, data)
    with pytest.raises(ArtifactError, match="is damaged .model 'batch4' does not match the default model's weights"):
        load_artifact(damaged)


def test_package_shapes_are_for_sequence_models(tmp_path):
    from qcli import demo

    proc = run_qcli("convert", demo.WEIGHTS, "--arch", demo.ARCH, "--calib-dir", demo.CALIB_DIR, "--limit", "8",
                    "-o", tmp_path / "x.pt2", "--package-shapes", "1x128")  # fmt: skip
    assert proc.returncode == 1 and "--package-shapes is for models whose inputs have a sequence" in proc.stderr
    assert "calibrating" not in proc.stderr  # refused before any work
    assert not (tmp_path / "x.pt2").exists()
    proc = run_qcli("convert", MODEL, "-o", tmp_path / "x.pt2", "--package-shapes", "1by128", "--calib-dir", CALIB)
    assert proc.returncode == 2 and "'1by128' is not BATCHxLENGTH" in proc.stderr


def test_a_program_of_a_folder_model_loads_with_plain_torch(tmp_path):
    """transformers' output classes are not what the program records: a process that never
    imports transformers (or qcli) loads and runs it."""
    from qcli.api import convert_model_file
    from qcli.options import CalibrationOptions, ConvertOptions

    out = tmp_path / "int8.pt2"
    convert_model_file(MODEL, out, calib_dir=CALIB, options=ConvertOptions(
        calibration=CalibrationOptions(limit=16), form="program"))  # fmt: skip
    code = (
        "import sys, torch, torch.ao.quantization.fx._decomposed\n"
        "m = torch.export.load(sys.argv[1]).module()\n"
        "ids = torch.full((2, 12), 7)\n"
        "out = m(ids, torch.ones_like(ids), torch.zeros_like(ids))\n"
        "assert 'transformers' not in sys.modules and 'qcli' not in sys.modules\n"
        "print(sorted(out), tuple(out['logits'].shape))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("['logits'] (2, 4)")
