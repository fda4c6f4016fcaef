# ecomp_deap: `make run` runs the main job, `make test` runs the tests.
# Both create .venv (Python 3.10+) and install what they need on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
OUT    ?= results
RUNS   ?= 2
# Where FashionMNIST is looked for (ecomp_deap/data.py uses the same default).
DATA_ROOT := $(or $(ECOMP_DATA_DIR),$(HOME)/.cache/ecomp_deap/data)
DEBIAN_DATA := /usr/share/datasets/fashion-mnist

# The study: every weighted and Pareto preset and the reference presets.
# RUNS defaults to 10 here (make study RUNS=3 for fewer). The cores are used as run.py
# does by default (threads per run, then parallel runs); WORKERS=N forces N local workers.
STUDY_RUNS := $(if $(filter file,$(origin RUNS)),10,$(RUNS))
WORKERS ?=
STUDY_ARGS ?=
WEIGHTINGS := 001 020 021 100 101 120 121
STUDY := $(addprefix weighting,$(WEIGHTINGS)) pareto101 pareto120 pareto121 $(addprefix ref-weighting,$(WEIGHTINGS))
STUDY_DIRS := $(addprefix $(OUT)/,$(STUDY))

# The size-budget study: the quality search within 12.5 / 25 / 50 % of the hidden units, with
# and without the similarity objective; the baselines at those sizes; every network fine-tuned (1 and 5
# epochs by default) with one recipe; one size table. Resumes, like make study.
BUDGETS := 12.5 25 50
QUALITY := $(foreach b,$(BUDGETS),quality$(b) quality$(b)_nosim)
QUALITY_DIRS := $(addprefix $(OUT)/,$(QUALITY))
QUALITY_SIZES := 0.125 0.25 0.5
FINETUNE_EPOCHS ?= 1 5

# The residual parent (ResNet-20-style, 16-32-64 channels) within 25 / 50 / 75 % of its multiply-adds, with and
# without the similarity objective, against Torch-Pruning's one-shot pruners at the same multiply-adds.
RESNET_MACS ?= 50
RESNET := $(foreach b,$(RESNET_MACS),resnet_macs$(b) resnet_macs$(b)_nosim)
RESNET_DIRS := $(addprefix $(OUT)/,$(RESNET))

# Compressing without labels: the labeled budget searches against their twins without labels
# (fidelity to the parent), with and without the similarity objective, on the MLP (<= 25 % of
# the units) and the CNN (<= 50 % of the channels and units); baselines; one comparison each.
UNLABELED_MLP := quality25 unlabeled25 unlabeled25_nosim
UNLABELED_CNN := cnn_quality50 cnn_unlabeled50 cnn_unlabeled50_nosim cnn_quality50_nosim

.PHONY: run test test-slow test-cuda data install bench quality quality-front unlabeled study cnn cnn-quality resnet clean help

help:
	@echo "make run        install, provision data, train/load the parent, run weighting121 vs pareto121 ($(RUNS) runs each),"
	@echo "                pruning baselines, compare, plot (OUT=$(OUT), RUNS=$(RUNS) can be changed: make run RUNS=10)"
	@echo "make test       install and run the test suite"
	@echo "make test-slow  the slow tests only (minutes; CI runs them after make test)"
	@echo "make test-cuda  on a machine with a CUDA GPU: the GPU path against the CPU's (skipped without one)"
	@echo "make bench      the speed benchmark"
	@echo "make quality    the size-budget study: quality12.5/25/50 with and without similarity ($(RUNS) runs each,"
	@echo "                RUNS=10 for docs/results.md's table), baselines, fine-tuning ($(FINETUNE_EPOCHS) epochs), one size table"
	@echo "make quality-front  the accuracy-at-size study of whole fronts: quality121 vs quality101"
	@echo "make unlabeled  labeled vs unlabeled budget searches, MLP at 25 % and CNN at 50 % (RUNS=5: docs/results.md's)"
	@echo "make cnn        the default CNN parent: cnn_weighting121 vs cnn_pareto121, CNN baselines, compare, plot"
	@echo "make cnn-quality  the CNN accuracy-at-size study: cnn_quality121 vs cnn_quality101 (RUNS=10: docs/results.md's)"
	@echo "make resnet     the residual parent within 50 % of its multiply-adds (RESNET_MACS='25 50 75' for all three),"
	@echo "                with and without similarity, against Torch-Pruning's pruners at the same multiply-adds"
	@echo "make study      every weighted, Pareto and ref-weighting preset (RUNS=10 by default, all CPUs),"
	@echo "                one comparison with the reference's published table, figures in OUT/plots/"
	@echo "                (STUDY_ARGS='--pop-size 8 --generations 3' passes options to run.py: a quick trial)"

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m ecomp_deap.fitness.similarity.native || echo "(no C compiler: the similarity runs in torch/numpy, about half as fast)"
	touch $(STAMP)

