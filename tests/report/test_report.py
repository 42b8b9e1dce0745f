"""Golden tests of the report: from a small set of run records, the pivot, the bold/underlined
cells, mean ± std, the LaTeX (compiled when pdflatex exists), the COCO table, and the rows the
paper comparison picks. Every expected string below follows from the numbers in the records
built here (or, for the real-records test, from tests/report/fixtures/runs: trimmed records of real
DeiT-Tiny runs on the shared data)."""

from __future__ import annotations

import json
import math
import shutil
import statistics
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from ptqbench.records import run_key, semantic_config
from ptqbench.report import ReportError, ReportSpec, build_table, collect, collect_records
from ptqbench.report.__main__ import EXPERIMENTS, main as report_main
from ptqbench.report.build import build_report, write_report
from ptqbench.report.latex import render_latex, standalone
from ptqbench.report.markdown import table_markdown
from ptqbench.report.reference import compare, pick

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[2]


def record(model: str, method: str, w: int, a: int, metrics: dict[str, Any], *, calib_seed: int = 0,
           calib_size: int = 32, task: str = "classification", eval_limit: Any = None, status: str = "ok",
           method_options: dict[str, Any] | None = None, eval_images: int = 1300) -> dict[str, Any]:
    """A run record with the fields the report reads, shaped like `ptqbench.run` writes them."""
    cfg = {"seed": 0, "model": {"name": model, "pretrained": True},
           "method": {"name": method, **(method_options or {})}, "bits": {"w": w, "a": a},
           "calib": {"size": calib_size, "seed": calib_seed, "split": "train"},
           "data": {"root": None, "eval_limit": eval_limit, "val_split": "val"}, "task": {"name": task}}
    rec = {"run_key": run_key(cfg), "status": status, "group": "g", "config": cfg,
           "semantic_config": semantic_config(cfg), "data": {"eval_images": eval_images}}
    if status == "ok":
        rec["metrics"] = metrics
    else:
        rec["error"] = "ConfigError: unknown method"
    return rec


def top1(model: str, method: str, w: int, a: int, value: float, fp: float, **kw: Any) -> dict[str, Any]:
    return record(model, method, w, a, {"top1": value, "top5": value, "fp_top1": fp, "fp_top5": fp}, **kw)


FP_S, FP_T = 79.85, 72.21


def imagenet_records() -> list[dict[str, Any]]:
    """Two models given out of column order, three methods, two W/A groups; RepQ-ViT repeated over
    three calibration draws; two rounded ties; one failed run."""
    recs = [
        top1("deit_small", "fp", 32, 32, FP_S, FP_S),
        # W4A4, DeiT-S: repq 70/71/72 -> 71.00 ± 1.00 (n=3); percentile 60.004 and minmax 59.996 both
        # print 60.00, below 71.00: both second best.
        *[top1("deit_small", "repq", 4, 4, v, FP_S, calib_seed=s) for s, v in enumerate((70.0, 71.0, 72.0))],
        top1("deit_small", "percentile", 4, 4, 60.004, FP_S),
        top1("deit_small", "minmax", 4, 4, 59.996, FP_S),
        # W4A4, ViT-S: minmax 1.5 best (repq missing), percentile 0.25 second
        top1("vit_small", "minmax", 4, 4, 1.5, 81.39),
        top1("vit_small", "percentile", 4, 4, 0.25, 81.39),
        # W6A6, DeiT-S: repq 78.123 and percentile 78.1249 tie at 78.12 -> both bold; minmax second
        top1("deit_small", "repq", 6, 6, 78.123, FP_S),
        top1("deit_small", "percentile", 6, 6, 78.1249, FP_S),
        top1("deit_small", "minmax", 6, 6, 75.0, FP_S),
        top1("deit_small", "repq", 8, 8, 0.0, 0.0, status="failed"),
    ]
    return recs


EXPECTED_MD = """\
| W/A | Method | ViT-S | DeiT-S |
|:--|:--|--:|--:|
| 32/32 | Full Prec. | 81.39 | 79.85 |
| 4/4 | Min-Max | **1.50** | <ins>60.00</ins> |
|  | Percentile | <ins>0.25</ins> | <ins>60.00</ins> |
|  | RepQ-ViT | -- | **71.00** ± 1.00 (n=3) |
| 6/6 | Min-Max | -- | <ins>75.00</ins> |
|  | Percentile | -- | **78.12** |
|  | RepQ-ViT | -- | **78.12** |"""


