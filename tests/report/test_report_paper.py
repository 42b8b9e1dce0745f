"""The report as a paper needs it: LaTeX options (golden files), honest bold (paired bootstrap on
per-image results, with known answers), provenance and the tidy runs CSV, the shipped published
numbers, the plots' fixed styles, and clear errors for bad selections (issue 19, item 5).

Golden files: tests/report/fixtures/latex/<option>.tex. After a deliberate change to the rendering,
rewrite them with `PTQBENCH_UPDATE_GOLDEN=1 pytest tests/test_report_paper.py -k golden` and
read the diff."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from tests.report.report_synthetic import erq_records, synthetic_record

from ptqbench.per_image import decode_hits, encode_hits, per_image_field
from ptqbench.report import ReportError, ReportSpec, build_table, collect_records
from ptqbench.report.__main__ import main as report_main
from ptqbench.report.build import build_report, write_report
from ptqbench.report.latex import render_latex, standalone
from ptqbench.report.markdown import table_markdown
from ptqbench.report.names import STYLES, method_style
from ptqbench.report.reference import REFERENCE_ENV, SHIPPED, add_published, reference_dirs
from ptqbench.report.significance import BEST, SECOND, TIE, CellSample, group_marks, mcnemar_p

GOLDEN = Path(__file__).parent / "fixtures" / "latex"


# ---------------------------------------------------------------- per-image results and significance

def test_per_image_field_from_logits_round_trips():
    logits = np.array([[5, 1, 0, 0, 0, 0, 0], [0, 1, 5, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7]], dtype=np.float32)
    labels = np.array([0, 1, 2])  # image 0: top-1 hit; image 1: top-5 only; image 2: top-5 miss (2 ranks 5th)
    block = per_image_field(logits, labels, "sha")
    assert block["images"] == 3 and block["eval_ids_sha"] == "sha"
    assert decode_hits(block["top1"], 3).tolist() == [True, False, False]
    assert decode_hits(block["top5"], 3).tolist() == [True, True, True]
    hits = np.random.default_rng(0).random(1301) < 0.7
    assert (decode_hits(encode_hits(hits), 1301) == hits).all()
    with pytest.raises(ValueError, match="not 1290 images"):
        decode_hits(encode_hits(hits), 1290)


def test_per_image_hits_agree_with_the_evaluation_they_come_from():
    """What run.py stores (`per_image_field` of `evaluate`'s logits) gives evaluate's own top-1/top-5."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from ptqbench.tasks.classification import evaluate

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(50, 8), torch.randint(0, 10, (50,)))
    out = evaluate(torch.nn.Linear(8, 10), DataLoader(data, batch_size=16), torch.device("cpu"), keep_logits=True)
    block = per_image_field(out["logits"], out["labels"], "sha")
    assert 100 * decode_hits(block["top1"], 50).mean() == pytest.approx(out["top1"])
    assert 100 * decode_hits(block["top5"], 50).mean() == pytest.approx(out["top5"])


