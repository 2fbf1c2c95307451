"""scripts/bench-report runs end to end (on a small trace, so the test stays quick)."""

from __future__ import annotations

import json
import os
import re
import subprocess

from report_support import ROOT


def test_bench_report_prints_its_figure(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([str(ROOT / "scripts" / "bench-report")], cwd=tmp_path,
                            env={**os.environ, "SPANS": "5000", "BENCH_OUT": str(out)},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert re.match(r"bench-report: tracer report on 5,000 spans \(\d+ MB\): median "
                    r"[\d.]+ s, best [\d.]+ s of 3", lines[0]), lines[0]
    figures = json.loads(out.read_text())
    assert figures["spans"] == 5000 and len(figures["runs_s"]) == 3
    assert figures["best_s"] == min(figures["runs_s"]) > 0
