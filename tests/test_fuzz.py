"""Issue #30: a fuzz test of the API (``compress``, ``EcompConfig``) and the command line
(``experiments/run.py``, ``experiments/compare.py``). Several hundred bad inputs, drawn
from a fixed seed: wrong shapes and dtypes, NaN/inf, empty sets, mismatched lengths,
wrong types and out-of-range values for every ``EcompConfig`` field and every numeric
option, bogus paths and unreadable files. Each must be answered by the toolkit's own
one-line error (a :class:`~ecomp_deap.errors.UserError`; exit code 2 on the command
line) that names what is wrong, with no traceback and nothing written."""
from __future__ import annotations

import importlib.util
import io
import math
import os
import random
import re
import string
import zipfile
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import fields
from pathlib import Path

import torch
from conftest import REPO
from torch import nn

import ecomp_deap
from ecomp_deap import config as C
from ecomp_deap import data as D
from ecomp_deap.config import EcompConfig
from ecomp_deap.errors import UserError
from ecomp_deap.nets import parents
from ecomp_deap.nets.parents import build_mlp
from ecomp_deap.study import cli, runner

SEED = 30  # the number: every case below is drawn from it
API_CASES_AT_LEAST = 300
CLI_CASES_AT_LEAST = 150

REAL_LOADER = D.load_fashion_mnist  # the command-line test replaces it for the cases past the data
CFG = EcompConfig(selection="nsga2", weights=(1, 1, 1), embedding_layers=None, recombination_layers=None,
                  pop_size=8, generations=4, batch_size=50, perplexity=5.0, val_size=0, device="cpu")


def word(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_letters) for _ in range(rng.randint(1, 8)))


