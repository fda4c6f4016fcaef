"""What the benchmark scripts share (a module, not a script: it is imported, never run).

* devices and timing: :func:`resolve_device`, :func:`timed`, :func:`summary`, :func:`spread`;
* runs: :func:`read_inputs` (a parent read once with ``read_parent`` and the data checked
  against it with ``check_data``, as ``run_ecomp`` does), :func:`prepared_run` (an
  ``EcompRun`` a few generations in), :class:`Generation` (one generation of the run's
  loop, ``LOOPS[config.selection]`` with ``until = state.t + 1``, the unit every
  benchmark times), :func:`time_steps`, :func:`time_measure`;
* the MLP benchmark's inputs (:data:`MLP_REF`, :data:`MLP_TINY`, :func:`load_inputs`);
* comparisons: :func:`agreement` (reference vs ours), :class:`FormTimer` (a compute bound
  as the fastest of a few formulations per layer);
* the CNN section (:func:`cnn_section`), which ``bench_cnn.py`` runs alone and
  ``bench_generation.py --cnn`` after the MLP sections.

The scripts (``bench_generation.py``, ``bench_cnn.py``, ``bench_devices.py``) import this
module, and the ones that time the reference ``reference.py`` (as this module's
:func:`cnn_section` does, inside the function: scikit-learn is needed only there); no
script imports another script, and ``reference.py`` imports nothing from ``benchmarks/``
(``tests/test_benchmark.py`` checks both).
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from deap import tools

from ecomp_deap.config import EcompConfig
from ecomp_deap.fitness.measures import Measures
from ecomp_deap.nets.parents import ParentSpec, accuracy, train_parent
from ecomp_deap.nets.reader import Parent, read_parent
from ecomp_deap.nets.spliced import dense_uncached
from ecomp_deap.search.loops import LOOPS, EvolutionState, make_statistics
from ecomp_deap.search.run import EcompRun, RunData, check_data
from ecomp_deap.study.presets import preset_config

SIM_RTOL = 1e-3  # the agreement's tolerance on the similarity (relative); accuracy and compression must be equal

# The MLP benchmark's settings: the reference study's (pop 100, batch 100, 784-256-256-10
# on FashionMNIST) and a tiny synthetic one that runs in seconds (what the tests run).
MLP_TINY = SimpleNamespace(pop=8, batch=20, hidden=(16, 16), perplexity=5.0, generations=5, val_size=40,
                           scale_pops=(8,), wide_hidden=(64, 64), late=3)
MLP_REF = SimpleNamespace(pop=100, batch=100, hidden=(256, 256), perplexity=30.0, generations=100, val_size=5000,
                          scale_pops=(100, 300, 1000), wide_hidden=(1024, 1024), late=90)
# The CNN section's settings: cnn_weighting121 at the reference's pop and batch, or tiny.
CNN_REF = SimpleNamespace(pop=100, batch=100, generations=100, val_size=5000, perplexity=30.0)
CNN_TINY = SimpleNamespace(pop=8, batch=40, generations=4, val_size=40, perplexity=5.0)


# ----------------------------------------------------------------------------- devices and timing
def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str):
    """(wall seconds, fn()), the device synchronised before and after."""
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def summary(times) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "n": len(times)}


def ms(s: float) -> str:
    return f"{1e3 * s:9.1f} ms"


def spread(d: dict) -> str:
    return f"{ms(d['median_s'])}  (min {1e3 * d['min_s']:.1f}, max {1e3 * d['max_s']:.1f}, n={d['n']})"


def section_parser(prog: str, doc: str, tiny: str) -> argparse.ArgumentParser:
    """The options every generation benchmark takes: ``--reps``, ``--device``, ``--tiny``
    (``tiny``: what it runs on then) and ``--json``."""
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3, help="rounds (medians are reported)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument("--tiny", action="store_true", help=f"{tiny}: seconds")
    p.add_argument("--json", metavar="PATH", help="also write every number to this JSON file")
    return p


def resolve_device(arg: str) -> str:
    """'auto' -> 'cuda' if available, else 'cpu'; 'cuda' without a device: SystemExit with
    one line. On CUDA, TF32 is turned off so that the reference and the bounds run in full
    float32, as the evaluator does (``ecomp_deap.fitness.evaluator.full_float32``)."""
    if arg == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if arg == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if arg == "cuda":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    return arg


def maxrss_bytes() -> int:
    """This process's peak resident set size so far (``ru_maxrss``), in bytes."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # Linux reports KiB


