"""Issue #16: bad data at the API boundary and on the command line, untrusted model
and checkpoint files, the mode of written files, and Dask over TLS."""
from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, make_tiny_data, stop_processes
from helpers import ecomp_run
from torch import nn

import ecomp_deap
from ecomp_deap import data as D
from ecomp_deap import files
from ecomp_deap.config import EcompConfig
from ecomp_deap.errors import ConfigError, ParentError, UnsafeFileError, UserError
from ecomp_deap.nets.chain import ELEMENTWISE
from ecomp_deap.nets.parents import build_mlp, load_parent_file
from ecomp_deap.nets.safe_load import load_untrusted

CFG = EcompConfig(selection="nsga2", weights=(1, 1, 1), embedding_layers=None, recombination_layers=None,
                  pop_size=8, generations=4, batch_size=50, perplexity=5.0, val_size=0, device="cpu")


def run_script(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, str(REPO / "experiments/run.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def one_line_exit_2(p) -> str:
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in p.stderr, p.stderr
    return lines[0]


# ------------------------------------------------------------------ bad data: the library
def problem(n=1400, features=12, classes=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, features, generator=g)
    return x, (x @ torch.randn(features, classes, generator=g)).argmax(1)


X, Y = problem()
MODEL = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))


def with_value(t, index, value):
    t = t.clone()
    t[index] = value
    return t


BAD_DATA = [  # (which set, (x, y), expected message)
    ("train", (with_value(X[:1000], (17, 5), float("nan")), Y[:1000]),
     "train data: input 17 is not finite (nan at position 5 of the example)"),
    ("test", (with_value(X[1200:], (3, 0), float("inf")), Y[1200:]),
     "test data: input 3 is not finite (inf at position 0 of the example)"),
    ("train", (X[:1000], Y[:1000] + 5), "train data: label 0 is 5, outside [0, 3) (the parent has 3 outputs)"),
    ("val", (X[1000:1200], with_value(Y[1000:1200], 9, -1)), "val data: label 9 is -1, outside [0, 3)"),
    ("train", (X[:1000], Y[:1000].double() + 0.5), "train data: label 0 is 0.5, not a whole number"),
    ("test", (X[1200:], with_value(Y[1200:].float(), 4, float("nan"))), "test data: label 4 is nan, not a whole number"),
    ("train", (X[:1000, :11], Y[:1000]), "train data: each example has 11 input values (shape (11,)), the parent takes 12"),
    ("val", (X[1000:1200].reshape(200, 3, 4)[:, :2], Y[1000:1200]), "val data: each example has 8 input values"),
    ("train", (X[:0], Y[:0]), "train data is empty"),
    ("val", (X[:0], Y[:0]), "val data is empty"),
    ("test", (X[:0], Y[:0]), "test data is empty"),
    ("train", (X[:1000], nn.functional.one_hot(Y[:1000], 3)), "train data: labels must be 1-d class indices"),
    ("train", (X[:1000], Y[:999]), "train data: 1000 inputs but 999 labels"),
]


@pytest.mark.parametrize("which,pair,expected", BAD_DATA, ids=[m.split(":")[-1].strip()[:40] for _, _, m in BAD_DATA])
def test_compress_refuses_bad_data_in_one_line_before_any_work(which, pair, expected, monkeypatch):
    import ecomp_deap.api as api

    def no_run(*a, **k):
        raise AssertionError("a run started on bad data")

    monkeypatch.setattr(api, "EcompRun", no_run)
    sets = {"train": (X[:1000], Y[:1000]), "val": (X[1000:1200], Y[1000:1200]), "test": (X[1200:], Y[1200:]), which: pair}
    with pytest.raises(ConfigError) as e:
        ecomp_deap.compress(MODEL, config=CFG, progress=False, **sets)
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_whole_number_float_labels_and_any_shape_of_the_right_size_are_accepted():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    res = ecomp_deap.compress(model, train=(X[:1000].reshape(1000, 3, 4), Y[:1000].float()),
                              val=(X[1000:1200], Y[1000:1200]), test=(X[1200:], Y[1200:].to(torch.uint8)),
                              config=CFG, progress=False, allow_weak_parent=True)  # untrained: at chance
    assert res.run.evolution.population and 0 <= res.best.accuracy <= 1


