"""The tutorials in docs/ run: every ``python`` and ``bash`` block of each page, in order, in a fresh folder.

Python blocks of one page share a namespace (a tutorial builds on its earlier blocks); bash blocks run with
``bash -euo pipefail`` and the venv's ``editmem`` on PATH. The folder has ``examples/`` linked in, so relative
paths in the docs resolve as from the repository root. ``text`` blocks and untagged blocks are output or
pseudo-code and are not run. ``EDITMEM_STRATEGY=context`` is set for the CLI, so the feed tutorial's import
does not train 20 LLP edits (the command and its output format are the same with any strategy).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO



TUTORIALS = ["sdk.md", "feeds.md", "langchain.md", "evaluation.md"]
_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)


def code_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block, in page order."""
    return [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]


def test_code_blocks_are_found():
    blocks = code_blocks("x\n```python\na = 1\n```\n```text\nout\n```\n```\nplain\n```\n")
    assert blocks == [("python", "a = 1\n"), ("text", "out\n"), ("", "plain\n")]


@pytest.mark.embedded
@pytest.mark.parametrize("page", TUTORIALS)
def test_tutorial_runs(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = [(lang, code) for lang, code in code_blocks((REPO / "docs" / page).read_text()) if lang in ("python", "bash")]
    assert blocks, f"docs/{page} has no runnable block"
    (tmp_path / "examples").symlink_to(REPO / "examples")
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "EDITMEM_STRATEGY": "context", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    namespace: dict = {"__name__": f"docs_{page.removesuffix('.md')}"}
    for index, (lang, code) in enumerate(blocks):
        where = f"docs/{page} block {index + 1} ({lang})"
        if lang == "python":
            exec(compile(code, where, "exec"), namespace)  # noqa: S102 - running our own tutorial
        else:
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=900)
            assert done.returncode == 0, f"{where} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    from langchain_core.globals import set_llm_cache

    set_llm_cache(None)  # a tutorial may set a global cache


def test_docs_site_builds_strictly(tmp_path: Path) -> None:
    """``mkdocs build --strict`` (what ``make docs`` and CI run): a broken link or a page missing from the nav fails."""
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "langchain" / "index.html").is_file()
