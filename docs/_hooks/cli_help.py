"""MkDocs hook: fill ``cli.md`` with the ``--help`` text of the ``bmsbi`` command.

The page holds the marker ``<!-- bmsbi-cli-help -->``; at build time it is replaced by
the top-level help and one section per verb, taken from ``bmsbi.cli.build_parser()``,
so a verb added to the parser appears in the docs without editing the page.
"""

from __future__ import annotations

import argparse
import os

MARKER = "<!-- bmsbi-cli-help -->"
_WIDTH = "88"  # fixed help width, so the page does not depend on the terminal


def _verbs(parser: argparse.ArgumentParser) -> dict[str, tuple[str, argparse.ArgumentParser]]:
    """``{verb: (one-line help, sub-parser)}`` in the order the parser defines them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            return {name: (helps.get(name, ""), sub) for name, sub in action.choices.items()}
    return {}


def render_cli_help() -> str:
    """The Markdown for the command reference: usage blocks for ``bmsbi`` and each verb."""
    from bmsbi.cli import build_parser

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = _WIDTH
    try:
        parser = build_parser()
        parts = ["### `bmsbi --help`", "", "```text", parser.format_help().rstrip(), "```", ""]
        for name, (summary, sub) in _verbs(parser).items():
            parts += [f"### `bmsbi {name}`", ""]
            if summary:
                parts += [summary[:1].upper() + summary[1:] + ".", ""]
            parts += ["```text", sub.format_help().rstrip(), "```", ""]
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, render_cli_help())
    return markdown