install: $(STAMP)

# The Debian/Ubuntu package is installed when apt is there and the data is missing;
# otherwise ecomp_deap falls back to torchvision's download.
data:
	@if [ ! -f "$(DATA_ROOT)/FashionMNIST/raw/train-images-idx3-ubyte" ] && [ ! -d "$(DEBIAN_DATA)" ] \
	    && command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "installing the Debian package dataset-fashion-mnist"; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null \
	    || echo "could not install dataset-fashion-mnist; torchvision's download will be tried"; \
	fi

run: $(STAMP) data
	$(BIN)/python experiments/run.py --name weighting121 pareto121 --runs $(RUNS) --out $(OUT) --overwrite
	$(BIN)/python experiments/baselines.py --out $(OUT) --overwrite
	$(BIN)/python experiments/compare.py $(OUT)/weighting121 $(OUT)/pareto121 --baselines $(OUT)/baselines
	$(BIN)/python plots/pareto.py $(OUT)/weighting121 $(OUT)/pareto121 $(OUT)/baselines
	$(BIN)/python plots/curves.py $(OUT)/weighting121 $(OUT)/pareto121
	$(BIN)/python plots/boxplots.py $(OUT)/weighting121 $(OUT)/pareto121
	$(BIN)/python plots/hypervolume.py $(OUT)/weighting121 $(OUT)/pareto121
	@echo "results: $(OUT)/weighting121 $(OUT)/pareto121; comparison: $(OUT)/comparison.md; plots: $(OUT)/weighting121/plots/"

# The test modules are spread over the cores (pytest-xdist), a module's tests together.
test: $(STAMP) data
	$(BIN)/python -m pytest -q -n auto --dist loadfile

test-slow: $(STAMP) data
	$(BIN)/python -m pytest -q -m slow

test-cuda: $(STAMP) data
	$(BIN)/python -m pytest -q -rs tests/fitness/test_cuda.py

bench: $(STAMP) data
	$(BIN)/python benchmarks/bench_generation.py --cnn
	$(BIN)/python benchmarks/bench_resnet.py

quality: $(STAMP) data
	$(BIN)/python experiments/run.py --name $(QUALITY) --runs $(RUNS) --out $(OUT) --resume --quiet
	$(BIN)/python experiments/baselines.py --out $(OUT) --overwrite --sizes 0.125 0.875 0.125 --refit 1000
	$(BIN)/python experiments/finetune.py $(QUALITY_DIRS) --baselines $(OUT)/baselines --epochs $(FINETUNE_EPOCHS) \
	    --sizes $(QUALITY_SIZES) --overwrite --quiet
	$(BIN)/python experiments/compare.py $(QUALITY_DIRS) --baselines $(OUT)/baselines --sizes $(QUALITY_SIZES) --out $(OUT)
	@echo "size table (before and after fine-tuning): $(OUT)/comparison.md"

# The accuracy-at-size study of whole fronts (minutes per run: docs/benchmarks.md).
quality-front: $(STAMP) data
	$(BIN)/python experiments/run.py --name quality121 quality101 --runs $(RUNS) --out $(OUT) --overwrite
	$(BIN)/python experiments/baselines.py --out $(OUT) --overwrite
	$(BIN)/python experiments/compare.py $(OUT)/quality121 $(OUT)/quality101 --baselines $(OUT)/baselines
	$(BIN)/python plots/pareto.py $(OUT)/quality121 $(OUT)/quality101 $(OUT)/baselines

