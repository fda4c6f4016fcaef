"""The CNN section of the speed benchmark: one EComp generation on the default CNN
parent, ours against the per-network reference and the dense convolution bound.

    .venv/bin/python benchmarks/bench_generation.py --cnn --no-scale   # with the MLP section
    .venv/bin/python benchmarks/bench_cnn.py --reps 3                  # this section alone
    .venv/bin/python benchmarks/bench_cnn.py --tiny --reps 1           # seconds; what the test runs

* **ours**: ``Evolution.step`` at the reference settings (pop 100, batch 100, weighted,
  weights 1 2 1) on the trained default CNN (conv 16-32 + BatchNorm + max pool, linear
  64-10), every hidden block's output in the similarity (flattened C*H*W), every layer
  recombined: the ``cnn_weighting121`` preset.
* **reference** (``benchmarks/reference.py``): the same generation with every individual
  exported as its own smaller CNN and run alone, the similarity per network and layer
  with scikit-learn's exact t-SNE P. Its measures are checked against ours.
* **dense convolution bound**: the population's convolutions and Linear layers alone at
  the parent's width (no BatchNorm, activations, pooling, masks or measures); per stage
  the fastest of one population-wide convolution (the first stage, whose input is
  shared), a grouped convolution with the population as groups, and one convolution
  per individual; the bound is the sum of the per-stage best medians.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from bench_generation import (FormTimer, _spread, _summary, agreement, prepared_run, resolve_device,  # noqa: E402
                              time_steps)

from ecomp_deap.study.presets import preset_config  # noqa: E402
from ecomp_deap.nets.spliced import dense_uncached  # noqa: E402

REF = SimpleNamespace(pop=100, batch=100, generations=100, val_size=5000, perplexity=30.0)
TINY = SimpleNamespace(pop=8, batch=40, generations=4, val_size=40, perplexity=5.0)


def load_cnn_inputs(tiny: bool, log):
    """(data, CNN parent, its test accuracy): FashionMNIST and the cached default CNN, or
    synthetic 1x12x12 images and a quickly trained small CNN with ``tiny``."""
    from ecomp_deap.nets.parents import DEFAULT_CNN_CHANNELS, DEFAULT_CNN_EPOCHS, DEFAULT_CNN_HIDDEN, ParentSpec

    if tiny:
        from ecomp_deap.nets.parents import accuracy, train_parent

        g = torch.Generator().manual_seed(0)
        centers = torch.randn(4, 1, 12, 12, generator=g)
        y = torch.arange(600) % 4
        x = centers[y] + 0.8 * torch.randn(600, 1, 12, 12, generator=g)
        data = SimpleNamespace(train_x=x[:400], train_y=y[:400], test_x=x[400:], test_y=y[400:],
                               fingerprint="synthetic", source="synthetic")
        spec = ParentSpec(arch="cnn", channels=(4, 6), hidden=(8,), in_features=144, n_classes=4, epochs=2,
                          batch_size=50)
        parent = train_parent(spec, data.train_x, data.train_y, progress=False)
        return data, parent, accuracy(parent, data.test_x, data.test_y)
    from ecomp_deap.data import default_cache_dir, load_fashion_mnist
    from ecomp_deap.nets.parents import load_or_train_parent

    data = load_fashion_mnist()
    spec = ParentSpec(arch="cnn", channels=DEFAULT_CNN_CHANNELS, hidden=DEFAULT_CNN_HIDDEN, epochs=DEFAULT_CNN_EPOCHS)
    info = load_or_train_parent(spec, data, default_cache_dir(), progress=False, log=log)
    return data, info.model, info.test_accuracy


class ConvBound(FormTimer):
    """The population's convolutions and matmuls at the parent's width, nothing else."""

    def __init__(self, chain, base_pop, x, device):
        dev = torch.device("cuda" if device == "cuda" else "cpu")
        self.device = device
        P, B = len(base_pop), x.shape[0]
        self.forms, self.macs = [], 0
        h_shape = (B, *chain.input_shape)
        for k, st in enumerate(chain.stages):
            w = torch.stack([dense_uncached(ind.weights.raw(k)) for ind in base_pop]).to(dev)  # (P, out, in[, kh, kw])
            b = torch.stack([ind.biases[k] for ind in base_pop]).to(dev)  # (P, out)
            out = w.shape[1]
            if st.kind == "conv":
                stride, padding, dilation = st.conv_args
                wf, bf = w.reshape(P * out, *w.shape[2:]), b.reshape(-1)
                if k == 0:
                    h = torch.randn(h_shape, device=dev)
                    forms = {"population-wide": lambda h=h, wf=wf, bf=bf, a=st.conv_args: F.conv2d(h, wf, bf, *a)}
                else:
                    hg = torch.randn(B, P * w.shape[2], *h_shape[2:], device=dev)  # (B, P*in, H, W)
                    hp = [torch.randn(B, w.shape[2], *h_shape[2:], device=dev) for _ in range(P)]
                    forms = {"grouped": lambda hg=hg, wf=wf, bf=bf, a=st.conv_args: F.conv2d(hg, wf, bf, *a, P),
                             "per-individual": lambda hp=hp, w=w, b=b, a=st.conv_args:
                             [F.conv2d(hp[i], w[i], b[i], *a) for i in range(P)]}
                self.macs += P * B * out * w[0, 0].numel() * st.out_hw[0] * st.out_hw[1]
                h_shape = (B, out, *st.out_hw)
                for op in st.tail:  # pooling changes the next stage's input size
                    if op.kind == "pool":
                        h_shape = tuple(op.module(torch.zeros(1, *h_shape[1:])).shape)
                        h_shape = (B, *h_shape[1:])
            else:
                hk = torch.randn(P, B, w.shape[2], device=dev)
                forms = {"baddbmm": lambda hk=hk, w=w, b=b: torch.baddbmm(b[:, None, :], hk, w.transpose(1, 2))}
                self.macs += P * B * w.shape[1] * w.shape[2]
            self.forms.append(forms)
        self.warm_up()

    def summary(self) -> dict:
        layers, total = self.fastest("stage")
        return {"median_s": total, "layers": layers, "macs": self.macs, "gmacs_per_s": self.macs / total / 1e9}


def cnn_section(reps: int, device: str, tiny: bool, log) -> dict:
    from reference import ReferenceEvaluator, reference_step

    s = TINY if tiny else REF
    data, parent, parent_acc = load_cnn_inputs(tiny, lambda m: log("  " + m))
    cfg = preset_config("cnn_weighting121", pop_size=s.pop, batch_size=s.batch, generations=s.generations,
                        val_size=s.val_size, perplexity=s.perplexity, device=device)
    run, base_pop, t0 = prepared_run(cfg, parent, data)
    chain = run.arch
    x, y = run.stream.batch(*divmod(t0, run.stream.n_batches))
    emb = chain.default_embeddings()
    log(f"CNN parent: {chain.describe()} (test accuracy {parent_acc:.4f}); pop {s.pop}, batch {s.batch}, "
        f"embeddings {'/'.join(emb)} (flattened C*H*W), perplexity {s.perplexity:g}")
    ref = ReferenceEvaluator(chain, parent, emb, cfg.perplexity, device)
    run.evaluator.clear_cache()
    check = agreement(run.evaluator.measure(base_pop, x, y), ref.measure(base_pop, x, y))
    bound = ConvBound(chain, base_pop, x, device)
    raw = {"ours": [], "reference": []}
    for _ in range(reps):  # rounds: load changes hit ours, the reference and the bound alike
        raw["ours"] += time_steps(run, base_pop, t0, 1, device)
        raw["reference"] += time_steps(run, base_pop, t0, 1, device,
                                       step=lambda st: reference_step(run.evolution, st, ref))
        bound.time(3)
    ours, reference, b = _summary(raw["ours"]), _summary(raw["reference"]), bound.summary()
    kept = sum(sum(ind.hidden_units()) for ind in base_pop) / (len(base_pop) * sum(chain.hidden_widths))
    log(f"timed population (generation t={t0}): {len(base_pop)} individuals, mean {100 * kept:.0f}% of the "
        f"channels+units kept")
    log(f"ours: Evolution.step, weighted     {_spread(ours)}")
    log(f"reference: per-network generation  {_spread(reference)}")
    log(f"dense convolution bound            {1e3 * b['median_s']:8.1f} ms  ("
        + ", ".join(f"{1e3 * l['median_s']:.2f} ms {l['best']}" for l in b["layers"])
        + f"; {b['macs'] / 1e9:.2f} GMAC, {b['gmacs_per_s']:.1f} GMAC/s)")
    log(f"agreement (reference vs ours, {check['n']} individuals): accuracy equal {check['accuracy_equal']}/"
        f"{check['n']}, compression equal {check['compression_equal']}/{check['n']}, similarity max rel diff "
        f"{check['similarity_max_rel_diff']:.2e}: {'PASSED' if check['passed'] else 'FAILED'}")
    ratios = {"reference_over_ours_generation": reference["median_s"] / ours["median_s"],
              "ours_over_bound_generation": ours["median_s"] / b["median_s"]}
    log(f"ratio reference / ours (generation): {ratios['reference_over_ours_generation']:.1f}x")
    log(f"ratio ours / dense bound (generation): {ratios['ours_over_bound_generation']:.2f}x")
    return {"parent": chain.describe(), "parent_test_accuracy": parent_acc, "pop": s.pop, "batch": s.batch,
            "ours": ours, "reference": reference, "bound": b, "agreement": check, "ratios": ratios,
            "kept_fraction": kept}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench_cnn.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3, help="rounds (medians are reported)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument("--tiny", action="store_true", help="synthetic images and a tiny CNN: seconds")
    p.add_argument("--json", metavar="PATH", help="also write every number to this JSON file")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    print(f"EComp CNN generation benchmark: torch {torch.__version__}, threads {torch.get_num_threads()}, device "
          f"{device}, load average {os.getloadavg()[0]:.2f}", flush=True)
    report = cnn_section(args.reps, device, args.tiny, lambda m: print(m, flush=True))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=float))
    return 0 if report["agreement"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
