"""The benchmark suite's entry point runs and writes its table (tiny settings; the real run is
on request: `python -m ptqbench.bench`)."""

import subprocess
import sys

from conftest import REPO


def test_bench_eval_part_writes_a_table_with_the_machine(tmp_path):
    out = tmp_path / "bench.md"
    res = subprocess.run([sys.executable, "-m", "ptqbench.bench", "--parts", "eval", "--eval-models", "deit_tiny",
                          "--eval-methods", "minmax", "--eval-batch", "2", "--eval-repeats", "1", "--threads", "1",
                          "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    text = out.read_text()
    assert "Machine:" in text and "cores" in text and "torch" in text
    row = [ln for ln in text.splitlines() if ln.startswith("| deit_tiny | minmax")]
    assert len(row) == 1 and "failed" not in row[0], text
    ratio = float(row[0].split("|")[7])
    assert 0.5 < ratio < 20  # a measured number, not a placeholder
