"""Peak RSS and seconds of each `Reconstruct` step under another heap setting for its loop: the
price of `heap.large_blocks_reused` (glibc keeps and reuses freed blocks up to 32 MiB while a
unit trains) in memory, against the price of the alternatives in time. Runs the bench cost cell
of DeiT-T, 32 images, W4A4, 30 steps per unit, batch 8, 1 thread.

Usage: python scripts/recon_heap_threshold.py METHOD MODE
  MODE  threshold:N  the loop's mmap threshold is N MiB instead of 32, as a job's `heap_reuse_mib=N`
                     (N=1 maps and unmaps every block of 1 MiB or more, as the calibration does)
        trim:K       the 32 MiB threshold, and the free heap handed back to the OS
                     (`malloc_trim`) after every K optimizer steps
"""
import sys

import torch


def main() -> None:
    method, mode = sys.argv[1], sys.argv[2]
    kind, value = mode.split(":")
    torch.set_num_threads(1)
    from ptqbench import heap
    from ptqbench.bench import cells
    from ptqbench.bench.__main__ import method_options
    from ptqbench.methods import steps
    from ptqbench.profiling import PhaseMeter

    if kind == "threshold":
        heap.set_reuse_limit(int(value))  # a job's heap_reuse_mib
    elif kind == "trim":
        every, adam_step, count = int(value), torch.optim.Adam.step, [0]

        def step_and_trim(self, *args, **kwargs):
            out = adam_step(self, *args, **kwargs)
            count[0] += 1
            if count[0] % every == 0:
                heap._glibc().malloc_trim(0)
            return out

        torch.optim.Adam.step = step_and_trim
    else:
        raise SystemExit(f"MODE must be threshold:N or trim:K, got {mode!r}")

    reconstruct, phases = steps.Reconstruct.__call__, []

    def measured(self, qm, calib):
        with PhaseMeter(interval=0.005) as meter:
            out = reconstruct(self, qm, calib)
        phases.append(f"start {meter.start_rss_mb:.0f} MB, peak {meter.peak_rss_mb:.0f} MB, {meter.seconds:.1f} s")
        return out

    steps.Reconstruct.__call__ = measured
    net, _ = cells.load_model("deit_tiny")
    images, _ = cells.calibration_images(net, 32)
    _, meter, before = cells._quantized(net, method, "w4a4", images, method_options(method, 30))
    print(f"{method} {mode}: quantize peak {meter.peak_rss_mb:.0f} MB (process before: {before:.0f} MB), "
          f"{meter.seconds:.0f} s; each Reconstruct: {'; '.join(phases)}")


if __name__ == "__main__":
    main()