# ----------------------------------------------------------------------------- runs
def read_inputs(model, data, validation=None) -> tuple[Parent, RunData]:
    """The parent read once and the data checked against it: what ``EcompRun`` takes. A
    timing does not depend on the parent's accuracy: a parent at chance on synthetic data
    is timed too."""
    parent = read_parent(model, data.train_x)
    return parent, check_data(parent, data, validation, allow_weak_parent=True)


class Generation:
    """One generation of ``run``'s loop (``LOOPS[config.selection]``, from ``state.t`` to
    ``state.t + 1``) with ``toolbox`` (default: the run's; ``reference.reference_toolbox``
    gives one whose ``evaluate`` is the per-network reference). The statistics are made
    once, as a run's loop makes them once."""

    def __init__(self, run: EcompRun, toolbox=None):
        self.run, self.toolbox = run, toolbox if toolbox is not None else run.toolbox
        self.loop = LOOPS[run.config.selection]
        self.stats = make_statistics()

    def __call__(self, state: EvolutionState) -> EvolutionState:
        run = self.run
        return self.loop(state, self.toolbox, run.config, self.stats, run.stream.n_batches, state.t + 1)


def fresh_state(run: EcompRun, base_pop, t0: int) -> EvolutionState:
    """Generation ``t0`` from clones of ``base_pop`` (every timed generation starts alike)."""
    return EvolutionState(t0, [run.toolbox.clone(ind) for ind in base_pop], tools.Logbook(), run.rng)


def prepared_run(cfg: EcompConfig, parent: Parent, data: RunData, generations: int = 1):
    """An ``EcompRun`` after ``generations`` generations (one: a warm-up; more: the first
    layer's sharing between individuals has faded): the run, its post-variation
    population and the index t0 of the generation that would follow."""
    run = EcompRun(cfg, parent, data, progress=False)
    state = run.initial_state()
    step = Generation(run)
    for _ in range(generations):
        step(state)
    return run, [run.toolbox.clone(ind) for ind in state.population], state.t


def prepared_section(preset: str, s, model, data, device: str):
    """A benchmark section's inputs: the parent read, ``preset`` at the settings ``s``
    (pop, batch, generations, val_size, perplexity), the run after one warm-up
    generation, its population, the next generation's index and that generation's batch.
    Returns (parent, config, run, population, t0, x, y)."""
    parent, run_data = read_inputs(model, data)
    cfg = preset_config(preset, pop_size=s.pop, batch_size=s.batch, generations=s.generations,
                        val_size=s.val_size, perplexity=s.perplexity, device=device)
    run, base_pop, t0 = prepared_run(cfg, parent, run_data)
    x, y = run.stream.batch(*divmod(t0, run.stream.n_batches))
    return parent, cfg, run, base_pop, t0, x, y


def time_steps(run: EcompRun, base_pop, t0: int, reps: int, device: str, step=None) -> list[float]:
    """Wall times of ``reps`` whole generations (``step``, default :class:`Generation` of
    the run), each from the same population and batch, the parent's references cleared
    first (a real generation sees a new batch: its parent side is computed once)."""
    step = step or Generation(run)
    times = []
    for _ in range(reps):
        state = fresh_state(run, base_pop, t0)
        run.evaluator.clear_cache()
        times.append(timed(lambda: step(state), device)[0])
    return times


def time_measure(measure, base_pop, x, y, reps: int, device: str, clear=None) -> list[float]:
    """Wall times of ``measure(base_pop, x, y)`` (``clear()`` before each, if given)."""
    times = []
    for _ in range(reps):
        if clear is not None:
            clear()
        times.append(timed(lambda: measure(base_pop, x, y), device)[0])
    return times


