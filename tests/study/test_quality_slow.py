"""Slow: a reference-budget Pareto run on the real data beats pruning at matched size.

Run with `make test-slow` (CI runs it after `make test`)."""
import pytest

from ecomp_deap.data import make_splits
from ecomp_deap.search.run import run_ecomp
from ecomp_deap.study.comparison import front_at_size
from ecomp_deap.study.presets import preset_config
from ecomp_deap.study.pruning_baselines import baseline_curves


@pytest.mark.slow
def test_reference_pareto_run_beats_l1_pruning_at_half_size(fashion):
    from ecomp_deap.data import default_cache_dir
    from ecomp_deap.nets.parents import ParentSpec, load_or_train_parent

    parent = load_or_train_parent(ParentSpec(), fashion, default_cache_dir(), progress=False, log=lambda s: None)
    r = run_ecomp(preset_config("pareto121", device="cpu"), parent.model, fashion, progress=False,
                  parent_test_accuracy=parent.test_accuracy)
    best_at_half = front_at_size({"front": r.front}, 0.5)["test_accuracy"]  # chosen on validation accuracy
    subset = make_splits(fashion.train_y, 10000, 0, 0).subset
    l1 = baseline_curves(parent.model, [0.5], fashion.test_x, fashion.test_y, fashion.train_x[subset],
                         seeds=1, methods=("l1",))["l1"][0]["test_accuracy"]
    assert best_at_half >= l1 + 0.01, (best_at_half, l1)
    assert r.best["compression"] < 0.6
