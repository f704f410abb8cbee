"""Griffe extension for the API reference: docstrings as the numpy parser expects them.

- The docstrings name other objects with Sphinx roles (``:func:`simulate_bank```,
  ``:class:`~bmsbi.Posterior```). Markdown has no such roles, so they would show up
  verbatim; each becomes an inline code span (``~`` keeps only the last dotted
  component, as in Sphinx).
- A section headed ``Example`` (singular) is read as an ``Examples`` section, so its
  doctest renders as code rather than as Markdown.
- reStructuredText simple tables (``=====  =====`` borders, one header row) become
  Markdown tables, a literal-block marker ``text::`` becomes ``text:`` (the indented
  block after it is already a Markdown code block) and citations ``.. [1] ...``
  become a numbered list.

Docstrings in the source stay unchanged.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|mod|data|obj|exc|const):`(~?)([^`]+)`")
_EXAMPLE_HEADING = re.compile(r"^([ \t]*)Example\n\1-------[ \t]*$", re.MULTILINE)
_TABLE_BORDER = re.compile(r"^[ \t]*=+(?:[ \t]+=+)+[ \t]*$")
_LITERAL_MARKER = re.compile(r"(\S)::[ \t]*$", re.MULTILINE)
_CITATION = re.compile(r"^([ \t]*)\.\. \[(\d+)\] ", re.MULTILINE)


def _replace(match: re.Match) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def _columns(border: str) -> list[int]:
    return [m.start() for m in re.finditer(r"=+", border)]


def _cells(line: str, starts: list[int]) -> list[str]:
    bounds = starts[1:] + [None]
    return [line[a:b].strip().replace("|", "\\|") for a, b in zip(starts, bounds)]


def rst_tables_to_markdown(text: str) -> str:
    """Rewrite each reST simple table with one header row as a Markdown table."""
    lines = text.split("\n")
    borders = [i for i, line in enumerate(lines) if _TABLE_BORDER.match(line)]
    out, i = [], 0
    while i < len(lines):
        if i in borders:
            after = [b for b in borders if b > i][:2]
            if len(after) == 2 and after[0] == i + 2 and lines[i] == lines[after[0]] == lines[after[1]]:
                starts = _columns(lines[i])
                indent = lines[i][: starts[0]]
                rows = [_cells(lines[i + 1], starts)] + [
                    _cells(line, starts) for line in lines[after[0] + 1: after[1]] if line.strip()]
                out.append(indent + "| " + " | ".join(rows[0]) + " |")
                out.append(indent + "|" + "---|" * len(starts))
                out += [indent + "| " + " | ".join(row) + " |" for row in rows[1:]]
                i = after[1] + 1
                continue
        out.append(lines[i])
        i += 1
    return "\n".join(out)


def clean_docstring(text: str) -> str:
    """Return ``text`` rewritten for the numpy parser and Markdown (see the module docstring)."""
    text = _EXAMPLE_HEADING.sub(lambda m: f"{m[1]}Examples\n{m[1]}--------", text)
    text = rst_tables_to_markdown(text)
    text = _LITERAL_MARKER.sub(r"\1:", text)
    text = _CITATION.sub(r"\1\2. ", text)
    return _ROLE.sub(_replace, text)


class DocstringCleanup(griffe.Extension):
    """Clean every loaded docstring as the module docstring describes."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = clean_docstring(obj.docstring.value)