def snapshot(folder: Path) -> dict:
    """Every path under ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*")}


# ------------------------------------------------------------------------------ the API
def wrong_types(rng, field_kind: str) -> list:
    """Values of the wrong type for a setting of ``field_kind``."""
    common = [None, word(rng), [rng.randint(1, 9)], {"value": 1}]
    if field_kind == "whole":
        return common + [rng.uniform(0.1, 99.9), True, str(rng.randint(1, 99)), float(rng.randint(2, 9))]
    if field_kind == "number":
        return common + [True, str(rng.uniform(0, 1))]
    if field_kind == "flag":
        return [None, "yes", rng.randint(0, 1), 0.0, []]
    return [None, rng.randint(0, 9), word(rng).upper(), [word(rng)]]  # a choice


def out_of_range(rng, name: str) -> list:
    """Values of the right type outside what ``name`` allows with :data:`CFG`'s other settings
    (and the 1200 training / 300 validation images of ``tiny_data``)."""
    neg_int, neg = rng.randint(-10**9, -1), -rng.uniform(1e-9, 1e6)
    non_finite = [math.nan, math.inf, -math.inf]
    above_one = rng.uniform(1.000001, 1e6)
    return {
        "pop_size": [neg_int, 0, 1, rng.choice([5, 6, 7, 9, 10, 14])],  # NSGA-II: multiples of 4
        "generations": [neg_int, 0, rng.randint(10**4, 10**7)],  # more batches than the training images
        "epochs": [neg_int, 0],
        "batch_size": [neg_int, 0, rng.randint(1, 5), rng.randint(10**4, 10**6)],  # <= perplexity; too large
        "similarity_batch": [neg_int, rng.randint(51, 10**6), rng.randint(1, 5)],  # > batch; <= perplexity
        "norm_calibration": [neg_int, rng.randint(201, 10**6)],  # > the 4 x 50 evolution subset
        "refit_images": [neg_int, 1, rng.randint(201, 10**6)],
        "elitism": [neg_int, 8, rng.randint(9, 10**6)],  # >= pop_size
        "val_size": [neg_int, rng.randint(1, 5)],  # <= perplexity (the val data given, val_size holds out none)
        "seed": [neg_int, 2**63, rng.randint(2**63, 2**80)],
        "eval_chunk": [neg_int],
        "mutation_rate": [neg, above_one, *non_finite],
        "mask_flip_prob": [neg, above_one, *non_finite],
        "cx_prob": [neg, above_one, *non_finite],
        "mutation_low": [0.0, neg, rng.uniform(1.11, 1e6), *non_finite],  # high is 1.1
        "mutation_high": [rng.uniform(-1e6, 0.89), *non_finite],  # low is 0.9
        "perplexity": [0.0, neg, rng.uniform(50, 1e6), *non_finite],  # >= the batch of 50
        "init_prune_low": [neg, rng.uniform(0.8, 1e6), *non_finite],  # high is 0.8
        "init_prune_high": [rng.uniform(-1e6, 0.1), above_one, *non_finite],  # low is 0.1
        "refit_ridge": [0.0, neg, *non_finite],
        "selection_temperature": [0.0, neg, *non_finite],
        "weights": [(1.0, 2.0), (1, 1, 1, 1), (math.nan, 1, 1), (1, math.inf, 1), (-rng.uniform(0.1, 9), 1, 1),
                    (0, 0, 0), ("1", "2", "1"), (True, 1, 1), 5, "121", None, [[1], 1, 1]],
        "embedding_layers": ["layer_1_act", [word(rng)], [1], 5, [None], {"layer_1_act": 1}],
        "recombination_layers": ["output", [word(rng)], [1.5], 5, [None], ("layer_1_linear", 2)],
        "max_size": [0.0, neg, above_one, rng.uniform(1e-9, 0.05), "0.5", True, [0.5], *non_finite],
        "max_macs": [0.0, neg, above_one, "0.5", True, [0.5], *non_finite],
        "device": ["gpu", "CPU", "cuda:0", ""] + ([] if torch.cuda.is_available() else ["cuda"]),
    }.get(name, [])


def field_kind(name: str) -> str:
    if name in C.WHOLE_NUMBERS:
        return "whole"
    if name in C.NUMBERS:
        return "number"
    if name in C.FLAGS:
        return "flag"
    if name in C.CHOICES:
        return "choice"
    return "other"  # weights, the layer lists, max_size, max_macs: their own cases only


# What a setting's message must name: its field, or the words a check across settings uses.
ALSO_NAMED_AS = {"mutation_low": "mutation factors", "mutation_high": "mutation factors",
                 "init_prune_low": "initial pruning rates", "init_prune_high": "initial pruning rates",
                 "embedding_layers": "embedding layer", "recombination_layers": "recombination layer",
                 "batch_size": "batch size|perplexity", "similarity_batch": "similarity batch|perplexity"}


def config_cases(rng):
    for f in fields(EcompConfig):
        kind = field_kind(f.name)
        bad = (wrong_types(rng, kind) if kind != "other" else []) + out_of_range(rng, f.name)
        assert bad, f"no bad values for {f.name}: add them to out_of_range"
        for value in bad:
            yield f"config {f.name}={value!r}", f.name, value


def bad_data(rng, tiny):
    """(label, set name, the set) with one thing wrong; the other sets are good."""
    x, y = tiny.test_x, tiny.test_y
    n, d = x.shape

    def at(t, value):
        t = t.clone()
        t[rng.randrange(len(t)), rng.randrange(t.shape[1])] = value
        return t

    with_label = y.clone()
    with_label[rng.randrange(n)] = rng.choice([rng.randint(4, 10**6), -rng.randint(1, 10**6)])
    for which in ("train", "val", "test"):
        cases = {
            "nan input": (at(x, math.nan), y), "inf input": (at(x, math.inf), y), "-inf input": (at(x, -math.inf), y),
            "too few features": (x[:, :rng.randint(1, d - 1)], y),
            "too many features": (torch.cat([x, x[:, :rng.randint(1, d)]], 1), y),
            "3-d inputs of the wrong size": (torch.randn(n, 3, rng.randint(2, 9)), y),
            "0-d inputs": (torch.tensor(1.0), y), "1-d inputs": (x[:, 0], y),
            "empty": (x[:0], y[:0]), "fewer labels": (x, y[:rng.randint(0, n - 1)]),
            "more labels": (x[:rng.randint(1, n - 1)], y),
            "labels out of range": (x, with_label), "fractional labels": (x, y.double() + rng.uniform(0.01, 0.99)),
            "nan label": (x, at(y.double()[:, None], math.nan)[:, 0]), "2-d labels": (x, y[:, None]),
            "one-hot labels": (x, nn.functional.one_hot(y, 4)), "bool labels": (x, y > 1),
            "complex inputs": (x.to(torch.complex64), y), "sparse inputs": (x.to_sparse(), y),
            "meta inputs": (torch.empty(n, d, device="meta"), y),
            "numpy arrays": (x.numpy(), y.numpy()), "a string": word(rng), "a number": rng.randint(0, 9),
            "a triple": (x, y, y), "labels alone": (y,), "a dict": {"x": x, "y": y},
            "an empty loader": [], "a loader of misfit batches": [(x[:10], y[:10]), (x[:10, :3], y[:10])],
            "a loader of non-tensors": [(x[:10].tolist(), y[:10].tolist())],
        }
        if which == "train":
            cases["no training data"] = None
        for label, given in cases.items():
            yield f"{which} data: {label}", which, given


def bad_models(folder: Path, rng, parent):
    """(label, the model argument): bogus paths, unreadable files, unusable networks."""
    folder.mkdir()
    saved = folder / "parent.pt"
    torch.save(parent.state_dict(), saved)
    blob = saved.read_bytes()
    files = {
        "empty.pt": b"", "random.pt": rng.randbytes(rng.randint(1, 4096)), "text.pt": b"not a network\n",
        "json.pt": b'{"state_dict": {}}', "truncated.pt": blob[:len(blob) // 2],
        "bitflip.pt": blob[:len(blob) // 2] + bytes([blob[len(blob) // 2] ^ 0xFF]) + blob[len(blob) // 2 + 1:],
    }
    for name, content in files.items():
        (folder / name).write_bytes(content)
    with zipfile.ZipFile(folder / "zip.pt", "w") as z:
        z.writestr("data.pkl", b"garbage")
    torch.save({"weights": [1, 2, 3]}, folder / "plain-data.pt")
    torch.save({"0.weight": torch.zeros(3)}, folder / "1d-weight.pt")
    (folder / "a-folder.pt").mkdir()
    (folder / "dangling.pt").symlink_to(folder / "nowhere.pt")
    nan_parent = build_mlp((6,), in_features=20, n_classes=4)
    with torch.no_grad():
        nan_parent.layer_1_linear.weight[rng.randrange(6), rng.randrange(20)] = math.nan
    cases = {f"file {n}": str(folder / n) for n in [*files, "zip.pt", "plain-data.pt", "1d-weight.pt", "a-folder.pt",
                                                    "dangling.pt"]}
    cases.update({
        "a missing file": str(folder / f"{word(rng)}.pt"), "a path through a file": str(saved / "parent.pt"),
        "a Path to a folder": folder, "None": None, "a number": rng.randint(0, 9), "bytes": b"parent.pt",
        "a state dict": parent.state_dict(), "a Linear": nn.Linear(20, 4), "an empty Sequential": nn.Sequential(),
        "an LSTM": nn.Sequential(nn.LSTM(20, 4)), "no hidden layer": nn.Sequential(nn.Linear(20, 4)),
        "the wrong input width": build_mlp((6,), in_features=rng.randint(21, 99), n_classes=4),
        "a NaN weight": nan_parent,
    })
    if os.geteuid() != 0:  # root reads any file
        (folder / "unreadable.pt").write_bytes(blob)
        (folder / "unreadable.pt").chmod(0)
        cases["file unreadable.pt"] = str(folder / "unreadable.pt")
    return cases


def report(name: str, answers: list[tuple[str, str]]) -> None:
    """With ECOMP_FUZZ_REPORT=FOLDER: every case and the answer it got, one per line, into FOLDER/NAME.tsv."""
    folder = os.environ.get("ECOMP_FUZZ_REPORT")
    if folder:
        Path(folder, f"{name}.tsv").write_text("".join(f"{label}\t{answer}\n" for label, answer in answers))


def one_line_user_error(call, pattern: str) -> tuple[str | None, str]:
    """(None, the message) when ``call()`` raises a one-line UserError matching ``pattern``;
    else (what went wrong, the message)."""
    try:
        call()
    except UserError as e:
        msg = str(e)
        if "\n" in msg or not msg.strip():
            return f"not one line: {msg!r}", msg
        if not re.search(pattern, msg, re.IGNORECASE):
            return f"the message does not name it ({pattern!r}): {msg}", msg
        return None, msg
    except Exception as e:  # noqa: BLE001 - what the test is looking for
        return f"{type(e).__name__} instead of a user error: {str(e)[:300]}", ""
    return "accepted", ""


def test_fuzz_the_api(tmp_path, monkeypatch, tiny_data, tiny_parent):
    rng = random.Random(SEED)
    inputs = tmp_path / "inputs"
    models = bad_models(inputs, rng, tiny_parent)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = snapshot(inputs)
    good = {"train": (tiny_data.train_x, tiny_data.train_y), "val": (tiny_data.test_x, tiny_data.test_y),
            "test": (tiny_data.test_x[:100], tiny_data.test_y[:100])}

    def compress(model=tiny_parent, config=CFG, **kw):
        return lambda: ecomp_deap.compress(model, **{**good, **kw}, config=config, progress=False)

    cases = []  # (label, call, what its message must name)
    for label, name, value in config_cases(rng):
        def call(name=name, value=value):
            config = EcompConfig(**{**CFG.to_dict(), name: value})
            ecomp_deap.compress(tiny_parent, **good, config=config, progress=False)

        cases.append((label, call, f"{name}|{ALSO_NAMED_AS[name]}" if name in ALSO_NAMED_AS else name))
    for label, which, given in bad_data(rng, tiny_data):
        cases.append((label, compress(**{which: given}), f"^{which} data"))
    for label, model in models.items():
        named = "model|parent" + (f"|{re.escape(str(model))}" if isinstance(model, (str, Path)) else "")
        cases.append((f"model: {label}", compress(model=model), named))
    for value in (0, -rng.uniform(0, 9), rng.uniform(1.01, 9), math.nan, math.inf, "0.25", True, [0.5], 1e-6):
        cases.append((f"max_size={value!r}", compress(max_size=value), "max_size"))
    for value in (0, -rng.uniform(0, 9), rng.uniform(1.01, 9), math.nan, "0.25", True, [0.5]):
        cases.append((f"max_macs={value!r}", compress(max_macs=value), "max_macs"))
    for value in ("nsga2", CFG.to_dict(), [CFG], rng.randint(0, 9)):
        cases.append((f"config={value!r}"[:80], compress(config=value), "config must be an EcompConfig"))

    failures, answers = [], []
    for label, call, named in cases:
        problem, answer = one_line_user_error(call, named)
        answers.append((label, answer))
        if problem:
            failures.append(f"{label}: {problem}")
    report("api", answers)
    assert not failures, f"{len(failures)} of {len(cases)} bad inputs:\n" + "\n".join(failures)
    assert len(cases) >= API_CASES_AT_LEAST, len(cases)
    assert snapshot(inputs) == before and not any(work.iterdir()), "something was written"


def test_every_setting_has_its_type_checked_and_fuzzed():
    rng = random.Random(SEED)
    for f in fields(EcompConfig):
        assert field_kind(f.name) != "other" or out_of_range(rng, f.name), f"{f.name}: no type check, no fuzz cases"


# ------------------------------------------------------------------------------ the command line
def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"fuzz_{name}", REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bad_option_values(rng, parser) -> list[tuple[str, list[str], str]]:
    """For every option of ``parser`` taking a number or a choice: values it must refuse."""
    cases = []
    for action in parser._actions:
        if not action.option_strings or action.nargs == 0:
            continue
        option = action.option_strings[-1]
        bad = []
        if action.type in (cli.positive_int, cli.non_negative_int):
            bad = [word(rng), "", "nan", "inf", "1e999", str(rng.uniform(0.1, 99)), str(-rng.randint(1, 10**9))]
            bad += ["0"] if action.type is cli.positive_int else []
        elif action.type is cli.finite_float:
            bad = [word(rng), "", "nan", "inf", "-inf", "1e999", "0x1p3"]
        elif action.choices:
            bad = [word(rng), str(next(iter(action.choices))).upper()]
        n = action.nargs if isinstance(action.nargs, int) else 1
        for value in bad:
            cases.append((f"{option} {value!r}", [option, *[value] * n], f"argument {re.escape(option)}"))
        if isinstance(action.nargs, int) and action.nargs > 1:
            cases.append((f"{option} with too few values", [option, "1"], f"argument {re.escape(option)}"))
        if action.nargs in (None, "+") or isinstance(action.nargs, int):
            cases.append((f"{option} without its value", [option], f"argument {re.escape(option)}"))
    return cases


def fake_fashion_mnist(*_args, **_kwargs):
    """FashionMNIST's shapes, random images: for the cases that get past the data."""
    g = torch.Generator().manual_seed(SEED)
    return D.FashionMNISTData(torch.rand(600, 1, 28, 28, generator=g), torch.arange(600) % 10,
                              torch.rand(200, 1, 28, 28, generator=g), torch.arange(200) % 10, source="fake")


