"""Documentation that must stay true: every docstring example (doctest), the README's Python blocks,
the typed surface (``_core.pyi`` covers the compiled module, search knobs in the signatures)."""

from __future__ import annotations

import ast
import doctest
import importlib
import inspect
import os
import pkgutil
import re
import typing
from pathlib import Path
from typing import List, Tuple

import pytest

import annforge as af

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(af.__file__).resolve().parent

# Modules whose import needs an optional extra; their doctests run where the extra is installed.
_OPTIONAL = {"annforge.integrations.langchain": "langchain_core"}


# Examples that start a Ray cluster run in tests/test_distributed.py, which starts one cluster for all of
# them (a cluster per doctest would take most of a minute, and its workers need annforge installed).
_OWN_TESTS = ("annforge.distributed",)


def _modules() -> List[str]:
    names = ["annforge"]
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="annforge."):
        if info.name.rsplit(".", 1)[-1] in ("__main__", "_core", "_cuda"):
            continue
        if info.name.startswith(_OWN_TESTS):
            continue
        names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -m pytest --doctest-modules python/annforge`` in one place: every example runs and answers
    what it shows (a folder the example creates lands in a temporary directory)."""
    if name in _OPTIONAL:
        pytest.importorskip(_OPTIONAL[name])
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = finder.find(module, name)  # each example sees its module's globals, as under --doctest-modules
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (output above)"


# ---- README ----------------------------------------------------------------------------------------
_SKIP_MARK = "<!-- not run by the tests"


def _readme_python_blocks() -> List[Tuple[int, str, bool]]:
    """(line, code, runnable) for every ```python block; a block right after a
    ``<!-- not run by the tests: why -->`` comment needs something the tests lack (a model, apt)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = []
    for m in re.finditer(r"```python\n(.*?)```", text, flags=re.S):
        before = text[:m.start()].rstrip().splitlines()[-1:] or [""]
        line = text.count("\n", 0, m.start()) + 1
        blocks.append((line, m.group(1), not before[0].startswith(_SKIP_MARK)))
    return blocks


def test_readme_has_runnable_blocks() -> None:
    blocks = _readme_python_blocks()
    assert any(run for _, _, run in blocks), "the README quick start must be a runnable ```python block"


@pytest.mark.slow
@pytest.mark.parametrize("line, code", [(line, code) for line, code, run in _readme_python_blocks() if run])
def test_readme_python_block_runs(line: int, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the quick start saves files into the current folder
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})


# ---- typed surface ---------------------------------------------------------------------------------
def _stub_names() -> Tuple[set, dict]:
    tree = ast.parse((PACKAGE / "_core.pyi").read_text())
    top, classes = set(), {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            top.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            top.add(node.target.id)
        if isinstance(node, ast.ClassDef):
            classes[node.name] = {n.name if isinstance(n, (ast.FunctionDef, ast.ClassDef)) else n.target.id
                                  for n in node.body if isinstance(n, (ast.FunctionDef, ast.AnnAssign))
                                  and (not isinstance(n, ast.AnnAssign) or isinstance(n.target, ast.Name))}
    return top, classes


def test_core_stub_covers_the_compiled_module() -> None:
    """Regenerate with tools/make_core_stub.sh when this fails after a change to cpp/bindings/."""
    from annforge import _core

    top, classes = _stub_names()
    missing = sorted(n for n in dir(_core) if not n.startswith("__") and n not in top)
    assert not missing, f"python/annforge/_core.pyi lacks {missing}; run tools/make_core_stub.sh"
    for cls_name, members in classes.items():
        cls = getattr(_core, cls_name)
        lacking = sorted(n for n in dir(cls) if not n.startswith("_") and n not in members)
        assert not lacking, f"_core.pyi class {cls_name} lacks {lacking}; run tools/make_core_stub.sh"


@pytest.mark.parametrize("cls, knobs", [
    (af.HNSWIndex, ["ef"]),
    (af.IVFPQIndex, ["nprobe", "refine_factor"]),
    (af.IVFRaBitQIndex, ["nprobe", "refine_factor"]),
    (af.ScaNNIndex, ["leaves_to_search", "reorder_k"]),
    (af.FlatIndex, []),
])
def test_search_signatures_name_their_knobs(cls: type, knobs: List[str]) -> None:
    params = inspect.signature(cls.search).parameters
    for knob in knobs + ["filter", "num_threads"]:
        assert knob in params and params[knob].kind is inspect.Parameter.KEYWORD_ONLY, (cls.__name__, knob)


def test_named_knobs_reach_the_core() -> None:
    import numpy as np

    x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    index = af.HNSWIndex(8)
    index.add(x)
    assert index.search(x[:2], 3, ef=50)[0][:, 0].tolist() == [0, 1]
    with pytest.raises(ValueError, match="ef"):
        index.search(x[:2], 3, ef=0)  # the knob is passed on, not dropped
    with pytest.raises(ValueError, match="unknown search parameter 'nprobe'"):
        index.search(x[:2], 3, nprobe=4)


def test_load_returns_a_union_of_the_families() -> None:
    from annforge import _base

    assert _base.load.__annotations__["return"] == "AnyIndex"  # the alias is only imported for type checkers
    hint = typing.get_type_hints(_base.load, globalns={**vars(_base), "AnyIndex": af.AnyIndex})["return"]
    assert hint == af.AnyIndex and set(typing.get_args(hint)) == {af.FlatIndex, af.HNSWIndex, af.IVFPQIndex, af.IVFRaBitQIndex, af.ScaNNIndex,
                                          af.MinHashLSH, af.MinHashLSHForest}


def test_package_ships_type_information() -> None:
    assert (PACKAGE / "py.typed").exists() and (PACKAGE / "_core.pyi").exists()
    assert os.path.getsize(PACKAGE / "_core.pyi") > 1000


@pytest.mark.slow
def test_api_reference_builds_strict(tmp_path: Path) -> None:
    """What tools/build_docs.sh runs: `mkdocs build --strict` (a broken reference or docstring fails)."""
    pytest.importorskip("mkdocstrings_handlers.python")
    if not (ROOT / "mkdocs.yml").exists():
        pytest.skip("no mkdocs.yml (not a source checkout)")
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = (tmp_path / "site" / "api" / "indexes" / "index.html").read_text()
    assert "HNSWIndex" in page and "refine_factor" in page and "language-pycon" in page