def test_run_ecomp_checks_its_data_too(tiny_parent):
    from ecomp_deap.search.run import run_ecomp

    data = make_tiny_data()
    data.train_y = with_value(data.train_y, 30, 4)  # 4 classes: 4 is outside
    with pytest.raises(ConfigError, match=r"^train data: label 30 is 4, outside \[0, 4\)"):
        run_ecomp(CFG, tiny_parent, data, progress=False)


def test_a_parent_with_a_non_finite_weight_is_refused_before_any_work(tiny_parent):
    from ecomp_deap.search.run import run_ecomp

    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        model[0].weight[3, 2] = float("nan")
    with pytest.raises(ParentError, match=r"^parent 0.weight is not finite \(nan at \[3, 2\]\)"):
        ecomp_deap.compress(model, train=(X[:1000], Y[:1000]), test=(X[1200:], Y[1200:]), config=CFG, progress=False)
    broken = build_mlp((16, 12), in_features=20, n_classes=4)
    broken.load_state_dict(tiny_parent.state_dict())
    with torch.no_grad():
        broken.output.bias[1] = float("-inf")
    with pytest.raises(ParentError, match=r"^parent output.bias is not finite \(-inf at \[1\]\)"):
        run_ecomp(CFG, broken, make_tiny_data(), progress=False)


def test_validate_dataset_takes_an_image_shape_exactly():
    from ecomp_deap.validation import validate_dataset

    x, y = torch.rand(6, 3, 8, 8), torch.arange(6) % 2
    validate_dataset("images", x, y, 2, (3, 8, 8))
    with pytest.raises(ConfigError, match=r"images data: examples have shape \(3, 8, 8\), the parent takes \(1, 8, 24\)"):
        validate_dataset("images", x, y, 2, (1, 8, 24))  # same size, other shape: refused for an image shape
    validate_dataset("flat", x, y, 2, (192,))  # an MLP flattens: any shape of 192 values


def test_experiment_checks_data_before_clearing_results(tmp_path, tiny_parent):
    from ecomp_deap.study.experiment import Experiment
    from ecomp_deap.study.runner import SerialExecutor, run_experiments

    data = make_tiny_data()
    data.test_x = with_value(data.test_x, (2, 1), float("nan"))
    exp = Experiment("e", CFG, runs=1, seed=0, out=tmp_path)
    exp.folder.mkdir(parents=True)
    (exp.folder / "run_0.json").write_text("{}")
    with pytest.raises(ConfigError, match="test data: input 2 is not finite"):
        run_experiments([exp], tiny_parent, data, SerialExecutor(progress=False), overwrite=True, log=lambda s: None)
    assert [p.name for p in exp.folder.iterdir()] == ["run_0.json"]  # --overwrite cleared nothing


# ------------------------------------------------------------------ bad data: run.py
def write_idx_root(root: Path, corrupt_label: tuple[str, int, int] | None = None) -> Path:
    """A FashionMNIST-shaped data root (random images, labels i % 10), optionally with
    one label byte replaced: (file, index, value)."""
    raw = D.raw_dir(root)
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, (magic, items, item_bytes) in D.RAW_FILES.items():
        header = magic.to_bytes(4, "big") + items.to_bytes(4, "big")
        if magic == 2051:
            body = rng.integers(0, 256, items * item_bytes, dtype=np.uint8).tobytes()
            header += (28).to_bytes(4, "big") * 2
        else:
            labels = (np.arange(items) % 10).astype(np.uint8)
            if corrupt_label and corrupt_label[0] == name:
                labels[corrupt_label[1]] = corrupt_label[2]
            body = labels.tobytes()
        (raw / name).write_bytes(header + body)
    return root


@pytest.fixture(scope="module")
def idx_root(tmp_path_factory):
    return write_idx_root(tmp_path_factory.mktemp("idx"))