def accepted(what: str):
    def stop(*_args, **_kwargs):
        raise AssertionError(f"accepted: {what}")

    return stop


def test_fuzz_the_command_line(tmp_path, monkeypatch, tiny_parent):
    rng = random.Random(SEED)
    run_py, compare_py = load_script("run"), load_script("compare")
    inputs = tmp_path / "inputs"
    models = bad_models(inputs, rng, tiny_parent)
    (inputs / "a-file").write_text("not a folder\n")
    torch.save(build_mlp((8, 6)).state_dict(), inputs / "fitting.pt")  # FashionMNIST's 784 inputs, 10 classes
    empty_raw = D.raw_dir(inputs / "empty-data")
    empty_raw.mkdir(parents=True)
    for name in D.RAW_FILES:
        (empty_raw / name).write_bytes(b"")
    damaged = inputs / "results" / "damaged"
    damaged.mkdir(parents=True)
    (damaged / "run_0.json").write_text('{"config": {"weights": [1, 2')
    (inputs / "results" / "empty").mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    # nothing long may start, whatever a case gets past: no data read, no parent trained, no run
    monkeypatch.setattr(D, "load_fashion_mnist", fake_fashion_mnist)
    monkeypatch.setattr(D, "DEBIAN_DIR", inputs / "no-debian-package")
    monkeypatch.setattr(parents, "load_or_train_parent", accepted("a parent would be trained"))
    monkeypatch.setattr(runner, "run_experiments", accepted("the runs would start"))
    before = snapshot(inputs)
    out, cache = work / "out", inputs / "cache"
    base = ["--out", str(out), "--cache-dir", str(cache), "--no-download", "--quiet", "--device", "cpu",
            "--executor", "serial", "--data-dir", str(inputs / "no-data")]  # later options win over these
    preset = ["--name", "weighting121"]
    small = ["--pop-size", "8", "--generations", "3", "--batch-size", "50", "--val-size", "100"]
    fitting_parent = ["--parent", str(inputs / "fitting.pt"), "--allow-weak-parent"]  # random images: at chance

    cases = [(f"run.py {label}", run_py, [*base, *preset, *argv], named)
             for label, argv, named in bad_option_values(rng, run_py.build_parser())]
    settings = [  # values argparse takes that the settings refuse
        (["--mutation-rate", str(rng.uniform(1.01, 9))], "mutation_rate"),
        (["--mask-flip-prob", str(-rng.uniform(0.01, 9))], "mask_flip_prob"),
        (["--perplexity", "0"], "perplexity"), (["--perplexity", str(rng.uniform(100, 1e4))], "perplexity"),
        (["--mutation-low", "2", "--mutation-high", "1"], "mutation factors"),
        (["--mutation-low", "0"], "mutation factors"), (["--temperature", "0"], "selection_temperature"),
        (["--temperature", str(-rng.uniform(0.1, 9))], "selection_temperature"),
        (["--elitism", str(rng.randint(100, 10**6))], "elitism"),
        (["--similarity-batch", str(rng.randint(101, 10**6))], "similarity_batch"),
        (["--max-size", "0"], "max_size"), (["--max-size", str(rng.uniform(1.01, 9))], "max_size"),
        (["--max-size", str(-rng.uniform(0.01, 9))], "max_size"), (["--refit", "1"], "refit_images"),
        (["--refit-ridge", "0"], "refit_ridge"), (["--refit-ridge", str(-rng.uniform(0.01, 9))], "refit_ridge"),
        (["--selection", "nsga2", "--pop-size", str(rng.choice([5, 6, 7, 9, 10]))], "pop_size"),
        (["--val-size", str(rng.randint(1, 30)), "--selection", "nsga2"], "val_size"),
        (["--weights", "0", "0", "0"], "weights"), (["--weights", "-1", "1", "1"], "weights"),
        ([*small, *fitting_parent, "--embedding-layers", word(rng)], "embedding layer"),
        ([*small, *fitting_parent, "--recombination-layers", word(rng)], "recombination layer"),
        (["--generations", str(rng.randint(10**3, 10**5))], "generations"),
    ]
    usage = [  # options that do not go together, names, executors, parents
        ([*preset, "--resume", "--overwrite"], "--resume and --overwrite"),
        (["--name", word(rng) + "_x"], "unknown preset"), ([*preset, "weighting121"], "once"),
        ([], "--name"), ([*preset, "--workers", "2"], "--workers"),
        ([*preset, "--scheduler", "tls://127.0.0.1:8786"], "--scheduler"),
        ([*preset, "--executor", "dask"], "--scheduler"), ([*preset, "--insecure-scheduler"], "--insecure-scheduler"),
        ([*preset, "--executor", "dask", "--scheduler", f"tcp://10.{rng.randint(0, 255)}.0.5:8786"],
         "insecure-scheduler"),
        ([*preset, "--trust-parent-file"], "--trust-parent-file"),
        ([*preset, *small, "--arch", "cnn"], "cnn"), (["--name", "cnn_weighting121", *small, "--arch", "mlp"], "mlp"),
        ([*preset, *small, "--channels", "4"], "--channels"),
        ([*preset, "--" + word(rng).lower()], "unrecognized arguments|ambiguous option"),  # a prefix of two
    ]
    paths = [  # folders and files that are not what they should be
        ([*preset, "--out", str(inputs / "a-file")], "not a folder"),
        ([*preset, "--out", str(inputs / "a-file" / "sub")], "not a folder"),
        (["--out", str(damaged.parent), "--name", "damaged", "--weights", "1", "2", "1"], "already holds results"),
        ([*preset, "--data-dir", str(inputs / "no-data")], "FashionMNIST is not available"),
        ([*preset, "--data-dir", str(inputs / "a-file")], "FashionMNIST|a-file"),
        ([*preset, "--data-dir", str(inputs / "empty-data")], "FashionMNIST|idx"),
    ]
    paths += [([*preset, *small, "--parent", model], f"parent|{re.escape(model)}")
              for model in models.values() if isinstance(model, str)]
    cases += [(f"run.py {' '.join(argv)}", run_py, [*base, *preset, *argv], named) for argv, named in settings]
    cases += [(f"run.py {' '.join(argv)}", run_py, [*base, *argv], named) for argv, named in usage + paths]
    for label, argv, named in [
            ("a missing folder", [damaged.parent / word(rng)], "no such"),
            ("a file", [inputs / "a-file"], "no such|not a folder"), ("an empty folder", [damaged.parent / "empty"], "no run|empty|no such"),
            ("a damaged result", [damaged], "run_0.json"), ("--sizes nan", [damaged, "--sizes", "nan"], "--sizes")]:
        cases.append((f"compare.py {label}", compare_py, [str(a) for a in argv] + ["--out", str(out)], named))

    data_cases = {"no-data", "a-file", "empty-data"}
    failures, answers = [], []
    for label, script, argv, named in cases:
        with monkeypatch.context() as m:
            if any(argv[i] == "--data-dir" and Path(argv[i + 1]).name in data_cases for i in range(len(base), len(argv) - 1)):
                m.setattr(D, "load_fashion_mnist", REAL_LOADER)  # the data folder is the case: read it
            problem, answer = one_line_exit_2(lambda: cli.run_main(script.main, argv), named)
        answers.append((label, answer))
        if problem:
            failures.append(f"{label}: {problem}")
    report("cli", answers)
    assert not failures, f"{len(failures)} of {len(cases)} bad command lines:\n" + "\n".join(failures)
    assert len(cases) >= CLI_CASES_AT_LEAST, len(cases)
    assert snapshot(inputs) == before and not any(work.iterdir()), "something was written"


def one_line_exit_2(call, pattern: str) -> tuple[str | None, str]:
    """(None, the line) when ``call()`` exits with code 2 after one ``error`` line on stderr
    matching ``pattern``; else (what went wrong, the line)."""
    err = io.StringIO()
    try:
        with redirect_stderr(err), redirect_stdout(io.StringIO()):
            call()
    except SystemExit as e:
        lines = err.getvalue().strip().splitlines()
        if e.code != 2 or len(lines) != 1 or "error: " not in lines[0] or "Traceback" in err.getvalue():
            return f"exit {e.code}, stderr {err.getvalue()[-600:]!r}", ""
        if not re.search(pattern, lines[0], re.IGNORECASE):
            return f"the message does not name it ({pattern!r}): {lines[0]}", lines[0]
        return None, lines[0]
    except Exception as e:  # noqa: BLE001 - what the test is looking for
        return f"{type(e).__name__} raised: {str(e)[:300]}", ""
    return f"accepted (stderr {err.getvalue()[-300:]!r})", ""