def measure_chunk(evaluator, batch: int) -> int:
    """Individuals per forward chunk when ``evaluator.measure`` measures one batch of
    ``batch`` images (as ``PopulationEvaluator.measure_blocks`` sizes it)."""
    rows = evaluator.similarity_rows(batch)
    return evaluator.chunk_size(batch, rows * rows * len(evaluator.embeddings))


# ----------------------------------------------------------------------------- MLP inputs
def synthetic_data(n_train: int, n_test: int, features: int = 784, classes: int = 10, seed: int = 0):
    """Random class-centred Gaussian rows (learnable, so the parent beats chance)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, features, generator=g)

    def draw(n):
        y = torch.arange(n) % classes
        return (centers[y] + torch.randn(n, features, generator=g)).to(torch.float32), y

    (xt, yt), (xs, ys) = draw(n_train), draw(n_test)
    return SimpleNamespace(train_x=xt, train_y=yt, test_x=xs, test_y=ys, fingerprint="synthetic", source="synthetic")


def load_inputs(tiny: bool, log):
    """(data, parent model, parent test accuracy) of the MLP benchmark: FashionMNIST and
    the cached (or trained) default 784-256-256-10 parent, or with ``tiny`` synthetic data
    and a quickly trained parent of :data:`MLP_TINY`'s hidden widths."""
    if tiny:
        s = MLP_TINY
        data = synthetic_data(s.generations * s.batch + s.val_size + 200, 200)
        model = train_parent(ParentSpec(hidden=s.hidden, epochs=2, batch_size=50), data.train_x, data.train_y,
                             progress=False)
        return data, model, accuracy(model, data.test_x, data.test_y)
    from ecomp_deap.data import default_cache_dir, load_fashion_mnist
    from ecomp_deap.nets.parents import load_or_train_parent

    data = load_fashion_mnist()
    info = load_or_train_parent(ParentSpec(), data, default_cache_dir(), progress=False, log=log)
    return data, info.model, info.test_accuracy


# ----------------------------------------------------------------------------- comparisons
def agreement(ours: Measures, ref: Measures) -> dict:
    """Reference vs ours on the same population and batch: accuracy and compression
    equal, similarity within :data:`SIM_RTOL` relative."""
    acc_equal = int(np.sum(ours.accuracy == ref.accuracy))
    comp_equal = int(np.sum(ours.compression == ref.compression))
    rel = np.abs(ours.similarity - ref.similarity) / np.maximum(np.abs(ref.similarity), 1e-12)
    n = len(ours)
    ok = acc_equal == n and comp_equal == n and float(rel.max()) <= SIM_RTOL
    return {"n": n, "accuracy_equal": acc_equal, "compression_equal": comp_equal,
            "similarity_max_rel_diff": float(rel.max()), "similarity_tolerance": SIM_RTOL, "passed": bool(ok)}


class FormTimer:
    """Per layer, ``self.forms``: a few formulations of the same computation, timed in
    rounds; a layer's time is the median of its fastest form."""

    forms: list[dict]
    device: str

    def warm_up(self) -> None:
        self.times = [{f: [] for f in forms} for forms in self.forms]
        with torch.inference_mode():
            for forms in self.forms:
                for fn in forms.values():
                    fn()

    def time(self, n: int = 3) -> None:
        with torch.inference_mode():
            for forms, times in zip(self.forms, self.times):
                for name, fn in forms.items():
                    times[name] += [timed(fn, self.device)[0] for _ in range(n)]

    def fastest(self, key: str) -> tuple[list[dict], float]:
        """Per layer {key: k, best, median_s, forms}, and the sum of the best medians."""
        layers = []
        for k, times in enumerate(self.times):
            med = {f: statistics.median(t) for f, t in times.items()}
            best = min(med, key=med.get)
            layers.append({key: k, "best": best, "median_s": med[best], "forms": med})
        return layers, sum(l["median_s"] for l in layers)


