"""Progress off a terminal: log lines every N percent, never carriage returns (issue 20: a piped
sweep log was 60 KB of redrawn bars)."""

from __future__ import annotations

import io
import logging

import pytest
import torch
from tests.conftest import make_tiny_vit
from torch.utils.data import DataLoader, TensorDataset

from ptqbench.errors import ConfigError
from ptqbench.progress import LogProgress, progress, progress_mode


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ptqbench.progress"]


def test_log_mode_writes_one_line_per_step(monkeypatch, caplog):
    monkeypatch.setenv("PTQBENCH_PROGRESS", "log")
    monkeypatch.setenv("PTQBENCH_PROGRESS_EVERY", "25")
    caplog.set_level(logging.INFO, logger="ptqbench.progress")
    assert list(progress(range(8), desc="eval fp", unit="batch")) == list(range(8))
    lines = _lines(caplog)
    assert [ln.split(":")[1].split("%")[0].strip() for ln in lines] == ["25", "50", "75", "100"]
    assert lines[-1].startswith("eval fp: 100% (8/8 batch) in ")


def test_update_api_uneven_steps_and_no_total(monkeypatch, caplog):
    monkeypatch.setenv("PTQBENCH_PROGRESS", "log")
    monkeypatch.setenv("PTQBENCH_PROGRESS_EVERY", "50")
    caplog.set_level(logging.INFO, logger="ptqbench.progress")
    bar = progress(total=3, desc="calibrate", unit="quantizer")
    for _ in range(3):
        bar.update(1)
    bar.set_postfix(loss="0.5")
    bar.close()
    assert [ln.split(" in ")[0] for ln in _lines(caplog)] == ["calibrate:  67% (2/3 quantizer)", "calibrate: 100% (3/3 quantizer)"]
    caplog.clear()
    list(progress(iter(range(5)), desc="stream"))  # no length: one line when it ends
    assert [ln.split(" in ")[0] for ln in _lines(caplog)] == ["stream: 5 it"]


def test_auto_mode_is_log_lines_off_a_terminal_and_off_is_silent(monkeypatch, caplog):
    monkeypatch.delenv("PTQBENCH_PROGRESS", raising=False)
    monkeypatch.setattr("sys.stderr", io.StringIO())  # a pipe or a file: not a TTY
    assert progress_mode() == "log"
    monkeypatch.setenv("PTQBENCH_PROGRESS", "off")
    caplog.set_level(logging.INFO, logger="ptqbench.progress")
    assert sum(progress(range(4), desc="x")) == 6 and _lines(caplog) == []
    assert list(progress(range(3), disable=True)) == [0, 1, 2]


def test_bar_mode_is_tqdm(monkeypatch):
    from tqdm.auto import tqdm

    monkeypatch.setenv("PTQBENCH_PROGRESS", "bar")
    bar = progress(range(2), desc="x")
    assert isinstance(bar, tqdm)
    bar.close()


@pytest.mark.parametrize("var,value,hint", [("PTQBENCH_PROGRESS", "fancy", "auto, bar, log, off"),
                                            ("PTQBENCH_PROGRESS_EVERY", "0", "between 1 and 100"),
                                            ("PTQBENCH_PROGRESS_EVERY", "ten", "between 1 and 100")])
def test_bad_settings_name_the_variable_and_the_fix(monkeypatch, var, value, hint):
    monkeypatch.setenv("PTQBENCH_PROGRESS", "log")
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=var) as e:
        progress(range(2))
    assert hint in str(e.value)


def test_evaluate_and_calibrate_write_no_carriage_return_to_a_pipe(monkeypatch):
    """The package's loops (evaluation, calibration) through a non-TTY stream, as under SLURM."""
    from ptqbench.methods import Bits, build_method
    from ptqbench.models import make_quantizable
    from ptqbench.tasks.classification import evaluate

    monkeypatch.delenv("PTQBENCH_PROGRESS", raising=False)
    monkeypatch.delenv("PTQBENCH_PROGRESS_EVERY", raising=False)
    pipe = io.StringIO()
    monkeypatch.setattr("sys.stderr", pipe)
    handler = logging.StreamHandler(pipe)
    logger = logging.getLogger("ptqbench.progress")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        model = make_tiny_vit(depth=1)
        meth = build_method({"name": "minmax"}, Bits(8, 8))
        qm = make_quantizable(model, meth.plan())
        meth.quantize(qm, torch.randn(4, 3, 32, 32))
        data = TensorDataset(torch.randn(8, 3, 32, 32), torch.arange(8) % 10)
        evaluate(qm.model, DataLoader(data, batch_size=2), torch.device("cpu"), desc="eval minmax")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    text = pipe.getvalue()
    assert "\r" not in text
    assert "calibrate: 100% (" in text and "eval minmax: 100% (4/4 batch)" in text, text
    assert len(text.splitlines()) == 8  # 4 steps each for calibration and evaluation


def test_log_progress_is_usable_as_a_context_manager(caplog):
    caplog.set_level(logging.INFO, logger="ptqbench.progress")
    with LogProgress(None, 2, "ctx", "it", 100) as bar:
        bar.update(2)
    assert _lines(caplog)[-1].startswith("ctx: 100% (2/2 it)")
