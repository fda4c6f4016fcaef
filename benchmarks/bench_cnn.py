"""The CNN section of the speed benchmark: one EComp generation on the default CNN
parent, ours against the per-network reference and the dense convolution bound.

    .venv/bin/python benchmarks/bench_generation.py --cnn --no-scale   # with the MLP section
    .venv/bin/python benchmarks/bench_cnn.py --reps 3                  # this section alone
    .venv/bin/python benchmarks/bench_cnn.py --tiny --reps 1           # seconds; what the test runs

* ours: one generation of the run's loop (``ecomp_deap.search.loops.ea_weighted``, until
  t + 1) at the reference settings (pop 100, batch 100, weighted, weights 1 2 1) on the
  trained default CNN (conv 16-32 + BatchNorm + max pool, linear 64-10), every hidden
  block's output in the similarity (flattened C*H*W), every layer recombined: the
  ``cnn_weighting121`` preset.
* reference (``benchmarks/reference.py``): the same generation with every individual
  exported as its own smaller CNN and run alone, the similarity per network and layer
  with scikit-learn's exact t-SNE P. Its measures are checked against ours.
* dense convolution bound: the population's convolutions and Linear layers alone at
  the parent's width (no BatchNorm, activations, pooling, masks or measures); per stage
  the fastest of one population-wide convolution (the first stage, whose input is
  shared), a grouped convolution with the population as groups, and one convolution
  per individual; the bound is the sum of the per-stage best medians.

The section itself is ``common.cnn_section`` (shared with ``bench_generation.py --cnn``).
Exit status 1 if the agreement check fails.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from common import cnn_section, resolve_device, section_parser


def main(argv=None) -> int:
    p = section_parser("bench_cnn.py", __doc__, "synthetic images and a tiny CNN")
    args = p.parse_args(argv)
    if args.reps < 1:
        p.error("--reps must be >= 1")
    device = resolve_device(args.device)
    print(f"EComp CNN generation benchmark: torch {torch.__version__}, threads {torch.get_num_threads()}, device "
          f"{device}, load average {os.getloadavg()[0]:.2f}", flush=True)
    report = cnn_section(args.reps, device, args.tiny, lambda m: print(m, flush=True))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=float))
    return 0 if report["agreement"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
