"""What an operator can do about a health condition, by its key: one hint, in words, for the status
page and ``pimail status``. Keys are the components' own (``archive.disk_full``, ``clock.untrusted``
…); a key nobody wrote a hint for gets the general one (``pimail doctor``)."""

from __future__ import annotations

# What to do about a condition, by its health key (the first matching prefix wins).
HINTS: tuple[tuple[str, str], ...] = (
    ("archive.unwritable", "The data directory cannot be written: run `pimail doctor` on the Pi; it "
                           "tells a full card from a read-only one or lost permissions."),
    ("archive.disk_full", "The card is full: free some space, or lower [archive] max_bytes or "
                          "max_age in pimail.toml and run `systemctl reload pimail`."),
    ("archive.disk_low", "Free some space on the card, or lower [archive] max_bytes or max_age in "
                         "pimail.toml and run `systemctl reload pimail`."),
    ("disk.low", "Free some space on the card, or lower [archive] max_bytes or max_age in "
                 "pimail.toml and run `systemctl reload pimail`."),
    ("archive.write_failed", "Run `pimail doctor` and `pimail archive check` on the Pi; restart "
                             "pimail once the cause is fixed."),
    ("archive.backlog", "The PostgreSQL server is slow or unreachable: check it and the network "
                        "between them."),
    ("archive.", "Run `pimail doctor` on the Pi; `pimail archive check` verifies the file."),
    ("whisper.archive", "Messages are relayed but not stored: run `pimail doctor` on the Pi."),
    ("whisper.no_peers", "Check the Pi's network; add [node] static_peers or bootnodes so it "
                         "finds the network, or connect a phone."),
    ("clock.", "The Pi has no clock of its own: it waits for the network time. Check its network "
               "(and that NTP is allowed), or see [archive] clock_trust."),
    ("node.listen", "Another program holds the port: stop it, or set [node] listen in pimail.toml "
                    "and restart pimail."),
    ("loop.", "The node is overloaded or stuck: `journalctl -u pimail` shows why; systemd restarts "
              "it if it does not recover."),
    ("pairing.", "The list of paired phones cannot be saved: run `pimail doctor` on the Pi."),
)
DEFAULT_HINT = "Run `pimail doctor` on the Pi; `journalctl -u pimail` has the details."


def hint_for(key: str) -> str:
    """What an operator can do about the condition ``key``."""
    for prefix, hint in HINTS:
        if key == prefix or (prefix.endswith(".") and key.startswith(prefix)):
            return hint
    return DEFAULT_HINT
