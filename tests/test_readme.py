"""The README and the docs as written: their python examples run, the README stays a
short user's guide, and their relative links lead to files and headings that exist.

A ```python block may opt out of running by starting with a ``# not run:`` comment
(for fragments that need files a run writes); it must still compile."""
import re
import unicodedata
from pathlib import Path

import pytest
from conftest import REPO

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
MARKDOWN = [README, REPO / "CHANGELOG.md", *DOCS]
NOT_RUN = "# not run:"


def python_blocks(path: Path) -> list[str]:
    """The ```python blocks of a markdown file, in order."""
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def mlp_example() -> str:
    return next(b for b in python_blocks(README) if "ecomp_deap.compress" in b and "nn.Conv2d" not in b)


def cnn_example() -> str:
    return next(b for b in python_blocks(README) if "ecomp_deap.compress" in b and "nn.Conv2d" in b)


def run_block(block: str, filename: str) -> dict:
    """Execute one block (quietly: compress() without its progress bar); its namespace."""
    scope: dict = {}
    exec(compile(block.replace("config=config)", "config=config, progress=False)"), filename, "exec"), scope)
    return scope


def test_readme_library_example_runs():
    scope = run_block(mlp_example(), "README.md")
    result = scope["result"]
    assert 0 < result.best.parameters_kept < 1
    assert scope["front"] and all(0 < c <= 1 for c, _ in scope["front"])


def test_readme_cnn_example_runs():
    scope = run_block(cnn_example(), "README.md")
    result = scope["result"]
    assert 0 < result.best.macs_kept < 1 and len(result.best.hidden_units) == 2
    assert isinstance(scope["small"][0], __import__("torch").nn.Conv2d)


def other_blocks() -> list:
    """Every python block of the README and the docs that the two tests above do not run."""
    covered = {mlp_example(), cnn_example()}
    return [pytest.param(path, block, id=f"{path.name}:{i}")
            for path in [README, *DOCS] for i, block in enumerate(python_blocks(path)) if block not in covered]


@pytest.mark.parametrize("path, block", other_blocks())
def test_markdown_python_block(path, block):
    code = compile(block, path.name, "exec")  # an opted-out block must still be valid python
    if not block.lstrip().startswith(NOT_RUN):
        exec(code, {})


def test_readme_is_a_short_guide():
    assert len(README.read_text().splitlines()) <= 300


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = unicodedata.normalize("NFC", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors a markdown file's headings make (a repeated one gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # no headings inside code blocks
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, flags=re.M):
        base = anchor(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def local_links(path: Path) -> list[str]:
    """The targets of a file's markdown links that are not URLs (code blocks left out)."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: p.name)
def test_relative_links_exist(path):
    broken = []
    for target in local_links(path):
        file, _, fragment = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest}")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target}: no heading #{fragment} in {dest.name}")
    assert not broken, f"{path.name}: " + "; ".join(broken)
