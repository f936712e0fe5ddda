"""The benchmark's command: a step that fails keeps the figures of the steps before it."""

from __future__ import annotations

from pathlib import Path

import pytest

import bench.__main__ as bench_main
from bench.processes import BenchError
from bench.report import Results


def test_a_failing_step_keeps_the_report_of_the_steps_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def first_step_then_a_failure(_plan: object, _steps: object, _work_dir: Path, results: Results) -> None:
        results.blackbox_skipped_because = "the first step's figures"
        raise BenchError("memory: /-/ready not within 120s; its last log lines:\nlast line")

    monkeypatch.setattr(bench_main, "run", first_step_then_a_failure)
    output = tmp_path / "report.md"
    assert bench_main.main(["--quick", "--output", str(output)]) == 1
    report = output.read_text(encoding="utf-8")
    assert "the first step's figures" in report
    assert "**The run stopped early.**" in report
    assert "```\nmemory: /-/ready not within 120s; its last log lines:\nlast line\n```" in report
    assert report in capsys.readouterr().out
