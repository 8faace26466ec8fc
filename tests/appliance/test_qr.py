"""QR codes of the enode decode back to the enode: PNG file, terminal rendering (both modes), SVG file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pimail.appliance import qr
from pimail.crypto.keys import Enode, NodeKey
from pimail.errors import RuntimeFailure, UserError
from tests.appliance.pairing_fixtures import chromium, decode_qr, modules_to_gray, read_png_gray


@pytest.fixture
def enode_url() -> str:
    key = NodeKey.generate()
    return Enode(key.public, "192.168.100.100", 30303, "status-offline-inbox").url(with_password=True)


def test_png_file_decodes_to_the_enode(tmp_path: Path, enode_url: str) -> None:
    code = qr.make_qr(enode_url)
    assert code.version <= 10  # small enough to scan off a phone screen or a terminal
    path = tmp_path / "enode.png"
    qr.save(code, path, "png")
    assert decode_qr(*read_png_gray(path)) == [enode_url]


@pytest.mark.parametrize("ansi", [False, True])
def test_terminal_rendering_fits_80_columns_and_decodes(enode_url: str, ansi: bool) -> None:
    text = qr.render_terminal(qr.make_qr(enode_url), ansi=ansi)
    plain = text.replace("\x1b[30;47m", "").replace("\x1b[0m", "")
    widths = {len(line) for line in plain.splitlines()}
    assert max(widths) <= 80 and len(widths) == 1
    assert len(plain.splitlines()) <= 40  # two module rows per text line
    rows = qr.parse_terminal(text)
    assert decode_qr(*modules_to_gray(rows, border=0)) == [enode_url]


def test_terminal_rendering_of_an_ipv6_enode_still_fits(enode_url: str) -> None:
    key = NodeKey.generate()
    url = Enode(key.public, "2001:db8:1234:5678:9abc:def0:1234:5678", 30303, "status-offline-inbox").url(
        with_password=True
    )
    text = qr.render_terminal(qr.make_qr(url))
    assert max(len(line) for line in text.splitlines()) <= 80
    assert decode_qr(*modules_to_gray(qr.parse_terminal(text), border=0)) == [url]


def test_text_too_wide_for_the_terminal_is_a_user_error() -> None:
    with pytest.raises(UserError, match="columns"):
        qr.render_terminal(qr.make_qr("x" * 600))


def test_empty_and_oversized_text_are_user_errors() -> None:
    with pytest.raises(UserError):
        qr.make_qr("")
    with pytest.raises(UserError, match="too long"):
        qr.make_qr("x" * 5000)


def test_unwritable_file_is_a_runtime_failure(tmp_path: Path, enode_url: str) -> None:
    with pytest.raises(RuntimeFailure, match="cannot write"):
        qr.save(qr.make_qr(enode_url), tmp_path / "missing-dir" / "q.png", "png")
    with pytest.raises(UserError):
        qr.save(qr.make_qr(enode_url), tmp_path / "q.gif", "gif")


def test_svg_file_renders_in_chromium_and_decodes(tmp_path: Path, enode_url: str) -> None:
    path = tmp_path / "enode.svg"
    qr.save(qr.make_qr(enode_url), path, "svg")
    assert path.read_text().lstrip().startswith("<?xml")
    shot = tmp_path / "svg.png"
    asyncio.run(
        chromium(tmp_path / "profile", f"--screenshot={shot}", "--window-size=600,600", path.as_uri())
    )
    assert decode_qr(*read_png_gray(shot)) == [enode_url]


def test_inline_svg_scales_and_has_a_white_background(enode_url: str) -> None:
    svg = qr.svg_inline(qr.make_qr(enode_url))
    assert svg.startswith("<svg") and "viewBox" in svg and 'fill="#fff"' in svg
    assert "<?xml" not in svg and "width=" not in svg.split(">", 1)[0]