def test_collect_keeps_finished_runs_and_counts_failed():
    col = collect_records(imagenet_records())
    assert len(col.runs) == 11 and len(col.failed) == 1
    assert col.failed.iloc[0][["model", "method", "w_bits", "a_bits"]].tolist() == ["deit_small", "repq", 8, 8]
    fp = col.runs[col.runs["method"] == "fp"].iloc[0]
    assert (fp["w_bits"], fp["a_bits"], fp["top1"], fp["fp_top1"]) == (32, 32, FP_S, FP_S)
    assert fp["calib_size"] is pd.NA
    repq = col.runs[(col.runs["method"] == "repq") & (col.runs["w_bits"] == 4)]
    assert sorted(repq["calib_seed"]) == [0, 1, 2] and set(repq["calib_size"]) == {32}
    assert set(col.runs.columns) >= {"run_key", "model", "method", "w_bits", "a_bits", "calib_size", "seed", "top1"}


def test_pivot_bold_second_best_and_mean_std_are_exact():
    col = collect_records(imagenet_records())
    table = build_table(col.runs, ReportSpec(bold="value"), col.failed)
    assert table_markdown(table) == EXPECTED_MD
    cell = next(c for (r, k), c in table.cells.items() if r.method == "repq" and r.w == 4 and k.model == "deit_small")
    assert (cell.mean, cell.std, cell.n) == (71.0, statistics.stdev([70.0, 71.0, 72.0]), 3) and cell.std == 1.0
    # the failed 8/8 run has no row here: it goes to the side file, not the notes
    assert table.failed[["method", "w_bits", "in_table"]].values.tolist() == [["repq", 8, False]]
    assert not any(n.kind == "failed" for n in table.notes)
    explicit = build_table(col.runs, ReportSpec(bold="value", bits=["w4a4", "w8a8"], notes="full"), col.failed)
    assert explicit.note_texts()[-2] == ("1 run(s) of this table did not finish and are not in it: "
                                         "DeiT-S RepQ-ViT 8/8: ConfigError: unknown method.")
    # the CSV is the same table as plain text; the W/A is repeated on every line
    assert table.to_frame().iloc[3].tolist() == ["4/4", "RepQ-ViT", "--", "71.00 ± 1.00 (n=3)"]


def test_second_best_can_be_turned_off_and_single_value_is_not_marked():
    col = collect_records(imagenet_records())
    table = build_table(col.runs, ReportSpec(second_best=False, models=["deit_small"], methods=["repq"], bold="value"))
    assert table_markdown(table).splitlines()[2:] == [
        "| 4/4 | RepQ-ViT | 71.00 ± 1.00 (n=3) |", "| 6/6 | RepQ-ViT | 78.12 |"]
    table = build_table(col.runs, ReportSpec(second_best=False, models=["deit_small"], bits=["w4a4"], bold="value"))
    assert "<ins>" not in table_markdown(table)


def test_explicit_layout_keeps_missing_rows_and_columns():
    col = collect_records(imagenet_records())
    spec = ReportSpec(models=["deit_tiny", "deit_small"], methods=["fp", "repq", "erq"], bits=["w3a4", "w4a4"])
    assert table_markdown(build_table(col.runs, spec)) == """\
| W/A | Method | DeiT-T | DeiT-S |
|:--|:--|--:|--:|
| 32/32 | Full Prec. | -- | 79.85 |
| 3/4 | RepQ-ViT | -- | -- |
|  | ERQ | -- | -- |
| 4/4 | RepQ-ViT | -- | 71.00 ± 1.00 (n=3) |
|  | ERQ | -- | -- |"""


