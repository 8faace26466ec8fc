"""The status page's HTML: units, escaping, limits read as words."""

from __future__ import annotations

from pimail.appliance.statushtml import render_page


def test_render_formats_units_and_escapes() -> None:
    html = render_page(
        {
            "health": "failing: archive unwritable",
            "enode": "enode://x",
            "archive": {"size_bytes": 1_500_000, "max_age": "30d", "oldest_at": 1_700_000_000},
            "uptime_s": 90061,
            "weird": {"<b>": "<i>x</i>"},
        }
    )
    assert 's-failing">failing<' in html and "archive unwritable" in html
    assert "1.5 MB" in html and "30d" in html and "2023-11-14 22:13:20 UTC" in html and "1 d 1 h" in html
    assert "<i>x</i>" not in html and "&lt;b&gt;" in html


def test_zero_caps_read_as_no_limit() -> None:
    html = render_page({"retention": {"max_bytes": 0, "max_count": 0, "max_age_s": 86400}})
    assert html.count("no limit") == 2 and "1 d 0 h" in html
