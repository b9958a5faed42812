import pickle
import warnings
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from qcli import demo
from qcli.errors import ArchError, ModelLoadError, StateDictMismatch, UnknownFormat
from qcli.load import (
    EXPORTED_PROGRAM,
    SAFETENSORS,
    STATE_DICT,
    TORCHSCRIPT,
    ArchSpec,
    detect_format,
    load_model,
)

ARCH = ArchSpec.parse(demo.ARCH)


def test_formats_detected_from_content_not_name(tmp_path, demo_model):
    state = demo_model.module.state_dict()
    torch.save(state, tmp_path / "weights.safetensors")  # misleading suffix: a torch.save zip
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "weights.bin")
    torch.save(state, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert detect_format(tmp_path / "weights.safetensors") == STATE_DICT
    assert detect_format(tmp_path / "weights.bin") == SAFETENSORS
    assert detect_format(tmp_path / "legacy.pth") == STATE_DICT
    assert detect_format(demo.TORCHSCRIPT) == TORCHSCRIPT
    for name in ("weights.safetensors", "weights.bin", "legacy.pth"):
        loaded = load_model(tmp_path / name, ARCH)
        x = torch.randn(2, 1, 28, 28)
        torch.testing.assert_close(loaded.module(x), demo_model.module(x))


def test_arch_import_does_not_leave_the_working_folder_on_sys_path(tmp_path, monkeypatch):
    """--arch resolves modules next to the user (like `python -m`), for that import only."""
    import sys

    (tmp_path / "mynet.py").write_text("import torch\ndef Net():\n    return torch.nn.Linear(2, 2)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert isinstance(ArchSpec.parse("mynet:Net").build(), torch.nn.Linear)
    assert str(tmp_path) not in sys.path and "" not in sys.path


def test_exported_program_and_torchscript_load(tmp_path, demo_model):
    x = torch.randn(2, 1, 28, 28)
    program = torch.export.export(demo_model.module, (x,))
    torch.export.save(program, tmp_path / "m.pt2")
    assert detect_format(tmp_path / "m.pt2") == EXPORTED_PROGRAM
    torch.testing.assert_close(load_model(tmp_path / "m.pt2").module(x), demo_model.module(x))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = load_model(demo.TORCHSCRIPT)
    torch.testing.assert_close(scripted.module(x), demo_model.module(x))


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "is empty"),
        (b"\x00\x01random bytes that are no model" * 10, "is not a TorchScript archive"),
    ],
)
def test_unknown_content(tmp_path, content, needle):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(UnknownFormat, match=needle):
        load_model(path, ARCH)


def test_truncated_and_foreign_zips(tmp_path):
    data = demo.WEIGHTS.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError):
        load_model(tmp_path / "trunc.safetensors", ARCH)
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(UnknownFormat, match="zip archive but not"):
        load_model(tmp_path / "other.zip", ARCH)


class _Boom:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Boom()
    evil.marker = marker
    torch.save({"weight": evil}, tmp_path / "evil.pt")
    with pytest.raises(ModelLoadError, match="never unpickles code"):
        load_model(tmp_path / "evil.pt", ARCH)
    assert not marker.exists()
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(ModelLoadError):
        load_model(tmp_path / "evil.pkl", ARCH)
    assert not marker.exists()


def test_state_dict_mismatch_lists_keys(tmp_path, demo_model):
    state = dict(demo_model.module.state_dict())
    state.pop("fc.bias")
    state["extra.weight"] = torch.zeros(1)
    state["fc.weight"] = torch.zeros(3, 64)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "bad.safetensors")
    with pytest.raises(StateDictMismatch) as info:
        load_model(tmp_path / "bad.safetensors", ARCH)
    assert info.value.missing == ["fc.bias"]
    assert info.value.unexpected == ["extra.weight"]
    assert info.value.shapes == ["fc.weight [3, 64] vs [10, 64]"]
    assert "missing: fc.bias" in str(info.value) and "unexpected: extra.weight" in str(info.value)


@pytest.mark.parametrize(
    ("target", "kwargs", "needle"),
    [
        ("no_such_module_xyz:Net", None, "cannot import"),
        ("qcli.demo.model:Nope", None, "has no attribute"),
        ("qcli.demo:DEMO_DIR", None, "not callable"),
        ("qcli.demo.model:DigitNet", '{"width": -1}', "raised"),
        ("qcli.demo.model:conv_bn", '{"cin": 1, "cout": 1}', None),
        ("nocolon", None, "not of the form"),
    ],
)
def test_arch_errors(target, kwargs, needle):
    if needle is None:  # a valid callable returning a module that does not fit the weights
        with pytest.raises(StateDictMismatch):
            load_model(demo.WEIGHTS, ArchSpec.parse(target, kwargs))
        return
    with pytest.raises(ArchError, match=needle):
        load_model(demo.WEIGHTS, ArchSpec.parse(target, kwargs))


def test_state_dict_needs_arch():
    with pytest.raises(ArchError, match="pass --arch"):
        load_model(demo.WEIGHTS)
