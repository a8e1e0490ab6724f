"""The Python examples of the README and of every docs/ page run as written."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(page):
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    if page.name == "README.md":
        assert blocks, "README has no python example"
    namespace: dict = {}  # a page reads top to bottom: later blocks use what earlier ones defined
    for block in blocks:
        exec(compile(block, str(page.relative_to(ROOT)), "exec"), namespace)