EXPECTED_TEX = r"""% ptqbench report; needs \usepackage{booktabs}
\begin{table}[t]
\centering
\caption{Top-1 of my\_method at 100\% \& more}
\label{tab:golden}
\begin{tabular}{llcc}
\toprule
W/A & Method & ViT-S & DeiT-S \\
\midrule
32/32 & Full Prec. & 81.39 & 79.85 \\
\midrule
4/4 & Min-Max & \textbf{1.50} & \underline{60.00} \\
 & Percentile & \underline{0.25} & \underline{60.00} \\
 & RepQ-ViT~\cite{li2023repq} & -- & \textbf{71.00}{\scriptsize$\pm$1.00\,(3)} \\
\midrule
6/6 & Min-Max & -- & \underline{75.00} \\
 & Percentile & -- & \textbf{78.12} \\
 & RepQ-ViT~\cite{li2023repq} & -- & \textbf{78.12} \\
\bottomrule
\end{tabular}
\par\smallskip
{\footnotesize\raggedright Evaluated on 1,300 of the 50,000 ImageNet validation images the papers use (compare drops from FP); mean $\pm$ std over n runs, n in parentheses; --: no result.\par}
\end{table}
"""


def test_latex_is_exact():
    col = collect_records(imagenet_records())
    table = build_table(col.runs, ReportSpec(caption="Top-1 of my_method at 100% & more", name="golden", bold="value"))
    assert render_latex(table) == EXPECTED_TEX


def _compile(tex: str, tmp_path: Path) -> None:
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed (Debian: apt-get install texlive-latex-base texlive-latex-recommended)")
    (tmp_path / "doc.tex").write_text(standalone(tex))
    out = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 0


def test_latex_compiles(tmp_path):
    recs = imagenet_records() + [top1("deit_small", "my_method%&#", 4, 4, 50.0, FP_S)]
    col = collect_records(recs)
    _compile(render_latex(build_table(col.runs, ReportSpec(caption="a_b 5% {x} ~ ^ \\ $", name="x"), col.failed)),
             tmp_path)


def coco_records() -> list[dict[str, Any]]:
    """mmdet-style AP fractions; FP from method=fp runs; RepQ-ViT over two calibration draws."""
    det = []
    for model, fp_box, fp_mask in (("mask_rcnn_swin_t", 0.460, 0.416), ("cascade_mask_rcnn_swin_t", 0.504, 0.437)):
        det.append(record(model, "fp", 32, 32, {"coco/bbox_mAP": fp_box, "coco/segm_mAP": fp_mask}, task="detection",
                          calib_size=1, eval_images=5000))
    for s, (box, mask) in enumerate(((0.361, 0.360), (0.363, 0.356))):
        det.append(record("mask_rcnn_swin_t", "repq", 4, 4, {"coco/bbox_mAP": box, "coco/segm_mAP": mask},
                          task="detection", calib_size=1, calib_seed=s, eval_images=5000))
    det.append(record("cascade_mask_rcnn_swin_t", "repq", 4, 4, {"coco/bbox_mAP": 0.470, "coco/segm_mAP": 0.414},
                      task="detection", calib_size=1, eval_images=5000))
    return det


def test_coco_table_box_and_mask_ap_per_detector(tmp_path):
    col = collect_records(coco_records() + imagenet_records())  # the task picks the detection runs
    table = build_table(col.runs, ReportSpec(task="detection"))
    assert table_markdown(table).splitlines() == [
        "| W/A | Method | Mask R-CNN Swin-T box AP | Mask R-CNN Swin-T mask AP "
        "| Cascade Mask R-CNN Swin-T box AP | Cascade Mask R-CNN Swin-T mask AP |",
        "|:--|:--|--:|--:|--:|--:|",
        "| 32/32 | Full Prec. | 46.0 | 41.6 | 50.4 | 43.7 |",
        "| 4/4 | RepQ-ViT | 36.2 ± 0.1 (n=2) | 35.8 ± 0.3 (n=2) | 47.0 | 41.4 |"]
    tex = render_latex(table)
    assert (r" &  & \multicolumn{2}{c}{Mask R-CNN Swin-T} & \multicolumn{2}{c}{Cascade Mask R-CNN Swin-T} \\"
            "\n" r"\cmidrule(lr){3-4} \cmidrule(lr){5-6}" "\n"
            r"W/A & Method & AP$^{\mathrm{box}}$ & AP$^{\mathrm{mask}}$ & AP$^{\mathrm{box}}$ "
            r"& AP$^{\mathrm{mask}}$ \\") in tex
    assert "Evaluated on 5,000 COCO val2017 images." in table.note_texts()[0]
    _compile(tex, tmp_path)


