"""Run the fault-matrix and operator tests and write their results into docs/security.md.

    python scripts/fault_matrix_report.py [--doc docs/security.md] [-- extra pytest args]

Runs ``pytest tests/system/test_fault_matrix.py tests/system/test_operators.py -q`` (only the files that exist) with a
JUnit XML report, and replaces the text between ``<!-- fault-matrix:begin -->`` and
``<!-- fault-matrix:end -->`` in the document by a markdown table: case, result, duration. Exits with
pytest's status, so a failing case fails the script after the table is written.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_FILES = ("tests/system/test_fault_matrix.py", "tests/system/test_operators.py")
BEGIN, END = "<!-- fault-matrix:begin -->", "<!-- fault-matrix:end -->"


Row = tuple[str, str, float, dict[str, str]]


def case_rows(junit_xml: Path) -> list[Row]:
    """(case, result, seconds, recorded properties) per test case of a pytest JUnit XML report (our own
    file: trusted XML). The matrix records ``peak_mib`` and ``lag_p99_s`` with ``record_property``."""
    rows = []
    for case in ET.parse(junit_xml).getroot().iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        outcome = "passed"
        for child, name in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            if case.find(child) is not None:
                outcome = name
                break
        measured = {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
        rows.append((f"{module}::{case.get('name', '')}", outcome, float(case.get("time", "0") or 0), measured))
    return rows


def render(rows: list[Row], files: list[str]) -> str:
    passed = sum(1 for _, result, _, _ in rows if result == "passed")
    lines = [
        f"{passed} of {len(rows)} cases passed ({', '.join(f'`{f}`' for f in files)}).",
        "",
        "| case | result | duration | peak memory (MiB) | scheduling lag p99 (s) |",
        "|---|---|---|---|---|",
        *(
            f"| `{case}` | {result} | {seconds:.2f} s | {m.get('peak_mib', '')} | {m.get('lag_p99_s', '')} |"
            for case, result, seconds, m in rows
        ),
    ]
    return "\n".join(lines)


def replace_between_markers(text: str, table: str) -> str:
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"error: the document has no {BEGIN} ... {END} markers")
    return text[: start + len(BEGIN)] + "\n" + table + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "security.md", help="document to update")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds the test run may take (default 600)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    files = [name for name in TEST_FILES if (ROOT / name).is_file()]
    if not files:
        print("error: none of the test files exist: " + ", ".join(TEST_FILES), file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "report.xml"
        # -n 0: one row at a time and in order (pyproject's addopts run the suite on xdist workers), so that the
        # durations and memory peaks the document shows are each row's own.
        options = ["-q", "-n", "0", "-p", "no:cacheprovider", f"--junitxml={junit}"]
        command = [sys.executable, "-m", "pytest", *files, *options]
        # Its own session, so that a run past the deadline is killed with every process it started.
        run = subprocess.Popen([*command, *args.pytest_args], cwd=ROOT, start_new_session=True)
        try:
            status = run.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.pid, signal.SIGKILL)
            run.wait()
            late = f"error: the tests did not finish within {args.timeout:g} s; the document is unchanged"
            print(late, file=sys.stderr)
            return 1
        if not junit.is_file():
            print(f"error: pytest wrote no report (exit status {status})", file=sys.stderr)
            return status or 1
        rows = case_rows(junit)
    text = args.doc.read_text(encoding="utf-8")
    args.doc.write_text(replace_between_markers(text, render(rows, files)), encoding="utf-8")
    print(f"{args.doc}: {len(rows)} cases written")
    return status


if __name__ == "__main__":
    sys.exit(main())
