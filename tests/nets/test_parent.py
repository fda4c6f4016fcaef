import pytest
import torch

from ecomp_deap.errors import ParentError
from ecomp_deap.nets import parents as P
from ecomp_deap.nets.chain import Chain


def test_build_mlp_has_the_reference_layer_names():
    model = P.build_mlp()
    assert [n for n, _ in model.named_children()] == ["flatten", "layer_1_linear", "layer_1_act",
                                                     "layer_2_linear", "layer_2_act", "output"]
    arch = Chain.from_module(model)
    assert (arch.stages[0].in_size, *arch.hidden_widths, arch.n_classes) == (784, 256, 256, 10)


def test_training_is_deterministic_under_one_seed(tiny_data):
    spec = P.ParentSpec(hidden=(8, 6), in_features=20, n_classes=4, epochs=1, batch_size=100, seed=5)
    a = P.train_parent(spec, tiny_data.train_x, tiny_data.train_y, progress=False)
    b = P.train_parent(spec, tiny_data.train_x, tiny_data.train_y, progress=False)
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k
    c = P.train_parent(P.ParentSpec(**{**spec.__dict__, "seed": 6}), tiny_data.train_x, tiny_data.train_y, progress=False)
    assert not torch.equal(a.state_dict()["output.weight"], c.state_dict()["output.weight"])


def test_cache_hit_on_second_call_does_not_train(tiny_data, tmp_path, monkeypatch):
    spec = P.ParentSpec(hidden=(8,), in_features=20, n_classes=4, epochs=1, batch_size=100)
    first = P.load_or_train_parent(spec, tiny_data, tmp_path, progress=False, log=lambda s: None)
    assert not first.cached and first.path.exists()

    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(P, "train_parent", no_training)
    logs = []
    second = P.load_or_train_parent(spec, tiny_data, tmp_path, progress=False, log=logs.append)
    assert second.cached and second.test_accuracy == first.test_accuracy
    assert "no training" in logs[0]
    for v, w in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(v, w)
    # another seed or other data is another cache entry
    assert P.cache_key(spec, "a") != P.cache_key(spec, "b")
    assert P.cache_key(spec, "a") != P.cache_key(P.ParentSpec(**{**spec.__dict__, "seed": 1}), "a")


def test_parent_files_bad_input_gives_clear_errors(tmp_path):
    with pytest.raises(ParentError, match="not found"):
        P.load_parent_file(tmp_path / "missing.pt")
    model = P.build_mlp((16, 8), in_features=20, n_classes=4)
    good = tmp_path / "good.pt"
    torch.save(model.state_dict(), good)
    assert Chain.from_module(P.load_parent_file(good)).hidden_widths == (16, 8)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(ParentError, match="truncated"):
        P.load_parent_file(truncated)
    other = tmp_path / "other.pt"
    torch.save({"a": 1}, other)
    with pytest.raises(ParentError, match="not a state dict"):
        P.load_parent_file(other)
    with pytest.raises(ParentError, match="hidden widths"):
        P.load_parent_file(good, P.ParentSpec(hidden=(256, 256)))
    whole = tmp_path / "whole.pt"
    torch.save(model, whole)
    assert isinstance(P.load_parent_file(whole), torch.nn.Sequential)


def test_unsupported_architectures_are_refused():
    with pytest.raises(ParentError, match="'1' is LayerNorm, which is not supported; supported layers: Conv2d"):
        Chain.from_module(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2)))
    with pytest.raises(ParentError, match="no hidden Conv2d or Linear layer"):
        Chain.from_module(torch.nn.Sequential(torch.nn.Linear(4, 2)))


def test_a_cosine_schedule_decays_the_rate_and_is_its_own_cache_entry(tiny_data, monkeypatch):
    spec = P.ParentSpec(hidden=(8,), in_features=20, n_classes=4, epochs=2, batch_size=100)
    cosine = P.ParentSpec(**{**spec.__dict__, "schedule": "cosine"})
    rates = []
    step = torch.optim.Adam.step

    def recording(self, *a, **k):
        rates.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", recording)
    P.train_parent(cosine, tiny_data.train_x, tiny_data.train_y, progress=False)
    assert rates[0] == pytest.approx(spec.lr) and all(a > b for a, b in zip(rates, rates[1:])) and rates[-1] > 0
    rates.clear()
    P.train_parent(spec, tiny_data.train_x, tiny_data.train_y, progress=False)
    assert set(rates) == {spec.lr}
    assert P.cache_key(cosine, "a") != P.cache_key(spec, "a")
    # a constant-rate spec keeps the key it had before the schedule existed
    fields = {k: v for k, v in spec.__dict__.items() if k not in ("schedule", "blocks", "arch", "channels")}
    old = P.hashlib.sha256(P.json.dumps({"spec": fields, "data": "a", "format": 1}, sort_keys=True).encode())
    assert P.cache_key(spec, "a") == old.hexdigest()[:16]
    with pytest.raises(ParentError, match="schedule"):
        P.ParentSpec(schedule="step")
