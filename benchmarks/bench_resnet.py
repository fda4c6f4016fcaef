"""One EComp generation on a graph parent (the default ResNet), ours against the
per-network reference and the dense bound; and the peak memory of a population of
torchvision ResNet-18s.

    .venv/bin/python benchmarks/bench_resnet.py --reps 3            # pop 100, batch 100, the ResNet parent
    .venv/bin/python benchmarks/bench_resnet.py --tiny --reps 1     # seconds; what the test runs
    .venv/bin/python benchmarks/bench_resnet.py --memory            # also: pop 100 of ResNet-18 (minutes)
    .venv/bin/python benchmarks/bench_resnet.py --chain-vs-graph    # also: the default CNN as a chain and as a graph

* ours: one generation of the run's loop (``ea_weighted`` until t + 1) of the
  ``resnet_weighting121`` preset at pop 100, batch 100: the graph forward in the
  device's default form (the CPU: one functional call per individual on its zeroed
  tensors; a GPU: each chunk of individuals vmapped over their stacked tensors), each
  stage's output in the similarity (flattened C*H*W). The same generation in the other
  form is timed beside it.
* reference (``reference.py``): the same generation with every individual pruned by
  Torch-Pruning into its own smaller copy of the parent's class and run alone, the
  similarity per network and layer with scikit-learn's exact t-SNE P. Its measures are
  checked against ours. The time it spends pruning (building each copy's dependency
  graph) is part of it; the line after it says how much.
* dense bound: the parent's own forward on pop x batch images (chunks of 10
  individuals' images), nothing else: what any evaluation that runs every individual
  at the parent's width costs at least.
* memory (``--memory``): in a fresh process, three generations at pop 100 on a
  torchvision ResNet-18 (11 M parameters, random weights, 3x32x32 inputs, batch 20,
  unit-gain mutation at rate 0.3); the peak resident memory (``ru_maxrss``).
  Individuals share the tensors they did not change.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from common import (
    Generation,
    agreement,
    ms,
    prepared_section,
    read_inputs,
    resolve_device,
    section_parser,
    spread,
    summary,
    synthetic_images,
    time_steps,
)
from reference import ReferenceEvaluator, reference_toolbox
from torch import nn

REF = SimpleNamespace(pop=100, batch=100, generations=100, val_size=5000, perplexity=30.0)
TINY = SimpleNamespace(pop=8, batch=40, generations=4, val_size=40, perplexity=5.0)


def load_resnet_inputs(tiny: bool, log):
    """(data, ResNet parent model, its test accuracy): FashionMNIST and the cached default
    ResNet, or synthetic 1x12x12 images and a quickly trained one-block ResNet with ``tiny``."""
    from ecomp_deap.nets.parents import (
        DEFAULT_RESNET_BLOCKS,
        DEFAULT_RESNET_CHANNELS,
        DEFAULT_RESNET_EPOCHS,
        DEFAULT_RESNET_SCHEDULE,
        ParentSpec,
        accuracy,
        train_parent,
    )

    if tiny:
        data = synthetic_images()
        spec = ParentSpec(arch="resnet", channels=(4, 8), blocks=1, hidden=(), in_features=144, n_classes=4,
                          epochs=2, batch_size=50)
        model = train_parent(spec, data.train_x, data.train_y, progress=False)
        return data, model, accuracy(model, data.test_x, data.test_y)
    from ecomp_deap.data import default_cache_dir, load_fashion_mnist
    from ecomp_deap.nets.parents import load_or_train_parent

    data = load_fashion_mnist()
    spec = ParentSpec(arch="resnet", channels=DEFAULT_RESNET_CHANNELS, blocks=DEFAULT_RESNET_BLOCKS, hidden=(),
                      epochs=DEFAULT_RESNET_EPOCHS, schedule=DEFAULT_RESNET_SCHEDULE)
    info = load_or_train_parent(spec, data, default_cache_dir(), progress=False, log=log)
    return data, info.model, info.test_accuracy


class DenseBound:
    """The parent's own forward on the population's images, chunks of 10 individuals."""

    def __init__(self, model, pop: int, x: torch.Tensor, device: str):
        self.model, self.device = model.to(device).eval(), device
        self.chunks = [x.to(device).repeat(min(10, pop - i), *(1,) * (x.dim() - 1)) for i in range(0, pop, 10)]
        self.times: list[float] = []

    @torch.no_grad()
    def time(self, reps: int) -> None:
        for _ in range(reps):
            t0 = time.perf_counter()
            for c in self.chunks:
                self.model(c)
            if self.device == "cuda":
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - t0)

    def summary(self) -> dict:
        return summary(self.times)


def resnet_section(reps: int, device: str, tiny: bool, log) -> dict:
    """Ours vs the per-network reference vs :class:`DenseBound` on one weighted generation
    of ``resnet_weighting121``, medians over ``reps`` rounds, and the agreement check."""
    s = TINY if tiny else REF
    data, model, parent_acc = load_resnet_inputs(tiny, lambda m: log("  " + m))
    parent, cfg, run, base_pop, t0, x, y = prepared_section("resnet_weighting121", s, model, data, device)
    graph = run.net
    emb = graph.default_embeddings()
    log(f"graph parent: {graph.describe()} (test accuracy {parent_acc:.4f}); pop {s.pop}, batch {s.batch}, "
        f"embeddings {'/'.join(emb)} (flattened C*H*W), perplexity {s.perplexity:g}")
    ref = ReferenceEvaluator(parent, emb, cfg.perplexity, device)
    run.evaluator.clear_cache()
    check = agreement(run.evaluator.measure(base_pop, x, y), ref.measure(base_pop, x, y))
    bound = DenseBound(parent.model, s.pop, x, device)
    ours_step, ref_step = Generation(run), Generation(run, reference_toolbox(run, ref))
    from ecomp_deap.nets.export import export_individual

    raw = {"ours": [], "other_form": [], "reference": [], "pruning": []}
    forward = run.evaluator.forward
    default = forward.vmapped
    form = {True: "vmapped chunks", False: "one functional call per individual"}
    for _ in range(reps):  # rounds: load changes hit ours, the reference and the bound alike
        raw["ours"] += time_steps(run, base_pop, t0, 1, device, step=ours_step)
        forward.vmapped = not default
        raw["other_form"] += time_steps(run, base_pop, t0, 1, device, step=ours_step)
        forward.vmapped = default
        raw["reference"] += time_steps(run, base_pop, t0, 1, device, step=ref_step)
        t = time.perf_counter()
        for ind in base_pop:
            export_individual(ind, graph)
        raw["pruning"].append(time.perf_counter() - t)
        bound.time(3)
    ours, other, reference, pruning, b = (summary(raw["ours"]), summary(raw["other_form"]),
                                               summary(raw["reference"]), summary(raw["pruning"]), bound.summary())
    kept = sum(sum(ind.hidden_units()) for ind in base_pop) / (len(base_pop) * sum(graph.hidden_widths))
    log(f"timed population (generation t={t0}): {len(base_pop)} individuals, mean {100 * kept:.0f}% of the "
        f"channels kept")
    log(f"ours: ea_weighted, one generation ({form[default]})  {spread(ours)}")
    log(f"ours with {form[not default]} instead  {spread(other)}")
    log(f"reference: per-network generation  {spread(reference)}")
    log(f"  of which pruning {len(base_pop)} copies {ms(pruning['median_s'])}")
    log(f"dense bound (parent forward, pop x batch images) {ms(b['median_s'])}")
    log(f"agreement (reference vs ours, {check['n']} individuals): accuracy equal {check['accuracy_equal']}/"
        f"{check['n']}, compression equal {check['compression_equal']}/{check['n']}, similarity max rel diff "
        f"{check['similarity_max_rel_diff']:.2e}: {'PASSED' if check['passed'] else 'FAILED'}")
    ratios = {"reference_over_ours_generation": reference["median_s"] / ours["median_s"],
              "reference_without_pruning_over_ours": (reference["median_s"] - pruning["median_s"]) / ours["median_s"],
              "ours_over_bound_generation": ours["median_s"] / b["median_s"],
              "other_form_over_ours": other["median_s"] / ours["median_s"]}
    log(f"ratio reference / ours (generation): {ratios['reference_over_ours_generation']:.1f}x "
        f"({ratios['reference_without_pruning_over_ours']:.1f}x without the reference's pruning)")
    log(f"ratio ours / dense bound (generation): {ratios['ours_over_bound_generation']:.2f}x")
    log(f"ratio {form[not default]} / ours: {ratios['other_form_over_ours']:.2f}x")
    return {"parent": graph.describe(), "parent_test_accuracy": parent_acc, "pop": s.pop, "batch": s.batch,
            "forward": form[default], "ours": ours, "other_form": other, "reference": reference,
            "pruning": pruning, "bound": b, "agreement": check, "ratios": ratios, "kept_fraction": kept}


class Wrapped(nn.Module):
    """A chain inside a class of its own: read as a graph."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)