@pytest.fixture(scope="module")
def parents(tmp_path_factory):
    """Saved parents: a fitting 784-8-6-10, one taking 20 inputs, one with 3 classes."""
    folder = tmp_path_factory.mktemp("parents")
    torch.manual_seed(0)
    for name, model in (("good", build_mlp((8, 6))), ("narrow", build_mlp((8, 6), in_features=20)),
                        ("three", build_mlp((8, 6), n_classes=3))):
        torch.save(model.state_dict(), folder / f"{name}.pt")
    return folder


FAST = ["--pop-size", "8", "--generations", "3", "--batch-size", "50", "--val-size", "100", "--device", "cpu",
        "--quiet", "--no-download", "--allow-weak-parent"]  # random images: any parent is at chance on them


@pytest.mark.parametrize("parent,expected", [
    ("narrow", "error: train data: each example has 784 input values (shape (1, 28, 28)), the parent takes 20"),
    ("three", "error: train data: label 3 is 3, outside [0, 3) (the parent has 3 outputs)"),
])
def test_cli_data_that_does_not_fit_the_parent_is_one_line_exit_2_nothing_written(tmp_path, idx_root, parents,
                                                                                   parent, expected):
    out = tmp_path / "out"
    (out / "weighting121").mkdir(parents=True)
    (out / "weighting121" / "run_0.json").write_text("{}")  # with --overwrite: must survive the refusal
    p = run_script("--name", "weighting121", *FAST, "--data-dir", idx_root, "--parent", parents / f"{parent}.pt",
                   "--out", out, "--overwrite")
    assert one_line_exit_2(p) == expected
    assert [p.name for p in out.rglob("*")] == ["weighting121", "run_0.json"]


def test_cli_corrupt_labels_in_the_data_files_are_one_line_exit_2(tmp_path, parents):
    root = write_idx_root(tmp_path / "data", corrupt_label=("t10k-labels-idx1-ubyte", 7, 200))
    p = run_script("--name", "weighting121", *FAST, "--data-dir", root, "--parent", parents / "good.pt",
                   "--out", tmp_path / "out")
    line = one_line_exit_2(p)
    assert line.startswith("error: FashionMNIST test data: label 7 is 200, outside [0, 10) "
                           "(FashionMNIST has 10 classes)"), line
    assert "delete the files" in line and not (tmp_path / "out").exists()


