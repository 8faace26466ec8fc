"""Every subcommand's --help reads the same way: the same placeholders (DIR, PATH …, never argparse's
DATA_DIR / CONFIG), a default shown wherever an option has one, and every action listed."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

from pimail.cli import build_parser

SHARED = {"--data-dir": "DIR", "--config": "PATH"}


Named = tuple[str, argparse.ArgumentParser]


def parsers(parser: argparse.ArgumentParser, name: str = "pimail") -> Iterator[Named]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from parsers(sub, f"{name} {sub_name}")


def test_shared_options_use_the_same_placeholders_everywhere() -> None:
    seen = 0
    for name, parser in parsers(build_parser()):
        text = parser.format_help()
        assert "DATA_DIR" not in text and " CONFIG" not in text, name
        for action in parser._actions:
            for flag, metavar in SHARED.items():
                if flag in action.option_strings:
                    seen += 1
                    assert action.metavar == metavar, f"{name} {flag}"
    assert seen > 20


def test_options_with_a_value_say_what_it_is_and_their_default() -> None:
    problems = []
    for name, parser in parsers(build_parser()):
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0 or action.choices is not None:
                continue
            flag = action.option_strings[-1]
            upper = flag.lstrip("-").replace("-", "_").upper()
            if action.metavar is None and "_" in upper:  # DATA_DIR beside the DIR of other commands
                problems.append(f"{name} {flag}: argparse's own placeholder {upper}")
            if action.default not in (None, False, [], ()) and "default" not in (action.help or ""):
                problems.append(f"{name} {flag}: default {action.default!r} not shown")
    assert not problems, "\n".join(problems)


def test_archive_help_lists_every_action() -> None:
    archive = dict(parsers(build_parser()))["pimail archive"]
    actions = next(a for a in archive._actions if isinstance(a, argparse._SubParsersAction))
    description = archive.description or ""
    for action in actions.choices:
        assert re.search(rf"\b{action}\b", description), action
