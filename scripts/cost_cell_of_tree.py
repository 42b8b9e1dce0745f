"""The bench cost cell (seconds in `quantize`, peak RSS) of one model/method/calibration size at 1
thread, imported from the ptqbench checkout given last: run it alternately on two checkouts to
pair them (results/benchmarks/calib_streamed_search_ab_2026-12-03.md).

Usage: python scripts/cost_cell_of_tree.py vit_base repq 32 /path/to/checkout
"""
import sys

import torch


def main() -> None:
    model, method, calib, tree = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    torch.set_num_threads(1)
    sys.path.insert(0, tree)
    import ptqbench
    from ptqbench.bench import cells

    print(ptqbench.__file__)  # proves which checkout ran
    print(cells.cost(model, method, "w4a4", calib, "cpu", {}))


if __name__ == "__main__":
    main()