# ------------------------------------------------------------------ untrusted files
class WritesAFile:
    """Unpickling this runs code: it writes ``target``."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return exec, (f"open({self.target!r}, 'w').write('pwned')",)


class MySequential(nn.Sequential):
    """A harmless class outside the allowlist."""


@pytest.fixture
def evil(tmp_path):
    """(file, the file unpickling it would write); the payload proven to work on a twin."""
    twin_target = tmp_path / "twin-ran"
    torch.save(WritesAFile(twin_target), tmp_path / "twin.pt")
    load_untrusted(tmp_path / "twin.pt", trust_pickle=True)  # the opt-in unpickles: the code runs
    assert twin_target.read_text() == "pwned"
    target = tmp_path / "pwned"
    torch.save(WritesAFile(target), tmp_path / "evil.pt")
    return tmp_path / "evil.pt", target


def test_a_malicious_parent_file_is_refused_and_runs_nothing(evil):
    path, target = evil
    with pytest.raises(UnsafeFileError) as e:
        load_parent_file(path)
    msg = str(e.value)
    assert "GLOBAL builtins.exec" in msg or "GLOBAL exec" in msg
    assert "--trust-parent-file" in msg and "trust_pickle=True" in msg and "\n" not in msg
    with pytest.raises(UnsafeFileError):
        ecomp_deap.compress(str(path), train=(X[:1000], Y[:1000]), test=(X[1200:], Y[1200:]), progress=False)
    assert not target.exists()


def test_cli_malicious_parent_is_one_line_exit_2_and_runs_nothing(evil, idx_root, tmp_path):
    path, target = evil
    p = run_script("--name", "weighting121", *FAST, "--data-dir", idx_root, "--parent", path, "--out", tmp_path / "out")
    line = one_line_exit_2(p)
    assert "refused to load this parent file" in line and "--trust-parent-file" in line
    assert not target.exists() and not (tmp_path / "out").exists()
    p = run_script("--name", "weighting121", "--trust-parent-file", "--out", tmp_path / "out")
    assert "--trust-parent-file goes with --parent" in one_line_exit_2(p)
    b = subprocess.run([sys.executable, str(REPO / "experiments/baselines.py"), "--parent", str(path), "--data-dir",
                        str(idx_root), "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "refused to load this parent file" in one_line_exit_2(b)
    assert not target.exists() and not (tmp_path / "out" / "baselines" / "baselines.json").exists()


def test_supported_pickled_sequentials_still_load(tmp_path):
    from ecomp_deap.nets.chain import Chain

    mlp = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.LeakyReLU(0.3), nn.Linear(5, 4), nn.GELU(approximate="tanh"),
                        nn.Linear(4, 2))
    torch.save(mlp, tmp_path / "mlp.pt")
    loaded = load_parent_file(tmp_path / "mlp.pt")
    assert Chain.from_module(loaded).hidden_widths == (5, 4)
    assert loaded[2].negative_slope == 0.3 and loaded[4].approximate == "tanh"
    x = torch.randn(3, 6)
    assert torch.equal(loaded(x), mlp.eval()(x))
    for act in ELEMENTWISE:  # every activation the MLP reader accepts
        torch.save(nn.Sequential(nn.Linear(3, 3), act(), nn.Linear(3, 2)), tmp_path / "a.pt")
        assert isinstance(load_parent_file(tmp_path / "a.pt")[1], act)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Dropout2d(0.1), nn.Conv2d(4, 4, 3), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d((1, 1)),
                        nn.Flatten(), nn.BatchNorm1d(4), nn.Dropout(0.2), nn.Linear(4, 3)).eval()
    torch.save(cnn, tmp_path / "cnn.pt")
    got = load_untrusted(tmp_path / "cnn.pt")  # the layers of the coming CNN parents
    x = torch.randn(2, 1, 12, 12)
    assert torch.equal(got.eval()(x), cnn(x))


def replaced_in_archive(data: bytes, old: bytes, new: bytes) -> bytes:
    """A torch file's zip archive with ``old`` replaced by ``new`` in every member, its
    checksums recomputed: another valid file, not a damaged one (those are refused first)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info).replace(old, new))
    return out.getvalue()


def test_other_classes_need_the_explicit_opt_in(tmp_path):
    torch.save(MySequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), tmp_path / "custom.pt")
    with pytest.raises(UnsafeFileError, match="MySequential.*if you trust this file, use --trust-parent-file"):
        load_parent_file(tmp_path / "custom.pt")
    assert isinstance(load_parent_file(tmp_path / "custom.pt", trust_pickle=True), MySequential)
    data = (tmp_path / "custom.pt").read_bytes()  # the same file naming a module that does not exist here
    (tmp_path / "elsewhere.pt").write_bytes(replaced_in_archive(data, b"test_hardening", b"test_elsewhere"))
    with pytest.raises(ParentError, match="No module named 'test_elsewhere'.*must be importable here"):
        load_parent_file(tmp_path / "elsewhere.pt", trust_pickle=True)


# ------------------------------------------------------------------ checkpoints
def tiny_run(tiny_parent, generations=4):
    return ecomp_run(CFG.replace(generations=generations, pop_size=8, batch_size=50, val_size=100), tiny_parent,
                     make_tiny_data())


class Stop(Exception):
    pass


def test_checkpoint_is_plain_data_and_resumes_to_the_uninterrupted_result(tmp_path, tiny_parent):
    from ecomp_deap.rng import rng_snapshot
    from ecomp_deap.search.genome import fitness_weights, make_types
    from ecomp_deap.study.checkpoint import load_checkpoint, save_checkpoint

    whole = tiny_run(tiny_parent).run()
    ckpt = tmp_path / "run.ckpt"
    first = tiny_run(tiny_parent)

    def stop_at_2(state):
        if state.t == 2:
            save_checkpoint(ckpt, state, first.config, rng_snapshot(first.rng), 1.5)
            raise Stop

    with pytest.raises(Stop):
        first.run(on_generation=stop_at_2)
    blob = torch.load(ckpt, weights_only=True)  # no allowlist needed: tensors and plain data
    assert blob["format"] == "ecomp_deap.checkpoint/2" and isinstance(blob["logbook"], list)
    second = tiny_run(tiny_parent)
    _, ind_cls = make_types(fitness_weights(second.config.selection, second.config.weights))
    state, elapsed = load_checkpoint(ckpt, second.config, ind_cls, second.rng)
    assert state.t == 2 and elapsed == 1.5
    resumed = second.run(state).to_json()
    expected = whole.to_json()
    for timing in ("wall_time_s", "phase_times_s"):
        resumed.pop(timing), expected.pop(timing)
    assert json.dumps(resumed) == json.dumps(expected)


