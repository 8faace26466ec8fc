"""``escape``: text made safe inside HTML elements and quoted attributes.

The same five replacements as ``html.escape(text, quote=True)``; the ``html`` package is not
imported for them because it loads ``html.entities`` (a table of 2,000 named entities the status
page never decodes), ~0.3 MB of a Pi's RSS from the node's start (docs/PERFORMANCE.md, "Memory").
"""

from __future__ import annotations

_TABLE = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;"})


def escape(text: str) -> str:
    return text.translate(_TABLE)
