"""One weighted generation of the weighting121 preset (trained 784-256-256-10 parent,
batch 100, generation t = 1 after one warm-up generation) per population size and
device, medians of ``--reps``: whether a GPU pays on this machine, against its own CPU.
Each device runs its own forward strategy (``choose_forward``: kept groups on the CPU,
stacked elsewhere), printed on each line.

    .venv/bin/python benchmarks/bench_devices.py                       # cpu (and cuda if present), pop 100 and 1000
    .venv/bin/python benchmarks/bench_devices.py --devices cuda cpu --pops 100 300 1000
    .venv/bin/python benchmarks/bench_devices.py --devices cpu --pops 2 --reps 1   # a smoke run
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch
from common import load_inputs, prepared_run, read_inputs, resolve_device, time_steps

from ecomp_deap.study.presets import preset_config


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench_devices.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", nargs="+", choices=("cpu", "cuda"),
                   default=["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"])
    p.add_argument("--pops", type=int, nargs="+", default=[100, 1000], help="population sizes")
    p.add_argument("--reps", type=int, default=3, help="timed generations per configuration (median)")
    args = p.parse_args(argv)
    if min(args.pops) < 2 or args.reps < 1:
        p.error("--pops must be at least 2 and --reps at least 1")
    for device in args.devices:
        resolve_device(device)  # fails clearly without a GPU; full float32 on one
    data, model, _ = load_inputs(False, print)  # FashionMNIST, the cached (or trained) default parent
    parent, run_data = read_inputs(model, data)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""), flush=True)
    for device in args.devices:
        for pop in args.pops:
            cfg = preset_config("weighting121", device=device, pop_size=pop)
            run, base, t0 = prepared_run(cfg, parent, run_data, generations=1)
            ms = 1e3 * statistics.median(time_steps(run, base, t0, args.reps, device))
            print(f"{device:4s} pop {pop:5d}: {ms:8.1f} ms/generation = {1e3 / ms:6.2f} generations/s "
                  f"(forward {run.evaluator.forward.name}, generation t={t0})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
