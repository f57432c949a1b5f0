"""The in-process Python examples of README.md run as written (against the PetNord snapshot)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if "local_service(" in b]


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_in_process_example_runs(code, petnord_root):
    # the demo's path -> the PetNord snapshot's; everything else as written
    code = re.sub(r'local_service\("[^"]+"\)', f"local_service({str(petnord_root)!r})", code)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    lines = out.getvalue().splitlines()
    assert 1 <= len(lines) <= 5  # limit=5 hits, each printed on one line


def test_readme_has_an_in_process_example():
    assert BLOCKS
