"""CPU time of the trained fake quantizer's forward + backward, two versions of
`ptqbench/quant/uniform.py` loaded side by side in one process and alternated (1 thread, 15
rounds; best and median per version), on a ViT-B fc2 input at batch 8 ([8, 197, 3072],
contiguous) and on a q-like view ([8, 197, 12, 64] permuted to heads first). The other modules come
from the `ptqbench` on the path; only uniform.py is swapped.

    git worktree add /tmp/old <commit>
    python scripts/time_fake_quant_versions.py /tmp/old/ptqbench/quant/uniform.py ptqbench/quant/uniform.py
"""
import importlib.util
import sys
import time

import torch


def load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(old_path: str, new_path: str, rounds: int = 15) -> None:
    versions = {"old": load(old_path, "uniform_old"), "new": load(new_path, "uniform_new")}
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    cases = {
        "fc2 input, contiguous": (torch.randn(8, 197, 3072, generator=g), lambda x: x,
                                  torch.randn(8, 197, 3072, generator=g)),
        "q view, permuted": (torch.randn(8, 197, 12, 64, generator=g), lambda x: x.permute(0, 2, 1, 3),
                             torch.randn(8, 12, 197, 64, generator=g)),
    }
    scale, zero = torch.tensor(0.1), torch.tensor(7.0)
    for name, (base, view, grad) in cases.items():
        times = {tag: [] for tag in versions}
        for _ in range(rounds):
            for tag, module in versions.items():
                x, s = base.clone().requires_grad_(True), scale.clone().requires_grad_(True)
                t = time.process_time()
                module.fake_quant(view(x), s, zero, 0, 15).backward(grad)
                times[tag].append(time.process_time() - t)
        best = {k: min(v) for k, v in times.items()}
        med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        print(f"{name}: old {best['old'] * 1e3:.2f} ms, new {best['new'] * 1e3:.2f} ms (best of {rounds}), "
              f"new/old {best['new'] / best['old']:.3f}; median new/old {med['new'] / med['old']:.3f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
