"""The bench cost cell (seconds in `quantize`, peak RSS; the bench's method settings with
`--recon-iters 30`) of one model/method/calibration size at 1 thread, imported from the ptqbench
checkout given last: run it alternately on two checkouts to pair them
(results/benchmarks/calib_streamed_search_ab_2026-12-03.md). With `--state FILE` it also saves
every quantizer's state, so that two checkouts' results can be compared bit for bit (`--compare A B`).

Usage: python scripts/cost_cell_of_tree.py vit_base repq 32 /path/to/checkout [--state FILE]
       python scripts/cost_cell_of_tree.py --compare A.pt B.pt
"""
import sys

import torch


def compare(a: str, b: str) -> None:
    sa, sb = torch.load(a), torch.load(b)
    differ = [k for k in sa if k not in sb or not torch.equal(sa[k], sb[k])]
    print(f"{len(sa)} quantizer tensors, {len(differ)} differ, {len(set(sb) - set(sa))} only in {b}: {differ[:10]}")


def main() -> None:
    if sys.argv[1] == "--compare":
        return compare(sys.argv[2], sys.argv[3])
    model, method, calib, tree = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    state = sys.argv[6] if len(sys.argv) > 6 and sys.argv[5] == "--state" else None
    torch.set_num_threads(1)
    sys.path.insert(0, tree)
    import ptqbench
    from ptqbench.bench import cells

    print(ptqbench.__file__)  # proves which checkout ran
    net, weights = cells.load_model(model)
    images, source = cells.calibration_images(net, calib)
    from ptqbench.bench.__main__ import method_options

    qm, meter, before = cells._quantized(net, method, "w4a4", images, method_options(method, 30))
    print({"model": model, "method": method, "calib": calib, "quantize_s": round(meter.seconds, 1),
           "peak_rss_mb": round(meter.peak_rss_mb), "method_extra_mb": round(meter.peak_rss_mb - before),
           "weights": weights, "images": source})
    if state:
        from ptqbench.quant import quantizers

        torch.save({f"{n}.{k}": v for n, q in quantizers(qm.model).items() for k, v in q.state_dict().items()}, state)


if __name__ == "__main__":
    from ptqbench.heap import rerun_without_tcache

    rerun_without_tcache()  # memory as a job measures it (glibc's per-thread cache off)
    main()