def write_reference(ref: Path) -> None:
    """Two sources per cell, the method's own paper second, so file order alone would pick wrong."""
    ref.mkdir()
    (ref / "coco_ap.csv").write_text(
        "source,task,method,w_bits,a_bits,model,box_ap,mask_ap\n"
        "APHQ-ViT (CVPR 2025) Table 2,coco,repq,4,4,cascade_mask_rcnn_swin_tiny,47.0,41.1\n"
        "RepQ-ViT detection/README.md,coco,fp,32,32,cascade_mask_rcnn_swin_tiny,50.4,43.7\n"
        "RepQ-ViT detection/README.md,coco,repq,4,4,cascade_mask_rcnn_swin_tiny,47.0,41.4\n"
        "RepQ-ViT detection/README.md,coco,fp,32,32,mask_rcnn_swin_tiny,46.0,41.6\n"
        "RepQ-ViT detection/README.md,coco,repq,4,4,mask_rcnn_swin_tiny,36.1,36.0\n")
    (ref / "imagenet_top1.csv").write_text(
        "source,task,method,w_bits,a_bits,model,metric,value\n"
        "Other (2025) Table 1,imagenet,fp,32,32,deit_small,top1,79.80\n"
        "Other (2025) Table 1,imagenet,repq,4,4,deit_small,top1,69.03\n"
        "RepQ-ViT (ICCV 2023) README,imagenet,fp,32,32,deit_small,top1,79.85\n"
        "RepQ-ViT (ICCV 2023) README,imagenet,repq,4,4,deit_small,top1,69.03\n"
        "RepQ-ViT (ICCV 2023) README,imagenet,repq,6,6,deit_small,top1,78.32\n"
        "ERQ (TPAMI 2025),imagenet,repq,4,4,deit_small,top1,68.00\n"
        "ERQ (TPAMI 2025),imagenet,fp,32,32,vit_small,top1,81.39\n")


def test_paper_comparison_picks_own_paper_then_preferred_source(tmp_path):
    write_reference(tmp_path / "ref")
    col = collect_records(coco_records())
    table = build_table(col.runs, ReportSpec(task="detection"))
    cmp = compare(table, tmp_path / "ref").set_index(["method", "model", "metric"])
    # cascade W4A4 mask AP: RepQ-ViT's own 41.4, not APHQ-ViT's reprint (41.1, first in the file)
    assert cmp.loc[("repq", "cascade_mask_rcnn_swin_t", "mask_ap"), "paper"] == 41.4
    assert cmp.loc[("repq", "cascade_mask_rcnn_swin_t", "mask_ap"), "source"] == "RepQ-ViT detection/README.md"
    line = cmp.loc[("repq", "mask_rcnn_swin_t", "box_ap")]
    assert line["ours"] == pytest.approx(36.2) and line["paper"] == 36.1 and line["delta"] == pytest.approx(0.1)
    assert line["our_drop"] == pytest.approx(46.0 - 36.2) and line["paper_drop"] == pytest.approx(46.0 - 36.1)
    assert not cmp["fp_differs"].any()  # our synthetic FP equals the README's

    ref = pd.read_csv(tmp_path / "ref" / "imagenet_top1.csv")
    assert pick(ref, "repq", 4, 4, "deit_small")["source"] == "RepQ-ViT (ICCV 2023) README"  # own paper
    assert pick(ref, "repq", 4, 4, "deit_small", "ERQ (TPAMI")["value"] == 68.00              # preferred source
    assert pick(ref, "fp", 32, 32, "deit_small")["value"] == 79.80                             # first in the file
    assert pick(ref, "repq", 3, 4, "deit_small") is None