def test_malicious_and_old_format_checkpoints_are_refused(tmp_path, evil, tiny_parent):
    from deap import tools

    from ecomp_deap.search.genome import fitness_weights, make_types
    from ecomp_deap.study.checkpoint import load_checkpoint

    run = tiny_run(tiny_parent)
    _, ind_cls = make_types(fitness_weights(run.config.selection, run.config.weights))
    path, target = evil
    with pytest.raises(UserError, match="refused to load this checkpoint: it needs GLOBAL .*exec.*delete .* to restart"):
        load_checkpoint(path, run.config, ind_cls, run.rng)
    assert not target.exists()
    old = tmp_path / "old.ckpt"
    torch.save({"format": "ecomp_deap.checkpoint/1", "logbook": tools.Logbook(), "rng": {"numpy": np.zeros(3)}}, old)
    with pytest.raises(UserError, match=r"older format \(ecomp_deap.checkpoint/1\).*refuses; delete .* to restart"):
        load_checkpoint(old, run.config, ind_cls, run.rng)


def test_cli_resume_from_a_malicious_checkpoint_is_refused(tmp_path, evil, idx_root, parents):
    path, target = evil
    folder = tmp_path / "out" / "weighting121"
    folder.mkdir(parents=True)
    shutil.copy(path, folder / "run_0.ckpt")
    p = run_script("--name", "weighting121", *FAST, "--data-dir", idx_root, "--parent", parents / "good.pt",
                   "--out", tmp_path / "out", "--resume")
    line = one_line_exit_2(p)
    assert "run_0.ckpt: refused to load this checkpoint" in line and "to restart this run" in line
    assert not target.exists() and sorted(f.name for f in folder.iterdir()) == ["run_0.ckpt"]


# ------------------------------------------------------------------ file modes
@contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_written_files_get_the_mode_the_umask_gives(tmp_path, mask, tiny_parent):
    from ecomp_deap.nets.export import save_exported

    with umask(mask):
        files.save_json(tmp_path / "r.json", {"a": 1})
        files.save_json(tmp_path / "r.json", {"a": 2})  # replacing keeps the atomic path
        files.save_csv(tmp_path / "s.csv", [{"a": 1}])
        files.write_bytes(tmp_path / "p.png", b"png")
        save_exported(tmp_path / "run_0.pt", tiny_parent)
        src = tmp_path / "deb"
        src.mkdir()
        for name in D.RAW_FILES:
            (src / f"{name}.gz").write_bytes(__import__("gzip").compress(b"x"))
        D._from_debian(tmp_path / "root", src)  # the data files gunzipped into the cache
    written = [tmp_path / n for n in ("r.json", "s.csv", "p.png", "run_0.pt")]
    written += [D.raw_dir(tmp_path / "root") / n for n in D.RAW_FILES]
    for f in written:
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, (f, oct(f.stat().st_mode))
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary file left


