"""The declared dependencies agree with each other and with the code.

``pyproject.toml`` gives the floors (what the code needs), ``requirements.txt`` the
tested pins (``make run`` installs them): every package is in both, every pin lies
within its range, and the torch floor is the newest release that introduced a torch
API the package uses (the table below: each name, the release that added it).
"""
from __future__ import annotations

import re
from importlib import metadata

import pytest
from conftest import REPO

# torch names the package uses, and the release that added each. The floor must cover
# every one found in the code, and be no higher than the newest of them.
TORCH_APIS = {
    "add_safe_globals": (2, 4),  # the safe loader's allowlist (nets/safe_load.py); safe_globals (2.5) is optional
    "WeakIdKeyDictionary": (2, 0),
    "correction=": (2, 0),  # Tensor.var(correction=...)
    "linalg.vecdot": (1, 13),
    "weights_only=True": (1, 13),
    "frombuffer": (1, 10),
    "inference_mode": (1, 9),
    "frexp": (1, 9),
}
# torchvision release paired with each torch minor release (torchvision pins its torch)
TORCHVISION_FOR_TORCH_MINOR = 15


def version(text: str) -> tuple[int, ...]:
    """'2.4' or '2.14.1+cu130' -> (2, 4) / (2, 14, 1)."""
    return tuple(int(part) for part in re.match(r"\d+(?:\.\d+)*", text).group(0).split("."))


def name_of(requirement: str) -> str:
    return re.split(r"[\[<>=!~ ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def declared() -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """pyproject.toml's dependencies: name -> [(operator, version)]."""
    text = (REPO / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
    specs = {}
    for item in re.findall(r'"([^"]+)"', block):
        specs[name_of(item)] = [(op, version(v)) for op, v in re.findall(r"(>=|<=|==|<|>)\s*([\d.]+)", item)]
    return specs


def pinned() -> dict[str, tuple[int, ...]]:
    """requirements.txt's pins: name -> version."""
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, v = line.partition("==")
            assert v, f"requirements.txt: {line!r} is not pinned with =="
            pins[name_of(name)] = version(v)
    return pins


def satisfies(v: tuple[int, ...], specs) -> bool:
    def cmp(a, b):  # compare on the shorter length: 2.4 admits 2.4.1
        n = min(len(a), len(b))
        return (a[:n] > b[:n]) - (a[:n] < b[:n])

    ok = {">=": lambda c: c >= 0, ">": lambda c: c > 0, "<": lambda c: c < 0, "<=": lambda c: c <= 0,
          "==": lambda c: c == 0}
    return all(ok[op](cmp(v, bound)) for op, bound in specs)


def floor(specs) -> tuple[int, ...]:
    return next(bound for op, bound in specs if op == ">=")


def test_every_dependency_is_declared_and_pinned_within_its_range():
    specs, pins = declared(), pinned()
    assert set(specs) == set(pins), f"only in pyproject: {set(specs) - set(pins)}; only pinned: {set(pins) - set(specs)}"
    outside = {name: (pins[name], specs[name]) for name in specs if not satisfies(pins[name], specs[name])}
    assert not outside, f"pins outside pyproject's ranges: {outside}"


def test_the_installed_versions_are_within_the_declared_ranges():
    for name, spec in declared().items():
        try:
            installed = version(metadata.version(name))
        except metadata.PackageNotFoundError:
            pytest.fail(f"{name} is declared but not installed")
        assert satisfies(installed, spec), f"{name} {installed} is outside {spec}"


def used_torch_apis() -> dict[str, tuple[int, int]]:
    code = "\n".join(p.read_text() for p in (REPO / "ecomp_deap").rglob("*.py"))
    return {api: since for api, since in TORCH_APIS.items() if api in code}


def test_the_torch_floor_is_what_the_code_needs():
    used = used_torch_apis()
    assert "add_safe_globals" in used, "the safe loader's allowlist is gone: revisit the floor"
    needed = max(used.values())
    specs = declared()
    assert floor(specs["torch"])[:2] == needed, (
        f"torch floor {floor(specs['torch'])} but the code needs {needed} "
        f"({[api for api, v in used.items() if v == needed]})")
    _, minor = needed
    assert floor(specs["torchvision"])[:2] == (0, minor + TORCHVISION_FOR_TORCH_MINOR), \
        "torchvision's floor is not the release paired with torch's"
