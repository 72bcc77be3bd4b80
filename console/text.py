"""Untrusted text (prompts, answers, error messages) shown without Markdown or HTML effects."""

from __future__ import annotations

import html
import re

# Every character CommonMark, Streamlit's :emoji:/:color[]: directives or LaTeX ($) treat specially.
_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:&])")


def md_escape(text: str) -> str:
    """`text` with every Markdown-significant character backslash-escaped (for st.error & co.)."""
    return _SPECIAL.sub(r"\\\1", text)


def plot_text(text: str) -> str:
    """`text` for a Plotly label, legend or hover: Plotly renders a subset of HTML there (<a
    href>, <b>, <span style>, entities), so a brand name a model invented with markup in it was
    a live outside link in the Mentions charts (issue 12). Escaped, it shows as typed."""
    return html.escape(text, quote=False)


def snippet(text: str | None, limit: int = 120) -> str:
    """One line of at most `limit` characters."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