def test_fp_mismatch_is_flagged_and_drops_compared(tmp_path):
    write_reference(tmp_path / "ref")
    col = collect_records(imagenet_records())
    spec = ReportSpec(models=["deit_small"], methods=["fp", "repq"])
    table = build_table(col.runs, spec)
    cmp = compare(table, tmp_path / "ref", fp_threshold=0.1).set_index(["bits", "method"])
    # our FP 79.85 vs the first FP row (Other, 79.80): |0.05| <= 0.1, not flagged
    assert not cmp["fp_differs"].any()
    table = build_table(col.runs, spec)
    cmp = compare(table, tmp_path / "ref", fp_threshold=0.01).set_index(["bits", "method"])
    assert cmp["fp_differs"].all()
    assert table_markdown(table).splitlines()[2] == "| 32/32 | Full Prec. | 79.85† |"
    assert table.note_texts()[-1].startswith("† Our FP differs from the published FP by more than 0.01 points "
                                      "(DeiT-S: 79.85 here, 79.80 in Other (2025) Table 1)")
    w4 = cmp.loc[("4/4", "repq")]
    # RepQ-ViT W4A4 from its own paper, whose FP is 79.85: paper drop 10.82; ours 79.85 - 71.00 = 8.85
    assert w4["paper"] == 69.03 and w4["source"] == "RepQ-ViT (ICCV 2023) README"
    assert w4["paper_drop"] == pytest.approx(79.85 - 69.03) and w4["our_drop"] == pytest.approx(79.85 - 71.0)
    assert w4["delta_drop"] == pytest.approx((79.85 - 71.0) - (79.85 - 69.03))
    assert w4["n"] == 3


def test_real_records_table(tmp_path):
    """Trimmed records of real DeiT-Tiny runs (1300 shared val images): the committed table."""
    col = collect(FIXTURES)
    table = build_table(col.runs, ReportSpec(models=["deit_tiny"], methods=["fp", "minmax", "percentile", "repq"],
                                             bold="value"))
    assert table_markdown(table) == """\
| W/A | Method | DeiT-T |
|:--|:--|--:|
| 32/32 | Full Prec. | 81.54 |
| 4/4 | Min-Max | 1.23 |
|  | Percentile | <ins>22.23</ins> |
|  | RepQ-ViT | **69.41** ± 0.70 (n=3) |
| 6/6 | Min-Max | 77.15 |
|  | Percentile | <ins>78.92</ins> |
|  | RepQ-ViT | **80.03** ± 0.24 (n=3) |"""
    # 1300 images: 894, 901 and 912 correct -> mean 902.33 / 13, std over the three percentages
    w4 = sorted(json.loads(p.read_text())["metrics"]["top1"] for p in (FIXTURES / "runs").glob("*.json")
                if json.loads(p.read_text())["config"]["method"]["name"] == "repq"
                and json.loads(p.read_text())["config"]["bits"]["w"] == 4)
    assert [round(v * 13) for v in w4] == [894, 901, 912]
    cell = next(c for (r, k), c in table.cells.items() if r.method == "repq" and r.w == 4)
    assert math.isclose(cell.mean, (894 + 901 + 912) / 39) and math.isclose(cell.std, statistics.stdev(w4))


def test_mixed_settings_are_refused_until_one_is_picked():
    recs = [top1("deit_small", "repq", 4, 4, 70.0, FP_S), top1("deit_small", "repq", 4, 4, 50.0, 75.0, eval_limit=200)]
    with pytest.raises(ReportError, match=r"data\.eval_limit: 200, null.*--where data\.eval_limit=200 "):
        build_table(collect_records(recs).runs, ReportSpec())
    col = collect_records(recs, where={"data.eval_limit": [None]})
    assert table_markdown(build_table(col.runs, ReportSpec())).splitlines()[-1] == "| 4/4 | RepQ-ViT | 70.00 |"


def test_method_options_that_differ_become_separate_rows():
    recs = [top1("deit_small", "repq", 4, 4, 70.0, FP_S, method_options={"reparam": True, "log_sqrt2": True}),
            top1("deit_small", "repq", 4, 4, 65.0, FP_S, method_options={"reparam": False, "log_sqrt2": True})]
    table = build_table(collect_records(recs).runs, ReportSpec(methods=["repq"]))
    assert [r.label for r in table.rows] == ["RepQ-ViT (reparam=false)", "RepQ-ViT (reparam=true)"]


