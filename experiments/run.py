"""Run an EComp experiment: N runs of a preset (or custom) configuration.

    python experiments/run.py --runs 10 --name weighting121
    python experiments/run.py --runs 10 --name weighting121 pareto121    # the weighted-vs-Pareto pair
    python experiments/run.py --name mine --weights 1 2 1 --selection nsga2 --pop-size 40
    python experiments/run.py --list-presets
    python experiments/run.py --runs 10 --name weighting121 pareto121 --executor local --workers 4
    python experiments/run.py --runs 10 --name weighting121 --executor dask --scheduler tls://HOST:8786
    python experiments/run.py --runs 10 --name cnn_weighting121 cnn_pareto121     # the default CNN parent
    python experiments/run.py --runs 10 --name quality25 quality25_nosim          # the best network with <= 25 % of the units
    python experiments/run.py --name pareto121 --max-size 0.25                    # any preset within a size budget
    python experiments/run.py --runs 10 --name unlabeled25 unlabeled25_nosim      # without labels (fidelity to the parent)
    python experiments/run.py --name quality25 --unlabeled --out OUT/unlabeled     # any preset without labels

Results go to OUT/NAME/run_K.json (+ run_K.pt, the chosen network) and
OUT/NAME/summary.{json,csv}; compare experiments with experiments/compare.py and
draw them with plots/*.py.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ecomp_deap.config import CROSSOVERS, DEVICES, INIT_SCORES, KERNELS, MUTATIONS, SELECTIONS
from ecomp_deap.errors import ConfigError
from ecomp_deap.study.cli import (
    HelpFormatter,
    OneLineParser,
    add_data_and_parent_arguments,
    finite_float,
    non_negative_int,
    positive_int,
    run_main,
)


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="run.py", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--name", nargs="+", metavar="NAME",
                   help="experiment name(s); a preset name applies its settings (see --list-presets). "
                        "Several names run one after the other with the same options")
    p.add_argument("--runs", type=positive_int, default=1, help="independent runs per experiment")
    p.add_argument("--seed", type=non_negative_int, default=0, help="base seed; run K uses seed 1000*SEED+K")
    p.add_argument("--out", default="results", help="results folder; each experiment writes OUT/NAME/")
    p.add_argument("--overwrite", action="store_true", help="replace existing results of the same name")
    p.add_argument("--resume", action="store_true",
                   help="skip finished runs and continue unfinished ones from their checkpoints (same options)")
    p.add_argument("--checkpoint-every", type=non_negative_int, default=25,
                   help="generations between checkpoints (0: only when interrupted by Ctrl-C / SIGTERM)")
    p.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    x = p.add_argument_group("where the runs execute (results are the same with every executor)")
    x.add_argument("--executor", choices=("serial", "local", "dask"),
                   help="serial: here, one run after the other (with checkpoints); local: a Dask LocalCluster "
                        "on this machine; dask: an existing Dask scheduler (--scheduler). On a cluster each run "
                        "is one task, checkpointed as here (a run whose worker dies resumes elsewhere). Default: every CPU "
                        "available; serial with 2 threads per run on up to 3 CPUs (faster there than runs side "
                        "by side), else a local cluster of runs with 2 threads each")
    x.add_argument("--threads", type=positive_int,
                   help="torch threads per run, with every executor (a run's last bits depend on it: results are "
                        "identical across executors for the same value; each run file records it). Default: "
                        "the CPUs left to each run (1 with --executor dask)")
    x.add_argument("--workers", type=positive_int,
                   help="local cluster: worker processes (default: one per 2 CPUs, at most one per run)")
    x.add_argument("--scheduler", metavar="ADDRESS",
                   help="--executor dask: the scheduler to connect to, e.g. tls://10.0.0.5:8786 (a plain tcp:// "
                        "address on another host needs --insecure-scheduler)")
    x.add_argument("--insecure-scheduler", action="store_true",
                   help="--scheduler: accept a plain tcp:// scheduler on another host (whoever reaches it can run "
                        "code on the workers and here: only on a network that only you can reach)")
    g = p.add_argument_group("evolution (override the preset)")
    g.add_argument("--weights", nargs=3, type=finite_float, metavar=("WA", "WS", "WC"),
                   help="objective weights: accuracy, similarity, compression (required for a non-preset name)")
    g.add_argument("--unlabeled", action="store_const", const="fidelity", dest="accuracy_objective",
                   help="compress without labels: the first objective is the fidelity (agreement with the parent's "
                        "top-1 predictions) and no training or validation label is read; the test labels only "
                        "report the test accuracy beside the test fidelity (unlabeled* presets: on)")
    g.add_argument("--selection", choices=SELECTIONS, help="weighted (softmax roulette) or nsga2 (Pareto)")
    g.add_argument("--pop-size", type=positive_int, help="population size (preset: 100; NSGA-II needs a multiple of 4)")
    g.add_argument("--generations", type=positive_int, help="generations = training batches per epoch (preset: 100)")
    g.add_argument("--epochs", type=positive_int, help="passes over the evolution subset (preset: 1)")
    g.add_argument("--batch-size", type=positive_int, help="images per generation batch (preset: 100)")
    g.add_argument("--mutation-rate", type=finite_float, help="probability per child of the weight mutation (preset: 0.01)")
    g.add_argument("--mutation", choices=MUTATIONS,
                   help="weights: a U(low, high) factor per weight (the reference); units: one factor per "
                        "hidden unit on its outgoing weights (preset: weights)")
    g.add_argument("--mutation-low", type=finite_float,
                   help="lower end of the weight mutation's U(low, high) factors (preset: 0.9)")
    g.add_argument("--mutation-high", type=finite_float,
                   help="upper end of the weight mutation's U(low, high) factors (preset: 1.1)")
    g.add_argument("--crossover", choices=CROSSOVERS,
                   help="layerwise: aligned one-point crossover (ours); reference: the reference study's "
                        "recombination, a child takes one parent's widths (preset: layerwise; ref-* presets: reference)")
    g.add_argument("--mask-flip-prob", type=finite_float, help="per-unit mask flip probability per child (preset: 0.002)")
    g.add_argument("--init-scores", choices=INIT_SCORES,
                   help="how the initial prunings rank units: l1 (incoming weight norm, the reference) or "
                        "activation (mean |activation| x outgoing weight norm on the evolution subset)")
    g.add_argument("--norm-calibration", type=non_negative_int, metavar="IMAGES",
                   help="adaptive BatchNorm: re-estimate every new individual's BatchNorm statistics for its kept "
                        "channels on this many images of the evolution subset (forward only; CNNs with BatchNorm; "
                        "preset: 0, off)")
    g.add_argument("--refit", type=non_negative_int, dest="refit_images", metavar="IMAGES",
                   help="before the final choice, refit every network's Linear layers after the first to the "
                        "parent's pre-activations on this many images of the evolution subset (closed-form ridge "
                        "least squares, no gradient; quality budget presets: 5000; others: 0, off)")
    g.add_argument("--refit-ridge", type=finite_float, metavar="LAMBDA",
                   help="the refit's ridge, relative to each layer's mean squared input (preset: 1e-4)")
    g.add_argument("--refit-children", action="store_true", default=None,
                   help="with --refit: refit every new network during the search too (Lamarckian), so selection "
                        "compares masks at their refitted accuracy")
    g.add_argument("--temperature", type=finite_float, dest="selection_temperature",
                   help="weighted mode: softmax temperature of the roulette (preset: 1, the reference)")
    g.add_argument("--elitism", type=non_negative_int, help="weighted mode: best individuals kept unchanged (preset: 0)")
    g.add_argument("--embedding-layers", nargs="+", metavar="LAYER",
                   help="layers entering the similarity loss (MLP presets: layer_1_act layer_2_act; CNN presets: "
                        "each hidden block's output; a feature map enters as its flattened C*H*W vector)")
    g.add_argument("--recombination-layers", nargs="+", metavar="LAYER",
                   help="Conv2d/Linear layers recombined and mutated (MLP presets: layer_1_linear layer_2_linear "
                        "output; CNN presets: all)")
    g.add_argument("--kernel", choices=KERNELS, help="child similarity kernel (preset: gaussian)")
    g.add_argument("--perplexity", type=finite_float, help="t-SNE perplexity (preset: 30)")
    g.add_argument("--similarity-dtype", choices=("float32", "float64"),
                   help="precision of the children's distances and perplexity search (preset: float32, about "
                        "twice as fast as float64; the parent's side is float64 either way)")
    g.add_argument("--similarity-batch", type=non_negative_int,
                   help="first images of each batch that enter the similarity loss (preset: 0 = the whole batch)")
    g.add_argument("--val-size", type=non_negative_int, help="validation images for final selection (preset: 5000)")
    g.add_argument("--max-macs", type=finite_float, metavar="F",
                   help="size budget in multiply-adds: every network keeps at most this fraction (0, 1] of the "
                        "parent's multiply-adds per example (Conv and Linear layers); the result is the most accurate "
                        "on validation within it")
    g.add_argument("--max-size", type=finite_float, metavar="F",
                   help="size budget: every network keeps at most this fraction (0, 1] of the parent's hidden units "
                        "(channels); the result is the most accurate on validation within it (quality* budget presets)")
    g.add_argument("--device", choices=DEVICES, help="cpu, cuda, or auto (cuda when available; preset: auto)")
    d = p.add_argument_group("data and parent")
    add_data_and_parent_arguments(d)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return p


OVERRIDES = ("weights", "accuracy_objective", "selection", "crossover", "pop_size", "generations", "epochs", "batch_size", "mutation_rate",
             "mutation", "mutation_low", "mutation_high",
             "mask_flip_prob", "selection_temperature", "elitism", "kernel", "perplexity", "val_size", "device",
             "embedding_layers", "recombination_layers", "similarity_batch", "init_scores", "norm_calibration",
             "similarity_dtype", "max_size", "max_macs", "refit_images", "refit_ridge",
             "refit_children")


def experiment_configs(args):
    from ecomp_deap.config import EcompConfig
    from ecomp_deap.study.presets import PRESETS, preset_config

    overrides = {k: getattr(args, k) for k in OVERRIDES}
    configs = {}
    for name in args.name:
        if name in PRESETS:
            cfg = preset_config(name, **overrides)
        elif args.weights is not None:
            cfg = EcompConfig(**{k: v for k, v in overrides.items() if v is not None})
        else:
            raise ConfigError(f"unknown preset {name!r} and no --weights given; known presets: {', '.join(PRESETS)}")
        configs[name] = cfg.validate()
    return configs


def main(argv) -> int:
    args = build_parser().parse_args(argv)
    if args.list_presets:
        from ecomp_deap.study.presets import describe_presets

        print(describe_presets())
        return 0
    if not args.name:
        raise ConfigError("give --name NAME (a preset, or any name with --weights); see --list-presets")
    if len(set(args.name)) != len(args.name):
        raise ConfigError("each --name may appear once")
    if args.workers is not None and args.executor not in (None, "local"):
        raise ConfigError("--workers goes with --executor local")
    if args.trust_parent_file and not args.parent:
        raise ConfigError("--trust-parent-file goes with --parent PATH")
    if args.scheduler is not None and args.executor != "dask":
        raise ConfigError("--scheduler goes with --executor dask")
    if args.executor == "dask" and not args.scheduler:
        raise ConfigError("--executor dask needs --scheduler ADDRESS (e.g. tcp://HOST:8786)")
    if args.insecure_scheduler and not args.scheduler:
        raise ConfigError("--insecure-scheduler goes with --scheduler ADDRESS")
    if args.scheduler:
        from ecomp_deap.study.executors import check_scheduler

        check_scheduler(args.scheduler, args.insecure_scheduler)  # before any work
    configs = experiment_configs(args)

    from ecomp_deap.study.experiment import Experiment, check_output_folder

    out = Path(args.out)
    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    from ecomp_deap.study.executors import dask_client, plan_cores

    plan = plan_cores(args.runs * len(configs), executor=args.executor, workers=args.workers, threads=args.threads)
    experiments = [Experiment(name, cfg, args.runs, args.seed, out, args.checkpoint_every, plan.threads)
                   for name, cfg in configs.items()]
    for exp in experiments:  # refuse before any work
        check_output_folder(exp.folder, args.overwrite, args.resume)
    print(f"cores: {plan.describe()}")
    if plan.executor == "serial":
        return run_all(args, argv, experiments, plan)
    # connect (or start the local cluster) before any work: an unreachable scheduler fails fast
    with dask_client(plan.executor, plan.workers, args.scheduler, args.insecure_scheduler) as client:
        return run_all(args, argv, experiments, plan, client)


def run_all(args, argv, experiments, plan, client=None) -> int:
    """Data and parent, read and checked once; then every run through the one runner,
    here or on the cluster."""
    from ecomp_deap.data import load_fashion_mnist
    from ecomp_deap.study.cli import fit_layers, load_parent
    from ecomp_deap.study.executors import ClusterExecutor, DataSpec
    from ecomp_deap.study.presets import preset_arch
    from ecomp_deap.study.runner import RunInterrupted, SerialExecutor, run_experiments

    data = load_fashion_mnist(args.data_dir, allow_download=not args.no_download)
    print(f"data: FashionMNIST ({data.source}), {len(data.train_x)} train / {len(data.test_x)} test images")
    for exp in experiments:
        exp.config.validate_data(len(data.train_y))
    parent, checked, parent_acc = load_parent(args, data, [preset_arch(exp.name) for exp in experiments],
                                              progress=not args.quiet)
    net = parent.net
    print(f"parent: {net.describe()}; {sum(net.hidden_widths)} {net.group_kind} to compress")
    explicit = {k for k in ("embedding_layers", "recombination_layers") if getattr(args, k) is not None}
    for exp in experiments:  # layer names the parent does not have: its own defaults (unless given)
        exp.config = fit_layers(exp.config, net, explicit)
        exp.config.validate_for(net)
    if client is None:
        executor = SerialExecutor(progress=not args.quiet)
    else:
        workers = client.scheduler_info().get("workers", {})
        threads = sum(w.get("nthreads", 0) for w in workers.values())
        where = "local cluster" if plan.executor == "local" else f"scheduler {args.scheduler}"
        print(f"executor: {plan.executor} ({where}, {len(workers)} worker(s), {threads} thread(s))")
        spec = DataSpec(args.data_dir, allow_download=not args.no_download, fingerprint=data.fingerprint)
        executor = ClusterExecutor(client, spec)
    for exp in experiments:
        print(describe(exp))
    t0 = time.perf_counter()
    try:
        report = run_experiments(experiments, parent, checked, executor, parent_acc, overwrite=args.overwrite,
                                 resume=args.resume, log=print, details=args.debug)
    except RunInterrupted as e:
        again = " ".join(a for a in argv if a != "--overwrite")
        print(f"{e}\nresume with: python experiments/run.py {again} --resume", file=sys.stderr)
        return 128 + e.signum
    done = len(report.written)
    print(f"== {done} of {report.total} run(s) done in {time.perf_counter() - t0:.1f} s"
          + (f", {len(report.skipped)} skipped (finished before)" if report.skipped else "")
          + f"; results in {', '.join(str(e.folder) for e in experiments)}")
    if report.failures:
        print(f"error: {len(report.failures)} run(s) failed: "
              + ", ".join(f"{f.name} run {f.run + 1}" for f in report.failures)
              + "; rerun the same command with --resume to retry them (each from its last checkpoint)",
              file=sys.stderr)
        return 1
    return 0


def describe(exp) -> str:
    budget = f", at most {exp.config.describe_budget()}" if exp.config.has_budget else ""
    return (f"== {exp.name}: {exp.runs} run(s), {exp.config.selection} over {', '.join(exp.config.objective_names)}, "
            f"weights {list(exp.config.weights)}, "
            f"pop {exp.config.pop_size}, {exp.config.epochs} x {exp.config.generations} generations{budget} -> {exp.folder}")


if __name__ == "__main__":
    run_main(main)
