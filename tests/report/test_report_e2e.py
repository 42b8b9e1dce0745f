"""End to end, as a user runs it: a tiny sweep through the real CLI (random DeiT-Tiny weights,
synthetic 8-image ImageNet, wandb offline) builds its table and logs it to a wandb `summary` run;
then `python -m ptqbench.report` rebuilds the same table from the records; then LaTeX compiles."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys

import pytest
from tests.conftest import REPO, run_cli
from tests.report.test_report import write_reference

from ptqbench.per_image import hits_of
from ptqbench.records import load_records
from ptqbench.report.latex import standalone
from ptqbench.report.tables import fmt


def test_sweep_report_wandb_summary_and_cli(tiny_imagenet, tmp_path):
    res = tmp_path / "results"
    write_reference(tmp_path / "ref")  # published numbers of other models: comparison lines without a paper value
    ref_env = {"PTQBENCH_REFERENCE": str(tmp_path / "ref")}
    sweep = run_cli("-m", "method=minmax", "bits.w=4,99", "bits.a=4", "calib.seed=0,1", f"data.root={tiny_imagenet}",
                    f"results_dir={res}", "model.pretrained=false", "calib.size=4", "data.batch_size=4",
                    "data.workers=0", "logger=wandb", "report.name=e2e", "report.methods=[fp,minmax]",
                    env={"WANDB_MODE": None, **ref_env})
    log = sweep.stdout + sweep.stderr
    assert sweep.returncode == 1, log[-3000:]  # the two bits.w=99 jobs fail; the table is built anyway
    assert "4 jobs, 2 ran, 0 skipped (already finished), 2 failed" in log

    recs = [r for r in load_records(res) if r["status"] == "ok"]
    top1 = [r["metrics"]["top1"] for r in recs]
    fp = {r["metrics"]["fp_top1"] for r in recs}
    assert len(recs) == 2 and len(fp) == 1
    for r in recs:  # per-image hits for the paired bootstrap, consistent with the run's own top-1
        tag, hits = hits_of(r, "top1")
        assert tag == r["data"]["eval_ids_sha"] and hits.size == r["data"]["eval_images"]
        assert 100.0 * hits.mean() == pytest.approx(r["metrics"]["top1"])
    md = (res / "tables" / "e2e.md").read_text()
    assert f"| 32/32 | Full Prec. | {fmt(fp.pop(), 2)}† |" in md  # † the paper FP differs (shipped reference)
    mean, std = fmt(statistics.fmean(top1), 2), fmt(statistics.stdev(top1), 2)
    assert f"| 4/4 | Min-Max | {mean} ± {std} (n=2) |" in md
    # the bits.w=99 jobs are refused before they run: no record, so nothing about them in the table
    assert md.startswith("<!-- ptqbench ") and "did not finish" not in md and "99/4" not in md
    # the shipped published numbers include DeiT-T's FP (72.21), far from random weights' FP
    assert "### Compared with the published numbers" in md and "† our FP differs from the published FP" in md
    for suffix in (".csv", ".tex", "_cells.csv", "_runs.csv", "_bits.png", "_bits.pdf", "_drop.png"):
        assert (res / "tables" / f"e2e{suffix}").stat().st_size > 0, suffix

    # wandb: two job runs (the refused bits.w=99 jobs start none) and one summary run in the same
    # group, with the table and the plot
    runs = sorted((res / "wandb").glob("offline-run-*"))
    assert len(runs) == 3
    summary = [r for r in runs if (r / "files" / "media" / "table" / "report").is_dir()]  # jobs log tables too
    assert len(summary) == 1
    media_dir = summary[0] / "files" / "media"
    media = {p.relative_to(media_dir).parts[:2] for p in media_dir.rglob("*.*")}
    assert {("table", "report"), ("images", "report")} <= media
    tables = sorted(p.name.rsplit("_", 2)[0] for p in (media_dir / "table" / "report").iterdir())
    assert {"cells", "table", "vs_paper"} <= set(tables)
    group = recs[0]["group"].encode()
    assert group in next(summary[0].glob("run-*.wandb")).read_bytes()

    # the report CLI over the same records gives the same table
    env = {**os.environ, "PYTHONPATH": str(REPO), **ref_env}
    cli = subprocess.run([sys.executable, "-m", "ptqbench.report", "--results-dir", str(res), "--methods", "fp,minmax",
                          "--name", "e2e", "--out", str(tmp_path / "cli" / "e2e")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr[-3000:]
    def body(text: str) -> str:  # without the provenance line (its date and command differ)
        return text.split("\n", 1)[1]

    assert body((tmp_path / "cli" / "e2e.md").read_text()) == body(md)
    assert body((tmp_path / "cli" / "e2e.tex").read_text()) == body((res / "tables" / "e2e.tex").read_text())

    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed: LaTeX compilation not checked")
    doc = tmp_path / "doc"
    doc.mkdir()
    (doc / "doc.tex").write_text(standalone((res / "tables" / "e2e.tex").read_text()))
    tex = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=doc,
                         capture_output=True, text=True, timeout=120)
    assert tex.returncode == 0, tex.stdout[-3000:]
