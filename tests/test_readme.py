"""The README's library example runs as written."""
import re

from conftest import REPO


def test_readme_library_example_runs():
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    example = next(b for b in blocks if "ecomp_deap.compress" in b)
    scope: dict = {}
    exec(compile(example.replace("config=config)", "config=config, progress=False)"), "README.md", "exec"), scope)
    result = scope["result"]
    assert 0 < result.best.parameters_kept < 1
    assert scope["front"] and all(0 < c <= 1 for c, _ in scope["front"])
