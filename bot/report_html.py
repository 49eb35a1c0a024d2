"""Run reports (``report.md``) as safe HTML for the status page.

markdown-it-py renders CommonMark plus pipe tables; raw HTML in a report is shown as text and
links with unsafe schemes are not made links, so a report can never inject markup.
"""

from __future__ import annotations

import functools
import typing as t

from markupsafe import Markup


@functools.cache
def _markdown() -> t.Any:
    """CommonMark plus pipe tables (markdown-it-py). Raw HTML in a report is shown as text
    (``html=False``) and links with unsafe schemes (``javascript:`` …) are not made links, so a
    report can never inject markup."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    def link_open(renderer, tokens, idx, options, env):  # markdown-it's rule signature
        tokens[idx].attrSet("rel", "nofollow noopener")
        return renderer.renderToken(tokens, idx, options, env)

    md.add_render_rule("link_open", link_open)
    return md


def markdown_to_html(text: str) -> Markup:
    """Render ``report.md`` (headings, lists, pipe tables, code, links) as escaped HTML."""
    return Markup(_markdown().render(text))
