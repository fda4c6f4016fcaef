"""A damaged checkpoint or result file (cut short, a flipped bit, a field missing) is one
line naming the file and saying to delete it to restart that run: never a torch or json
traceback, never a silently wrong resume."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import run_here

from ecomp_deap.config import EcompConfig
from ecomp_deap.errors import ParentError, ResultsError, UserError
from ecomp_deap.files import save_json
from ecomp_deap.nets.export import load_exported
from ecomp_deap.nets.reader import read_parent
from ecomp_deap.search.run import check_data
from ecomp_deap.study.checkpoint import MemoryStore, read_checkpoint
from ecomp_deap.study.experiment import Experiment
from ecomp_deap.study.results import load_run
from ecomp_deap.study.runner import SerialExecutor, execute_run, run_experiments

TINY = EcompConfig(selection="nsga2", pop_size=8, generations=6, batch_size=30, perplexity=5.0, val_size=60,
                   device="cpu", embedding_layers=None, recombination_layers=None)


def experiment(out: Path) -> Experiment:
    return Experiment("p", TINY, runs=1, seed=0, out=out, checkpoint_every=1)


class Recording(MemoryStore):
    """Keeps every checkpoint a run saves."""

    def __init__(self):
        super().__init__()
        self.saves = []

    def save(self, data: bytes) -> None:
        super().save(data)
        self.saves.append(data)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_data, tiny_parent):
    """A finished run's folder (run_0.json, run_0.pt) and the run's checkpoint after generation 3."""
    out = tmp_path_factory.mktemp("finished")
    run_here([experiment(out)], tiny_parent, tiny_data)
    parent = read_parent(tiny_parent)
    store = Recording()
    execute_run(experiment(out).job(0), parent, check_data(parent, tiny_data), store, log=lambda s: None)
    return out, store.saves[2]  # generations 1, 2, 3, ...


def member_offset(data: bytes, suffix: str) -> int:
    """Where the bytes of the archive member ending in ``suffix`` start."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(suffix))
    header = data[info.header_offset:info.header_offset + 30]
    name_len, extra_len = int.from_bytes(header[26:28], "little"), int.from_bytes(header[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len


def flipped(data: bytes, at: int) -> bytes:
    damaged = bytearray(data)
    damaged[at] ^= 0x10
    return bytes(damaged)


def resaved(data: bytes, change) -> bytes:
    blob = torch.load(io.BytesIO(data), weights_only=True)
    change(blob)
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    return buffer.getvalue()


DAMAGE = {
    "cut short": (lambda d: d[:len(d) // 2], "cut short: not a complete archive"),
    "a bit flipped in a tensor": (lambda d: flipped(d, member_offset(d, "data/0") + 3), "data/0 fails its checksum"),
    "a bit flipped in the pickle": (lambda d: flipped(d, member_offset(d, "data.pkl") + 40),
                                    "data.pkl fails its checksum"),
    "no random state": (lambda d: resaved(d, lambda b: b.pop("rng")), "no field 'rng'"),
    "no population": (lambda d: resaved(d, lambda b: b.pop("population")), "no field 'population'"),
    "an individual without weights": (lambda d: resaved(d, lambda b: b["population"][2].pop("weights")),
                                      "individual 2 has no list of tensors 'weights'"),
    "a population too short": (lambda d: resaved(d, lambda b: b["population"].pop()), "7 individuals for a population"),
    "the generation as text": (lambda d: resaved(d, lambda b: b.update(t="3")), "field 't' is str, not int"),
    "empty": (lambda d: b"", "unreadable checkpoint"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_checkpoint_is_one_line_saying_to_delete_it(finished, case):
    _, data = finished
    damage, expected = DAMAGE[case]
    with pytest.raises(UserError) as e:
        read_checkpoint(damage(data), experiment(Path("x")).run_config(0), "OUT/p/run_0.ckpt")
    line = str(e.value)
    assert line.startswith("OUT/p/run_0.ckpt: ") and expected in line, line
    assert "delete OUT/p/run_0.ckpt to restart this run from generation 0" in line and len(line.splitlines()) == 1


def test_a_tensor_bit_flip_loads_silently_without_the_checksum(finished):
    """Why checksums: torch itself does not check them."""
    _, data = finished
    damaged = flipped(data, member_offset(data, "data/0") + 3)
    assert torch.load(io.BytesIO(damaged), weights_only=True)["t"] == 3


def test_resume_from_a_damaged_checkpoint_is_refused_before_any_work(tmp_path, finished, tiny_data, tiny_parent):
    _, data = finished
    exp = experiment(tmp_path)
    exp.folder.mkdir()
    path = exp.checkpoint_path(0)
    path.write_bytes(flipped(data, member_offset(data, "data/0") + 3))
    with pytest.raises(UserError, match=f"{path}: damaged checkpoint .*delete {path} to restart this run"):
        run_experiments([exp], tiny_parent, tiny_data, SerialExecutor(progress=False), resume=True, log=lambda s: None)
    path.unlink()  # as the message says: the run restarts, to the uninterrupted result
    run_experiments([exp], tiny_parent, tiny_data, SerialExecutor(progress=False), resume=True, log=lambda s: None)
    out, _ = finished
    assert body(exp.folder / "run_0.json") == body(out / "p" / "run_0.json")


def body(path: Path) -> dict:
    d = json.loads(path.read_text())
    d.pop("wall_time_s")
    d.pop("phase_times_s")
    return d


def without_best_accuracy(text: str) -> str:
    run = json.loads(text)
    del run["best"]["test_accuracy"]
    return json.dumps(run)


RESULT_DAMAGE = {
    "cut short": (lambda text: text[:len(text) // 2], "not valid JSON"),
    "no best network": (lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "best"}),
                        "no field 'best'"),
    "no test accuracy": (lambda text: without_best_accuracy(text), "no field 'best.test_accuracy'"),
    "a measure as text": (lambda text: json.dumps({**json.loads(text), "wall_time_s": "fast"}),
                          "field 'wall_time_s' is str"),
    "no front": (lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "front"}),
                 "no field 'front'"),
}


@pytest.mark.parametrize("case", list(RESULT_DAMAGE))
def test_a_damaged_result_file_is_one_line_saying_to_delete_it(tmp_path, finished, case):
    out, _ = finished
    damage, expected = RESULT_DAMAGE[case]
    path = tmp_path / "run_0.json"
    path.write_text(damage((out / "p" / "run_0.json").read_text()))
    with pytest.raises(ResultsError) as e:
        load_run(path)
    line = str(e.value)
    assert line.startswith(f"{path}: ") and expected in line, line
    assert "delete it to restart this run" in line and len(line.splitlines()) == 1


def test_resume_over_a_damaged_result_is_refused_and_reruns_once_it_is_deleted(tmp_path, finished, tiny_data,
                                                                               tiny_parent):
    out, _ = finished
    exp = experiment(tmp_path)
    exp.folder.mkdir()
    path = exp.folder / "run_0.json"
    path.write_text((out / "p" / "run_0.json").read_text()[:100])
    with pytest.raises(ResultsError, match="not valid JSON.*delete it to restart this run"):
        run_experiments([exp], tiny_parent, tiny_data, SerialExecutor(progress=False), resume=True, log=lambda s: None)
    path.unlink()
    report = run_experiments([exp], tiny_parent, tiny_data, SerialExecutor(progress=False), resume=True,
                             log=lambda s: None)
    assert report.written == [("p", 0)] and body(path) == body(out / "p" / "run_0.json")


def test_an_old_result_file_without_the_new_fields_still_loads(tmp_path, finished):
    out, _ = finished
    old = json.loads((out / "p" / "run_0.json").read_text())
    for key in ("data_accuracy", "data_accuracy_on", "data_accuracy_examples"):
        old["parent"].pop(key)
    for key in ("extremes", "phase_times_s", "threads", "hypervolume_reference", "versions"):
        old.pop(key)
    save_json(tmp_path / "run_0.json", old)
    assert load_run(tmp_path / "run_0.json")["best"] == old["best"]


@pytest.mark.parametrize("case", ["cut short", "a bit flipped in a tensor"])
def test_a_damaged_exported_network_is_one_line(tmp_path, finished, case):
    out, _ = finished
    data = (out / "p" / "run_0.pt").read_bytes()
    path = tmp_path / "run_0.pt"
    path.write_bytes(DAMAGE[case][0](data))
    with pytest.raises(ParentError) as e:
        load_exported(path)
    assert str(e.value).startswith(f"{path}: damaged exported network (") and DAMAGE[case][1] in str(e.value)
    assert "delete it and the run's .json" in str(e.value)
    assert isinstance(load_exported(out / "p" / "run_0.pt"), torch.nn.Sequential)  # the undamaged one loads