# ------------------------------------------------------------------ Dask over TLS
def test_tls_scheduler_without_tls_settings_names_what_is_missing(tmp_path):
    pytest.importorskip("distributed")
    import dask

    from ecomp_deap.study.executors import dask_client

    with dask.config.set({"distributed.comm.tls.ca-file": None, "distributed.comm.tls.client.cert": None}):
        with pytest.raises(ConfigError) as e:
            with dask_client("dask", scheduler="tls://127.0.0.1:9"):
                pass
    msg = str(e.value)
    for name in ("distributed.comm.tls.ca-file", "DASK_DISTRIBUTED__COMM__TLS__CA_FILE",
                 "distributed.comm.tls.client.cert", "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT"):
        assert name in msg, msg
    with dask.config.set({"distributed.comm.tls.ca-file": str(tmp_path / "ca.pem"),
                          "distributed.comm.tls.client.cert": str(tmp_path / "me.pem")}):
        with pytest.raises(ConfigError, match=r"do not exist: distributed.comm.tls.ca-file = .*ca.pem, "
                                              r"distributed.comm.tls.client.cert = .*me.pem"):
            with dask_client("dask", scheduler="tls://127.0.0.1:9"):
                pass
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    p = subprocess.run([sys.executable, str(REPO / "experiments/run.py"), "--name", "weighting121", "--executor",
                        "dask", "--scheduler", "tls://127.0.0.1:9", "--out", str(tmp_path / "o")], cwd=REPO,
                       capture_output=True, text=True, timeout=120,
                       env={**clean, "PYTHONPATH": str(REPO), "DASK_CONFIG": str(tmp_path / "no-config")})
    line = one_line_exit_2(p)
    assert "needs Dask's TLS settings; missing: distributed.comm.tls.ca-file" in line
    assert not (tmp_path / "o").exists()


def self_signed(folder: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a test certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_tls_scheduler_with_tls_settings_runs_tasks_over_tls(tmp_path):
    """In process and quick: a TLS LocalCluster on 127.0.0.1, dask_client with the settings."""
    pytest.importorskip("distributed")
    import dask
    from distributed import LocalCluster
    from distributed.security import Security

    from ecomp_deap.study.executors import dask_client

    cert, key = self_signed(tmp_path)
    c, k = str(cert), str(key)
    security = Security(tls_ca_file=c, tls_scheduler_cert=c, tls_scheduler_key=k, tls_worker_cert=c, tls_worker_key=k,
                        tls_client_cert=c, tls_client_key=k, require_encryption=True)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tls://", host="127.0.0.1",
                      security=security, dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        with dask.config.set({"distributed.comm.tls.ca-file": c, "distributed.comm.tls.client.cert": c,
                              "distributed.comm.tls.client.key": k}):
            with dask_client("dask", scheduler=cluster.scheduler_address) as client:
                assert client.submit(sum, [1, 2, 3]).result(timeout=30) == 6


@pytest.mark.slow  # about 30 s on 2 busy cores: three processes start and load the data
def test_run_py_over_tls_with_the_readmes_commands(tmp_path, idx_root, parents):
    """`dask scheduler --protocol tls` and `dask worker tls://...` with a self-signed
    certificate, run.py with the client settings in the environment; 127.0.0.1 only."""
    pytest.importorskip("distributed")
    import socket

    cert, key = self_signed(tmp_path)
    tls = ["--tls-ca-file", str(cert), "--tls-cert", str(cert), "--tls-key", str(key)]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = f"tls://127.0.0.1:{port}"
    dask_bin = str(Path(sys.executable).parent / "dask")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DASK_")}, "PYTHONPATH": str(REPO)}
    procs = []
    try:
        procs.append(subprocess.Popen([dask_bin, "scheduler", "--protocol", "tls", "--host", "127.0.0.1", "--port",
                                       str(port), "--no-dashboard", *tls], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, env=env, cwd=tmp_path))
        procs.append(subprocess.Popen([dask_bin, "worker", address, "--nthreads", "1", "--host", "127.0.0.1",
                                       "--no-dashboard", *tls], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      env=env, cwd=tmp_path))
        client_tls = {"DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(cert),
                      "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": str(cert),
                      "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": str(key)}
        p = subprocess.run([sys.executable, str(REPO / "experiments/run.py"), "--name", "weighting121", *FAST,
                            "--data-dir", str(idx_root), "--parent", str(parents / "good.pt"), "--out",
                            str(tmp_path / "out"), "--executor", "dask", "--scheduler", address], cwd=REPO,
                           capture_output=True, text=True, timeout=240, env={**env, **client_tls})
        assert p.returncode == 0, p.stderr
        assert f"scheduler {address}, 1 worker(s)" in p.stdout and "[1/1] weighting121 run 1/1" in p.stdout
        assert (tmp_path / "out" / "weighting121" / "run_0.json").exists()
    finally:
        stop_processes(procs)