def chain_vs_graph_section(reps: int, device: str, log) -> dict:
    """One ``cnn_weighting121`` generation at pop 100, batch 100 on the default CNN read as a
    chain (its ``nn.Sequential``) and as a graph (the same layers in a class of its own),
    rounds interleaved; medians."""
    from common import load_cnn_inputs

    data, model, _ = load_cnn_inputs(False, lambda m: log("  " + m))
    runs = {}
    for name, m in (("chain", model), ("graph", Wrapped(model))):
        _, _, run, pop, t0, _, _ = prepared_section("cnn_weighting121", REF, m, data, device)
        runs[name] = (run, pop, t0)
    times = {k: [] for k in runs}
    for _ in range(reps):
        for k, (run, pop, t0) in runs.items():
            times[k] += time_steps(run, pop, t0, 1, device)
    med = {k: summary(v) for k, v in times.items()}
    log(f"default CNN, one generation: read as a chain {spread(med['chain'])}; as a graph {spread(med['graph'])}; "
        f"graph / chain {med['graph']['median_s'] / med['chain']['median_s']:.2f}x")
    return med


def memory_child(pop: int, batch: int) -> None:
    """In this (fresh) process: one generation of a pop-``pop`` run on torchvision's
    ResNet-18; prints the peak resident memory as JSON."""
    import torchvision

    from ecomp_deap.config import EcompConfig
    from ecomp_deap.search.run import EcompRun

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    g = torch.Generator().manual_seed(0)
    n = 4 * batch
    data = SimpleNamespace(train_x=torch.randn(n, 3, 32, 32, generator=g), train_y=torch.arange(n) % 10,
                           test_x=torch.randn(batch, 3, 32, 32, generator=g), test_y=torch.arange(batch) % 10,
                           fingerprint="synthetic", source="synthetic")
    parent, run_data = read_inputs(model, data)
    cfg = EcompConfig(pop_size=pop, batch_size=batch, generations=3, val_size=batch, perplexity=5.0,
                      embedding_layers=None, recombination_layers=None, mutation="units", mutation_rate=0.3)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t = time.perf_counter()
    run = EcompRun(cfg, parent, run_data, progress=False)
    state = run.initial_state()
    step = Generation(run)
    for _ in range(cfg.generations):
        state = step(state)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    own = {id(t) for t in parent.weights}
    distinct = {id(t) for ind in state.population for t in ind.weights}
    print(json.dumps({"pop": pop, "batch": batch, "generations": cfg.generations, "peak_bytes": peak,
                      "before_run_bytes": before, "parameters": sum(p.numel() for p in model.parameters()),
                      "distinct_tensors": len(distinct), "tensors_per_individual": len(parent.weights),
                      "individuals_with_tensors_of_their_own": sum(any(id(t) not in own for t in ind.weights)
                                                                   for ind in state.population),
                      "wall_s": time.perf_counter() - t}))


