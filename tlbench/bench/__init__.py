"""Where throughput is measured: `tlbench bench`, one process per backbone.

    run_bench(backbones, options)            runner.py: one `python -m tlbench.bench.worker` per backbone,
      -> worker (a child process)            worker.py: options in as JSON, one JSON line out
           -> measure_backbone(name, opts)   measure.py: synthetic input on the device, warm-up, timed
                                             steps (CUDA events or a synchronised clock), median of
                                             repeats, FLOPs, MFU (peaks.py), memory, OOM halving
           -> measure_scaling(name, opts)    ddp.py, with --nproc N: the train step on 1 rank, then
                                             under DDP on N ranks (torch.multiprocessing.spawn)
      <- rows, written as CSV + JSON under results/bench/ (or --out)

Importing this package is cheap (no torch): `BenchOptions` and `parse_backbones` (from
`tlbench.config.bench`) are here; the measuring modules are imported when used
(`runner.run_bench_command` is what `tlbench bench` runs).
"""

from tlbench.config.bench import BenchOptions, parse_backbones

__all__ = ["BenchOptions", "parse_backbones"]
