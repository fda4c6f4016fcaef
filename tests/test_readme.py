"""The README's library example runs as written."""
import re

from conftest import REPO


def run_example(marker: str) -> dict:
    """Run the README's python block that contains ``marker`` (quietly); its namespace."""
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    example = next(b for b in blocks if "ecomp_deap.compress" in b and marker in b)
    scope: dict = {}
    exec(compile(example.replace("config=config)", "config=config, progress=False)"), "README.md", "exec"), scope)
    return scope


def test_readme_library_example_runs():
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    example = next(b for b in blocks if "ecomp_deap.compress" in b)
    scope: dict = {}
    exec(compile(example.replace("config=config)", "config=config, progress=False)"), "README.md", "exec"), scope)
    result = scope["result"]
    assert 0 < result.best.parameters_kept < 1
    assert scope["front"] and all(0 < c <= 1 for c, _ in scope["front"])


def test_readme_cnn_example_runs():
    scope = run_example("nn.Conv2d")
    result = scope["result"]
    assert 0 < result.best.macs_kept < 1 and len(result.best.hidden_units) == 2
    assert isinstance(scope["small"][0], __import__("torch").nn.Conv2d)
