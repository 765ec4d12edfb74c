"""What a red run needs on one screen: each failed test with the first line of its error.

    python3 hack/test_report.py [.build/test-results.xml]

reads the JUnit XML that `make test` has pytest write and prints one line per failed or erroring
test (its id as pytest names it, then the first line of the message), and a count. Standard
library only, so that it runs even where the project's .venv is broken.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

DEFAULT = Path(__file__).resolve().parent.parent / ".build" / "test-results.xml"
WIDTH = 220


def _test_id(case: ET.Element) -> str:
    # pytest's junit classname is the dotted module path plus any class: tests.operator.test_x.TestY
    parts = case.get("classname", "").split(".")
    module = [p for p in parts if not p[:1].isupper()]
    classes = [p for p in parts if p[:1].isupper()]
    path = "/".join(module) + ".py" if module else "?"
    return "::".join([path, *classes, case.get("name", "?")])


def _first_line(problem: ET.Element) -> str:
    """pytest's first `E ` line (the error as raised), else the first line of the message."""
    text = problem.text or ""
    marked = [line[1:].strip() for line in text.splitlines() if line.startswith("E ") and line[1:].strip()]
    candidates = marked[:1] + [line.strip() for line in (problem.get("message") or text).splitlines()]
    line = next((c for c in candidates if c), problem.tag)
    return line if len(line) <= WIDTH else line[: WIDTH - 1] + "…"


def failures(report: Path) -> list[str]:
    """One line per test that failed or errored, in the order pytest ran them."""
    lines = []
    for case in ET.parse(report).getroot().iter("testcase"):
        for problem in case:
            if problem.tag in ("failure", "error"):
                word = "FAILED" if problem.tag == "failure" else "ERROR"
                lines.append(f"{word} {_test_id(case)}: {_first_line(problem)}")
    return lines


def main(argv: list[str]) -> int:
    report = Path(argv[0]) if argv else DEFAULT
    if not report.is_file():
        print(f"no test report at {report}: the tests did not get to run (see the output above)")
        return 0
    lines = failures(report)
    for line in lines:
        print(line)
    print(f"{len(lines)} failed or erroring test(s) in {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
