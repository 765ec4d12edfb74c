"""hack/test_report.py, what a red CI run ends with: one line per failed or erroring test, with the
error as raised, read from the JUnit XML of a real pytest run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

FAILING = """
import pytest

def test_passes():
    pass

def test_fails():
    assert 1 == 2, "one is not two"

class TestGroup:
    def test_errors(self, no_such_fixture):
        pass
"""


def test_a_red_run_lists_each_failed_test_with_its_first_error_line(tmp_path: Path) -> None:
    (tmp_path / "test_sample.py").write_text(FAILING)
    results = tmp_path / "results.xml"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={results}",
            "-c",
            "/dev/null",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    report = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "test_report.py"), str(results)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    assert report == [
        "FAILED test_sample.py::test_fails: AssertionError: one is not two",
        "ERROR test_sample.py::TestGroup::test_errors: fixture 'no_such_fixture' not found",
        f"2 failed or erroring test(s) in {results}",
    ]


def test_no_report_says_the_tests_did_not_run(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "test_report.py"), str(tmp_path / "absent.xml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "the tests did not get to run" in out
