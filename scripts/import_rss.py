"""Resident memory of a fresh process after its imports, with and without `ptqbench.triton_gate`.

    python scripts/import_rss.py

Each line is its own interpreter. "timm first" imports timm before ptqbench, so the gate comes too
late and triton loads as it did before the gate; "ptqbench first" is what every ptqbench entry
point does. Anonymous and file-backed pages are printed apart: triton's cost is mostly the pages
of its shared library.
"""

from __future__ import annotations

import subprocess
import sys

_PROBE = """
IMPORTS
status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
kb = lambda key: int(status[key].split()[0]) // 1024
from ptqbench.triton_gate import triton_state  # after the reading
print(f"{kb('VmRSS'):6d} MB  anon {kb('RssAnon'):5d}  file {kb('RssFile'):5d}  triton {triton_state()}")
"""

CASES = {
    "import torch": "import torch",
    "timm first (no gate)": "import timm, ptqbench",
    "ptqbench first (the gate)": "import ptqbench, timm",
}


def main() -> None:
    for name, imports in CASES.items():
        out = subprocess.run([sys.executable, "-c", _PROBE.replace("IMPORTS", imports)],
                             capture_output=True, text=True, check=True).stdout.strip()
        print(f"{name:28s} {out}")


if __name__ == "__main__":
    main()
