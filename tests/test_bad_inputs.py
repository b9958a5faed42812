"""Every bad input in the corpus (tests/bad_inputs.py) gets one line, its exit code, and no file."""

from __future__ import annotations

from pathlib import Path

import pytest
from bad_inputs import CASES, MARKER, markdown, run_all

DOC = Path(__file__).resolve().parent.parent / "docs" / "bad-inputs.md"


@pytest.fixture(scope="module")
def outcomes():
    return {o.case.name: o for o in run_all()}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_answered_in_one_line(outcomes, case):
    outcome = outcomes[case.name]
    assert outcome.exit_code == case.exit_code, outcome.stderr
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qcli: error: "), outcome.stderr
    assert "Traceback" not in outcome.stderr and "internal error" not in outcome.stderr
    assert case.needle in lines[0]
    assert outcome.stdout == ""
    assert outcome.new_files == [], f"left behind: {outcome.new_files}"


EVIL = (
    "pickle that would run code",
    "torch.save of an object that would run code",
    "exported program whose pickle would run code",
    "INT8 program whose pickle would run code",
)


def test_code_in_a_pickle_never_ran(outcomes):
    """The pickles would create MARKER in the working folder when unpickled."""
    for name in EVIL:
        assert outcomes[name].exit_code == 1
        assert MARKER not in outcomes[name].new_files


def test_the_evil_program_really_runs_code_when_trusted(tmp_path):
    """The corpus's tampered .pt2 is a real exploit: with --trust-model torch unpickles it and the
    marker appears, so the refusal above is what keeps it from running."""
    import os

    from bad_inputs import evil_exported_program

    from qcli.cli.app import run

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        argv = evil_exported_program(tmp_path)
        run([*argv, "--trust-model"])
    finally:
        os.chdir(cwd)
    assert (tmp_path / MARKER).exists()


def test_the_documented_table_is_current(outcomes):
    assert DOC.read_text() == markdown(list(outcomes.values())), (
        "regenerate: python tests/bad_inputs.py > docs/bad-inputs.md"
    )
