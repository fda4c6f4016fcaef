"""Speed benchmark of one EComp generation: ours (batched) vs the per-network reference
vs the compute bound, plus how a generation scales with the population and the parent.

    .venv/bin/python benchmarks/bench_generation.py                # default: reference settings + scale
    .venv/bin/python benchmarks/bench_generation.py --full         # also a whole run (100 generations + final pass)
    .venv/bin/python benchmarks/bench_generation.py --no-scale --reps 3
    .venv/bin/python benchmarks/bench_generation.py --tiny --reps 1 # seconds; what the test runs
    .venv/bin/python benchmarks/bench_generation.py --json bench.json
    .venv/bin/python benchmarks/bench_generation.py --cnn --no-scale  # with the CNN section (as bench_cnn.py)

What is measured, in one process (medians over ``--reps`` rounds, after one warm-up
generation; each round measures every quantity once, so load changes on a shared machine
hit ours, the reference and the bound alike):

* **ours**: one generation of the run's loop (``ecomp_deap.search.loops.ea_weighted`` /
  ``ea_nsga2`` with ``until = t + 1``, ``common.Generation``) at the reference settings
  (pop 100, batch 100, trained 784-256-256-10 parent, embeddings layer_1_act/layer_2_act),
  weighted and NSGA-II, with the device's forward strategy (``choose_forward``: kept
  groups on the CPU, stacked elsewhere); and, separately, the parts of a weighted
  generation, each by calling the package's pieces directly: forward
  (``evaluator.forward.plan``, which on the CPU runs the first stage once on the
  population's distinct rows, then per chunk ``plan.outputs``: logits, masks and the
  child embeddings' squared distances, + accuracy/compression counts), similarity (the
  parent's references once per batch + perplexity search and KL,
  ``similarity_from_distances``), variation (``loops.vary``), selection
  (``toolbox.select``) and bookkeeping (``loops.assign`` + ``loops.record``).
* **reference** (``benchmarks/reference.py``): the same generation with every individual
  exported as its own ``nn.Sequential`` and run alone, and the similarity per network and
  per layer with scikit-learn's exact t-SNE P (parent P recomputed per individual): the
  same loop with a toolbox whose ``evaluate`` is the reference's (``reference_toolbox``).
  Its measures are checked against ours on the timed generation (accuracy and compression
  exactly, similarity to 1e-3 relative).
* **compute bound**: the population's batched forward matmuls alone (pre-stacked float32
  weights; per layer the faster of one population-wide GEMM and a ``baddbmm``), the floor
  for any batched evaluation.
* **whole run** (``--full``): ``run_ecomp`` wall time vs an *estimate* of the reference's
  (its measured generation time x generations + its measured evaluation time x the
  final all-batches pass + the test-set pass of the chosen individuals).
* **CNN** (``--cnn``): ``common.cnn_section``, what ``bench_cnn.py`` runs alone.
* **scale** (unless ``--no-scale``): time per generation and peak memory (``ru_maxrss``
  growth, and CUDA peak allocation on a GPU) for each ``--scale-pops`` population with
  the 784-256-256-10 parent, and the first and last of them with a 784-1024-1024-10
  parent (random init), each in a fresh subprocess (started through ``/bin/sh``, which
  forks: a child exec'd straight from this process would inherit its ru_maxrss) so each
  peak is its own.

Timings are wall-clock and noisy on a shared machine; the header prints the load average.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from common import (
    MLP_REF,
    MLP_TINY,
    SIM_RTOL,
    FormTimer,
    Generation,
    agreement,
    cnn_section,
    load_inputs,
    maxrss_bytes,
    measure_chunk,
    ms,
    prepared_run,
    read_inputs,
    resolve_device,
    spread,
    summary,
    time_measure,
    time_steps,
    timed,
)
from deap import tools

from ecomp_deap.config import EcompConfig
from ecomp_deap.data import balanced_indices
from ecomp_deap.fitness.evaluator import full_float32
from ecomp_deap.fitness.measures import Measures
from ecomp_deap.fitness.reference import ParentReference
from ecomp_deap.fitness.similarity import similarity_from_distances
from ecomp_deap.nets.parents import build_mlp
from ecomp_deap.nets.spliced import RowSplice, dense_uncached
from ecomp_deap.search.loops import EvolutionState, assign, make_statistics, record, vary
from ecomp_deap.search.run import EcompRun


def make_config(s, selection: str, device: str, **over) -> EcompConfig:
    return EcompConfig(selection=selection, pop_size=s.pop, batch_size=s.batch, generations=s.generations,
                       perplexity=s.perplexity, val_size=s.val_size, device=device).replace(**over)


# ----------------------------------------------------------------------------- ours: the parts
def forward_part(ev, pop, x, y):
    """The forward of a measure (``PopulationEvaluator.measure_blocks`` on one batch): the
    run's forward strategy planned for the population (``ev.forward.plan``: for the
    kept-groups forward, the first stage once on the population's distinct rows), then
    per chunk the logits, masks and the child embeddings' squared distances, and the
    accuracy and compression counts. Returns (x on the device, rows, correct counts,
    kept counts, per chunk (masks, distances))."""
    xd, yd = x.to(ev.device), y.to(ev.device)
    rows = ev.similarity_rows(len(xd))
    step = measure_chunk(ev, len(xd))
    plan = ev.forward.plan(pop, xd, rows, step)
    acc, comp, outs = [], [], []
    for start in range(0, len(pop), step):
        stop = min(start + step, len(pop))
        with full_float32(ev.device):
            logits, masks, dists = plan.outputs(start, stop)
        acc.append((logits.argmax(-1) == yd).sum(1))  # counts, as measure_blocks
        comp.append(sum((m != 0).sum(1) for m in masks))
        outs.append((masks, dists))
    return xd, rows, acc, comp, outs


def similarity_part(ev, cfg, xd, rows, outs) -> list:
    """The similarity of a measure on one batch: the parent's references once (P,
    log-precisions), then per chunk and embedding layer the children's perplexity search
    and KL (``similarity_from_distances``). Returns per chunk the (C,) similarities."""
    refs = [ParentReference.stack([r]) for r in ev.parent_reference(xd[:rows], None)]  # one batch: (1, ...)
    sims = []
    for masks, dists in outs:
        s = torch.zeros(masks[0].shape[0], 1, dtype=torch.float64, device=ev.device)
        for (layer, _), d_child, ref in zip(ev.embeddings.layers, dists, refs):  # d_child (C, 1, rows, rows)
            s = s + similarity_from_distances(ref.p, d_child, cfg.perplexity, cfg.kernel,
                                              dof=masks[layer].sum(1)[:, None],
                                              log_beta_init=ref.warm_start(d_child), parent_term=ref.term)
        sims.append(s[:, 0])
    return sims


def time_parts(run: EcompRun, base_pop, t0, reps, device) -> dict[str, list[float]]:
    """The parts of a weighted generation, timed by calling the pieces directly (mirrors
    ``PopulationEvaluator.measure`` and ``loops.ea_weighted``): forward, similarity,
    bookkeeping (``loops.assign`` + ``loops.record``), selection (``toolbox.select``),
    variation (``loops.vary``)."""
    ev, tb, cfg = run.evaluator, run.toolbox, run.config
    stats = make_statistics()
    epoch, index = divmod(t0, run.stream.n_batches)
    x, y = run.stream.batch(epoch, index)
    parts = {k: [] for k in ("forward", "similarity", "bookkeeping", "selection", "variation")}
    for _ in range(reps):
        pop = [tb.clone(ind) for ind in base_pop]
        ev.clear_cache()
        with torch.inference_mode():
            t, (xd, rows, acc, comp, outs) = timed(lambda: forward_part(ev, pop, x, y), device)
            parts["forward"].append(t)
            t, sims = timed(lambda: similarity_part(ev, cfg, xd, rows, outs), device)
            parts["similarity"].append(t)
            correct, kept, sim = (torch.cat(v).cpu().numpy() for v in (acc, comp, sims))
            measures = Measures(correct / len(y), kept / ev.total_hidden, sim)
            outs.clear()  # the chunks' distances: not held through the CPU parts

        state = EvolutionState(t0, pop, tools.Logbook(), run.rng)

        def bookkeeping():
            assign(pop, measures, cfg)
            record(state, pop, stats, run.stream.n_batches, len(pop))

        parts["bookkeeping"].append(timed(bookkeeping, "cpu")[0])
        t, selected = timed(lambda: tb.select(pop, len(pop)), "cpu")
        parts["selection"].append(t)
        parts["variation"].append(timed(lambda: vary(selected, tb, cfg, run.rng), "cpu")[0])
    return parts


# ----------------------------------------------------------------------------- bound
class ComputeBound(FormTimer):
    """The population's forward matmuls alone: pre-stacked float32 weights, bias fused
    (addmm / baddbmm), no activations, masks or measures. Per layer the fastest of a few
    formulations (first layer: one GEMM over the whole population, or a batched
    ``baddbmm`` of the broadcast input; later layers: ``baddbmm`` on a contiguous
    (P, B, in) input); the bound is the sum of the per-layer best medians."""

    def __init__(self, base_pop, x, device):
        dev = torch.device("cuda" if device == "cuda" else "cpu")
        self.device = device
        n_lin = len(base_pop[0].weights)
        w = [torch.stack([dense_uncached(ind.weights.raw(k)) for ind in base_pop]).to(dev, torch.float32)
             for k in range(n_lin)]  # the population's splices stay splices, as in a run
        b = [torch.stack([ind.biases[k] for ind in base_pop]).to(dev, torch.float32) for k in range(n_lin)]
        h = x.to(dev).reshape(x.shape[0], -1).to(torch.float32).contiguous()  # (B, in)
        C, B = w[0].shape[0], h.shape[0]
        w0t = w[0].reshape(-1, w[0].shape[2]).T.contiguous()  # (in, C*out): the population as one matrix
        b0 = b[0].reshape(-1)
        self.forms = [{"gemm": lambda: torch.addmm(b0, h, w0t),
                       "baddbmm": lambda: torch.baddbmm(b[0][:, None, :], h.expand(C, *h.shape),
                                                        w[0].transpose(1, 2))}]
        for k in range(1, n_lin):
            hk = torch.randn(C, B, w[k].shape[2], device=dev)  # (C, B, in_k), like the previous layer's output
            self.forms.append({"baddbmm": lambda k=k, hk=hk: torch.baddbmm(b[k][:, None, :], hk,
                                                                            w[k].transpose(1, 2))})
        self.flops = 2 * C * B * sum(wk.shape[1] * wk.shape[2] for wk in w)
        self.warm_up()

    def summary(self) -> dict:
        layers, total = self.fastest("layer")
        return {"median_s": total, "min_s": total, "max_s": total, "n": len(self.times[0]["baddbmm"]),
                "layers": layers, "flops": self.flops, "gflops_per_s": self.flops / total / 1e9}


# ----------------------------------------------------------------------------- scale
def _vm_hwm() -> int | None:
    """This process's own peak RSS (Linux /proc VmHWM), a cross-check of ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def scale_worker(spec: dict) -> None:
    """One configuration in a fresh process: prints one JSON line."""
    rss_start = maxrss_bytes()  # after the imports (torch): the process's own floor
    device = spec["device"]
    blob = torch.load(spec["data"], weights_only=True)
    x, y = blob["x"], blob["y"]
    hidden = tuple(spec["hidden"])
    torch.manual_seed(0)
    model = build_mlp(hidden)
    if spec.get("parent_state") and tuple(blob.get("parent_hidden", ())) == hidden:
        model.load_state_dict(blob["parent_state"])
    model.eval()
    data = SimpleNamespace(train_x=x, train_y=y, test_x=x[:spec["batch"]], test_y=y[:spec["batch"]])
    gens = spec["reps"] + 1
    cfg = EcompConfig(pop_size=spec["pop"], batch_size=spec["batch"], generations=gens, val_size=0,
                      perplexity=spec["perplexity"], device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    gc.collect()
    rss0 = maxrss_bytes()
    parent, run_data = read_inputs(model, data)  # the run's set-up, as run_ecomp does it
    run = EcompRun(cfg, parent, run_data, progress=False)
    state = run.initial_state()
    step = Generation(run)
    times = []
    for _ in range(gens):
        times.append(timed(lambda: step(state), device)[0])
    rss1 = maxrss_bytes()
    out = {"pop": spec["pop"], "hidden": list(hidden), "times_s": times, **summary(times[1:] or times),
           "rss_at_start_bytes": rss_start, "rss_before_bytes": rss0, "rss_peak_bytes": rss1,
           "rss_growth_bytes": rss1 - rss0, "vm_hwm_bytes": _vm_hwm(),
           "chunk": measure_chunk(run.evaluator, cfg.batch_size), "trained_parent": bool(spec.get("parent_state"))
           and tuple(blob.get("parent_hidden", ())) == hidden}
    if device == "cuda":
        out["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
    print("SCALE_RESULT " + json.dumps(out), flush=True)


def run_scale(args, s, data, parent, device, log) -> list[dict]:
    """The scale table: for each ``--scale-pops`` population with the parent's hidden
    widths (``parent``: a ``Parent``, its trained weights passed on), and the first and
    last with the wide parent (random init), one :func:`scale_worker` in a fresh process."""
    pops = args.scale_pops
    configs = [(p, s.hidden) for p in pops] + [(p, s.wide_hidden) for p in sorted({pops[0], pops[-1]})]
    gens = args.reps + 1
    g = torch.Generator().manual_seed(0)
    idx = balanced_indices(data.train_y, gens * s.batch, g)
    results = []
    with tempfile.TemporaryDirectory(prefix="ecomp_bench_") as tmp:
        path = Path(tmp) / "scale_data.pt"
        torch.save({"x": data.train_x[idx].clone(), "y": data.train_y[idx].clone(),
                    "parent_state": parent.model.state_dict(), "parent_hidden": list(s.hidden)}, path)
        for pop, hidden in configs:
            spec = {"pop": pop, "hidden": list(hidden), "batch": s.batch, "perplexity": s.perplexity,
                    "reps": args.reps, "device": device, "data": str(path), "parent_state": True}
            # Through an intermediate shell that forks: a process started straight from this
            # one (fork/vfork + exec) inherits this process's ru_maxrss as its own starting
            # value, which would hide the worker's peak below ours (Linux keeps the larger).
            cmd = ["/bin/sh", "-c", '"$@"; exit $?', "sh",
                   sys.executable, str(Path(__file__).resolve()), "--scale-worker", json.dumps(spec)]
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            lines = [l for l in proc.stdout.splitlines() if l.startswith("SCALE_RESULT ")]
            if proc.returncode != 0 or not lines:
                raise RuntimeError(f"scale worker pop {pop} hidden {hidden} failed (exit {proc.returncode}):\n"
                                   f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
            r = json.loads(lines[-1][len("SCALE_RESULT "):])
            r["subprocess_wall_s"] = time.perf_counter() - t
            log(f"  scale: pop {pop:5d}, parent 784-{'-'.join(map(str, hidden))}-10: "
                f"{1e3 * r['median_s']:.1f} ms/generation ({r['subprocess_wall_s']:.0f} s in its subprocess)")
            results.append(r)
    return results


# ----------------------------------------------------------------------------- report
PART_LABELS = {"forward": "forward + child distances + acc/comp",
               "similarity": "similarity (parent P once + search + KL)",
               "variation": "variation (loops.vary)", "selection": "selection (toolbox.select)",
               "bookkeeping": "bookkeeping (loops.assign + record)"}


def describe_population(log, run, pop) -> None:
    firsts = [ind.weights.raw(0) for ind in pop]  # as stored: reading ind.weights[0] would copy splices
    distinct = len({id(w) for w in firsts})
    splices = sum(isinstance(w, RowSplice) for w in firsts)
    kept = float(np.mean([sum(ind.hidden_units()) / sum(run.net.hidden_widths) for ind in pop]))
    log(f"timed population: {len(pop)} individuals, {distinct} distinct first-layer weight tensors "
        f"(individuals sharing one share its product; {splices} stored as crossover's row splices), "
        f"mean {100 * kept:.0f}% of the hidden units kept")


def log_parts(log, parts: dict, step: dict) -> None:
    log("ours: parts, each called directly:")
    total = 0.0
    for k in ("forward", "similarity", "variation", "selection", "bookkeeping"):
        total += parts[k]["median_s"]
        log(f"  {PART_LABELS[k]:<48} {spread(parts[k])}  {100 * parts[k]['median_s'] / step['median_s']:5.1f}% "
            "of the step")
    log(f"  {'sum of the parts':<48} {ms(total)}  (whole step {ms(step['median_s']).strip()})")


def log_bound(log, bound: dict) -> None:
    log(f"compute bound: forward matmuls     {ms(bound['median_s'])}  (sum of per-layer best medians, n={bound['n']}: "
        + ", ".join(f"{1e3 * l['median_s']:.2f} ms {l['best']}" for l in bound["layers"])
        + f"; {bound['flops'] / 1e9:.2f} GFLOP, {bound['gflops_per_s']:.1f} GFLOP/s)")


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Benchmark one EComp generation: ours (batched) vs the per-network reference vs the "
                    "compute bound, and how a generation scales with population and parent size.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--reps", type=int, default=5, help="repetitions per measurement (medians are reported)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto",
                   help="device for ours, the reference's forwards (its similarity is numpy) and the bound")
    p.add_argument("--full", action="store_true",
                   help="also time a whole run (run_ecomp: generations + final all-batches pass) and "
                        "estimate the reference's")
    p.add_argument("--no-scale", action="store_true", help="skip the scale subprocesses")
    p.add_argument("--scale-pops", type=int, nargs="+", default=None,
                   help="populations for the scale table (default 100 300 1000; with --tiny 8); "
                        "the wide parent runs at the first and the last")
    p.add_argument("--tiny", action="store_true",
                   help="tiny configuration (pop 8, batch 20, hidden 16 16, perplexity 5, synthetic data; "
                        "tiny scale subprocesses): a smoke test in seconds")
    p.add_argument("--cnn", action="store_true",
                   help="also the CNN section (what benchmarks/bench_cnn.py runs): the default CNN parent, ours vs the "
                        "per-network reference and the dense convolution bound")
    p.add_argument("--json", metavar="PATH", help="also write every number to this JSON file")
    p.add_argument("--scale-worker", metavar="SPEC", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.reps < 1:
        p.error("--reps must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.scale_worker:
        scale_worker(json.loads(args.scale_worker))
        return 0
    s = MLP_TINY if args.tiny else MLP_REF
    if args.scale_pops is None:
        args.scale_pops = list(s.scale_pops)
    device = resolve_device(args.device)
    out = print
    report = {"settings": {}, "machine": {}}

    def log(msg):
        out(msg, flush=True)

    load0 = os.getloadavg()
    report["machine"] = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                         "interop_threads": torch.get_num_interop_threads(), "device": device,
                         "cpu_count": os.cpu_count(), "platform": platform.platform(),
                         "python": platform.python_version(), "loadavg_start": load0}
    log("EComp generation benchmark" + (" (--tiny)" if args.tiny else ""))
    log(f"torch {torch.__version__}, threads {torch.get_num_threads()} (interop {torch.get_num_interop_threads()}), "
        f"device {device}" + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else "")
        + f", {os.cpu_count()} CPUs, python {platform.python_version()}")
    log(f"load average at start: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}; reps {args.reps} (medians)")

    data, model, parent_acc = load_inputs(args.tiny, lambda m: log("  " + m))
    parent, run_data = read_inputs(model, data)  # read and checked once, as run_ecomp does
    cfg = make_config(s, "weighted", device)
    settings = {"pop": s.pop, "batch": s.batch, "parent": [784, *s.hidden, 10], "perplexity": s.perplexity,
                "embedding_layers": list(cfg.embedding_layers), "data": "synthetic" if args.tiny else "FashionMNIST",
                "parent_test_accuracy": parent_acc}
    report["settings"] = settings
    log(f"settings: pop {s.pop}, batch {s.batch}, parent {'-'.join(map(str, settings['parent']))} "
        f"(test accuracy {parent_acc:.4f}), embeddings {'/'.join(cfg.embedding_layers)}, "
        f"perplexity {s.perplexity:g}, data {settings['data']}")

    # ---------------------------------------------------------------- measurements
    from reference import ReferenceEvaluator, reference_toolbox

    run, base_pop, t0 = prepared_run(cfg, parent, run_data)
    epoch, index = divmod(t0, run.stream.n_batches)
    x, y = run.stream.batch(epoch, index)
    run_n, base_n, t0_n = prepared_run(make_config(s, "nsga2", device), parent, run_data)
    ref = ReferenceEvaluator(parent, cfg.embedding_layers, cfg.perplexity, device)
    run.evaluator.clear_cache()
    check = agreement(run.evaluator.measure(base_pop, x, y), ref.measure(base_pop, x, y))
    bound_timer = ComputeBound(base_pop, x, device)
    # a late generation: the first layer's sharing between individuals has faded
    run_l, base_l, t_l = prepared_run(cfg, parent, run_data, s.late)
    x_l, y_l = run_l.stream.batch(*divmod(t_l, run_l.stream.n_batches))
    bound_late = ComputeBound(base_l, x_l, device)
    raw = {k: [] for k in ("ours_step", "ours_nsga2", "ours_measure", "ref_step", "ref_measure", "late_step",
                           "late_measure")}
    parts_raw, late_parts_raw = {}, {}
    loads = []
    step, step_n, step_l = Generation(run), Generation(run_n), Generation(run_l)
    ref_step_fn = Generation(run, reference_toolbox(run, ref))  # the same loop, evaluated per network
    # Rounds: every quantity is measured once per round, so a change in the machine's
    # load during the benchmark hits ours, the reference and the bound alike.
    for _ in range(args.reps):
        raw["ours_step"] += time_steps(run, base_pop, t0, 1, device, step)
        raw["ours_nsga2"] += time_steps(run_n, base_n, t0_n, 1, device, step_n)
        raw["ours_measure"] += time_measure(run.evaluator.measure, base_pop, x, y, 1, device,
                                            run.evaluator.clear_cache)
        for k, v in time_parts(run, base_pop, t0, 1, device).items():
            parts_raw.setdefault(k, []).extend(v)
        raw["ref_step"] += time_steps(run, base_pop, t0, 1, device, ref_step_fn)
        raw["ref_measure"] += time_measure(ref.measure, base_pop, x, y, 1, device)
        bound_timer.time(3)
        raw["late_step"] += time_steps(run_l, base_l, t_l, 1, device, step_l)
        raw["late_measure"] += time_measure(run_l.evaluator.measure, base_l, x_l, y_l, 1, device,
                                            run_l.evaluator.clear_cache)
        for k, v in time_parts(run_l, base_l, t_l, 1, device).items():
            late_parts_raw.setdefault(k, []).extend(v)
        bound_late.time(3)
        loads.append(os.getloadavg()[0])
    ours_step, ours_nsga2, ours_measure, ref_step, ref_measure, late_step, late_measure = (
        summary(raw[k]) for k in ("ours_step", "ours_nsga2", "ours_measure", "ref_step", "ref_measure",
                                  "late_step", "late_measure"))
    parts = {k: summary(v) for k, v in parts_raw.items()}
    late_parts = {k: summary(v) for k, v in late_parts_raw.items()}
    bound, bound_l = bound_timer.summary(), bound_late.summary()
    report["machine"]["loadavg_1min_per_round"] = loads

    report.update(ours={"step_weighted": ours_step, "step_nsga2": ours_nsga2, "evaluation": ours_measure,
                        "parts": parts, "eval_chunk": measure_chunk(run.evaluator, s.batch),
                        "forward": run.evaluator.forward.name},
                  reference={"step_weighted": ref_step, "evaluation": ref_measure}, bound=bound, agreement=check)
    report["late"] = {"t": t_l, "step_weighted": late_step, "evaluation": late_measure, "parts": late_parts,
                      "bound": bound_l, "ours_over_bound_generation": late_step["median_s"] / bound_l["median_s"]}

    log("")
    log(f"== one generation (weighted unless said; generation t={t0}, same population and batch for all) ==")
    describe_population(log, run, base_pop)
    log(f"ours: ea_weighted, one generation  {spread(ours_step)}   (forward {run.evaluator.forward.name})")
    log(f"ours: ea_nsga2, one generation     {spread(ours_nsga2)}   (evaluates parents and offspring: "
        f"{2 * s.pop} evaluations)")
    log(f"ours: evaluation only (measure)    {spread(ours_measure)}")
    log_parts(log, parts, ours_step)
    log(f"reference: per-network generation  {spread(ref_step)}")
    log(f"reference: evaluation only         {spread(ref_measure)}")
    log_bound(log, bound)
    log(f"agreement check (reference vs ours on the timed generation, {check['n']} individuals): "
        f"accuracy equal {check['accuracy_equal']}/{check['n']}, compression equal "
        f"{check['compression_equal']}/{check['n']}, similarity max rel diff {check['similarity_max_rel_diff']:.2e} "
        f"(tolerance {SIM_RTOL:g}): {'PASSED' if check['passed'] else 'FAILED'}")
    ratios = {"reference_over_ours_generation": ref_step["median_s"] / ours_step["median_s"],
              "reference_over_ours_evaluation": ref_measure["median_s"] / ours_measure["median_s"],
              "ours_over_bound_generation": ours_step["median_s"] / bound["median_s"],
              "ours_over_bound_evaluation": ours_measure["median_s"] / bound["median_s"]}
    report["ratios"] = ratios
    log(f"ratio reference / ours (generation): {ratios['reference_over_ours_generation']:.1f}x   "
        f"(evaluation only: {ratios['reference_over_ours_evaluation']:.1f}x)")
    log(f"ratio ours / bound (generation): {ratios['ours_over_bound_generation']:.1f}x   "
        f"(evaluation only: {ratios['ours_over_bound_evaluation']:.1f}x)")

    log("")
    log(f"== one weighted generation late in a run (t={t_l}: a default run evolved {t_l} generations, "
        "the first layer's sharing faded) ==")
    describe_population(log, run_l, base_l)
    log(f"ours: ea_weighted, one generation  {spread(late_step)}")
    log(f"ours: evaluation only (measure)    {spread(late_measure)}")
    log_parts(log, late_parts, late_step)
    log_bound(log, bound_l)
    log(f"ratio ours / bound (generation t={t_l}): {late_step['median_s'] / bound_l['median_s']:.1f}x   "
        f"(evaluation only: {late_measure['median_s'] / bound_l['median_s']:.1f}x)")

    # ---------------------------------------------------------------- whole run
    if args.full:
        from ecomp_deap.search.run import run_ecomp

        log("")
        log("== whole run (weighted, settings above: generations + final all-batches pass + test pass) ==")
        t = time.perf_counter()
        result = run_ecomp(cfg, parent, data, progress=False, parent_test_accuracy=parent_acc, allow_weak_parent=True)
        ours_run = time.perf_counter() - t
        evo = result.evolution
        n_gen = cfg.generations * cfg.epochs
        n_batches = cfg.generations
        chosen = len(set(evo.front_indices) | {evo.best_index} | set(evo.extremes.values()))
        n_test_batches = len(data.test_y) // cfg.batch_size
        per_net = ref_measure["median_s"] / s.pop
        est = {"generations_s": ref_step["median_s"] * n_gen,
               "all_batches_pass_s": ref_measure["median_s"] * n_batches,
               "test_pass_s": per_net * chosen * n_test_batches}
        est["total_s"] = sum(est.values())
        bound_run = bound["median_s"] * (n_gen + n_batches) + bound["median_s"] / s.pop * chosen * n_test_batches
        report["whole_run"] = {"ours_s": ours_run, "ours_wall_time_s_field": result.wall_time_s,
                               "reference_estimate": est, "bound_estimate_s": bound_run, "generations": n_gen,
                               "final_pass_batches": n_batches, "test_chosen": chosen,
                               "test_batches": n_test_batches,
                               "reference_over_ours": est["total_s"] / ours_run,
                               "ours_over_bound": ours_run / bound_run,
                               "best_test_accuracy": result.best["test_accuracy"],
                               "best_compression": result.best["compression"]}
        log(f"ours: run_ecomp wall time          {ours_run:9.1f} s   (best: test accuracy "
            f"{result.best['test_accuracy']:.4f}, compression {result.best['compression']:.3f})")
        ph = result.phase_times_s
        report["whole_run"]["phase_times_s"] = ph
        report["whole_run"]["final_pass_share"] = ph["final_pass"] / result.wall_time_s
        log(f"ours: phases: generations {ph['generations']:.1f} s, final pass (all training batches + validation) "
            f"{ph['final_pass']:.1f} s = {100 * ph['final_pass'] / result.wall_time_s:.0f}% of the run, "
            f"test pass + export {ph['test_and_export']:.1f} s")
        log(f"reference: ESTIMATE from measured per-generation times: {est['total_s']:.1f} s = "
            f"{n_gen} x {ref_step['median_s']:.3f} s (generations) + {n_batches} x {ref_measure['median_s']:.3f} s "
            f"(all-batches pass) + {chosen} chosen x {n_test_batches} test batches x {per_net * 1e3:.2f} ms/network")
        log(f"compute bound (estimate, matmuls only): {bound_run:.1f} s")
        log(f"ratio reference / ours (whole run, reference estimated): {est['total_s'] / ours_run:.1f}x")
        log(f"ratio ours / bound (whole run): {ours_run / bound_run:.1f}x")

    # ---------------------------------------------------------------- CNN
    if args.cnn:
        log("")
        log("== CNN: one weighted generation (cnn_weighting121) ==")
        report["cnn"] = cnn_section(args.reps, device, args.tiny, log)

    # ---------------------------------------------------------------- scale
    if not args.no_scale:
        log("")
        log(f"== scale: one weighted generation per configuration, fresh subprocess each "
            f"(batch {s.batch}, perplexity {s.perplexity:g}) ==")
        rows = run_scale(args, s, data, parent, device, log)
        report["scale"] = rows
        base = rows[0]
        log(f"{'pop':>6} {'parent':>16} {'ms/gen (median)':>16} {'time/time(first pop)':>20} "
            f"{'N/N(first)':>10} {'peak RSS growth':>16} {'peak RSS':>10}"
            + (f" {'CUDA peak':>10}" if device == "cuda" else ""))
        for r in rows:
            first = next(q for q in rows if q["hidden"] == r["hidden"])  # same parent, smallest pop
            growth = f"{r['median_s'] / first['median_s']:.2f}"
            nratio = f"{r['pop'] / first['pop']:.2f}"
            parent_s = "784-" + "-".join(map(str, r["hidden"])) + "-10"
            line = (f"{r['pop']:>6} {parent_s:>16} {1e3 * r['median_s']:>16.1f} {growth:>20} {nratio:>10} "
                    f"{r['rss_growth_bytes'] / 2**20:>12.0f} MiB {r['rss_peak_bytes'] / 2**20:>6.0f} MiB")
            if device == "cuda":
                line += f" {r['cuda_peak_bytes'] / 2**20:>6.0f} MiB"
            log(line)
        wide = next(r for r in rows if r["hidden"] != base["hidden"])
        log(f"wide parent: time(784-{'-'.join(map(str, wide['hidden']))}-10) / time(784-"
            f"{'-'.join(map(str, base['hidden']))}-10) at pop {wide['pop']}: {wide['median_s'] / base['median_s']:.2f}")
        log(f"(the 784-{'-'.join(map(str, base['hidden']))}-10 rows use the trained parent, the wide parent is "
            "randomly initialised; RSS growth = ru_maxrss after the generations minus before the run's set-up)")

    load1 = os.getloadavg()
    report["machine"]["loadavg_end"] = load1
    log("")
    log(f"load average at end: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=float))
        log(f"numbers written to {args.json}")
    passed = check["passed"] and (not args.cnn or report["cnn"]["agreement"]["passed"])
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
