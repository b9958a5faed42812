"""The README's Python snippets, run as written (with the demo artifacts and an input ``x``)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

from conftest import ROOT

SECTION = "## Using the artifact without qcli"


def snippets() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(SECTION) : text.index("\n## ", text.index(SECTION) + 1)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_artifact_snippets_run_as_written(demo_artifacts, tmp_path):
    blocks = snippets()
    assert len(blocks) == 3  # torch's package loader, qcli's loader, the exported program
    shutil.copy(demo_artifacts["package"], tmp_path / "digits-int8.pt2")
    shutil.copy(demo_artifacts["program"], tmp_path / "digits-int8.program.pt2")
    script = ["import torch", "x = torch.rand(1, 1, 28, 28)", "shapes = []"]
    for block in blocks:
        script += [block, "shapes.append(list(logits.shape))", "del logits"]
    script.append("print(shapes)")
    proc = subprocess.run(
        [sys.executable, "-c", "\n".join(script)], capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[[1, 10], [1, 10], [1, 10]]"


def test_run_converts_what_is_safe_and_refuses_the_rest(demo_artifacts, eval_batch):
    import pytest
    import torch

    from qcli.artifact import load_artifact
    from qcli.errors import ArtifactError

    artifact = load_artifact(str(demo_artifacts["package"]))  # a str, as the README shows
    x = eval_batch[0][:2].clone()
    want = artifact.run(x)
    assert not want.requires_grad
    torch.testing.assert_close(artifact.run(x.double()), want)  # float64 becomes float32
    wide = torch.zeros(2, 1, 28, 56)
    wide[..., ::2] = x
    torch.testing.assert_close(artifact.run(wide[..., ::2]), want)  # a strided view is made contiguous
    with pytest.raises(ArtifactError, match="takes torch.float32 values, got torch.int64"):
        artifact.run(x.long())
    with pytest.raises(ArtifactError, match="takes 1 input"):
        artifact.run(x, x)