# ----------------------------------------------------------------------------- CNN section
def synthetic_images() -> SimpleNamespace:
    """What ``--tiny`` runs on: 600 noisy 1x12x12 images around 4 class centres, 400 to
    train and 200 to test."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 1, 12, 12, generator=g)
    y = torch.arange(600) % 4
    x = centers[y] + 0.8 * torch.randn(600, 1, 12, 12, generator=g)
    return SimpleNamespace(train_x=x[:400], train_y=y[:400], test_x=x[400:], test_y=y[400:],
                           fingerprint="synthetic", source="synthetic")


def load_cnn_inputs(tiny: bool, log):
    """(data, CNN parent model, its test accuracy): FashionMNIST and the cached default CNN,
    or synthetic 1x12x12 images and a quickly trained small CNN with ``tiny``."""
    from ecomp_deap.nets.parents import DEFAULT_CNN_CHANNELS, DEFAULT_CNN_EPOCHS, DEFAULT_CNN_HIDDEN

    if tiny:
        data = synthetic_images()
        spec = ParentSpec(arch="cnn", channels=(4, 6), hidden=(8,), in_features=144, n_classes=4, epochs=2,
                          batch_size=50)
        model = train_parent(spec, data.train_x, data.train_y, progress=False)
        return data, model, accuracy(model, data.test_x, data.test_y)
    from ecomp_deap.data import default_cache_dir, load_fashion_mnist
    from ecomp_deap.nets.parents import load_or_train_parent

    data = load_fashion_mnist()
    spec = ParentSpec(arch="cnn", channels=DEFAULT_CNN_CHANNELS, hidden=DEFAULT_CNN_HIDDEN, epochs=DEFAULT_CNN_EPOCHS)
    info = load_or_train_parent(spec, data, default_cache_dir(), progress=False, log=log)
    return data, info.model, info.test_accuracy


class ConvBound(FormTimer):
    """The dense convolution bound: the population's convolutions and Linear layers at the
    parent's width, nothing else (no BatchNorm, activations, pooling, masks or measures).
    Per stage the fastest of: one population-wide convolution (the first stage, whose
    input is shared), a grouped convolution with the population as groups, one
    convolution per individual, a ``baddbmm`` (Linear stages); the bound is the sum of the
    per-stage best medians."""

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
    """One weighted generation of ``cnn_weighting121`` on the default CNN parent (with
    ``tiny``: :data:`CNN_TINY` on a small synthetic CNN): ours (:class:`Generation`) vs
    the per-network reference (``reference.py``) vs :class:`ConvBound`, medians over
    ``reps`` rounds (each round measures each once), and the reference's measures checked
    against ours (:func:`agreement`). Logs its lines through ``log``; returns its numbers."""
    from reference import ReferenceEvaluator, reference_toolbox

    s = CNN_TINY if tiny else CNN_REF
    data, model, parent_acc = load_cnn_inputs(tiny, lambda m: log("  " + m))
    parent, cfg, run, base_pop, t0, x, y = prepared_section("cnn_weighting121", s, model, data, device)
    chain = run.net
    emb = chain.default_embeddings()
    log(f"CNN parent: {chain.describe()} (test accuracy {parent_acc:.4f}); pop {s.pop}, batch {s.batch}, "
        f"embeddings {'/'.join(emb)} (flattened C*H*W), perplexity {s.perplexity:g}")
    ref = ReferenceEvaluator(parent, emb, cfg.perplexity, device)
    run.evaluator.clear_cache()
    check = agreement(run.evaluator.measure(base_pop, x, y), ref.measure(base_pop, x, y))
    bound = ConvBound(chain, base_pop, x, device)
    ours_step, ref_step = Generation(run), Generation(run, reference_toolbox(run, ref))
    raw = {"ours": [], "reference": []}
    for _ in range(reps):  # rounds: load changes hit ours, the reference and the bound alike
        raw["ours"] += time_steps(run, base_pop, t0, 1, device, step=ours_step)
        raw["reference"] += time_steps(run, base_pop, t0, 1, device, step=ref_step)
        bound.time(3)
    ours, reference, b = summary(raw["ours"]), summary(raw["reference"]), bound.summary()
    kept = sum(sum(ind.hidden_units()) for ind in base_pop) / (len(base_pop) * sum(chain.hidden_widths))
    log(f"timed population (generation t={t0}): {len(base_pop)} individuals, mean {100 * kept:.0f}% of the "
        f"channels+units kept")
    log(f"ours: ea_weighted, one generation  {spread(ours)}")
    log(f"reference: per-network generation  {spread(reference)}")
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

