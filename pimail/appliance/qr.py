"""QR codes of the node's enode: terminal (half blocks), SVG (inline on the status page), PNG/SVG files.

An enode with a password and an IPv4 host is ~180 bytes: a version 9 QR (53 modules) at error
level M. With half-block rendering two module rows share one text line, so the symbol plus its
quiet zone is ~61 columns by ~31 lines, readable at 80 columns.
"""

from __future__ import annotations

from pathlib import Path

import segno

from pimail.errors import RuntimeFailure, UserError

TERMINAL_COLUMNS = 80
QUIET_ZONE = 4  # modules; the QR spec asks for 4
MIN_QUIET_ZONE = 2  # what we shrink to before giving up on 80 columns
PNG_SCALE = 8  # pixels per module in PNG files
ERROR_LEVEL = "m"  # ~15 % recovery; "l" would save one version but read worse off a screen

# ANSI: black on white regardless of the terminal's own colours.
_ANSI_ON = "\x1b[30;47m"
_ANSI_OFF = "\x1b[0m"


def make_qr(text: str) -> segno.QRCode:
    """A regular (not micro) QR code of ``text`` in byte mode."""
    if not text:
        raise UserError("nothing to encode in a QR code")
    try:
        return segno.make_qr(text, error=ERROR_LEVEL, boost_error=False, mode="byte", encoding="utf-8")
    except segno.DataOverflowError as exc:
        raise UserError(f"text too long for a QR code ({len(text)} bytes)") from exc


def modules(qr: segno.QRCode, border: int) -> list[list[bool]]:
    """The symbol as rows of booleans (True = dark), with ``border`` light modules around it."""
    return [[bool(v) for v in row] for row in qr.matrix_iter(scale=1, border=border)]


def render_terminal(qr: segno.QRCode, *, ansi: bool = False, columns: int = TERMINAL_COLUMNS) -> str:
    """Render with half blocks so the code is square and fits ``columns``.

    ``ansi=True`` draws black modules on a white background with colour codes, which scans on any
    terminal theme. ``ansi=False`` emits plain text in the ``qrencode -t UTF8`` convention: light
    modules are drawn as blocks, so the code reads dark-on-light on a dark-background terminal.
    """
    size = qr.symbol_size(scale=1, border=0)[0]
    border = QUIET_ZONE
    while size + 2 * border > columns and border > MIN_QUIET_ZONE:
        border -= 1
    if size + 2 * border > columns:
        raise UserError(f"QR code is {size + 2 * border} columns wide, more than {columns}")
    rows = modules(qr, border)
    if len(rows) % 2:
        rows.append([False] * len(rows[0]))
    lines = []
    for top, bottom in zip(rows[0::2], rows[1::2], strict=True):
        chars = []
        for upper, lower in zip(top, bottom, strict=True):
            # Draw whichever of the two modules is the "ink" colour for this mode.
            ink_upper, ink_lower = (upper, lower) if ansi else (not upper, not lower)
            chars.append(_HALF_BLOCKS[(ink_upper, ink_lower)])
        line = "".join(chars)
        lines.append(f"{_ANSI_ON}{line}{_ANSI_OFF}" if ansi else line)
    return "\n".join(lines) + "\n"


_HALF_BLOCKS = {(False, False): " ", (True, False): "▀", (False, True): "▄", (True, True): "█"}


def parse_terminal(text: str) -> list[list[bool]]:
    """Inverse of :func:`render_terminal` (either mode): rows of modules, True = dark.

    Used by the tests to check that what the operator sees still decodes.
    """
    ansi = _ANSI_ON in text
    rows: list[list[bool]] = []
    for raw in text.splitlines():
        line = raw.replace(_ANSI_ON, "").replace(_ANSI_OFF, "")
        if not line:
            continue
        upper: list[bool] = []
        lower: list[bool] = []
        for ch in line:
            ink_upper = ch in "▀█"
            ink_lower = ch in "▄█"
            upper.append(ink_upper if ansi else not ink_upper)
            lower.append(ink_lower if ansi else not ink_lower)
        rows.extend([upper, lower])
    return rows


def svg_inline(qr: segno.QRCode) -> str:
    """An ``<svg>`` element (no XML prolog) that scales to its container, with a white background."""
    svg: str = qr.svg_inline(
        scale=1, border=QUIET_ZONE, omitsize=True, dark="#000", light="#fff", svgclass="qr", lineclass=None
    )
    return svg


def save(qr: segno.QRCode, path: Path, kind: str) -> None:
    """Write ``kind`` ("png" or "svg") to ``path``; one-line RuntimeFailure if the file cannot be written."""
    if kind not in ("png", "svg"):
        raise UserError(f"unsupported QR file kind {kind!r}")
    try:
        if kind == "png":
            qr.save(str(path), kind="png", scale=PNG_SCALE, border=QUIET_ZONE)
        else:
            qr.save(str(path), kind="svg", scale=PNG_SCALE, border=QUIET_ZONE, dark="#000", light="#fff")
    except OSError as exc:
        raise RuntimeFailure(f"cannot write {path}: {exc.strerror or exc}") from exc
