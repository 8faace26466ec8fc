"""Write pimail(1) in roff to stdout from the CLI's own argparse texts (so it never drifts from
`pimail --help`). usage: python3 manpage.py VERSION   (run by packaging/deb/build.sh)"""

from __future__ import annotations

import argparse
import sys

from pimail.cli import build_parser


def roff(text: str) -> str:
    out = text.replace("\\", "\\\\").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line for line in out.splitlines())


def main() -> None:
    version = sys.argv[1]
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help or "" for c in sub._choices_actions}
    w = sys.stdout.write
    w(f'.TH PIMAIL 1 "" "pimail {version}" "User Commands"\n')
    w(".SH NAME\npimail \\- Whisper v6 mailserver for a Raspberry Pi\n")
    w(".SH SYNOPSIS\n.B pimail\n[\\fB\\-v\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR]\n")
    w(f".SH DESCRIPTION\n{roff(parser.description or '')}\n")
    w(".PP\nThe Debian package runs \\fBpimail run\\fR as the systemd service \\fBpimail.service\\fR "
      "(user \\fBpimail\\fR). Each command below prints its full options with \\fB\\-\\-help\\fR.\n")
    w(".SH COMMANDS\n")
    for name, p in sub.choices.items():
        w(f".SS {roff(name)}\n{roff(helps.get(name, ''))}\n.PP\n")
        usage = p.format_usage().removeprefix("usage: ").strip()
        w(f".nf\n{roff(usage)}\n.fi\n")
        if p.description:
            w(f".PP\n{roff(p.description)}\n")
    w(".SH FILES\n.TP\n.I /etc/pimail/pimail.toml\n"
      "The service's configuration; every key is documented in it.\n"
      ".TP\n.I /var/lib/pimail\nThe node key, the archive and the paired phones (systemd StateDirectory).\n"
      ".TP\n.I /opt/pimail/venv\nThe program and its Python libraries.\n")
    w(".SH LOGS\n\\fBjournalctl \\-u pimail\\fR\n")
    w(".SH SEE ALSO\n\\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1), "
      "https://github.com/pimail/pimail#readme\n")


if __name__ == "__main__":
    main()