unlabeled: $(STAMP) data
	$(BIN)/python experiments/run.py --name $(UNLABELED_MLP) --runs $(RUNS) --out $(OUT) --resume --quiet
	$(BIN)/python experiments/run.py --name $(UNLABELED_CNN) --runs $(RUNS) --out $(OUT) --resume --quiet
	$(BIN)/python experiments/baselines.py --out $(OUT) --overwrite --sizes 0.125 0.875 0.125 --refit 1000
	$(BIN)/python experiments/baselines.py --arch cnn --name cnn_baselines --out $(OUT) --overwrite
	$(BIN)/python experiments/compare.py $(addprefix $(OUT)/,$(UNLABELED_MLP)) --baselines $(OUT)/baselines \
	    --sizes 0.25 --out $(OUT)/unlabeled_mlp
	$(BIN)/python experiments/compare.py $(addprefix $(OUT)/,$(UNLABELED_CNN)) --baselines $(OUT)/cnn_baselines \
	    --sizes 0.5 --out $(OUT)/unlabeled_cnn
	@echo "comparisons: $(OUT)/unlabeled_mlp/comparison.md, $(OUT)/unlabeled_cnn/comparison.md"

# Channel compression of the default CNN parent (conv 16-32, linear 64-10), trained once and cached.
cnn: $(STAMP) data
	$(BIN)/python experiments/run.py --name cnn_weighting121 cnn_pareto121 --runs $(RUNS) --out $(OUT) --overwrite
	$(BIN)/python experiments/baselines.py --arch cnn --name cnn_baselines --out $(OUT) --overwrite
	$(BIN)/python experiments/compare.py $(OUT)/cnn_weighting121 $(OUT)/cnn_pareto121 --baselines $(OUT)/cnn_baselines
	$(BIN)/python plots/pareto.py $(OUT)/cnn_weighting121 $(OUT)/cnn_pareto121 $(OUT)/cnn_baselines
	$(BIN)/python plots/curves.py $(OUT)/cnn_weighting121 $(OUT)/cnn_pareto121

cnn-quality: $(STAMP) data
	$(BIN)/python experiments/run.py --name cnn_quality121 cnn_quality101 --runs $(RUNS) --out $(OUT) --overwrite
	$(BIN)/python experiments/baselines.py --arch cnn --name cnn_baselines --out $(OUT) --overwrite
	$(BIN)/python experiments/compare.py $(OUT)/cnn_quality121 $(OUT)/cnn_quality101 --baselines $(OUT)/cnn_baselines
	$(BIN)/python plots/pareto.py $(OUT)/cnn_quality121 $(OUT)/cnn_quality101 $(OUT)/cnn_baselines
resnet: $(STAMP) data
	$(BIN)/python experiments/run.py --name $(RESNET) --runs $(RUNS) --out $(OUT) --resume --quiet
	$(BIN)/python experiments/baselines.py --arch resnet --name resnet_baselines --out $(OUT) --overwrite \
	    --sizes 0.25 0.75 0.25 --norm-calibration 500
	$(BIN)/python experiments/compare.py $(RESNET_DIRS) --baselines $(OUT)/resnet_baselines --out $(OUT)
	$(BIN)/python plots/pareto.py $(RESNET_DIRS) $(OUT)/resnet_baselines
	@echo "comparison: $(OUT)/comparison.md; plots: $(OUT)/resnet_macs*/plots/"

# Resumes: finished runs are kept, so an interrupted study continues where it stopped.
study: $(STAMP) data
	$(BIN)/python experiments/run.py --name $(STUDY) --runs $(STUDY_RUNS) --out $(OUT) --resume --quiet \
	    $(if $(WORKERS),--executor local --workers $(WORKERS)) $(STUDY_ARGS)
	$(BIN)/python experiments/baselines.py --out $(OUT) --overwrite
	$(BIN)/python experiments/compare.py $(STUDY_DIRS) --baselines $(OUT)/baselines --against pareto121 --out $(OUT)
	$(BIN)/python plots/study.py $(STUDY_DIRS) --out $(OUT)/plots
	$(BIN)/python plots/pareto.py $(STUDY_DIRS) $(OUT)/baselines --out $(OUT)/plots
	$(BIN)/python plots/hypervolume.py $(addprefix $(OUT)/pareto,101 120 121) --out $(OUT)/plots
	@echo "comparison: $(OUT)/comparison.md; plots: $(OUT)/plots/"

clean:
	rm -rf $(VENV) .pytest_cache
