"""The benchmark suite's entry point runs and writes its table (tiny settings; the real run is
on request: `python -m ptqbench.bench`)."""

import subprocess
import sys

import pytest
import torch
from tests.conftest import REPO


def test_bench_eval_part_writes_a_table_with_the_machine(tmp_path):
    # best of 5 forwards per side: with one, a single descheduled forward on a loaded machine gave a
    # ratio of 0.5 (a CI run, 2026-12-05)
    out = tmp_path / "bench.md"
    res = subprocess.run([sys.executable, "-m", "ptqbench.bench", "--parts", "eval", "--eval-models", "deit_tiny",
                          "--eval-methods", "minmax", "--eval-batch", "2", "--eval-repeats", "5", "--threads", "1",
                          "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    text = out.read_text()
    assert "Machine:" in text and "cores" in text and "torch" in text
    lines = text.splitlines()
    row = [ln for ln in lines if ln.startswith("| deit_tiny | minmax")]
    assert len(row) == 1 and "failed" not in row[0], text
    header = [c.strip() for c in lines[lines.index(row[0]) - 2].split("|")]
    cells = dict(zip(header, (c.strip() for c in row[0].split("|"))))
    for col in ("ratio", "fq_ratio", "cpu_ratio"):
        assert 0.5 < float(cells[col]) < 20, cells  # measured numbers, not placeholders
    assert float(cells["fp_img_s"]) > 0 and float(cells["unfused_img_s"]) > 0, cells


def test_unknown_part_is_refused_with_the_valid_ones(monkeypatch, capsys):
    from ptqbench.bench.__main__ import main

    monkeypatch.setattr(sys, "argv", ["ptqbench.bench", "--parts", "eval,recno"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    assert "unknown recno; choose from cost,eval,sweep,recon" in capsys.readouterr().err


def test_recon_step_refuses_a_method_without_reconstruction():
    from ptqbench.bench.recon_step import recon_step

    with pytest.raises(ValueError, match=r"'repq': choose one of \['aiq', 'aphq', 'brecq', 'dopq', 'fimaq', 'ias', 'qdrop'\]"):
        recon_step("deit_tiny", "repq", 1, 1, 1, "cpu")


def test_recon_cell_drops_the_searches_and_keeps_every_other_step():
    """APHQ-ViT's recipe nests its grid search inside WithFPTeacher and Timed: it becomes the
    reparameterization it does on the way; the MLP stage and the reconstruction stay, in order."""
    from ptqbench.bench.recon_step import without_searches
    from ptqbench.methods import Bits, build_method
    from ptqbench.methods.steps import (GridSearch, HessianSearch, Reconstruct, ReluMLPReconstruct, Reparameterize,
                                        WithFPTeacher, walk_steps)

    aphq = build_method({"name": "aphq", "iters": 3, "batch_size": 2}, Bits(4, 4))
    before, after = list(walk_steps(aphq.steps())), list(walk_steps(without_searches(aphq.steps())))
    assert any(isinstance(s, GridSearch) for s in before)
    assert not any(isinstance(s, (GridSearch, HessianSearch)) for s in after)
    kept = [type(s) for s in after if isinstance(s, (WithFPTeacher, ReluMLPReconstruct, Reparameterize, Reconstruct))]
    assert kept == [WithFPTeacher, ReluMLPReconstruct, Reparameterize, Reconstruct]
    assert len(after) == len(before) + 1  # the search's place: its reparameterization, then the weights' calibration


@pytest.mark.parametrize("method, stages", [("ias", ["stage_one", "stage_three"]), ("aphq", ["mlp", "recon"]),
                                            ("fimaq", ["recon"])])
def test_recon_cell_times_every_stage_of_the_recipe_on_a_tiny_vit(method, stages):
    from ptqbench.bench.recon_step import recipe_step_times
    from ptqbench.methods import Bits, build_method
    from ptqbench.models import make_quantizable
    from tests.conftest import make_tiny_vit

    net = make_tiny_vit().eval()
    size = net.patch_embed.img_size
    meth = build_method({"name": method, "iters": 5, "batch_size": 2}, Bits(4, 4))
    qm = make_quantizable(net, meth.plan())
    rows = recipe_step_times(qm, meth, torch.randn(4, 3, *size, generator=torch.Generator().manual_seed(0)))
    if method in ("aphq", "fimaq"):  # the grid search's reparameterization ran: post-LN inputs per tensor
        assert qm.reparam_pairs and all(not p.linear.input_quantizer.per_channel for p in qm.reparam_pairs)
    assert [r["stage"] for r in rows] == stages
    for r in rows:
        assert r["blocks"] == 2 and r["iters"] == 5 and r["s_per_block_step"] > 0, rows
    if method == "fimaq":  # k = 5 Fisher refreshes per block, timed apart from the steps
        assert rows[0]["refreshes_per_block"] == 5 and rows[0]["s_per_refresh"] > 0, rows


@pytest.mark.slow
def test_bench_recon_and_cost_grid_parts(tmp_path):
    """The parts that replaced benchmarks/recon_step_time.py and benchmarks/quantize_cost.py."""
    out = tmp_path / "bench.md"
    res = subprocess.run([sys.executable, "-m", "ptqbench.bench", "--parts", "recon,cost", "--recon-models", "deit_tiny",
                          "--recon-methods", "dopq", "--recon-batch", "1,2", "--recon-steps", "1", "--recon-calib", "2",
                          "--cost-models", "deit_tiny", "--cost-methods", "minmax", "--cost-calib", "2,4", "--threads", "1",
                          "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = out.read_text().splitlines()
    recon = [ln.split("|") for ln in lines if ln.startswith("| deit_tiny | dopq |")]
    assert [(c[3].strip(), c[4].strip()) for c in recon] == [(b, s) for b in "12" for s in ("stage_one", "stage_three")], lines
    assert all(c[5].strip() == "12" and float(c[7]) > 0 for c in recon), lines  # DeiT-T's 12 blocks, timed
    cost = [ln for ln in lines if ln.startswith("| deit_tiny | minmax |")]
    assert [ln.split("|")[4].strip() for ln in cost] == ["2", "4"] and not any("failed" in ln for ln in cost), lines


@pytest.mark.slow  # two evaluations of 100 shared-data images in fresh processes: ~45 s on 2 busy cores
def test_job_eval_part_compares_the_heaps_on_the_shared_data(shared_data, tmp_path):
    from ptqbench.bench.__main__ import run_cell

    rows = [run_cell("job_eval", 1, heap_mode=m, batch=100, limit=100) for m in ("mapped", "reused")]
    assert all("error" not in r for r in rows), rows
    mapped, reused = rows
    assert mapped["images"] == reused["images"] == 100
    assert mapped["logits_sum"] == reused["logits_sum"] and mapped["top1"] == reused["top1"]  # only memory moved
    assert reused["minor_faults"] < mapped["minor_faults"] / 2, rows  # 60 MB MLP blocks at batch 100: always mapped


@pytest.mark.slow  # an AIQViT quantization of DeiT-T (2 steps per unit) in a fresh process: ~2 min on 2 busy cores
def test_eval_cell_times_folded_low_rank_branches_against_two_paths():
    from ptqbench.bench.__main__ import method_options, run_cell

    r = run_cell("eval_overhead", 1, model="deit_tiny", method="aiq", bits="w4a4", batch=2, repeats=1, device="cpu",
                 options=method_options("aiq", 2), compile=False)
    assert "error" not in r, r
    assert r["branch_img_s"] > 0 and 0.1 < r["fold_ratio"] < 10, r  # measured, both sides
    assert r["fold_fp_max_abs_diff"] < 1e-3, r  # quantizers off: the same function up to float rounding
    # quantizers on, a rounding difference may flip a 4-bit activation code and spread: measured, not bounded
    assert 0 <= r["fold_max_abs_diff"] < float("inf"), r


def test_eval_cell_times_inference_forwards_without_autograd(monkeypatch):
    """The eval cell times forwards as a job runs them (ptqbench.tasks.classification: no_grad):
    with autograd on, every side would build a graph and the layers would skip their inference
    paths (the weight fake-quant cache, folded branches), so the ratios would measure the wrong thing."""
    import types

    import torch
    from ptqbench.bench import cells

    seen: list[bool] = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            seen.append(torch.is_grad_enabled())
            return x.mean() * self.w

    monkeypatch.setattr(cells, "load_model", lambda name: (Probe(), "random"))
    monkeypatch.setattr(cells, "calibration_images", lambda model, size: (torch.zeros(1), "random"))
    monkeypatch.setattr(cells, "_quantized", lambda *a, **k: (types.SimpleNamespace(model=Probe()), None, 0))
    r = cells.eval_overhead("deit_tiny", "minmax", "w4a4", batch=1, repeats=2, device="cpu")
    assert r["ratio"] > 0
    assert seen and not any(seen), seen  # FP, quantized and unfused forwards, warm-ups included



def test_profile_part_profiles_forwards_under_the_evaluation_heap(monkeypatch):
    """The profile explains the eval part's ratios, so its forwards run where a job's do: inside
    `heap.every_block_reused` (on glibc's default heap every map-sized tensor takes fresh pages,
    and the profile then charges page faults to whichever op allocates)."""
    import contextlib
    import types

    from ptqbench import heap
    from ptqbench.bench import cells

    state = {"inside": False}
    seen: list[bool] = []

    @contextlib.contextmanager
    def reused():
        state["inside"] = True
        try:
            yield
        finally:
            state["inside"] = False

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(state["inside"])
            return x.mean()

    monkeypatch.setattr(heap, "every_block_reused", reused)
    monkeypatch.setattr(cells, "load_model", lambda name: (Probe(), "random"))
    monkeypatch.setattr(cells, "calibration_images", lambda model, size: (torch.zeros(1), "random"))
    monkeypatch.setattr(cells, "_quantized", lambda *a, **k: (types.SimpleNamespace(model=Probe()), None, 0))
    r = cells.profile_eval("deit_tiny", "minmax", "w4a4", batch=1, repeats=2, device="cpu")
    assert r["forward_ms"] > 0
    assert seen == [True, True, True], seen  # the warm-up and both profiled forwards

@pytest.mark.parametrize("args, message", [
    (["--recon-methods", "dopq,repq"], "repq has no block reconstruction"),
    (["--recon-batch", "8", "--recon-calib", "4"], "at least as many images as the largest batch"),
])
def test_recon_part_refuses_bad_settings_before_any_cell(monkeypatch, capsys, args, message):
    from ptqbench.bench.__main__ import main

    monkeypatch.setattr(sys, "argv", ["ptqbench.bench", "--parts", "recon", *args])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_bench_bounds_every_reconstructing_and_searching_method():
    # a cell of a method left at its paper budget (20000 steps per unit for qdrop) would run for days
    from ptqbench.bench.__main__ import method_options
    from ptqbench.methods import build_method, Bits

    for name in ("dopq", "aiq", "ias", "qdrop", "brecq", "aphq", "fimaq"):
        opts = method_options(name, 30)  # the bench's default --recon-iters
        assert opts["iters"] == 30 and opts["batch_size"] == 8, name
        config = build_method({"name": name, **opts}, Bits(4, 4)).config
        assert config.iters == 30, name
        if name in ("qdrop", "brecq", "aphq", "fimaq"):  # their grid-search calibration too
            assert (config.grid_rounds, config.grid_candidates) == (1, 32), name
    for name in ("ptq4vit", "tsptq"):
        assert method_options(name, 3) == {"search_rounds": 1, "search_candidates": 20}
    assert method_options("repq", 3) == {} and method_options("erq", 3) == {}
