"""Markdown extension for the API reference: docstring examples (``>>>`` lines and their output) become
``pycon`` code blocks, so mkdocs renders them as code instead of reading ``[...]`` in an output line as
a link; Sphinx roles such as ``:meth:`train``` become code spans. Used by mkdocs.yml
(``tools.mkdocs_pycon``; run mkdocs from the repository root)."""

from __future__ import annotations

import re
from typing import Any, List

_ROLE = re.compile(r":(?:meth|attr|func|class|mod|data|obj|exc):`~?([^`]+)`")

from markdown import Extension
from markdown.preprocessors import Preprocessor


class _PyconBlocks(Preprocessor):
    def run(self, lines: List[str]) -> List[str]:
        out: List[str] = []
        i = 0
        fenced = False
        while i < len(lines):
            line = lines[i]
            if line.lstrip().startswith("```"):
                fenced = not fenced
            if fenced or not line.lstrip().startswith(">>>"):
                out.append(line if fenced else _ROLE.sub(r"`\1`", line))
                i += 1
                continue
            indent = line[: len(line) - len(line.lstrip())]
            block = []
            while i < len(lines) and lines[i].strip():  # an example runs until the next blank line
                block.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
                i += 1
            out.extend(["", indent + "```pycon", *(indent + b for b in block), indent + "```", ""])
        return out


class PyconExtension(Extension):
    def extendMarkdown(self, md: Any) -> None:  # noqa: N802 (Markdown's API name)
        md.preprocessors.register(_PyconBlocks(md), "annforge_pycon", 40)


def makeExtension(**kwargs: Any) -> PyconExtension:  # noqa: N802
    return PyconExtension(**kwargs)