def test_several_calibration_sizes_get_a_column_and_a_plot(tmp_path):
    recs = [top1("deit_small", "repq", 4, 4, v, FP_S, calib_size=n) for n, v in ((32, 70.0), (128, 71.0), (8, 60.0))]
    col = collect_records(recs)
    report = build_report(col, ReportSpec(methods=["repq"], bold="value"), None)
    assert table_markdown(report.table) == """\
| W/A | Method | Calib | DeiT-S |
|:--|:--|:--|--:|
| 4/4 | RepQ-ViT | 8 | 60.00 |
|  | RepQ-ViT | 32 | <ins>70.00</ins> |
|  | RepQ-ViT | 128 | **71.00** |"""
    files = write_report(report, tmp_path / "t")
    names = sorted(p.name for p in files)
    # no FP row, so no drop from FP to plot; the shipped reference has RepQ-ViT DeiT-S W4A4
    assert names == ["t.csv", "t.md", "t.tex", "t_bits.pdf", "t_bits.png", "t_calib.pdf", "t_calib.png", "t_cells.csv",
                     "t_runs.csv", "t_vs_paper.csv"]
    assert all(p.stat().st_size > 0 for p in files)
    only32 = build_table(col.runs, ReportSpec(calib_size=32))
    assert not only32.show_calib and table_markdown(only32).splitlines()[-1] == "| 4/4 | RepQ-ViT | 70.00 |"


def test_report_cli_on_records(tmp_path, capsys):
    write_reference(tmp_path / "ref")
    (tmp_path / "res" / "runs").mkdir(parents=True)
    for r in imagenet_records():
        (tmp_path / "res" / "runs" / f"{r['run_key']}.json").write_text(json.dumps(r))
    out = tmp_path / "tables" / "t"
    assert report_main(["--results-dir", str(tmp_path / "res"), "--out", str(out), "--reference", str(tmp_path / "ref"),
                        "--no-plots", "--models", "vit_small,deit_small", "--bold", "value"]) == 0
    printed = capsys.readouterr().out
    assert EXPECTED_MD in printed and "### Compared with the published numbers" in printed
    assert (out.parent / "t_vs_paper.csv").is_file() and (out.parent / "t.tex").is_file()
    md = (out.parent / "t.md").read_text()
    assert md.startswith("<!-- ptqbench ") and md.split("\n", 1)[1] in printed
    assert report_main(["--results-dir", str(tmp_path / "res"), "--metric", "box_ap"]) == 2
    assert "belong to another task" in capsys.readouterr().err


def test_experiments_sweep_what_their_table_shows():
    """Each experiment's report block is valid and names the grid its sweep runs."""
    names = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))
    assert names == ["coco_table", "deit_tiny_smoke", "dopq_table", "erq_table", "recon_deit_tiny", "recon_table",
                     "repq_detection"]
    for name in names:
        cfg = yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())
        spec = ReportSpec.from_mapping(cfg["report"])
        params = cfg["hydra"]["sweeper"]["params"]
        assert spec.name == name
        assert params["model"].split(",") == spec.models, name
        assert params["method"].split(",") == spec.methods, name
        assert params["bits"].split(",") == spec.bits, name


def test_unknown_report_option_is_refused():  # the composed `report` block is ReportSpec's: tests/test_config.py
    with pytest.raises(Exception, match="unknown report option"):
        ReportSpec.from_mapping({"colums": ["vit_small"]})


def test_experiment_table_before_any_of_its_runs(tmp_path, capsys):
    """The detection experiment over classification records: the paper's layout, every cell `--`."""
    assert report_main(["--results-dir", str(FIXTURES), "--experiment", "repq_detection", "--out", str(tmp_path / "t"),
                        "--no-plots", "--no-compare"]) == 0
    lines = (tmp_path / "t.md").read_text().splitlines()[2:]  # after the provenance comment
    assert lines[0] == "Table: COCO box AP and mask AP (%) of RepQ-ViT, as in the RepQ-ViT detection table."
    assert lines[4:7] == [f"| {wa} | {m} |" + " -- |" * 8 for wa, m in
                          (("32/32", "Full Prec."), ("4/4", "RepQ-ViT"), ("6/6", "RepQ-ViT"))]
    assert "\\label{tab:repq-detection}" in (tmp_path / "t.tex").read_text()