def _nested(n: int, better: int, worse: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Hits of two runs on `n` images: B right on `worse` images, A on those plus `better - worse`
    more (every discordant image favours A)."""
    order = np.random.default_rng(seed).permutation(n)
    a, b = np.zeros(n, bool), np.zeros(n, bool)
    a[order[:better]] = True
    b[order[:worse]] = True
    return a, b


def test_three_images_out_of_128_are_a_tie():
    """The issue's case: 78.12 (100/128) over 75.78 (97/128). McNemar's exact p for 3 discordant
    images, all one way, is 2 / 2**3 = 0.25; the bootstrap interval of the gap reaches 0."""
    a, b = _nested(128, 100, 97)
    assert mcnemar_p(a, b) == pytest.approx(0.25)
    res = group_marks([CellSample(a[None], 100 * a.mean()), CellSample(b[None], 100 * b.mean())])
    assert [r.mark for r in res] == [TIE, TIE]
    assert res[1].diff == pytest.approx(100 * 3 / 128) and res[1].diff_low <= 0 < res[1].diff_high


def test_a_hundred_images_out_of_1300_is_significant_with_the_textbook_interval():
    """100 discordant images of 1300: the paired difference d has mean p = 100/1300 and variance
    p(1-p)/n, so the 95% interval is 7.69 ± 1.96 * 0.739 points; the bootstrap agrees closely."""
    a, b = _nested(1300, 1000, 900)
    res = group_marks([CellSample(a[None], 100 * a.mean()), CellSample(b[None], 100 * b.mean())], n_boot=4000)
    p = 100 / 1300
    half = 1.96 * 100 * math.sqrt(p * (1 - p) / 1300)
    assert [r.mark for r in res] == [BEST, ""]  # nothing below the second: no underline
    assert res[1].diff_low == pytest.approx(100 * p - half, abs=0.3)
    assert res[1].diff_high == pytest.approx(100 * p + half, abs=0.3)
    assert mcnemar_p(a, b) < 1e-20


def test_second_best_needs_a_gap_below_it_and_runs_spread_counts():
    n = 1300
    difficulty = np.random.default_rng(1).random(n)
    hits = {acc: difficulty < acc for acc in (0.80, 0.70, 0.699, 0.81, 0.76, 0.87)}
    best, second, third = (CellSample(hits[x][None], 100 * hits[x].mean()) for x in (0.80, 0.70, 0.699))
    assert [r.mark for r in group_marks([best, second, third])] == [BEST, "", ""]  # 70.0 vs 69.9: no underline
    low = CellSample(hits[0.76][None] & hits[0.70][None], 100 * hits[0.70].mean())
    fourth = CellSample((difficulty < 0.5)[None], 50.0)
    assert [r.mark for r in group_marks([best, low, fourth])] == [BEST, SECOND, ""]
    # one run at 80% against three runs of 76/81/87% (mean 81.3): paired on the images the gap
    # looks certain, but the three runs disagree by 11 points, so it is a tie ...
    single = CellSample(hits[0.80][None], 100 * hits[0.80].mean())
    spread = np.stack([hits[0.76], hits[0.81], hits[0.87]])
    assert [r.mark for r in group_marks([CellSample(spread, 100 * spread.mean()), single])] == [TIE, TIE]
    # ... while three identical runs at 81% beat the single 80% run
    same = np.stack([hits[0.81]] * 3)
    assert [r.mark for r in group_marks([CellSample(same, 100 * same.mean()), single])][0] == BEST


def _two_method_records(n: int, better: int, worse: int, *, per_image: bool = True) -> list[dict[str, Any]]:
    a, b = _nested(n, better, worse)
    return [synthetic_record("deit_small", "percentile", 4, 4, a, 80.0, per_image=per_image),
            synthetic_record("deit_small", "repq", 4, 4, b, 80.0, per_image=per_image)]


def test_table_bolds_only_a_significant_best_and_the_cells_csv_has_the_intervals(tmp_path):
    col = collect_records(_two_method_records(128, 100, 97))
    report = build_report(col, ReportSpec(), None)
    md = table_markdown(report.table)
    assert "| 4/4 | Percentile | 78.12≈ |" in md and "| RepQ-ViT | 75.78≈ |" in md and "**" not in md
    assert "≈: tied with the best" in report.markdown
    write_report(report, tmp_path / "t", plots=False)
    cells = pd.read_csv(tmp_path / "t_cells.csv", skiprows=1)
    repq = cells[cells["method"] == "repq"].iloc[0]
    assert repq["significance"] == "tested" and repq["mark"] == "tie"
    assert repq["diff_vs_best"] == pytest.approx(100 * 3 / 128) and repq["diff_ci_low"] <= 0 < repq["diff_ci_high"]
    assert repq["ci_low"] < repq["mean"] < repq["ci_high"]

    clear = build_table(collect_records(_two_method_records(1300, 1000, 900)).runs, ReportSpec())
    assert "| 4/4 | Percentile | **76.92** |" in table_markdown(clear)


def test_without_per_image_results_nothing_is_bold_and_the_table_says_why():
    col = collect_records(_two_method_records(1300, 1000, 900, per_image=False))
    table = build_table(col.runs, ReportSpec(notes="full"))
    assert "**" not in table_markdown(table)
    assert any("significance unavailable for 1 column/W/A group(s)" in w for w in table.warnings)
    assert any("Significance unavailable" in t and "--bold value" in t for t in table.note_texts())
    assert "**76.92**" in table_markdown(build_table(col.runs, ReportSpec(bold="value")))


# ---------------------------------------------------------------- LaTeX options (golden files)

def _golden_records() -> list[dict[str, Any]]:
    """DeiT-T / DeiT-S, FP + RepQ-ViT (3 calibration draws) + ERQ at W4A4, on 1300 images."""
    return [r for r in erq_records(images=1300, seeds=3) if r["config"]["model"]["name"] in ("deit_tiny", "deit_small")
            and r["config"]["method"]["name"] in ("fp", "repq", "erq") and r["config"]["bits"]["w"] in (4, 32)]


OPTIONS: dict[str, dict[str, Any]] = {
    "default": {},
    "float_star": {"latex_float": "table*"},
    "fit_resize": {"fit": "resize"},
    "fit_small": {"fit": "small"},
    "std_none": {"std": "none"},
    "std_separate": {"std": "separate"},
    "notes_none": {"notes": "none"},
    "notes_full": {"notes": "full"},
    "method_bits": {"index_order": "method-bits"},
    "raw_caption_cite": {"latex_caption": r"Top-1 as in~\cite{li2023repq} ($n=1300$)", "cite": {"repq": "repq23", "erq": ""}},
    "with_published": {"with_published": ["ptq4vit", "apq_vit"], "reference_source": "ERQ (TPAMI 2025)"},
}


def _render(name: str) -> str:
    spec = ReportSpec(name="golden", models=["deit_tiny", "deit_small"], methods=["fp", "repq", "erq"], **OPTIONS[name])
    col = collect_records(_golden_records())
    table = build_table(col.runs, spec, col.failed)
    if spec.with_published:
        add_published(table, reference_dirs(), spec.with_published, spec.reference_source)
    return render_latex(table)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_latex_golden(name):
    path = GOLDEN / f"{name}.tex"
    text = _render(name)
    if os.environ.get("PTQBENCH_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text()


def test_golden_option_differences_are_the_intended_ones():
    """Guards against a golden file rewritten by mistake: each option changes what it says."""
    default = (GOLDEN / "default.tex").read_text()
    assert r"\textbf{" in default and r"RepQ-ViT~\cite{li2023repq}" in default and r"{\scriptsize$\pm$" in default
    assert r"\begin{table*}[t]" in (GOLDEN / "float_star.tex").read_text()
    assert r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%" in (GOLDEN / "fit_resize.tex").read_text()
    assert "\\small\n\\setlength{\\tabcolsep}{3pt}" in (GOLDEN / "fit_small.tex").read_text()
    assert r"\pm" not in (GOLDEN / "std_none.tex").read_text().split(r"\bottomrule")[0]
    assert "\n &  & {\\scriptsize$\\pm$0.38\\,(3)} & {\\scriptsize$\\pm$0.16" in (GOLDEN / "std_separate.tex").read_text()
    assert r"\footnotesize" not in (GOLDEN / "notes_none.tex").read_text()
    assert "Bold: the best of its column" in (GOLDEN / "notes_full.tex").read_text()
    assert "Method & W/A & DeiT-T" in (GOLDEN / "method_bits.tex").read_text()
    raw = (GOLDEN / "raw_caption_cite.tex").read_text()
    assert r"\caption{Top-1 as in~\cite{li2023repq} ($n=1300$)}" in raw
    assert r"RepQ-ViT~\cite{repq23}" in raw and "ERQ & " in raw.replace(r"\textbf{", "")
    pub = (GOLDEN / "with_published.tex").read_text()
    assert r"PTQ4ViT$^*$~\cite{yuan2022ptq4vit} & 36.96 & 34.08" in pub and "* published numbers" in pub


def _compile(tex: str, tmp: Path, documentclass: str, options: str = "") -> str:
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed (Debian: apt-get install texlive-latex-base texlive-latex-recommended)")
    (tmp / "doc.tex").write_text(standalone(tex, documentclass, options))
    out = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:]
    return (tmp / "doc.log").read_text(errors="replace")


@pytest.mark.parametrize("documentclass,options,float_env", [("article", "", "table"),
                                                             ("article", "twocolumn", "table*")])
def test_seven_model_erq_table_fits_the_page(tmp_path, documentclass, options, float_env):
    """The ERQ experiment's layout over seven models (synthetic records: the shared data has
    DeiT-T weights only) compiles with no overfull box in one column and, spanning, in two."""
    block = json.loads(json.dumps(__import__("yaml").safe_load(
        (Path(__file__).resolve().parents[2] / "experiments" / "experiment" / "erq_table.yaml").read_text())["report"]))
    spec = ReportSpec.from_mapping({**block, "latex_float": float_env})
    col = collect_records(erq_records())
    table = build_table(col.runs, spec, col.failed)
    add_published(table, reference_dirs(), spec.with_published, spec.reference_source)
    log = _compile(render_latex(table), tmp_path, documentclass, options)
    assert "Overfull" not in log


# ---------------------------------------------------------------- provenance, runs CSV

def test_provenance_lines_runs_csv_and_mixed_commit_warning(tmp_path):
    recs = _golden_records()
    repq = [r for r in recs if r["config"]["method"]["name"] == "repq" and r["config"]["model"]["name"] == "deit_tiny"]
    repq[0]["git_commit"] = "def5678"
    repq[1]["versions"] = {**repq[1]["versions"], "torch": "2.12.0"}
    failed = synthetic_record("deit_tiny", "erq", 4, 4, np.zeros(4, bool), 0.0, calib_seed=9)
    failed.update(status="failed", error="RuntimeError: out of memory")
    del failed["metrics"]
    report = build_report(collect_records([*recs, failed]), ReportSpec(notes="full"), None, command="my command")
    files = write_report(report, tmp_path / "t", plots=False)
    assert {p.name for p in files} >= {"t.tex", "t.md", "t.csv", "t_cells.csv", "t_runs.csv", "t_failed.csv"}
    keys = sorted(r["run_key"] for r in [*recs, failed])
    for name, lead in (("t.tex", "% "), ("t.md", "<!-- "), ("t.csv", "# "), ("t_cells.csv", "# "), ("t_runs.csv", "# ")):
        first = (tmp_path / name).read_text().splitlines()[0]
        assert first.startswith(lead + "ptqbench 0.1.0 report | commit ") and "| command: my command |" in first, name
        assert f"runs ({len(keys)}): {' '.join(keys)}" in first and "run commits: abc1234 (13), def5678 (1)" in first
    warn = [w for w in report.table.warnings if "different commits" in w]
    assert warn == ["DeiT-T RepQ-ViT 4/4 averages runs from different commits (abc1234; def5678) and "
                    "library versions (torch 2.12.0/2.13.0)"]
    cells = pd.read_csv(tmp_path / "t_cells.csv", skiprows=1)
    assert cells["mixed_provenance"].notna().sum() == 1
    runs = pd.read_csv(tmp_path / "t_runs.csv", skiprows=1)
    assert len(runs) == len(recs) + 1 and runs["run_key"].is_unique
    assert {"git_commit", "versions", "calibration_s", "eval_peak_rss_mb", "config.model.name", "top1"} <= set(runs)
    assert runs.loc[runs["status"] == "failed", "error"].tolist() == ["RuntimeError: out of memory"]
    # the failure is a cell of this table (ERQ DeiT-T 4/4): listed in the full notes and the side file
    assert any("did not finish" in t and "out of memory" in t for t in report.table.note_texts())
    assert pd.read_csv(tmp_path / "t_failed.csv", skiprows=1)["in_table"].tolist() == [True]


def test_runs_only_writes_just_the_tidy_csv_even_for_mixed_settings(tmp_path, capsys):
    res = tmp_path / "res" / "runs"
    res.mkdir(parents=True)
    recs = _golden_records()
    recs[-1]["config"]["data"]["eval_limit"] = 200  # a mixed setting: no table, but a fine tidy file
    recs[-1]["semantic_config"]["data"]["eval_limit"] = 200
    for r in recs:
        (res / f"{r['run_key']}.json").write_text(json.dumps(r))
    assert report_main(["--results-dir", str(tmp_path / "res"), "--runs-only", "--out", str(tmp_path / "o" / "x"),
                        "--methods", "fp,repq"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["x_runs.csv"]
    runs = pd.read_csv(tmp_path / "o" / "x_runs.csv", skiprows=1)
    assert set(runs["method"]) == {"fp", "repq"} and len(runs) == 2 + 6
    assert report_main(["--results-dir", str(tmp_path / "res"), "--out", str(tmp_path / "o" / "y")]) == 2
    assert "--where data.eval_limit=" in capsys.readouterr().err


# ---------------------------------------------------------------- published numbers

def test_reference_ships_with_the_package_and_user_folders_come_first(tmp_path, monkeypatch):
    assert (SHIPPED / "imagenet_top1.csv").is_file() and (SHIPPED / "coco_ap.csv").is_file()
    monkeypatch.delenv(REFERENCE_ENV, raising=False)
    assert reference_dirs() == [SHIPPED.resolve()]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "imagenet_top1.csv").write_text("source,task,method,w_bits,a_bits,model,metric,value\n"
                                            "My lab (2026),imagenet,ptq4vit,4,4,deit_tiny,top1,12.34\n")
    monkeypatch.setenv(REFERENCE_ENV, str(mine))
    assert reference_dirs() == [mine.resolve(), SHIPPED.resolve()]
    col = collect_records(_golden_records())
    table = build_table(col.runs, ReportSpec(models=["deit_tiny"], methods=["fp", "repq"]))
    add_published(table, reference_dirs(), ["ptq4vit"])
    row = next(r for r in table.rows if r.published)
    assert table.rows.index(row) == 1 and table.cell(row, table.columns[0]).text == "12.34"  # yours, first
    assert table.cell(row, table.columns[0]).mark == ""  # never bold
    monkeypatch.setenv(REFERENCE_ENV, str(tmp_path / "nope"))
    with pytest.raises(Exception, match=r"PTQBENCH_REFERENCE .*nope: no such folder"):
        reference_dirs()


def test_published_method_without_numbers_is_refused_with_what_there_is():
    col = collect_records(_golden_records())
    table = build_table(col.runs, ReportSpec(models=["deit_tiny"], methods=["fp", "repq"]))
    with pytest.raises(ReportError, match=r"--with-published nosuch: no published number.*the reference has: .*PTQ4ViT|ptq4vit"):
        add_published(table, [SHIPPED], ["nosuch"])


# ---------------------------------------------------------------- plots

def test_methods_keep_one_look_distinct_without_colour(tmp_path):
    markers = [m for _, m, _ in STYLES.values()]
    dashes = [str(ls) for _, _, ls in STYLES.values()]
    # one marker and one dash pattern per method: told apart in grayscale, where colours merge
    assert len(set(markers)) == len(markers) and len(set(dashes)) == len(dashes)
    assert method_style("repq") == STYLES["repq"] and method_style("newmethod") == method_style("newmethod")
    spec = ReportSpec(bold="value", models=["deit_tiny", "deit_small"], plots=True)
    report = build_report(collect_records(erq_records(images=300, seeds=2)), spec, None)
    files = write_report(report, tmp_path / "t")
    assert {"t_bits.png", "t_drop.png", "t_drop.pdf"} <= {p.name for p in files}
    assert report.comparison["paper_drop"].notna().any()  # the papers' drops are there to overlay


# ---------------------------------------------------------------- bad selections (issue 19, item 5)

def _folder(tmp_path: Path, recs: list[dict[str, Any]]) -> Path:
    runs = tmp_path / "res" / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    for r in recs:
        (runs / f"{r['run_key']}.json").write_text(json.dumps(r))
    return tmp_path / "res"


def _err(capsys, *argv: str) -> str:
    assert report_main([*argv, "--no-plots"]) == 2
    return capsys.readouterr().err


def test_unknown_model_and_method_are_named_with_what_there_is(tmp_path, capsys):
    res = _folder(tmp_path, _golden_records())
    err = _err(capsys, "--results-dir", str(res), "--models", "deit_huge")
    assert "unknown model(s) 'deit_huge' in --models; the finished runs have: deit_tiny, deit_small" in err
    err = _err(capsys, "--results-dir", str(res), "--methods", "fp,minmaxx")
    assert "unknown method(s) 'minmaxx' in --methods; the finished runs have: fp, repq, erq" in err
    err = _err(capsys, "--results-dir", str(res), "--models", "swin_base")  # known, but no run of it
    assert "no finished run matches the selection (models=swin_base)" in err
    assert "models deit_small (7), deit_tiny (7); methods erq (6), fp (2), repq (6); bits w4a4" in err


def test_bits_out_of_range_are_refused_by_name(tmp_path, capsys):
    res = _folder(tmp_path, _golden_records())
    assert "bits 'w99a99': W and A bits are between 2 and 16" in _err(capsys, "--results-dir", str(res),
                                                                       "--bits", "w4a4,w99a99")


def test_a_folder_whose_only_record_failed_says_so(tmp_path, capsys):
    rec = synthetic_record("deit_tiny", "repq", 4, 4, np.zeros(4, bool), 0.0)
    rec.update(status="failed", error="ConfigError: data.root not found")
    res = _folder(tmp_path, [rec])
    err = _err(capsys, "--results-dir", str(res))
    assert f"the only 1 record(s) did not finish ({rec['run_key']} deit_tiny repq: ConfigError: data.root" in err


def test_mixed_checkpoint_hint_is_a_where_key_that_works(tmp_path, capsys):
    recs = _golden_records()
    for r in recs:
        r["config"]["model"]["checkpoint"] = r["semantic_config"]["model"]["checkpoint"] = None
    other = json.loads(json.dumps(recs[0]))  # the DeiT-T FP run again, from another checkpoint
    other["config"]["model"]["checkpoint"] = other["semantic_config"]["model"]["checkpoint"] = "/ckpt/b.pth"
    other["run_key"] = "b" * 16
    res = _folder(tmp_path, [*recs, other])
    err = _err(capsys, "--results-dir", str(res))
    assert 'differ in model.checkpoint: "/ckpt/b.pth", null' in err and "--where model.checkpoint=/ckpt/b.pth " in err
    for value in ("/ckpt/b.pth", "null"):  # the hint's key selects
        assert report_main(["--results-dir", str(res), "--where", f"model.checkpoint={value}", "--no-plots",
                            "--out", str(tmp_path / "t")]) == 0
    err = _err(capsys, "--results-dir", str(res), "--where", "checkpoint=/ckpt/b.pth")
    assert "--where checkpoint: no record has this config key; did you mean model.checkpoint?" in err


def test_config_error_failures_stay_out_of_later_tables(tmp_path, capsys):
    """Records of refused or crashed jobs that are no cell of this table (bits.w=99, an unknown
    method, bits.w=4.5 from before values were checked) go to the side file, not the notes."""
    recs = _golden_records()
    bad = []
    for method, w in (("repq", 99), ("minmaxx", 4), ("repq", 4.5)):
        rec = synthetic_record("deit_tiny", method, w, 4, np.zeros(4, bool), 0.0)
        if method == "minmaxx" or w == 99:
            rec.update(status="failed", error="ConfigError: bad value")
            del rec["metrics"]
        bad.append(rec)
    res = _folder(tmp_path, [*recs, *bad])
    assert report_main(["--results-dir", str(res), "--notes", "full", "--no-plots", "--out", str(tmp_path / "t")]) == 0
    out = capsys.readouterr()
    md = (tmp_path / "t.md").read_text()
    assert "did not finish" not in md and "bad value" not in md and "4.5" not in md
    failed = pd.read_csv(tmp_path / "t_failed.csv", skiprows=1)
    assert sorted(failed["status"]) == ["failed", "failed", "invalid"] and not failed["in_table"].any()
    assert "bits.w=4.5: not an integer" in " ".join(failed["error"])
    assert "3 run(s) of the selection did not finish (0 in this table's cells)" in out.err
