"""The benchmark suite's entry point runs and writes its table (tiny settings; the real run is
on request: `python -m ptqbench.bench`)."""

import subprocess
import sys

from tests.conftest import REPO


def test_bench_eval_part_writes_a_table_with_the_machine(tmp_path):
    out = tmp_path / "bench.md"
    res = subprocess.run([sys.executable, "-m", "ptqbench.bench", "--parts", "eval", "--eval-models", "deit_tiny",
                          "--eval-methods", "minmax", "--eval-batch", "2", "--eval-repeats", "1", "--threads", "1",
                          "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    text = out.read_text()
    assert "Machine:" in text and "cores" in text and "torch" in text
    lines = text.splitlines()
    row = [ln for ln in lines if ln.startswith("| deit_tiny | minmax")]
    assert len(row) == 1 and "failed" not in row[0], text
    header = [c.strip() for c in lines[lines.index(row[0]) - 2].split("|")]
    cells = dict(zip(header, (c.strip() for c in row[0].split("|"))))
    for col in ("ratio", "fq_ratio"):
        assert 0.5 < float(cells[col]) < 20, cells  # measured numbers, not placeholders
    assert float(cells["fp_img_s"]) > 0 and float(cells["unfused_img_s"]) > 0, cells