def memory_section(pop: int, batch: int, log) -> dict:
    """:func:`memory_child` in a fresh process (through ``/bin/sh``: its own ru_maxrss)."""
    cmd = f"{sys.executable} {Path(__file__).resolve()} --memory-child {pop} {batch}"
    out = subprocess.run(["/bin/sh", "-c", cmd], capture_output=True, text=True, check=True)
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    log(f"memory: torchvision ResNet-18 ({rec['parameters'] / 1e6:.1f} M parameters), pop {pop}, batch {batch}: "
        f"peak {rec['peak_bytes'] / 2**30:.2f} GiB ({rec['before_run_bytes'] / 2**30:.2f} GiB before the run); "
        f"after {rec['generations']} generations {rec['individuals_with_tensors_of_their_own']} individuals hold "
        f"tensors of their own, {rec['distinct_tensors']} distinct tensors over the population "
        f"({rec['tensors_per_individual']} per individual); {rec['wall_s']:.0f} s")
    return rec


def main(argv=None) -> int:
    p = section_parser("bench_resnet.py", __doc__, "synthetic images and a tiny ResNet")
    p.add_argument("--memory", action="store_true", help="also the ResNet-18 population's peak memory")
    p.add_argument("--memory-pop", type=int, default=100, help="population of the memory run")
    p.add_argument("--memory-batch", type=int, default=20, help="batch of the memory run")
    p.add_argument("--memory-child", nargs=2, type=int, help=argparse.SUPPRESS)
    p.add_argument("--chain-vs-graph", action="store_true",
                   help="also the default CNN's generation read as a chain and as a graph")
    args = p.parse_args(argv)
    if args.memory_child:
        memory_child(*args.memory_child)
        return 0
    if args.reps < 1:
        p.error("--reps must be >= 1")
    device = resolve_device(args.device)
    print(f"EComp graph-parent generation benchmark: torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"device {device}, load average {os.getloadavg()[0]:.2f}", flush=True)
    report = resnet_section(args.reps, device, args.tiny, lambda m: print(m, flush=True))
    if args.chain_vs_graph:
        report["chain_vs_graph"] = chain_vs_graph_section(args.reps, device, lambda m: print(m, flush=True))
    if args.memory:
        report["memory"] = memory_section(args.memory_pop, args.memory_batch, lambda m: print(m, flush=True))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=float))
    return 0 if report["agreement"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
