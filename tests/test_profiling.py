"""`ptqbench.profiling.PhaseMeter`: a phase's peak memory, spikes between samples included."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# A fresh process (its high-water mark is its imports), a 400 MiB tensor touched and freed inside a
# phase whose sampler never fires (60 s interval), then a second phase below that peak.
_SPIKE = """
import json, torch
from ptqbench.profiling import PhaseMeter
with PhaseMeter(interval=60) as spike:
    x = torch.ones(100 * 2**20)
    del x
with PhaseMeter(interval=60) as after:
    pass
print(json.dumps({"spike": spike.peak_rss_mb - spike.start_rss_mb, "after": after.peak_rss_mb - after.start_rss_mb}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the high-water mark is read from /proc")
def test_a_spike_between_samples_is_the_phase_peak_and_not_the_next_phases():
    out = subprocess.run([sys.executable, "-c", _SPIKE], capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert 380 <= seen["spike"] <= 480  # the 400 MiB the sampler never saw
    assert seen["after"] < 20  # a later phase below the process's peak does not inherit it
