"""Untrusted text (prompts, answers, error messages) shown without Markdown or HTML effects."""

from __future__ import annotations

import re

# Every character CommonMark, Streamlit's :emoji:/:color[]: directives or LaTeX ($) treat specially.
_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:&])")


def md_escape(text: str) -> str:
    """`text` with every Markdown-significant character backslash-escaped (for st.error & co.)."""
    return _SPECIAL.sub(r"\\\1", text)


def snippet(text: str | None, limit: int = 120) -> str:
    """One line of at most `limit` characters."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
